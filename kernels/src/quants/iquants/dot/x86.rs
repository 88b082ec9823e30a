//! AVX2 and AVX-512 (F/BW/VL) versions of the i-quant dot products.
//!
//! The 4-bit table formats (IQ4_NL, IQ4_XS, MXFP4) look their 16 values up
//! with one byte shuffle; IQ2_XXS gathers its 8-byte grid points into a
//! vector and applies the sign bits to the activations (AVX2: a ±1 byte
//! pattern and `sign_epi8`; AVX-512: a 64-bit mask and a masked negate).
//! Signed i8 x i8 products go through `maddubs` on |w| and sign(w)·a.
//! Integer sums are exact, so results differ from the `*_ref` functions
//! only in the order of the f32 accumulation.
//!
//! The public wrappers check the CPU features themselves and fall back to
//! the reference, so calling one on a CPU without them is still sound.

use std::arch::x86_64::*;

use half::f16;

use super::super::grids::{IQ2XXS_GRID, KSIGNS_IQ2XS, KVALUES_IQ4NL};
use super::super::{blocks, BlockIQ2XXS, BlockIQ4XS, QK_K};
use super::x86_tile::{iq2_xxs_tokens_avx2, iq2_xxs_tokens_avx512};
use super::{nl_q8_0_ref, nl_sumi, vec_dot_iq2_xxs_q8_k_ref, vec_dot_iq4_xs_q8_k_ref, NlBlock};
use crate::quants::kquants::BlockQ8_K;
use crate::quants::legacy::BlockQ8_0;

pub(super) fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

pub(super) fn has_avx512() -> bool {
    has_avx2()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
}

/// For each 7-bit sign index, 8 bytes of +1 / -1 (0x01 / 0xff) for
/// `_mm256_sign_epi8` (ggml's `keven_signs_q2xs`), built from
/// [`KSIGNS_IQ2XS`].
pub(super) const SIGNS64: [u64; 128] = {
    let mut t = [0u64; 128];
    let mut i = 0;
    while i < 128 {
        let s = KSIGNS_IQ2XS[i];
        let mut j = 0;
        while j < 8 {
            let b: u64 = if (s >> j) & 1 != 0 { 0xff } else { 0x01 };
            t[i] |= b << (8 * j);
            j += 1;
        }
        i += 1;
    }
    t
};

// ---------------------------------------------------------------- AVX2

/// f16 -> f32 with the F16C instruction (exact, as the software one).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn h2f(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Signed i8 x i8 products, summed in adjacent pairs to i16.
#[target_feature(enable = "avx2,fma,f16c")]
fn mul_i8_avx2(x: __m256i, y: __m256i) -> __m256i {
    _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

/// The table values of 32 codes (16 bytes at `codes`), in element order.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn lookup32_avx2(table: __m128i, codes: *const u8) -> __m256i {
    let m4 = _mm_set1_epi8(0x0f);
    // SAFETY: the caller passes 16 readable bytes.
    let q = unsafe { _mm_loadu_si128(codes.cast()) };
    let lo = _mm_shuffle_epi8(table, _mm_and_si128(q, m4));
    let hi = _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16::<4>(q), m4));
    _mm256_set_m128i(hi, lo)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nl_avx2<B: NlBlock>(xs: &[B], ys: &[BlockQ8_0]) -> f32 {
    let values = B::VALUES;
    // SAFETY: all loads below read inside the blocks of `xs` and `ys`.
    unsafe {
        let table = _mm_loadu_si128(values.as_ptr().cast());
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 2];
        let pairs = xs.len().min(ys.len()) / 2;
        for i in 0..2 * pairs {
            let (x, y) = (&xs[i], &ys[i]);
            let w = lookup32_avx2(table, x.codes().as_ptr());
            let a = _mm256_loadu_si256(y.qs.as_ptr().cast());
            let p = _mm256_madd_epi16(mul_i8_avx2(w, a), ones);
            let d = _mm256_set1_ps(h2f(y.d) * x.scale_with(|h| h2f(h)));
            acc[i & 1] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc[i & 1]);
        }
        let mut sumf = hsum256(_mm256_add_ps(acc[0], acc[1]));
        for (x, y) in xs.iter().zip(ys).skip(2 * pairs) {
            let d = h2f(y.d) * x.scale_with(|h| h2f(h));
            sumf += d * nl_sumi(&values, x.codes(), &y.qs) as f32;
        }
        sumf
    }
}

