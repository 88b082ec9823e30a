//! Q2_K: dequantization, ggml's reference and importance-weighted
//! quantizers, and the scalar reference dot product with Q8_K.
//!
//! Weight `128h + 32j + l` (`j < 4`, `l < 32`) is bits `2j..2j+2` of
//! `qs[32h + l]`; group `g` of 16 weights is `d·(scales[g] & 15)·q −
//! dmin·(scales[g] >> 4)`.

use half::f16;

use super::blocks::{BlockQ2_K, BlockQ8_K, QK_K};
use super::lanes::{fma_lanes, hsum8, lanes};
use super::search::{make_qkx_quants, make_qp_quants, nearest_int, AffineSearch};

/// The 2-bit level of weight `i` of `b`.
#[inline]
fn level(b: &BlockQ2_K, i: usize) -> u8 {
    let (h, j, l) = (i / 128, (i % 128) / 32, i % 32);
    (b.qs[32 * h + l] >> (2 * j)) & 3
}

/// Dequantizes `blocks` into `out` (`256` values per block), as ggml does.
pub fn dequantize_q2_k(blocks: &[BlockQ2_K], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let dmin = b.dmin.to_f32();
        for g in 0..16 {
            let dl = d * (b.scales[g] & 0xf) as f32;
            let ml = dmin * (b.scales[g] >> 4) as f32;
            for i in 16 * g..16 * g + 16 {
                y[i] = dl * level(b, i) as f32 - ml;
            }
        }
    }
}

/// Rounds against the stored scales and mins and packs the 2-bit levels.
fn requantize_and_pack(x: &[f32], b: &mut BlockQ2_K, levels: &mut [u8; QK_K]) {
    let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
    for g in 0..16 {
        let dg = d * (b.scales[g] & 0xf) as f32;
        if dg == 0.0 {
            continue;
        }
        let mg = dmin * (b.scales[g] >> 4) as f32;
        for i in 16 * g..16 * g + 16 {
            levels[i] = nearest_int((x[i] + mg) / dg).clamp(0, 3) as u8;
        }
    }
    for h in 0..2 {
        for l in 0..32 {
            let q = |j: usize| levels[128 * h + 32 * j + l];
            b.qs[32 * h + l] = q(0) | (q(1) << 2) | (q(2) << 4) | (q(3) << 6);
        }
    }
}

/// ggml's `quantize_row_q2_K_ref`: what `llama-quantize` writes for Q2_K
/// without an importance matrix. `x.len()` must be `256 · out.len()`.
pub fn quantize_q2_k(x: &[f32], out: &mut [BlockQ2_K]) {
    assert_eq!(x.len(), out.len() * QK_K, "quantize_q2_k: length mismatch");
    let search = AffineSearch {
        nmax: 3,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: true,
    };
    for (x, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let mut levels = [0u8; QK_K];
        let mut scales = [0f32; 16];
        let mut mins = [0f32; 16];
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        for g in 0..16 {
            let xs = &x[16 * g..16 * g + 16];
            let mut w = [0f32; 16];
            for (w, &v) in w.iter_mut().zip(xs) {
                *w = v.abs();
            }
            let (s, m) = make_qkx_quants(search, xs, &w, &mut levels[16 * g..16 * g + 16]);
            scales[g] = s;
            mins[g] = m;
            if s > max_scale {
                max_scale = s;
            }
            if m > max_min {
                max_min = m;
            }
        }
        b.scales = [0; 16];
        b.d = f16::ZERO;
        b.dmin = f16::ZERO;
        if max_scale > 0.0 {
            let iscale = 15.0 / max_scale;
            for g in 0..16 {
                b.scales[g] = nearest_int(iscale * scales[g]) as u8;
            }
            b.d = f16::from_f32(max_scale / 15.0);
        }
        if max_min > 0.0 {
            let iscale = 15.0 / max_min;
            for g in 0..16 {
                b.scales[g] |= (nearest_int(iscale * mins[g]) << 4) as u8;
            }
            b.dmin = f16::from_f32(max_min / 15.0);
        }
        requantize_and_pack(x, b, &mut levels);
    }
}

