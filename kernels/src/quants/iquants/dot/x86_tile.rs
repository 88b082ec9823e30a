//! Matmul tiles for IQ2_XXS (AVX-512 and AVX2): a weight row's grid
//! points, sign masks and scales are gathered once per pass and used for
//! several tokens, so prefill, where each expert sees a handful of tokens,
//! decodes each row a fraction as often. The single IQ2_XXS dot products
//! of [`super::x86`] are these kernels at one token, so a tile's results
//! are their bits by construction.

use std::arch::x86_64::*;

use super::super::{BlockIQ2XXS, QK_K};
use super::x86::{
    grid, h2f, halves_i16, has_avx2, has_avx512, hsum256, odd_scale, sign_mask32, SIGNS64,
};
use crate::quants::kquants::BlockQ8_K;

/// IQ2_XXS rows against `NT` tokens at once (AVX-512): each 64-weight
/// chunk's grid points, sign mask and scales are gathered once and used for
/// every token. Every token's sums run as in the single AVX-512 dot, in the
/// same order, so each result is that dot product's bits.
///
/// # Safety
/// AVX-512 F/BW/VL, AVX2, FMA and F16C present; `a + t·a_stride` holds
/// `xs.len()` Q8_K blocks (4-byte aligned) and `out + t·os` is writable for
/// every `t < NT`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn iq2_xxs_tokens_avx512<const NT: usize>(
    xs: &[BlockIQ2XXS],
    a: *const u8,
    a_stride: usize,
    out: *mut f32,
    os: usize,
) {
    // SAFETY: the caller's contract.
    unsafe {
        let y = |t: usize, i: usize| &*a.add(t * a_stride).cast::<BlockQ8_K>().add(i);
        let mut acc = [_mm512_setzero_ps(); NT];
        for (i, x) in xs.iter().enumerate() {
            let mut sumi = [_mm512_setzero_si512(); NT];
            for k in 0..QK_K / 64 {
                let (g0, s0) = x.words(2 * k);
                let (g1, s1) = x.words(2 * k + 1);
                let q2 = _mm512_set_epi64(
                    grid(g1, 3),
                    grid(g1, 2),
                    grid(g1, 1),
                    grid(g1, 0),
                    grid(g0, 3),
                    grid(g0, 2),
                    grid(g0, 1),
                    grid(g0, 0),
                );
                let neg = sign_mask32(s0) | sign_mask32(s1) << 32;
                let ls = halves_i16(odd_scale(s0), odd_scale(s1));
                for (t, s) in sumi.iter_mut().enumerate() {
                    let v = _mm512_loadu_si512(y(t, i).qs.as_ptr().add(64 * k).cast());
                    let v = _mm512_mask_sub_epi8(v, neg, _mm512_setzero_si512(), v);
                    let dot = _mm512_maddubs_epi16(q2, v);
                    *s = _mm512_add_epi32(*s, _mm512_madd_epi16(dot, ls));
                }
            }
            for (t, (c, s)) in acc.iter_mut().zip(&sumi).enumerate() {
                let d = _mm512_set1_ps(h2f(x.d) * y(t, i).d);
                *c = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(*s), *c);
            }
        }
        for (t, c) in acc.iter().enumerate() {
            *out.add(t * os) = 0.125 * _mm512_reduce_add_ps(*c);
        }
    }
}

/// A pass of one weight row over `k + 1` tokens (`per[k]`).
type Tokens = unsafe fn(&[BlockIQ2XXS], *const u8, usize, *mut f32, usize);

/// `nr` weight rows × `nt` tokens, each row's pass taking up to
/// `per.len()` tokens at a time. `nb` counts 32-value blocks (the tiles'
/// unit); IQ2_XXS rows hold `nb / 8` super-blocks.
///
/// # Safety
/// As the matmul's tile functions: rows `w + r·ws` (`r < nr`) hold the
/// super-blocks, tokens `a + t·as_` (`t < nt`) as many Q8_K blocks, and
/// `out + t·os + r` is writable; the CPU has what `per`'s kernels need.
#[allow(clippy::too_many_arguments)]
unsafe fn rows_by_tokens(
    nb: usize,
    w: *const u8,
    ws: usize,
    nr: usize,
    a: *const u8,
    as_: usize,
    nt: usize,
    out: *mut f32,
    os: usize,
    per: &[Tokens],
) {
    // SAFETY: the caller's contract; blocks are 2-byte aligned (rows are
    // whole blocks in a 4-byte aligned tensor).
    unsafe {
        for r in 0..nr {
            let xs = std::slice::from_raw_parts(w.add(r * ws).cast::<BlockIQ2XXS>(), nb / 8);
            let mut t = 0;
            while t < nt {
                let k = (nt - t).min(per.len());
                per[k - 1](xs, a.add(t * as_), as_, out.add(t * os + r), os);
                t += k;
            }
        }
    }
}

