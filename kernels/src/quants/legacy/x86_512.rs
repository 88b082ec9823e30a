//! AVX-512 VNNI prefill tiles for the legacy formats: up to 4 weight rows
//! × 8 activation rows, two activation rows per 512-bit vector.
//!
//! A weight block is unpacked once into both 256-bit halves of a zmm (a
//! 16-byte broadcast load, a per-qword shift and a mask: no lane shuffle),
//! so one `vpdpbusd` / convert / multiply / FMA serves two (row, token)
//! pairs. Every lane does exactly the arithmetic of the 256-bit tiles in
//! `x86.rs`, in the same order, so results are bit-identical to the single
//! `vec_dot`; only the instruction count drops. Odd token counts leave the
//! last token to the 256-bit tile.

// AVX-512 intrinsics are stable since Rust 1.89 (the toolchain is 1.95).
#![allow(clippy::incompatible_msrv)]

use std::arch::x86_64::*;

use super::x86::{vnni, TileShape, PREFETCH};

/// The tile shape of these kernels.
pub(crate) const SHAPE: TileShape = TileShape { rows: 4, tokens: 8 };

macro_rules! tiles512 {
    ($(
        $name:ident: wsize = $wsize:expr, asize = $asize:expr, min = $min:expr,
        offset = $k:expr, unpack = |$p:ident| $unpack:expr;
    )*) => {$(
        /// # Safety
        /// AVX-512 F/BW/VL/VNNI available; `w` holds `R` rows of `nb` blocks
        /// `w_stride` apart, `a` `2 * P` rows of `nb` blocks `a_stride` apart.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn $name<const R: usize, const P: usize>(
            nb: usize,
            w: *const u8,
            w_stride: usize,
            a: *const u8,
            a_stride: usize,
        ) -> [[[f32; 2]; P]; R] {
            const AOFF: usize = if $asize == 36 { 4 } else { 2 };
            let mut acc = [[_mm512_setzero_ps(); P]; R];
            // Σ m_w * s_a of row r, token t in lane t.
            let mut mins = [_mm256_setzero_ps(); R];
            for b in 0..nb {
                let mut qy = [_mm512_setzero_si512(); P];
                let mut da = [_mm512_setzero_ps(); P];
                let mut off = [_mm512_setzero_si512(); P];
                let mut s_half = [0i16; 8];
                for p in 0..P {
                    // SAFETY: block b of activation rows 2p and 2p + 1.
                    let (a0, a1) = unsafe {
                        let a0 = a.add(2 * p * a_stride + b * $asize);
                        (a0, a0.add(a_stride))
                    };
                    let (y0, y1) = unsafe {
                        (
                            _mm256_loadu_si256(a0.add(AOFF).cast()),
                            _mm256_loadu_si256(a1.add(AOFF).cast()),
                        )
                    };
                    qy[p] = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(y0), y1);
                    let (d0, d1) = unsafe { (bcast_h2f(a0), bcast_h2f(a1)) };
                    da[p] = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                        _mm512_castpd256_pd512(_mm256_castps_pd(d0)),
                        _mm256_castps_pd(d1),
                    ));
                    if $min {
                        s_half[2 * p] = unsafe { a0.add(2).cast::<i16>().read_unaligned() };
                        s_half[2 * p + 1] = unsafe { a1.add(2).cast::<i16>().read_unaligned() };
                    }
                    if $k != 0 {
                        let ks = _mm512_set1_epi8($k as u8 as i8);
                        let sum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ks, qy[p]);
                        off[p] = _mm512_sub_epi32(_mm512_setzero_si512(), sum);
                    }
                }
                let sa = if $min {
                    // SAFETY: 8 halves of room.
                    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(s_half.as_ptr().cast()) })
                } else {
                    _mm256_setzero_ps()
                };
                for r in 0..R {
                    // SAFETY: block b of weight row r is in bounds.
                    let $p = unsafe { w.add(r * w_stride + b * $wsize) };
                    _mm_prefetch::<_MM_HINT_T0>($p.wrapping_add(PREFETCH).cast());
                    let qx: __m512i = unsafe { $unpack };
                    let bits = unsafe { $p.cast::<i16>().read_unaligned() };
                    let dw = _mm512_cvtph_ps(_mm256_set1_epi16(bits));
                    if $min {
                        let m = unsafe { $p.add(2).cast::<i16>().read_unaligned() };
                        let mw = _mm256_cvtph_ps(_mm_set1_epi16(m));
                        mins[r] = _mm256_fmadd_ps(mw, sa, mins[r]);
                    }
                    for p in 0..P {
                        let dot = _mm512_dpbusd_epi32(off[p], qx, qy[p]);
                        let d = _mm512_mul_ps(dw, da[p]);
                        acc[r][p] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(dot), acc[r][p]);
                    }
                }
            }
            let mut out = [[[0.0f32; 2]; P]; R];
            for r in 0..R {
                let mut m = [0.0f32; 8];
                // SAFETY: 8 floats of room.
                unsafe { _mm256_storeu_ps(m.as_mut_ptr(), mins[r]) };
                for p in 0..P {
                    let lo = _mm512_castps512_ps256(acc[r][p]);
                    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc[r][p])));
                    out[r][p] = [hsum(lo) + m[2 * p], hsum(hi) + m[2 * p + 1]];
                }
            }
            out
        }
    )*};
}

