//! Whole-matrix quantization as `llama-quantize` does it: ggml's
//! `ggml_quantize_chunk`, with an optional importance matrix (imatrix).
//!
//! [`quantize`] takes `rows × n_per_row` f32 values and, for the types that
//! use one, an importance row of `n_per_row` weights (one per column, as
//! `llama-imatrix` writes them and as `ggml_quantize_chunk` takes them). Each
//! type follows ggml exactly:
//! - without an imatrix: the reference quantizer (`quantize_row_*_ref`),
//!   which is what `quantize_q4_K` & co. call when `quant_weights == NULL`;
//! - with one: the importance-weighted search (`quantize_row_*_impl`);
//! - Q8_0, F16, BF16, F32, MXFP4, TQ1_0, TQ2_0 ignore the imatrix, as ggml
//!   does (Q8_0 has no weighted variant);
//! - IQ2_XXS, IQ2_XS and IQ1_S cannot be quantized without one (ggml's
//!   `ggml_quantize_requires_imatrix`): [`QuantError::ImatrixRequired`].
//!
//! Rows are independent, so [`quantize`] is a pure function of a chunk of
//! whole rows: a caller may split `src` / `dst` at row boundaries and run
//! the chunks in parallel ([`quantize_parallel`] does that with rayon).

use rayon::prelude::*;

use crate::dispatch::{type_kernels, QuantFn};
use crate::quants::iquants::{
    quantize_iq3_s, quantize_iq3_xxs, quantize_iq4_nl_weighted, quantize_iq4_xs_weighted,
    quantize_row_iq1_s, quantize_row_iq2_xs, quantize_row_iq2_xxs, with_blocks_mut,
};
use crate::quants::kquants::*;
use crate::quants::legacy::weighted::{quantize_row_weighted_bytes, WeightedBlock};
use crate::quants::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1};
use crate::types::GgmlType;

/// Why a matrix could not be quantized.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum QuantError {
    #[error("quantization to {0:?} is not supported")]
    Unsupported(GgmlType),
    #[error("{ty:?}: rows of {n_per_row} values are not a multiple of the block size {block}")]
    RowNotBlockMultiple {
        ty: GgmlType,
        n_per_row: usize,
        block: usize,
    },
    #[error("{len} source values are not a whole number of rows of {n_per_row}")]
    NotWholeRows { len: usize, n_per_row: usize },
    #[error("{0:?} cannot be quantized without an importance matrix")]
    ImatrixRequired(GgmlType),
    #[error("the importance matrix has {got} weights for rows of {expected} values")]
    ImatrixLength { expected: usize, got: usize },
    #[error("importance weight {index} is {value}: weights must be finite and non-negative")]
    BadImatrix { index: usize, value: f32 },
    #[error("{ty:?}: the destination has {got} bytes, {expected} are needed")]
    DstLength {
        ty: GgmlType,
        expected: usize,
        got: usize,
    },
}

/// One row `x` quantized against its importance row `qw` into `dst`
/// (exactly the row's bytes).
type WeightedFn = fn(x: &[f32], qw: &[f32], dst: &mut [u8]);

/// How ggml quantizes one type.
struct Scheme {
    /// The path without weights (rows need not be split: it works per
    /// block); `None` when ggml requires an imatrix.
    plain: Option<QuantFn>,
    /// The importance-weighted path; `None` when ggml ignores weights.
    weighted: Option<WeightedFn>,
}

fn legacy<B: WeightedBlock>(x: &[f32], qw: &[f32], dst: &mut [u8]) {
    quantize_row_weighted_bytes::<B>(x, qw, dst)
}

macro_rules! kquant_weighted {
    ($name:ident, $block:ty, $f:ident) => {
        fn $name(x: &[f32], qw: &[f32], dst: &mut [u8]) {
            with_blocks_mut::<$block>(dst, |b| $f(x, b, Some(qw)));
        }
    };
}
kquant_weighted!(q2_k, BlockQ2_K, quantize_q2_k_weighted);
kquant_weighted!(q3_k, BlockQ3_K, quantize_q3_k_weighted);
kquant_weighted!(q4_k, BlockQ4_K, quantize_q4_k_weighted);
kquant_weighted!(q5_k, BlockQ5_K, quantize_q5_k_weighted);
kquant_weighted!(q6_k, BlockQ6_K, quantize_q6_k_weighted);

