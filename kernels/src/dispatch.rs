//! The type-erased kernel table: what the engine calls when it holds a
//! tensor's raw bytes and its [`GgmlType`].
//!
//! Each format family in [`crate::quants`] answers `kernels(ty, level)` with
//! the functions it implements for that type at that SIMD level; this module
//! caches one table for [`SimdLevel::current`] and checks lengths before any
//! call reaches a kernel.

use std::sync::OnceLock;

use crate::quants;
use crate::simd::SimdLevel;
use crate::types::GgmlType;
use crate::KernelError;

/// Dequantizes whole blocks: `src.len() == dst.len() / block * type_size`.
pub type DequantFn = fn(src: &[u8], dst: &mut [f32]);
/// Quantizes whole blocks of `src` into `dst` (sizes as for [`DequantFn`]).
pub type QuantFn = fn(src: &[f32], dst: &mut [u8]);
/// Dot product of `n` elements: a weight row of this type with an activation
/// row already quantized to the type's `vec_dot_type`.
pub type VecDotFn = fn(n: usize, w: &[u8], act: &[u8]) -> f32;

/// What one type offers at one SIMD level.
#[derive(Clone, Copy, Debug)]
pub struct TypeKernels {
    pub ty: GgmlType,
    /// Every type can be dequantized.
    pub dequantize: DequantFn,
    /// Reference quantization (ggml's `quantize_row_*_ref`), where written.
    pub quantize: Option<QuantFn>,
    /// The type activations are rounded to before `vec_dot`, as ggml does.
    pub vec_dot_type: GgmlType,
    /// Fast dot product, where written; other types dequantize rows first.
    pub vec_dot: Option<VecDotFn>,
}

/// The kernels of `ty` at `level`, from the family that owns the type.
pub fn kernels_at(ty: GgmlType, level: SimdLevel) -> Option<TypeKernels> {
    quants::float::kernels(ty, level)
        .or_else(|| quants::legacy::kernels(ty, level))
        .or_else(|| quants::kquants::kernels(ty, level))
        .or_else(|| quants::iquants::kernels(ty, level))
        .or_else(|| quants::mxfp4::kernels(ty, level))
        .or_else(|| quants::ternary::kernels(ty, level))
}

fn table() -> &'static [Option<TypeKernels>; 64] {
    static TABLE: OnceLock<[Option<TypeKernels>; 64]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let level = SimdLevel::current();
        let mut t = [None; 64];
        for ty in GgmlType::ALL {
            t[ty.id() as usize] = kernels_at(ty, level);
        }
        t
    })
}

/// The kernels of `ty` at the current SIMD level.
pub fn type_kernels(ty: GgmlType) -> Result<&'static TypeKernels, KernelError> {
    table()[ty.id() as usize]
        .as_ref()
        .ok_or(KernelError::Unsupported(ty, "dequantize"))
}

fn check_len(ty: GgmlType, n: usize, bytes: usize) -> Result<(), KernelError> {
    let expected = ty.row_bytes(n).ok_or(KernelError::NotBlockMultiple {
        ty,
        len: n,
        block: ty.block_size(),
    })?;
    if expected != bytes {
        return Err(KernelError::ByteLength {
            ty,
            expected,
            got: bytes,
        });
    }
    Ok(())
}

/// Dequantizes `dst.len()` elements of type `ty` from `src`.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), KernelError> {
    check_len(ty, dst.len(), src.len())?;
    (type_kernels(ty)?.dequantize)(src, dst);
    Ok(())
}

/// Quantizes `src` into `dst` as type `ty`.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), KernelError> {
    check_len(ty, src.len(), dst.len())?;
    let q = type_kernels(ty)?
        .quantize
        .ok_or(KernelError::Unsupported(ty, "quantize"))?;
    q(src, dst);
    Ok(())
}

/// Dot product of `n` elements of a `ty` weight row with an activation row
/// quantized to `type_kernels(ty).vec_dot_type`.
pub fn vec_dot(ty: GgmlType, n: usize, w: &[u8], act: &[u8]) -> Result<f32, KernelError> {
    let k = type_kernels(ty)?;
    check_len(ty, n, w.len())?;
    check_len(k.vec_dot_type, n, act.len())?;
    let f = k.vec_dot.ok_or(KernelError::Unsupported(ty, "vec_dot"))?;
    Ok(f(n, w, act))
}