/// ggml's `quantize_q2_K`: importance-weighted with `weights` (one
/// importance-matrix row, `weights.len()` a multiple of 256 dividing
/// `x.len()`), exactly [`quantize_q2_k`] with `None`.
pub fn quantize_q2_k_weighted(x: &[f32], out: &mut [BlockQ2_K], weights: Option<&[f32]>) {
    let Some(qw) = weights else {
        return quantize_q2_k(x, out);
    };
    assert_eq!(
        x.len(),
        out.len() * QK_K,
        "quantize_q2_k_weighted: length mismatch"
    );
    assert!(
        !qw.is_empty() && qw.len() % QK_K == 0 && x.len().is_multiple_of(qw.len()),
        "quantize_q2_k_weighted: weights must be one row"
    );
    let search = AffineSearch {
        nmax: 3,
        rmin: -0.9,
        rdelta: 0.05,
        nstep: 36,
        use_mad: false,
    };
    for (bi, (x, b)) in x.chunks_exact(QK_K).zip(out.iter_mut()).enumerate() {
        let qw = &qw[(bi * QK_K) % qw.len()..][..QK_K];
        let mut sumx2 = 0f32;
        for &v in x {
            sumx2 += v * v;
        }
        let sigma2 = sumx2 / QK_K as f32;
        let mut levels = [0u8; QK_K];
        let (mut scales, mut mins, mut sw) = ([0f32; 16], [0f32; 16], [0f32; 16]);
        for g in 0..16 {
            let xs = &x[16 * g..16 * g + 16];
            let mut w = [0f32; 16];
            for l in 0..16 {
                w[l] = qw[16 * g + l] * (sigma2 + xs[l] * xs[l]).sqrt();
            }
            for &v in &w {
                sw[g] += v;
            }
            let (s, m) = make_qkx_quants(search, xs, &w, &mut levels[16 * g..16 * g + 16]);
            scales[g] = s;
            mins[g] = m;
        }
        let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
        let dm = make_qp_quants(15, &scales, &mut ls, &sw);
        let mm = make_qp_quants(15, &mins, &mut lm, &sw);
        b.d = f16::from_f32(dm);
        b.dmin = f16::from_f32(mm);
        for g in 0..16 {
            b.scales[g] = ls[g] | (lm[g] << 4);
        }
        requantize_and_pack(x, b, &mut levels);
    }
}

/// Scalar reference dot product of Q2_K weights with Q8_K activations, in
/// ggml's x86 order (see [`super::lanes`]): per block, first the mins
/// (lane `l`: groups `2l`, `2l+1` against their `bsums`, times
/// `−d8·dmin`), then the scaled levels (times `d8·d`), both fused into the
/// same eight f32 lanes.
#[inline]
pub fn vec_dot_q2_k_q8_k(w: &[BlockQ2_K], a: &[BlockQ8_K]) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in w.iter().zip(a) {
        let d = y.d * x.d.to_f32();
        let dmin = -y.d * x.dmin.to_f32();
        let m: [i32; 8] = std::array::from_fn(|l| {
            (2 * l..2 * l + 2)
                .map(|g| (x.scales[g] >> 4) as i32 * y.bsums[g] as i32)
                .sum()
        });
        fma_lanes(&mut acc, dmin, &m);
        let s = lanes(|e| {
            let (h, j, l) = (e / 128, (e % 128) / 32, e % 32);
            let q = (x.qs[32 * h + l] >> (2 * j)) & 3;
            (x.scales[e / 16] & 0xf) as i32 * q as i32 * y.qs[e] as i32
        });
        fma_lanes(&mut acc, d, &s);
    }
    hsum8(&acc)
}
