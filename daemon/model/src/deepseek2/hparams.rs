//! Hyper-parameters of `deepseek2` GGUF files (DeepSeek V2/V2.5/V3/R1 as
//! llama.cpp's converter writes them), read from metadata and checked for
//! consistency before any tensor is bound.
//!
//! Besides the shapes, this owns the two scale factors that llama.cpp
//! derives for DeepSeek's YaRN: the RoPE `attn_factor` (which cancels the
//! magnitude scaling ggml's RoPE would apply) and the attention score scale
//! `kq_scale = mscale² / sqrt(qk_head_dim)` with
//! `mscale = 1 + 0.1 · yarn_log_mul · ln(factor)`.

use dwarfstar_gguf::{GgufFile, Value};
use dwarfstar_kernels::ops::{Rope, RopeStyle, Yarn};

use crate::error::{meta_err, Result};

/// The `general.architecture` this module runs.
pub const ARCH: &str = "deepseek2";

/// The full metadata key `deepseek2.<k>`.
pub fn key(k: &str) -> String {
    format!("{ARCH}.{k}")
}

/// How router logits become expert probabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gating {
    /// `deepseek2.expert_gating_func = 1` (DeepSeek V2, the default).
    Softmax,
    /// `deepseek2.expert_gating_func = 2` (DeepSeek V3/R1).
    Sigmoid,
}

/// The routed-expert half of the MoE layers.
#[derive(Clone, Debug)]
pub struct MoeParams {
    pub n_expert: usize,
    pub n_expert_used: usize,
    /// Expert groups (`expert_group_count`); 0 or 1: no group limit.
    pub n_group: usize,
    /// Groups a token may pick its experts from (`expert_group_used_count`).
    pub n_group_used: usize,
    /// Hidden size of one expert (`expert_feed_forward_length`).
    pub n_ff_exp: usize,
    /// Shared experts, run on every token (`expert_shared_count`).
    pub n_shared: usize,
    /// The routed scaling factor (`expert_weights_scale`; 0 means 1).
    pub weights_scale: f32,
    /// Normalise the selected weights to sum to one (`expert_weights_norm`).
    pub weights_norm: bool,
    pub gating: Gating,
}

/// The shape of a `deepseek2` model.
#[derive(Clone, Debug)]
pub struct Ds2HParams {
    /// Trunk layers (`block_count` less any trailing MTP blocks, which are
    /// not run).
    pub n_layer: usize,
    pub n_ctx_train: usize,
    pub n_embd: usize,
    pub n_vocab: usize,
    pub n_head: usize,
    /// FFN size of the leading dense layers.
    pub n_ff: usize,
    /// Layers `0..n_layer_dense_lead` have a dense FFN, the rest MoE.
    pub n_layer_dense_lead: usize,
    pub rms_eps: f32,
    /// Query compression rank; 0: the query comes from `attn_q` directly
    /// (V2-Lite).
    pub q_lora_rank: usize,
    /// Width of the cached KV latent.
    pub kv_lora_rank: usize,
    /// Query/key head size before absorption: `qk_nope + qk_rope`.
    pub head_dim_qk: usize,
    /// Value head size after `attn_v_b`.
    pub head_dim_v: usize,
    /// Rotated dimensions per head (`qk_rope_head_dim`).
    pub n_rot: usize,
    pub rope: Rope,
    /// The multiplier of attention scores.
    pub kq_scale: f32,
    /// `None` when every layer is dense.
    pub moe: Option<MoeParams>,
}

impl Ds2HParams {
    /// Non-rotated query/key dimensions per head.
    pub fn qk_nope(&self) -> usize {
        self.head_dim_qk - self.n_rot
    }

    /// Floats cached per token and layer: the latent plus the rope key.
    pub fn cache_row(&self) -> usize {
        self.kv_lora_rank + self.n_rot
    }

