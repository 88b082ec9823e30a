//! The shape of a synthetic deepseek2 file: dimensions chosen from a target
//! size (or given), and the list of tensors with their types, dims and how
//! each one is filled.
//!
//! The dims follow DeepSeek V3's proportions scaled down: per-head sizes
//! stay V3's (`qk_nope` 128, `qk_rope` 64, `v_head` 128), `q_lora_rank` is
//! 3/14 of the hidden size, the dense FFN 18/7 of it, and every row length
//! except `attn_k_b`'s (`qk_nope`) is a multiple of 256, so K-quants and
//! IQ types fit. A target size picks the first rung of [`LADDER`] whose
//! layer count for that size stays at most [`MAX_AUTO_LAYERS`] (V3's 61),
//! then the layer count that lands closest to the size.

use dwarfstar_kernels::GgmlType;

use super::config::{Fill, SynthConfig, TensorPlan};
use super::ladder::Ladder;
use super::SynthError;

/// Hidden size, routed experts, experts per token, expert FFN size.
pub const LADDER: [(usize, usize, usize, usize); 8] = [
    (256, 16, 4, 256),
    (512, 32, 4, 256),
    (1024, 64, 6, 512),
    (1024, 64, 8, 768),
    (2048, 128, 8, 768),
    (3072, 256, 8, 1024),
    (4096, 256, 8, 1536),
    (7168, 256, 8, 2048),
];

/// The deepest model a target size alone produces.
pub const MAX_AUTO_LAYERS: usize = 61;

/// Per-head sizes of DeepSeek V3.
pub const QK_NOPE: usize = 128;
pub const QK_ROPE: usize = 64;
pub const V_HEAD: usize = 128;

/// Every dimension of the file, resolved.
#[derive(Clone, Debug)]
pub struct SynthPlan {
    pub n_layer: usize,
    pub n_dense: usize,
    pub hidden: usize,
    pub n_head: usize,
    /// 0: V2-Lite style direct `attn_q` (llama.cpp forces this for 26 or
    /// 27 layers).
    pub q_lora: usize,
    pub kv_lora: usize,
    pub dense_ff: usize,
    pub n_expert: usize,
    pub top_k: usize,
    pub n_group: usize,
    pub n_group_used: usize,
    pub expert_ff: usize,
    pub n_shared: usize,
    pub n_vocab: usize,
    pub ty: GgmlType,
    pub seed: u64,
    pub skew: f32,
}

fn round256(x: usize) -> usize {
    x.div_ceil(256).max(1) * 256
}

fn is_kquant(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, Q2_K | Q3_K | Q4_K | Q5_K | Q6_K)
}

impl SynthPlan {
    /// `n_layer` layers of the given rung and overrides.
    fn with(
        cfg: &SynthConfig,
        rung: (usize, usize, usize, usize),
        n_layer: usize,
        n_vocab: usize,
    ) -> SynthPlan {
        let hidden = cfg.hidden.unwrap_or(rung.0);
        let n_expert = cfg.experts.unwrap_or(rung.1);
        let top_k = cfg.top_k.unwrap_or(rung.2.min(n_expert));
        let expert_ff = cfg.ffn.unwrap_or(rung.3);
        // V3's grouped routing (8 groups, 4 used) where the experts allow it.
        let (n_group, n_group_used) =
            if n_expert >= 32 && n_expert.is_multiple_of(8) && top_k <= n_expert / 2 {
                (8, 4)
            } else {
                (1, 1)
            };
        let lite = n_layer == 26 || n_layer == 27;
        SynthPlan {
            n_layer,
            n_dense: if n_layer >= 24 { 3 } else { 1 }.min(n_layer.saturating_sub(1)),
            hidden,
            n_head: (hidden / 128).max(2),
            q_lora: if lite { 0 } else { round256(hidden * 3 / 14) },
            kv_lora: if hidden >= 2048 { 512 } else { 256 },
            dense_ff: round256(hidden * 18 / 7),
            n_expert,
            top_k,
            n_group,
            n_group_used,
            expert_ff,
            n_shared: 1,
            n_vocab,
            ty: cfg.ty,
            seed: cfg.seed,
            skew: cfg.skew,
        }
    }

