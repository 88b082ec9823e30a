//! The float summation order ggml's x86 K-quant dot products use, shared by
//! the scalar references so that every SIMD level gives the same bits.
//!
//! ggml keeps a super-block's integer partial sums in eight i32 lanes: lane
//! `l` holds the products of the weights at positions `4l..4l+4` of every
//! 32-weight chunk (what `maddubs` + `madd` leave in a 256-bit register).
//! Each lane is converted to f32 and fused-multiply-added with the block's
//! `d` into an eight-lane f32 accumulator, lane by lane across
//! super-blocks; the accumulator is then reduced as `hsum_float_8` does:
//! `((a0+a4) + (a2+a6)) + ((a1+a5) + (a3+a7))`. Integer sums are exact in
//! any order, so only the lane assignment and the f32 steps matter.

/// The i32 lane of weight `e` of a super-block.
#[inline(always)]
pub(super) fn lane(e: usize) -> usize {
    (e % 32) / 4
}

/// Eight integer lanes from per-weight products: `prod(e)` for the 256
/// weights of a super-block, each added into [`lane`]`(e)`.
#[inline(always)]
pub(super) fn lanes(mut prod: impl FnMut(usize) -> i32) -> [i32; 8] {
    let mut s = [0i32; 8];
    for e in 0..256 {
        s[lane(e)] += prod(e);
    }
    s
}

/// `acc[l] = fma(d, s[l], acc[l])` with each i32 rounded to f32 first.
#[inline(always)]
pub(super) fn fma_lanes(acc: &mut [f32; 8], d: f32, s: &[i32; 8]) {
    for (a, &v) in acc.iter_mut().zip(s) {
        *a = d.mul_add(v as f32, *a);
    }
}

/// ggml's `hsum_float_8`.
#[inline(always)]
pub(super) fn hsum8(a: &[f32; 8]) -> f32 {
    let r = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    hsum4(&r)
}

/// A four-lane horizontal sum in `movehl` / `movehdup` order.
#[inline(always)]
pub(super) fn hsum4(r: &[f32; 4]) -> f32 {
    (r[0] + r[2]) + (r[1] + r[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduction_order_is_ggmls() {
        // 1 + 2^-24 is lost unless the two small terms meet first.
        let t = 2f32.powi(-24);
        let a = [1.0, 0.0, t, 0.0, 0.0, 0.0, t, 0.0];
        assert_eq!(hsum8(&a), 1.0 + 2.0 * t);
        let b = [1.0, t, 0.0, t, 0.0, 0.0, 0.0, 0.0];
        assert_eq!(hsum8(&b), 1.0 + 2.0 * t);
        assert_eq!(lane(37), 1);
        assert_eq!(lanes(|e| (e % 32 == 3) as i32), [8, 0, 0, 0, 0, 0, 0, 0]);
    }
}
