//! Manifold-constrained hyper-connections (mHC): the residual stream is
//! `hc` parallel copies of the hidden state (`hc × n_embd` per token).
//!
//! Around each sub-block (attention, MoE), from the RMS-normalised
//! flattened streams a small projection gives per token:
//! - `pre` (`hc`): `sigmoid(m·s₀ + b) + eps`, the weights that collapse
//!   the streams into the sub-block's input;
//! - `post` (`hc`): `2·sigmoid(m·s₁ + b)`, how much of the sub-block's
//!   output each stream receives;
//! - `comb` (`hc × hc`): `softmax` over each row of `m·s₂ + b`, plus eps,
//!   then Sinkhorn: one column normalisation and `iters - 1` rounds of row
//!   then column normalisation (each sum plus eps), nearly doubly
//!   stochastic. Stream `j` after the sub-block is
//!   `post[j]·out + Σ_i comb[i][j]·stream[i]`.
//!
//! The head collapses the streams once more with `pre` alone.

use dwarfstar_kernels::ops;

use crate::error::Result;

use super::weights::HcWeights;
use super::Ctx;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The mixing weights of one sub-block for `n` tokens.
pub struct Mix {
    pub post: Vec<f32>,
    pub comb: Vec<f32>,
}

/// The projection `m` of the normalised flat streams `x` (`n × hc·e`).
fn mixes(cx: &Ctx<'_>, w: &HcWeights, x: &[f32], n: usize, eps: f32) -> Result<Vec<f32>> {
    let mut flat = x.to_vec();
    for row in flat.chunks_exact_mut(w.fn_.cols) {
        ops::rms_norm(row, &[], eps);
    }
    cx.mm(&w.fn_, &flat, n)
}

/// Collapses the streams `x` (`n × hc × e`) with weights `pre` (`n × hc`).
fn collapse(x: &[f32], pre: &[f32], hc: usize, e: usize) -> Vec<f32> {
    let n = pre.len() / hc;
    let mut out = vec![0f32; n * e];
    for t in 0..n {
        let o = &mut out[t * e..(t + 1) * e];
        for h in 0..hc {
            ops::axpy(
                o,
                pre[t * hc + h],
                &x[(t * hc + h) * e..(t * hc + h + 1) * e],
            );
        }
    }
    out
}

/// Sinkhorn normalisation of one `hc × hc` matrix (rows: source stream).
fn sinkhorn(c: &mut [f32], hc: usize, iters: usize, eps: f32) {
    let cols = |c: &mut [f32]| {
        for j in 0..hc {
            let s: f32 = (0..hc).map(|i| c[i * hc + j]).sum::<f32>() + eps;
            (0..hc).for_each(|i| c[i * hc + j] /= s);
        }
    };
    for row in c.chunks_exact_mut(hc) {
        ops::softmax(row);
        row.iter_mut().for_each(|v| *v += eps);
    }
    cols(c);
    for _ in 1..iters {
        for row in c.chunks_exact_mut(hc) {
            let s: f32 = row.iter().sum::<f32>() + eps;
            row.iter_mut().for_each(|v| *v /= s);
        }
        cols(c);
    }
}

/// The sub-block input (`n × e`) and its mixing weights, from the streams
/// `x` (`n × hc × e`).
pub(crate) fn pre(
    cx: &Ctx<'_>,
    w: &HcWeights,
    x: &[f32],
    hc: usize,
    iters: usize,
    norm_eps: f32,
    hc_eps: f32,
) -> Result<(Vec<f32>, Mix)> {
    let e = w.fn_.cols / hc;
    let n = x.len() / (hc * e);
    let m = mixes(cx, w, x, n, norm_eps)?;
    let mix = w.fn_.rows;
    let (mut pre, mut post) = (vec![0f32; n * hc], vec![0f32; n * hc]);
    let mut comb = vec![0f32; n * hc * hc];
    for t in 0..n {
        let mt = &m[t * mix..(t + 1) * mix];
        for h in 0..hc {
            pre[t * hc + h] = sigmoid(mt[h] * w.scale[0] + w.base[h]) + hc_eps;
            post[t * hc + h] = 2.0 * sigmoid(mt[hc + h] * w.scale[1] + w.base[hc + h]);
        }
        let c = &mut comb[t * hc * hc..(t + 1) * hc * hc];
        for (k, v) in c.iter_mut().enumerate() {
            *v = mt[2 * hc + k] * w.scale[2] + w.base[2 * hc + k];
        }
        sinkhorn(c, hc, iters, hc_eps);
    }
    Ok((collapse(x, &pre, hc, e), Mix { post, comb }))
}

/// The new streams after a sub-block whose output is `out` (`n × e`):
/// `x` (`n × hc × e`) is replaced.
pub fn post(x: &mut [f32], out: &[f32], mix: &Mix, hc: usize) {
    let n = mix.post.len() / hc;
    if n == 0 {
        return;
    }
    let e = out.len() / n;
    let mut res = vec![0f32; hc * e];
    for t in 0..n {
        let xt = &mut x[t * hc * e..(t + 1) * hc * e];
        res.copy_from_slice(xt);
        let ot = &out[t * e..(t + 1) * e];
        for j in 0..hc {
            let dst = &mut xt[j * e..(j + 1) * e];
            let pj = mix.post[t * hc + j];
            for (d, &o) in dst.iter_mut().zip(ot) {
                *d = pj * o;
            }
            for i in 0..hc {
                ops::axpy(
                    dst,
                    mix.comb[(t * hc + i) * hc + j],
                    &res[i * e..(i + 1) * e],
                );
            }
        }
    }
}

/// The head's collapse of the streams `x` (`n × hc × e`) into `n × e`.
pub(crate) fn head(
    cx: &Ctx<'_>,
    w: &HcWeights,
    x: &[f32],
    hc: usize,
    norm_eps: f32,
    hc_eps: f32,
) -> Result<Vec<f32>> {
    let e = w.fn_.cols / hc;
    let n = x.len() / (hc * e);
    let m = mixes(cx, w, x, n, norm_eps)?;
    let pre: Vec<f32> = m
        .iter()
        .enumerate()
        .map(|(i, &v)| sigmoid(v * w.scale[0] + w.base[i % hc]) + hc_eps)
        .collect();
    Ok(collapse(x, &pre, hc, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinkhorn_is_nearly_doubly_stochastic() {
        let mut c: Vec<f32> = (0..16).map(|i| ((i * 7) % 5) as f32 * 0.7 - 1.0).collect();
        sinkhorn(&mut c, 4, 20, 1e-6);
        for i in 0..4 {
            let r: f32 = c[i * 4..(i + 1) * 4].iter().sum();
            let col: f32 = (0..4).map(|k| c[k * 4 + i]).sum();
            assert!(
                (r - 1.0).abs() < 1e-3 && (col - 1.0).abs() < 1e-4,
                "{r} {col}"
            );
        }
    }

    #[test]
    fn post_mixes_streams_and_output() {
        // hc = 2, e = 1, one token: streams [1, 10], output 3.
        let mut x = vec![1.0, 10.0];
        let mix = Mix {
            post: vec![0.5, 2.0],
            comb: vec![0.25, 0.75, 0.75, 0.25],
        };
        post(&mut x, &[3.0], &mix, 2);
        // j=0: 0.5·3 + 0.25·1 + 0.75·10; j=1: 2·3 + 0.75·1 + 0.25·10.
        assert_eq!(x, vec![9.25, 9.25]);
    }
}
