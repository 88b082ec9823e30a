//! AVX2 dot products of Q2_K..Q6_K weights with Q8_K activations,
//! bit-identical to ggml's x86 kernels (see [`super::lanes`]).
//!
//! Every kernel works in exact integers inside a super-block: weight levels
//! are made unsigned bytes, multiplied with the signed activation bytes by
//! `maddubs` (pairs summed into i16 without overflow: |level| ≤ 63), then
//! `madd` with the group scales widens to i32, so lane `l` of a chunk holds
//! weights `4l..4l+4`. What lands in each lane is ggml's choice and fixes
//! the f32 result: Q6_K takes its −32 offset off per lane through `bsums`,
//! Q3_K its −4 per element; Q2_K fuses its mins into the main lanes, Q4_K
//! into a separate four-lane accumulator, Q5_K into one scalar.
//!
//! The kernels read raw bytes with unaligned loads; the safe wrappers bound
//! the block count by both slices, and `kernels()` hands them out only when
//! the CPU has AVX2, FMA and F16C.

use std::arch::x86_64::*;

use super::blocks::{k4_scales_mins, q3k_scales, BlockQ2_K, BlockQ3_K, BlockQ4_K};
use super::blocks::{BlockQ5_K, BlockQ6_K, BlockQ8_K};
use super::dot_blocks;
use crate::dispatch::VecDotFn;

pub(super) const Q2_K: VecDotFn = dot_q2_k;
pub(super) const Q3_K: VecDotFn = dot_q3_k;
pub(super) const Q4_K: VecDotFn = dot_q4_k;
pub(super) const Q5_K: VecDotFn = dot_q5_k;
pub(super) const Q6_K: VecDotFn = dot_q6_k;

/// Byte offsets inside a Q8_K block.
pub(super) const Q8_QS: usize = 4;
pub(super) const Q8_BSUMS: usize = 260;
pub(super) const Q8_SIZE: usize = std::mem::size_of::<BlockQ8_K>();

macro_rules! safe_wrapper {
    ($name:ident, $block:ty, $kernel:ident) => {
        fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
            let nb = dot_blocks::<$block>(n, w, a);
            // SAFETY: `nb` whole blocks fit in both slices, and this wrapper
            // is only reachable through `kernels()`, which checks that the
            // CPU has AVX2, FMA and F16C.
            unsafe { $kernel(nb, w.as_ptr(), a.as_ptr()) }
        }
    };
}

safe_wrapper!(dot_q2_k, BlockQ2_K, q2_k);
safe_wrapper!(dot_q3_k, BlockQ3_K, q3_k);
safe_wrapper!(dot_q4_k, BlockQ4_K, q4_k);
safe_wrapper!(dot_q5_k, BlockQ5_K, q5_k);
safe_wrapper!(dot_q6_k, BlockQ6_K, q6_k);

/// Byte-shuffle controls that spread the i16 pair `(2p, 2p+1)` … as bytes:
/// row `p` selects byte `2p` eight times, then byte `2p + 1` eight times.
static PAIR_CTRL: [[u8; 16]; 8] = {
    let mut t = [[0u8; 16]; 8];
    let mut p = 0;
    while p < 8 {
        let mut i = 0;
        while i < 16 {
            t[p][i] = (2 * p + i / 8) as u8;
            i += 1;
        }
        p += 1;
    }
    t
};

/// Row `k` broadcasts i16 element `k` of a 128-bit lane (bytes `2k, 2k+1`).
static WORD_CTRL: [[u8; 16]; 8] = {
    let mut t = [[0u8; 16]; 8];
    let mut k = 0;
    while k < 8 {
        let mut i = 0;
        while i < 16 {
            t[k][i] = (2 * k + i % 2) as u8;
            i += 1;
        }
        k += 1;
    }
    t
};

