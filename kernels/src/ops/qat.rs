//! Quantization-aware simulation of activations: the normalised
//! Walsh–Hadamard rotation and the MX FP4 (e2m1, one power-of-two E8M0
//! scale per block) quantize→dequantize round trip.
//!
//! DeepSeek V4's lightning indexer rotates its query and compressed keys
//! with a Hadamard matrix and rounds them to FP4 before scoring (its
//! inference code, `rotate_activation` + `fp4_act_quant`); a model that
//! follows that definition runs these two steps on f32 values.

/// The largest magnitude e2m1 represents.
pub const E2M1_MAX: f32 = 6.0;

/// `x ← H·x / sqrt(n)` with `H` Sylvester's Hadamard matrix of order
/// `n = x.len()` (a power of two; other lengths are left unchanged and
/// `false` is returned). Orthonormal: dot products are preserved.
pub fn hadamard_normalized(x: &mut [f32]) -> bool {
    let n = x.len();
    if !n.is_power_of_two() {
        return false;
    }
    let mut h = 1;
    while h < n {
        for block in x.chunks_exact_mut(2 * h) {
            let (lo, hi) = block.split_at_mut(h);
            for (a, b) in lo.iter_mut().zip(hi.iter_mut()) {
                let (u, v) = (*a, *b);
                *a = u + v;
                *b = u - v;
            }
        }
        h *= 2;
    }
    let s = 1.0 / (n as f32).sqrt();
    x.iter_mut().for_each(|v| *v *= s);
    true
}

/// The nearest e2m1 magnitude to `a` (`0 ≤ a ≤ 6`), ties to the even code:
/// the values are {0, 0.5, 1, 1.5, 2, 3, 4, 6} (codes 0..7).
#[inline]
pub fn e2m1_round(a: f32) -> f32 {
    if a <= 0.25 {
        0.0
    } else if a < 0.75 {
        0.5
    } else if a <= 1.25 {
        1.0
    } else if a < 1.75 {
        1.5
    } else if a <= 2.5 {
        2.0
    } else if a < 3.5 {
        3.0
    } else if a <= 5.0 {
        4.0
    } else {
        6.0
    }
}

/// The E8M0 scale of a block whose largest magnitude is `amax`: the
/// smallest power of two `s` with `amax / s ≤ 6` (`amax` is floored at
/// `6·2^-126`, so `s ≥ 2^-126`), at most `2^127`.
#[inline]
pub fn e8m0_scale(amax: f32) -> f32 {
    let r = amax.max(E2M1_MAX * f32::MIN_POSITIVE) / E2M1_MAX;
    if !r.is_finite() {
        return f32::from_bits(254 << 23);
    }
    let bits = r.to_bits();
    let exp = ((bits >> 23) & 0xff) as i32;
    // r = 1.m · 2^(exp-127): a power of two is its own ceiling.
    let e = if bits & 0x7f_ffff == 0 { exp } else { exp + 1 };
    f32::from_bits((e.clamp(1, 254) as u32) << 23)
}

/// Rounds every block of `block` values of `x` to MX FP4 and back in
/// place: scale by [`e8m0_scale`] of the block's largest magnitude, clamp
/// to ±6, round to the nearest e2m1 value ([`e2m1_round`]), scale back.
/// A trailing partial block is treated as a block of its own.
pub fn fp4_roundtrip(x: &mut [f32], block: usize) {
    for b in x.chunks_mut(block.max(1)) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = e8m0_scale(amax);
        for v in b.iter_mut() {
            let q = (*v / s).clamp(-E2M1_MAX, E2M1_MAX);
            let r = e2m1_round(q.abs());
            *v = if q < 0.0 { -r * s } else { r * s };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hadamard_matches_the_matrix_and_is_orthonormal() {
        // Sylvester H4 = [[1,1,1,1],[1,-1,1,-1],[1,1,-1,-1],[1,-1,-1,1]] / 2.
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        assert!(hadamard_normalized(&mut x));
        assert_eq!(x, [5.0, -1.0, -2.0, 0.0]);
        let orig: Vec<f32> = (0..64).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
        let mut y = orig.clone();
        hadamard_normalized(&mut y);
        let n0: f32 = orig.iter().map(|v| v * v).sum();
        let n1: f32 = y.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-3 * n0);
        // Applying it twice is the identity.
        hadamard_normalized(&mut y);
        for (a, b) in y.iter().zip(&orig) {
            assert!((a - b).abs() < 1e-5);
        }
        assert!(!hadamard_normalized(&mut [1.0, 2.0, 3.0]));
    }

    #[test]
    fn e2m1_ties_go_to_the_even_code() {
        let cases = [
            (0.25, 0.0),
            (0.26, 0.5),
            (0.75, 1.0),
            (1.25, 1.0),
            (1.75, 2.0),
            (2.5, 2.0),
            (3.5, 4.0),
            (5.0, 4.0),
            (5.01, 6.0),
            (6.0, 6.0),
        ];
        for (a, want) in cases {
            assert_eq!(e2m1_round(a), want, "{a}");
        }
    }

    #[test]
    fn scale_is_the_power_of_two_ceiling() {
        assert_eq!(e8m0_scale(6.0), 1.0);
        assert_eq!(e8m0_scale(6.000001), 2.0);
        assert_eq!(e8m0_scale(3.0), 0.5);
        assert_eq!(e8m0_scale(2.9), 0.5);
        assert_eq!(e8m0_scale(0.0), f32::MIN_POSITIVE);
    }

    #[test]
    fn fp4_roundtrip_of_a_block() {
        // amax 12 → scale 2: values become 2·e2m1(x/2).
        let mut x = vec![12.0, -5.0, 1.1, 0.4, -0.6, 7.0];
        x.resize(32, 0.0);
        fp4_roundtrip(&mut x, 32);
        assert_eq!(&x[..6], &[12.0, -4.0, 1.0, 0.0, -1.0, 8.0]);
        // Values already on the grid come back unchanged.
        let g: Vec<f32> = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, -6.0]
            .iter()
            .cycle()
            .take(64)
            .copied()
            .collect();
        let mut h = g.clone();
        fp4_roundtrip(&mut h, 32);
        assert_eq!(h, g);
    }
}
