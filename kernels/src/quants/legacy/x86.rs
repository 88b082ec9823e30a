//! x86-64 dot products of legacy weight rows with Q8_0 / Q8_1 activations,
//! as tiles of `R` weight rows × `T` activation rows (the single dot is the
//! 1 × 1 tile).
//!
//! Per 32-element block, each weight row is unpacked once to 32 unsigned
//! bytes and each activation row loaded once; every (row, token) pair then
//! costs one byte dot into 8 i32 lanes, a conversion and a fused
//! multiply-add with `d_w * d_a` into its own f32 accumulator. Symmetric
//! formats are dotted as unsigned `q + K` (K = 8, 16, or 128 for Q8_0)
//! with `K * Σ q_a` subtracted once per activation block, so the unsigned ×
//! signed byte dot applies to every type: `maddubs + madd` on AVX2, or
//! AVX-512 VNNI `vpdpbusd` (which also takes the offset as its
//! accumulator). Only Q8_0 on AVX2 uses ggml's sign trick instead, because
//! `maddubs` would saturate on `q + 128`. The `m_w * s_a` terms of Q4_1 /
//! Q5_1 ride in lane 0 of the same accumulators.

// AVX-512 intrinsics are stable since Rust 1.89 (the toolchain is 1.95).
#![allow(clippy::incompatible_msrv)]

use std::arch::x86_64::*;

use crate::dispatch::VecDotFn;
use crate::simd::SimdLevel;
use crate::types::GgmlType;

/// A tile kernel: `out[t * out_stride + r] = dot(w row r, act row t)` for
/// `r < nr`, `t < nt` over `nb` blocks; rows are `w_stride` / `a_stride`
/// bytes apart. `nr` and `nt` must not exceed the level's [`TileShape`].
pub(crate) type TileFn = unsafe fn(
    nb: usize,
    w: *const u8,
    w_stride: usize,
    nr: usize,
    a: *const u8,
    a_stride: usize,
    nt: usize,
    out: *mut f32,
    out_stride: usize,
);

/// The largest tile a level's kernels take: `rows` × `tokens`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TileShape {
    pub rows: usize,
    pub tokens: usize,
}

/// Bytes ahead of the current block that the tiles prefetch.
pub(super) const PREFETCH: usize = 8192;

/// Σ of unsigned × signed byte pairs added to 8 i32 lanes (AVX2).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn us8_maddubs(acc: __m256i, ax: __m256i, sy: __m256i) -> __m256i {
    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1));
    _mm256_add_epi32(acc, p)
}

/// Σ of unsigned × signed byte pairs added to 8 i32 lanes (AVX-512 VNNI).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
fn us8_vnni(acc: __m256i, ax: __m256i, sy: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, ax, sy)
}

