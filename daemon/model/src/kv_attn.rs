//! Causal attention of a dense model over KV caches stored as f16, q8_0 or
//! q4_0 (see [`crate::kv::KvType`]), the way ggml's CPU flash attention
//! reads a quantized cache: each query head is rounded to the key type's
//! `vec_dot_type` (f16 for f16 keys, q8_0 for q8_0/q4_0 keys) and dotted
//! with the stored key bytes: q8_0/q4_0 keys by that type's `vec_dot`
//! (the same bits on every SIMD level), f16 keys by
//! [`ops::dot_kq_f16`], tinyBLAS's 16-lane order (ggml's own F16 `vec_dot`
//! sums in 8 lanes under AVX2 and 16 under AVX-512, so using the level's
//! F16 kernel made the logits depend on the CPU); values are summed in f32
//! straight from the stored blocks by [`ops::weighted_sum_rows`], each
//! dequantized in a register as it is read (ggml sums f16 values in f16),
//! so a step reads the cache once and copies none of it.
//!
//! Scores, softmax and the weighted sum otherwise follow the f32 path of
//! `dense.rs`, and a sequence whose cache is f32 takes exactly that path's
//! arithmetic, so a batch may mix cache types.

use dwarfstar_kernels::dispatch::VecDotFn;
use dwarfstar_kernels::ops::{self, ValueRows};
use dwarfstar_kernels::quants::{float, legacy};
use dwarfstar_kernels::{type_kernels, GgmlType};
use rayon::prelude::*;

use crate::hparams::HParams;
use crate::kv::{KvCache, KvType};

/// Rounds a query head to `vdt` into `dst`, as ggml converts it.
fn round_query(vdt: GgmlType, x: &[f32], dst: &mut Vec<u8>) {
    dst.resize(vdt.row_bytes(x.len()).unwrap_or(0), 0);
    match vdt {
        GgmlType::F16 => float::quantize_f16(x, dst),
        _ => legacy::act::quantize_q8_0_bytes(x, dst),
    }
}

/// How one sequence's keys are scored and its values read.
enum SeqKv<'a> {
    F32,
    Quant {
        dot: VecDotFn,
        vdt: GgmlType,
        /// Bytes of one head's key slice.
        head_bytes: usize,
        /// The value rows of the layer, from head 0.
        values: ValueRows<'a>,
        /// Bytes of one head's value slice.
        v_head_bytes: usize,
    },
}

fn prepare(kv: &KvCache, il: usize, dk: usize, dv: usize) -> SeqKv<'_> {
    let ty = kv.ty();
    let kernels = type_kernels(ty.ggml()).ok();
    let (Some(k), false) = (kernels, ty == KvType::F32) else {
        return SeqKv::F32;
    };
    let Some(dot) = k.vec_dot else {
        return SeqKv::F32;
    };
    // f16 keys: tinyBLAS's order, the same on every SIMD level (the F16
    // `vec_dot` sums in lanes as wide as the level's registers).
    let dot = if ty == KvType::F16 {
        ops::dot_kq_f16
    } else {
        dot
    };
    // Heads are whole blocks (checked when the cache was made).
    let (Some(head_bytes), Some(v_head_bytes)) = (ty.row_bytes(dk), ty.row_bytes(dv)) else {
        return SeqKv::F32;
    };
    let vq = &kv.layers[il].vq;
    let Ok(values) = ValueRows::new(ty.ggml(), vq, kv.row_bytes().1, 0, dv) else {
        return SeqKv::F32;
    };
    SeqKv::Quant {
        dot,
        vdt: k.vec_dot_type,
        head_bytes,
        values,
        v_head_bytes,
    }
}

/// Attention of every query row over its own sequence's cache of layer
/// `il`, as `DenseModel::attention` (same arguments), for caches of any
/// [`KvType`].
pub(crate) fn attention(
    hp: &HParams,
    q: &[f32],
    caches: &[&KvCache],
    spans: &[(usize, usize, usize)],
    il: usize,
    n: usize,
    window: usize,
    llama_exact: bool,
) -> Vec<f32> {
    let (dk, dv) = (hp.head_dim_k, hp.head_dim_v);
    let group = hp.n_head / hp.n_head_kv;
    let scale = hp.attn_scale;
    let first = |p: usize| {
        if window > 0 {
            (p + 1).saturating_sub(window)
        } else {
            0
        }
    };
    let seqs: Vec<SeqKv> = caches.iter().map(|kv| prepare(kv, il, dk, dv)).collect();
    let mut out = vec![0f32; n * hp.n_head * dv];
    out.par_chunks_mut(dv)
        .enumerate()
        .with_min_len(2)
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(acc, qbuf), (i, o)| {
                let (t, h) = (i / hp.n_head, i % hp.n_head);
                let s = spans.partition_point(|sp| sp.0 + sp.1 <= t);
                let (row0, rows, pos0) = spans[s];
                let kv = caches[s];
                let (kd, vd) = (kv.k_dim(), kv.v_dim());
                let g = h / group;
                let p = pos0 + t - row0;
                let lo = first(p);
                let qh = &q[t * hp.q_dim() + h * dk..t * hp.q_dim() + (h + 1) * dk];
                let order = crate::dense::value_order(llama_exact, rows);
                match &seqs[s] {
                    SeqKv::F32 => {
                        let (lk, lv) = (&kv.layers[il].k, &kv.layers[il].v);
                        let mut sc: Vec<f32> = (lo..=p)
                            .map(|j| {
                                ops::dot_kq(qh, &lk[j * kd + g * dk..j * kd + (g + 1) * dk]) * scale
                            })
                            .collect();
                        ops::softmax_aligned(&mut sc, lo);
                        let v = ValueRows::f32(lv, vd, g * dv, dv);
                        ops::weighted_sum_rows(&sc, lo, &v, o, order, acc);
                    }
                    SeqKv::Quant {
                        dot,
                        vdt,
                        head_bytes,
                        values,
                        v_head_bytes,
                    } => {
                        round_query(*vdt, qh, qbuf);
                        let kb = kv.k_bytes(il);
                        let kr = kv.row_bytes().0;
                        let mut sc: Vec<f32> = (lo..=p)
                            .map(|j| {
                                let at = j * kr + g * head_bytes;
                                dot(dk, &kb[at..at + head_bytes], qbuf) * scale
                            })
                            .collect();
                        ops::softmax_aligned(&mut sc, lo);
                        let v = values.offset_by(g * v_head_bytes);
                        ops::weighted_sum_rows(&sc, lo, &v, o, order, acc);
                    }
                }
            },
        );
    out
}
