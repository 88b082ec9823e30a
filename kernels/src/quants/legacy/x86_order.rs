//! Portable dot products of legacy weight rows with Q8_0 / Q8_1
//! activations in the f32 order of ggml's x86 kernels (and of this crate's
//! AVX2 / AVX-512 VNNI ones in `x86`), so that the scalar level gives the
//! same bits as every SIMD level.
//!
//! ggml's AVX2 `ggml_vec_dot_q*_q8_*` leave each block's integer products
//! in eight i32 lanes (`maddubs` + `madd`: lane `l` holds elements
//! `4l..4l+4`), convert them to f32 and fused-multiply-add them with
//! `d_w * d_a` into an eight-lane accumulator, block after block; the
//! accumulator is reduced by `hsum_float_8`. The formats with a minimum
//! add `m_w * s_a` into one scalar sum (fused: GCC contracts it), added
//! after the reduction. Integer sums are exact in any order, so only the
//! lane assignment and the float steps matter; these loops reproduce them.
//! The generic-order references in [`super::dot`] stay as the tests'
//! independent check of the arithmetic.

use super::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1, QK};
use bytemuck::Pod;

use crate::simd::portable_kernel;

/// Walks the blocks of a weight row and an activation row pairwise.
fn blocks<'a, W: Pod, A: Pod>(
    n: usize,
    w: &'a [u8],
    act: &'a [u8],
) -> impl Iterator<Item = (W, A)> + 'a {
    w.chunks_exact(std::mem::size_of::<W>())
        .zip(act.chunks_exact(std::mem::size_of::<A>()))
        .take(n / QK)
        .map(|(w, a)| {
            (
                bytemuck::pod_read_unaligned(w),
                bytemuck::pod_read_unaligned(a),
            )
        })
}

/// ggml's `hsum_float_8`: `((a0+a4) + (a2+a6)) + ((a1+a5) + (a3+a7))`.
#[inline(always)]
pub(crate) fn hsum8(a: &[f32; 8]) -> f32 {
    let r = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    (r[0] + r[2]) + (r[1] + r[3])
}

/// The eight i32 lanes of one block: lane `l` = Σ_{j=4l}^{4l+3} w(j)·a[j].
#[inline(always)]
fn lanes(w: impl Fn(usize) -> i32, a: &[i8; QK]) -> [i32; 8] {
    std::array::from_fn(|l| (4 * l..4 * l + 4).map(|j| w(j) * i32::from(a[j])).sum())
}

/// `acc[l] = fma(d, f32(s[l]), acc[l])`.
#[inline(always)]
fn fma_lanes(acc: &mut [f32; 8], d: f32, s: &[i32; 8]) {
    for (a, &v) in acc.iter_mut().zip(s) {
        *a = d.mul_add(v as f32, *a);
    }
}

/// The 4-bit code of element `j` (low nibbles first, then high).
#[inline(always)]
fn nib(qs: &[u8; 16], j: usize) -> i32 {
    i32::from(if j < 16 {
        qs[j] & 0x0F
    } else {
        qs[j - 16] >> 4
    })
}

/// The 5-bit code of element `j`, the fifth bit from `qh`.
#[inline(always)]
fn five(qs: &[u8; 16], qh: [u8; 4], j: usize) -> i32 {
    nib(qs, j) | ((((u32::from_le_bytes(qh) >> j) & 1) as i32) << 4)
}

portable_kernel! {
/// Q4_0 weights · Q8_0 activations.
pub fn vec_dot_q4_0_q8_0(n: usize, w: &[u8], act: &[u8]) -> f32 {
        let mut acc = [0f32; 8];
        for (x, y) in blocks::<BlockQ4_0, BlockQ8_0>(n, w, act) {
            let s = lanes(|j| nib(&x.qs, j) - 8, &y.qs);
            fma_lanes(&mut acc, x.d.to_f32() * y.d.to_f32(), &s);
        }
        hsum8(&acc)
}
}

portable_kernel! {
/// Q4_1 weights · Q8_1 activations.
pub fn vec_dot_q4_1_q8_1(n: usize, w: &[u8], act: &[u8]) -> f32 {
        let (mut acc, mut mins) = ([0f32; 8], 0f32);
        for (x, y) in blocks::<BlockQ4_1, BlockQ8_1>(n, w, act) {
            mins = x.m.to_f32().mul_add(y.s.to_f32(), mins);
            let s = lanes(|j| nib(&x.qs, j), &y.qs);
            fma_lanes(&mut acc, x.d.to_f32() * y.d.to_f32(), &s);
        }
        hsum8(&acc) + mins
}
}

portable_kernel! {
/// Q5_0 weights · Q8_0 activations.
pub fn vec_dot_q5_0_q8_0(n: usize, w: &[u8], act: &[u8]) -> f32 {
        let mut acc = [0f32; 8];
        for (x, y) in blocks::<BlockQ5_0, BlockQ8_0>(n, w, act) {
            let s = lanes(|j| five(&x.qs, x.qh, j) - 16, &y.qs);
            fma_lanes(&mut acc, x.d.to_f32() * y.d.to_f32(), &s);
        }
        hsum8(&acc)
}
}

portable_kernel! {
/// Q5_1 weights · Q8_1 activations.
pub fn vec_dot_q5_1_q8_1(n: usize, w: &[u8], act: &[u8]) -> f32 {
        let (mut acc, mut mins) = ([0f32; 8], 0f32);
        for (x, y) in blocks::<BlockQ5_1, BlockQ8_1>(n, w, act) {
            mins = x.m.to_f32().mul_add(y.s.to_f32(), mins);
            let s = lanes(|j| five(&x.qs, x.qh, j), &y.qs);
            fma_lanes(&mut acc, x.d.to_f32() * y.d.to_f32(), &s);
        }
        hsum8(&acc) + mins
}
}

portable_kernel! {
/// Q8_0 weights · Q8_0 activations.
pub fn vec_dot_q8_0_q8_0(n: usize, w: &[u8], act: &[u8]) -> f32 {
        let mut acc = [0f32; 8];
        for (x, y) in blocks::<BlockQ8_0, BlockQ8_0>(n, w, act) {
            let s = lanes(|j| i32::from(x.qs[j]), &y.qs);
            fma_lanes(&mut acc, x.d.to_f32() * y.d.to_f32(), &s);
        }
        hsum8(&acc)
}
}
