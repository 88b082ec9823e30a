//! Attention's value sum read straight from a KV cache's stored rows:
//! `out[c] = Σ_j p_j · v_j[c]` where the rows `v_j` are f32, f16, q8_0 or
//! q4_0, each element dequantized in a register as it is used (as ggml's
//! `dequantize_row_*` would give it, `x = d · q`) and fused-multiply-added
//! into the accumulator of its cell's lane. There is no dequantized copy
//! of the cache, so a decode step costs the bytes of the rows it reads.
//!
//! The lanes and their final reduction are [`super::weighted_sum_v`]'s (ggml's
//! order for the [`VSumOrder`]), so the sum is the same to the bit as that
//! function's over the dequantized rows, at every SIMD level: the levels
//! differ only in how many columns one instruction carries.

use half::f16;

use super::attn::VSumOrder;
use crate::simd::SimdLevel;
use crate::types::GgmlType;
use crate::KernelError;

/// One attention head's value rows in a cache: row `j` is `d` values of
/// `ty` starting at byte `offset + j · stride` of `data`.
#[derive(Clone, Copy, Debug)]
pub struct ValueRows<'a> {
    ty: GgmlType,
    data: &'a [u8],
    stride: usize,
    offset: usize,
    d: usize,
    row_bytes: usize,
}

impl<'a> ValueRows<'a> {
    /// Rows of `ty` (f32, f16, q8_0 or q4_0); `d` must be whole blocks.
    pub fn new(
        ty: GgmlType,
        data: &'a [u8],
        stride: usize,
        offset: usize,
        d: usize,
    ) -> Result<ValueRows<'a>, KernelError> {
        if !matches!(
            ty,
            GgmlType::F32 | GgmlType::F16 | GgmlType::Q8_0 | GgmlType::Q4_0
        ) {
            return Err(KernelError::Unsupported(ty, "value sum"));
        }
        let row_bytes = ty.row_bytes(d).ok_or(KernelError::NotBlockMultiple {
            ty,
            len: d,
            block: ty.block_size(),
        })?;
        Ok(ValueRows {
            ty,
            data,
            stride,
            offset,
            d,
            row_bytes,
        })
    }

    /// f32 rows: row `j` is `data[offset + j · stride..][..d]` (in values).
    pub fn f32(data: &'a [f32], stride: usize, offset: usize, d: usize) -> ValueRows<'a> {
        ValueRows {
            ty: GgmlType::F32,
            data: bytemuck::cast_slice(data),
            stride: stride * 4,
            offset: offset * 4,
            d,
            row_bytes: d * 4,
        }
    }

    /// The same rows `bytes` further on (another head's slice).
    pub fn offset_by(self, bytes: usize) -> ValueRows<'a> {
        ValueRows {
            offset: self.offset + bytes,
            ..self
        }
    }

    /// The stored type.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// The stored bytes of row `j`.
    #[inline]
    pub fn row(&self, j: usize) -> &'a [u8] {
        let at = self.offset + j * self.stride;
        &self.data[at..at + self.row_bytes]
    }
}

#[inline(always)]
fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32()
}

/// `acc[c] = fma(v[c], w, acc[c])` for one stored row: the reference.
#[inline(always)]
fn axpy_portable(ty: GgmlType, src: &[u8], w: f32, acc: &mut [f32]) {
    match ty {
        GgmlType::F32 => {
            for (a, x) in acc.iter_mut().zip(src.chunks_exact(4)) {
                let x = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
                *a = x.mul_add(w, *a);
            }
        }
        GgmlType::F16 => {
            for (i, a) in acc.iter_mut().enumerate() {
                *a = half_at(src, i).mul_add(w, *a);
            }
        }
        GgmlType::Q8_0 => {
            for (b, a) in src.chunks_exact(34).zip(acc.chunks_exact_mut(32)) {
                let d = half_at(b, 0);
                for (k, a) in a.iter_mut().enumerate() {
                    let x = f32::from(b[2 + k] as i8) * d;
                    *a = x.mul_add(w, *a);
                }
            }
        }
        GgmlType::Q4_0 => {
            for (b, a) in src.chunks_exact(18).zip(acc.chunks_exact_mut(32)) {
                let d = half_at(b, 0);
                for (k, a) in a.iter_mut().enumerate() {
                    let q = if k < 16 {
                        b[2 + k] & 0x0F
                    } else {
                        b[2 + k - 16] >> 4
                    };
                    let x = (i32::from(q) - 8) as f32 * d;
                    *a = x.mul_add(w, *a);
                }
            }
        }
        _ => {}
    }
}