#[inline(always)]
pub(super) unsafe fn load128(p: *const u8) -> __m128i {
    unsafe { _mm_loadu_si128(p as *const __m128i) }
}

#[inline(always)]
pub(super) unsafe fn load256(p: *const u8) -> __m256i {
    unsafe { _mm256_loadu_si256(p as *const __m256i) }
}

/// Two consecutive f16 values at `p`, as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16x2(p: *const u8) -> (f32, f32) {
    let bits = unsafe { (p as *const u32).read_unaligned() };
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
}

/// One f16 value at `p`, as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16x1(p: *const u8) -> f32 {
    let bits = unsafe { (p as *const u16).read_unaligned() };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// The f32 scale `d` of the Q8_K block at `y`.
#[inline(always)]
pub(super) unsafe fn q8_d(y: *const u8) -> f32 {
    unsafe { (y as *const f32).read_unaligned() }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum_ps(v: __m256) -> f32 {
    hsum128_ps(_mm_add_ps(
        _mm256_castps256_ps128(v),
        _mm256_extractf128_ps::<1>(v),
    ))
}

/// Scales of groups `2p` and `2p+1` (16 weights each) from sixteen i8
/// scales: i16, the first in the low 128-bit lane, the second in the high.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale_pair(sc: __m128i, p: usize) -> __m256i {
    let ctrl = unsafe { load128(PAIR_CTRL[p].as_ptr()) };
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc, ctrl))
}

/// `Σ sc[g] · bsums[g]` lane-wise (8 × i32) for sixteen i8 scales.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scaled_bsums(y: *const u8, sc: __m128i) -> __m256i {
    let bsums = unsafe { load256(y.add(Q8_BSUMS)) };
    _mm256_madd_epi16(bsums, _mm256_cvtepi8_epi16(sc))
}

/// Q4_K/Q5_K: `Σ m[j] · (bsums[2j] + bsums[2j+1])`, as four i32 partial
/// sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn k4_min_sums(y: *const u8, mins: [u8; 8]) -> __m128i {
    let bsums = unsafe { load256(y.add(Q8_BSUMS)) };
    let pairs = _mm_hadd_epi16(
        _mm256_castsi256_si128(bsums),
        _mm256_extracti128_si256::<1>(bsums),
    );
    let m = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(i64::from_le_bytes(mins)));
    _mm_madd_epi16(pairs, m)
}

/// Sum of the four i32 lanes (exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum128_epi32(v: __m128i) -> i32 {
    let v = _mm_add_epi32(v, _mm_unpackhi_epi64(v, v));
    _mm_cvtsi128_si32(_mm_add_epi32(v, _mm_shuffle_epi32::<1>(v)))
}

/// Sum of the four lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum128_ps(s: __m128) -> f32 {
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// The eight Q4_K/Q5_K group scales as i16, repeated in both 128-bit lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn k4_scales_i16(sc: [u8; 8]) -> __m128i {
    _mm_cvtepu8_epi16(_mm_cvtsi64_si128(i64::from_le_bytes(sc)))
}

