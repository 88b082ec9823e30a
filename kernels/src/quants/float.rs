//! The float formats F32, F16 and BF16: exact dequantization (f16 through
//! `half`, bf16 as `bits << 16`), conversion from f32 (round to nearest even;
//! bf16 NaNs kept quiet as ggml's `ggml_compute_fp32_to_bf16` does), and
//! dot products F32·F32, F16·F16 and BF16·BF16 accumulated in f32: the
//! `*_ref` ones in 8 plain lanes (the tests' reference), the `*_x86_order`
//! ones (the scalar level's) in the AVX2 kernels' order, to the bit.
//!
//! As in ggml, each float type is its own `vec_dot_type`: activations are
//! rounded to the weight's float type before the dot. The integer types
//! (I8, I16, I32, ...) are not floats and are not handled here.

use half::f16;

use crate::dispatch::{DequantFn, QuantFn, TypeKernels, VecDotFn};
use crate::simd::{portable_kernel, SimdLevel};
use crate::types::GgmlType;

/// f32 to bf16 bits the way ggml rounds: nearest even, NaN forced quiet.
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

/// bf16 bits to f32 (exact).
pub fn bf16_bits_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

fn halves(src: &[u8]) -> impl Iterator<Item = u16> + '_ {
    src.chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
}

fn dequantize_f32(src: &[u8], dst: &mut [f32]) {
    for (c, d) in src.chunks_exact(4).zip(dst.iter_mut()) {
        *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

fn dequantize_f16(src: &[u8], dst: &mut [f32]) {
    for (h, d) in halves(src).zip(dst.iter_mut()) {
        *d = f16::from_bits(h).to_f32();
    }
}

fn dequantize_bf16(src: &[u8], dst: &mut [f32]) {
    for (h, d) in halves(src).zip(dst.iter_mut()) {
        *d = bf16_bits_to_f32(h);
    }
}

fn quantize_f32(src: &[f32], dst: &mut [u8]) {
    for (x, c) in src.iter().zip(dst.chunks_exact_mut(4)) {
        c.copy_from_slice(&x.to_le_bytes());
    }
}

/// f32 → f16, round to nearest even (ggml's `GGML_FP32_TO_FP16`).
pub fn quantize_f16(src: &[f32], dst: &mut [u8]) {
    for (x, c) in src.iter().zip(dst.chunks_exact_mut(2)) {
        c.copy_from_slice(&f16::from_f32(*x).to_bits().to_le_bytes());
    }
}

/// f32 → bf16 (ggml's `GGML_FP32_TO_BF16`).
pub fn quantize_bf16(src: &[f32], dst: &mut [u8]) {
    for (x, c) in src.iter().zip(dst.chunks_exact_mut(2)) {
        c.copy_from_slice(&f32_to_bf16_bits(*x).to_le_bytes());
    }
}

/// Sums `f(i)` for `i < n` in 8 interleaved f32 lanes (the SIMD order, roughly).
fn lane_sum(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    for i in 0..n {
        acc[i % 8] += f(i);
    }
    acc.iter().sum()
}

fn f32_at(b: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}

fn half_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[2 * i], b[2 * i + 1]])
}

/// Scalar reference: F32 weights · F32 activations.
pub fn vec_dot_f32_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let n = n.min(w.len() / 4).min(act.len() / 4);
    lane_sum(n, |i| f32_at(w, i) * f32_at(act, i))
}

/// Scalar reference: F16 weights · F16 activations.
pub fn vec_dot_f16_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let n = n.min(w.len() / 2).min(act.len() / 2);
    let h = |b: &[u8], i| f16::from_bits(half_at(b, i)).to_f32();
    lane_sum(n, |i| h(w, i) * h(act, i))
}

/// Scalar reference: BF16 weights · BF16 activations.
pub fn vec_dot_bf16_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let n = n.min(w.len() / 2).min(act.len() / 2);
    let h = |b: &[u8], i| bf16_bits_to_f32(half_at(b, i));
    lane_sum(n, |i| h(w, i) * h(act, i))
}

/// `Σ w[i]·a[i]` in the order of the AVX2 kernels (the scalar level's
/// dot, so that it gives their bits): four accumulators of 8 lanes fused
/// over steps of 32, one more 8-lane step into the first while 8 remain,
/// `(a0 + a1) + (a2 + a3)` reduced as ggml's `hsum_float_8`, then the last
/// `n % 8` products by `tail`.
#[inline(always)]
fn x86_order_dot(
    n: usize,
    w: &[u8],
    a: &[u8],
    esize: usize,
    at: impl Fn(&[u8], usize) -> f32,
    tail: VecDotFn,
) -> f32 {
    let n = n.min(w.len() / esize).min(a.len() / esize);
    let mut acc = [[0f32; 8]; 4];
    let fma8 = |acc: &mut [f32; 8], i: usize| {
        for (l, s) in acc.iter_mut().enumerate() {
            *s = at(w, i + l).mul_add(at(a, i + l), *s);
        }
    };
    let mut i = 0;
    while i + 32 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            fma8(acc, i + 8 * k);
        }
        i += 32;
    }
    while i + 8 <= n {
        fma8(&mut acc[0], i);
        i += 8;
    }
    let s: [f32; 8] = std::array::from_fn(|l| (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]));
    let r = [s[0] + s[4], s[1] + s[5], s[2] + s[6], s[3] + s[7]];
    let sum = (r[0] + r[2]) + (r[1] + r[3]);
    sum + tail(n - i, &w[i * esize..n * esize], &a[i * esize..n * esize])
}

