//! The legacy 32-element block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q8_1.
//!
//! This module owns the block types, their dequantization (bit-identical to
//! ggml's `dequantize_row_*`), the reference quantizers (ggml's
//! `quantize_row_*_ref`, used to write model files), and the dispatch entry
//! [`kernels`]. The run-time activation quantizers [`quantize_q8_0`] and
//! [`quantize_q8_1`] live in [`act`]; the dot products in [`dot`] (ggml's
//! generic-order references), [`x86_order`] (portable, in ggml's x86 float
//! order: what the scalar level runs, bit-identical to the SIMD levels) and
//! `x86` (AVX2 / AVX-512 VNNI); the importance-weighted
//! quantizers `llama-quantize` uses with an imatrix in [`weighted`].

pub mod act;
pub mod dot;
pub mod weighted;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_512;
pub mod x86_order;

use bytemuck::{Pod, Zeroable};
use half::f16;

use crate::dispatch::{DequantFn, QuantFn, TypeKernels, VecDotFn};
use crate::simd::SimdLevel;
use crate::types::GgmlType;

pub use act::{quantize_q8_0, quantize_q8_1};

/// Elements per legacy block.
pub const QK: usize = 32;

/// 4-bit symmetric: `x = d * (q - 8)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: f16,
    /// Element `j` in the low nibble of byte `j`, element `j + 16` in its high nibble.
    pub qs: [u8; 16],
}

/// 4-bit with minimum: `x = d * q + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; 16],
}

/// 5-bit symmetric: `x = d * (q - 16)`, the fifth bits packed in `qh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5_0 {
    pub d: f16,
    /// Bit `j` of this little-endian u32 is the fifth bit of element `j`.
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// 5-bit with minimum: `x = d * q + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// 8-bit symmetric: `x = d * q`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; 32],
}

/// 8-bit symmetric with `s = d * sum(q)`, the activation type of Q4_1 / Q5_1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; 32],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

/// What every legacy block can do on its own: the per-block halves of
/// ggml's `dequantize_row_*` and `quantize_row_*_ref`.
pub trait LegacyBlock: Pod {
    const TYPE: GgmlType;
    fn dequantize(&self, y: &mut [f32; QK]);
    fn quantize_ref(x: &[f32; QK]) -> Self;
}

/// `(min, max)` of a block, as ggml's min/max quantizers scan it.
fn min_max(x: &[f32; QK]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// The signed value of largest magnitude (the first one on ties).
fn signed_absmax(x: &[f32; QK]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// The fifth bits of 32 5-bit values, bit `j` for element `j`.
fn high_bits(q: &[u8; QK]) -> [u8; 4] {
    let mut qh = 0u32;
    for (j, &v) in q.iter().enumerate() {
        qh |= u32::from((v >> 4) & 1) << j;
    }
    qh.to_le_bytes()
}

/// Packs elements `j` and `j + 16` into byte `j` (low nibble first).
fn pack_nibbles(q: &[u8; QK]) -> [u8; 16] {
    std::array::from_fn(|j| (q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4))
}

/// The 4-bit values of a block, `j` and `j + 16` from byte `j`.
fn nibble(qs: &[u8; 16], j: usize) -> u8 {
    if j < 16 {
        qs[j] & 0x0F
    } else {
        qs[j - 16] >> 4
    }
}

/// The 5-bit value `j` of a Q5 block.
fn five_bit(qs: &[u8; 16], qh: [u8; 4], j: usize) -> u8 {
    let h = (u32::from_le_bytes(qh) >> j) & 1;
    nibble(qs, j) | ((h as u8) << 4)
}

impl LegacyBlock for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    fn dequantize(&self, y: &mut [f32; QK]) {
        let d = self.d.to_f32();
        for (j, v) in y.iter_mut().enumerate() {
            *v = (i32::from(nibble(&self.qs, j)) - 8) as f32 * d;
        }
    }
    fn quantize_ref(x: &[f32; QK]) -> Self {
        let d = signed_absmax(x) / -8.0;
        let id = inverse(d);
        // `as i8` truncates like C's (int8_t) cast on these non-negative values.
        let q = x.map(|v| ((v * id + 8.5) as i8).min(15) as u8);
        BlockQ4_0 {
            d: f16::from_f32(d),
            qs: pack_nibbles(&q),
        }
    }
}

impl LegacyBlock for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    fn dequantize(&self, y: &mut [f32; QK]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for (j, v) in y.iter_mut().enumerate() {
            *v = f32::from(nibble(&self.qs, j)) * d + m;
        }
    }
    fn quantize_ref(x: &[f32; QK]) -> Self {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = inverse(d);
        let q = x.map(|v| (((v - min) * id + 0.5) as i8).min(15) as u8);
        BlockQ4_1 {
            d: f16::from_f32(d),
            m: f16::from_f32(min),
            qs: pack_nibbles(&q),
        }
    }
}