    /// Resolves `cfg` for a vocabulary of `n_vocab` tokens.
    pub fn resolve(cfg: &SynthConfig, n_vocab: usize) -> Result<SynthPlan, SynthError> {
        if cfg.arch != super::ARCH {
            return Err(SynthError::Config(format!(
                "architecture {:?} is not a {} plan ({} and {} are generated)",
                cfg.arch,
                super::ARCH,
                super::ARCH,
                super::ds4::ARCH
            )));
        }
        for (set, what) in [
            (cfg.down_ty.is_some(), "a separate down type"),
            (cfg.heads.is_some(), "--heads"),
            (cfg.head_dim.is_some(), "--head-dim"),
            (!cfg.mtp, "--no-mtp"),
        ] {
            if set {
                return Err(SynthError::Config(format!(
                    "{what} is for {} only",
                    super::ds4::ARCH
                )));
            }
        }
        if !(cfg.skew.is_finite() && cfg.skew >= 0.0) {
            return Err(SynthError::Config(format!("skew {} is not >= 0", cfg.skew)));
        }
        let plan = match (cfg.layers, cfg.size) {
            (Some(l), _) => SynthPlan::with(cfg, LADDER[0], l, n_vocab),
            (None, size) => {
                let build = |rung, l| SynthPlan::with(cfg, rung, l, n_vocab);
                // llama.cpp reads 26- and 27-layer files as V2-Lite.
                let adjust = |l: usize| if l == 26 || l == 27 { 28 } else { l };
                Ladder {
                    rungs: &LADDER,
                    min_layers: 2,
                    max_layers: 1 << 16,
                    max_auto: MAX_AUTO_LAYERS,
                    build: &build,
                    bytes: &|p: &SynthPlan| p.total_bytes(),
                    adjust: &adjust,
                    arch: super::ARCH,
                }
                .fit(size.unwrap_or(64 << 20))?
            }
        };
        plan.check()?;
        Ok(plan)
    }

    fn check(&self) -> Result<(), SynthError> {
        let bad = |m: String| Err(SynthError::Config(m));
        if self.n_layer < 2 || self.n_layer > 4096 {
            return bad(format!("{} layers: give 2..=4096", self.n_layer));
        }
        for (what, v) in [("hidden", self.hidden), ("ffn", self.expert_ff)] {
            if v == 0 || !v.is_multiple_of(256) || v > 1 << 16 {
                return bad(format!(
                    "--{what} {v} must be a multiple of 256 (at most 65536)"
                ));
            }
        }
        if self.n_expert < 2 || self.n_expert > 1024 {
            return bad(format!("{} experts: give 2..=1024", self.n_expert));
        }
        if self.top_k == 0 || self.top_k > self.n_expert {
            return bad(format!("top-k {} of {} experts", self.top_k, self.n_expert));
        }
        let ty = self.ty;
        if !256usize.is_multiple_of(ty.block_size()) || ty.is_integer() {
            return bad(format!("type {ty} does not tile 256-value rows"));
        }
        let has_quant = dwarfstar_kernels::type_kernels(ty)
            .map(|k| k.quantize.is_some())
            .unwrap_or(false);
        if !has_quant {
            return bad(format!("type {ty} has no quantizer in the kernels crate"));
        }
        Ok(())
    }

    /// The residual-branch output scale: `1/sqrt(2·n_layer)`, so the
    /// residual stream's variance at most doubles over the whole model.
    fn res_scale(&self) -> f32 {
        1.0 / ((2 * self.n_layer) as f32).sqrt()
    }

    /// The type of a matrix whose rows are `ne0` long.
    fn mat_ty(&self, ne0: usize) -> GgmlType {
        if ne0.is_multiple_of(self.ty.block_size()) {
            self.ty
        } else {
            GgmlType::Q8_0
        }
    }

    fn output_ty(&self) -> GgmlType {
        if is_kquant(self.ty) {
            GgmlType::Q6_K
        } else {
            self.ty
        }
    }

