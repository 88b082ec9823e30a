//! Dot products of i-quant weight rows with activation rows already rounded
//! to ggml's `vec_dot_type`: IQ4_NL x Q8_0, IQ4_XS x Q8_K, IQ2_XXS x Q8_K,
//! and the table-lookup kernel IQ4_NL shares with MXFP4 ([`NlBlock`]).
//!
//! The `*_ref` functions compute exactly what ggml's generic C does (same
//! integer sums, same float operations in the same order); the AVX2 and
//! AVX-512 versions in [`x86`] sum the same integers and differ only in the
//! order of the final f32 additions. The scalar level runs [`x86_order`]:
//! portable loops in the AVX2 kernels' order, the same bits. Every function takes `n` and raw
//! bytes, uses `min(n / block, blocks present)` blocks, and never panics.
//! [`tile_for`] gives the matmul IQ2_XXS tiles (`x86_tile`) that decode a
//! weight row once for several tokens, with the single dots' bits.

use bytemuck::Pod;
use half::f16;

use super::grids::{IQ2XXS_GRID, KSIGNS_IQ2XS, KVALUES_IQ4NL};
use super::{blocks, BlockIQ2XXS, BlockIQ4NL, BlockIQ4XS, QK_K};
use crate::dispatch::VecDotFn;
use crate::quants::kquants::BlockQ8_K;
use crate::quants::legacy::BlockQ8_0;
use crate::simd::SimdLevel;

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;
pub mod x86_order;
#[cfg(target_arch = "x86_64")]
mod x86_tile;

/// A 32-weight block of 4-bit codes mapped through a 16-entry signed table
/// and one f32 scale (IQ4_NL, MXFP4): the layout shared by the Q8_0 dot
/// kernels here.
pub(crate) trait NlBlock: Pod {
    /// The code -> value table (values in -127..=127).
    const VALUES: [i8; 16];
    /// 16 bytes of codes: element j in the low nibble of byte j, element
    /// 16 + j in its high nibble.
    fn codes(&self) -> &[u8; 16];
    /// The block scale as f32, converting an f16 scale with `h2f` (so the
    /// SIMD kernels can use the hardware conversion).
    fn scale_with(&self, h2f: impl Fn(f16) -> f32) -> f32;
    /// The block scale as f32.
    #[inline]
    fn scale(&self) -> f32 {
        self.scale_with(f16::to_f32)
    }
}

impl NlBlock for BlockIQ4NL {
    const VALUES: [i8; 16] = KVALUES_IQ4NL;
    #[inline]
    fn codes(&self) -> &[u8; 16] {
        &self.qs
    }
    #[inline]
    fn scale_with(&self, h2f: impl Fn(f16) -> f32) -> f32 {
        h2f(self.d)
    }
}

/// Integer dot product of 32 table-mapped 4-bit codes (16 bytes) with 32
/// i8 values.
#[inline]
pub(crate) fn nl_sumi(values: &[i8; 16], codes: &[u8], q8: &[i8]) -> i32 {
    let (lo, hi) = q8.split_at(16);
    let mut s1 = 0i32;
    let mut s2 = 0i32;
    for ((&c, &a), &b) in codes.iter().zip(lo).zip(hi) {
        s1 += a as i32 * values[(c & 0xf) as usize] as i32;
        s2 += b as i32 * values[(c >> 4) as usize] as i32;
    }
    s1 + s2
}

/// Reference dot of `n` weights of an [`NlBlock`] type with a Q8_0 row
/// (ggml's `ggml_vec_dot_iq4_nl_q8_0_generic` / `..._mxfp4_q8_0_generic`).
pub(crate) fn nl_q8_0_ref<B: NlBlock>(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let xs = blocks::<B>(w);
    let ys = blocks::<BlockQ8_0>(act);
    let mut sumf = 0.0f32;
    for (x, y) in xs.iter().zip(ys.iter()).take(n / 32) {
        let d = y.d.to_f32() * x.scale();
        sumf += d * nl_sumi(&B::VALUES, x.codes(), &y.qs) as f32;
    }
    sumf
}

/// The [`NlBlock`] x Q8_0 dot product for `level`.
pub(crate) fn nl_q8_0<B: NlBlock>(level: SimdLevel) -> VecDotFn {
    match level {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => x86::nl_q8_0_avx512::<B>,
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => x86::nl_q8_0_avx2::<B>,
        _ => x86_order::nl_q8_0::<B>,
    }
}

