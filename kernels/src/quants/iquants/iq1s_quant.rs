//! IQ1_S quantization with an importance matrix, as ggml's
//! `quantize_iq1_s` (which requires one).
//!
//! Per 32 weights the values are `s·(q + δ)` with `q ∈ {−1, 0, 1}` and a
//! shift `δ = ±1/8`. With three levels the weighted least-squares optimum
//! can be found exactly: sort the values, and for every pair of split
//! points (and both shifts) score the fit from prefix sums. The levels are
//! then snapped, 8 at a time, to the 2048-point grid (nearest of the grid
//! neighbours at the fitted scale), the scale refitted if any moved, and
//! stored in 3 bits against the super-block's f16 scale `max/15` (times
//! ggml's fudge factor 1.125).
//!
//! Ties in the sort (equal values) are kept in input order (ggml uses
//! `qsort`, whose order of equal keys glibc's merge sort also keeps).

use half::f16;

use super::lattice::{iq1s, Lattice};
use super::{with_blocks_mut, BlockIQ1S, QK_K};
use crate::quants::kquants::search::nearest_int;

const GROUP_MAX_EPS_IQ1_S: f32 = 1e-12;
const IQ1S_DELTA: f32 = 0.125;
const BS: usize = 32;

/// Level values with the positive and the negative shift.
const X_P: [f32; 3] = [-1.0 + IQ1S_DELTA, IQ1S_DELTA, 1.0 + IQ1S_DELTA];
const X_M: [f32; 3] = [-1.0 - IQ1S_DELTA, -IQ1S_DELTA, 1.0 - IQ1S_DELTA];

/// `(Σ w·x·q, Σ w·q²)` of the split `[0, i1) → xx[0]`, `[i1, i2) → xx[1]`,
/// `[i2, 32) → xx[2]` from the prefix sums.
#[inline]
fn split_sums(
    sumx: &[f32; BS + 1],
    sumw: &[f32; BS + 1],
    i1: usize,
    i2: usize,
    xx: &[f32; 3],
) -> (f32, f32) {
    let sumqx = (sumx[i1] - sumx[0]) * xx[0]
        + (sumx[i2] - sumx[i1]) * xx[1]
        + (sumx[BS] - sumx[i2]) * xx[2];
    let sumq2 = (sumw[i1] - sumw[0]) * xx[0] * xx[0]
        + (sumw[i2] - sumw[i1]) * xx[1] * xx[1]
        + (sumw[BS] - sumw[i2]) * xx[2] * xx[2];
    (sumqx, sumq2)
}

