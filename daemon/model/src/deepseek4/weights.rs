//! Binding a deepseek4 file's tensors, every dimension checked against the
//! metadata key that determines it: a file whose `expert_count`,
//! `compress_ratios`, `hash_layer_count` or any other shape key disagrees
//! with its tensors is rejected with an error naming that key.
//!
//! Routed experts stay stacked in the mapped file ([`Stack`]): running one
//! expert reads that expert's slice only.

use dwarfstar_gguf::{GgufFile, TensorInfo};
use dwarfstar_kernels::{dequantize_row, GgmlType, MatRef};

use crate::deepseek2::weights::Stack;
use crate::error::{meta_err, ModelError, Result};
use crate::store::{tensor_bytes, WeightBytes};
use crate::weights::Weight;

use super::hparams::{key, Ds4HParams, LayerKind};
use super::mtp::{bind_mtp, MtpWeights};

/// A compressor: gated pooling of `ratio` tokens into one entry of `dim`.
#[derive(Clone, Debug)]
pub struct CompressorWeights {
    /// `n_embd → coff·dim` values and gate scores (`coff` = 2 when the
    /// blocks overlap, ratio 4).
    pub kv: Weight,
    pub gate: Weight,
    /// Per position in the block, a bias on the gate scores (`ratio × coff·dim`).
    pub ape: Vec<f32>,
    /// RMS norm of the pooled entry (`dim`).
    pub norm: Vec<f32>,
}

/// The lightning indexer of a CSA layer.
#[derive(Clone, Debug)]
pub struct IndexerWeights {
    /// `q_lora_rank → idx_heads·idx_dim`: queries from the normalised
    /// low-rank query of the attention.
    pub q_b: Weight,
    /// `n_embd → idx_heads`: per-head weights of the scores.
    pub proj: Weight,
    pub comp: CompressorWeights,
}

/// The hyper-connection mixing of one sub-block (or of the head).
#[derive(Clone, Debug)]
pub struct HcWeights {
    /// `hc·n_embd → mix` (pre, post, comb; the head has pre only).
    pub fn_: Weight,
    pub base: Vec<f32>,
    pub scale: Vec<f32>,
}

/// One layer's attention.
#[derive(Clone, Debug)]
pub struct AttnWeights {
    pub sinks: Vec<f32>,
    pub q_a: Weight,
    pub q_a_norm: Vec<f32>,
    pub q_b: Weight,
    /// `n_embd → head_dim`: the single shared key/value head.
    pub kv: Weight,
    pub kv_norm: Vec<f32>,
    /// `o_groups·o_lora_rank` rows of `n_head·head_dim / o_groups`: rows
    /// `g·o_lora_rank..` project head group `g`.
    pub out_a: Weight,
    pub out_b: Weight,
    pub comp: Option<CompressorWeights>,
    pub indexer: Option<IndexerWeights>,
}

/// How a layer picks its experts.
#[derive(Clone, Debug)]
pub enum Router {
    /// By token id: `n_vocab` rows of `n_expert_used` expert ids.
    Hash(Vec<i32>),
    /// The best sqrt-softplus scores after an optional selection bias.
    Learned(Option<Vec<f32>>),
}

/// The SwiGLU matrices of the shared expert.
#[derive(Clone, Debug)]
pub struct SharedExpert {
    pub gate: Weight,
    pub up: Weight,
    pub down: Weight,
}

/// One layer's mixture of experts.
#[derive(Clone, Debug)]
pub struct MoeWeights {
    /// `n_embd → n_expert` router logits.
    pub gate_inp: Weight,
    pub router: Router,
    pub gate: Stack,
    pub up: Stack,
    pub down: Stack,
    pub shared: Option<SharedExpert>,
}

#[derive(Clone, Debug)]
pub struct Ds4Layer {
    pub kind: LayerKind,
    pub hc_attn: HcWeights,
    pub attn_norm: Vec<f32>,
    pub attn: AttnWeights,
    pub hc_ffn: HcWeights,
    pub ffn_norm: Vec<f32>,
    pub moe: MoeWeights,
}

#[derive(Clone, Debug)]
pub struct Ds4Weights {
    pub tok_embd: Weight,
    pub hc_head: HcWeights,
    pub output_norm: Vec<f32>,
    pub output: Weight,
    pub layers: Vec<Ds4Layer>,
    /// The multi-token-prediction block, when the file has one.
    pub mtp: Option<Box<MtpWeights>>,
}

/// One expected dimension and the metadata key (without prefix) that sets it.
pub(crate) type Dim<'k> = (usize, &'k str);

pub(crate) struct Bind<'a> {
    pub file: &'a GgufFile,
    /// Block `n`'s tensors are found under `mtp.0.` instead of `blk.{n}.`
    /// (ds4's MTP files).
    pub mtp_block: Option<usize>,
}

