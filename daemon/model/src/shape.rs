//! A model's shape as the planner sees it: bytes per layer split into
//! dense / shared-expert / routed-expert parts, expert counts, KV bytes per
//! token and the bytes a decode step reads — from the tensor directory and
//! the hyper-parameters, without binding any weight.
//!
//! Tensor classes ([`tensor_class`], also what `dwarfstar inspect` counts):
//!
//! - `routed_experts`: stacked expert tensors (`*_exps`);
//! - `shared_experts`: `*_shexp` (the shared expert and its gate);
//! - `attention`: every `attn_*` tensor of a block except its residual
//!   norms (`attn_norm`, `attn_post_norm`), so Q/K/V/O, QK norms, MLA's
//!   low-rank factors and norms, sinks, and DeepSeek V4's compressor and
//!   indexer (`attn_compressor_*`, `indexer.*`, `indexer_*`);
//! - `embeddings`: the token embedding and the lm head (`output.weight`);
//! - `other`: residual norms, dense FFN, the router (`ffn_gate_inp`,
//!   `exp_probs_b`, `ffn_gate_tid2eid`), hyper-connection mixers, the
//!   output norm, RoPE factors.
//!
//! In a [`LayerShape`] everything of a block that is not an expert counts
//! as `dense_bytes` (attention + norms + dense FFN + router). Tensors
//! outside the blocks are `embed_bytes`, except those named `output*`
//! (`output_norm`, `output`, V4's `output_hc_*`), which are `output_bytes`;
//! with tied embeddings the token embedding is counted in `output_bytes`
//! too (the output node needs it) and `tied_embeddings` says so. Blocks
//! past the trunk (multi-token-prediction layers, which are not run) are
//! `unused_bytes`.
//!
//! KV bytes per token follow each architecture's own cache: dense models
//! `(k_dim + v_dim) · 4` per layer (f32 cache), deepseek2
//! `(kv_lora_rank + rope dims) · 4` (f32 latent), deepseek4 the compressed
//! entries and indexer keys in f16 (`(head_dim + idx_dim)/4 · 2` on CSA
//! layers, `head_dim/128 · 2` on HCA layers, rounded up per layer; the
//! whole-model figure is computed as `Deepseek4Model::kv_bytes_per_token`
//! does, token ids included) with the sliding windows and compressor
//! states as `kv_fixed_bytes`. Other architectures: `(n_head_kv ·
//! (key_length + value_length)) · 4` from their metadata.

use dwarfstar_gguf::{GgufFile, TensorInfo, Value};
pub use dwarfstar_planner::{LayerShape, ModelShape};

use crate::deepseek2::Ds2HParams;
use crate::error::{meta_err, ModelError, Result};
use crate::hparams::HParams;

/// Where a tensor's bytes are counted (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TensorClass {
    RoutedExperts,
    SharedExperts,
    Attention,
    Embeddings,
    Other,
}

impl TensorClass {
    pub const ALL: [TensorClass; 5] = [
        TensorClass::RoutedExperts,
        TensorClass::SharedExperts,
        TensorClass::Attention,
        TensorClass::Embeddings,
        TensorClass::Other,
    ];

    /// The name `dwarfstar inspect --json` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            TensorClass::RoutedExperts => "routed_experts",
            TensorClass::SharedExperts => "shared_experts",
            TensorClass::Attention => "attention",
            TensorClass::Embeddings => "embeddings",
            TensorClass::Other => "other",
        }
    }
}

