//! Hyper-parameters read from GGUF metadata, checked for consistency before
//! any tensor is touched.

use dwarfstar_gguf::GgufFile;
use dwarfstar_kernels::ops::{Rope, RopeStyle, Yarn};

use crate::arch::ArchSpec;
use crate::error::{meta_err, Result};

/// The shape of a dense transformer, as its metadata declares it.
#[derive(Clone, Debug)]
pub struct HParams {
    pub arch: String,
    pub n_layer: usize,
    pub n_ctx_train: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim_k: usize,
    pub head_dim_v: usize,
    pub rms_eps: f32,
    pub n_vocab: usize,
    pub rope: Rope,
    /// Sliding window size, for the layers that use one.
    pub n_swa: usize,
    /// Per layer: whether it is a sliding-window layer.
    pub swa_layers: Vec<bool>,
    /// RoPE base of sliding-window layers.
    pub rope_base_swa: f32,
    /// Multiplier of the attention scores (1/sqrt(head_dim) unless stated).
    pub attn_scale: f32,
    /// Final logit soft-capping, if any.
    pub final_softcap: Option<f32>,
}

fn key(arch: &str, k: &str) -> String {
    format!("{arch}.{k}")
}

fn req_usize(f: &GgufFile, k: &str) -> Result<usize> {
    let v = f.get_u64(k)?;
    usize::try_from(v).map_err(|_| meta_err(k, "value does not fit in memory"))
}

fn opt_usize(f: &GgufFile, k: &str) -> Result<Option<usize>> {
    Ok(f.opt_u64(k)?.map(|v| v as usize))
}

/// Reads a head count that may be stored per layer; all layers must agree.
fn head_count(f: &GgufFile, k: &str) -> Result<Option<usize>> {
    if let Ok(Some(arr)) = f.opt_u32_array(k) {
        let first = *arr.first().ok_or_else(|| meta_err(k, "empty array"))?;
        if arr.iter().any(|&v| v != first) {
            return Err(meta_err(
                k,
                "per-layer head counts that differ are not supported",
            ));
        }
        return Ok(Some(first as usize));
    }
    opt_usize(f, k)
}

