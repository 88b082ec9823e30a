//! Q4_K: dequantization, ggml's reference and importance-weighted
//! quantizers, and the scalar reference dot product with Q8_K.
//!
//! Weight `64c + l` (`l < 32`) is the low nibble of `qs[32c + l]`, weight
//! `64c + 32 + l` its high nibble; group `g` of 32 weights has scale
//! `d·sc[g]` and min `dmin·m[g]`.

use half::f16;

use super::blocks::{k4_scales_mins, pack_k4_scales_mins, BlockQ4_K, BlockQ8_K, QK_K};
use super::lanes::{fma_lanes, hsum4, hsum8, lanes};
use super::search::{make_qkx_quants, make_qp_quants, nearest_int, AffineSearch};

/// Dequantizes `blocks` into `out` (`256` values per block), as ggml does.
pub fn dequantize_q4_k(blocks: &[BlockQ4_K], out: &mut [f32]) {
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
                y[l] = d1 * (q[l] & 0xf) as f32 - m1;
                y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

/// Rounds every weight again against the stored (f16 / 6-bit) scales and
/// mins of a Q4_K/Q5_K block, to levels in `[0, nmax]`. Groups whose scale
/// came out zero keep the levels of the search, as in ggml.
pub(super) fn requantize_k4(
    x: &[f32],
    packed: &[u8; 12],
    d: f16,
    dmin: f16,
    nmax: i32,
    levels: &mut [u8; QK_K],
) {
    let (sc, mn) = k4_scales_mins(packed);
    let (d, dmin) = (d.to_f32(), dmin.to_f32());
    for j in 0..8 {
        let dj = d * sc[j] as f32;
        if dj == 0.0 {
            continue;
        }
        let mj = dmin * mn[j] as f32;
        for i in 32 * j..32 * j + 32 {
            levels[i] = nearest_int((x[i] + mj) / dj).clamp(0, nmax) as u8;
        }
    }
}

fn requantize_and_pack(x: &[f32], b: &mut BlockQ4_K, levels: &mut [u8; QK_K]) {
    requantize_k4(x, &b.scales, b.d, b.dmin, 15, levels);
    for c in 0..4 {
        for l in 0..32 {
            b.qs[32 * c + l] = levels[64 * c + l] | (levels[64 * c + 32 + l] << 4);
        }
    }
}

/// ggml's `quantize_row_q4_K_ref`: what `llama-quantize` writes for Q4_K
/// without an importance matrix. `x.len()` must be `256 · out.len()`.
pub fn quantize_q4_k(x: &[f32], out: &mut [BlockQ4_K]) {
    assert_eq!(x.len(), out.len() * QK_K, "quantize_q4_k: length mismatch");
    let search = AffineSearch {
        nmax: 15,
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
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

/// The scale and min search of the reference Q4_K/Q5_K quantizers for one
/// super-block: per group of 32 an affine search weighted by `rms + |x|`,
/// then the scales and mins rounded to 6 bits against their maxima.
/// Returns the packed scale bytes, `d` and `dmin`.
pub(super) fn reference_scales(
    x: &[f32],
    search: AffineSearch,
    levels: &mut [u8; QK_K],
) -> ([u8; 12], f16, f16) {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let mut w = [0f32; 32];
        for (w, &v) in w.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (s, m) = make_qkx_quants(search, xs, &w, &mut levels[32 * j..32 * j + 32]);
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    (
        pack_k4_scales_mins(&ls, &lm),
        f16::from_f32(max_scale / 63.0),
        f16::from_f32(max_min / 63.0),
    )
}

/// ggml's `quantize_q4_K` for one or more rows: with `weights` (an
/// importance matrix row, `weights.len()` = row length, a multiple of 256
/// dividing `x.len()`) the importance-weighted search `llama-quantize` runs
/// when given an imatrix; with `None` exactly [`quantize_q4_k`].
pub fn quantize_q4_k_weighted(x: &[f32], out: &mut [BlockQ4_K], weights: Option<&[f32]>) {
    let Some(qw) = weights else {
        return quantize_q4_k(x, out);
    };
    assert_eq!(
        x.len(),
        out.len() * QK_K,
        "quantize_q4_k_weighted: length mismatch"
    );
    assert!(
        !qw.is_empty() && qw.len() % QK_K == 0 && x.len().is_multiple_of(qw.len()),
        "quantize_q4_k_weighted: weights must be one row"
    );
    let search = AffineSearch {
        nmax: 15,
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

/// The per-group affine searches of the weighted Q4_K/Q5_K quantizers:
/// returns scales, mins and the summed weight of each group of 32.
pub(super) fn weighted_group_search(
    x: &[f32],
    qw: &[f32],
    search: AffineSearch,
    levels: &mut [u8; QK_K],
) -> ([f32; 8], [f32; 8], [f32; 8]) {
    let mut sum_x2 = 0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    let sigma2 = 2.0 * sum_x2 / QK_K as f32;
    let (mut scales, mut mins, mut sw) = ([0f32; 8], [0f32; 8], [0f32; 8]);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut w = [0f32; 32];
        for l in 0..32 {
            w[l] = qw[32 * j + l] * (sigma2 + xs[l] * xs[l]).sqrt();
        }
        let mut sumw = 0f32;
        for &v in &w {
            sumw += v;
        }
        sw[j] = sumw;
        let (s, m) = make_qkx_quants(search, xs, &w, &mut levels[32 * j..32 * j + 32]);
        scales[j] = s;
        mins[j] = m;
    }
    (scales, mins, sw)
}

/// Scalar reference dot product of Q4_K weights with Q8_K activations, in
/// ggml's x86 order (see [`super::lanes`]). The mins go to a separate
/// four-lane accumulator (lane `m`: groups `2m`, `2m+1`, each against the
/// sum of its two `bsums`, times `−d8·dmin`), reduced on its own and added
/// last.
#[inline]
pub fn vec_dot_q4_k_q8_k(w: &[BlockQ4_K], a: &[BlockQ8_K]) -> f32 {
    let (mut acc, mut acc_m) = ([0f32; 8], [0f32; 4]);
    for (x, y) in w.iter().zip(a) {
        let d = y.d * x.d.to_f32();
        let dmin = -y.d * x.dmin.to_f32();
        let (sc, mn) = k4_scales_mins(&x.scales);
        for (m, acc_m) in acc_m.iter_mut().enumerate() {
            let p: i32 = (2 * m..2 * m + 2)
                .map(|j| mn[j] as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32))
                .sum();
            *acc_m = dmin.mul_add(p as f32, *acc_m);
        }
        let s = lanes(|e| {
            let (c, l) = (e / 64, e % 32);
            let q = if e % 64 < 32 {
                x.qs[32 * c + l] & 0xf
            } else {
                x.qs[32 * c + l] >> 4
            };
            sc[e / 32] as i32 * q as i32 * y.qs[e] as i32
        });
        fma_lanes(&mut acc, d, &s);
    }
    hsum8(&acc) + hsum4(&acc_m)
}