impl<'a> Bind<'a> {
    pub fn new(file: &'a GgufFile) -> Bind<'a> {
        Bind {
            file,
            mtp_block: None,
        }
    }

    /// The name a tensor has in this file.
    fn real<'n>(&self, name: &'n str) -> std::borrow::Cow<'n, str> {
        if let Some(n) = self.mtp_block {
            if let Some(rest) = name.strip_prefix(&format!("blk.{n}.")) {
                return format!("{}{rest}", super::mtp::DS4_PREFIX).into();
            }
        }
        name.into()
    }

    pub fn has(&self, name: &str) -> bool {
        self.file.tensor(&self.real(name)).is_some()
    }

    /// The tensor `name` with dims `want`; a mismatch names the key.
    pub fn tensor(&self, name: &str, want: &[Dim<'_>]) -> Result<&'a TensorInfo> {
        let real = self.real(name);
        let name: &str = &real;
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
                    format!(
                        "{exp} disagrees with tensor {name}, whose dim {axis} is {found} (dims {:?})",
                        info.dims
                    ),
                ));
            }
        }
        if !(self.file.tensor_data(info).as_ptr() as usize).is_multiple_of(4) {
            return Err(ModelError::Tensor {
                name: name.to_string(),
                msg: "data is not 4-byte aligned".into(),
            });
        }
        Ok(info)
    }

    pub fn matrix(&self, name: &str, cols: Dim<'_>, rows: Dim<'_>) -> Result<Weight> {
        let info = self.tensor(name, &[cols, rows])?;
        if info.ty.is_integer() {
            return Err(ModelError::Tensor {
                name: name.into(),
                msg: format!("{} is not a weight type", info.ty),
            });
        }
        Ok(Weight {
            info: info.clone(),
            ty: info.ty,
            rows: rows.0,
            cols: cols.0,
        })
    }

    pub fn stack(&self, name: &str, cols: Dim<'_>, rows: Dim<'_>, n: Dim<'_>) -> Result<Stack> {
        let info = self.tensor(name, &[cols, rows, n])?;
        Ok(Stack {
            info: info.clone(),
            rows: rows.0,
            cols: cols.0,
            n: n.0,
        })
    }

    /// A small tensor of any shape, as f32 values.
    pub fn floats(&self, name: &str, want: &[Dim<'_>]) -> Result<Vec<f32>> {
        let info = self.tensor(name, want)?;
        let n: usize = want.iter().map(|d| d.0).product();
        let mut out = vec![0f32; n];
        dequantize_row(info.ty, self.file.tensor_data(info), &mut out)?;
        Ok(out)
    }

    pub fn vector(&self, name: &str, n: Dim<'_>) -> Result<Vec<f32>> {
        self.floats(name, &[n])
    }
}

pub(crate) const EMBD: &str = "embedding_length";
pub(crate) const VOCAB: &str = "vocab_size";
const HEADS: &str = "attention.head_count";
const HEAD_DIM: &str = "attention.key_length";
const Q_LORA: &str = "attention.q_lora_rank";
const O_GROUPS: &str = "attention.output_group_count";
const O_LORA: &str = "attention.output_lora_rank";
const RATIOS: &str = "attention.compress_ratios";
const IDX_HEADS: &str = "attention.indexer.head_count";
const IDX_DIM: &str = "attention.indexer.key_length";
const HC: &str = "hyper_connection.count";
const N_EXPERT: &str = "expert_count";
const N_USED: &str = "expert_used_count";
const N_FF_EXP: &str = "expert_feed_forward_length";
const N_SHARED: &str = "expert_shared_count";
const N_HASH: &str = "hash_layer_count";

pub(crate) fn blk(il: usize, t: &str) -> String {
    format!("blk.{il}.{t}")
}

pub(crate) fn bind_hc(
    b: &Bind<'_>,
    prefix: &str,
    hp: &Ds4HParams,
    mix: usize,
) -> Result<HcWeights> {
    let flat = (hp.hc_mult * hp.n_embd, HC);
    let n_scale = if mix == hp.hc_mult { 1 } else { 3 };
    Ok(HcWeights {
        fn_: b.matrix(&format!("{prefix}_fn.weight"), flat, (mix, HC))?,
        base: b.vector(&format!("{prefix}_base.weight"), (mix, HC))?,
        scale: b.vector(&format!("{prefix}_scale.weight"), (n_scale, HC))?,
    })
}