impl HParams {
    /// Reads and checks the hyper-parameters of a dense architecture.
    pub fn from_gguf(f: &GgufFile, spec: &ArchSpec) -> Result<HParams> {
        let a = spec.name;
        let n_layer = req_usize(f, &key(a, "block_count"))?;
        let n_embd = req_usize(f, &key(a, "embedding_length"))?;
        let n_ff = req_usize(f, &key(a, "feed_forward_length"))?;
        let kh = key(a, "attention.head_count");
        let n_head = head_count(f, &kh)?.ok_or_else(|| meta_err(&kh, "missing"))?;
        let n_head_kv = head_count(f, &key(a, "attention.head_count_kv"))?.unwrap_or(n_head);
        if n_layer == 0 || n_layer > 4096 {
            return Err(meta_err(
                &key(a, "block_count"),
                format!("{n_layer} layers"),
            ));
        }
        if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(meta_err(
                &key(a, "attention.head_count_kv"),
                format!("{n_head} query heads cannot share {n_head_kv} KV heads"),
            ));
        }
        let head_dim_k = opt_usize(f, &key(a, "attention.key_length"))?.unwrap_or(n_embd / n_head);
        let head_dim_v =
            opt_usize(f, &key(a, "attention.value_length"))?.unwrap_or(n_embd / n_head);
        if head_dim_k == 0 || head_dim_v == 0 || head_dim_k > 4096 {
            return Err(meta_err(&key(a, "attention.key_length"), "bad head size"));
        }
        let rms_eps = f
            .opt_f32(&key(a, "attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-5);
        let n_vocab = match opt_usize(f, &key(a, "vocab_size"))? {
            Some(v) => v,
            None => f
                .opt_str_array("tokenizer.ggml.tokens")?
                .map(|t| t.len())
                .ok_or_else(|| meta_err("tokenizer.ggml.tokens", "missing"))?,
        };
        let n_rot = opt_usize(f, &key(a, "rope.dimension_count"))?.unwrap_or(head_dim_k);
        if n_rot > head_dim_k || n_rot % 2 != 0 {
            return Err(meta_err(
                &key(a, "rope.dimension_count"),
                format!("{n_rot} rotated dims in heads of {head_dim_k}"),
            ));
        }
        let freq_base = f.opt_f32(&key(a, "rope.freq_base"))?.unwrap_or(10000.0);
        let mut freq_scale = 1.0f32;
        let mut yarn = Yarn::default();
        let n_ctx_train = opt_usize(f, &key(a, "context_length"))?.unwrap_or(2048);
        if let Some(s) = f.opt_f32(&key(a, "rope.scale_linear"))? {
            if s > 0.0 {
                freq_scale = 1.0 / s;
            }
        }
        let scaling = f.opt_str(&key(a, "rope.scaling.type"))?;
        if let Some(t) = scaling {
            let factor = f.opt_f32(&key(a, "rope.scaling.factor"))?.unwrap_or(0.0);
            match t {
                "none" => {}
                "linear" => {
                    if factor > 0.0 {
                        freq_scale = 1.0 / factor;
                    }
                }
                "yarn" => {
                    if factor > 0.0 {
                        freq_scale = 1.0 / factor;
                    }
                    yarn.ext_factor = 1.0;
                    yarn.n_ctx_orig = opt_usize(f, &key(a, "rope.scaling.original_context_length"))?
                        .unwrap_or(n_ctx_train) as u32;
                    if let Some(v) = f.opt_f32(&key(a, "rope.scaling.yarn_beta_fast"))? {
                        yarn.beta_fast = v;
                    }
                    if let Some(v) = f.opt_f32(&key(a, "rope.scaling.yarn_beta_slow"))? {
                        yarn.beta_slow = v;
                    }
                }
                other => {
                    return Err(meta_err(
                        &key(a, "rope.scaling.type"),
                        format!("unknown scaling {other:?}"),
                    ))
                }
            }
        }
        yarn.n_ctx_orig = yarn.n_ctx_orig.max(n_ctx_train as u32);
        let rope = Rope {
            style: spec.rope_style,
            n_rot,
            freq_base,
            freq_scale,
            yarn,
        };
        let n_swa = opt_usize(f, &key(a, "attention.sliding_window"))?.unwrap_or(0);
        let mut swa_layers = vec![false; n_layer];
        if n_swa > 0 {
            if let Some(p) = spec.swa_pattern {
                let p = f
                    .opt_u32(&key(a, "attention.sliding_window_pattern"))?
                    .unwrap_or(p) as usize;
                for (il, s) in swa_layers.iter_mut().enumerate() {
                    *s = p == 0 || il % p < p - 1;
                }
            }
        }
        let rope_base_swa = f
            .opt_f32(&key(a, "rope.freq_base_swa"))?
            .or(spec.swa_rope_base)
            .unwrap_or(freq_base);
        let attn_scale = 1.0 / (head_dim_k as f32).sqrt();
        let final_softcap = f
            .opt_f32(&key(a, "final_logit_softcapping"))?
            .filter(|&v| v > 0.0);
        Ok(HParams {
            arch: a.to_string(),
            n_layer,
            n_ctx_train,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            head_dim_k,
            head_dim_v,
            rms_eps,
            n_vocab,
            rope,
            n_swa,
            swa_layers,
            rope_base_swa,
            attn_scale,
            final_softcap,
        })
    }

    /// The RoPE of layer `il` (sliding-window layers may use another base).
    pub fn rope_for(&self, il: usize) -> Rope {
        let mut r = self.rope;
        if self.swa_layers[il] {
            r.freq_base = self.rope_base_swa;
        }
        r
    }

    /// Query width: heads × key size.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim_k
    }

    /// Key width per token: KV heads × key size.
    pub fn k_dim(&self) -> usize {
        self.n_head_kv * self.head_dim_k
    }

    /// Value width per token: KV heads × value size.
    pub fn v_dim(&self) -> usize {
        self.n_head_kv * self.head_dim_v
    }

    pub fn rope_style(&self) -> RopeStyle {
        self.rope.style
    }
}