/// One weight format as the tile loop sees it.
macro_rules! format_tile {
    (
        $name:ident, $feat:literal, $us8:ident,
        wsize = $wsize:expr, asize = $asize:expr, min = $min:expr, offset = $k:expr,
        signed = $signed:expr, unpack = |$p:ident| $unpack:expr
    ) => {
        /// # Safety
        /// The CPU has the module's features; `w` holds `R` rows of `nb`
        /// blocks `w_stride` apart, `a` `T` rows of `nb` blocks.
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn $name<const R: usize, const T: usize>(
            nb: usize,
            w: *const u8,
            w_stride: usize,
            a: *const u8,
            a_stride: usize,
        ) -> [[f32; T]; R] {
            const AOFF: usize = if $asize == 36 { 4 } else { 2 };
            let mut acc = [[_mm256_setzero_ps(); T]; R];
            // Σ m_w * s_a of row r, token t in lane t (formats with a minimum).
            let mut mins = [_mm_setzero_ps(); R];
            for b in 0..nb {
                let mut qy = [_mm256_setzero_si256(); T];
                let mut da = [_mm256_setzero_ps(); T];
                let mut off = [_mm256_setzero_si256(); T];
                let mut s_bits = 0u64;
                for t in 0..T {
                    // SAFETY: block b of activation row t is in bounds.
                    let ap = unsafe { a.add(t * a_stride + b * $asize) };
                    qy[t] = unsafe { _mm256_loadu_si256(ap.add(AOFF).cast()) };
                    da[t] = unsafe { bcast_h2f(ap) };
                    if $min {
                        let s = unsafe { ap.add(2).cast::<u16>().read_unaligned() };
                        s_bits |= u64::from(s) << (16 * t);
                    }
                    if $k != 0 {
                        let ks = _mm256_set1_epi8($k as u8 as i8);
                        off[t] = _mm256_sub_epi32(
                            _mm256_setzero_si256(),
                            $us8(_mm256_setzero_si256(), ks, qy[t]),
                        );
                    }
                }
                let sa = _mm_cvtph_ps(_mm_cvtsi64_si128(s_bits as i64));
                for r in 0..R {
                    // SAFETY: block b of weight row r is in bounds.
                    let $p = unsafe { w.add(r * w_stride + b * $wsize) };
                    if PREFETCH != 0 {
                        _mm_prefetch::<_MM_HINT_T0>($p.wrapping_add(PREFETCH).cast());
                    }
                    let qx: __m256i = unsafe { $unpack };
                    let dw = unsafe { bcast_h2f($p) };
                    if $min {
                        let mw = _mm256_castps256_ps128(unsafe { bcast_h2f($p.add(2)) });
                        mins[r] = _mm_fmadd_ps(mw, sa, mins[r]);
                    }
                    for t in 0..T {
                        let p = if $signed {
                            $us8(
                                _mm256_setzero_si256(),
                                _mm256_sign_epi8(qx, qx),
                                _mm256_sign_epi8(qy[t], qx),
                            )
                        } else {
                            $us8(off[t], qx, qy[t])
                        };
                        let d = _mm256_mul_ps(dw, da[t]);
                        acc[r][t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc[r][t]);
                    }
                }
            }
            let mut out = [[0.0f32; T]; R];
            for r in 0..R {
                let mut m = [0.0f32; 4];
                // SAFETY: 4 floats of room.
                unsafe { _mm_storeu_ps(m.as_mut_ptr(), mins[r]) };
                for t in 0..T {
                    out[r][t] = hsum(acc[r][t]) + m[t];
                }
            }
            out
        }
    };
}

