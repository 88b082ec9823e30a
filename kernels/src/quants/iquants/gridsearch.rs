//! The pieces shared by ggml's grid i-quant quantizers (IQ2_XXS, IQ2_XS,
//! IQ3_XXS, IQ3_S): folding signs out of a group, rounding magnitudes to
//! lattice levels, the weighted least-squares fit, and the scale search
//! that snaps every rounding to the grid.
//!
//! The arithmetic follows ggml-quants.c expression for expression (same
//! f32 operations, same order, same tie rules) so the bytes match.

use super::lattice::Lattice;
use crate::quants::kquants::search::nearest_int;

/// Writes `|xb|` to `xval` and returns the sign bits (bit `i` set for a
/// negative `xb[i]`) of 8 values, made even as the 7-bit sign codes of
/// IQ2_XXS / IQ2_XS / IQ3_XXS need: with an odd count, the value that
/// costs least to flip (`w·x²` smallest, first on ties) is flipped, its
/// magnitude stored negated. Returns the low 7 bits.
pub(crate) fn fold_signs_even(xb: &[f32], weight: &[f32], xval: &mut [f32]) -> u8 {
    let mut s = fold_signs(xb, xval);
    if s.count_ones() % 2 == 1 {
        let cost = |i: usize| weight[i] * xb[i] * xb[i];
        let imin = (1..8).fold(0, |m, i| if cost(i) < cost(m) { i } else { m });
        xval[imin] = -xval[imin];
        s ^= 1 << imin;
    }
    s & 127
}

/// Writes `|xb|` to `xval` for 8 values; returns their 8 sign bits.
pub(crate) fn fold_signs(xb: &[f32], xval: &mut [f32]) -> u8 {
    let mut s = 0u8;
    for i in 0..8 {
        if xb[i] >= 0.0 {
            xval[i] = xb[i];
        } else {
            xval[i] = -xb[i];
            s |= 1 << i;
        }
    }
    s
}

/// ggml's `MAX(a, b)` fold: the largest of `v` (the first on ties; a NaN
/// never replaces the running maximum but a NaN start stays).
pub(crate) fn max_of(v: &[f32]) -> f32 {
    v.iter()
        .skip(1)
        .fold(v[0], |m, &x| if m > x { m } else { x })
}

/// Levels `clamp(round((id·x − 1)/2), 0, kmax − 1)` of magnitudes `xval`.
#[inline]
pub(crate) fn round_levels(id: f32, kmax: i32, xval: &[f32], l: &mut [i8]) {
    for (v, &x) in l.iter_mut().zip(xval) {
        *v = nearest_int(0.5 * (id * x - 1.0)).clamp(0, kmax - 1) as i8;
    }
}

/// Weighted sums `Σ w·x·q` and `Σ w·q²` with `q = 2l + 1`.
#[inline]
pub(crate) fn fit(xval: &[f32], weight: &[f32], l: &[i8]) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for ((&x, &w), &li) in xval.iter().zip(weight).zip(l) {
        let q = (2 * li as i32 + 1) as f32;
        sumqx += w * x * q;
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

/// The scale search of one group, as in ggml's `quantize_row_iq2_xs_impl`,
/// `quantize_row_iq3_xxs_impl` and `quantize_row_iq3_s_impl`.
pub(crate) struct Search {
    /// Levels per coordinate (`kMaxQ`): magnitudes `1, 3, .., 2·kmax − 1`.
    pub kmax: i32,
    /// Inverse scales `(2·kmax − 1 + is·step) / max` for `is` in
    /// `−steps..=steps`.
    pub steps: i32,
    pub step: f32,
    /// Whether sub-groups count as on the grid before any candidate is
    /// accepted (IQ3_S starts them off the grid).
    pub on_grid_init: bool,
    /// Whether the final refit re-rounds every sub-group (IQ3_S) or only
    /// those that had to be snapped to a neighbour.
    pub refit_all: bool,
}

impl Search {
    /// Finds the group's scale and its grid levels `l` (every sub-group of
    /// `lat.dim()` on the grid). `max` is the largest magnitude (> 0).
    pub(crate) fn run(
        &self,
        lat: &Lattice,
        xval: &[f32],
        weight: &[f32],
        waux: &[f32],
        max: f32,
        l: &mut [i8],
    ) -> f32 {
        let n = xval.len();
        let dim = lat.dim();
        let groups = n / dim;
        let top = (2 * self.kmax - 1) as f32;
        let mut laux = [0i8; 32];
        let mut on_grid = [self.on_grid_init; 8];
        let mut on_grid_aux = [true; 8];
        let mut best = 0.0f32;
        let mut scale = max / top;
        l[..n].fill(0);
        for is in -self.steps..=self.steps {
            let id = (top + is as f32 * self.step) / max;
            let this_scale = 1.0 / id;
            for k in 0..groups {
                let r = dim * k..dim * k + dim;
                round_levels(id, self.kmax, &xval[r.clone()], &mut laux[r.clone()]);
                on_grid_aux[k] = lat
                    .snap(&mut laux[r.clone()], &xval[r.clone()], &waux[r], this_scale)
                    .1;
            }
            let (sumqx, sumq2) = fit(xval, weight, &laux[..n]);
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                scale = sumqx / sumq2;
                best = scale * sumqx;
                l[..n].copy_from_slice(&laux[..n]);
                on_grid[..groups].copy_from_slice(&on_grid_aux[..groups]);
            }
        }
        if on_grid[..groups].iter().any(|&g| !g) && scale > 0.0 {
            let id = 1.0 / scale;
            for k in 0..groups {
                if on_grid[k] && !self.refit_all {
                    continue;
                }
                let r = dim * k..dim * k + dim;
                round_levels(id, self.kmax, &xval[r.clone()], &mut l[r.clone()]);
                lat.snap(&mut l[r.clone()], &xval[r.clone()], &waux[r], scale);
            }
            let (sumqx, sumq2) = fit(xval, weight, &l[..n]);
            if sumq2 > 0.0 {
                scale = sumqx / sumq2;
            }
        }
        scale
    }
}
