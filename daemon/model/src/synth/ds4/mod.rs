//! Synthetic `deepseek4` (DeepSeek V4 Flash) files: the plan — dims from a
//! target size or given, Flash's structure at any size — and its metadata;
//! [`tensors`] lists the tensors. Values and streaming are shared with
//! deepseek2 (`super::fill`, `super::stream`).
//!
//! Flash's structure, whatever the size: layers `0..min(2, n)` attend
//! through the sliding window (128) only, then even layers are CSA (ratio
//! 4, with the lightning indexer) and odd ones HCA (ratio 128); the first
//! `min(3, n - 1)` layers route by token id (`ffn_gate_tid2eid`), the
//! others by sqrt-softplus scores with an `exp_probs_b` bias; four
//! hyper-connection streams; one shared expert; the MTP block in
//! llama.cpp's form (`blk.{n}` plus `nextn.*`) unless turned off.
//! `compress_ratios` always carries the MTP block's trailing 0, as Flash's
//! config does.
//!
//! Per-head sizes are Flash's (head 512, rope 64, indexer heads of 128);
//! the rest scales with the hidden size as Flash's does (heads and indexer
//! heads `hidden/64`, q and output LoRA ranks `hidden/4`, expert FFN
//! `hidden/2`, 8 output groups). Types default to ds4's "dwarf-q2": routed
//! gate/up IQ2_XXS and down Q2_K, attention, shared experts and output
//! Q8_0, embeddings, hyper-connection, compressor, indexer and router F16,
//! the rest F32, hash tables I32.
//!
//! llama.cpp (as of this writing) reads these files with `--no-repack`:
//! its CPU weight repacking cannot place the 3-D view it takes of a Q8_0
//! `attn_output_a` (its own Q8_0 files fail alike). It also stops with
//! SIGFPE on files of fewer than 4 layers (no ratio-128 layer); 4 and
//! more load and agree with DwarfStar's logits.

pub mod tensors;

use std::path::Path;
use std::time::Instant;

use dwarfstar_gguf::{GgufFile, GgufWriter, Value};
use dwarfstar_kernels::quantize::quantize_supported;
use dwarfstar_kernels::GgmlType;

use super::config::SynthConfig;
use super::ladder::Ladder;
use super::{SynthError, SynthReport};

/// The architecture name of the files.
pub const ARCH: &str = "deepseek4";

/// Hidden size, routed experts, experts per token.
pub const LADDER: [(usize, usize, usize); 5] = [
    (256, 16, 6),
    (512, 32, 6),
    (1024, 64, 6),
    (2048, 128, 6),
    (4096, 256, 6),
];

/// The deepest model a target size alone produces (Flash's 43).
pub const MAX_AUTO_LAYERS: usize = 43;

/// Flash's per-head sizes and fixed counts.
pub const HEAD_DIM: usize = 512;
pub const N_ROT: usize = 64;
pub const IDX_DIM: usize = 128;
pub const IDX_TOP_K: usize = 512;
pub const SLIDING_WINDOW: usize = 128;
pub const HC: usize = 4;
/// Flash's context length and SwiGLU clamp.
pub const CONTEXT: u32 = 1 << 20;
pub const SWIGLU_LIMIT: f32 = 10.0;

/// Every dimension of a deepseek4 file, resolved.
#[derive(Clone, Debug)]
pub struct Ds4Plan {
    /// Trunk layers (the MTP block is one more).
    pub n_layer: usize,
    pub hidden: usize,
    pub n_head: usize,
    pub head_dim: usize,
    pub q_lora: usize,
    pub o_groups: usize,
    pub o_lora: usize,
    pub idx_heads: usize,
    pub n_expert: usize,
    pub top_k: usize,
    pub expert_ff: usize,
    /// Layers `0..n_hash` route by token id.
    pub n_hash: usize,
    pub mtp: bool,
    pub n_vocab: usize,
    /// Routed experts' gate/up and down types.
    pub exp_ty: GgmlType,
    pub down_ty: GgmlType,
    pub seed: u64,
    pub skew: f32,
}

fn round256(x: usize) -> usize {
    x.div_ceil(256).max(1) * 256
}

