//! Hyper-parameters of `deepseek4` GGUF files (DeepSeek V4 Flash/Pro as
//! llama.cpp's converter writes them), read from metadata and checked
//! before any tensor is bound. Every error names the key at fault.
//!
//! Keys the ds4 files may lack get the Flash defaults (see the layout
//! notes): `vocab_size` falls back to the tokenizer's token count,
//! `expert_gating_func` to sqrt-softplus, `swiglu_clamp_shexp` to
//! `swiglu_clamp_exp`, the YaRN keys to factor 16 / 65536 / 32 / 1 when
//! only some are present.

use dwarfstar_gguf::{GgufFile, Value};

use crate::error::{meta_err, Result};

/// The `general.architecture` this module runs.
pub const ARCH: &str = "deepseek4";

/// The full metadata key `deepseek4.<k>`.
pub fn key(k: &str) -> String {
    format!("{ARCH}.{k}")
}

/// The attention of one layer, from its compression ratio.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// Ratio 0: the sliding window only.
    Sliding,
    /// Ratio 4: compressed sparse attention (overlapping blocks, indexer).
    Csa,
    /// Ratio 128: heavily compressed attention (all blocks).
    Hca,
}

impl LayerKind {
    /// Tokens per compressed block (0: none).
    pub fn ratio(self) -> usize {
        match self {
            LayerKind::Sliding => 0,
            LayerKind::Csa => 4,
            LayerKind::Hca => 128,
        }
    }
}

/// YaRN frequency interpolation (DeepSeek's `precompute_freqs_cis`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Yarn {
    pub factor: f32,
    pub orig_ctx: usize,
    pub beta_fast: f32,
    pub beta_slow: f32,
}

/// The rotary embedding of one family of layers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeSpec {
    pub base: f32,
    pub yarn: Option<Yarn>,
}

/// The shape of a `deepseek4` model.
#[derive(Clone, Debug)]
pub struct Ds4HParams {
    /// Trunk layers (`block_count` less the MTP blocks).
    pub n_layer: usize,
    /// MTP blocks after the trunk (`nextn_predict_layers`).
    pub n_nextn: usize,
    pub n_ctx_train: usize,
    pub n_embd: usize,
    pub n_vocab: usize,
    pub n_head: usize,
    /// Query/key/value head size (`key_length` = `value_length`).
    pub head_dim: usize,
    /// Rotated trailing dims of every head (`rope.dimension_count`).
    pub n_rot: usize,
    pub rms_eps: f32,
    pub q_lora_rank: usize,
    pub o_groups: usize,
    pub o_lora_rank: usize,
    /// Raw keys a query sees, itself included (`attention.sliding_window`).
    pub n_swa: usize,
    /// Per block (trunk and MTP): its attention kind.
    pub kinds: Vec<LayerKind>,
    pub idx_heads: usize,
    pub idx_dim: usize,
    pub idx_top_k: usize,
    pub n_expert: usize,
    pub n_expert_used: usize,
    pub n_ff_exp: usize,
    pub n_shared: usize,
    /// Routed weights are multiplied by this (`expert_weights_scale`).
    pub weights_scale: f32,
    /// Selected weights are normalised to sum to one.
    pub weights_norm: bool,
    /// Per block: the SwiGLU clamp of routed / shared experts (≤ 1e-6: none).
    pub swiglu_exp: Vec<f32>,
    pub swiglu_shexp: Vec<f32>,
    pub hc_mult: usize,
    pub hc_iters: usize,
    pub hc_eps: f32,
    /// Layers `0..n_hash` route by the token id (`ffn_gate_tid2eid`).
    pub n_hash: usize,
    /// Sliding-only layers.
    pub rope_main: RopeSpec,
    /// Layers with a compressor, their compressors and the indexer.
    pub rope_compress: RopeSpec,
}

impl Ds4HParams {
    /// Non-rotated leading dims of a head.
    pub fn nope(&self) -> usize {
        self.head_dim - self.n_rot
    }

    /// Outputs of the hyper-connection projection: pre, post and comb.
    pub fn hc_mix(&self) -> usize {
        (2 + self.hc_mult) * self.hc_mult
    }

    /// The rotary embedding of layer `il`.
    pub fn rope(&self, il: usize) -> &RopeSpec {
        match self.kinds[il] {
            LayerKind::Sliding => &self.rope_main,
            _ => &self.rope_compress,
        }
    }

    /// Whether layer `il` routes by token id.
    pub fn is_hash(&self, il: usize) -> bool {
        il < self.n_hash
    }
}