/// The f16 at `p` (unaligned) as f32 in every lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bcast_h2f(p: *const u8) -> __m256 {
    // SAFETY: the caller guarantees 2 readable bytes at `p`.
    let bits = unsafe { p.cast::<i16>().read_unaligned() };
    _mm256_cvtph_ps(_mm_set1_epi16(bits))
}

/// The 16 bytes of nibbles at `p` as [low nibbles, high nibbles] in both
/// 256-bit halves.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn nibbles(p: *const u8) -> __m512i {
    // SAFETY: the caller guarantees 16 readable bytes at `p`.
    let all = unsafe { _mm512_broadcast_i32x4(_mm_loadu_si128(p.cast())) };
    let shifted = _mm512_srlv_epi64(all, _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0));
    _mm512_and_si512(shifted, _mm512_set1_epi8(0x0F))
}

/// The fifth bits (u32 at `p`) as 0x10 in the bytes where set, both halves.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn fifth_bits(p: *const u8) -> __m512i {
    // SAFETY: the caller guarantees 4 readable bytes at `p`.
    let bits = u64::from(unsafe { p.cast::<u32>().read_unaligned() });
    _mm512_maskz_mov_epi8(bits | (bits << 32), _mm512_set1_epi8(0x10))
}

/// The same reduction order as the 256-bit tiles' (bit-identical sums).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(x: __m256) -> f32 {
    let r = _mm_add_ps(_mm256_extractf128_ps::<1>(x), _mm256_castps256_ps128(x));
    let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)))
}

tiles512! {
    q4_0: wsize = 18, asize = 34, min = false, offset = 8,
        unpack = |p| nibbles(p.add(2));
    q4_1: wsize = 20, asize = 36, min = true, offset = 0,
        unpack = |p| nibbles(p.add(4));
    q5_0: wsize = 22, asize = 34, min = false, offset = 16,
        unpack = |p| _mm512_or_si512(nibbles(p.add(6)), fifth_bits(p.add(2)));
    q5_1: wsize = 24, asize = 36, min = true, offset = 0,
        unpack = |p| _mm512_or_si512(nibbles(p.add(8)), fifth_bits(p.add(4)));
    q8_0: wsize = 34, asize = 34, min = false, offset = 128,
        unpack = |p| _mm512_xor_si512(
            _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(2).cast())),
            _mm512_set1_epi8(-128),
        );
}

/// One monomorphized tile: `R` rows × `P` token pairs.
type Tile512<const R: usize, const P: usize> =
    unsafe fn(usize, *const u8, usize, *const u8, usize) -> [[[f32; 2]; P]; R];

/// # Safety
/// As [`super::x86::TileFn`], for one tile of exactly `R` rows and an even
/// number `nt <= 8` of tokens.
unsafe fn pairs<const R: usize>(
    f1: Tile512<R, 1>,
    f2: Tile512<R, 2>,
    f3: Tile512<R, 3>,
    f4: Tile512<R, 4>,
    args: (usize, *const u8, usize, *const u8, usize),
    nt: usize,
    out: *mut f32,
    os: usize,
) {
    fn store<const R: usize, const P: usize>(v: [[[f32; 2]; P]; R], out: *mut f32, os: usize) {
        for (r, row) in v.iter().enumerate() {
            for (t, x) in row.iter().flatten().enumerate() {
                // SAFETY: the caller's output covers (r, t).
                unsafe { *out.add(t * os + r) = *x };
            }
        }
    }
    let (nb, w, ws, a, as_) = args;
    // SAFETY (all arms): forwarded contract.
    unsafe {
        match nt / 2 {
            1 => store(f1(nb, w, ws, a, as_), out, os),
            2 => store(f2(nb, w, ws, a, as_), out, os),
            3 => store(f3(nb, w, ws, a, as_), out, os),
            4 => store(f4(nb, w, ws, a, as_), out, os),
            _ => {}
        }
    }
}

macro_rules! erase {
    ($($name:ident),*) => {
        /// Type-erased tiles ([`super::x86::TileFn`]) of [`SHAPE`].
        pub(crate) mod tile {
            use super::*;
            $(
                /// # Safety
                /// As [`super::super::x86::TileFn`], with `nr <= 4`, `nt <= 8`.
                pub(crate) unsafe fn $name(
                    nb: usize, w: *const u8, ws: usize, nr: usize,
                    a: *const u8, as_: usize, nt: usize, out: *mut f32, os: usize,
                ) {
                    let even = nt & !1;
                    // SAFETY (all calls): forwarded contract; the odd last
                    // token goes to the 256-bit tile, which computes it the
                    // same way.
                    unsafe {
                        if even > 0 {
                            if nr == SHAPE.rows {
                                pairs::<4>(
                                    super::$name::<4, 1>, super::$name::<4, 2>,
                                    super::$name::<4, 3>, super::$name::<4, 4>,
                                    (nb, w, ws, a, as_), even, out, os,
                                );
                            } else {
                                for r in 0..nr {
                                    pairs::<1>(
                                        super::$name::<1, 1>, super::$name::<1, 2>,
                                        super::$name::<1, 3>, super::$name::<1, 4>,
                                        (nb, w.add(r * ws), ws, a, as_), even, out.add(r), os,
                                    );
                                }
                            }
                        }
                        if nt > even {
                            vnni::tile::$name(
                                nb, w, ws, nr, a.add(even * as_), as_, 1, out.add(even * os), os,
                            );
                        }
                    }
                }
            )*
        }
    };
}

erase!(q4_0, q4_1, q5_0, q5_1, q8_0);
