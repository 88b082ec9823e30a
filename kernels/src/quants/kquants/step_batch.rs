//! Eight steps of the scale searches at once: the inner loops of ggml's
//! `make_qkx2_quants` / `make_qkx3_quants` (affine: scale and min), which
//! dominate the time of the K-quant, Q4_1 and Q5_1 quantizers, and of
//! `make_qx_quants` (symmetric), behind Q3_K, Q6_K, Q4_0 and Q5_0.
//!
//! Lane `k` evaluates one step with inverse scale `iscales[k]`: it rounds
//! every value to a level and accumulates the step's weighted sums (for
//! the affine search also solving for scale and min and summing the
//! weighted error of that fit) with exactly the f32 operations, in exactly
//! the order, ggml uses for one step (no FMA), so every lane's result is
//! bit-identical to the scalar loop. The scalar references
//! ([`steps_scalar`], [`qx_sums_scalar`]) and the AVX2 versions are checked
//! against each other.

use super::search::{nearest_int, AffineSearch};

/// Steps evaluated together.
pub const LANES: usize = 8;

/// One step's outcome: whether the normal equations were regular
/// (`det > 0`), the fitted scale and min (a positive min clipped to 0 with
/// the scale refitted), and the weighted error of that fit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepFit {
    pub regular: bool,
    pub scale: f32,
    pub min: f32,
    pub error: f32,
}

/// The fit of the step sums of one lane.
#[inline]
fn solve(sum_w: f32, sum_x: f32, sum_l: f32, sum_l2: f32, sum_xl: f32) -> (bool, f32, f32) {
    let det = sum_w * sum_l2 - sum_l * sum_l;
    let mut scale = (sum_w * sum_xl - sum_x * sum_l) / det;
    let mut min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
    if min > 0.0 {
        min = 0.0;
        scale = sum_xl / sum_l2;
    }
    (det > 0.0, scale, min)
}