    /// Whether layer `il` routes through experts.
    pub fn is_moe(&self, il: usize) -> bool {
        il >= self.n_layer_dense_lead
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

/// A count that llama.cpp also accepts per layer: an array whose non-zero
/// entries must agree (dense layers may store 0).
fn uniform(f: &GgufFile, k: &str) -> Result<Option<usize>> {
    if let Some(Value::Array(arr)) = f.get(k) {
        if !arr.is_integer() {
            return Err(meta_err(k, "expected integers"));
        }
        let vals: Vec<i128> = (0..arr.len())
            .filter_map(|i| arr.integer_at(i))
            .filter(|&v| v != 0)
            .collect();
        let first = match vals.first() {
            Some(&v) => v,
            None => return Ok(Some(0)),
        };
        if vals.iter().any(|&v| v != first) {
            return Err(meta_err(
                k,
                "per-layer values that differ are not supported",
            ));
        }
        return to_usize(
            k,
            u64::try_from(first).map_err(|_| meta_err(k, "negative"))?,
        )
        .map(Some);
    }
    opt(f, k)
}

fn positive(k: &str, v: usize, max: usize) -> Result<usize> {
    if v == 0 || v > max {
        return Err(meta_err(k, format!("{v} is outside 1..={max}")));
    }
    Ok(v)
}

/// ggml's YaRN magnitude correction `0.1 · m · ln(s) + 1` (1 for s ≤ 1).
fn yarn_mscale(scale: f32, m: f32) -> f32 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * m * scale.ln() + 1.0
    }
}

/// The RoPE parameters and the attention score scale, as llama.cpp derives
/// them for deepseek2 (see the module doc).
fn rope_and_scale(
    f: &GgufFile,
    n_rot: usize,
    head_dim_qk: usize,
    n_ctx_train: usize,
) -> Result<(Rope, f32)> {
    let freq_base = f.opt_f32(&key("rope.freq_base"))?.unwrap_or(10000.0);
    let kt = key("rope.scaling.type");
    let scaling = f.opt_str(&kt)?.unwrap_or("linear").to_string();
    let is_yarn = match scaling.as_str() {
        "none" | "linear" => false,
        "yarn" => true,
        other => return Err(meta_err(&kt, format!("unsupported RoPE scaling {other:?}"))),
    };
    let factor = match f.opt_f32(&key("rope.scaling.factor"))? {
        Some(v) => v,
        None => f.opt_f32(&key("rope.scale_linear"))?.unwrap_or(0.0),
    };
    if !(factor.is_finite() && factor >= 0.0) {
        return Err(meta_err(&key("rope.scaling.factor"), format!("{factor}")));
    }
    let mut freq_scale = if factor == 0.0 { 1.0 } else { 1.0 / factor };
    if scaling == "none" {
        freq_scale = 1.0;
    }
    // The converter stores 0.1 × mscale_all_dim; llama.cpp cancels the 0.1.
    let log_mul = f
        .opt_f32(&key("rope.scaling.yarn_log_multiplier"))?
        .map(|v| v / 0.1)
        .unwrap_or(0.0);
    let rope_attn_factor = f.opt_f32(&key("rope.scaling.attn_factor"))?.unwrap_or(1.0);
    let n_ctx_orig = opt(f, &key("rope.scaling.original_context_length"))?.unwrap_or(n_ctx_train);

    let mut attn_factor = 1.0f32;
    let ext_factor = if is_yarn { 1.0f32 } else { 0.0 };
    if ext_factor != 0.0 {
        let s = 1.0 / freq_scale;
        attn_factor = if log_mul != 0.0 {
            // llama.cpp's deepseek2 special case: mscale = mscale_all_dim
            // unless the latter is 1.
            let m = if log_mul != 1.0 { log_mul } else { 1.0 };
            yarn_mscale(s, m) / yarn_mscale(s, log_mul)
        } else {
            yarn_mscale(s, 1.0)
        };
        // ggml's RoPE multiplies by this again; cancel it.
        attn_factor *= 1.0 / (1.0 + 0.1 * s.ln());
    }
    attn_factor *= rope_attn_factor;

    let inv = (1.0 / freq_scale).ln();
    let attn_factor_org = attn_factor * (1.0 + 0.1 * inv);
    let mscale = attn_factor_org * (1.0 + 0.1 * log_mul * inv);
    let kq_scale = mscale * mscale / (head_dim_qk as f32).sqrt();

    let rope = Rope {
        style: RopeStyle::Normal,
        n_rot,
        freq_base,
        freq_scale,
        yarn: Yarn {
            ext_factor,
            attn_factor,
            n_ctx_orig: u32::try_from(n_ctx_orig)
                .map_err(|_| meta_err(&key("rope.scaling.original_context_length"), "too large"))?,
            ..Yarn::default()
        },
    };
    Ok((rope, kq_scale))
}