/// One group of 32: `(scale, shift, 4 grid indices)`, or `None` for a
/// group that is (nearly) zero or admits no fit (stored as zero).
fn quantize_group(lat: &Lattice, xb: &[f32], weight: &[f32; BS]) -> Option<(f32, i8, [u16; 4])> {
    let max = xb
        .iter()
        .skip(1)
        .fold(xb[0].abs(), |m, &v| if m > v.abs() { m } else { v.abs() });
    if max < GROUP_MAX_EPS_IQ1_S {
        return None;
    }
    let mut order: [usize; BS] = std::array::from_fn(|j| j);
    order.sort_by(|&a, &b| {
        xb[a]
            .partial_cmp(&xb[b])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let (mut sumx, mut sumw) = ([0.0f32; BS + 1], [0.0f32; BS + 1]);
    for (j, &i) in order.iter().enumerate() {
        sumx[j + 1] = sumx[j] + weight[i] * xb[i];
        sumw[j + 1] = sumw[j] + weight[i];
    }
    let (mut best_score, mut scale) = (-f32::MAX, max);
    let mut best: Option<(usize, usize, i8)> = None;
    for i1 in 0..=BS {
        for i2 in i1..=BS {
            for (xx, shift) in [(&X_P, 1i8), (&X_M, -1)] {
                let (sumqx, sumq2) = split_sums(&sumx, &sumw, i1, i2, xx);
                if sumq2 > 0.0 && sumqx * sumqx > best_score * sumq2 {
                    scale = sumqx / sumq2;
                    best_score = scale * sumqx;
                    best = Some((i1, i2, shift));
                }
            }
        }
    }
    let (i1, i2, mut shift) = best?;
    let mut l = [0i8; BS];
    for (j, &i) in order.iter().enumerate() {
        l[i] = if j < i1 {
            0
        } else if j < i2 {
            1
        } else {
            2
        };
    }
    if scale < 0.0 {
        for v in l.iter_mut() {
            *v = 2 - *v;
        }
        scale = -scale;
        shift = -shift;
    }
    let xx = if shift == 1 { &X_P } else { &X_M };
    let mut index = [0u16; 4];
    let mut all_on_grid = true;
    for k in 0..4 {
        let r = 8 * k..8 * k + 8;
        index[k] = match lat.lookup(&l[r.clone()]) {
            Ok(j) => j as u16,
            Err(cands) => {
                all_on_grid = false;
                let (x8, w8) = (&xb[r.clone()], &weight[r]);
                lat.nearest(cands, |p| {
                    let mut d2 = 0.0f32;
                    for i in 0..8 {
                        let diff = scale * xx[p[i] as usize] - x8[i];
                        d2 += w8[i] * diff * diff;
                    }
                    d2
                }) as u16
            }
        };
    }
    if !all_on_grid {
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for (k, &j) in index.iter().enumerate() {
            for (i, &g) in lat.point(j as usize).iter().enumerate() {
                let (w, q) = (weight[8 * k + i], xx[g as usize]);
                sumqx += w * q * xb[8 * k + i];
                sumq2 += w * q * q;
            }
        }
        if sumqx > 0.0 && sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    Some((scale, shift, index))
}

fn quantize_block(lat: &Lattice, x: &[f32], qw: &[f32], out: &mut BlockIQ1S) {
    *out = bytemuck::Zeroable::zeroed();
    let mut sumx2 = 0.0f32;
    for &v in x {
        sumx2 += v * v;
    }
    let sigma2 = 2.0 * sumx2 / QK_K as f32;
    let mut scales = [0.0f32; QK_K / BS];
    let mut shifts = [1i8; QK_K / BS];
    let mut max_scale = 0.0f32;
    for ib in 0..QK_K / BS {
        let xb = &x[BS * ib..BS * ib + BS];
        let qb = &qw[BS * ib..BS * ib + BS];
        let weight: [f32; BS] = std::array::from_fn(|i| qb[i] * (sigma2 + xb[i] * xb[i]).sqrt());
        let Some((scale, shift, index)) = quantize_group(lat, xb, &weight) else {
            continue;
        };
        let mut h = 0u16;
        for (k, &j) in index.iter().enumerate() {
            out.qs[4 * ib + k] = j as u8;
            h |= (j >> 8) << (3 * k);
        }
        out.qh[ib] = h;
        scales[ib] = scale;
        shifts[ib] = shift;
        max_scale = if max_scale > scale { max_scale } else { scale };
    }
    if max_scale == 0.0 {
        return;
    }
    let d = max_scale / 15.0;
    out.d = f16::from_f32(d * 1.125);
    let id = 1.0 / d;
    for ib in 0..QK_K / BS {
        let mut l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 7) as u16;
        if shifts[ib] == -1 {
            l |= 8;
        }
        out.qh[ib] |= l << 12;
    }
}

/// Quantizes one row (`x.len()` a multiple of 256) to IQ1_S against its
/// importance row `qw` (same length) into `dst` (the row's bytes), as
/// ggml's `quantize_row_iq1_s_impl`.
pub fn quantize_row_iq1_s(x: &[f32], qw: &[f32], dst: &mut [u8]) {
    let lat = iq1s();
    with_blocks_mut::<BlockIQ1S>(dst, |ys| {
        for ((xb, qb), y) in x.chunks_exact(QK_K).zip(qw.chunks_exact(QK_K)).zip(ys) {
            quantize_block(lat, xb, qb, y);
        }
    });
}
