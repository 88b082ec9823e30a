//! Run-time activation quantizers to Q8_0 and Q8_1, bit-identical to ggml's
//! x86 CPU path (`ggml-cpu/arch/x86/quants.c`, `quantize_row_q8_0/1`).
//!
//! These differ from the reference quantizers used for model files:
//! `d = amax / 127` but the multiplier is `127 / amax` (not `1 / d`), and
//! values are rounded half to even. ggml rounds every activation row this
//! way before a quantized matmul, so reproducing llama.cpp's logits needs
//! exactly this rounding. Other families whose `vec_dot_type` is Q8_0
//! (IQ4_NL, MXFP4) call [`quantize_q8_0`] too.

use bytemuck::Zeroable;
use half::f16;

use super::{BlockQ8_0, BlockQ8_1, QK};

/// Rounds half to even, exactly, for `|x| < 2^22` (always the case here:
/// quantized values lie within ±127.0001).
#[inline]
fn round_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    if x.abs() < 4_194_304.0 {
        (x + MAGIC) - MAGIC
    } else {
        x
    }
}

/// The scale and multiplier of one block, as ggml's x86 quantizer has them.
#[inline]
fn scale_of(x: &[f32]) -> (f32, f32) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    (d, id)
}

#[inline]
fn quantize_block(x: &[f32], qs: &mut [i8; QK]) -> f32 {
    let (d, id) = scale_of(x);
    for (q, &v) in qs.iter_mut().zip(x) {
        // `as i8` saturates like the packs instructions do.
        *q = round_even(v * id) as i32 as i8;
    }
    d
}

/// Portable Q8_0 activation quantizer (same bits as the SIMD one).
pub fn quantize_q8_0_scalar(x: &[f32], out: &mut [BlockQ8_0]) {
    for (x, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let d = quantize_block(x, &mut b.qs);
        b.d = f16::from_f32(d);
    }
}

/// Portable Q8_1 activation quantizer (same bits as the SIMD one).
pub fn quantize_q8_1_scalar(x: &[f32], out: &mut [BlockQ8_1]) {
    for (x, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let d = quantize_block(x, &mut b.qs);
        let sum: i32 = b.qs.iter().map(|&q| i32::from(q)).sum();
        b.d = f16::from_f32(d);
        b.s = f16::from_f32(d * sum as f32);
    }
}

/// Whether the AVX2 quantizer is used (the current level, read once).
fn use_simd() -> bool {
    use std::sync::OnceLock;
    static SIMD: OnceLock<bool> = OnceLock::new();
    *SIMD.get_or_init(|| super::usable_level(crate::SimdLevel::current()) >= crate::SimdLevel::Avx2)
}

/// Quantizes whole blocks into raw Q8_0 (`with_sum == false`) or Q8_1 bytes.
fn quantize_raw(x: &[f32], y: &mut [u8], with_sum: bool) {
    let size = if with_sum { 36 } else { 34 };
    #[cfg(target_arch = "x86_64")]
    {
        if use_simd() && !cfg!(miri) {
            let nb = (x.len() / QK).min(y.len() / size);
            // SAFETY: AVX2/FMA/F16C were detected; `nb` blocks fit both slices.
            unsafe { avx2::quantize(x.as_ptr(), y.as_mut_ptr(), nb, with_sum) };
            return;
        }
    }
    let _ = use_simd;
    for (x, o) in x.chunks_exact(QK).zip(y.chunks_exact_mut(size)) {
        if with_sum {
            let mut b = BlockQ8_1::zeroed();
            quantize_q8_1_scalar(x, std::slice::from_mut(&mut b));
            o.copy_from_slice(bytemuck::bytes_of(&b));
        } else {
            let mut b = BlockQ8_0::zeroed();
            quantize_q8_0_scalar(x, std::slice::from_mut(&mut b));
            o.copy_from_slice(bytemuck::bytes_of(&b));
        }
    }
}

/// Quantizes `x` to Q8_0 blocks the way ggml's x86 CPU backend rounds
/// activations. Fills `min(x.len() / 32, out.len())` blocks.
pub fn quantize_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    quantize_raw(x, bytemuck::cast_slice_mut(out), false)
}

/// Quantizes `x` to Q8_1 blocks (with `s = d * sum(q)`) the way ggml's x86
/// CPU backend rounds activations for Q4_1 / Q5_1 weights.
pub fn quantize_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    quantize_raw(x, bytemuck::cast_slice_mut(out), true)
}

/// [`quantize_q8_0`] into raw bytes (any alignment; whole blocks only).
pub fn quantize_q8_0_bytes(x: &[f32], out: &mut [u8]) {
    quantize_raw(x, out, false)
}

/// [`quantize_q8_1`] into raw bytes (any alignment; whole blocks only).
pub fn quantize_q8_1_bytes(x: &[f32], out: &mut [u8]) {
    quantize_raw(x, out, true)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Quantizes `nb` blocks from `x` into Q8_0 (`with_sum == false`, 34-byte
    /// blocks) or Q8_1 (36-byte blocks with `s`) at `y`.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available; `x` must hold `nb * 32` floats
    /// and `y` room for `nb` blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn quantize(x: *const f32, y: *mut u8, nb: usize, with_sum: bool) {
        let (size, qs_off) = if with_sum { (36, 4) } else { (34, 2) };
        let sign = _mm256_set1_ps(-0.0);
        let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for i in 0..nb {
            // SAFETY (whole body): in bounds by the contract above.
            let (xp, yp) = unsafe { (x.add(i * 32), y.add(i * size)) };
            let mut v = unsafe {
                [
                    _mm256_loadu_ps(xp),
                    _mm256_loadu_ps(xp.add(8)),
                    _mm256_loadu_ps(xp.add(16)),
                    _mm256_loadu_ps(xp.add(24)),
                ]
            };
            let mut m = _mm256_andnot_ps(sign, v[0]);
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[1]));
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[2]));
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[3]));
            let mut m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            let amax = _mm_cvtss_f32(m4);
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let mul = _mm256_set1_ps(id);
            let mut q = [_mm256_setzero_si256(); 4];
            for k in 0..4 {
                v[k] = _mm256_round_ps(
                    _mm256_mul_ps(v[k], mul),
                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
                );
                q[k] = _mm256_cvtps_epi32(v[k]);
            }
            let d_bits = f16_bits(d);
            unsafe { yp.cast::<[u8; 2]>().write_unaligned(d_bits.to_le_bytes()) };
            if with_sum {
                let s4 =
                    _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
                let sum = hsum_i32_8(s4);
                let s_bits = f16_bits(d * sum as f32);
                unsafe {
                    yp.add(2)
                        .cast::<[u8; 2]>()
                        .write_unaligned(s_bits.to_le_bytes())
                };
            }
            let a = _mm256_packs_epi32(q[0], q[1]);
            let b = _mm256_packs_epi32(q[2], q[3]);
            let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(a, b), perm);
            unsafe { _mm256_storeu_si256(yp.add(qs_off).cast(), bytes) };
        }
    }

    /// f32 to f16 bits, round to nearest even (F16C, as ggml's CPU macro).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn f16_bits(x: f32) -> u16 {
        let h = _mm_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(_mm_set_ss(x));
        _mm_extract_epi16::<0>(h) as u16
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn hsum_i32_8(a: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256::<1>(a));
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    }
}