impl LegacyBlock for BlockQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    fn dequantize(&self, y: &mut [f32; QK]) {
        let d = self.d.to_f32();
        for (j, v) in y.iter_mut().enumerate() {
            *v = (i32::from(five_bit(&self.qs, self.qh, j)) - 16) as f32 * d;
        }
    }
    fn quantize_ref(x: &[f32; QK]) -> Self {
        let d = signed_absmax(x) / -16.0;
        let id = inverse(d);
        let q = x.map(|v| ((v * id + 16.5) as i8).min(31) as u8);
        BlockQ5_0 {
            d: f16::from_f32(d),
            qh: high_bits(&q),
            qs: pack_nibbles(&q),
        }
    }
}

impl LegacyBlock for BlockQ5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    fn dequantize(&self, y: &mut [f32; QK]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for (j, v) in y.iter_mut().enumerate() {
            *v = f32::from(five_bit(&self.qs, self.qh, j)) * d + m;
        }
    }
    fn quantize_ref(x: &[f32; QK]) -> Self {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = inverse(d);
        // ggml does not clamp here; `as u8` saturates where C would wrap (never in range).
        let q = x.map(|v| ((v - min) * id + 0.5) as u8);
        BlockQ5_1 {
            d: f16::from_f32(d),
            m: f16::from_f32(min),
            qh: high_bits(&q),
            qs: pack_nibbles(&q),
        }
    }
}

/// `amax / 127` and its inverse, as `quantize_row_q8_*_ref` computes them.
fn q8_ref_scale(x: &[f32; QK]) -> (f32, f32) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    (d, inverse(d))
}

impl LegacyBlock for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    fn dequantize(&self, y: &mut [f32; QK]) {
        let d = self.d.to_f32();
        for (v, &q) in y.iter_mut().zip(&self.qs) {
            *v = f32::from(q) * d;
        }
    }
    fn quantize_ref(x: &[f32; QK]) -> Self {
        let (d, id) = q8_ref_scale(x);
        BlockQ8_0 {
            d: f16::from_f32(d),
            qs: x.map(|v| (v * id).round() as i8),
        }
    }
}

impl LegacyBlock for BlockQ8_1 {
    const TYPE: GgmlType = GgmlType::Q8_1;
    fn dequantize(&self, y: &mut [f32; QK]) {
        let d = self.d.to_f32();
        for (v, &q) in y.iter_mut().zip(&self.qs) {
            *v = f32::from(q) * d;
        }
    }
    fn quantize_ref(x: &[f32; QK]) -> Self {
        let (d, id) = q8_ref_scale(x);
        let qs = x.map(|v| (v * id).round() as i8);
        let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
        BlockQ8_1 {
            d: f16::from_f32(d),
            s: f16::from_f32(sum as f32 * d),
            qs,
        }
    }
}

/// Dequantizes whole blocks of `B` from raw bytes (any alignment).
/// Stops at whichever of `src` / `dst` runs out of whole blocks first.
pub fn dequantize_bytes<B: LegacyBlock>(src: &[u8], dst: &mut [f32]) {
    let size = std::mem::size_of::<B>();
    for (chunk, out) in src.chunks_exact(size).zip(dst.chunks_exact_mut(QK)) {
        let block: B = bytemuck::pod_read_unaligned(chunk);
        if let Ok(out) = <&mut [f32; QK]>::try_from(out) {
            block.dequantize(out);
        }
    }
}

/// Reference-quantizes whole blocks of `src` into raw bytes (any alignment).
pub fn quantize_bytes<B: LegacyBlock>(src: &[f32], dst: &mut [u8]) {
    let size = std::mem::size_of::<B>();
    for (x, chunk) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(size)) {
        if let Ok(x) = <&[f32; QK]>::try_from(x) {
            chunk.copy_from_slice(bytemuck::bytes_of(&B::quantize_ref(x)));
        }
    }
}

/// Dequantizes typed blocks: `dst.len() == blocks.len() * 32`.
pub fn dequantize_blocks<B: LegacyBlock>(blocks: &[B], dst: &mut [f32]) {
    for (b, out) in blocks.iter().zip(dst.chunks_exact_mut(QK)) {
        if let Ok(out) = <&mut [f32; QK]>::try_from(out) {
            b.dequantize(out);
        }
    }
}