fn bind_compressor(
    b: &Bind<'_>,
    il: usize,
    prefix: &str,
    hp: &Ds4HParams,
    ratio: usize,
    dim: Dim<'_>,
) -> Result<CompressorWeights> {
    let coff = if ratio == 4 { 2 } else { 1 };
    let e = (hp.n_embd, EMBD);
    // The norm checks `dim`; what is left of the widths is the ratio's
    // (overlapping blocks double them).
    let norm = b.vector(&blk(il, &format!("{prefix}_norm.weight")), dim)?;
    let wide = (coff * dim.0, RATIOS);
    Ok(CompressorWeights {
        kv: b.matrix(&blk(il, &format!("{prefix}_kv.weight")), e, wide)?,
        gate: b.matrix(&blk(il, &format!("{prefix}_gate.weight")), e, wide)?,
        ape: b.floats(
            &blk(il, &format!("{prefix}_ape.weight")),
            &[wide, (ratio, RATIOS)],
        )?,
        norm,
    })
}

pub(crate) fn bind_attn(b: &Bind<'_>, hp: &Ds4HParams, il: usize) -> Result<AttnWeights> {
    let e = (hp.n_embd, EMBD);
    let heads = (hp.n_head, HEADS);
    let hd = (hp.head_dim, HEAD_DIM);
    let q_lora = (hp.q_lora_rank, Q_LORA);
    let kind = hp.kinds[il];
    // A compressor the ratio does not call for (or the reverse) is a
    // metadata error, not a missing tensor.
    let comp_name = blk(il, "attn_compressor_kv.weight");
    if (kind == LayerKind::Sliding) == b.has(&comp_name) {
        return Err(meta_err(
            &key(RATIOS),
            format!(
                "block {il} has ratio {}, but {comp_name} is {}",
                kind.ratio(),
                if b.has(&comp_name) {
                    "present"
                } else {
                    "missing"
                }
            ),
        ));
    }
    // Bound in an order where each tensor's first unchecked dim is the one
    // its key names: heads, head size, ranks, then the compressors.
    let sinks = b.vector(&blk(il, "attn_sinks.weight"), heads)?;
    let kv = b.matrix(&blk(il, "attn_kv.weight"), e, hd)?;
    let kv_norm = b.vector(&blk(il, "attn_kv_a_norm.weight"), hd)?;
    let q_a = b.matrix(&blk(il, "attn_q_a.weight"), e, q_lora)?;
    let q_a_norm = b.vector(&blk(il, "attn_q_a_norm.weight"), q_lora)?;
    let q_b = b.matrix(
        &blk(il, "attn_q_b.weight"),
        q_lora,
        (hp.n_head * hp.head_dim, HEADS),
    )?;
    let group_in = (hp.n_head * hp.head_dim / hp.o_groups, O_GROUPS);
    let out_a = b.matrix(
        &blk(il, "attn_output_a.weight"),
        group_in,
        (hp.o_groups * hp.o_lora_rank, O_LORA),
    )?;
    let out_b = b.matrix(
        &blk(il, "attn_output_b.weight"),
        (hp.o_groups * hp.o_lora_rank, O_LORA),
        e,
    )?;
    let comp = match kind {
        LayerKind::Sliding => None,
        _ => Some(bind_compressor(
            b,
            il,
            "attn_compressor",
            hp,
            kind.ratio(),
            hd,
        )?),
    };
    let indexer = if kind == LayerKind::Csa {
        let idim = (hp.idx_dim, IDX_DIM);
        let proj = b.matrix(
            &blk(il, "indexer.proj.weight"),
            e,
            (hp.idx_heads, IDX_HEADS),
        )?;
        let comp = bind_compressor(b, il, "indexer_compressor", hp, 4, idim)?;
        Some(IndexerWeights {
            q_b: b.matrix(
                &blk(il, "indexer.attn_q_b.weight"),
                q_lora,
                (hp.idx_heads * hp.idx_dim, IDX_DIM),
            )?,
            proj,
            comp,
        })
    } else {
        None
    };
    Ok(AttnWeights {
        sinks,
        q_a,
        q_a_norm,
        q_b,
        kv,
        kv_norm,
        out_a,
        out_b,
        comp,
        indexer,
    })
}

fn bind_tid2eid(b: &Bind<'_>, hp: &Ds4HParams, name: &str) -> Result<Vec<i32>> {
    let info = b.tensor(name, &[(hp.n_expert_used, N_USED), (hp.n_vocab, VOCAB)])?;
    if info.ty != GgmlType::I32 {
        return Err(ModelError::Tensor {
            name: name.into(),
            msg: format!("type {}, expected I32", info.ty),
        });
    }
    let ids: Vec<i32> = b
        .file
        .tensor_data(info)
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if let Some(bad) = ids.iter().find(|&&e| e < 0 || e as usize >= hp.n_expert) {
        return Err(meta_err(
            &key(N_EXPERT),
            format!("{}, but {name} routes to expert {bad}", hp.n_expert),
        ));
    }
    Ok(ids)
}