fn to_usize(k: &str, v: u64) -> Result<usize> {
    usize::try_from(v).map_err(|_| meta_err(k, "value does not fit in memory"))
}

fn req(f: &GgufFile, k: &str) -> Result<usize> {
    to_usize(k, f.get_u64(k)?)
}

fn opt(f: &GgufFile, k: &str) -> Result<Option<usize>> {
    f.opt_u64(k)?.map(|v| to_usize(k, v)).transpose()
}

fn within(k: &str, v: usize, lo: usize, hi: usize) -> Result<usize> {
    if v < lo || v > hi {
        return Err(meta_err(k, format!("{v} is outside {lo}..={hi}")));
    }
    Ok(v)
}

fn finite(k: &str, v: f32) -> Result<f32> {
    if !v.is_finite() {
        return Err(meta_err(k, format!("{v} is not finite")));
    }
    Ok(v)
}

/// A count stored as a scalar or as a per-layer array whose non-zero
/// entries agree (llama.cpp's `get_key_or_arr`).
fn uniform(f: &GgufFile, k: &str) -> Result<usize> {
    match f.get(k) {
        Some(Value::Array(arr)) => {
            if !arr.is_integer() {
                return Err(meta_err(k, "expected integers"));
            }
            let vals: Vec<i128> = (0..arr.len())
                .filter_map(|i| arr.integer_at(i))
                .filter(|&v| v != 0)
                .collect();
            let first = *vals
                .first()
                .ok_or_else(|| meta_err(k, "every entry is 0"))?;
            if vals.iter().any(|&v| v != first) {
                return Err(meta_err(
                    k,
                    "per-layer values that differ are not supported",
                ));
            }
            u64::try_from(first)
                .map_err(|_| meta_err(k, "negative"))
                .and_then(|v| to_usize(k, v))
        }
        _ => req(f, k),
    }
}

/// A per-block float: a scalar for every block or an array of at least
/// `n` entries.
fn per_block(f: &GgufFile, k: &str, n: usize) -> Result<Option<Vec<f32>>> {
    let v = match f.get(k) {
        None => return Ok(None),
        Some(Value::Array(_)) => f.get_f32_array(k)?.into_owned(),
        Some(_) => vec![f.get_f32(k)?; n],
    };
    if v.len() < n {
        return Err(meta_err(k, format!("{} entries for {n} blocks", v.len())));
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(meta_err(k, "entries must be finite"));
    }
    Ok(Some(v[..n].to_vec()))
}

fn rope_specs(f: &GgufFile) -> Result<(RopeSpec, RopeSpec)> {
    let kb = key("rope.freq_base");
    let base = finite(&kb, f.get_f32(&kb)?)?;
    let kc = key("attention.compress_rope_freq_base");
    let cbase = finite(&kc, f.get_f32(&kc)?)?;
    if base <= 0.0 || cbase <= 0.0 {
        return Err(meta_err(&kb, "RoPE bases must be positive"));
    }
    let kt = key("rope.scaling.type");
    let kf = key("rope.scaling.factor");
    let ko = key("rope.scaling.original_context_length");
    let kbf = key("rope.scaling.yarn_beta_fast");
    let kbs = key("rope.scaling.yarn_beta_slow");
    let use_yarn = match f.opt_str(&kt)? {
        Some("yarn") => true,
        Some("none") => false,
        // ds4 files may carry the YaRN keys without the type.
        None => [&kf, &ko, &kbf, &kbs].iter().any(|k| f.get(k).is_some()),
        Some(other) => {
            return Err(meta_err(
                &kt,
                format!("RoPE scaling {other:?} is not supported (yarn or none)"),
            ))
        }
    };
    let yarn = if use_yarn {
        let factor = finite(&kf, f.opt_f32(&kf)?.unwrap_or(16.0))?;
        if factor < 1.0 {
            return Err(meta_err(&kf, format!("{factor} < 1")));
        }
        let orig_ctx = within(&ko, opt(f, &ko)?.unwrap_or(65536), 1, 1 << 40)?;
        let beta_fast = finite(&kbf, f.opt_f32(&kbf)?.unwrap_or(32.0))?;
        let beta_slow = finite(&kbs, f.opt_f32(&kbs)?.unwrap_or(1.0))?;
        (factor > 1.0).then_some(Yarn {
            factor,
            orig_ctx,
            beta_fast,
            beta_slow,
        })
    } else {
        None
    };
    // Sliding-only layers never use YaRN (DeepSeek's reference, llama.cpp).
    Ok((
        RopeSpec { base, yarn: None },
        RopeSpec { base: cbase, yarn },
    ))
}