/// Reference IQ4_NL x Q8_0 dot product.
pub fn vec_dot_iq4_nl_q8_0_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    nl_q8_0_ref::<BlockIQ4NL>(n, w, act)
}

/// The IQ4_NL x Q8_0 dot product for `level`.
pub fn iq4_nl_q8_0(level: SimdLevel) -> VecDotFn {
    nl_q8_0::<BlockIQ4NL>(level)
}

/// Reference IQ4_XS x Q8_K dot product (ggml's
/// `ggml_vec_dot_iq4_xs_q8_K_generic`).
pub fn vec_dot_iq4_xs_q8_k_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let xs = blocks::<BlockIQ4XS>(w);
    let ys = blocks::<BlockQ8_K>(act);
    let mut sumf = 0.0f32;
    for (x, y) in xs.iter().zip(ys.iter()).take(n / QK_K) {
        let d4d8 = x.d.to_f32() * y.d;
        for ib in 0..QK_K / 32 {
            let qs = &x.qs[16 * ib..16 * ib + 16];
            let sumi = nl_sumi(&KVALUES_IQ4NL, qs, &y.qs[32 * ib..32 * ib + 32]);
            sumf += d4d8 * x.scale(ib) as f32 * sumi as f32;
        }
    }
    sumf
}

/// The IQ4_XS x Q8_K dot product for `level`.
pub fn iq4_xs_q8_k(level: SimdLevel) -> VecDotFn {
    match level {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => x86::iq4_xs_q8_k_avx512,
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => x86::iq4_xs_q8_k_avx2,
        _ => x86_order::iq4_xs_q8_k,
    }
}

/// Reference IQ2_XXS x Q8_K dot product (ggml's
/// `ggml_vec_dot_iq2_xxs_q8_K_generic`): integer sums per 32 weights times
/// the odd scale `2s + 1`, the grid's 1/8 applied once at the end.
pub fn vec_dot_iq2_xxs_q8_k_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let xs = blocks::<BlockIQ2XXS>(w);
    let ys = blocks::<BlockQ8_K>(act);
    let mut sumf = 0.0f32;
    for (x, y) in xs.iter().zip(ys.iter()).take(n / QK_K) {
        let d = x.d.to_f32() * y.d;
        let mut bsum = 0i32;
        for (ib32, q8) in y.qs.chunks_exact(32).enumerate() {
            let (grid_idx, signs_scale) = x.words(ib32);
            let ls = 2 * (signs_scale >> 28) as i32 + 1;
            let mut sumi = 0i32;
            for (l, q8) in q8.chunks_exact(8).enumerate() {
                let grid = IQ2XXS_GRID[((grid_idx >> (8 * l)) & 0xff) as usize];
                let signs = KSIGNS_IQ2XS[((signs_scale >> (7 * l)) & 127) as usize];
                for (j, &a) in q8.iter().enumerate() {
                    let p = ((grid >> (8 * j)) & 0xff) as i32 * a as i32;
                    sumi += if (signs >> j) & 1 != 0 { -p } else { p };
                }
            }
            bsum += sumi * ls;
        }
        sumf += d * bsum as f32;
    }
    0.125 * sumf
}

/// The matmul tile for `ty` at `level`, where an i-quant has one: IQ2_XXS
/// (each row's grid points decoded once for four tokens on AVX-512, two on
/// AVX2).
#[cfg(target_arch = "x86_64")]
pub(crate) fn tile_for(
    ty: crate::types::GgmlType,
    level: SimdLevel,
) -> Option<(
    crate::quants::legacy::TileFn,
    crate::quants::legacy::TileShape,
)> {
    use crate::quants::legacy::{TileFn, TileShape};
    if ty != crate::types::GgmlType::IQ2_XXS {
        return None;
    }
    match level {
        SimdLevel::Avx512 if x86_tile::iq2_xxs_tile_usable() => Some((
            x86_tile::iq2_xxs_tile_avx512 as TileFn,
            TileShape { rows: 1, tokens: 4 },
        )),
        SimdLevel::Avx2 if x86_tile::iq2_xxs_tile_avx2_usable() => Some((
            x86_tile::iq2_xxs_tile_avx2 as TileFn,
            TileShape { rows: 1, tokens: 2 },
        )),
        _ => None,
    }
}

/// The IQ2_XXS x Q8_K dot product for `level`.
pub fn iq2_xxs_q8_k(level: SimdLevel) -> VecDotFn {
    match level {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => x86::iq2_xxs_q8_k_avx512,
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => x86::iq2_xxs_q8_k_avx2,
        _ => x86_order::iq2_xxs_q8_k,
    }
}