pub(crate) fn bind_moe(b: &Bind<'_>, hp: &Ds4HParams, il: usize, hash: bool) -> Result<MoeWeights> {
    let e = (hp.n_embd, EMBD);
    let ne = (hp.n_expert, N_EXPERT);
    let ff = (hp.n_ff_exp, N_FF_EXP);
    // The stacks first: their dims single out the expert count and size.
    let gate = b.stack(&blk(il, "ffn_gate_exps.weight"), e, ff, ne)?;
    let up = b.stack(&blk(il, "ffn_up_exps.weight"), e, ff, ne)?;
    let down = b.stack(&blk(il, "ffn_down_exps.weight"), ff, e, ne)?;
    let tid = blk(il, "ffn_gate_tid2eid.weight");
    if hash != b.has(&tid) {
        return Err(meta_err(
            &key(N_HASH),
            format!(
                "{}, but {tid} is {}",
                hp.n_hash,
                if hash { "missing" } else { "present" }
            ),
        ));
    }
    let router = if hash {
        Router::Hash(bind_tid2eid(b, hp, &tid)?)
    } else {
        let bias = blk(il, "exp_probs_b.bias");
        Router::Learned(if b.has(&bias) {
            Some(b.vector(&bias, ne)?)
        } else {
            None
        })
    };
    let shared = if hp.n_shared > 0 {
        let sff = (hp.n_shared * hp.n_ff_exp, N_SHARED);
        Some(SharedExpert {
            gate: b.matrix(&blk(il, "ffn_gate_shexp.weight"), e, sff)?,
            up: b.matrix(&blk(il, "ffn_up_shexp.weight"), e, sff)?,
            down: b.matrix(&blk(il, "ffn_down_shexp.weight"), sff, e)?,
        })
    } else {
        None
    };
    Ok(MoeWeights {
        gate_inp: b.matrix(&blk(il, "ffn_gate_inp.weight"), e, ne)?,
        router,
        gate,
        up,
        down,
        shared,
    })
}

/// Binds the trunk block `il` (also used for the MTP block).
pub(crate) fn bind_layer(b: &Bind<'_>, hp: &Ds4HParams, il: usize, hash: bool) -> Result<Ds4Layer> {
    let e = (hp.n_embd, EMBD);
    // The MoE first: its stacks single out the expert keys.
    let moe = bind_moe(b, hp, il, hash)?;
    let attn = bind_attn(b, hp, il)?;
    Ok(Ds4Layer {
        kind: hp.kinds[il],
        hc_attn: bind_hc(b, &blk(il, "hc_attn"), hp, hp.hc_mix())?,
        attn_norm: b.vector(&blk(il, "attn_norm.weight"), e)?,
        attn,
        hc_ffn: bind_hc(b, &blk(il, "hc_ffn"), hp, hp.hc_mix())?,
        ffn_norm: b.vector(&blk(il, "ffn_norm.weight"), e)?,
        moe,
    })
}

impl Ds4Weights {
    /// Binds every tensor of a deepseek4 model (and its MTP block, if any).
    pub fn bind(file: &GgufFile, hp: &Ds4HParams) -> Result<Ds4Weights> {
        let b = Bind::new(file);
        let e = (hp.n_embd, EMBD);
        let v = (hp.n_vocab, VOCAB);
        let tok_embd = b.matrix("token_embd.weight", e, v)?;
        let output = b.matrix("output.weight", e, v)?;
        let output_norm = b.vector("output_norm.weight", e)?;
        let hc_head = bind_hc(&b, "output_hc", hp, hp.hc_mult)?;
        let mut layers = Vec::with_capacity(hp.n_layer);
        for il in 0..hp.n_layer {
            layers.push(bind_layer(&b, hp, il, hp.is_hash(il))?);
        }
        let mtp = bind_mtp(&b, hp)?.map(Box::new);
        Ok(Ds4Weights {
            tok_embd,
            hc_head,
            output_norm,
            output,
            layers,
            mtp,
        })
    }
}

/// Rows `r0..r0 + n` of `w` as a matrix view (empty when `src` does not
/// hold them, which the kernels reject as a size mismatch).
pub(crate) fn rows<'a>(w: &Weight, src: &'a dyn WeightBytes, r0: usize, n: usize) -> MatRef<'a> {
    let rb = w.row_bytes();
    MatRef {
        ty: w.ty,
        data: tensor_bytes(src, &w.info)
            .get(r0 * rb..(r0 + n) * rb)
            .unwrap_or(&[]),
        rows: n,
        cols: w.cols,
    }
}
