//! Q5_K: dequantization, ggml's reference and importance-weighted
//! quantizers, and the scalar reference dot product with Q8_K.
//!
//! Laid out as Q4_K (low nibbles in `qs`, same scales and mins) with the
//! fifth bit of weight `32g + l` in bit `g` of `qh[l]`.

use half::f16;

use super::blocks::{k4_scales_mins, pack_k4_scales_mins, BlockQ5_K, BlockQ8_K, QK_K};
use super::lanes::{fma_lanes, hsum8, lanes};
use super::q4k::{reference_scales, requantize_k4, weighted_group_search};
use super::search::{make_qp_quants, AffineSearch};

/// Dequantizes `blocks` into `out` (`256` values per block), as ggml does.
pub fn dequantize_q5_k(blocks: &[BlockQ5_K], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let dmin = b.dmin.to_f32();
        let (sc, mn) = k4_scales_mins(&b.scales);
        for c in 0..4 {
            let (d1, m1) = (d * sc[2 * c] as f32, dmin * mn[2 * c] as f32);
            let (d2, m2) = (d * sc[2 * c + 1] as f32, dmin * mn[2 * c + 1] as f32);
            let q = &b.qs[32 * c..32 * c + 32];
            let y = &mut y[64 * c..64 * c + 64];
            for l in 0..32 {
                let h1 = ((b.qh[l] >> (2 * c)) & 1) << 4;
                let h2 = ((b.qh[l] >> (2 * c + 1)) & 1) << 4;
                y[l] = d1 * ((q[l] & 0xf) + h1) as f32 - m1;
                y[l + 32] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
            }
        }
    }
}

fn requantize_and_pack(x: &[f32], b: &mut BlockQ5_K, levels: &mut [u8; QK_K]) {
    requantize_k4(x, &b.scales, b.d, b.dmin, 31, levels);
    b.qh = [0; 32];
    for c in 0..4 {
        for l in 0..32 {
            let (l1, l2) = (levels[64 * c + l], levels[64 * c + 32 + l]);
            b.qh[l] |= ((l1 >> 4) << (2 * c)) | ((l2 >> 4) << (2 * c + 1));
            b.qs[32 * c + l] = (l1 & 0xf) | ((l2 & 0xf) << 4);
        }
    }
}

/// ggml's `quantize_row_q5_K_ref`: what `llama-quantize` writes for Q5_K
/// without an importance matrix. `x.len()` must be `256 · out.len()`.
pub fn quantize_q5_k(x: &[f32], out: &mut [BlockQ5_K]) {
    assert_eq!(x.len(), out.len() * QK_K, "quantize_q5_k: length mismatch");
    let search = AffineSearch {
        nmax: 31,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: false,
    };
    for (x, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let mut levels = [0u8; QK_K];
        let (scales, d, dmin) = reference_scales(x, search, &mut levels);
        b.scales = scales;
        b.d = d;
        b.dmin = dmin;
        requantize_and_pack(x, b, &mut levels);
    }
}

/// ggml's `quantize_q5_K`: importance-weighted with `weights` (one row,
/// see [`super::quantize_q4_k_weighted`]), exactly [`quantize_q5_k`] with
/// `None`.
pub fn quantize_q5_k_weighted(x: &[f32], out: &mut [BlockQ5_K], weights: Option<&[f32]>) {
    let Some(qw) = weights else {
        return quantize_q5_k(x, out);
    };
    assert_eq!(
        x.len(),
        out.len() * QK_K,
        "quantize_q5_k_weighted: length mismatch"
    );
    assert!(
        !qw.is_empty() && qw.len() % QK_K == 0 && x.len().is_multiple_of(qw.len()),
        "quantize_q5_k_weighted: weights must be one row"
    );
    let search = AffineSearch {
        nmax: 31,
        rmin: -0.9,
        rdelta: 0.05,
        nstep: 36,
        use_mad: false,
    };
    for (bi, (x, b)) in x.chunks_exact(QK_K).zip(out.iter_mut()).enumerate() {
        let qw = &qw[(bi * QK_K) % qw.len()..][..QK_K];
        let mut levels = [0u8; QK_K];
        let (scales, mins, sw) = weighted_group_search(x, qw, search, &mut levels);
        let mut ls = [0u8; 8];
        let mut lm = [0u8; 8];
        let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
        let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
        b.scales = pack_k4_scales_mins(&ls, &lm);
        b.d = f16::from_f32(d_block);
        b.dmin = f16::from_f32(m_block);
        requantize_and_pack(x, b, &mut levels);
    }
}

/// Scalar reference dot product of Q5_K weights with Q8_K activations, in
/// ggml's x86 order (see [`super::lanes`]). The mins are summed exactly
/// per block and fused, times `−d8·dmin`, into one scalar added last.
#[inline]
pub fn vec_dot_q5_k_q8_k(w: &[BlockQ5_K], a: &[BlockQ8_K]) -> f32 {
    let (mut acc, mut summs) = ([0f32; 8], 0f32);
    for (x, y) in w.iter().zip(a) {
        let d = y.d * x.d.to_f32();
        let dmin = -y.d * x.dmin.to_f32();
        let (sc, mn) = k4_scales_mins(&x.scales);
        let m: i32 = (0..8)
            .map(|j| mn[j] as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32))
            .sum();
        summs = dmin.mul_add(m as f32, summs);
        let s = lanes(|e| {
            let (c, l) = (e / 64, e % 32);
            let lo = if e % 64 < 32 {
                x.qs[32 * c + l] & 0xf
            } else {
                x.qs[32 * c + l] >> 4
            };
            let q = lo | (((x.qh[l] >> (e / 32)) & 1) << 4);
            sc[e / 32] as i32 * q as i32 * y.qs[e] as i32
        });
        fma_lanes(&mut acc, d, &s);
    }
    hsum8(&acc) + summs
}
