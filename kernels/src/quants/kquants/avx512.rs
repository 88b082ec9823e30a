//! AVX-512 (F/BW/VL) dot products of the hot formats, Q4_K and Q6_K, with
//! Q8_K activations, each in a plain and a VNNI flavour (the VNNI one folds
//! the i16 → i32 `madd` and the accumulation into one `vpdpwssd`). The
//! other K-quants use their AVX2 kernels at this level.
//!
//! Same integer scheme as [`super::avx2`], on 64-byte registers: a Q4_K
//! block is two 64-byte loads of nibbles, a Q6_K block four 64-element
//! chunks, each rebuilt in natural weight order so the activations load
//! contiguously. Each block's sixteen i32 lanes are folded to ggml's eight
//! before the f32 steps, which are then exactly the AVX2 kernels' (and
//! ggml's).

// The AVX-512 intrinsics are stable since Rust 1.89; the toolchain is 1.95
// while the workspace still declares rust-version 1.85.
#![allow(clippy::incompatible_msrv)]

use std::arch::x86_64::*;

use super::avx2::{f16x1, f16x2, hsum128_ps, hsum_ps, k4_min_sums, k4_scales_i16, q8_d};
use super::avx2::{Q8_BSUMS, Q8_QS, Q8_SIZE};
use super::blocks::{k4_scales_mins, BlockQ4_K, BlockQ6_K};
use super::dot_blocks;
use crate::dispatch::VecDotFn;

pub(super) const Q4_K: VecDotFn = dot_q4_k;
pub(super) const Q4_K_VNNI: VecDotFn = dot_q4_k_vnni;
pub(super) const Q6_K: VecDotFn = dot_q6_k;
pub(super) const Q6_K_VNNI: VecDotFn = dot_q6_k_vnni;

macro_rules! safe_wrapper {
    ($name:ident, $block:ty, $kernel:ident) => {
        fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
            let nb = dot_blocks::<$block>(n, w, a);
            // SAFETY: `nb` whole blocks fit in both slices, and this wrapper
            // is only reachable through `kernels()`, which checks the CPU
            // features (AVX-512 F/BW/VL plus AVX2/FMA/F16C, and VNNI for the
            // VNNI kernels).
            unsafe { $kernel(nb, w.as_ptr(), a.as_ptr()) }
        }
    };
}

safe_wrapper!(dot_q4_k, BlockQ4_K, q4_k);
safe_wrapper!(dot_q4_k_vnni, BlockQ4_K, q4_k_vnni);
safe_wrapper!(dot_q6_k, BlockQ6_K, q6_k);
safe_wrapper!(dot_q6_k_vnni, BlockQ6_K, q6_k_vnni);

/// Shuffle controls for Q4_K: entry `t` broadcasts i16 element `2t` of
/// each 128-bit lane into lanes 0–1 and element `2t + 1` into lanes 2–3.
static K4_SCALE_CTRL: [[u8; 64]; 4] = {
    let mut t = [[0u8; 64]; 4];
    let mut e = 0;
    while e < 4 {
        let mut i = 0;
        while i < 64 {
            let word = 2 * e + i / 32;
            t[e][i] = (2 * word + i % 2) as u8;
            i += 1;
        }
        e += 1;
    }
    t
};

/// Permutation indices for Q6_K: entry `c` spreads i16 scales `4c..4c+4`
/// over 32 lanes, eight each.
static K6_SCALE_IDX: [[u16; 32]; 4] = {
    let mut t = [[0u16; 32]; 4];
    let mut c = 0;
    while c < 4 {
        let mut i = 0;
        while i < 32 {
            t[c][i] = (4 * c + i / 8) as u16;
            i += 1;
        }
        c += 1;
    }
    t
};

#[inline(always)]
unsafe fn load512(p: *const u8) -> __m512i {
    unsafe { _mm512_loadu_si512(p as *const __m512i) }
}

/// ggml's eight i32 lanes from sixteen: each 64-byte register holds two
/// 32-weight chunks in weight order, so lanes `l` and `l + 8` belong to the
/// same ggml lane (integer adds: exact).
#[inline]
#[target_feature(enable = "avx512f,avx2")]
fn fold(v: __m512i) -> __m256i {
    _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v))
}

/// `acc + Σ a·b` over i16 pairs, with or without VNNI.
macro_rules! dot_acc {
    (vnni, $acc:expr, $a:expr, $b:expr) => {
        _mm512_dpwssd_epi32($acc, $a, $b)
    };
    (plain, $acc:expr, $a:expr, $b:expr) => {
        _mm512_add_epi32($acc, _mm512_madd_epi16($a, $b))
    };
}

