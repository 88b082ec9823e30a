//! Portable i-quant dot products in the f32 order of the AVX2 kernels in
//! [`super::x86`] (ggml's x86 order: per-block integer sums kept in eight
//! i32 lanes, lane `l` holding elements `4l..4l+4` of every 32-element
//! chunk, fused-multiply-added with the block scale into eight f32 lanes
//! and reduced by `hsum_float_8`). The scalar level dispatches these, so it
//! gives the same bits as AVX2; the generic-order `*_ref` functions in
//! [`super`] stay as the tests' independent reference.

use super::super::grids::{IQ2XXS_GRID, KSIGNS_IQ2XS, KVALUES_IQ4NL};
use super::super::{blocks, BlockIQ2XXS, BlockIQ4XS, QK_K};
use super::{nl_sumi, NlBlock};
use crate::quants::kquants::BlockQ8_K;
use crate::quants::legacy::x86_order::hsum8;
use crate::quants::legacy::BlockQ8_0;
use crate::simd::portable_kernel;

/// `acc[l] = fma(d, f32(s[l]), acc[l])`.
#[inline(always)]
fn fma_lanes(acc: &mut [f32; 8], d: f32, s: &[i32; 8]) {
    for (a, &v) in acc.iter_mut().zip(s) {
        *a = d.mul_add(v as f32, *a);
    }
}

/// The 32 table values of a block's codes, in element order.
#[inline(always)]
fn lookup(values: &[i8; 16], codes: &[u8]) -> [i32; 32] {
    std::array::from_fn(|j| {
        let c = if j < 16 {
            codes[j] & 0xf
        } else {
            codes[j - 16] >> 4
        };
        i32::from(values[usize::from(c)])
    })
}

/// Adds `scale · w[j] · a[j]` of one 32-element chunk into lane `j / 4`.
#[inline(always)]
fn add_chunk(s: &mut [i32; 8], scale: i32, w: &[i32; 32], a: &[i8]) {
    for (j, (&w, &a)) in w.iter().zip(a).enumerate() {
        s[j / 4] += scale * w * i32::from(a);
    }
}

portable_kernel! {
/// [`NlBlock`] x Q8_0 (IQ4_NL, MXFP4): even and odd blocks in two
/// accumulators (ggml's `accum1` / `accum2`), reduced as their sum; an odd
/// last block is added after the reduction (multiply, then add).
pub(crate) fn nl_q8_0<B: NlBlock>(n: usize, w: &[u8], act: &[u8]) -> f32 {
        let (xs, ys) = (blocks::<B>(w), blocks::<BlockQ8_0>(act));
        let nb = (n / 32).min(xs.len()).min(ys.len());
        let pairs = nb / 2;
        let mut acc = [[0f32; 8]; 2];
        for i in 0..2 * pairs {
            let (x, y) = (&xs[i], &ys[i]);
            let mut s = [0i32; 8];
            add_chunk(&mut s, 1, &lookup(&B::VALUES, x.codes()), &y.qs);
            fma_lanes(&mut acc[i & 1], y.d.to_f32() * x.scale(), &s);
        }
        let both: [f32; 8] = std::array::from_fn(|l| acc[0][l] + acc[1][l]);
        let mut sumf = hsum8(&both);
        for (x, y) in xs[..nb].iter().zip(&ys[..nb]).skip(2 * pairs) {
            let d = y.d.to_f32() * x.scale();
            sumf += d * nl_sumi(&B::VALUES, x.codes(), &y.qs) as f32;
        }
        sumf
}
}

portable_kernel! {
/// IQ4_XS x Q8_K.
pub fn iq4_xs_q8_k(n: usize, w: &[u8], act: &[u8]) -> f32 {
        let (xs, ys) = (blocks::<BlockIQ4XS>(w), blocks::<BlockQ8_K>(act));
        let mut acc = [0f32; 8];
        for (x, y) in xs.iter().zip(ys.iter()).take(n / QK_K) {
            let mut s = [0i32; 8];
            for ib in 0..QK_K / 32 {
                let v = lookup(&KVALUES_IQ4NL, &x.qs[16 * ib..16 * ib + 16]);
                add_chunk(&mut s, x.scale(ib), &v, &y.qs[32 * ib..32 * ib + 32]);
            }
            fma_lanes(&mut acc, x.d.to_f32() * y.d, &s);
        }
        hsum8(&acc)
}
}

portable_kernel! {
/// IQ2_XXS x Q8_K (the grid's 1/8 applied once at the end).
pub fn iq2_xxs_q8_k(n: usize, w: &[u8], act: &[u8]) -> f32 {
        let (xs, ys) = (blocks::<BlockIQ2XXS>(w), blocks::<BlockQ8_K>(act));
        let mut acc = [0f32; 8];
        for (x, y) in xs.iter().zip(ys.iter()).take(n / QK_K) {
            let mut s = [0i32; 8];
            for ib32 in 0..QK_K / 32 {
                let (g, sg) = x.words(ib32);
                let v: [i32; 32] = std::array::from_fn(|j| {
                    let (l, k) = (j / 8, j % 8);
                    let grid = IQ2XXS_GRID[((g >> (8 * l)) & 0xff) as usize];
                    let q = ((grid >> (8 * k)) & 0xff) as i32;
                    let signs = KSIGNS_IQ2XS[((sg >> (7 * l)) & 127) as usize];
                    if (signs >> k) & 1 != 0 {
                        -q
                    } else {
                        q
                    }
                });
                let scale = 2 * (sg >> 28) as i32 + 1;
                add_chunk(&mut s, scale, &v, &y.qs[32 * ib32..32 * ib32 + 32]);
            }
            fma_lanes(&mut acc, x.d.to_f32() * y.d, &s);
        }
        0.125 * hsum8(&acc)
}
}