    /// The tensors of layer `il`, in file order.
    pub fn layer_tensors(&self, il: usize) -> Vec<TensorPlan> {
        let mut out = Vec::new();
        let n = |t: &str| format!("blk.{il}.{t}");
        let inv = |x: usize| 1.0 / (x as f32).sqrt();
        let rs = self.res_scale();
        let (h, kv) = (self.hidden, self.kv_lora);
        let mut mat = |name: String, dims: Vec<usize>, sigma: f32| {
            out.push(TensorPlan {
                ty: self.mat_ty(dims[0]),
                dims: dims.iter().map(|&d| d as u64).collect(),
                name,
                fill: Fill::Pool { sigma },
            });
        };
        let q_out = self.n_head * (QK_NOPE + QK_ROPE);
        if self.q_lora > 0 {
            mat(n("attn_q_a.weight"), vec![h, self.q_lora], inv(h));
            mat(
                n("attn_q_b.weight"),
                vec![self.q_lora, q_out],
                inv(self.q_lora),
            );
        } else {
            mat(n("attn_q.weight"), vec![h, q_out], inv(h));
        }
        mat(n("attn_kv_a_mqa.weight"), vec![h, kv + QK_ROPE], inv(h));
        mat(
            n("attn_k_b.weight"),
            vec![QK_NOPE, kv, self.n_head],
            inv(QK_NOPE),
        );
        mat(n("attn_v_b.weight"), vec![kv, V_HEAD, self.n_head], inv(kv));
        let wo_in = self.n_head * V_HEAD;
        mat(n("attn_output.weight"), vec![wo_in, h], inv(wo_in) * rs);
        if il < self.n_dense {
            let ff = self.dense_ff;
            mat(n("ffn_gate.weight"), vec![h, ff], inv(h));
            mat(n("ffn_up.weight"), vec![h, ff], inv(h));
            mat(n("ffn_down.weight"), vec![ff, h], inv(ff) * rs);
        } else {
            let (ff, e) = (self.expert_ff, self.n_expert);
            mat(n("ffn_gate_exps.weight"), vec![h, ff, e], inv(h));
            mat(n("ffn_up_exps.weight"), vec![h, ff, e], inv(h));
            mat(n("ffn_down_exps.weight"), vec![ff, h, e], inv(ff) * rs);
            let sf = ff * self.n_shared;
            mat(n("ffn_gate_shexp.weight"), vec![h, sf], inv(h));
            mat(n("ffn_up_shexp.weight"), vec![h, sf], inv(h));
            mat(n("ffn_down_shexp.weight"), vec![sf, h], inv(sf) * rs);
        }
        let mut vec = |name: String, dims: Vec<usize>, fill: Fill| {
            out.push(TensorPlan {
                name,
                dims: dims.iter().map(|&d| d as u64).collect(),
                ty: GgmlType::F32,
                fill,
            });
        };
        if il >= self.n_dense {
            vec(
                n("ffn_gate_inp.weight"),
                vec![h, self.n_expert],
                Fill::Router { sigma: inv(h) },
            );
            vec(n("exp_probs_b.bias"), vec![self.n_expert], Fill::Bias);
        }
        vec(n("attn_norm.weight"), vec![h], Fill::Norm);
        if self.q_lora > 0 {
            vec(n("attn_q_a_norm.weight"), vec![self.q_lora], Fill::Norm);
        }
        vec(n("attn_kv_a_norm.weight"), vec![kv], Fill::Norm);
        vec(n("ffn_norm.weight"), vec![h], Fill::Norm);
        out
    }

    /// Every tensor of the file, in file order.
    pub fn tensors(&self) -> Vec<TensorPlan> {
        let h = self.hidden as u64;
        let v = self.n_vocab as u64;
        let mut out = vec![TensorPlan {
            name: "token_embd.weight".into(),
            dims: vec![h, v],
            ty: self.ty,
            fill: Fill::Pool { sigma: 1.0 },
        }];
        for il in 0..self.n_layer {
            out.extend(self.layer_tensors(il));
        }
        out.push(TensorPlan {
            name: "output_norm.weight".into(),
            dims: vec![h],
            ty: GgmlType::F32,
            fill: Fill::Norm,
        });
        out.push(TensorPlan {
            name: "output.weight".into(),
            dims: vec![h, v],
            ty: self.output_ty(),
            // Logits of standard deviation ~3: a peaked, not flat, output.
            fill: Fill::Pool {
                sigma: 3.0 / (self.hidden as f32).sqrt(),
            },
        });
        out
    }

