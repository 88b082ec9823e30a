//! The ternary formats of BitNet b1.58 / TriLM models: TQ1_0 (1.69 bpw,
//! five trits per byte in base 3) and TQ2_0 (2.06 bpw, one trit per 2
//! bits). Weights are `d * {-1, 0, 1}` with one f16 scale per 256.
//!
//! Block types, dequantization bit-identical to ggml and ggml's reference
//! quantizers (`quantize_row_tq*_ref`: scale = max |x|, trits = round(x/d)).
//! No `vec_dot`: the matmul dequantizes their rows.

use bytemuck::{Pod, Zeroable};
use half::f16;

use crate::dispatch::TypeKernels;
use crate::quants::iquants::{blocks, with_blocks_mut, QK_K};
use crate::simd::SimdLevel;
use crate::types::GgmlType;

/// TQ1_0 super-block: `qs` holds 240 trits, 5 per byte (the first 32 bytes
/// cover elements 0..160 in 5 planes of 32, the next 16 bytes elements
/// 160..240 in 5 planes of 16); `qh` the last 16, 4 per byte. Each byte is a
/// base-3 fraction scaled to 0..256 (trit `n` = the `n`-th digit after the
/// point), so a trit is read by one multiply and shift.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockTQ1_0 {
    pub qs: [u8; (QK_K - 4 * QK_K / 64) / 5],
    pub qh: [u8; QK_K / 64],
    pub d: f16,
}
const _: () = assert!(std::mem::size_of::<BlockTQ1_0>() == 54);

/// TQ2_0 super-block: 2 bits per element (0, 1, 2 = -1, 0, 1); byte `m`
/// of each 32-byte chunk holds elements `m`, `m+32`, `m+64`, `m+96` of
/// that chunk's 128.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockTQ2_0 {
    pub qs: [u8; QK_K / 4],
    pub d: f16,
}
const _: () = assert!(std::mem::size_of::<BlockTQ2_0>() == 66);

/// Trit `n` (0 = most significant) of a TQ1_0 byte, as -1.0, 0.0 or 1.0.
#[inline]
fn trit(byte: u8, n: usize) -> f32 {
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    let q = byte.wrapping_mul(POW3[n]);
    (((q as u16 * 3) >> 8) as i16 - 1) as f32
}

/// Dequantizes TQ1_0 blocks into `dst` (`dst.len() / 256` blocks).
pub fn dequantize_tq1_0(src: &[u8], dst: &mut [f32]) {
    let xs = blocks::<BlockTQ1_0>(src);
    for (x, y) in xs.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = x.d.to_f32();
        let mut out = y.iter_mut();
        // Five planes over the first 32 bytes, five over the next 16, then
        // four over the 4 `qh` bytes.
        for chunk in [&x.qs[..32], &x.qs[32..48]] {
            for n in 0..5 {
                for (&b, o) in chunk.iter().zip(out.by_ref()) {
                    *o = trit(b, n) * d;
                }
            }
        }
        for n in 0..4 {
            for (&b, o) in x.qh.iter().zip(out.by_ref()) {
                *o = trit(b, n) * d;
            }
        }
    }
}

/// Dequantizes TQ2_0 blocks into `dst` (`dst.len() / 256` blocks).
pub fn dequantize_tq2_0(src: &[u8], dst: &mut [f32]) {
    let xs = blocks::<BlockTQ2_0>(src);
    for (x, y) in xs.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = x.d.to_f32();
        for (qs, y) in x.qs.chunks_exact(32).zip(y.chunks_exact_mut(128)) {
            for (l, y) in y.chunks_exact_mut(32).enumerate() {
                for (o, &b) in y.iter_mut().zip(qs) {
                    *o = (((b >> (2 * l)) & 3) as i32 - 1) as f32 * d;
                }
            }
        }
    }
}

/// The block scale (max |x|) and its inverse (0 for an all-zero block).
fn ternary_scale(x: &[f32]) -> (f32, f32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    (amax, if amax != 0.0 { 1.0 / amax } else { 0.0 })
}

/// `x / d` rounded (half away from zero) to -1, 0, 1, stored as 0, 1, 2.
#[inline]
fn to_trit(x: f32, id: f32) -> u8 {
    ((x * id).round() as i32 + 1).clamp(0, 2) as u8
}

/// Packs up to 5 trits (first = most significant) into a byte as the
/// base-3 fraction rounded up to 0..256, the inverse of [`trit`].
#[inline]
fn pack_trits(trits: impl Iterator<Item = u8>) -> u8 {
    let q = trits.fold(0u16, |q, t| q * 3 + t as u16);
    (q * 256).div_ceil(243) as u8
}

/// Quantizes `src` to TQ1_0 (ggml's `quantize_row_tq1_0_ref`).
pub fn quantize_tq1_0(src: &[f32], dst: &mut [u8]) {
    with_blocks_mut::<BlockTQ1_0>(dst, |ys| {
        for (x, y) in src.chunks_exact(QK_K).zip(ys.iter_mut()) {
            let (d, id) = ternary_scale(x);
            y.d = f16::from_f32(d);
            // Byte m of a plane group of width w holds elements m, m+w, ..
            // of that group's 5w elements.
            let (a, rest) = x.split_at(160);
            let (b, c) = rest.split_at(80);
            for (m, q) in y.qs[..32].iter_mut().enumerate() {
                *q = pack_trits((0..5).map(|n| to_trit(a[m + 32 * n], id)));
            }
            for (m, q) in y.qs[32..].iter_mut().enumerate() {
                *q = pack_trits((0..5).map(|n| to_trit(b[m + 16 * n], id)));
            }
            for (j, q) in y.qh.iter_mut().enumerate() {
                // Four trits, shifted up one place (the fifth is 0).
                let t = (0..4).map(|n| to_trit(c[j + 4 * n], id)).chain([0]);
                *q = pack_trits(t);
            }
        }
    });
}

/// Quantizes `src` to TQ2_0 (ggml's `quantize_row_tq2_0_ref`).
pub fn quantize_tq2_0(src: &[f32], dst: &mut [u8]) {
    with_blocks_mut::<BlockTQ2_0>(dst, |ys| {
        for (x, y) in src.chunks_exact(QK_K).zip(ys.iter_mut()) {
            let (d, id) = ternary_scale(x);
            y.d = f16::from_f32(d);
            for (qs, x) in y.qs.chunks_exact_mut(32).zip(x.chunks_exact(128)) {
                for (m, q) in qs.iter_mut().enumerate() {
                    *q = (0..4).fold(0, |q, n| q | to_trit(x[m + 32 * n], id) << (2 * n));
                }
            }
        }
    });
}

/// The ternary kernels of `ty` (no `vec_dot`; activations would be Q8_K
/// as in ggml).
pub(crate) fn kernels(ty: GgmlType, _level: SimdLevel) -> Option<TypeKernels> {
    let (dequantize, quantize): (crate::dispatch::DequantFn, crate::dispatch::QuantFn) = match ty {
        GgmlType::TQ1_0 => (dequantize_tq1_0, quantize_tq1_0),
        GgmlType::TQ2_0 => (dequantize_tq2_0, quantize_tq2_0),
        _ => return None,
    };
    Some(TypeKernels {
        ty,
        dequantize,
        quantize: Some(quantize),
        vec_dot_type: GgmlType::Q8_K,
        vec_dot: None,
    })
}