/// The matmul's IQ2_XXS tile (AVX-512): four tokens per pass over a row,
/// so prefill decodes each row's grid points a quarter as often.
///
/// # Safety
/// As [`rows_by_tokens`], with AVX-512 F/BW/VL present.
pub(crate) unsafe fn iq2_xxs_tile_avx512(
    nb: usize,
    w: *const u8,
    ws: usize,
    nr: usize,
    a: *const u8,
    as_: usize,
    nt: usize,
    out: *mut f32,
    os: usize,
) {
    let per: [Tokens; 4] = [
        iq2_xxs_tokens_avx512::<1>,
        iq2_xxs_tokens_avx512::<2>,
        iq2_xxs_tokens_avx512::<3>,
        iq2_xxs_tokens_avx512::<4>,
    ];
    // SAFETY: forwarded.
    unsafe { rows_by_tokens(nb, w, ws, nr, a, as_, nt, out, os, &per) }
}

/// Whether [`iq2_xxs_tile_avx512`] may run here.
pub(crate) fn iq2_xxs_tile_usable() -> bool {
    has_avx512()
}

/// [`iq2_xxs_tokens_avx512`] for AVX2: `NT` tokens per pass over a row,
/// each token's sums as in the single AVX2 dot.
///
/// # Safety
/// AVX2, FMA and F16C present; otherwise as [`iq2_xxs_tokens_avx512`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn iq2_xxs_tokens_avx2<const NT: usize>(
    xs: &[BlockIQ2XXS],
    a: *const u8,
    a_stride: usize,
    out: *mut f32,
    os: usize,
) {
    let sign = |s: u32, l: usize| SIGNS64[((s >> (7 * l)) & 127) as usize] as i64;
    // SAFETY: the caller's contract.
    unsafe {
        let y = |t: usize, i: usize| &*a.add(t * a_stride).cast::<BlockQ8_K>().add(i);
        let mut acc = [_mm256_setzero_ps(); NT];
        for (i, x) in xs.iter().enumerate() {
            let mut sumi = [[_mm256_setzero_si256(); 2]; NT];
            for ib32 in 0..QK_K / 32 {
                let (g, s) = x.words(ib32);
                let q2 = _mm256_set_epi64x(grid(g, 3), grid(g, 2), grid(g, 1), grid(g, 0));
                let sg = _mm256_set_epi64x(sign(s, 3), sign(s, 2), sign(s, 1), sign(s, 0));
                let ls = _mm256_set1_epi16(odd_scale(s));
                for (t, st) in sumi.iter_mut().enumerate() {
                    let v = _mm256_loadu_si256(y(t, i).qs.as_ptr().add(32 * ib32).cast());
                    let dot = _mm256_maddubs_epi16(q2, _mm256_sign_epi8(v, sg));
                    let p = _mm256_madd_epi16(dot, ls);
                    st[ib32 & 1] = _mm256_add_epi32(st[ib32 & 1], p);
                }
            }
            for (t, (c, st)) in acc.iter_mut().zip(&sumi).enumerate() {
                let d = _mm256_set1_ps(h2f(x.d) * y(t, i).d);
                let s = _mm256_add_epi32(st[0], st[1]);
                *c = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), *c);
            }
        }
        for (t, c) in acc.iter().enumerate() {
            *out.add(t * os) = 0.125 * hsum256(*c);
        }
    }
}

/// The matmul's IQ2_XXS tile for AVX2: two tokens per pass (AVX2's 16
/// registers hold two tokens' sums).
///
/// # Safety
/// As [`rows_by_tokens`], with AVX2, FMA and F16C present.
pub(crate) unsafe fn iq2_xxs_tile_avx2(
    nb: usize,
    w: *const u8,
    ws: usize,
    nr: usize,
    a: *const u8,
    as_: usize,
    nt: usize,
    out: *mut f32,
    os: usize,
) {
    let per: [Tokens; 2] = [iq2_xxs_tokens_avx2::<1>, iq2_xxs_tokens_avx2::<2>];
    // SAFETY: forwarded.
    unsafe { rows_by_tokens(nb, w, ws, nr, a, as_, nt, out, os, &per) }
}

/// Whether [`iq2_xxs_tile_avx2`] may run here.
pub(crate) fn iq2_xxs_tile_avx2_usable() -> bool {
    has_avx2()
}
