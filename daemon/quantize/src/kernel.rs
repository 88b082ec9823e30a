//! The one place that calls the kernels' quantizers, so that swapping in
//! another quantizer is a change here only.
//!
//! It calls [`dwarfstar_kernels::quantize::quantize`] (ggml's
//! `ggml_quantize_chunk`: the reference quantizer without an imatrix, the
//! importance-weighted search with one). Types ggml quantizes only with an
//! imatrix (IQ2_XXS, IQ2_XS, IQ1_S) get uniform weights when there is none:
//! llama-quantize refuses that, we quantize and say so in the plan's notes.

use dwarfstar_kernels::quantize::{
    quantize, quantize_requires_imatrix, quantize_supported, quantize_uses_imatrix,
};
use dwarfstar_kernels::GgmlType;

use crate::error::QuantizeError;

/// Whether [`quantize_rows`] can produce `ty` as a weight type (Q8_K and
/// Q8_1 are ggml's activation formats, never stored in model files).
pub fn can_quantize(ty: GgmlType) -> bool {
    !matches!(ty, GgmlType::Q8_K | GgmlType::Q8_1) && quantize_supported(ty)
}

/// Whether the importance matrix changes what [`quantize_rows`] writes
/// for `ty`.
pub fn uses_imatrix(ty: GgmlType) -> bool {
    quantize_uses_imatrix(ty)
}

/// Whether ggml can quantize `ty` only with importance weights.
pub fn needs_imatrix(ty: GgmlType) -> bool {
    quantize_requires_imatrix(ty)
}

/// Quantizes `src` (whole rows of `n_per_row` values) to `ty` into `dst`
/// (exactly the rows' bytes), weighting columns by `imatrix` (`n_per_row`
/// values) where the type's quantizer uses weights. Returns bytes written.
pub fn quantize_rows(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<usize, QuantizeError> {
    let ones;
    let imatrix = match imatrix {
        None if needs_imatrix(ty) => {
            ones = vec![1.0f32; n_per_row];
            Some(&ones[..])
        }
        w => w,
    };
    Ok(quantize(ty, src, n_per_row, imatrix, dst)?)
}