/// Trunk layers of a file of `n_block` blocks declaring `n_nextn` MTP
/// blocks. llama.cpp's MTP export counts the MTP block in `block_count`
/// (`blk.{n_layer}.nextn.*`); ds4's trunk files declare
/// `nextn_predict_layers` too but keep the block in a separate file, so
/// their last block is an ordinary layer. Like llama.cpp, a file whose
/// declared MTP block is neither (no `nextn.eh_proj`, no layer tensors) is
/// read as its trunk.
fn trunk_layers(f: &GgufFile, n_block: usize, n_nextn: usize) -> usize {
    let first_mtp = n_block - n_nextn;
    let has = |name: String| f.tensor(&name).is_some();
    if n_nextn > 0
        && !has(format!("blk.{first_mtp}.nextn.eh_proj.weight"))
        && has(format!("blk.{}.ffn_gate_inp.weight", n_block - 1))
    {
        n_block
    } else {
        first_mtp
    }
}

impl Ds4HParams {
    /// Reads and checks the hyper-parameters of a deepseek4 file.
    pub fn from_gguf(f: &GgufFile) -> Result<Ds4HParams> {
        let kb = key("block_count");
        let n_block = within(&kb, req(f, &kb)?, 1, 4096)?;
        let kn = key("nextn_predict_layers");
        let n_nextn = opt(f, &kn)?.unwrap_or(0);
        if n_nextn >= n_block {
            return Err(meta_err(&kn, format!("{n_nextn} of {n_block} blocks")));
        }
        let n_layer = trunk_layers(f, n_block, n_nextn);
        let n_ctx_train = req(f, &key("context_length"))?;
        let ke = key("embedding_length");
        let n_embd = within(&ke, req(f, &ke)?, 1, 1 << 20)?;
        let n_vocab = match opt(f, &key("vocab_size"))? {
            Some(v) => v,
            None => f
                .opt_str_array("tokenizer.ggml.tokens")?
                .map(|t| t.len())
                .ok_or_else(|| {
                    meta_err(&key("vocab_size"), "missing (and no tokenizer.ggml.tokens)")
                })?,
        };
        within(&key("vocab_size"), n_vocab, 1, 1 << 24)?;
        let kh = key("attention.head_count");
        let n_head = within(&kh, uniform(f, &kh)?, 1, 4096)?;
        let khk = key("attention.head_count_kv");
        let n_head_kv = uniform(f, &khk)?;
        if n_head_kv != 1 {
            return Err(meta_err(
                &khk,
                format!("{n_head_kv}: DeepSeek V4 attention has one shared KV head"),
            ));
        }
        let kk = key("attention.key_length");
        let head_dim = within(&kk, req(f, &kk)?, 2, 1 << 14)?;
        let kv = key("attention.value_length");
        let v_dim = req(f, &kv)?;
        if v_dim != head_dim {
            return Err(meta_err(
                &kv,
                format!("{v_dim}, but keys and values share one head of {head_dim} ({kk})"),
            ));
        }
        let kr = key("rope.dimension_count");
        let n_rot = req(f, &kr)?;
        if n_rot == 0 || n_rot % 2 != 0 || n_rot > head_dim {
            return Err(meta_err(
                &kr,
                format!("{n_rot} rotated dims in heads of {head_dim}"),
            ));
        }
        let keps = key("attention.layer_norm_rms_epsilon");
        let rms_eps = finite(&keps, f.get_f32(&keps)?)?;
        if rms_eps < 0.0 {
            return Err(meta_err(&keps, "negative"));
        }
        let kq = key("attention.q_lora_rank");
        let q_lora_rank = within(&kq, req(f, &kq)?, 1, 1 << 16)?;
        let kog = key("attention.output_group_count");
        let o_groups = within(&kog, req(f, &kog)?, 1, n_head)?;
        if n_head % o_groups != 0 {
            return Err(meta_err(
                &kog,
                format!("{n_head} heads cannot form {o_groups} groups"),
            ));
        }
        let kol = key("attention.output_lora_rank");
        let o_lora_rank = within(&kol, req(f, &kol)?, 1, 1 << 16)?;
        let ksw = key("attention.sliding_window");
        let n_swa = within(&ksw, req(f, &ksw)?, 1, 1 << 20)?;

        let kcr = key("attention.compress_ratios");
        let arr = f.get_array(&kcr)?;
        if !arr.is_integer() {
            return Err(meta_err(&kcr, "expected integers"));
        }
        if arr.len() < n_block {
            return Err(meta_err(
                &kcr,
                format!("{} entries for {n_block} blocks", arr.len()),
            ));
        }
        // One entry per block, and one for the MTP block even where it
        // lives in another file (ds4's trunk files count only the trunk):
        // a missing entry there is the sliding window it always has.
        let n_kinds = if n_nextn > 0 {
            n_block.max(n_layer + 1)
        } else {
            n_block
        };
        let mut kinds = Vec::with_capacity(n_kinds);
        for i in 0..n_kinds {
            kinds.push(match arr.integer_at(i) {
                None if i >= n_block => LayerKind::Sliding,
                Some(0) => LayerKind::Sliding,
                Some(4) => LayerKind::Csa,
                Some(128) => LayerKind::Hca,
                other => {
                    return Err(meta_err(
                        &kcr,
                        format!("block {i}: ratio {other:?}; only 0, 4 and 128 are defined"),
                    ))
                }
            });
        }

        let kih = key("attention.indexer.head_count");
        let kid = key("attention.indexer.key_length");
        let kit = key("attention.indexer.top_k");
        let has_csa = kinds.contains(&LayerKind::Csa);
        let (idx_heads, idx_dim, idx_top_k) = if has_csa {
            let d = within(&kid, req(f, &kid)?, 1, 1 << 14)?;
            if d < n_rot {
                return Err(meta_err(
                    &kid,
                    format!("{d} is smaller than {kr} ({n_rot})"),
                ));
            }
            (
                within(&kih, req(f, &kih)?, 1, 4096)?,
                d,
                within(&kit, req(f, &kit)?, 1, 1 << 24)?,
            )
        } else {
            (
                opt(f, &kih)?.unwrap_or(0),
                opt(f, &kid)?.unwrap_or(0),
                opt(f, &kit)?.unwrap_or(0),
            )
        };

        let kx = key("expert_count");
        let n_expert = within(&kx, req(f, &kx)?, 1, 1 << 16)?;
        let ku = key("expert_used_count");
        let n_expert_used = within(&ku, uniform(f, &ku)?, 1, n_expert)?;
        let kff = key("expert_feed_forward_length");
        let n_ff_exp = within(&kff, uniform(f, &kff)?, 1, 1 << 20)?;
        let ksh = key("expert_shared_count");
        let n_shared = within(&ksh, req(f, &ksh)?, 0, 64)?;
        let kws = key("expert_weights_scale");
        let weights_scale = finite(&kws, f.opt_f32(&kws)?.unwrap_or(1.0))?;
        let weights_norm = f.opt_bool(&key("expert_weights_norm"))?.unwrap_or(true);
        let kgf = key("expert_gating_func");
        if let Some(g) = f.opt_u32(&kgf)? {
            if g != 4 {
                return Err(meta_err(
                    &kgf,
                    format!("{g}: DeepSeek V4 routes with sqrt-softplus scores (4)"),
                ));
            }
        }
        for k in ["expert_group_count", "expert_group_used_count"] {
            let kg = key(k);
            if opt(f, &kg)?.unwrap_or(0) > 1 {
                return Err(meta_err(
                    &kg,
                    "group-limited routing is not part of DeepSeek V4",
                ));
            }
        }
        let kse = key("swiglu_clamp_exp");
        let swiglu_exp = per_block(f, &kse, n_block)?.ok_or_else(|| meta_err(&kse, "missing"))?;
        let swiglu_shexp = per_block(f, &key("swiglu_clamp_shexp"), n_block)?
            .unwrap_or_else(|| swiglu_exp.clone());

        let khc = key("hyper_connection.count");
        let hc_mult = within(&khc, req(f, &khc)?, 1, 64)?;
        let khi = key("hyper_connection.sinkhorn_iterations");
        let hc_iters = within(&khi, req(f, &khi)?, 1, 1000)?;
        let khe = key("hyper_connection.epsilon");
        let hc_eps = finite(&khe, f.get_f32(&khe)?)?;
        let khl = key("hash_layer_count");
        let n_hash = within(&khl, req(f, &khl)?, 0, n_layer)?;
        let (rope_main, rope_compress) = rope_specs(f)?;
        Ok(Ds4HParams {
            n_layer,
            n_nextn,
            n_ctx_train,
            n_embd,
            n_vocab,
            n_head,
            head_dim,
            n_rot,
            rms_eps,
            q_lora_rank,
            o_groups,
            o_lora_rank,
            n_swa,
            kinds,
            idx_heads,
            idx_dim,
            idx_top_k,
            n_expert,
            n_expert_used,
            n_ff_exp,
            n_shared,
            weights_scale,
            weights_norm,
            swiglu_exp,
            swiglu_shexp,
            hc_mult,
            hc_iters,
            hc_eps,
            n_hash,
            rope_main,
            rope_compress,
        })
    }
}