/// The plain per-step loops (the reference, and the path without AVX2).
/// `min` is the current (non-positive) group minimum; `sum_w`, `sum_x` the
/// weight and weighted-value sums of the group.
pub fn steps_scalar(
    p: AffineSearch,
    x: &[f32],
    w: &[f32],
    min: f32,
    sums: (f32, f32),
    iscales: &[f32; LANES],
) -> [StepFit; LANES] {
    std::array::from_fn(|k| {
        let level = |v: f32| nearest_int(iscales[k] * (v - min)).clamp(0, p.nmax) as f32;
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for (&xi, &wi) in x.iter().zip(w) {
            let l = level(xi);
            sum_l += wi * l;
            sum_l2 += wi * l * l;
            sum_xl += wi * l * xi;
        }
        let (regular, scale, this_min) = solve(sums.0, sums.1, sum_l, sum_l2, sum_xl);
        let mut error = 0f32;
        for (&xi, &wi) in x.iter().zip(w) {
            let diff = scale * level(xi) + this_min - xi;
            error += wi * if p.use_mad { diff.abs() } else { diff * diff };
        }
        StepFit {
            regular,
            scale,
            min: this_min,
            error,
        }
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn steps_avx2(
    p: AffineSearch,
    x: &[f32],
    w: &[f32],
    min: f32,
    sums: (f32, f32),
    iscales: &[f32; LANES],
) -> [StepFit; LANES] {
    use std::arch::x86_64::*;
    let isc = load8(iscales);
    let levels = |d: __m256| levels_avx2(isc, d, p.nmax);
    let (mut sl, mut sl2, mut sxl) = (
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
    );
    for (&xi, &wi) in x.iter().zip(w) {
        let l = levels(_mm256_set1_ps(xi - min));
        let wl = _mm256_mul_ps(_mm256_set1_ps(wi), l);
        sl = _mm256_add_ps(sl, wl);
        sl2 = _mm256_add_ps(sl2, _mm256_mul_ps(wl, l));
        sxl = _mm256_add_ps(sxl, _mm256_mul_ps(wl, _mm256_set1_ps(xi)));
    }
    let (a_l, a_l2, a_xl) = (store8(sl), store8(sl2), store8(sxl));
    let mut fits = [StepFit {
        regular: false,
        scale: 0.0,
        min: 0.0,
        error: 0.0,
    }; LANES];
    let (mut a_scale, mut a_min) = ([0f32; LANES], [0f32; LANES]);
    for k in 0..LANES {
        let (regular, scale, m) = solve(sums.0, sums.1, a_l[k], a_l2[k], a_xl[k]);
        fits[k].regular = regular;
        (a_scale[k], a_min[k]) = (scale, m);
    }
    let (vs, vm) = (load8(&a_scale), load8(&a_min));
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let mut err = _mm256_setzero_ps();
    for (&xi, &wi) in x.iter().zip(w) {
        let l = levels(_mm256_set1_ps(xi - min));
        let diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(vs, l), vm), _mm256_set1_ps(xi));
        let e = if p.use_mad {
            _mm256_and_ps(diff, abs_mask)
        } else {
            _mm256_mul_ps(diff, diff)
        };
        err = _mm256_add_ps(err, _mm256_mul_ps(_mm256_set1_ps(wi), e));
    }
    let a_err = store8(err);
    for k in 0..LANES {
        fits[k].scale = a_scale[k];
        fits[k].min = a_min[k];
        fits[k].error = a_err[k];
    }
    fits
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
fn load8(a: &[f32; LANES]) -> std::arch::x86_64::__m256 {
    // SAFETY: `a` is 8 readable f32; the load is unaligned.
    unsafe { std::arch::x86_64::_mm256_loadu_ps(a.as_ptr()) }
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
fn store8(v: std::arch::x86_64::__m256) -> [f32; LANES] {
    let mut a = [0f32; LANES];
    // SAFETY: `a` is 8 writable f32; the store is unaligned.
    unsafe { std::arch::x86_64::_mm256_storeu_ps(a.as_mut_ptr(), v) };
    a
}

/// `nearest_int(iscale·d)` clamped to `[0, nmax]`, as f32, per lane.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
fn levels_avx2(
    iscale: std::arch::x86_64::__m256,
    d: std::arch::x86_64::__m256,
    nmax: i32,
) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let v = _mm256_add_ps(_mm256_mul_ps(iscale, d), _mm256_set1_ps(12_582_912.0));
    let bits = _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x007f_ffff));
    let i = _mm256_sub_epi32(bits, _mm256_set1_epi32(0x0040_0000));
    let clamped = _mm256_min_epi32(
        _mm256_max_epi32(i, _mm256_setzero_si256()),
        _mm256_set1_epi32(nmax),
    );
    _mm256_cvtepi32_ps(clamped)
}

/// [`steps_scalar`], with AVX2 where the CPU has it (bit-identical).
pub fn steps(
    p: AffineSearch,
    x: &[f32],
    w: &[f32],
    min: f32,
    sums: (f32, f32),
    iscales: &[f32; LANES],
) -> [StepFit; LANES] {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2.
        return unsafe { steps_avx2(p, x, w, min, sums, iscales) };
    }
    steps_scalar(p, x, w, min, sums, iscales)
}