impl Ds4Plan {
    /// `n_layer` layers of the given rung and overrides.
    fn with(
        cfg: &SynthConfig,
        rung: (usize, usize, usize),
        n_layer: usize,
        n_vocab: usize,
    ) -> Ds4Plan {
        let hidden = cfg.hidden.unwrap_or(rung.0);
        let n_expert = cfg.experts.unwrap_or(rung.1);
        let n_head = cfg.heads.unwrap_or((hidden / 64).max(1));
        // The most groups up to Flash's 8 that split the heads evenly.
        let o_groups = (1..=8.min(n_head))
            .rev()
            .find(|g| n_head.is_multiple_of(*g))
            .unwrap_or(1);
        Ds4Plan {
            n_layer,
            hidden,
            n_head,
            head_dim: cfg.head_dim.unwrap_or(HEAD_DIM),
            q_lora: hidden / 4,
            o_groups,
            o_lora: hidden / 4,
            idx_heads: (hidden / 64).max(1),
            n_expert,
            top_k: cfg.top_k.unwrap_or(rung.2.min(n_expert)),
            expert_ff: cfg.ffn.unwrap_or(round256(hidden / 2)),
            n_hash: 3.min(n_layer.saturating_sub(1)),
            mtp: cfg.mtp,
            n_vocab,
            exp_ty: cfg.ty,
            down_ty: cfg.down_ty.unwrap_or(cfg.ty),
            seed: cfg.seed,
            skew: cfg.skew,
        }
    }

    /// Resolves `cfg` for a vocabulary of `n_vocab` tokens.
    pub fn resolve(cfg: &SynthConfig, n_vocab: usize) -> Result<Ds4Plan, SynthError> {
        if cfg.arch != ARCH {
            return Err(SynthError::Config(format!(
                "architecture {:?} is not a {ARCH} plan",
                cfg.arch
            )));
        }
        if !(cfg.skew.is_finite() && cfg.skew >= 0.0) {
            return Err(SynthError::Config(format!("skew {} is not >= 0", cfg.skew)));
        }
        let plan = match (cfg.layers, cfg.size) {
            (Some(l), _) => Ds4Plan::with(cfg, LADDER[0], l, n_vocab),
            (None, size) => {
                let build = |rung, l| Ds4Plan::with(cfg, rung, l, n_vocab);
                Ladder {
                    rungs: &LADDER,
                    min_layers: 1,
                    max_layers: 1 << 12,
                    max_auto: MAX_AUTO_LAYERS,
                    build: &build,
                    bytes: &|p: &Ds4Plan| p.total_bytes(),
                    adjust: &|l| l,
                    arch: ARCH,
                }
                .fit(size.unwrap_or(64 << 20))?
            }
        };
        plan.check()?;
        Ok(plan)
    }

    fn check(&self) -> Result<(), SynthError> {
        let bad = |m: String| Err(SynthError::Config(m));
        if self.n_layer == 0 || self.n_layer > 1024 {
            return bad(format!("{} layers: give 1..=1024", self.n_layer));
        }
        for (what, v) in [("hidden", self.hidden), ("ffn", self.expert_ff)] {
            if v == 0 || !v.is_multiple_of(256) || v > 1 << 16 {
                return bad(format!(
                    "--{what} {v} must be a multiple of 256 (at most 65536)"
                ));
            }
        }
        if self.head_dim < 2 * N_ROT || !self.head_dim.is_multiple_of(64) || self.head_dim > 4096 {
            return bad(format!(
                "--head-dim {} must be a multiple of 64 in 128..=4096",
                self.head_dim
            ));
        }
        if self.n_head == 0 || self.n_head > 1024 {
            return bad(format!("{} heads: give 1..=1024", self.n_head));
        }
        if self.n_expert < 2 || self.n_expert > 1024 {
            return bad(format!("{} experts: give 2..=1024", self.n_expert));
        }
        if self.top_k == 0 || self.top_k > self.n_expert {
            return bad(format!("top-k {} of {} experts", self.top_k, self.n_expert));
        }
        for ty in [self.exp_ty, self.down_ty] {
            if !256usize.is_multiple_of(ty.block_size()) || ty.is_integer() {
                return bad(format!("type {ty} does not tile 256-value rows"));
            }
            if !quantize_supported(ty) {
                return bad(format!("type {ty} has no quantizer in the kernels crate"));
            }
        }
        Ok(())
    }

    /// Blocks in the file: the trunk and the MTP block.
    pub fn n_block(&self) -> usize {
        self.n_layer + usize::from(self.mtp)
    }

    /// The compression ratio of block `il` (the MTP block's is 0).
    pub fn ratio(&self, il: usize) -> u32 {
        match il {
            _ if il >= self.n_layer || il < 2 => 0,
            _ if il.is_multiple_of(2) => 4,
            _ => 128,
        }
    }

    /// `attention.compress_ratios`: every trunk layer, then the MTP block's 0.
    pub fn ratios(&self) -> Vec<i32> {
        (0..=self.n_layer).map(|il| self.ratio(il) as i32).collect()
    }

    /// Bytes of tensor data (each tensor padded to 32 bytes; the file adds
    /// metadata and the directory).
    pub fn total_bytes(&self) -> u64 {
        self.tensors()
            .iter()
            .map(|t| t.bytes().div_ceil(32) * 32)
            .sum()
    }