crate::simd::portable_kernel! {
    fn accumulate_portable(p: &[f32], first: usize, rows: &ValueRows<'_>, slots: usize, acc: &mut [f32]) -> () {
        let d = rows.d;
        for (i, &w) in p.iter().enumerate() {
            let cell = first + i;
            let slot = cell % slots;
            axpy_portable(rows.ty, rows.row(cell), w, &mut acc[slot * d..(slot + 1) * d]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::ValueRows;
    use crate::types::GgmlType;
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn scale(b: &[u8]) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
            u16::from_le_bytes([b[0], b[1]]) as i16,
        ))))
    }

    /// One stored row into `acc`, eight columns per instruction.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn axpy_avx2(ty: GgmlType, src: &[u8], w: f32, acc: &mut [f32]) {
        let wv = _mm256_set1_ps(w);
        let a = acc.as_mut_ptr();
        let s = src.as_ptr();
        // SAFETY (every access below): `src` holds `acc.len()` values of
        // `ty` (whole blocks), checked by the caller's `ValueRows`.
        unsafe {
            match ty {
                GgmlType::F32 => {
                    let n = acc.len() & !7;
                    for c in (0..n).step_by(8) {
                        let x = _mm256_loadu_ps(s.add(4 * c) as *const f32);
                        let y = _mm256_fmadd_ps(x, wv, _mm256_loadu_ps(a.add(c)));
                        _mm256_storeu_ps(a.add(c), y);
                    }
                    super::axpy_portable(ty, &src[4 * n..], w, &mut acc[n..]);
                }
                GgmlType::F16 => {
                    let n = acc.len() & !7;
                    for c in (0..n).step_by(8) {
                        let x = _mm256_cvtph_ps(_mm_loadu_si128(s.add(2 * c) as *const __m128i));
                        let y = _mm256_fmadd_ps(x, wv, _mm256_loadu_ps(a.add(c)));
                        _mm256_storeu_ps(a.add(c), y);
                    }
                    super::axpy_portable(ty, &src[2 * n..], w, &mut acc[n..]);
                }
                GgmlType::Q8_0 => {
                    for b in 0..acc.len() / 32 {
                        let blk = &src[34 * b..34 * b + 34];
                        let d = _mm256_set1_ps(scale(blk));
                        for g in 0..4 {
                            let q = _mm_loadl_epi64(blk.as_ptr().add(2 + 8 * g) as *const __m128i);
                            let x = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d);
                            let at = a.add(32 * b + 8 * g);
                            _mm256_storeu_ps(at, _mm256_fmadd_ps(x, wv, _mm256_loadu_ps(at)));
                        }
                    }
                }
                GgmlType::Q4_0 => {
                    let m4 = _mm_set1_epi8(0x0F);
                    let eight = _mm_set1_epi8(8);
                    for b in 0..acc.len() / 32 {
                        let blk = &src[18 * b..18 * b + 18];
                        let d = _mm256_set1_ps(scale(blk));
                        let bytes = _mm_loadu_si128(blk.as_ptr().add(2) as *const __m128i);
                        let lo = _mm_sub_epi8(_mm_and_si128(bytes, m4), eight);
                        let hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(bytes, 4), m4), eight);
                        let parts = [lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)];
                        for (g, q) in parts.into_iter().enumerate() {
                            let x = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d);
                            let at = a.add(32 * b + 8 * g);
                            _mm256_storeu_ps(at, _mm256_fmadd_ps(x, wv, _mm256_loadu_ps(at)));
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// One stored row into `acc`, sixteen columns per instruction.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn axpy_avx512(ty: GgmlType, src: &[u8], w: f32, acc: &mut [f32]) {
        let wv = _mm512_set1_ps(w);
        let a = acc.as_mut_ptr();
        let s = src.as_ptr();
        // SAFETY (every access below): as in `axpy_avx2`.
        unsafe {
            match ty {
                GgmlType::F32 => {
                    let n = acc.len() & !15;
                    for c in (0..n).step_by(16) {
                        let x = _mm512_loadu_ps(s.add(4 * c) as *const f32);
                        let y = _mm512_fmadd_ps(x, wv, _mm512_loadu_ps(a.add(c)));
                        _mm512_storeu_ps(a.add(c), y);
                    }
                    axpy_avx2(ty, &src[4 * n..], w, &mut acc[n..]);
                }
                GgmlType::F16 => {
                    let n = acc.len() & !15;
                    for c in (0..n).step_by(16) {
                        let x = _mm512_cvtph_ps(_mm256_loadu_si256(s.add(2 * c) as *const __m256i));
                        let y = _mm512_fmadd_ps(x, wv, _mm512_loadu_ps(a.add(c)));
                        _mm512_storeu_ps(a.add(c), y);
                    }
                    axpy_avx2(ty, &src[2 * n..], w, &mut acc[n..]);
                }
                GgmlType::Q8_0 => {
                    for b in 0..acc.len() / 32 {
                        let blk = &src[34 * b..34 * b + 34];
                        let d = _mm512_set1_ps(scale(blk));
                        for g in 0..2 {
                            let q = _mm_loadu_si128(blk.as_ptr().add(2 + 16 * g) as *const __m128i);
                            let x = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), d);
                            let at = a.add(32 * b + 16 * g);
                            _mm512_storeu_ps(at, _mm512_fmadd_ps(x, wv, _mm512_loadu_ps(at)));
                        }
                    }
                }
                GgmlType::Q4_0 => {
                    let m4 = _mm_set1_epi8(0x0F);
                    let eight = _mm_set1_epi8(8);
                    for b in 0..acc.len() / 32 {
                        let blk = &src[18 * b..18 * b + 18];
                        let d = _mm512_set1_ps(scale(blk));
                        let bytes = _mm_loadu_si128(blk.as_ptr().add(2) as *const __m128i);
                        let lo = _mm_sub_epi8(_mm_and_si128(bytes, m4), eight);
                        let hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(bytes, 4), m4), eight);
                        for (g, q) in [lo, hi].into_iter().enumerate() {
                            let x = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), d);
                            let at = a.add(32 * b + 16 * g);
                            _mm512_storeu_ps(at, _mm512_fmadd_ps(x, wv, _mm512_loadu_ps(at)));
                        }
                    }
                }
                _ => {}
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn accumulate_avx2(
        p: &[f32],
        first: usize,
        rows: &ValueRows<'_>,
        slots: usize,
        acc: &mut [f32],
    ) {
        let d = rows.d;
        for (i, &w) in p.iter().enumerate() {
            let cell = first + i;
            let slot = cell % slots;
            // SAFETY: the caller checked AVX2, FMA and F16C.
            unsafe {
                axpy_avx2(
                    rows.ty,
                    rows.row(cell),
                    w,
                    &mut acc[slot * d..(slot + 1) * d],
                )
            };
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn accumulate_avx512(
        p: &[f32],
        first: usize,
        rows: &ValueRows<'_>,
        slots: usize,
        acc: &mut [f32],
    ) {
        let d = rows.d;
        for (i, &w) in p.iter().enumerate() {
            let cell = first + i;
            let slot = cell % slots;
            // SAFETY: the caller checked AVX-512 F/BW/VL.
            unsafe {
                axpy_avx512(
                    rows.ty,
                    rows.row(cell),
                    w,
                    &mut acc[slot * d..(slot + 1) * d],
                )
            };
        }
    }
}

/// Folds the lane accumulators into `out` in ggml's order: per column,
/// `reduce16` of the 16 lanes (VecDot: lane `l` is `(s0 + s2) + (s1 + s3)`
/// of its four accumulators). Written column-wise so it vectorizes.
fn reduce_lanes(acc: &mut [f32], d: usize, out: &mut [f32], order: VSumOrder) {
    if order == VSumOrder::VecDot {
        let (lanes, rest) = acc.split_at_mut(16 * d);
        let (s1, rest) = rest.split_at(16 * d);
        let (s2, s3) = rest.split_at(16 * d);
        for i in 0..16 * d {
            lanes[i] = (lanes[i] + s2[i]) + (s1[i] + s3[i]);
        }
    }
    for i in 0..8 * d {
        acc[i] += acc[8 * d + i];
    }
    for i in 0..4 * d {
        acc[i] += acc[4 * d + i];
    }
    for (c, o) in out.iter_mut().enumerate() {
        *o = (acc[c] + acc[2 * d + c]) + (acc[d + c] + acc[3 * d + c]);
    }
}

/// `out[c] = Σ_i p[i] · v_{first+i}[c]` over stored value rows, summed in
/// ggml's lane order for `order`; bit for bit [`super::weighted_sum_v`] over
/// the rows dequantized. `acc` is scratch, reused between calls.
pub fn weighted_sum_rows(
    p: &[f32],
    first: usize,
    rows: &ValueRows<'_>,
    out: &mut [f32],
    order: VSumOrder,
    acc: &mut Vec<f32>,
) {
    weighted_sum_rows_at(SimdLevel::current(), p, first, rows, out, order, acc)
}

/// [`weighted_sum_rows`] at a given SIMD level (lowered to what the CPU
/// has), so tests can hold every level to the scalar one.
pub fn weighted_sum_rows_at(
    level: SimdLevel,
    p: &[f32],
    first: usize,
    rows: &ValueRows<'_>,
    out: &mut [f32],
    order: VSumOrder,
    acc: &mut Vec<f32>,
) {
    let d = rows.d;
    let slots = match order {
        VSumOrder::Gemm => 16,
        VSumOrder::VecDot => 64,
    };
    acc.clear();
    acc.resize(slots * d, 0.0);
    let level = crate::quants::legacy::usable_level(level);
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `usable_level` checked the CPU has AVX-512 F/BW/VL.
        SimdLevel::Avx512 => unsafe { x86::accumulate_avx512(p, first, rows, slots, acc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `usable_level` checked the CPU has AVX2, FMA and F16C.
        SimdLevel::Avx2 => unsafe { x86::accumulate_avx2(p, first, rows, slots, acc) },
        _ => accumulate_portable(p, first, rows, slots, acc),
    }
    reduce_lanes(acc, d, &mut out[..d], order);
}

#[cfg(test)]
#[path = "vsum_tests.rs"]
mod tests;
