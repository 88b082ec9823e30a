//! IQ2_XS quantization with an importance matrix, as ggml's
//! `quantize_iq2_xs` (which requires one).
//!
//! Per 16 weights: fold the signs out (an even number of negatives, 7 bits
//! stored per 8), search 19 scales around `max/5` fitting the magnitudes to
//! the 512-point grid in `{1, 3, 5}^8`, refit the groups that had to snap
//! to a neighbour, then code each group's scale in 4 bits against the
//! super-block's f16 scale `max/31`.

use half::f16;

use super::gridsearch::{fold_signs_even, max_of, Search};
use super::lattice::{iq2xs, Lattice};
use super::{with_blocks_mut, BlockIQ2XS, QK_K};
use crate::quants::kquants::search::{nearest_int, GROUP_MAX_EPS};

const SEARCH: Search = Search {
    kmax: 3,
    steps: 9,
    step: 0.1,
    on_grid_init: true,
    refit_all: false,
};

fn quantize_block(lat: &Lattice, x: &[f32], qw: &[f32], out: &mut BlockIQ2XS) {
    let mut sumx2 = 0.0f32;
    for &v in x {
        sumx2 += v * v;
    }
    let sigma2 = sumx2 / QK_K as f32;
    let mut q2 = [0u16; QK_K / 8];
    let mut scales = [0.0f32; QK_K / 16];
    let mut max_scale = 0.0f32;
    for ib in 0..QK_K / 16 {
        let xb = &x[16 * ib..16 * ib + 16];
        let qb = &qw[16 * ib..16 * ib + 16];
        let weight: [f32; 16] = std::array::from_fn(|i| qb[i] * (sigma2 + xb[i] * xb[i]).sqrt());
        let waux: [f32; 16] = std::array::from_fn(|i| weight[i].sqrt());
        let mut xval = [0.0f32; 16];
        let mut signs = [0u8; 2];
        for k in 0..2 {
            let r = 8 * k..8 * k + 8;
            signs[k] = fold_signs_even(&xb[r.clone()], &weight[r.clone()], &mut xval[r]);
        }
        let max = max_of(&xval);
        if max < GROUP_MAX_EPS {
            continue;
        }
        let mut l = [0i8; 16];
        let mut scale = SEARCH.run(lat, &xval, &weight, &waux, max, &mut l);
        if scale < 0.0 {
            scale = -scale;
            for s in signs.iter_mut() {
                *s = !*s & 127;
            }
        }
        for k in 0..2 {
            // The search leaves every group on the grid.
            let j = lat.lookup(&l[8 * k..8 * k + 8]).unwrap_or(0);
            q2[2 * ib + k] = j as u16 | (signs[k] as u16) << 9;
        }
        scales[ib] = scale;
        max_scale = if max_scale > scale { max_scale } else { scale };
    }
    *out = BlockIQ2XS {
        d: f16::ZERO,
        qs: [0; QK_K / 8],
        scales: [0; QK_K / 32],
    };
    if max_scale == 0.0 {
        return;
    }
    let d = max_scale / 31.0;
    out.d = f16::from_f32(d);
    let id = 1.0 / d;
    for (ib, &s) in scales.iter().enumerate() {
        let l = nearest_int(0.5 * (id * s - 1.0)).clamp(0, 15) as u8;
        out.scales[ib / 2] |= l << (4 * (ib % 2));
    }
    out.qs = q2;
}

/// Quantizes one row (`x.len()` a multiple of 256) to IQ2_XS against its
/// importance row `qw` (same length) into `dst` (the row's bytes), as
/// ggml's `quantize_row_iq2_xs_impl`.
pub fn quantize_row_iq2_xs(x: &[f32], qw: &[f32], dst: &mut [u8]) {
    let lat = iq2xs();
    with_blocks_mut::<BlockIQ2XS>(dst, |ys| {
        for ((xb, qb), y) in x.chunks_exact(QK_K).zip(qw.chunks_exact(QK_K)).zip(ys) {
            quantize_block(lat, xb, qb, y);
        }
    });
}