fn iq3_xxs(x: &[f32], qw: &[f32], dst: &mut [u8]) {
    quantize_iq3_xxs(x, Some(qw), dst)
}

fn iq3_s(x: &[f32], qw: &[f32], dst: &mut [u8]) {
    quantize_iq3_s(x, Some(qw), dst)
}

fn iq4_nl(x: &[f32], qw: &[f32], dst: &mut [u8]) {
    quantize_iq4_nl_weighted(x, Some(qw), dst)
}

fn iq4_xs(x: &[f32], qw: &[f32], dst: &mut [u8]) {
    quantize_iq4_xs_weighted(x, Some(qw), dst)
}

fn scheme(ty: GgmlType) -> Option<Scheme> {
    use GgmlType as T;
    let reference = || type_kernels(ty).ok().and_then(|k| k.quantize);
    let (plain, weighted): (Option<QuantFn>, Option<WeightedFn>) = match ty {
        T::F32 | T::F16 | T::BF16 | T::Q8_0 | T::MXFP4 | T::TQ1_0 | T::TQ2_0 => (reference(), None),
        T::Q4_0 => (reference(), Some(legacy::<BlockQ4_0>)),
        T::Q4_1 => (reference(), Some(legacy::<BlockQ4_1>)),
        T::Q5_0 => (reference(), Some(legacy::<BlockQ5_0>)),
        T::Q5_1 => (reference(), Some(legacy::<BlockQ5_1>)),
        T::Q2_K => (reference(), Some(q2_k)),
        T::Q3_K => (reference(), Some(q3_k)),
        T::Q4_K => (reference(), Some(q4_k)),
        T::Q5_K => (reference(), Some(q5_k)),
        T::Q6_K => (reference(), Some(q6_k)),
        T::IQ4_NL => (reference(), Some(iq4_nl)),
        T::IQ4_XS => (reference(), Some(iq4_xs)),
        T::IQ3_XXS => (reference(), Some(iq3_xxs)),
        T::IQ3_S => (reference(), Some(iq3_s)),
        T::IQ2_XXS => (None, Some(quantize_row_iq2_xxs)),
        T::IQ2_XS => (None, Some(quantize_row_iq2_xs)),
        T::IQ1_S => (None, Some(quantize_row_iq1_s)),
        _ => return None,
    };
    if plain.is_none() && weighted.is_none() {
        return None;
    }
    Some(Scheme { plain, weighted })
}

/// Whether [`quantize`] can produce `ty` (with an imatrix where
/// [`quantize_requires_imatrix`]).
pub fn quantize_supported(ty: GgmlType) -> bool {
    scheme(ty).is_some()
}

/// Whether ggml cannot quantize `ty` at all without an importance matrix
/// (`ggml_quantize_requires_imatrix`: IQ2_XXS, IQ2_XS, IQ1_S).
pub fn quantize_requires_imatrix(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::IQ2_XXS | GgmlType::IQ2_XS | GgmlType::IQ1_S)
}

/// Whether `llama-quantize` refuses to write `ty` without an importance
/// matrix (its `tensor_requires_imatrix`): the very-low-bit i-quants, a
/// superset of [`quantize_requires_imatrix`]. llama-quantize exempts the
/// token embedding and output tensors, and also requires one for Q2_K in a
/// Q2_K_S file; both depend on the tensor and file type, which the caller
/// knows and this crate does not.
pub fn imatrix_required_by_llama_quantize(ty: GgmlType) -> bool {
    use GgmlType as T;
    matches!(
        ty,
        T::IQ3_XXS | T::IQ2_XXS | T::IQ2_XS | T::IQ2_S | T::IQ1_M | T::IQ1_S
    )
}

/// Whether `ty` changes with the importance matrix (false for Q8_0 and the
/// float and ternary types, which ggml quantizes the same either way).
pub fn quantize_uses_imatrix(ty: GgmlType) -> bool {
    scheme(ty).is_some_and(|s| s.weighted.is_some())
}