    /// Parameters in all / of what one token runs (routed experts it does
    /// not use left out; the MTP block counts as the trunk's).
    pub fn params(&self) -> (u64, u64) {
        let all: u64 = self.tensors().iter().map(|t| t.n_elements()).sum();
        let per_expert = 3 * (self.hidden * self.expert_ff) as u64;
        let unused = per_expert * (self.n_expert - self.top_k) as u64 * self.n_block() as u64;
        (all, all - unused)
    }

    /// A one-line description.
    pub fn describe(&self) -> String {
        let (all, active) = self.params();
        let same = self.exp_ty == self.down_ty;
        format!(
            "{ARCH} {} layers{} ({} hash-routed, compress ratios {:?}), hidden {}, {} heads of {}, \
             q_lora {}, o_lora {} x {} groups, indexer {} x {}, {} experts (top-{}, 1 shared) \
             of ffn {}, hc {HC}, vocab {}, experts {}{} — {:.2}B params, {:.2}B active",
            self.n_layer,
            if self.mtp { " + MTP" } else { "" },
            self.n_hash,
            self.ratios(),
            self.hidden,
            self.n_head,
            self.head_dim,
            self.q_lora,
            self.o_lora,
            self.o_groups,
            self.idx_heads,
            IDX_DIM,
            self.n_expert,
            self.top_k,
            self.expert_ff,
            self.n_vocab,
            self.exp_ty,
            if same {
                String::new()
            } else {
                format!("/{} down", self.down_ty)
            },
            all as f64 / 1e9,
            active as f64 / 1e9
        )
    }
}

/// The metadata of a file of `p`: the llama.cpp converter's keys in its
/// order, `deepseek4.vocab_size` (which ds4 requires), and every
/// `tokenizer.*` key of `tok`.
fn metadata(w: &mut GgufWriter, p: &Ds4Plan, tok: &GgufFile) -> Result<(), SynthError> {
    let k = |s: &str| format!("{ARCH}.{s}");
    let (_, active) = p.params();
    let n_block = p.n_block();
    let expert = (3 * p.hidden * p.expert_ff) as u64;
    super::general(w, ARCH, p.seed, p.n_expert, expert, active)?;
    w.add_kv(k("block_count"), n_block as u32)?;
    w.add_kv(k("context_length"), CONTEXT)?;
    w.add_kv(k("embedding_length"), p.hidden as u32)?;
    w.add_kv(k("vocab_size"), p.n_vocab as u32)?;
    w.add_kv(k("attention.head_count"), p.n_head as u32)?;
    w.add_kv(k("attention.head_count_kv"), 1u32)?;
    // Flash's YaRN: 64k trained, extended 16x.
    w.add_kv(k("rope.scaling.type"), "yarn")?;
    w.add_kv(k("rope.scaling.factor"), 16f32)?;
    w.add_kv(k("rope.scaling.original_context_length"), 65536u32)?;
    w.add_kv(k("rope.scaling.yarn_beta_fast"), 32f32)?;
    w.add_kv(k("rope.scaling.yarn_beta_slow"), 1f32)?;
    w.add_kv(k("rope.freq_base"), 10000f32)?;
    w.add_kv(k("attention.layer_norm_rms_epsilon"), 1e-6f32)?;
    w.add_kv(k("expert_count"), p.n_expert as u32)?;
    w.add_kv(k("expert_used_count"), p.top_k as u32)?;
    // sqrt(softplus) scores.
    w.add_kv(k("expert_gating_func"), 4u32)?;
    w.add_kv(k("attention.key_length"), p.head_dim as u32)?;
    w.add_kv(k("attention.value_length"), p.head_dim as u32)?;
    w.add_kv("general.file_type", Value::U32(super::file_type(p.exp_ty)))?;
    w.add_kv(k("rope.dimension_count"), N_ROT as u32)?;
    w.add_kv(k("attention.q_lora_rank"), p.q_lora as u32)?;
    w.add_kv(k("attention.sliding_window"), SLIDING_WINDOW as u32)?;
    w.add_kv(k("expert_feed_forward_length"), p.expert_ff as u32)?;
    w.add_kv(k("expert_shared_count"), 1u32)?;
    w.add_kv(k("expert_weights_scale"), 1.5f32)?;
    w.add_kv(k("expert_weights_norm"), true)?;
    let clamp = vec![SWIGLU_LIMIT; n_block];
    w.add_kv(k("swiglu_clamp_exp"), clamp.clone())?;
    w.add_kv(k("swiglu_clamp_shexp"), clamp)?;
    w.add_kv(k("attention.indexer.head_count"), p.idx_heads as u32)?;
    w.add_kv(k("attention.indexer.key_length"), IDX_DIM as u32)?;
    w.add_kv(k("attention.indexer.top_k"), IDX_TOP_K as u32)?;
    w.add_kv(k("attention.output_group_count"), p.o_groups as u32)?;
    w.add_kv(k("attention.output_lora_rank"), p.o_lora as u32)?;
    w.add_kv(k("attention.compress_ratios"), p.ratios())?;
    w.add_kv(k("attention.compress_rope_freq_base"), 160000f32)?;
    w.add_kv(k("hyper_connection.count"), HC as u32)?;
    w.add_kv(k("hyper_connection.sinkhorn_iterations"), 20u32)?;
    w.add_kv(k("hyper_connection.epsilon"), 1e-6f32)?;
    w.add_kv(k("hash_layer_count"), p.n_hash as u32)?;
    w.add_kv(k("embedding_length_out"), (HC * p.hidden) as u32)?;
    if p.mtp {
        w.add_kv(k("nextn_predict_layers"), 1u32)?;
    }
    w.add_kv("general.quantization_version", 2u32)?;
    super::copy_tokenizer(w, tok)
}