/// Reference-quantizes into typed blocks (ggml's `quantize_row_*_ref`).
pub fn quantize_blocks_ref<B: LegacyBlock>(src: &[f32], dst: &mut [B]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.iter_mut()) {
        if let Ok(x) = <&[f32; QK]>::try_from(x) {
            *b = B::quantize_ref(x);
        }
    }
}

/// Whether the AVX-512 VNNI (with VL) dot instructions can be used; read once.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::incompatible_msrv)] // stable since 1.89; the toolchain is 1.95
pub(crate) fn has_avx512_vnni() -> bool {
    use std::sync::OnceLock;
    static VNNI: OnceLock<bool> = OnceLock::new();
    *VNNI.get_or_init(|| {
        SimdLevel::detect_hw() == SimdLevel::Avx512
            && std::arch::is_x86_feature_detected!("avx512vnni")
    })
}

/// The SIMD level actually usable: `level`, lowered to what the CPU has.
pub(crate) fn usable_level(level: SimdLevel) -> SimdLevel {
    let hw = SimdLevel::detect_hw();
    match level {
        SimdLevel::Avx512 if hw == SimdLevel::Avx512 => SimdLevel::Avx512,
        SimdLevel::Avx512 | SimdLevel::Avx2
            if matches!(hw, SimdLevel::Avx2 | SimdLevel::Avx512) =>
        {
            SimdLevel::Avx2
        }
        _ => SimdLevel::Scalar,
    }
}

/// The vec_dot of `ty` (weight) at `level`, and the activation type it reads.
pub(crate) fn vec_dot_for(ty: GgmlType, level: SimdLevel) -> Option<(GgmlType, VecDotFn)> {
    // The scalar level runs the portable kernels in ggml's x86 order, so
    // every level gives the same bits.
    let scalar: (GgmlType, VecDotFn) = match ty {
        GgmlType::Q4_0 => (GgmlType::Q8_0, x86_order::vec_dot_q4_0_q8_0),
        GgmlType::Q4_1 => (GgmlType::Q8_1, x86_order::vec_dot_q4_1_q8_1),
        GgmlType::Q5_0 => (GgmlType::Q8_0, x86_order::vec_dot_q5_0_q8_0),
        GgmlType::Q5_1 => (GgmlType::Q8_1, x86_order::vec_dot_q5_1_q8_1),
        GgmlType::Q8_0 => (GgmlType::Q8_0, x86_order::vec_dot_q8_0_q8_0),
        _ => return None,
    };
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(f) = x86::vec_dot(ty, usable_level(level)) {
            return Some((scalar.0, f));
        }
    }
    let _ = level;
    Some(scalar)
}

/// The tile kernel of `ty` at `level` (lowered to what the CPU has), for
/// the matmul: several weight rows × several activation rows at once.
#[cfg(target_arch = "x86_64")]
pub(crate) fn tile_for(ty: GgmlType, level: SimdLevel) -> Option<(x86::TileFn, x86::TileShape)> {
    x86::tile_for(ty, usable_level(level))
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{TileFn, TileShape};

/// The dispatch entry: the legacy types' kernels at `level`.
pub(crate) fn kernels(ty: GgmlType, level: SimdLevel) -> Option<TypeKernels> {
    let (dequantize, quantize): (DequantFn, QuantFn) = match ty {
        GgmlType::Q4_0 => (dequantize_bytes::<BlockQ4_0>, quantize_bytes::<BlockQ4_0>),
        GgmlType::Q4_1 => (dequantize_bytes::<BlockQ4_1>, quantize_bytes::<BlockQ4_1>),
        GgmlType::Q5_0 => (dequantize_bytes::<BlockQ5_0>, quantize_bytes::<BlockQ5_0>),
        GgmlType::Q5_1 => (dequantize_bytes::<BlockQ5_1>, quantize_bytes::<BlockQ5_1>),
        GgmlType::Q8_0 => (dequantize_bytes::<BlockQ8_0>, quantize_bytes::<BlockQ8_0>),
        GgmlType::Q8_1 => (dequantize_bytes::<BlockQ8_1>, quantize_bytes::<BlockQ8_1>),
        _ => return None,
    };
    let (vec_dot_type, vec_dot) = match vec_dot_for(ty, level) {
        Some((t, f)) => (t, Some(f)),
        // Q8_1 is only ever an activation type; ggml gives it no dot of its own.
        None => (ty, None),
    };
    Some(TypeKernels {
        ty,
        dequantize,
        quantize: Some(quantize),
        vec_dot_type,
        vec_dot,
    })
}