/// `blk.N.rest` → (N, rest).
pub fn split_block(name: &str) -> Option<(u32, &str)> {
    let rest = name.strip_prefix("blk.")?;
    let (n, rest) = rest.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

/// The class of a tensor, by name.
pub fn tensor_class(name: &str) -> TensorClass {
    let local = split_block(name).map(|(_, r)| r);
    let rest = local.unwrap_or(name);
    if rest.contains("_exps") {
        return TensorClass::RoutedExperts;
    }
    if rest.contains("_shexp") {
        return TensorClass::SharedExperts;
    }
    match local {
        None => {
            if name.starts_with("token_embd.") || name.starts_with("output.") {
                TensorClass::Embeddings
            } else {
                TensorClass::Other
            }
        }
        Some(r) => {
            let base = r.split('.').next().unwrap_or(r);
            let residual_norm = matches!(base, "attn_norm" | "attn_post_norm");
            if (base.starts_with("attn_") && !residual_norm) || base.starts_with("indexer") {
                TensorClass::Attention
            } else {
                TensorClass::Other
            }
        }
    }
}

/// What the architecture says beyond the tensor directory.
struct ArchFacts {
    n_layer: u32,
    hidden: Option<u32>,
    n_used: Option<u32>,
    /// Per layer: KV bytes per token and fixed KV bytes.
    kv: Vec<(u64, u64)>,
    /// Whole-model KV bytes per token, if the model computes it its own way.
    kv_total: Option<u64>,
}

fn arch_key(arch: &str, k: &str) -> String {
    format!("{arch}.{k}")
}

/// A count stored as a scalar or a per-layer array (first non-zero entry).
fn count(f: &GgufFile, key: &str) -> Option<u64> {
    match f.get(key)? {
        Value::Array(a) => (0..a.len())
            .filter_map(|i| a.integer_at(i))
            .find(|&v| v > 0)
            .and_then(|v| u64::try_from(v).ok()),
        v => v.as_integer().and_then(|v| u64::try_from(v).ok()),
    }
}

fn facts(f: &GgufFile, arch: &str) -> Result<ArchFacts> {
    if let Some(spec) = crate::arch::dense_arch(arch) {
        let hp = HParams::from_gguf(f, spec)?;
        let per = ((hp.k_dim() + hp.v_dim()) * 4) as u64;
        return Ok(ArchFacts {
            n_layer: hp.n_layer as u32,
            hidden: Some(hp.n_embd as u32),
            n_used: None,
            kv: vec![(per, 0); hp.n_layer],
            kv_total: None,
        });
    }
    if arch == crate::deepseek2::hparams::ARCH {
        let hp = Ds2HParams::from_gguf(f)?;
        let per = (hp.cache_row() * 4) as u64;
        return Ok(ArchFacts {
            n_layer: hp.n_layer as u32,
            hidden: Some(hp.n_embd as u32),
            n_used: hp.moe.as_ref().map(|m| m.n_expert_used as u32),
            kv: vec![(per, 0); hp.n_layer],
            kv_total: None,
        });
    }
    if arch == "deepseek4" {
        return ds4_facts(f);
    }
    generic_facts(f, arch)
}

/// DeepSeek V4's cache as `Deepseek4Model` keeps it by default (f16
/// compressed entries and indexer keys, f32 windows and compressor state),
/// from the metadata keys its loader reads (see
/// `shared/reference/notes/deepseek-v4-gguf-layouts.md`); the same sums as
/// `Deepseek4Model::kv_bytes_per_token` and `fixed_kv_bytes`.
fn ds4_facts(f: &GgufFile) -> Result<ArchFacts> {
    const KV_BYTES: f64 = 2.0;
    let a = "deepseek4";
    let k = |s: &str| arch_key(a, s);
    let need = |s: &str| count(f, &k(s)).ok_or_else(|| meta_err(&k(s), "missing"));
    let n_block = need("block_count")?;
    let n_nextn = count(f, &k("nextn_predict_layers")).unwrap_or(0);
    if n_block == 0 || n_block > 4096 || n_nextn >= n_block {
        return Err(meta_err(
            &k("block_count"),
            format!("{n_block} blocks, {n_nextn} of them MTP"),
        ));
    }
    let n_layer = (n_block - n_nextn) as usize;
    let head_dim = need("attention.key_length")? as usize;
    let idx_dim = need("attention.indexer.key_length")? as usize;
    let n_swa = need("attention.sliding_window")? as usize;
    let kr = k("attention.compress_ratios");
    let ratios: Vec<i128> = match f.get(&kr) {
        Some(Value::Array(arr)) => (0..arr.len()).filter_map(|i| arr.integer_at(i)).collect(),
        _ => return Err(meta_err(&kr, "missing")),
    };
    if ratios.len() < n_layer {
        return Err(meta_err(
            &kr,
            format!("{} entries for {n_layer} layers", ratios.len()),
        ));
    }
    let window = (n_swa.saturating_sub(1) * head_dim * 4) as u64;
    let mut floats_total = 0.0;
    let mut kv = Vec::with_capacity(n_layer);
    for &r in &ratios[..n_layer] {
        // Per position: the compressed entry (and indexer key) every
        // `ratio` tokens; fixed: the compressor's running state.
        let (floats, state) = match r {
            0 => (0.0, 0),
            4 => (
                (head_dim + idx_dim) as f64 / 4.0,
                2 * 4 * 3 * (head_dim + idx_dim) * 4,
            ),
            128 => (head_dim as f64 / 128.0, 2 * 128 * head_dim * 4),
            other => return Err(meta_err(&kr, format!("ratio {other} (0, 4 or 128)"))),
        };
        floats_total += floats;
        kv.push(((floats * KV_BYTES).ceil() as u64, window + state as u64));
    }
    Ok(ArchFacts {
        n_layer: n_layer as u32,
        hidden: count(f, &k("embedding_length")).map(|h| h as u32),
        n_used: count(f, &k("expert_used_count")).map(|v| v as u32),
        kv,
        // Plus the token id each position keeps.
        kv_total: Some((floats_total * KV_BYTES + 4.0).ceil() as u64),
    })
}

/// An architecture this crate does not run: a plain KV cache from the
/// common metadata keys.
fn generic_facts(f: &GgufFile, arch: &str) -> Result<ArchFacts> {
    let k = |s: &str| arch_key(arch, s);
    let n_layer =
        count(f, &k("block_count")).ok_or_else(|| meta_err(&k("block_count"), "missing"))?;
    if n_layer == 0 || n_layer > 4096 {
        return Err(meta_err(&k("block_count"), format!("{n_layer} layers")));
    }
    let hidden = count(f, &k("embedding_length"));
    let n_head = count(f, &k("attention.head_count"));
    let n_kv = count(f, &k("attention.head_count_kv"))
        .or(n_head)
        .unwrap_or(0);
    let head = match (hidden, n_head) {
        (Some(h), Some(n)) if n > 0 => h / n,
        _ => 0,
    };
    let kl = count(f, &k("attention.key_length")).unwrap_or(head);
    let vl = count(f, &k("attention.value_length")).unwrap_or(head);
    let per = n_kv.saturating_mul(kl + vl).saturating_mul(4);
    Ok(ArchFacts {
        n_layer: n_layer as u32,
        hidden: hidden.map(|h| h as u32),
        n_used: count(f, &k("expert_used_count")).map(|v| v as u32),
        kv: vec![(per, 0); n_layer as usize],
        kv_total: None,
    })
}

/// The shape of the model in `file`.
pub fn model_shape(file: &GgufFile) -> Result<ModelShape> {
    shape_of(file, file.tensors())
}

/// The shape from `file`'s metadata and the tensor directory `tensors`
/// (split out so that tests can describe a model without its bytes).
pub fn shape_of(file: &GgufFile, tensors: &[TensorInfo]) -> Result<ModelShape> {
    let arch = file.get_str("general.architecture")?.to_string();
    let facts = facts(file, &arch)?;
    let n = facts.n_layer as usize;
    let mut layers = vec![LayerShape::default(); n];
    let mut expert_stack = vec![(0u64, 0u64); n];
    let (mut embed, mut output, mut unused) = (0u64, 0u64, 0u64);
    let mut output_params = 0u64;
    let mut embd: Option<&TensorInfo> = None;
    let mut lm_head = false;
    for t in tensors {
        let params = t.n_elements();
        let Some((il, _)) = split_block(&t.name) else {
            if t.name.starts_with("output") {
                output += t.n_bytes;
                if t.name == "output.weight" {
                    lm_head = true;
                    output_params += params;
                }
            } else {
                embed += t.n_bytes;
                if t.name == "token_embd.weight" {
                    embd = Some(t);
                }
            }
            continue;
        };
        let Some(l) = layers.get_mut(il as usize) else {
            unused += t.n_bytes;
            continue;
        };
        match tensor_class(&t.name) {
            TensorClass::RoutedExperts => {
                let e = *t.dims.last().unwrap_or(&0);
                if t.dims.len() < 2 || e == 0 || e > u32::MAX as u64 {
                    return Err(ModelError::Tensor {
                        name: t.name.clone(),
                        msg: format!("expert stack of shape {:?}", t.dims),
                    });
                }
                if l.n_experts != 0 && l.n_experts as u64 != e {
                    return Err(ModelError::Tensor {
                        name: t.name.clone(),
                        msg: format!("{e} experts, but layer {il} has {}", l.n_experts),
                    });
                }
                l.n_experts = e as u32;
                let s = &mut expert_stack[il as usize];
                s.0 += t.n_bytes;
                s.1 += params;
            }
            TensorClass::SharedExperts => {
                l.shared_expert_bytes += t.n_bytes;
                l.shared_expert_params += params;
            }
            _ => {
                l.dense_bytes += t.n_bytes;
                l.dense_params += params;
            }
        }
    }
    let n_vocab = match embd {
        Some(t) => t.dims.get(1).copied().unwrap_or(0),
        None => count(file, &arch_key(&arch, "vocab_size")).unwrap_or(0),
    };
    let tied = !lm_head && embd.is_some();
    if tied {
        let t = embd.expect("checked above");
        output += t.n_bytes;
        output_params += t.n_elements();
    }
    for (il, (l, (bytes, params))) in layers.iter_mut().zip(expert_stack).enumerate() {
        (l.kv_bytes_per_token, l.kv_fixed_bytes) = facts.kv[il];
        if l.n_experts == 0 {
            continue;
        }
        let e = l.n_experts as u64;
        if bytes % e != 0 || params % e != 0 {
            return Err(ModelError::Invalid(format!(
                "layer {il}: {bytes} expert bytes do not split into {e} experts"
            )));
        }
        l.expert_bytes = bytes / e;
        l.expert_params = params / e;
        let used = facts
            .n_used
            .ok_or_else(|| meta_err(&arch_key(&arch, "expert_used_count"), "missing"))?;
        if used == 0 || used > l.n_experts {
            return Err(meta_err(
                &arch_key(&arch, "expert_used_count"),
                format!("{used} of {} experts", l.n_experts),
            ));
        }
        l.n_experts_used = used;
    }
    let hidden = facts
        .hidden
        .or_else(|| embd.map(|t| t.cols() as u32))
        .unwrap_or(0);
    let embed_row = match embd {
        Some(t) if n_vocab > 0 => t.n_bytes / n_vocab,
        _ => 0,
    };
    let active = embed_row
        + output
        + layers
            .iter()
            .map(|l| {
                l.dense_bytes + l.shared_expert_bytes + l.n_experts_used as u64 * l.expert_bytes
            })
            .sum::<u64>();
    let kv_sum: u64 = layers.iter().map(|l| l.kv_bytes_per_token).sum();
    let name = file
        .opt_str("general.name")
        .ok()
        .flatten()
        .unwrap_or(arch.as_str())
        .to_string();
    Ok(ModelShape {
        name,
        arch,
        n_layer: facts.n_layer,
        hidden,
        n_vocab: u32::try_from(n_vocab)
            .map_err(|_| ModelError::Invalid(format!("{n_vocab} tokens")))?,
        embed_bytes: embed,
        output_bytes: output,
        output_params,
        tied_embeddings: tied,
        unused_bytes: unused,
        layers,
        kv_bytes_per_token: facts.kv_total.unwrap_or(kv_sum),
        active_bytes_per_token: active,
    })
}

pub mod builtin;

#[cfg(test)]
mod tests;
