//! The scale searches behind ggml's K-quant quantizers.
//!
//! Each routine picks the scale (and, for the affine formats, the min) of
//! one small group of weights and writes the group's integer levels. They
//! follow ggml-quants.c operation for operation — the same f32 expressions
//! evaluated in the same order, the same tie rules — so that the bytes we
//! write are the bytes `llama-quantize` writes. Rust never fuses `a*b + c`
//! into an FMA, which is what makes that possible.

use super::step_batch::{self, LANES};

/// Groups whose largest magnitude is below this are stored as all zero.
pub const GROUP_MAX_EPS: f32 = 1e-15;

/// Round to nearest, ties to even, for `|v| < 2^22` (ggml's `nearest_int`:
/// adding 1.5·2^23 leaves the rounded integer in the low mantissa bits).
#[inline]
pub fn nearest_int(v: f32) -> i32 {
    let bits = (v + 12_582_912.0f32).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// Symmetric search for signed levels in `[−nmax, nmax − 1]`, weighted by
/// `qw` (or by `x²` when `None`); `l_out` receives `level + nmax`. ggml's
/// `make_qx_quants` with `rmse_type = 1`, the only variant the K-quants use.
pub fn make_qx_quants(nmax: i32, x: &[f32], l_out: &mut [i8], qw: Option<&[f32]>) -> f32 {
    let n = x.len();
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let mut wx2 = [0f32; 32];
    let owned: Vec<f32>;
    let w: &[f32] = match qw {
        Some(w) => &w[..n],
        None if n <= wx2.len() => {
            for (v, &xi) in wx2.iter_mut().zip(x) {
                *v = xi * xi;
            }
            &wx2[..n]
        }
        None => {
            owned = x.iter().map(|&xi| xi * xi).collect();
            &owned
        }
    };
    // Step 0 is ggml's first guess `−nmax/max`, steps 1.. are `is` =
    // −9..−1, 1..9; all sums are independent of the choices, so they are
    // computed 8 at a time and compared in ggml's order.
    let step_is = |s: usize| if s <= 9 { s as i32 - 10 } else { s as i32 - 9 };
    let iscale_of = |s: usize| {
        if s == 0 {
            -(nmax as f32) / max
        } else {
            -(nmax as f32 + 0.1f32 * step_is(s) as f32) / max
        }
    };
    let mut sums = [(0f32, 0f32); 24];
    for first in (0..19).step_by(LANES) {
        let iscales: [f32; LANES] = std::array::from_fn(|k| iscale_of(first + k));
        let batch = step_batch::qx_sums(nmax, x, w, &iscales);
        sums[first..first + LANES].copy_from_slice(&batch);
    }
    let (sumlx, suml2) = sums[0];
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    let mut chosen = 0;
    for (s, &(sumlx, suml2)) in sums.iter().enumerate().take(19).skip(1) {
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            scale = sumlx / suml2;
            best = scale * sumlx;
            chosen = s;
        }
    }
    let iscale = iscale_of(chosen);
    for i in 0..n {
        l_out[i] = (nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1) + nmax) as i8;
    }
    scale
}

/// Q3_K's symmetric search with `x²` weights and coordinate-descent
/// refinement (ggml's `make_q3_quants` with `do_rmse`); levels are written
/// as `level + nmax`.
pub fn make_q3_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let n = x.len();
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = l as i8;
        let w = x[i] * x[i];
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for i in 0..n {
            let w = x[i] * x[i];
            let li = l_out[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != l_out[i] as i32 {
                    let nl = new_l as f32;
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as i8;
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
    for l in l_out[..n].iter_mut() {
        *l += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Parameters of the affine (scale + min) search.
#[derive(Clone, Copy)]
pub struct AffineSearch {
    pub nmax: i32,
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
    /// Minimise the weighted absolute error instead of the squared one.
    pub use_mad: bool,
}

/// Affine search for levels in `[0, nmax]`: returns `(scale, min)` with the
/// group reconstructed as `scale·l − min` (`min ≥ 0`). ggml's
/// `make_qkx2_quants` / `make_qkx3_quants` (identical once weights are
/// given).
pub fn make_qkx_quants(p: AffineSearch, x: &[f32], w: &[f32], l_out: &mut [u8]) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    let nmax = p.nmax;
    let err = |d: f32| if p.use_mad { d.abs() } else { d * d };
    let iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += w[i] * err(diff);
    }
    if p.nstep < 1 {
        return (scale, -min);
    }
    // Each step uses the min of the last accepted step, so steps are
    // evaluated `LANES` at a time with the current min (each lane doing
    // one step's operations in ggml's order), compared in step order, and
    // after an accepted step the batch restarts from the next step with
    // the new min.
    let mut accepted = None;
    let mut step = 0usize;
    let nsteps = p.nstep as usize + 1;
    while step < nsteps {
        let range = max - min;
        let iscales: [f32; LANES] =
            std::array::from_fn(|k| (p.rmin + p.rdelta * (step + k) as f32 + nmax as f32) / range);
        let fits = step_batch::steps(p, x, w, min, (sum_w, sum_x), &iscales);
        let mut next = step + LANES;
        for (k, fit) in fits.iter().enumerate() {
            if step + k >= nsteps {
                break;
            }
            if fit.regular && fit.error < best_error {
                best_error = fit.error;
                scale = fit.scale;
                accepted = Some((iscales[k], min));
                min = fit.min;
                next = step + k + 1;
                break;
            }
        }
        step = next;
    }
    if let Some((iscale, min_used)) = accepted {
        for i in 0..n {
            l_out[i] = nearest_int(iscale * (x[i] - min_used)).clamp(0, nmax) as u8;
        }
    }
    (scale, -min)
}

/// Quantizes non-negative sub-block scales (or mins) to `[0, nmax]` against
/// importance `qw`, returning the super-block scale (ggml's `make_qp_quants`).
pub fn make_qp_quants(nmax: i32, x: &[f32], l_out: &mut [u8], qw: &[f32]) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    for &v in x {
        max = if max > v { max } else { v };
    }
    if max < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    for i in 0..n {
        l_out[i] = nearest_int(iscale * x[i]) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for i in 0..n {
        let diff = x[i] - scale * l_out[i] as f32;
        best_mse += qw[i] * diff * diff;
    }
    for is in -4..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1f32 * is as f32 + nmax as f32) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for i in 0..n {
            let l = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * l as f32;
            mse += qw[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).min(nmax);
        l_out[i] = l as u8;
        let lf = l as f32;
        sumlx += qw[i] * x[i] * lf;
        suml2 += qw[i] * lf * lf;
    }
    for _ in 0..5 {
        let mut changed = false;
        for i in 0..n {
            let w = qw[i];
            let li = l_out[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != l_out[i] as i32 {
                    let nl = new_l as f32;
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as u8;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(-2.6), -3);
        assert_eq!(nearest_int(126.9), 127);
    }
}