macro_rules! q4_k_kernel {
    ($name:ident, $mode:ident, $features:literal) => {
        #[target_feature(enable = $features)]
        unsafe fn $name(nb: usize, w: *const u8, a: *const u8) -> f32 {
            let m4 = _mm512_set1_epi8(0x0f);
            let ctrl = unsafe {
                [
                    load512(K4_SCALE_CTRL[0].as_ptr()),
                    load512(K4_SCALE_CTRL[1].as_ptr()),
                    load512(K4_SCALE_CTRL[2].as_ptr()),
                    load512(K4_SCALE_CTRL[3].as_ptr()),
                ]
            };
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
                let scales = _mm512_broadcast_i32x4(k4_scales_i16(sc));
                let mut sumi = _mm512_setzero_si512();
                for half in 0..2 {
                    // Nibbles of 64 bytes: low = groups (4h, 4h+2), high =
                    // groups (4h+1, 4h+3), 32 bytes each; regroup by 128-bit
                    // lanes into weight order.
                    let q = unsafe { load512(x.add(16 + 64 * half)) };
                    let lo = _mm512_and_si512(q, m4);
                    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4);
                    let v0 = _mm512_shuffle_i64x2::<0x44>(lo, hi);
                    let v1 = _mm512_shuffle_i64x2::<0xEE>(lo, hi);
                    let q80 = unsafe { load512(y.add(Q8_QS + 128 * half)) };
                    let q81 = unsafe { load512(y.add(Q8_QS + 128 * half + 64)) };
                    let p0 = _mm512_maddubs_epi16(v0, q80);
                    let p1 = _mm512_maddubs_epi16(v1, q81);
                    let s0 = _mm512_shuffle_epi8(scales, ctrl[2 * half]);
                    let s1 = _mm512_shuffle_epi8(scales, ctrl[2 * half + 1]);
                    sumi = dot_acc!($mode, sumi, p0, s0);
                    sumi = dot_acc!($mode, sumi, p1, s1);
                }
                let sumi = fold(sumi);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(yd * d), _mm256_cvtepi32_ps(sumi), acc);
            }
            hsum_ps(acc) + hsum128_ps(acc_m)
        }
    };
}

q4_k_kernel!(q4_k, plain, "avx512f,avx512bw,avx512vl,avx2,fma,f16c");
q4_k_kernel!(
    q4_k_vnni,
    vnni,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"
);

macro_rules! q6_k_kernel {
    ($name:ident, $mode:ident, $features:literal) => {
        #[target_feature(enable = $features)]
        unsafe fn $name(nb: usize, w: *const u8, a: *const u8) -> f32 {
            let m4 = _mm512_set1_epi8(0x0f);
            let m30 = _mm512_set1_epi8(0x30);
            let idx = unsafe {
                [
                    load512(K6_SCALE_IDX[0].as_ptr() as *const u8),
                    load512(K6_SCALE_IDX[1].as_ptr() as *const u8),
                    load512(K6_SCALE_IDX[2].as_ptr() as *const u8),
                    load512(K6_SCALE_IDX[3].as_ptr() as *const u8),
                ]
            };
            let mut acc = _mm256_setzero_ps();
            for i in 0..nb {
                let (x, y) = unsafe { (w.add(i * 210), a.add(i * Q8_SIZE)) };
                let d = unsafe { q8_d(y) * f16x1(x.add(208)) };
                let sc8 = unsafe { _mm_loadu_si128(x.add(192) as *const __m128i) };
                let sc16 = _mm256_cvtepi8_epi16(sc8);
                let scales = _mm512_castsi256_si512(sc16);
                // Levels are value + 32: take 32·Σ sc·bsums off at the end.
                let bsums = unsafe { _mm256_loadu_si256(y.add(Q8_BSUMS) as *const __m256i) };
                let offset = _mm256_madd_epi16(bsums, sc16);
                let mut sumi = _mm512_setzero_si512();
                for h in 0..2 {
                    // Low nibbles of ql[64h..64h+64] are weights 0..64 of
                    // this half, high nibbles weights 64..128; their top
                    // bits are qh bit pairs 0,1 / 2,3 / 4,5 / 6,7.
                    let ql = unsafe { load512(x.add(64 * h)) };
                    let qh = unsafe { _mm256_loadu_si256(x.add(128 + 32 * h) as *const __m256i) };
                    let qhx = _mm512_inserti64x4::<1>(
                        _mm512_castsi256_si512(qh),
                        _mm256_srli_epi16::<2>(qh),
                    );
                    let va = _mm512_or_si512(
                        _mm512_and_si512(ql, m4),
                        _mm512_and_si512(_mm512_slli_epi16::<4>(qhx), m30),
                    );
                    let vb = _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4),
                        _mm512_and_si512(qhx, m30),
                    );
                    let q8a = unsafe { load512(y.add(Q8_QS + 128 * h)) };
                    let q8b = unsafe { load512(y.add(Q8_QS + 128 * h + 64)) };
                    let pa = _mm512_maddubs_epi16(va, q8a);
                    let pb = _mm512_maddubs_epi16(vb, q8b);
                    let sa = _mm512_permutexvar_epi16(idx[2 * h], scales);
                    let sb = _mm512_permutexvar_epi16(idx[2 * h + 1], scales);
                    sumi = dot_acc!($mode, sumi, pa, sa);
                    sumi = dot_acc!($mode, sumi, pb, sb);
                }
                let sumi = _mm256_sub_epi32(fold(sumi), _mm256_slli_epi32::<5>(offset));
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
            }
            hsum_ps(acc)
        }
    };
}

q6_k_kernel!(q6_k, plain, "avx512f,avx512bw,avx512vl,avx2,fma,f16c");
q6_k_kernel!(
    q6_k_vnni,
    vnni,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"
);