    /// Bytes of tensor data (the file adds metadata and alignment padding).
    pub fn total_bytes(&self) -> u64 {
        let per_layer = |il: usize| -> u64 {
            self.layer_tensors(il)
                .iter()
                .map(|t| t.bytes().div_ceil(32) * 32)
                .sum()
        };
        let mut total = 0;
        if self.n_dense > 0 {
            total += per_layer(0) * self.n_dense as u64;
        }
        if self.n_layer > self.n_dense {
            total += per_layer(self.n_dense) * (self.n_layer - self.n_dense) as u64;
        }
        let h = self.hidden;
        let v = self.n_vocab;
        let row = |ty: GgmlType| ty.row_bytes(h).unwrap_or(0) as u64;
        total + (row(self.ty) + row(self.output_ty())) * v as u64 + 4 * h as u64
    }

    /// Parameters of all routed experts / of what one token runs.
    pub fn params(&self) -> (u64, u64) {
        let all: u64 = self.tensors().iter().map(|t| t.n_elements()).sum();
        let per_expert = 3 * (self.hidden * self.expert_ff) as u64;
        let moe_layers = (self.n_layer - self.n_dense) as u64;
        let unused = per_expert * (self.n_expert - self.top_k) as u64 * moe_layers;
        (all, all - unused)
    }

    /// A one-line description.
    pub fn describe(&self) -> String {
        let (all, active) = self.params();
        format!(
            "deepseek2 {} layers ({} dense), hidden {}, {} heads, q_lora {}, kv_lora {}, \
             {} experts (top-{}, {} groups/{} used, 1 shared) of ffn {}, dense ffn {}, \
             vocab {}, {} — {:.2}B params, {:.2}B active",
            self.n_layer,
            self.n_dense,
            self.hidden,
            self.n_head,
            self.q_lora,
            self.kv_lora,
            self.n_expert,
            self.top_k,
            self.n_group,
            self.n_group_used,
            self.expert_ff,
            self.dense_ff,
            self.n_vocab,
            self.ty,
            all as f64 / 1e9,
            active as f64 / 1e9
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_picks_layers_near_the_target() {
        for (size, ty) in [
            (30u64 << 20, GgmlType::Q4_K),
            (256 << 20, GgmlType::Q8_0),
            (4 << 30, GgmlType::Q4_K),
            (12 << 30, GgmlType::Q2_K),
        ] {
            let p = SynthPlan::resolve(&SynthConfig::new(Some(size), ty), 49152).unwrap();
            let got = p.total_bytes() as f64 / size as f64;
            assert!(
                (0.85..1.15).contains(&got),
                "{size} {ty}: {got} {}",
                p.describe()
            );
            assert!(p.n_layer <= MAX_AUTO_LAYERS, "{}", p.describe());
            for t in p.tensors() {
                assert_eq!(t.dims[0] % t.ty.block_size() as u64, 0, "{}", t.name);
            }
        }
    }

    #[test]
    fn bad_requests_are_errors() {
        let mut c = SynthConfig::new(Some(1 << 20), GgmlType::Q4_K);
        assert!(SynthPlan::resolve(&c, 49152).is_err());
        c.size = None;
        c.layers = Some(4);
        c.hidden = Some(300);
        let e = SynthPlan::resolve(&c, 49152).unwrap_err().to_string();
        assert!(e.contains("hidden"), "{e}");
        c.hidden = None;
        c.arch = "llama".into();
        assert!(SynthPlan::resolve(&c, 49152).is_err());
    }

    #[test]
    fn lite_layer_counts_use_a_direct_query() {
        let mut c = SynthConfig::new(None, GgmlType::Q8_0);
        c.layers = Some(27);
        let p = SynthPlan::resolve(&c, 49152).unwrap();
        assert_eq!(p.q_lora, 0);
        assert!(p.tensors().iter().any(|t| t.name == "blk.3.attn_q.weight"));
    }
}