/// Checks shapes and weights; returns `(scheme, rows, bytes per row)`.
fn validate(
    ty: GgmlType,
    src_len: usize,
    n_per_row: usize,
    imatrix: Option<&[f32]>,
    dst_len: usize,
) -> Result<(Scheme, usize, usize), QuantError> {
    let scheme = scheme(ty).ok_or(QuantError::Unsupported(ty))?;
    let row_bytes = match ty.row_bytes(n_per_row) {
        Some(b) if n_per_row > 0 => b,
        _ => {
            return Err(QuantError::RowNotBlockMultiple {
                ty,
                n_per_row,
                block: ty.block_size(),
            })
        }
    };
    if !src_len.is_multiple_of(n_per_row) {
        return Err(QuantError::NotWholeRows {
            len: src_len,
            n_per_row,
        });
    }
    if let Some(w) = imatrix {
        if w.len() != n_per_row {
            return Err(QuantError::ImatrixLength {
                expected: n_per_row,
                got: w.len(),
            });
        }
        if let Some((index, &value)) = w
            .iter()
            .enumerate()
            .find(|(_, v)| !v.is_finite() || **v < 0.0)
        {
            return Err(QuantError::BadImatrix { index, value });
        }
    } else if scheme.plain.is_none() {
        return Err(QuantError::ImatrixRequired(ty));
    }
    let rows = src_len / n_per_row;
    match rows.checked_mul(row_bytes) {
        Some(needed) if needed <= dst_len => Ok((scheme, rows, row_bytes)),
        _ => Err(QuantError::DstLength {
            ty,
            expected: rows.saturating_mul(row_bytes),
            got: dst_len,
        }),
    }
}

/// Quantizes whole rows with an already validated scheme.
fn run(
    scheme: &Scheme,
    src: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
    row_bytes: usize,
    dst: &mut [u8],
) {
    match (imatrix, scheme.weighted, scheme.plain) {
        (Some(qw), Some(weighted), _) => {
            for (x, y) in src
                .chunks_exact(n_per_row)
                .zip(dst.chunks_exact_mut(row_bytes))
            {
                weighted(x, qw, y);
            }
        }
        (_, _, Some(plain)) => plain(src, dst),
        // `validate` rejects a missing imatrix for weighted-only schemes.
        (_, _, None) => {}
    }
}

/// Quantizes `src` (rows of `n_per_row` values) to `ty` into the front of
/// `dst`, with the importance row `imatrix` (`n_per_row` weights) when
/// given, exactly as ggml's `ggml_quantize_chunk`. Returns the bytes
/// written: `rows · ty.row_bytes(n_per_row)`.
///
/// Errors: a type this crate cannot quantize to, rows that are not whole
/// blocks, `src` not whole rows, an imatrix of the wrong length or with a
/// negative or non-finite weight, a type that needs an imatrix without one,
/// or `dst` too short.
pub fn quantize(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<usize, QuantError> {
    let (scheme, rows, row_bytes) = validate(ty, src.len(), n_per_row, imatrix, dst.len())?;
    let n = rows * row_bytes;
    run(&scheme, src, n_per_row, imatrix, row_bytes, &mut dst[..n]);
    Ok(n)
}

/// [`quantize`] with the rows spread over rayon's pool (in chunks of about
/// 64 Ki values); the bytes are the same as [`quantize`]'s.
pub fn quantize_parallel(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<usize, QuantError> {
    let (scheme, rows, row_bytes) = validate(ty, src.len(), n_per_row, imatrix, dst.len())?;
    let n = rows * row_bytes;
    if rows == 0 {
        return Ok(0);
    }
    let rows_per_task = (65_536 / n_per_row).max(1);
    src.par_chunks(rows_per_task * n_per_row)
        .zip(dst[..n].par_chunks_mut(rows_per_task * row_bytes))
        .for_each(|(x, y)| run(&scheme, x, n_per_row, imatrix, row_bytes, y));
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_tables_agree() {
        for ty in GgmlType::ALL {
            if quantize_requires_imatrix(ty) {
                assert!(imatrix_required_by_llama_quantize(ty), "{ty:?}");
            }
            if quantize_supported(ty) && !quantize_requires_imatrix(ty) {
                assert!(scheme(ty).is_some_and(|s| s.plain.is_some()), "{ty:?}");
            }
        }
        assert!(!quantize_uses_imatrix(GgmlType::Q8_0));
        assert!(quantize_uses_imatrix(GgmlType::Q4_K));
        assert!(!quantize_supported(GgmlType::Q8_K));
        assert!(!quantize_supported(GgmlType::Q8_1));
    }
}