/// Broadcast i16 element `k` of `v` (both lanes hold the same 8 values).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn word(v: __m256i, k: usize) -> __m256i {
    let ctrl = unsafe { load128(WORD_CTRL[k].as_ptr()) };
    _mm256_shuffle_epi8(v, _mm256_broadcastsi128_si256(ctrl))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k(nb: usize, w: *const u8, a: *const u8) -> f32 {
    let m4 = _mm256_set1_epi8(0x0f);
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = _mm_setzero_ps();
    for i in 0..nb {
        let (x, y) = unsafe { (w.add(i * 144), a.add(i * Q8_SIZE)) };
        let yd = unsafe { q8_d(y) };
        let (d, dmin) = unsafe { f16x2(x) };
        let packed: &[u8; 12] = unsafe { &*(x.add(4) as *const [u8; 12]) };
        let (sc, mn) = k4_scales_mins(packed);
        let mins = unsafe { k4_min_sums(y, mn) };
        acc_m = _mm_fmadd_ps(_mm_set1_ps(-yd * dmin), _mm_cvtepi32_ps(mins), acc_m);
        let scales = _mm256_broadcastsi128_si256(k4_scales_i16(sc));
        let mut sumi = _mm256_setzero_si256();
        for c in 0..4 {
            let q = unsafe { load256(x.add(16 + 32 * c)) };
            let lo = _mm256_and_si256(q, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
            let q8l = unsafe { load256(y.add(Q8_QS + 64 * c)) };
            let q8h = unsafe { load256(y.add(Q8_QS + 64 * c + 32)) };
            let pl = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, q8l), unsafe {
                word(scales, 2 * c)
            });
            let ph = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, q8h), unsafe {
                word(scales, 2 * c + 1)
            });
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(yd * d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) + hsum128_ps(acc_m)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_k(nb: usize, w: *const u8, a: *const u8) -> f32 {
    let m4 = _mm256_set1_epi8(0x0f);
    let bit4 = _mm256_set1_epi8(0x10);
    let mut acc = _mm256_setzero_ps();
    // Unlike Q4_K, ggml sums the mins exactly per block and fuses them into
    // one scalar.
    let mut summs = 0f32;
    for i in 0..nb {
        let (x, y) = unsafe { (w.add(i * 176), a.add(i * Q8_SIZE)) };
        let yd = unsafe { q8_d(y) };
        let (d, dmin) = unsafe { f16x2(x) };
        let packed: &[u8; 12] = unsafe { &*(x.add(4) as *const [u8; 12]) };
        let (sc, mn) = k4_scales_mins(packed);
        let mins = unsafe { k4_min_sums(y, mn) };
        summs = (-yd * dmin).mul_add(hsum128_epi32(mins) as f32, summs);
        let scales = _mm256_broadcastsi128_si256(k4_scales_i16(sc));
        // Bits 2c and 2c+1 of each qh byte are the fifth bits of chunk c;
        // shifting right by 2 per chunk brings them to bits 0 and 1.
        let mut qh = unsafe { load256(x.add(16)) };
        let mut sumi = _mm256_setzero_si256();
        for c in 0..4 {
            let q = unsafe { load256(x.add(48 + 32 * c)) };
            let lo = _mm256_or_si256(
                _mm256_and_si256(q, m4),
                _mm256_and_si256(_mm256_slli_epi16::<4>(qh), bit4),
            );
            let hi = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4),
                _mm256_and_si256(_mm256_slli_epi16::<3>(qh), bit4),
            );
            qh = _mm256_srli_epi16::<2>(qh);
            let q8l = unsafe { load256(y.add(Q8_QS + 64 * c)) };
            let q8h = unsafe { load256(y.add(Q8_QS + 64 * c + 32)) };
            let pl = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, q8l), unsafe {
                word(scales, 2 * c)
            });
            let ph = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, q8h), unsafe {
                word(scales, 2 * c + 1)
            });
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(yd * d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) + summs
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k(nb: usize, w: *const u8, a: *const u8) -> f32 {
    let m4 = _mm256_set1_epi8(0x0f);
    let m30 = _mm256_set1_epi8(0x30);
    let mut acc = _mm256_setzero_ps();
    for i in 0..nb {
        let (x, y) = unsafe { (w.add(i * 210), a.add(i * Q8_SIZE)) };
        let d = unsafe { q8_d(y) * f16x1(x.add(208)) };
        let sc = unsafe { load128(x.add(192)) };
        // Levels are stored as value + 32: take 32·Σ sc·bsums off at the end.
        let offset = unsafe { scaled_bsums(y, sc) };
        let mut sumi = _mm256_setzero_si256();
        for h in 0..2 {
            let ql0 = unsafe { load256(x.add(64 * h)) };
            let ql1 = unsafe { load256(x.add(64 * h + 32)) };
            let qh = unsafe { load256(x.add(128 + 32 * h)) };
            let q = [
                _mm256_or_si256(
                    _mm256_and_si256(ql0, m4),
                    _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(ql1, m4),
                    _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                    _mm256_and_si256(qh, m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                    _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m30),
                ),
            ];
            for (k, q) in q.into_iter().enumerate() {
                let q8 = unsafe { load256(y.add(Q8_QS + 128 * h + 32 * k)) };
                let p = _mm256_maddubs_epi16(q, q8);
                let s = unsafe { scale_pair(sc, 4 * h + k) };
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, s));
            }
        }
        sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32::<5>(offset));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q3_k(nb: usize, w: *const u8, a: *const u8) -> f32 {
    let m3 = _mm256_set1_epi8(3);
    let bit2 = _mm256_set1_epi8(4);
    let mut acc = _mm256_setzero_ps();
    for i in 0..nb {
        let (x, y) = unsafe { (w.add(i * 110), a.add(i * Q8_SIZE)) };
        let d = unsafe { q8_d(y) * f16x1(x.add(108)) };
        let packed: &[u8; 12] = unsafe { &*(x.add(96) as *const [u8; 12]) };
        let scales = q3k_scales(packed);
        let sc = unsafe { load128(scales.as_ptr() as *const u8) };
        // ggml's lanes hold the signed values' products, so the −4 of a
        // clear high bit is taken off per element (a second `maddubs`), not
        // through `bsums`.
        let mut hm = unsafe { load256(x) };
        let mut sumi = _mm256_setzero_si256();
        for h in 0..2 {
            let mut qs = unsafe { load256(x.add(32 + 32 * h)) };
            for j in 0..4 {
                let low = _mm256_and_si256(qs, m3);
                let minus4 = _mm256_andnot_si256(_mm256_slli_epi16::<2>(hm), bit2);
                qs = _mm256_srli_epi16::<2>(qs);
                hm = _mm256_srli_epi16::<1>(hm);
                let q8 = unsafe { load256(y.add(Q8_QS + 128 * h + 32 * j)) };
                let p = _mm256_sub_epi16(
                    _mm256_maddubs_epi16(low, q8),
                    _mm256_maddubs_epi16(minus4, q8),
                );
                let s = unsafe { scale_pair(sc, 4 * h + j) };
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, s));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q2_k(nb: usize, w: *const u8, a: *const u8) -> f32 {
    let m3 = _mm256_set1_epi8(3);
    let m4 = _mm_set1_epi8(0x0f);
    let mut acc = _mm256_setzero_ps();
    for i in 0..nb {
        let (x, y) = unsafe { (w.add(i * 84), a.add(i * Q8_SIZE)) };
        let yd = unsafe { q8_d(y) };
        let (d, dmin) = unsafe { f16x2(x.add(80)) };
        let packed = unsafe { load128(x) };
        let sc = _mm_and_si128(packed, m4);
        let mn = _mm_and_si128(_mm_srli_epi16::<4>(packed), m4);
        let mins = unsafe { scaled_bsums(y, mn) };
        // ggml fuses the mins into the same lanes, first.
        acc = _mm256_fmadd_ps(_mm256_set1_ps(-yd * dmin), _mm256_cvtepi32_ps(mins), acc);
        let mut sumi = _mm256_setzero_si256();
        for h in 0..2 {
            let mut qs = unsafe { load256(x.add(16 + 32 * h)) };
            for j in 0..4 {
                let q = _mm256_and_si256(qs, m3);
                qs = _mm256_srli_epi16::<2>(qs);
                let q8 = unsafe { load256(y.add(Q8_QS + 128 * h + 32 * j)) };
                let p = _mm256_maddubs_epi16(q, q8);
                let s = unsafe { scale_pair(sc, 4 * h + j) };
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, s));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(yd * d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}