portable_kernel! {
/// F32 · F32 in the AVX2 kernel's order (what the scalar level runs).
pub fn vec_dot_f32_x86_order(n: usize, w: &[u8], act: &[u8]) -> f32 {
    x86_order_dot(n, w, act, 4, f32_at, vec_dot_f32_ref)
}
}

portable_kernel! {
/// F16 · F16 in the AVX2 kernel's order (what the scalar level runs).
pub fn vec_dot_f16_x86_order(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let h = |b: &[u8], i| f16::from_bits(half_at(b, i)).to_f32();
    x86_order_dot(n, w, act, 2, h, vec_dot_f16_ref)
}
}

portable_kernel! {
/// BF16 · BF16 in the AVX2 kernel's order (what the scalar level runs).
pub fn vec_dot_bf16_x86_order(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let h = |b: &[u8], i| bf16_bits_to_f32(half_at(b, i));
    x86_order_dot(n, w, act, 2, h, vec_dot_bf16_ref)
}
}

#[cfg(target_arch = "x86_64")]
// AVX-512 intrinsics are stable since Rust 1.89 (the toolchain is 1.95).
#[allow(clippy::incompatible_msrv)]
mod x86 {
    //! AVX2 (8 lanes) and AVX-512 (16 lanes) float dots: load, widen to f32
    //! (F16C `vcvtph2ps`, or a 16-bit shift for bf16), and FMA into four
    //! accumulators; the AVX-512 tail uses masked loads.
    use std::arch::x86_64::*;

    /// Bytes ahead of the current position that the weight stream is prefetched.
    const PREFETCH: usize = 8192;