fn moe_params(f: &GgufFile, n_layer: usize, n_vocab: usize) -> Result<MoeParams> {
    let kc = key("expert_count");
    let n_expert = positive(&kc, req(f, &kc)?, 4096)?;
    let ku = key("expert_used_count");
    let n_expert_used = uniform(f, &ku)?.ok_or_else(|| meta_err(&ku, "missing"))?;
    if n_expert_used == 0 || n_expert_used > n_expert {
        return Err(meta_err(
            &ku,
            format!("{n_expert_used} of {n_expert} experts"),
        ));
    }
    let kg = key("expert_group_count");
    let n_group = opt(f, &kg)?.unwrap_or(0);
    let kgu = key("expert_group_used_count");
    let n_group_used = opt(f, &kgu)?.unwrap_or(0);
    if n_group > 1 {
        if n_group >= n_expert || n_expert % n_group != 0 {
            return Err(meta_err(
                &kg,
                format!("{n_expert} experts cannot form {n_group} groups"),
            ));
        }
        if n_group_used == 0 || n_group_used >= n_group {
            return Err(meta_err(
                &kgu,
                format!("{n_group_used} of {n_group} groups"),
            ));
        }
        if n_expert_used > n_group_used * (n_expert / n_group) {
            return Err(meta_err(
                &ku,
                format!(
                    "{n_expert_used} experts do not fit in {n_group_used} groups of {}",
                    n_expert / n_group
                ),
            ));
        }
    }
    let kf = key("expert_feed_forward_length");
    let n_ff_exp = uniform(f, &kf)?.ok_or_else(|| meta_err(&kf, "missing"))?;
    positive(&kf, n_ff_exp, 1 << 20)?;
    let n_shared = req(f, &key("expert_shared_count"))?;
    if n_shared > 64 {
        return Err(meta_err(&key("expert_shared_count"), format!("{n_shared}")));
    }
    let weights_scale = f.opt_f32(&key("expert_weights_scale"))?.unwrap_or(0.0);
    if !weights_scale.is_finite() || weights_scale < 0.0 {
        return Err(meta_err(
            &key("expert_weights_scale"),
            format!("{weights_scale}"),
        ));
    }
    let weights_norm = f.opt_bool(&key("expert_weights_norm"))?.unwrap_or(false);
    let kgf = key("expert_gating_func");
    let gating = match f.opt_u32(&kgf)?.unwrap_or(0) {
        1 => Gating::Softmax,
        2 => Gating::Sigmoid,
        // Files written before the key existed: V2/V2.5 (softmax), except
        // GLM 4.7 Lite, which llama.cpp recognises by its shape.
        0 if (n_layer == 47 || n_layer == 48) && n_vocab == 154880 => Gating::Sigmoid,
        0 => Gating::Softmax,
        other => {
            return Err(meta_err(
                &kgf,
                format!("gating function {other} is not supported"),
            ))
        }
    };
    Ok(MoeParams {
        n_expert,
        n_expert_used,
        n_group,
        n_group_used,
        n_ff_exp,
        n_shared,
        weights_scale,
        weights_norm,
        gating,
    })
}

