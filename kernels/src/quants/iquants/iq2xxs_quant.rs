//! IQ2_XXS quantization with an importance matrix, as ggml's
//! `quantize_iq2_xxs` (which requires one).
//!
//! Per 32 weights: fold the signs out (flipping the least important weight
//! when an odd number are negative, since only 7 sign bits are stored), fit
//! the magnitudes to the lattice {1, 3, 5}^8 restricted to the 256 grid
//! points (points off the grid snap to their nearest grid neighbours,
//! precomputed once), try 13 scales around a first least-squares guess,
//! refit, and finally code the group scales in 4 bits against the
//! super-block's f16 scale.

use half::f16;

use super::lattice::{iq2xxs, Lattice};
use super::{with_blocks_mut, BlockIQ2XXS, QK_K};
use crate::quants::kquants::search::nearest_int;
use crate::KernelError;

/// Largest lattice level + 1 (levels 0, 1, 2 are the magnitudes 1, 3, 5).
const K_MAX_Q: i32 = 3;

/// ggml's `make_qp_quants`: the weighted least-squares scale of
/// `x ≈ s * l`, `l <= nmax`, after a small search over the inverse scale
/// and a few coordinate-descent passes. Like ggml it keeps the levels in
/// bytes, so a negative level (possible for the one sign-flipped value)
/// reads back as `l + 256`; that is reproduced because it steers the
/// search.
fn qp_scale(nmax: i32, x: &[f32], w: &[f32]) -> f32 {
    let max = x.iter().fold(0.0f32, |m, &v| if m > v { m } else { v });
    if max < 1e-15 {
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    let mut levels: Vec<u8> = x.iter().map(|&xi| nearest_int(iscale * xi) as u8).collect();
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for ((&xi, &wi), &li) in x.iter().zip(w).zip(&levels) {
        let diff = xi - scale * li as f32;
        best_mse += wi * diff * diff;
    }
    for is in (-4..=4).filter(|&i| i != 0) {
        let iscale_is = (0.1 * is as f32 + nmax as f32) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for (&xi, &wi) in x.iter().zip(w) {
            let l = nearest_int(iscale_is * xi).min(nmax);
            let diff = xi - scale_is * l as f32;
            mse += wi * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for ((&xi, &wi), li) in x.iter().zip(w).zip(levels.iter_mut()) {
        let l = nearest_int(iscale * xi).min(nmax);
        *li = l as u8;
        sumlx += wi * xi * l as f32;
        suml2 += wi * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for ((&xi, &wi), li) in x.iter().zip(w).zip(levels.iter_mut()) {
            let old = *li as f32;
            let mut slx = sumlx - wi * xi * old;
            let mut sl2 = suml2 - wi * old * old;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(xi * sl2 / slx).min(nmax);
                if new_l != *li as i32 {
                    slx += wi * xi * new_l as f32;
                    sl2 += wi * new_l as f32 * new_l as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *li = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Weighted sums Σ w·x·q and Σ w·q² with q = 2l + 1.
fn fit_sums(xval: &[f32], weight: &[f32], l: &[i8]) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for ((&x, &w), &li) in xval.iter().zip(weight).zip(l) {
        let q = (2 * li as i32 + 1) as f32;
        sumqx += w * x * q;
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

/// Levels of `xval` at inverse scale `id`, snapped group by group to the
/// grid (neighbour choice at scale `scale`).
fn levels_at(lat: &Lattice, id: f32, scale: f32, xval: &[f32], waux: &[f32], l: &mut [i8; 32]) {
    for (i, v) in l.iter_mut().enumerate() {
        *v = nearest_int(0.5 * (id * xval[i] - 1.0)).clamp(0, K_MAX_Q - 1) as i8;
    }
    for k in 0..4 {
        let r = 8 * k..8 * k + 8;
        lat.snap(&mut l[r.clone()], &xval[r.clone()], &waux[r], scale);
    }
}

/// Quantizes one group of 32; returns its scale (>= 0), the 4 grid indices
/// and the 4 seven-bit sign indices.
fn quantize_group(lat: &Lattice, xb: &[f32], weight: &[f32; 32]) -> (f32, [u8; 4], [u8; 4]) {
    let waux: [f32; 32] = std::array::from_fn(|i| weight[i].sqrt());
    let mut xval = [0.0f32; 32];
    let mut signs = [0u8; 4];
    for k in 0..4 {
        let mut s = 0u8;
        for i in 0..8 {
            let v = xb[8 * k + i];
            if v >= 0.0 {
                xval[8 * k + i] = v;
            } else {
                xval[8 * k + i] = -v;
                s |= 1 << i;
            }
        }
        if s.count_ones() % 2 == 1 {
            // Only even sign patterns are stored: flip the weight that
            // costs least (w·x² smallest, first on a tie).
            let cost = |i: usize| weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i];
            let imin = (1..8).fold(0, |m, i| if cost(i) < cost(m) { i } else { m });
            xval[8 * k + imin] = -xval[8 * k + imin];
            s ^= 1 << imin;
        }
        signs[k] = s & 127;
    }
    let max = xval
        .iter()
        .skip(1)
        .fold(xval[0], |m, &v| if m > v { m } else { v });
    if max < 1e-15 {
        return (0.0, [0; 4], [0; 4]);
    }
    let mut scale = qp_scale(K_MAX_Q + 1, &xval, weight);
    let eff_max = scale * K_MAX_Q as f32;
    if eff_max <= 0.0 {
        return (0.0, [0; 4], [0; 4]);
    }
    let mut l = [0i8; 32];
    let mut laux = [0i8; 32];
    let mut best = 0.0f32;
    for is in -6..=6 {
        let id = (2.0 * K_MAX_Q as f32 - 1.0 + is as f32 * 0.1) / eff_max;
        levels_at(lat, id, 1.0 / id, &xval, &waux, &mut laux);
        let (sumqx, sumq2) = fit_sums(&xval, weight, &laux);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            l = laux;
        }
    }
    if scale > 0.0 {
        levels_at(lat, 1.0 / scale, scale, &xval, &waux, &mut l);
        let (sumqx, sumq2) = fit_sums(&xval, weight, &l);
        if sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    if scale < 0.0 {
        scale = -scale;
        for s in signs.iter_mut() {
            *s = !*s & 127;
        }
    }
    let mut grid = [0u8; 4];
    for (k, g) in grid.iter_mut().enumerate() {
        let r = 8 * k..8 * k + 8;
        *g = lat
            .snap(&mut l[r.clone()], &xval[r.clone()], &waux[r], scale)
            .0 as u8;
    }
    (scale, grid, signs)
}

fn quantize_block(lat: &Lattice, x: &[f32], qw: &[f32], out: &mut BlockIQ2XXS) {
    let mut sumx2 = 0.0f32;
    for &v in x {
        sumx2 += v * v;
    }
    let sigma2 = sumx2 / QK_K as f32;
    let mut words = [0u32; 16];
    let mut scales = [0.0f32; 8];
    let mut max_scale = 0.0f32;
    for ib in 0..8 {
        let xb = &x[32 * ib..32 * ib + 32];
        let qb = &qw[32 * ib..32 * ib + 32];
        let weight: [f32; 32] = std::array::from_fn(|i| qb[i] * (sigma2 + xb[i] * xb[i]).sqrt());
        let (scale, grid, signs) = quantize_group(lat, xb, &weight);
        for k in 0..4 {
            words[2 * ib] |= (grid[k] as u32) << (8 * k);
            words[2 * ib + 1] |= (signs[k] as u32) << (7 * k);
        }
        scales[ib] = scale;
        max_scale = if max_scale > scale { max_scale } else { scale };
    }
    out.d = f16::from_f32(0.0);
    out.qs = [0; QK_K / 8];
    if max_scale == 0.0 {
        return;
    }
    let d = max_scale / 31.0;
    out.d = f16::from_f32(d);
    let id = 1.0 / d;
    for (ib, &s) in scales.iter().enumerate() {
        let l = nearest_int(0.5 * (id * s - 1.0)).clamp(0, 15);
        words[2 * ib + 1] |= (l as u32) << 28;
    }
    for (i, w) in words.iter().enumerate() {
        out.qs[2 * i] = *w as u16;
        out.qs[2 * i + 1] = (*w >> 16) as u16;
    }
}

/// Quantizes rows of `n_per_row` values to IQ2_XXS with the importance
/// matrix `imatrix` (one weight per column, as llama-imatrix writes it),
/// exactly as ggml's `quantize_iq2_xxs`.
pub fn quantize_iq2_xxs(
    src: &[f32],
    n_per_row: usize,
    imatrix: &[f32],
    dst: &mut [u8],
) -> Result<(), KernelError> {
    let ty = crate::GgmlType::IQ2_XXS;
    if n_per_row == 0 || !n_per_row.is_multiple_of(QK_K) || !src.len().is_multiple_of(n_per_row) {
        return Err(KernelError::NotBlockMultiple {
            ty,
            len: if n_per_row == 0 { src.len() } else { n_per_row },
            block: QK_K,
        });
    }
    if imatrix.len() != n_per_row {
        return Err(KernelError::Shape(format!(
            "IQ2_XXS imatrix has {} weights for rows of {n_per_row}",
            imatrix.len()
        )));
    }
    let expected = src.len() / QK_K * std::mem::size_of::<BlockIQ2XXS>();
    if dst.len() != expected {
        return Err(KernelError::ByteLength {
            ty,
            expected,
            got: dst.len(),
        });
    }
    let lat = iq2xxs();
    let per_row = n_per_row / QK_K;
    with_blocks_mut::<BlockIQ2XXS>(dst, |ys| {
        for (i, (x, y)) in src.chunks_exact(QK_K).zip(ys.iter_mut()).enumerate() {
            let col = (i % per_row) * QK_K;
            quantize_block(lat, x, &imatrix[col..col + QK_K], y);
        }
    });
    Ok(())
}

/// Quantizes one row (`x.len()` a multiple of 256) to IQ2_XXS against its
/// importance row `qw` (same length) into `dst` (the row's bytes).
pub fn quantize_row_iq2_xxs(x: &[f32], qw: &[f32], dst: &mut [u8]) {
    let lat = iq2xxs();
    with_blocks_mut::<BlockIQ2XXS>(dst, |ys| {
        for ((xb, qb), y) in x.chunks_exact(QK_K).zip(qw.chunks_exact(QK_K)).zip(ys) {
            quantize_block(lat, xb, qb, y);
        }
    });
}