    macro_rules! avx2_dot {
        ($name:ident, $esize:expr, $tail:path, |$p:ident| $load:expr) => {
            /// # Safety
            /// AVX2/FMA/F16C available; `w` and `a` hold `n` elements.
            #[target_feature(enable = "avx2,fma,f16c")]
            pub(super) unsafe fn $name(n: usize, w: *const u8, a: *const u8) -> f32 {
                let ld = |$p: *const u8| -> __m256 { unsafe { $load } };
                let mut acc = [_mm256_setzero_ps(); 4];
                let mut i = 0;
                // SAFETY (all pointer offsets): i + lanes <= n.
                unsafe {
                    while i + 32 <= n {
                        // Weights stream once per product: fetch well ahead.
                        for l in 0..$esize / 2 {
                            let pf = w.wrapping_add(i * $esize + 64 * l + PREFETCH);
                            _mm_prefetch::<_MM_HINT_T0>(pf.cast());
                        }
                        for k in 0..4 {
                            let o = (i + 8 * k) * $esize;
                            acc[k] = _mm256_fmadd_ps(ld(w.add(o)), ld(a.add(o)), acc[k]);
                        }
                        i += 32;
                    }
                    while i + 8 <= n {
                        let o = i * $esize;
                        acc[0] = _mm256_fmadd_ps(ld(w.add(o)), ld(a.add(o)), acc[0]);
                        i += 8;
                    }
                }
                let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
                let r = _mm_add_ps(_mm256_extractf128_ps::<1>(s), _mm256_castps256_ps128(s));
                let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
                let mut sum = _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)));
                let (wt, at) = unsafe {
                    (
                        std::slice::from_raw_parts(w.add(i * $esize), (n - i) * $esize),
                        std::slice::from_raw_parts(a.add(i * $esize), (n - i) * $esize),
                    )
                };
                sum += $tail(n - i, wt, at);
                sum
            }
        };
    }

    macro_rules! avx512_dot {
        ($name:ident, $esize:expr, |$p:ident, $m:ident| $load:expr) => {
            /// # Safety
            /// AVX-512 F/BW/VL available; `w` and `a` hold `n` elements.
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
            pub(super) unsafe fn $name(n: usize, w: *const u8, a: *const u8) -> f32 {
                let ld = |$p: *const u8, $m: u16| -> __m512 { unsafe { $load } };
                let mut acc = [_mm512_setzero_ps(); 4];
                let mut i = 0;
                // SAFETY (all pointer offsets): masked lanes stay below n.
                unsafe {
                    while i + 64 <= n {
                        for l in 0..$esize {
                            let pf = w.wrapping_add(i * $esize + 64 * l + PREFETCH);
                            _mm_prefetch::<_MM_HINT_T0>(pf.cast());
                        }
                        for k in 0..4 {
                            let o = (i + 16 * k) * $esize;
                            acc[k] = _mm512_fmadd_ps(ld(w.add(o), !0), ld(a.add(o), !0), acc[k]);
                        }
                        i += 64;
                    }
                    while i < n {
                        let m = if n - i >= 16 {
                            !0u16
                        } else {
                            (1u16 << (n - i)) - 1
                        };
                        let o = i * $esize;
                        acc[0] = _mm512_fmadd_ps(ld(w.add(o), m), ld(a.add(o), m), acc[0]);
                        i += 16;
                    }
                }
                let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
                _mm512_reduce_add_ps(s)
            }
        };
    }

    avx2_dot!(f32_avx2, 4, super::vec_dot_f32_ref, |p| _mm256_loadu_ps(
        p.cast()
    ));
    avx2_dot!(f16_avx2, 2, super::vec_dot_f16_ref, |p| _mm256_cvtph_ps(
        _mm_loadu_si128(p.cast())
    ));
    avx2_dot!(bf16_avx2, 2, super::vec_dot_bf16_ref, |p| {
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
            _mm_loadu_si128(p.cast()),
        )))
    });
    avx512_dot!(f32_avx512, 4, |p, m| _mm512_maskz_loadu_ps(m, p.cast()));
    avx512_dot!(f16_avx512, 2, |p, m| _mm512_cvtph_ps(
        _mm256_maskz_loadu_epi16(m, p.cast())
    ));
    avx512_dot!(bf16_avx512, 2, |p, m| _mm512_castsi512_ps(
        _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p.cast())))
    ));

    /// Safe entry points: they clamp `n` to what both slices hold.
    macro_rules! safe_dot {
        ($name:ident, $kernel:ident, $esize:expr) => {
            pub(super) fn $name(n: usize, w: &[u8], act: &[u8]) -> f32 {
                let n = n.min(w.len() / $esize).min(act.len() / $esize);
                // SAFETY: only handed out by `vec_dot_for` after the CPU
                // features were detected; `n` elements fit both slices.
                unsafe { $kernel(n, w.as_ptr(), act.as_ptr()) }
            }
        };
    }

    safe_dot!(dot_f32_avx2, f32_avx2, 4);
    safe_dot!(dot_f16_avx2, f16_avx2, 2);
    safe_dot!(dot_bf16_avx2, bf16_avx2, 2);
    safe_dot!(dot_f32_avx512, f32_avx512, 4);
    safe_dot!(dot_f16_avx512, f16_avx512, 2);
    safe_dot!(dot_bf16_avx512, bf16_avx512, 2);
}

/// The dot of float type `ty` at `level`, lowered to what the CPU has.
pub(crate) fn vec_dot_for(ty: GgmlType, level: SimdLevel) -> Option<VecDotFn> {
    let scalar: VecDotFn = match ty {
        GgmlType::F32 => vec_dot_f32_x86_order,
        GgmlType::F16 => vec_dot_f16_x86_order,
        GgmlType::BF16 => vec_dot_bf16_x86_order,
        _ => return None,
    };
    #[cfg(target_arch = "x86_64")]
    {
        use super::legacy::usable_level;
        let f: VecDotFn = match (ty, usable_level(level)) {
            (GgmlType::F32, SimdLevel::Avx512) => x86::dot_f32_avx512,
            (GgmlType::F16, SimdLevel::Avx512) => x86::dot_f16_avx512,
            (GgmlType::BF16, SimdLevel::Avx512) => x86::dot_bf16_avx512,
            (GgmlType::F32, SimdLevel::Avx2) => x86::dot_f32_avx2,
            (GgmlType::F16, SimdLevel::Avx2) => x86::dot_f16_avx2,
            (GgmlType::BF16, SimdLevel::Avx2) => x86::dot_bf16_avx2,
            _ => scalar,
        };
        Some(f)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = level;
        Some(scalar)
    }
}

/// The dispatch entry: F32, F16 and BF16 at `level`.
pub(crate) fn kernels(ty: GgmlType, level: SimdLevel) -> Option<TypeKernels> {
    let (dequantize, quantize): (DequantFn, QuantFn) = match ty {
        GgmlType::F32 => (dequantize_f32, quantize_f32),
        GgmlType::F16 => (dequantize_f16, quantize_f16),
        GgmlType::BF16 => (dequantize_bf16, quantize_bf16),
        _ => return None,
    };
    Some(TypeKernels {
        ty,
        dequantize,
        quantize: Some(quantize),
        vec_dot_type: ty,
        vec_dot: vec_dot_for(ty, level),
    })
}