/// The symmetric search's sums `(Σ w·x·l, Σ w·l²)` per lane, with levels
/// `clamp(nearest_int(iscale·x), −nmax, nmax − 1)` (scalar reference).
pub fn qx_sums_scalar(
    nmax: i32,
    x: &[f32],
    w: &[f32],
    iscales: &[f32; LANES],
) -> [(f32, f32); LANES] {
    std::array::from_fn(|k| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for (&xi, &wi) in x.iter().zip(w) {
            let l = nearest_int(iscales[k] * xi).clamp(-nmax, nmax - 1) as f32;
            sumlx += wi * xi * l;
            suml2 += wi * l * l;
        }
        (sumlx, suml2)
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn qx_sums_avx2(nmax: i32, x: &[f32], w: &[f32], iscales: &[f32; LANES]) -> [(f32, f32); LANES] {
    use std::arch::x86_64::*;
    let isc = load8(iscales);
    let (lo, hi) = (_mm256_set1_epi32(-nmax), _mm256_set1_epi32(nmax - 1));
    let magic = _mm256_set1_ps(12_582_912.0);
    let (mant, half) = (
        _mm256_set1_epi32(0x007f_ffff),
        _mm256_set1_epi32(0x0040_0000),
    );
    let (mut slx, mut sl2) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for (&xi, &wi) in x.iter().zip(w) {
        let v = _mm256_add_ps(_mm256_mul_ps(isc, _mm256_set1_ps(xi)), magic);
        let i = _mm256_sub_epi32(_mm256_and_si256(_mm256_castps_si256(v), mant), half);
        let l = _mm256_cvtepi32_ps(_mm256_min_epi32(_mm256_max_epi32(i, lo), hi));
        let wv = _mm256_set1_ps(wi);
        slx = _mm256_add_ps(slx, _mm256_mul_ps(_mm256_set1_ps(wi * xi), l));
        sl2 = _mm256_add_ps(sl2, _mm256_mul_ps(_mm256_mul_ps(wv, l), l));
    }
    let (a, b) = (store8(slx), store8(sl2));
    std::array::from_fn(|k| (a[k], b[k]))
}

/// [`qx_sums_scalar`], with AVX2 where the CPU has it (bit-identical).
pub fn qx_sums(nmax: i32, x: &[f32], w: &[f32], iscales: &[f32; LANES]) -> [(f32, f32); LANES] {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2.
        return unsafe { qx_sums_avx2(nmax, x, w, iscales) };
    }
    qx_sums_scalar(nmax, x, w, iscales)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX2.get_or_init(|| std::arch::is_x86_feature_detected!("avx2"))
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The AVX2 lanes equal the scalar steps bit for bit, for squared and
    /// absolute errors and the symmetric sums, on groups of 16 and 32 with
    /// mixed signs.
    #[test]
    fn avx2_matches_scalar() {
        if !has_avx2() {
            return;
        }
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        };
        for trial in 0..200 {
            let n = if trial % 2 == 0 { 32 } else { 16 };
            let x: Vec<f32> = (0..n).map(|_| next() - 0.3).collect();
            let w: Vec<f32> = (0..n).map(|_| next() * next()).collect();
            let min = x.iter().fold(0f32, |m, &v| m.min(v));
            let max = x.iter().fold(f32::MIN, |m, &v| m.max(v));
            let mut sums = (0f32, 0f32);
            for (&xi, &wi) in x.iter().zip(&w) {
                sums.0 += wi;
                sums.1 += wi * xi;
            }
            let p = AffineSearch {
                nmax: if trial % 3 == 0 { 3 } else { 15 },
                rmin: -0.9,
                rdelta: 0.05,
                nstep: 36,
                use_mad: trial % 5 == 0,
            };
            let iscales: [f32; LANES] = std::array::from_fn(|k| {
                (p.rmin + p.rdelta * (k + trial % 29) as f32 + p.nmax as f32) / (max - min)
            });
            let a = steps_scalar(p, &x, &w, min, sums, &iscales);
            // SAFETY: checked above.
            let b = unsafe { steps_avx2(p, &x, &w, min, sums, &iscales) };
            // The symmetric search uses negative inverse scales.
            let neg = iscales.map(|v| -v);
            let qa = qx_sums_scalar(p.nmax, &x, &w, &neg);
            // SAFETY: checked above.
            let qb = unsafe { qx_sums_avx2(p.nmax, &x, &w, &neg) };
            for k in 0..LANES {
                assert_eq!(
                    qa[k].0.to_bits(),
                    qb[k].0.to_bits(),
                    "qx trial {trial} lane {k}"
                );
                assert_eq!(
                    qa[k].1.to_bits(),
                    qb[k].1.to_bits(),
                    "qx trial {trial} lane {k}"
                );
                assert_eq!(a[k].regular, b[k].regular, "trial {trial} lane {k}");
                assert_eq!(
                    a[k].scale.to_bits(),
                    b[k].scale.to_bits(),
                    "trial {trial} lane {k}"
                );
                assert_eq!(
                    a[k].min.to_bits(),
                    b[k].min.to_bits(),
                    "trial {trial} lane {k}"
                );
                assert_eq!(
                    a[k].error.to_bits(),
                    b[k].error.to_bits(),
                    "trial {trial} lane {k}"
                );
            }
        }
    }
}