/// Writes a synthetic deepseek4 model of `cfg` to `path`, with the
/// tokenizer of `tok` (whose vocabulary sets `n_vocab`).
pub fn write(
    path: &Path,
    cfg: &SynthConfig,
    tok: &GgufFile,
) -> Result<SynthReport<Ds4Plan>, SynthError> {
    let t0 = Instant::now();
    let plan = Ds4Plan::resolve(cfg, super::vocab_size(tok)?)?;
    let tensors = plan.tensors();
    let mut gw = GgufWriter::new(32)?;
    metadata(&mut gw, &plan, tok)?;
    let (bytes, pool_s) = super::stream(path, gw, &tensors, plan.seed, plan.skew, t0)?;
    Ok(SynthReport {
        plan,
        bytes,
        pool_s,
        total_s: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(size: Option<u64>) -> SynthConfig {
        SynthConfig::deepseek4(size)
    }

    #[test]
    fn flash_width_has_flash_dims() {
        let mut c = cfg(None);
        c.hidden = Some(4096);
        c.layers = Some(43);
        c.experts = Some(256);
        let p = Ds4Plan::resolve(&c, 129280).unwrap();
        assert_eq!(
            (p.n_head, p.head_dim, p.q_lora, p.o_lora, p.o_groups),
            (64, 512, 1024, 1024, 8)
        );
        assert_eq!(
            (p.idx_heads, p.expert_ff, p.top_k, p.n_hash),
            (64, 2048, 6, 3)
        );
        let r = p.ratios();
        assert_eq!(r.len(), 44);
        assert_eq!(&r[..6], &[0, 0, 4, 128, 4, 128]);
        assert_eq!(&r[41..], &[128, 4, 0]);
        // Real Flash at dwarf-q2 is about 81 GB; 284B parameters.
        let (all, _) = p.params();
        assert!((270e9..300e9).contains(&(all as f64)), "{all}");
    }

    #[test]
    fn size_picks_layers_near_the_target() {
        for size in [60u64 << 20, 512 << 20, 6 << 30, 40 << 30] {
            let p = Ds4Plan::resolve(&cfg(Some(size)), 49152).unwrap();
            let got = p.total_bytes() as f64 / size as f64;
            assert!((0.8..1.2).contains(&got), "{size}: {got} {}", p.describe());
            assert!(p.n_layer <= MAX_AUTO_LAYERS, "{}", p.describe());
            for t in p.tensors() {
                assert_eq!(t.dims[0] % t.ty.block_size() as u64, 0, "{}", t.name);
            }
        }
    }

    #[test]
    fn bad_requests_are_errors() {
        let mut c = cfg(Some(1 << 20));
        assert!(Ds4Plan::resolve(&c, 49152).is_err());
        c.size = None;
        c.layers = Some(4);
        c.ffn = Some(300);
        let e = Ds4Plan::resolve(&c, 49152).unwrap_err().to_string();
        assert!(e.contains("ffn"), "{e}");
        c.ffn = None;
        c.top_k = Some(40);
        assert!(Ds4Plan::resolve(&c, 49152).is_err());
        c.top_k = None;
        c.head_dim = Some(96);
        assert!(Ds4Plan::resolve(&c, 49152).is_err());
        c.head_dim = None;
        c.arch = "deepseek2".into();
        assert!(Ds4Plan::resolve(&c, 49152).is_err());
        // And the deepseek2 plan refuses the V4-only knobs.
        let mut d = SynthConfig::new(None, GgmlType::Q4_K);
        d.layers = Some(4);
        d.heads = Some(8);
        assert!(super::super::SynthPlan::resolve(&d, 49152).is_err());
    }
}
