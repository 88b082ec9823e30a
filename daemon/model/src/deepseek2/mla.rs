//! Multi-head latent attention in its absorbed form, and the latent cache.
//!
//! Per token and layer the cache holds only the normalised KV latent
//! (`kv_lora_rank` floats) and the rotated shared key (`n_rot` floats):
//! 576 floats for DeepSeek V3, never per-head keys or values. Each head's
//! `q_nope` is absorbed into latent space through `attn_k_b`, so the
//! attention is MQA over the cached rows (key = latent ‖ rope key, value =
//! latent), and each head's attended latent is decompressed through
//! `attn_v_b` before `attn_output`. Prefill and decode share this one path,
//! as in llama.cpp.

use dwarfstar_kernels::{matmul, ops};
use rayon::prelude::*;

use crate::error::{ModelError, Result};
use crate::observe::MatIndex;

use super::ggml_simd::{self, FloatOp};
use super::hparams::Ds2HParams;
use super::weights::{MlaWeights, QProj, Stack};
use super::Ctx;

/// A sequence's latent cache: per layer, `[pos][kv_lora_rank + n_rot]`.
#[derive(Clone, Debug)]
pub struct MlaCache {
    layers: Vec<Vec<f32>>,
    row: usize,
    capacity: usize,
    len: usize,
}

impl MlaCache {
    /// An empty cache of `n_layer` layers, `row` floats per position, at
    /// most `capacity` positions. Memory grows as positions are written.
    pub fn new(n_layer: usize, row: usize, capacity: usize) -> MlaCache {
        MlaCache {
            layers: vec![Vec::new(); n_layer],
            row,
            capacity,
            len: 0,
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Layers held.
    pub fn n_layer(&self) -> usize {
        self.layers.len()
    }

    /// Floats per position and layer.
    pub fn row(&self) -> usize {
        self.row
    }

    /// The cached rows of layer `il`.
    pub fn layer(&self, il: usize) -> &[f32] {
        &self.layers[il]
    }

    /// Checks that `n` more positions fit.
    pub fn reserve(&self, n: usize) -> Result<()> {
        if self.len + n > self.capacity {
            return Err(ModelError::ContextFull {
                needed: self.len + n,
                capacity: self.capacity,
            });
        }
        Ok(())
    }

    /// Writes the rows of positions `pos0..` of layer `il`.
    pub fn write(&mut self, il: usize, pos0: usize, rows: &[f32]) {
        let n = rows.len() / self.row;
        let l = &mut self.layers[il];
        l.resize((pos0 + n) * self.row, 0.0);
        l[pos0 * self.row..].copy_from_slice(rows);
    }

    /// Marks `n` more positions as filled (after every layer wrote them).
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Drops every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            self.len = len;
            for l in &mut self.layers {
                l.truncate(len * self.row);
            }
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| l.len() * 4).sum()
    }
}

/// RMS-normalises every `w.len()`-wide row of `x`.
pub(crate) fn norm_rows(x: &mut [f32], w: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(w.len()) {
        ops::rms_norm(row, w, eps);
    }
}

/// Runs matrix `h` of `stack` over column block `h` of `x`: `x` has `n`
/// rows of `n_head` blocks of `stack.cols`; the result has `n` rows of
/// `n_head` blocks of `stack.rows`.
/// `op` says how llama.cpp reaches the product (its exact mode only).
fn per_head(cx: &Ctx<'_>, stack: &Stack, x: &[f32], n: usize, op: FloatOp) -> Result<Vec<f32>> {
    let (ci, co, nh) = (stack.cols, stack.rows, stack.n);
    let mut out = vec![0f32; n * nh * co];
    let mut xin = vec![0f32; n * ci];
    let mut y = vec![0f32; n * co];
    for h in 0..nh {
        for t in 0..n {
            let src = (t * nh + h) * ci;
            xin[t * ci..(t + 1) * ci].copy_from_slice(&x[src..src + ci]);
        }
        if let Some(o) = cx.obs {
            let mat = MatIndex::Slice {
                id: h as u32,
                of: nh as u32,
            };
            o.observe(&stack.info.name, &xin, ci, mat);
        }
        let exact = cx
            .exact
            .then(|| ggml_simd::float_matmul(stack.mat(cx.file, h), &xin, n, op))
            .flatten();
        match exact {
            Some(v) => y = v,
            None => matmul(stack.mat(cx.file, h), &xin, n, &mut y)?,
        }
        for t in 0..n {
            let dst = (t * nh + h) * co;
            out[dst..dst + co].copy_from_slice(&y[t * co..(t + 1) * co]);
        }
    }
    Ok(out)
}

/// One query row over the cached rows `rows` (`crow` floats each; the
/// first `o.len()` of a row are the value): softmax-weighted latent.
fn attend(qh: &[f32], rows: &[f32], crow: usize, scale: f32, o: &mut [f32]) {
    let mut sc: Vec<f32> = rows
        .chunks_exact(crow)
        .map(|k| ops::dot_f32(qh, k) * scale)
        .collect();
    ops::softmax(&mut sc);
    for (k, &a) in rows.chunks_exact(crow).zip(&sc) {
        ops::axpy(o, a, &k[..o.len()]);
    }
}

/// [`attend`] in llama.cpp's exact order: scores by `ggml_vec_dot_f32`, its
/// vectorised softmax, the weighted sum by tinyBLAS.
#[inline(always)]
fn attend_exact_body(
    qh: &[f32],
    rows: &[f32],
    crow: usize,
    scale: f32,
    o: &mut [f32],
    lanes: &mut Vec<f32>,
) {
    let mut sc: Vec<f32> = rows
        .chunks_exact(crow)
        .map(|k| ggml_simd::vec_dot_f32(k, qh) * scale)
        .collect();
    ggml_simd::softmax(&mut sc);
    ggml_simd::weighted_rows(&sc, rows, crow, o, lanes);
}