/// The kernels of one instruction set: `$us8` is its byte dot.
macro_rules! level_kernels {
    ($module:ident, $feat:literal, $us8:ident, $q8_signed:expr, $shape:expr) => {
        pub(super) mod $module {
            use super::*;

            pub(crate) const SHAPE: TileShape = $shape;

            /// The f16 at `p` (unaligned) as f32 in every lane.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn bcast_h2f(p: *const u8) -> __m256 {
                // SAFETY: the caller guarantees 2 readable bytes at `p`.
                let bits = unsafe { p.cast::<i16>().read_unaligned() };
                _mm256_cvtph_ps(_mm_set1_epi16(bits))
            }

            /// 16 bytes of nibbles at `p` as 32 bytes: low nibbles, then high.
            /// (Broadcast load, then a per-qword shift: no lane shuffle.)
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn nibbles(p: *const u8) -> __m256i {
                // SAFETY: the caller guarantees 16 readable bytes at `p`.
                let both = unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(p.cast())) };
                let shifted = _mm256_srlv_epi64(both, _mm256_set_epi64x(4, 4, 0, 0));
                _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F))
            }

            /// The fifth bits (u32 at `p`) as 0x10 in the bytes where set.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn fifth_bits(p: *const u8) -> __m256i {
                // SAFETY: the caller guarantees 4 readable bytes at `p`.
                let bits = unsafe { p.cast::<i32>().read_unaligned() };
                let shuf = _mm256_set_epi64x(
                    0x0303030303030303,
                    0x0202020202020202,
                    0x0101010101010101,
                    0,
                );
                let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits), shuf);
                let mask = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
                let set = _mm256_cmpeq_epi8(_mm256_or_si256(bytes, mask), _mm256_set1_epi64x(-1));
                _mm256_and_si256(set, _mm256_set1_epi8(0x10))
            }

            #[inline]
            #[target_feature(enable = $feat)]
            fn hsum(x: __m256) -> f32 {
                let r = _mm_add_ps(_mm256_extractf128_ps::<1>(x), _mm256_castps256_ps128(x));
                let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
                _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)))
            }

            format_tile!(q4_0, $feat, $us8, wsize = 18, asize = 34, min = false, offset = 8,
                signed = false, unpack = |p| nibbles(p.add(2)));
            format_tile!(q4_1, $feat, $us8, wsize = 20, asize = 36, min = true, offset = 0,
                signed = false, unpack = |p| nibbles(p.add(4)));
            format_tile!(q5_0, $feat, $us8, wsize = 22, asize = 34, min = false, offset = 16,
                signed = false, unpack = |p| _mm256_or_si256(nibbles(p.add(6)), fifth_bits(p.add(2))));
            format_tile!(q5_1, $feat, $us8, wsize = 24, asize = 36, min = true, offset = 0,
                signed = false, unpack = |p| _mm256_or_si256(nibbles(p.add(8)), fifth_bits(p.add(4))));
            format_tile!(q8_0, $feat, $us8, wsize = 34, asize = 34, min = false,
                offset = if $q8_signed { 0 } else { 128 }, signed = $q8_signed,
                unpack = |p| {
                    let q = _mm256_loadu_si256(p.add(2).cast());
                    if $q8_signed { q } else { _mm256_xor_si256(q, _mm256_set1_epi8(-128)) }
                });

            level_kernels!(@erase q4_0, q4_1, q5_0, q5_1, q8_0);
        }
    };
    (@erase $($ty:ident),*) => {
        /// Type-erased tiles ([`TileFn`]): full-height tiles use the
        /// `SHAPE.rows` instance, shorter ones go row by row.
        pub(crate) mod tile {
            use super::super::TileShape;

            /// # Safety
            /// As [`super::super::TileFn`], for one tile of `R` rows.
            unsafe fn store<const R: usize, const T: usize>(v: [[f32; T]; R], out: *mut f32, os: usize) {
                for (r, row) in v.iter().enumerate() {
                    for (t, x) in row.iter().enumerate() {
                        // SAFETY: the caller's output covers (r, t).
                        unsafe { *out.add(t * os + r) = *x };
                    }
                }
            }

            $(
                /// # Safety
                /// As [`super::super::TileFn`].
                pub(crate) unsafe fn $ty(
                    nb: usize, w: *const u8, ws: usize, nr: usize,
                    a: *const u8, as_: usize, nt: usize, out: *mut f32, os: usize,
                ) {
                    /// # Safety
                    /// As above, for exactly `R` rows.
                    unsafe fn go<const R: usize>(
                        nb: usize, w: *const u8, ws: usize, a: *const u8, as_: usize,
                        nt: usize, out: *mut f32, os: usize,
                    ) {
                        // SAFETY (all arms): forwarded contract.
                        unsafe {
                            match nt {
                                1 => store(super::$ty::<R, 1>(nb, w, ws, a, as_), out, os),
                                2 => store(super::$ty::<R, 2>(nb, w, ws, a, as_), out, os),
                                3 => store(super::$ty::<R, 3>(nb, w, ws, a, as_), out, os),
                                4 => store(super::$ty::<R, 4>(nb, w, ws, a, as_), out, os),
                                _ => {}
                            }
                        }
                    }
                    const SHAPE: TileShape = super::SHAPE;
                    // SAFETY (both branches): forwarded contract.
                    if nr == SHAPE.rows {
                        unsafe { go::<{ SHAPE.rows }>(nb, w, ws, a, as_, nt, out, os) };
                    } else {
                        for r in 0..nr {
                            unsafe { go::<1>(nb, w.add(r * ws), ws, a, as_, nt, out.add(r), os) };
                        }
                    }
                }
            )*
        }
    };
}

