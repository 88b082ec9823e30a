//! Binding a deepseek2 file's tensors, every dimension checked against the
//! metadata key that determines it: a file whose `expert_count` (or any
//! other shape key) disagrees with its tensors is rejected with an error
//! naming that key.
//!
//! Stacked tensors (`attn_k_b`/`attn_v_b` per head, `ffn_*_exps` per
//! expert) stay in the mapped file as [`Stack`]s; [`Stack::mat`] is a view
//! of one slice's bytes, so running an expert reads only that expert.

use dwarfstar_gguf::{GgufFile, TensorInfo};
use dwarfstar_kernels::{dequantize_row, MatRef};

use crate::error::{meta_err, ModelError, Result};
use crate::store::WeightBytes;
use crate::weights::Weight;

use super::hparams::{key, Ds2HParams};

/// `n` matrices of `rows × cols` stored back to back (ggml dims
/// `[cols, rows, n]`).
#[derive(Clone, Debug)]
pub struct Stack {
    pub info: TensorInfo,
    pub rows: usize,
    pub cols: usize,
    pub n: usize,
}

impl Stack {
    /// Bytes of one matrix of the stack.
    pub fn slice_bytes(&self) -> usize {
        self.info.ty.row_bytes(self.cols).unwrap_or(0) * self.rows
    }

    /// The matrix `i` of the stack: a view of its bytes only. `i < n` is
    /// the caller's invariant (expert ids come from the router, heads from
    /// the shape).
    /// `src` is the mapped file or a [`crate::store`] source; the view is
    /// empty when `src` does not hold the slice.
    pub fn mat<'a, S: WeightBytes + ?Sized>(&self, src: &'a S, i: usize) -> MatRef<'a> {
        let sb = self.slice_bytes() as u64;
        MatRef {
            ty: self.info.ty,
            data: src
                .range(self.info.offset + i as u64 * sb, sb)
                .unwrap_or(&[]),
            rows: self.rows,
            cols: self.cols,
        }
    }
}

/// How the query is produced.
#[derive(Clone, Debug)]
pub enum QProj {
    /// `attn_q_a` → RMS norm `attn_q_a_norm` → `attn_q_b` (V2, V3).
    Lora {
        a: Weight,
        norm: Vec<f32>,
        b: Weight,
    },
    /// `attn_q` (V2-Lite).
    Direct(Weight),
}

/// One layer's multi-head latent attention.
#[derive(Clone, Debug)]
pub struct MlaWeights {
    pub q: QProj,
    /// `n_embd → kv_lora_rank + n_rot`: the latent and the shared rope key.
    pub kv_a_mqa: Weight,
    pub kv_a_norm: Vec<f32>,
    /// Per head `kv_lora_rank × qk_nope`: absorbs `q_nope` into the latent.
    pub k_b: Stack,
    /// Per head `head_dim_v × kv_lora_rank`: decompresses the attended latent.
    pub v_b: Stack,
    pub wo: Weight,
}

/// The gate, up and down matrices of a SwiGLU FFN.
#[derive(Clone, Debug)]
pub struct Mlp {
    pub gate: Weight,
    pub up: Weight,
    pub down: Weight,
}

/// Gate and up projections of the routed experts.
#[derive(Clone, Debug)]
pub enum GateUp {
    Split {
        gate: Stack,
        up: Stack,
    },
    /// `ffn_gate_up_exps`: per expert, the gate rows then the up rows.
    Fused(Stack),
}

/// One MoE layer's router and experts.
#[derive(Clone, Debug)]
pub struct MoeWeights {
    /// Router `n_embd → n_expert`.
    pub gate_inp: Weight,
    /// Selection bias (`exp_probs_b`, DeepSeek V3's noaux_tc correction).
    pub probs_bias: Option<Vec<f32>>,
    pub gate_up: GateUp,
    pub down: Stack,
    pub shared: Option<Mlp>,
}

#[derive(Clone, Debug)]
pub enum Ffn {
    Dense(Box<Mlp>),
    Moe(Box<MoeWeights>),
}

#[derive(Clone, Debug)]
pub struct Ds2Layer {
    pub attn_norm: Vec<f32>,
    pub attn: MlaWeights,
    pub ffn_norm: Vec<f32>,
    pub ffn: Ffn,
}

#[derive(Clone, Debug)]
pub struct Ds2Weights {
    pub tok_embd: Weight,
    pub output_norm: Vec<f32>,
    pub output: Weight,
    pub layers: Vec<Ds2Layer>,
}

/// One expected dimension and the metadata key that sets it.
type Dim<'k> = (usize, &'k str);

