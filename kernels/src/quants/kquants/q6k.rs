//! Q6_K: dequantization, ggml's reference and importance-weighted
//! quantizers, and the scalar reference dot product with Q8_K.
//!
//! In each half `h` of 128 weights, weight `128h + 32k + l` (`k < 4`,
//! `l < 32`) takes its low 4 bits from `ql[64h + l + 32·(k & 1)]` (low
//! nibble for `k < 2`, high nibble otherwise) and its top 2 bits from bits
//! `2k..2k+2` of `qh[32h + l]`; the stored value is `q − 32`. Group `g` of
//! 16 weights has scale `d·scales[g]`.

use half::f16;

use super::blocks::{BlockQ6_K, BlockQ8_K, QK_K};
use super::lanes::{fma_lanes, hsum8, lanes};
use super::search::{make_qx_quants, nearest_int, GROUP_MAX_EPS};

/// The 6-bit level (0..64) of weight `i` of `b`.
#[inline]
fn level(b: &BlockQ6_K, i: usize) -> u8 {
    let (h, k, l) = (i / 128, (i % 128) / 32, i % 32);
    let ql = b.ql[64 * h + l + 32 * (k & 1)];
    let lo = if k < 2 { ql & 0xf } else { ql >> 4 };
    let hi = (b.qh[32 * h + l] >> (2 * k)) & 3;
    lo | (hi << 4)
}

/// Dequantizes `blocks` into `out` (`256` values per block), as ggml does.
pub fn dequantize_q6_k(blocks: &[BlockQ6_K], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (i, y) in y.iter_mut().enumerate() {
            let q = level(b, i) as i32 - 32;
            *y = d * b.scales[i / 16] as f32 * q as f32;
        }
    }
}

/// Shared tail of both quantizers: from the sixteen group scales (and the
/// levels of the search) to the stored block.
fn finish_block(x: &[f32], scales: &[f32; 16], levels: &mut [i8; QK_K], b: &mut BlockQ6_K) {
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for &s in scales {
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = s;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        *b = bytemuck::Zeroable::zeroed();
        return;
    }
    let iscale = -128.0f32 / max_scale;
    b.d = f16::from_f32(1.0 / iscale);
    for (dst, &s) in b.scales.iter_mut().zip(scales) {
        *dst = nearest_int(iscale * s).min(127) as i8;
    }
    let d = b.d.to_f32();
    for j in 0..16 {
        let dj = d * b.scales[j] as f32;
        if dj == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            levels[i] = (nearest_int(x[i] / dj).clamp(-32, 31) + 32) as i8;
        }
    }
    for h in 0..2 {
        for l in 0..32 {
            let q = |k: usize| levels[128 * h + 32 * k + l] as u8;
            b.ql[64 * h + l] = (q(0) & 0xf) | ((q(2) & 0xf) << 4);
            b.ql[64 * h + l + 32] = (q(1) & 0xf) | ((q(3) & 0xf) << 4);
            b.qh[32 * h + l] =
                (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
        }
    }
}

/// ggml's `quantize_row_q6_K_ref`: what `llama-quantize` writes for Q6_K
/// without an importance matrix. `x.len()` must be `256 · out.len()`.
pub fn quantize_q6_k(x: &[f32], out: &mut [BlockQ6_K]) {
    quantize_q6_k_weighted(x, out, None);
}

/// ggml's `quantize_q6_K`: each group's search weighted by `weights` (one
/// importance-matrix row, `weights.len()` a multiple of 256 dividing
/// `x.len()`), or by `x²` with `None` (then exactly [`quantize_q6_k`]).
pub fn quantize_q6_k_weighted(x: &[f32], out: &mut [BlockQ6_K], weights: Option<&[f32]>) {
    assert_eq!(x.len(), out.len() * QK_K, "quantize_q6_k: length mismatch");
    if let Some(qw) = weights {
        assert!(
            !qw.is_empty() && qw.len() % QK_K == 0 && x.len().is_multiple_of(qw.len()),
            "quantize_q6_k_weighted: weights must be one row"
        );
    }
    for (bi, (x, b)) in x.chunks_exact(QK_K).zip(out.iter_mut()).enumerate() {
        let qw = weights.map(|w| &w[(bi * QK_K) % w.len()..][..QK_K]);
        let mut levels = [0i8; QK_K];
        let mut scales = [0f32; 16];
        for (g, s) in scales.iter_mut().enumerate() {
            let r = 16 * g..16 * g + 16;
            let w = qw.map(|w| &w[r.clone()]);
            *s = make_qx_quants(32, &x[r.clone()], &mut levels[r], w);
        }
        finish_block(x, &scales, &mut levels, b);
    }
}

/// Scalar reference dot product of Q6_K weights with Q8_K activations, in
/// ggml's x86 order (see [`super::lanes`]): levels stay unsigned (`q + 32`)
/// and lane `l` takes off `32·(sc[2l]·bsums[2l] + sc[2l+1]·bsums[2l+1])`.
#[inline]
pub fn vec_dot_q6_k_q8_k(w: &[BlockQ6_K], a: &[BlockQ8_K]) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in w.iter().zip(a) {
        let d = y.d * x.d.to_f32();
        let mut s = lanes(|e| x.scales[e / 16] as i32 * level(x, e) as i32 * y.qs[e] as i32);
        for (l, s) in s.iter_mut().enumerate() {
            let off = (2 * l..2 * l + 2)
                .map(|g| x.scales[g] as i32 * y.bsums[g] as i32)
                .sum::<i32>();
            *s -= off << 5;
        }
        fma_lanes(&mut acc, d, &s);
    }
    hsum8(&acc)
}