impl Ds2HParams {
    /// Reads and checks the hyper-parameters of a deepseek2 file.
    pub fn from_gguf(f: &GgufFile) -> Result<Ds2HParams> {
        let kb = key("block_count");
        let n_block = positive(&kb, req(f, &kb)?, 4096)?;
        // Trailing multi-token-prediction blocks are not part of the trunk.
        let kn = key("nextn_predict_layers");
        let n_nextn = opt(f, &kn)?.unwrap_or(0);
        if n_nextn >= n_block {
            return Err(meta_err(&kn, format!("{n_nextn} of {n_block} blocks")));
        }
        let n_layer = n_block - n_nextn;
        let n_ctx_train = req(f, &key("context_length"))?;
        let ke = key("embedding_length");
        let n_embd = positive(&ke, req(f, &ke)?, 1 << 20)?;
        let kh = key("attention.head_count");
        let n_head = uniform(f, &kh)?.ok_or_else(|| meta_err(&kh, "missing"))?;
        positive(&kh, n_head, 4096)?;
        let rms_eps = f.get_f32(&key("attention.layer_norm_rms_epsilon"))?;
        if !(rms_eps.is_finite() && rms_eps >= 0.0) {
            return Err(meta_err(
                &key("attention.layer_norm_rms_epsilon"),
                format!("{rms_eps}"),
            ));
        }
        let n_vocab = match opt(f, &key("vocab_size"))? {
            Some(v) => v,
            None => f
                .opt_str_array("tokenizer.ggml.tokens")?
                .map(|t| t.len())
                .ok_or_else(|| {
                    meta_err(&key("vocab_size"), "missing (and no tokenizer.ggml.tokens)")
                })?,
        };
        positive(&key("vocab_size"), n_vocab, 1 << 24)?;

        let kd = key("leading_dense_block_count");
        let n_layer_dense_lead = opt(f, &kd)?.unwrap_or(0);
        if n_layer_dense_lead > n_layer {
            return Err(meta_err(
                &kd,
                format!("{n_layer_dense_lead} of {n_layer} layers"),
            ));
        }
        let n_ff = if n_layer_dense_lead > 0 {
            let kf = key("feed_forward_length");
            let v = uniform(f, &kf)?.ok_or_else(|| meta_err(&kf, "missing"))?;
            positive(&kf, v, 1 << 22)?
        } else {
            0
        };

        let q_lora_rank = opt(f, &key("attention.q_lora_rank"))?.unwrap_or(0);
        let kkv = key("attention.kv_lora_rank");
        let kv_lora_rank = positive(&kkv, req(f, &kkv)?, 1 << 16)?;
        let kkm = key("attention.key_length_mla");
        let head_dim_qk = opt(f, &kkm)?.ok_or_else(|| {
            meta_err(
                &kkm,
                "missing: a GGUF without split attn_k_b/attn_v_b (old attn_kv_b layout) is not supported; re-convert it",
            )
        })?;
        positive(&kkm, head_dim_qk, 4096)?;
        let kvm = key("attention.value_length_mla");
        let head_dim_v = positive(&kvm, req(f, &kvm)?, 4096)?;
        let kr = key("rope.dimension_count");
        let n_rot = req(f, &kr)?;
        if n_rot == 0 || n_rot % 2 != 0 || n_rot >= head_dim_qk {
            return Err(meta_err(
                &kr,
                format!("{n_rot} rotated dims in query/key heads of {head_dim_qk}"),
            ));
        }
        // The absorbed (MQA) view llama.cpp records: K = latent ‖ rope key.
        if let Some(k) = opt(f, &key("attention.key_length"))? {
            if k != kv_lora_rank + n_rot {
                return Err(meta_err(
                    &key("attention.key_length"),
                    format!(
                        "{k}, but {kkv} ({kv_lora_rank}) + {kr} ({n_rot}) = {}",
                        kv_lora_rank + n_rot
                    ),
                ));
            }
        }
        if let Some(v) = opt(f, &key("attention.value_length"))? {
            if v != kv_lora_rank {
                return Err(meta_err(
                    &key("attention.value_length"),
                    format!("{v}, but {kkv} is {kv_lora_rank}"),
                ));
            }
        }
        if let Some(t) = f.opt_f32(&key("attention.temperature_scale"))? {
            if t != 0.0 {
                return Err(meta_err(
                    &key("attention.temperature_scale"),
                    "attention temperature tuning is not supported",
                ));
            }
        }

        let (rope, kq_scale) = rope_and_scale(f, n_rot, head_dim_qk, n_ctx_train)?;
        let moe = if n_layer_dense_lead < n_layer {
            Some(moe_params(f, n_layer, n_vocab)?)
        } else {
            None
        };
        Ok(Ds2HParams {
            n_layer,
            n_ctx_train,
            n_embd,
            n_vocab,
            n_head,
            n_ff,
            n_layer_dense_lead,
            rms_eps,
            q_lora_rank,
            kv_lora_rank,
            head_dim_qk,
            head_dim_v,
            n_rot,
            rope,
            kq_scale,
            moe,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A metadata-only file with real DeepSeek V3's attention and RoPE keys.
    fn v3_like() -> GgufFile {
        let mut f = GgufFile::from_bytes(minimal_gguf()).expect("empty gguf parses");
        let set = |f: &mut GgufFile, k: &str, v: Value| {
            f.set(key(k), v);
        };
        set(&mut f, "context_length", Value::U32(163840));
        set(&mut f, "rope.freq_base", Value::F32(10000.0));
        set(&mut f, "rope.scaling.type", Value::String("yarn".into()));
        set(&mut f, "rope.scaling.factor", Value::F32(40.0));
        set(
            &mut f,
            "rope.scaling.original_context_length",
            Value::U32(4096),
        );
        set(&mut f, "rope.scaling.yarn_log_multiplier", Value::F32(0.1));
        f
    }

    /// The bytes of a GGUF v3 file with no metadata and no tensors.
    fn minimal_gguf() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b
    }

    #[test]
    fn v3_yarn_scales_follow_llama_cpp() {
        let f = v3_like();
        let (rope, kq) = rope_and_scale(&f, 64, 192, 163840).unwrap();
        // mscale = 1 + 0.1 · 1.0 · ln 40; kq = mscale² / sqrt(192).
        let m = 1.0 + 0.1 * 40f32.ln();
        assert!((kq - m * m / 192f32.sqrt()).abs() < 1e-6, "{kq}");
        assert_eq!(rope.freq_scale, 1.0 / 40.0);
        assert_eq!(rope.yarn.ext_factor, 1.0);
        assert_eq!(rope.yarn.n_ctx_orig, 4096);
        // ggml's RoPE multiplies cos/sin by attn_factor · (1 + 0.1 ln 40):
        // the product must be 1 (no magnitude change on q/k).
        let mut cs = Vec::new();
        rope.cos_sin(12345, &mut cs);
        for (c, s) in cs {
            assert!((c * c + s * s - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn no_scaling_gives_plain_inverse_sqrt() {
        let mut f = GgufFile::from_bytes(minimal_gguf()).unwrap();
        f.set(key("rope.freq_base"), Value::F32(10000.0));
        let (rope, kq) = rope_and_scale(&f, 16, 48, 2048).unwrap();
        assert_eq!(rope.yarn.ext_factor, 0.0);
        assert_eq!(rope.freq_scale, 1.0);
        assert!((kq - 1.0 / 48f32.sqrt()).abs() < 1e-7);
    }

    #[test]
    fn unknown_scaling_names_the_key() {
        let mut f = v3_like();
        f.set(key("rope.scaling.type"), Value::String("longrope".into()));
        let e = rope_and_scale(&f, 64, 192, 163840).unwrap_err().to_string();
        assert!(e.contains("deepseek2.rope.scaling.type"), "{e}");
    }
}