/// AVX2 [`NlBlock`] x Q8_0 dot product.
pub(crate) fn nl_q8_0_avx2<B: NlBlock>(n: usize, w: &[u8], act: &[u8]) -> f32 {
    if !has_avx2() {
        return nl_q8_0_ref::<B>(n, w, act);
    }
    let (xs, ys) = (blocks::<B>(w), blocks::<BlockQ8_0>(act));
    let nb = (n / 32).min(xs.len()).min(ys.len());
    // SAFETY: AVX2, FMA and F16C are present (checked above).
    unsafe { nl_avx2(&xs[..nb], &ys[..nb]) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn iq4_xs_avx2(xs: &[BlockIQ4XS], ys: &[BlockQ8_K]) -> f32 {
    // SAFETY: all loads read inside the blocks of `xs` and `ys`.
    unsafe {
        let table = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr().cast());
        let mut acc = _mm256_setzero_ps();
        for (x, y) in xs.iter().zip(ys) {
            let mut sumi = [_mm256_setzero_si256(); 2];
            for ib in 0..QK_K / 32 {
                let w = lookup32_avx2(table, x.qs.as_ptr().add(16 * ib));
                let a = _mm256_loadu_si256(y.qs.as_ptr().add(32 * ib).cast());
                let ls = _mm256_set1_epi16(x.scale(ib) as i16);
                let p = _mm256_madd_epi16(mul_i8_avx2(w, a), ls);
                sumi[ib & 1] = _mm256_add_epi32(p, sumi[ib & 1]);
            }
            let d = _mm256_set1_ps(h2f(x.d) * y.d);
            let s = _mm256_add_epi32(sumi[0], sumi[1]);
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc);
        }
        hsum256(acc)
    }
}

/// AVX2 IQ4_XS x Q8_K dot product.
pub(crate) fn iq4_xs_q8_k_avx2(n: usize, w: &[u8], act: &[u8]) -> f32 {
    if !has_avx2() {
        return vec_dot_iq4_xs_q8_k_ref(n, w, act);
    }
    let (xs, ys) = (blocks::<BlockIQ4XS>(w), blocks::<BlockQ8_K>(act));
    let nb = (n / QK_K).min(xs.len()).min(ys.len());
    // SAFETY: AVX2, FMA and F16C are present (checked above).
    unsafe { iq4_xs_avx2(&xs[..nb], &ys[..nb]) }
}

/// Grid point `l` (0..4) of a 32-weight group's index word.
#[inline]
pub(super) fn grid(indices: u32, l: usize) -> i64 {
    IQ2XXS_GRID[((indices >> (8 * l)) & 0xff) as usize] as i64
}

/// The odd scale `2s + 1` of a 32-weight group's sign/scale word.
#[inline]
pub(super) fn odd_scale(signs_scale: u32) -> i16 {
    (2 * (signs_scale >> 28) + 1) as i16
}

/// AVX2 IQ2_XXS x Q8_K dot product.
pub(crate) fn iq2_xxs_q8_k_avx2(n: usize, w: &[u8], act: &[u8]) -> f32 {
    if !has_avx2() {
        return vec_dot_iq2_xxs_q8_k_ref(n, w, act);
    }
    let (xs, ys) = (blocks::<BlockIQ2XXS>(w), blocks::<BlockQ8_K>(act));
    let nb = (n / QK_K).min(xs.len()).min(ys.len());
    let mut out = 0f32;
    // SAFETY: AVX2, FMA and F16C are present (checked above); `ys` holds
    // `nb` blocks, 4-byte aligned as `blocks` gave them.
    unsafe { iq2_xxs_tokens_avx2::<1>(&xs[..nb], ys.as_ptr().cast(), 0, &mut out, 0) };
    out
}

// ------------------------------------------------------------- AVX-512

/// Signed i8 x i8 products, summed in adjacent pairs to i16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn mul_i8_512(x: __m512i, y: __m512i) -> __m512i {
    let neg = _mm512_movepi8_mask(x);
    let sy = _mm512_mask_sub_epi8(y, neg, _mm512_setzero_si512(), y);
    _mm512_maddubs_epi16(_mm512_abs_epi8(x), sy)
}

/// The table values (`table` in every 128-bit lane) of 64 codes: `q` holds
/// the 16 code bytes of one 32-weight group, then those of the next.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn lookup64_512(table: __m512i, q: __m256i) -> __m512i {
    let m4 = _mm512_set1_epi8(0x0f);
    let q = _mm512_zextsi256_si512(q);
    let lo = _mm512_and_si512(q, m4);
    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4);
    // 64-bit lanes: low nibbles of group 0, high of group 0, low of 1, high of 1.
    let order = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
    _mm512_shuffle_epi8(table, _mm512_permutex2var_epi64(lo, order, hi))
}

