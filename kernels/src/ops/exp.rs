//! ggml's exponential and what is built on it: softmax and SiLU/SwiGLU,
//! bit for bit as ggml's AVX-512 CPU kernels compute them.

/// `e^x` by the polynomial ggml's AVX-512 kernels evaluate (softmax and
/// SiLU go through it), bit for bit: round `x·log2(e)` to an integer `n`,
/// reduce, a degree-5 polynomial, then scale by `2^n`. Its result can differ
/// from a correctly rounded `exp` in the last bit, and an 8-bit activation
/// rounding downstream can turn that bit into a visible logit difference.
#[inline]
pub fn expf(x: f32) -> f32 {
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), r); // log2(e)
    let n = z - r;
    let b = (-n).mul_add(
        f32::from_bits(0x35bf_be8e),                  // 0x1.7f7d1cp-20
        (-n).mul_add(f32::from_bits(0x3f31_7200), x), // 0x1.62e4p-1
    );
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    if n.is_nan() {
        return f32::NAN;
    }
    let u = b * b;
    let c1 = f32::from_bits(0x3c07_2010); // 0x1.0e4020p-7
    let c2 = f32::from_bits(0x3d2b_9f17); // 0x1.573e2ep-5
    let c3 = f32::from_bits(0x3e2a_af33); // 0x1.555e66p-3
    let c4 = f32::from_bits(0x3eff_fedb); // 0x1.fffdb6p-2
    let c5 = f32::from_bits(0x3f7f_fff6); // 0x1.ffffecp-1
    let j = c1
        .mul_add(b, c2)
        .mul_add(u, c3.mul_add(b, c4))
        .mul_add(u, c5.mul_add(b, 1.0));
    // scalef: j · 2^n with one rounding (f64 holds the product exactly).
    // |n| <= 192 here, so 2^n is a normal f64 built from its exponent bits
    // (`powi` gave the same value through a libm call per element).
    let scale = f64::from_bits(((n as i64 + 1023) as u64) << 52);
    (j as f64 * scale) as f32
}

/// The horizontal sum of 16 lanes in the order AVX-512's `reduce_add`
/// uses (halves, then quarters, then pairs).
#[inline]
pub(crate) fn reduce16(v: &[f32; 16]) -> f32 {
    let mut t = [0f32; 8];
    for i in 0..8 {
        t[i] = v[8 + i] + v[i];
    }
    let u = [t[4] + t[0], t[5] + t[1], t[6] + t[2], t[7] + t[3]];
    (u[0] + u[2]) + (u[1] + u[3])
}

/// In-place softmax; masked entries are `-inf`. Exponentials go through
/// [`expf`] and are summed in groups of 16 as ggml's CPU softmax does, so
/// the result matches it to the bit when rows are laid out alike.
pub fn softmax(x: &mut [f32]) {
    softmax_aligned(x, 0)
}

/// [`softmax`] of a row whose first element sits at column `offset` of a
/// longer row that ggml would process (masked columns count as zeros), so
/// that the groups of 16 line up with ggml's.
pub fn softmax_aligned(x: &mut [f32], offset: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if fma_available() {
            // SAFETY: FMA was detected at run time.
            unsafe { softmax_fma(x, offset) };
            return;
        }
    }
    softmax_portable(x, offset)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn softmax_fma(x: &mut [f32], offset: usize) {
    softmax_portable(x, offset)
}

#[inline(always)]
fn softmax_portable(x: &mut [f32], offset: usize) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        x.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    let mut sum = 0f64;
    let mut lanes = [0f32; 16];
    let mut lane = offset % 16;
    for v in x.iter_mut() {
        let e = expf(*v - max);
        *v = e;
        lanes[lane] = e;
        lane += 1;
        if lane == 16 {
            sum += reduce16(&lanes) as f64;
            lanes = [0.0; 16];
            lane = 0;
        }
    }
    if lane > 0 {
        sum += reduce16(&lanes) as f64;
    }
    let inv = (1.0 / sum) as f32;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// SiLU: `x * sigmoid(x)`, as `x / (1 + e^-x)` with ggml's [`expf`].
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + expf(-x))
}

/// `gate[i] = silu(gate[i]) * up[i]` (SwiGLU).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if fma_available() {
            // SAFETY: FMA was detected at run time.
            unsafe { swiglu_fma(gate, up) };
            return;
        }
    }
    swiglu_portable(gate, up)
}

#[inline(always)]
fn swiglu_portable(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

/// The same loop compiled with FMA, so `mul_add` is one instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn swiglu_fma(gate: &mut [f32], up: &[f32]) {
    swiglu_portable(gate, up)
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn fma_available() -> bool {
    use std::sync::OnceLock;
    static FMA: OnceLock<bool> = OnceLock::new();
    *FMA.get_or_init(|| std::arch::is_x86_feature_detected!("fma"))
}

#[cfg(test)]
mod tests {
    use super::expf;

    /// The scale `expf` builds from exponent bits is `powi`'s for every
    /// exponent it can reach, so the result did not change by a bit.
    #[test]
    fn exponent_bits_scale_as_powi_did() {
        for n in -192i32..=192 {
            let bits = f64::from_bits(((n as i64 + 1023) as u64) << 52);
            assert_eq!(bits, 2f64.powi(n), "2^{n}");
        }
        assert_eq!(expf(0.0), 1.0);
        assert!((expf(1.0) - std::f32::consts::E).abs() < 1e-6);
        assert!((expf(-20.0) / (-20f32).exp() - 1.0).abs() < 1e-6);
        assert_eq!(expf(-1000.0), 0.0);
        assert_eq!(expf(1000.0), f32::INFINITY);
        assert!(expf(f32::NAN).is_nan());
    }
}