fn attend_exact(
    qh: &[f32],
    rows: &[f32],
    crow: usize,
    scale: f32,
    o: &mut [f32],
    lanes: &mut Vec<f32>,
) {
    ggml_simd::fast(|| attend_exact_body(qh, rows, crow, scale, o, lanes))
}

/// One sequence's rows in a batch: first row, row count, first position.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    pub row: usize,
    pub len: usize,
    pub pos0: usize,
}

/// The attention block of layer `il` for the normalised hidden rows `cur`
/// (`n × n_embd`, the sequences of `spans` back to back): appends each
/// sequence's latent rows to its cache and returns `n × n_embd`.
pub(crate) fn attention(
    cx: &Ctx<'_>,
    hp: &Ds2HParams,
    w: &MlaWeights,
    il: usize,
    cur: &[f32],
    spans: &[Span],
    caches: &mut [&mut MlaCache],
) -> Result<Vec<f32>> {
    let n = cur.len() / hp.n_embd;
    let (nh, dqk, nope, nr) = (hp.n_head, hp.head_dim_qk, hp.qk_nope(), hp.n_rot);
    let (kvr, crow) = (hp.kv_lora_rank, hp.cache_row());

    let q = match &w.q {
        QProj::Lora { a, norm, b } => {
            let mut qa = cx.mm(a, cur, n)?;
            norm_rows(&mut qa, norm, hp.rms_eps);
            cx.mm(b, &qa, n)?
        }
        QProj::Direct(wq) => cx.mm(wq, cur, n)?,
    };
    let mut kv = cx.mm(&w.kv_a_mqa, cur, n)?;

    // Split q per head into nope and rope parts; rotate the rope parts and
    // the shared key at each token's position; normalise the latent.
    let mut q_nope = vec![0f32; n * nh * nope];
    let mut q_pe = vec![0f32; n * nh * nr];
    for t in 0..n {
        for h in 0..nh {
            let src = &q[(t * nh + h) * dqk..(t * nh + h + 1) * dqk];
            q_nope[(t * nh + h) * nope..(t * nh + h + 1) * nope].copy_from_slice(&src[..nope]);
            q_pe[(t * nh + h) * nr..(t * nh + h + 1) * nr].copy_from_slice(&src[nope..]);
        }
    }
    let mut cs = Vec::new();
    for sp in spans {
        for t in sp.row..sp.row + sp.len {
            hp.rope.cos_sin((sp.pos0 + t - sp.row) as i64, &mut cs);
            hp.rope
                .apply(&mut q_pe[t * nh * nr..(t + 1) * nh * nr], nr, &cs);
            let row = &mut kv[t * crow..(t + 1) * crow];
            hp.rope.apply(&mut row[kvr..], nr, &cs);
            ops::rms_norm(&mut row[..kvr], &w.kv_a_norm, hp.rms_eps);
        }
    }
    for (sp, c) in spans.iter().zip(caches.iter_mut()) {
        c.write(il, sp.pos0, &kv[sp.row * crow..(sp.row + sp.len) * crow]);
    }

    // Absorb q_nope into latent space; the query is latent ‖ rope, like the
    // cached key rows.
    let q_abs = per_head(cx, &w.k_b, &q_nope, n, FloatOp::MulMatStrided)?;
    let mut qc = vec![0f32; n * nh * crow];
    for i in 0..n * nh {
        qc[i * crow..i * crow + kvr].copy_from_slice(&q_abs[i * kvr..(i + 1) * kvr]);
        qc[i * crow + kvr..(i + 1) * crow].copy_from_slice(&q_pe[i * nr..(i + 1) * nr]);
    }

    // MQA over the latent rows: every head attends to the same cache.
    let caches: Vec<&MlaCache> = caches.iter().map(|c| &**c).collect();
    let scale = hp.kq_scale;
    let exact = cx.exact;
    let mut lat = vec![0f32; n * nh * kvr];
    lat.par_chunks_mut(kvr)
        .enumerate()
        .with_min_len(2)
        .for_each_init(Vec::new, |lanes, (i, o)| {
            let t = i / nh;
            let s = spans.partition_point(|sp| sp.row + sp.len <= t);
            let sp = spans[s];
            let rows = &caches[s].layer(il)[..(sp.pos0 + t - sp.row + 1) * crow];
            let qh = &qc[i * crow..(i + 1) * crow];
            if exact {
                attend_exact(qh, rows, crow, scale, o, lanes);
            } else {
                attend(qh, rows, crow, scale, o);
            }
        });

    let heads = per_head(cx, &w.v_b, &lat, n, FloatOp::MulMat)?;
    cx.mm(&w.wo, &heads, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_grows_truncates_and_counts_bytes() {
        let mut c = MlaCache::new(2, 3, 4);
        c.reserve(2).unwrap();
        c.write(0, 0, &[1., 2., 3., 4., 5., 6.]);
        c.write(1, 0, &[7., 8., 9., 10., 11., 12.]);
        c.advance(2);
        assert_eq!(c.len(), 2);
        assert_eq!(c.bytes(), 2 * 2 * 3 * 4);
        assert_eq!(&c.layer(1)[3..], &[10., 11., 12.]);
        assert!(c.reserve(3).is_err());
        c.truncate(1);
        assert_eq!(c.len(), 1);
        assert_eq!(c.layer(0), &[1., 2., 3.]);
        c.write(0, 1, &[0., 0., 1.]);
        assert_eq!(c.layer(0), &[1., 2., 3., 0., 0., 1.]);
    }
}
