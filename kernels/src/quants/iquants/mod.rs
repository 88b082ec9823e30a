//! The i-quant family (ggml's "importance" quants): IQ2_XXS, IQ2_XS, IQ2_S,
//! IQ3_XXS, IQ3_S, IQ1_S, IQ1_M (lattice/grid codebooks with sign bits) and
//! IQ4_NL, IQ4_XS (a non-linear 4-bit value table).
//!
//! This module owns the block types, dequantization bit-identical to ggml
//! for all nine, the quantizers of IQ4_NL / IQ4_XS, IQ3_XXS / IQ3_S
//! (ggml's `quantize_iq4_*` / `quantize_iq3_*`, importance matrix
//! optional) and IQ2_XXS, IQ2_XS, IQ1_S (importance matrix required, so
//! they are not in the dispatch table: [`quantize_iq2_xxs`],
//! [`quantize_row_iq2_xs`], [`quantize_row_iq1_s`]; the crate's
//! [`crate::quantize`] entry point covers them all), and fast dot products for the types ggml computes
//! directly: IQ4_NL x Q8_0, IQ4_XS x Q8_K and IQ2_XXS x Q8_K (scalar
//! reference, AVX2, AVX-512). The other i-quants have no `vec_dot`: the
//! matmul dequantizes their rows.
//!
//! Files: [`grids`] (lookup tables, pure data), [`iq2`], [`iq3`], [`iq1`],
//! [`iq4`] (block types, dequantization, IQ4 quantization),
//! [`lattice`] (the grids' code maps and neighbour lists) and
//! `gridsearch` (the shared scale search), [`iq2xxs_quant`],
//! [`iq2xs_quant`], [`iq3_quant`], [`iq1s_quant`], [`dot`] (the dot products; AVX2 / AVX-512 versions in
//! `dot/x86.rs`).

use std::borrow::Cow;

use bytemuck::Pod;

use crate::dispatch::TypeKernels;
use crate::simd::SimdLevel;
use crate::types::GgmlType;

pub mod dot;
pub mod grids;
mod gridsearch;
pub mod iq1;
pub mod iq1s_quant;
pub mod iq2;
pub mod iq2xs_quant;
pub mod iq2xxs_quant;
pub mod iq3;
pub mod iq3_quant;
pub mod iq4;
pub(crate) mod lattice;

pub use dot::{
    iq2_xxs_q8_k, iq4_nl_q8_0, iq4_xs_q8_k, vec_dot_iq2_xxs_q8_k_ref, vec_dot_iq4_nl_q8_0_ref,
    vec_dot_iq4_xs_q8_k_ref,
};
pub use iq1::{dequantize_iq1_m, dequantize_iq1_s, BlockIQ1M, BlockIQ1S};
pub use iq1s_quant::quantize_row_iq1_s;
pub use iq2::{
    dequantize_iq2_s, dequantize_iq2_xs, dequantize_iq2_xxs, BlockIQ2S, BlockIQ2XS, BlockIQ2XXS,
};
pub use iq2xs_quant::quantize_row_iq2_xs;
pub use iq2xxs_quant::{quantize_iq2_xxs, quantize_row_iq2_xxs};
pub use iq3::{dequantize_iq3_s, dequantize_iq3_xxs, BlockIQ3S, BlockIQ3XXS};
pub use iq3_quant::{quantize_iq3_s, quantize_iq3_s_ref, quantize_iq3_xxs, quantize_iq3_xxs_ref};
pub use iq4::{
    dequantize_iq4_nl, dequantize_iq4_xs, quantize_iq4_nl, quantize_iq4_nl_weighted,
    quantize_iq4_xs, quantize_iq4_xs_weighted, BlockIQ4NL, BlockIQ4XS,
};

/// Elements per super-block of the 256-element i-quants.
pub const QK_K: usize = 256;