level_kernels!(
    avx2,
    "avx2,fma,f16c",
    us8_maddubs,
    true,
    TileShape { rows: 2, tokens: 2 }
);
level_kernels!(
    vnni,
    "avx2,fma,f16c,avx512f,avx512vl,avx512vnni",
    us8_vnni,
    false,
    TileShape { rows: 4, tokens: 4 }
);

/// The tile kernel of `ty` at a level the CPU supports, with its shape.
pub(crate) fn tile_for(ty: GgmlType, level: SimdLevel) -> Option<(TileFn, TileShape)> {
    if !matches!(level, SimdLevel::Avx2 | SimdLevel::Avx512) {
        return None;
    }
    let vnni = level == SimdLevel::Avx512 && super::has_avx512_vnni();
    macro_rules! pick {
        ($($t:ident => $f:ident),*) => {
            match ty {
                $(GgmlType::$t if vnni => (super::x86_512::tile::$f as TileFn, super::x86_512::SHAPE),)*
                $(GgmlType::$t => (avx2::tile::$f as TileFn, avx2::SHAPE),)*
                _ => return None,
            }
        };
    }
    Some(pick!(Q4_0 => q4_0, Q4_1 => q4_1, Q5_0 => q5_0, Q5_1 => q5_1, Q8_0 => q8_0))
}

/// Safe single dots (the 1 × 1 tile): they clamp the block count to what
/// both slices hold.
macro_rules! safe_dot {
    ($($name:ident = $module:ident :: $kernel:ident ($wsize:expr, $asize:expr)),* $(,)?) => {$(
        fn $name(n: usize, w: &[u8], act: &[u8]) -> f32 {
            let nb = (n / 32).min(w.len() / $wsize).min(act.len() / $asize);
            // SAFETY: only handed out by `vec_dot` after the CPU features were
            // detected; `nb` blocks fit both slices.
            unsafe { $module::$kernel::<1, 1>(nb, w.as_ptr(), 0, act.as_ptr(), 0)[0][0] }
        }
    )*};
}

safe_dot!(
    q4_0_avx2 = avx2::q4_0(18, 34),
    q4_1_avx2 = avx2::q4_1(20, 36),
    q5_0_avx2 = avx2::q5_0(22, 34),
    q5_1_avx2 = avx2::q5_1(24, 36),
    q8_0_avx2 = avx2::q8_0(34, 34),
    q4_0_vnni = vnni::q4_0(18, 34),
    q4_1_vnni = vnni::q4_1(20, 36),
    q5_0_vnni = vnni::q5_0(22, 34),
    q5_1_vnni = vnni::q5_1(24, 36),
    q8_0_vnni = vnni::q8_0(34, 34),
);

/// The SIMD dot of `ty` for a level the CPU is known to support (see
/// `usable_level`), or `None` for the scalar level.
pub(super) fn vec_dot(ty: GgmlType, level: SimdLevel) -> Option<VecDotFn> {
    if !matches!(level, SimdLevel::Avx2 | SimdLevel::Avx512) {
        return None;
    }
    let vnni = level == SimdLevel::Avx512 && super::has_avx512_vnni();
    let f: VecDotFn = match (ty, vnni) {
        (GgmlType::Q4_0, true) => q4_0_vnni,
        (GgmlType::Q4_1, true) => q4_1_vnni,
        (GgmlType::Q5_0, true) => q5_0_vnni,
        (GgmlType::Q5_1, true) => q5_1_vnni,
        (GgmlType::Q8_0, true) => q8_0_vnni,
        (GgmlType::Q4_0, false) => q4_0_avx2,
        (GgmlType::Q4_1, false) => q4_1_avx2,
        (GgmlType::Q5_0, false) => q5_0_avx2,
        (GgmlType::Q5_1, false) => q5_1_avx2,
        (GgmlType::Q8_0, false) => q8_0_avx2,
        _ => return None,
    };
    Some(f)
}