struct Bind<'a> {
    file: &'a GgufFile,
}

impl<'a> Bind<'a> {
    fn has(&self, name: &str) -> bool {
        self.file.tensor(name).is_some()
    }

    /// The tensor `name` with dims `want`; a mismatch names the key.
    fn tensor(&self, name: &str, want: &[Dim<'_>]) -> Result<&'a TensorInfo> {
        let info = self
            .file
            .tensor(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        if info.dims.len() != want.len() {
            return Err(ModelError::TensorShape {
                name: name.to_string(),
                expected: want.iter().map(|d| d.0 as u64).collect(),
                found: info.dims.clone(),
            });
        }
        for (axis, (&found, &(exp, k))) in info.dims.iter().zip(want).enumerate() {
            if found != exp as u64 {
                return Err(meta_err(
                    &key(k),
                    format!("{exp} disagrees with tensor {name}, whose dim {axis} is {found} (dims {:?})", info.dims),
                ));
            }
        }
        let data = self.file.tensor_data(info);
        if !(data.as_ptr() as usize).is_multiple_of(4) {
            return Err(ModelError::Tensor {
                name: name.to_string(),
                msg: "data is not 4-byte aligned".into(),
            });
        }
        Ok(info)
    }

    fn matrix(&self, name: &str, cols: Dim<'_>, rows: Dim<'_>) -> Result<Weight> {
        let info = self.tensor(name, &[cols, rows])?;
        Ok(Weight {
            info: info.clone(),
            ty: info.ty,
            rows: rows.0,
            cols: cols.0,
        })
    }

    fn stack(&self, name: &str, cols: Dim<'_>, rows: Dim<'_>, n: Dim<'_>) -> Result<Stack> {
        let info = self.tensor(name, &[cols, rows, n])?;
        Ok(Stack {
            info: info.clone(),
            rows: rows.0,
            cols: cols.0,
            n: n.0,
        })
    }

    fn vector(&self, name: &str, n: Dim<'_>) -> Result<Vec<f32>> {
        let info = self.tensor(name, &[n])?;
        let mut out = vec![0f32; n.0];
        dequantize_row(info.ty, self.file.tensor_data(info), &mut out)?;
        Ok(out)
    }
}

const EMBD: &str = "embedding_length";
const HEADS: &str = "attention.head_count";
const KV_LORA: &str = "attention.kv_lora_rank";
const Q_LORA: &str = "attention.q_lora_rank";
const K_MLA: &str = "attention.key_length_mla";
const V_MLA: &str = "attention.value_length_mla";
const VOCAB: &str = "vocab_size";
const N_FF: &str = "feed_forward_length";
const N_FF_EXP: &str = "expert_feed_forward_length";
const N_EXPERT: &str = "expert_count";
const N_SHARED: &str = "expert_shared_count";
const DENSE_LEAD: &str = "leading_dense_block_count";

fn blk(il: usize, t: &str) -> String {
    format!("blk.{il}.{t}")
}

fn bind_mla(b: &Bind<'_>, hp: &Ds2HParams, il: usize) -> Result<MlaWeights> {
    let e = (hp.n_embd, EMBD);
    let kv = (hp.kv_lora_rank, KV_LORA);
    let heads = (hp.n_head, HEADS);
    // The per-head stacks first: their dims single out the head count and
    // the head sizes before the fused projections are checked.
    let k_b = b.stack(
        &blk(il, "attn_k_b.weight"),
        (hp.qk_nope(), K_MLA),
        kv,
        heads,
    )?;
    let v_b = b.stack(
        &blk(il, "attn_v_b.weight"),
        kv,
        (hp.head_dim_v, V_MLA),
        heads,
    )?;
    let q_out = (hp.n_head * hp.head_dim_qk, K_MLA);
    let q = if hp.q_lora_rank > 0 {
        let r = (hp.q_lora_rank, Q_LORA);
        QProj::Lora {
            a: b.matrix(&blk(il, "attn_q_a.weight"), e, r)?,
            norm: b.vector(&blk(il, "attn_q_a_norm.weight"), r)?,
            b: b.matrix(&blk(il, "attn_q_b.weight"), r, q_out)?,
        }
    } else if b.has(&blk(il, "attn_q_a.weight")) {
        return Err(meta_err(
            &key(Q_LORA),
            format!(
                "missing or 0, but the file has {}",
                blk(il, "attn_q_a.weight")
            ),
        ));
    } else {
        QProj::Direct(b.matrix(&blk(il, "attn_q.weight"), e, q_out)?)
    };
    Ok(MlaWeights {
        q,
        kv_a_mqa: b.matrix(
            &blk(il, "attn_kv_a_mqa.weight"),
            e,
            (hp.cache_row(), KV_LORA),
        )?,
        kv_a_norm: b.vector(&blk(il, "attn_kv_a_norm.weight"), kv)?,
        k_b,
        v_b,
        wo: b.matrix(
            &blk(il, "attn_output.weight"),
            (hp.n_head * hp.head_dim_v, V_MLA),
            e,
        )?,
    })
}

fn bind_mlp(b: &Bind<'_>, il: usize, sfx: &str, e: Dim<'_>, ff: Dim<'_>) -> Result<Mlp> {
    Ok(Mlp {
        gate: b.matrix(&blk(il, &format!("ffn_gate{sfx}.weight")), e, ff)?,
        up: b.matrix(&blk(il, &format!("ffn_up{sfx}.weight")), e, ff)?,
        down: b.matrix(&blk(il, &format!("ffn_down{sfx}.weight")), ff, e)?,
    })
}

fn bind_moe(b: &Bind<'_>, hp: &Ds2HParams, il: usize) -> Result<MoeWeights> {
    let m = hp
        .moe
        .as_ref()
        .ok_or_else(|| meta_err(&key(N_EXPERT), "missing for an MoE layer"))?;
    let e = (hp.n_embd, EMBD);
    let ne = (m.n_expert, N_EXPERT);
    let ff = (m.n_ff_exp, N_FF_EXP);
    let fused = blk(il, "ffn_gate_up_exps.weight");
    let gate_up = if b.has(&fused) {
        GateUp::Fused(b.stack(&fused, e, (2 * m.n_ff_exp, N_FF_EXP), ne)?)
    } else {
        GateUp::Split {
            gate: b.stack(&blk(il, "ffn_gate_exps.weight"), e, ff, ne)?,
            up: b.stack(&blk(il, "ffn_up_exps.weight"), e, ff, ne)?,
        }
    };
    let bias_name = blk(il, "exp_probs_b.bias");
    let probs_bias = if b.has(&bias_name) {
        Some(b.vector(&bias_name, ne)?)
    } else {
        None
    };
    let shared = if m.n_shared > 0 {
        Some(bind_mlp(
            b,
            il,
            "_shexp",
            e,
            (m.n_shared * m.n_ff_exp, N_SHARED),
        )?)
    } else {
        None
    };
    Ok(MoeWeights {
        gate_inp: b.matrix(&blk(il, "ffn_gate_inp.weight"), e, ne)?,
        probs_bias,
        gate_up,
        down: b.stack(&blk(il, "ffn_down_exps.weight"), ff, e, ne)?,
        shared,
    })
}

impl Ds2Weights {
    /// Binds every tensor of a deepseek2 model.
    pub fn bind(file: &GgufFile, hp: &Ds2HParams) -> Result<Ds2Weights> {
        let b = Bind { file };
        let e = (hp.n_embd, EMBD);
        let v = (hp.n_vocab, VOCAB);
        let tok_embd = b.matrix("token_embd.weight", e, v)?;
        let output_norm = b.vector("output_norm.weight", e)?;
        let output = if b.has("output.weight") {
            b.matrix("output.weight", e, v)?
        } else {
            tok_embd.clone()
        };
        let mut layers = Vec::with_capacity(hp.n_layer);
        for il in 0..hp.n_layer {
            // A layer's FFN kind must be the one the dense-lead count says.
            let (want, other) = if hp.is_moe(il) {
                ("ffn_gate_inp.weight", "ffn_gate.weight")
            } else {
                ("ffn_gate.weight", "ffn_gate_inp.weight")
            };
            if !b.has(&blk(il, want)) && b.has(&blk(il, other)) {
                return Err(meta_err(
                    &key(DENSE_LEAD),
                    format!(
                        "{} dense layers, but layer {il} has {}",
                        hp.n_layer_dense_lead,
                        blk(il, other)
                    ),
                ));
            }
            let ffn = if hp.is_moe(il) {
                Ffn::Moe(Box::new(bind_moe(&b, hp, il)?))
            } else {
                Ffn::Dense(Box::new(bind_mlp(&b, il, "", e, (hp.n_ff, N_FF))?))
            };
            layers.push(Ds2Layer {
                attn_norm: b.vector(&blk(il, "attn_norm.weight"), e)?,
                attn: bind_mla(&b, hp, il)?,
                ffn_norm: b.vector(&blk(il, "ffn_norm.weight"), e)?,
                ffn,
            });
        }
        Ok(Ds2Weights {
            tok_embd,
            output_norm,
            output,
            layers,
        })
    }
}