/// Views `bytes` as whole blocks of `B` (a trailing partial block is
/// ignored). Borrows when `bytes` is aligned for `B`, copies otherwise, so
/// callers never panic on an unaligned buffer.
pub(crate) fn blocks<B: Pod>(bytes: &[u8]) -> Cow<'_, [B]> {
    let size = std::mem::size_of::<B>();
    let whole = &bytes[..bytes.len() / size * size];
    match bytemuck::try_cast_slice(whole) {
        Ok(b) => Cow::Borrowed(b),
        Err(_) => {
            let mut owned = vec![B::zeroed(); whole.len() / size];
            bytemuck::cast_slice_mut::<B, u8>(&mut owned).copy_from_slice(whole);
            Cow::Owned(owned)
        }
    }
}

/// Writes whole blocks of `B` into `bytes` through `fill`, which gets a
/// block-typed view of the destination. Borrows when aligned, otherwise
/// fills a temporary and copies it back.
pub(crate) fn with_blocks_mut<B: Pod>(bytes: &mut [u8], fill: impl FnOnce(&mut [B])) {
    let size = std::mem::size_of::<B>();
    let n = bytes.len() / size;
    let whole = &mut bytes[..n * size];
    match bytemuck::try_cast_slice_mut(whole) {
        Ok(b) => fill(b),
        Err(_) => {
            let mut tmp = vec![B::zeroed(); n];
            fill(&mut tmp);
            whole.copy_from_slice(bytemuck::cast_slice(&tmp));
        }
    }
}

/// Expands 8 unsigned magnitudes packed in `grid` (byte `j` = element `j`),
/// times `scale`, negating element `j` where bit `j` of `signs` is set.
/// The same float operations as ggml (`scale * grid[j] * ±1`).
#[inline]
pub(crate) fn put_signed8(out: &mut [f32], scale: f32, grid: u64, signs: u8) {
    for (j, o) in out.iter_mut().take(8).enumerate() {
        let v = scale * ((grid >> (8 * j)) & 0xff) as f32;
        *o = if (signs >> j) & 1 != 0 { -v } else { v };
    }
}

fn kernel(
    ty: GgmlType,
    dequantize: crate::dispatch::DequantFn,
    quantize: Option<crate::dispatch::QuantFn>,
    vec_dot_type: GgmlType,
    vec_dot: Option<crate::dispatch::VecDotFn>,
) -> Option<TypeKernels> {
    Some(TypeKernels {
        ty,
        dequantize,
        quantize,
        vec_dot_type,
        vec_dot,
    })
}

/// The i-quant kernels of `ty` at `level` (None for types of other families).
pub(crate) fn kernels(ty: GgmlType, level: SimdLevel) -> Option<TypeKernels> {
    use GgmlType as T;
    match ty {
        T::IQ2_XXS => kernel(
            ty,
            dequantize_iq2_xxs,
            None,
            T::Q8_K,
            Some(iq2_xxs_q8_k(level)),
        ),
        T::IQ2_XS => kernel(ty, dequantize_iq2_xs, None, T::Q8_K, None),
        T::IQ2_S => kernel(ty, dequantize_iq2_s, None, T::Q8_K, None),
        T::IQ3_XXS => kernel(
            ty,
            dequantize_iq3_xxs,
            Some(quantize_iq3_xxs_ref),
            T::Q8_K,
            None,
        ),
        T::IQ3_S => kernel(
            ty,
            dequantize_iq3_s,
            Some(quantize_iq3_s_ref),
            T::Q8_K,
            None,
        ),
        T::IQ1_S => kernel(ty, dequantize_iq1_s, None, T::Q8_K, None),
        T::IQ1_M => kernel(ty, dequantize_iq1_m, None, T::Q8_K, None),
        T::IQ4_NL => kernel(
            ty,
            dequantize_iq4_nl,
            Some(quantize_iq4_nl),
            T::Q8_0,
            Some(iq4_nl_q8_0(level)),
        ),
        T::IQ4_XS => kernel(
            ty,
            dequantize_iq4_xs,
            Some(quantize_iq4_xs),
            T::Q8_K,
            Some(iq4_xs_q8_k(level)),
        ),
        _ => None,
    }
}