/// `lo` in the low 16 i16 lanes, `hi` in the high 16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn halves_i16(lo: i16, hi: i16) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_set1_epi16(lo), _mm256_set1_epi16(hi))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn nl_avx512<B: NlBlock>(xs: &[B], ys: &[BlockQ8_0]) -> f32 {
    let values = B::VALUES;
    // SAFETY: all loads read inside the blocks of `xs` and `ys`.
    unsafe {
        let table = _mm512_broadcast_i32x4(_mm_loadu_si128(values.as_ptr().cast()));
        let ones = _mm512_set1_epi16(1);
        let mut acc = _mm512_setzero_ps();
        let pairs = xs.len().min(ys.len()) / 2;
        for (x, y) in xs.chunks_exact(2).zip(ys.chunks_exact(2)).take(pairs) {
            let q = _mm256_set_m128i(
                _mm_loadu_si128(x[1].codes().as_ptr().cast()),
                _mm_loadu_si128(x[0].codes().as_ptr().cast()),
            );
            let w = lookup64_512(table, q);
            let a = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(y[0].qs.as_ptr().cast())),
                _mm256_loadu_si256(y[1].qs.as_ptr().cast()),
            );
            let p = _mm512_madd_epi16(mul_i8_512(w, a), ones);
            let d = _mm512_mask_blend_ps(
                0xff00,
                _mm512_set1_ps(h2f(y[0].d) * x[0].scale_with(|h| h2f(h))),
                _mm512_set1_ps(h2f(y[1].d) * x[1].scale_with(|h| h2f(h))),
            );
            acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(p), acc);
        }
        let mut sumf = _mm512_reduce_add_ps(acc);
        for (x, y) in xs.iter().zip(ys).skip(2 * pairs) {
            let d = h2f(y.d) * x.scale_with(|h| h2f(h));
            sumf += d * nl_sumi(&values, x.codes(), &y.qs) as f32;
        }
        sumf
    }
}

/// AVX-512 [`NlBlock`] x Q8_0 dot product.
pub(crate) fn nl_q8_0_avx512<B: NlBlock>(n: usize, w: &[u8], act: &[u8]) -> f32 {
    if !has_avx512() {
        return nl_q8_0_avx2::<B>(n, w, act);
    }
    let (xs, ys) = (blocks::<B>(w), blocks::<BlockQ8_0>(act));
    let nb = (n / 32).min(xs.len()).min(ys.len());
    // SAFETY: AVX-512 F/BW/VL, AVX2, FMA and F16C are present (checked above).
    unsafe { nl_avx512(&xs[..nb], &ys[..nb]) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn iq4_xs_avx512(xs: &[BlockIQ4XS], ys: &[BlockQ8_K]) -> f32 {
    // SAFETY: all loads read inside the blocks of `xs` and `ys`.
    unsafe {
        let table = _mm512_broadcast_i32x4(_mm_loadu_si128(KVALUES_IQ4NL.as_ptr().cast()));
        let mut acc = _mm512_setzero_ps();
        for (x, y) in xs.iter().zip(ys) {
            let mut sumi = _mm512_setzero_si512();
            for k in 0..QK_K / 64 {
                let w = lookup64_512(table, _mm256_loadu_si256(x.qs.as_ptr().add(32 * k).cast()));
                let a = _mm512_loadu_si512(y.qs.as_ptr().add(64 * k).cast());
                let ls = halves_i16(x.scale(2 * k) as i16, x.scale(2 * k + 1) as i16);
                sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(mul_i8_512(w, a), ls));
            }
            let d = _mm512_set1_ps(h2f(x.d) * y.d);
            acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sumi), acc);
        }
        _mm512_reduce_add_ps(acc)
    }
}

/// AVX-512 IQ4_XS x Q8_K dot product.
pub(crate) fn iq4_xs_q8_k_avx512(n: usize, w: &[u8], act: &[u8]) -> f32 {
    if !has_avx512() {
        return iq4_xs_q8_k_avx2(n, w, act);
    }
    let (xs, ys) = (blocks::<BlockIQ4XS>(w), blocks::<BlockQ8_K>(act));
    let nb = (n / QK_K).min(xs.len()).min(ys.len());
    // SAFETY: AVX-512 F/BW/VL, AVX2, FMA and F16C are present (checked above).
    unsafe { iq4_xs_avx512(&xs[..nb], &ys[..nb]) }
}

/// The 32 sign bits of a 32-weight group as a byte mask (bit j = weight j
/// negative).
#[inline]
pub(super) fn sign_mask32(signs_scale: u32) -> u64 {
    (0..4).fold(0u64, |m, l| {
        m | (KSIGNS_IQ2XS[((signs_scale >> (7 * l)) & 127) as usize] as u64) << (8 * l)
    })
}

/// AVX-512 IQ2_XXS x Q8_K dot product.
pub(crate) fn iq2_xxs_q8_k_avx512(n: usize, w: &[u8], act: &[u8]) -> f32 {
    if !has_avx512() {
        return iq2_xxs_q8_k_avx2(n, w, act);
    }
    let (xs, ys) = (blocks::<BlockIQ2XXS>(w), blocks::<BlockQ8_K>(act));
    let nb = (n / QK_K).min(xs.len()).min(ys.len());
    let mut out = 0f32;
    // SAFETY: AVX-512 F/BW/VL, AVX2, FMA and F16C are present (checked
    // above); `ys` holds `nb` blocks, 4-byte aligned as `blocks` gave them.
    unsafe { iq2_xxs_tokens_avx512::<1>(&xs[..nb], ys.as_ptr().cast(), 0, &mut out, 0) };
    out
}
