//! Q3_K: dequantization, ggml's reference and importance-weighted
//! quantizers, and the scalar reference dot product with Q8_K.
//!
//! Weight `128h + 32j + l` (`j < 4`, `l < 32`) takes its low two bits from
//! bits `2j..2j+2` of `qs[32h + l]` and its high bit from bit `4h + j` of
//! `hmask[l]`; the value is `low − 4·(1 − high)`, in `[−4, 3]`. Group `g`
//! of 16 weights has scale `d·scale[g]` (6 bits, offset by 32).

use half::f16;

use super::blocks::{pack_q3k_scales, q3k_scales, BlockQ3_K, BlockQ8_K, QK_K};
use super::lanes::{fma_lanes, hsum8, lanes};
use super::search::{make_q3_quants, make_qx_quants, nearest_int};

/// The signed 3-bit value of weight `i` of `b`.
#[inline]
fn value(b: &BlockQ3_K, i: usize) -> i32 {
    let (h, j, l) = (i / 128, (i % 128) / 32, i % 32);
    let low = ((b.qs[32 * h + l] >> (2 * j)) & 3) as i32;
    let high = (b.hmask[l] >> (4 * h + j)) & 1;
    if high != 0 {
        low
    } else {
        low - 4
    }
}

/// Dequantizes `blocks` into `out` (`256` values per block), as ggml does.
pub fn dequantize_q3_k(blocks: &[BlockQ3_K], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let sc = q3k_scales(&b.scales);
        for g in 0..16 {
            let dl = d * sc[g] as f32;
            for i in 16 * g..16 * g + 16 {
                y[i] = dl * value(b, i) as f32;
            }
        }
    }
}

/// Rounds against the stored scales, then splits the levels (`value + 4`)
/// into `hmask` and `qs`.
fn requantize_and_pack(x: &[f32], b: &mut BlockQ3_K, levels: &mut [i8; QK_K]) {
    let d = b.d.to_f32();
    let sc = q3k_scales(&b.scales);
    for g in 0..16 {
        let dg = d * sc[g] as f32;
        if dg == 0.0 {
            continue;
        }
        for i in 16 * g..16 * g + 16 {
            levels[i] = (nearest_int(x[i] / dg).clamp(-4, 3) + 4) as i8;
        }
    }
    b.hmask = [0; 32];
    for (i, l) in levels.iter_mut().enumerate() {
        if *l > 3 {
            b.hmask[i % 32] |= 1 << (i / 32);
            *l -= 4;
        }
    }
    for h in 0..2 {
        for l in 0..32 {
            let q = |j: usize| levels[128 * h + 32 * j + l] as u8;
            b.qs[32 * h + l] = q(0) | (q(1) << 2) | (q(2) << 4) | (q(3) << 6);
        }
    }
}

/// ggml's `quantize_row_q3_K_ref`: what `llama-quantize` writes for Q3_K
/// without an importance matrix. `x.len()` must be `256 · out.len()`.
pub fn quantize_q3_k(x: &[f32], out: &mut [BlockQ3_K]) {
    assert_eq!(x.len(), out.len() * QK_K, "quantize_q3_k: length mismatch");
    for (x, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let mut levels = [0i8; QK_K];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut amax) = (0f32, 0f32);
        for g in 0..16 {
            let r = 16 * g..16 * g + 16;
            scales[g] = make_q3_quants(4, &x[r.clone()], &mut levels[r]);
            if scales[g].abs() > amax {
                amax = scales[g].abs();
                max_scale = scales[g];
            }
        }
        if max_scale != 0.0 {
            let iscale = -32.0f32 / max_scale;
            let mut ls = [0u8; 16];
            for g in 0..16 {
                let l = nearest_int(iscale * scales[g]) as i8;
                ls[g] = (l.clamp(-32, 31) + 32) as u8;
            }
            b.scales = pack_q3k_scales(&ls);
            b.d = f16::from_f32(1.0 / iscale);
        } else {
            b.scales = [0; 12];
            b.d = f16::ZERO;
        }
        requantize_and_pack(x, b, &mut levels);
    }
}

/// ggml's `quantize_q3_K`: importance-weighted with `weights` (one
/// importance-matrix row, `weights.len()` a multiple of 256 dividing
/// `x.len()`), exactly [`quantize_q3_k`] with `None`.
pub fn quantize_q3_k_weighted(x: &[f32], out: &mut [BlockQ3_K], weights: Option<&[f32]>) {
    let Some(qw) = weights else {
        return quantize_q3_k(x, out);
    };
    assert_eq!(
        x.len(),
        out.len() * QK_K,
        "quantize_q3_k_weighted: length mismatch"
    );
    assert!(
        !qw.is_empty() && qw.len() % QK_K == 0 && x.len().is_multiple_of(qw.len()),
        "quantize_q3_k_weighted: weights must be one row"
    );
    for (bi, (x, b)) in x.chunks_exact(QK_K).zip(out.iter_mut()).enumerate() {
        let qw = &qw[(bi * QK_K) % qw.len()..][..QK_K];
        let mut sumx2 = 0f32;
        for &v in x {
            sumx2 += v * v;
        }
        let sigma2 = 2.0 * sumx2 / QK_K as f32;
        let mut levels = [0i8; QK_K];
        let (mut scales, mut sw) = ([0f32; 16], [0f32; 16]);
        for g in 0..16 {
            let r = 16 * g..16 * g + 16;
            let xs = &x[r.clone()];
            let mut w = [0f32; 16];
            for l in 0..16 {
                w[l] = qw[16 * g + l] * (sigma2 + xs[l] * xs[l]).sqrt();
            }
            let mut sumw = 0f32;
            for &v in &w {
                sumw += v;
            }
            sw[g] = sumw;
            scales[g] = make_qx_quants(4, xs, &mut levels[r], Some(&w));
        }
        let mut ls = [0i8; 16];
        let d_block = make_qx_quants(32, &scales, &mut ls, Some(&sw));
        b.scales = pack_q3k_scales(&ls.map(|l| l as u8));
        b.d = f16::from_f32(d_block);
        requantize_and_pack(x, b, &mut levels);
    }
}

/// Scalar reference dot product of Q3_K weights with Q8_K activations, in
/// ggml's x86 order (see [`super::lanes`]).
#[inline]
pub fn vec_dot_q3_k_q8_k(w: &[BlockQ3_K], a: &[BlockQ8_K]) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in w.iter().zip(a) {
        let d = y.d * x.d.to_f32();
        let sc = q3k_scales(&x.scales);
        let s = lanes(|e| sc[e / 16] as i32 * value(x, e) * y.qs[e] as i32);
        fma_lanes(&mut acc, d, &s);
    }
    hsum8(&acc)
}
