//! (being written) Matrix products over quantized weights.

use crate::types::GgmlType;
use crate::KernelError;

/// A row-major weight matrix in its GGUF bytes: `rows` rows of `cols`
/// elements of type `ty` (ggml's `ne0 = cols`, `ne1 = rows`).
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub ty: GgmlType,
    pub data: &'a [u8],
    pub rows: usize,
    pub cols: usize,
}

/// `out[t][r] = dot(w[r], x[t])` for `n_tokens` activation rows `x`
/// (`x.len() == n_tokens * cols`, `out.len() == n_tokens * rows`).
pub fn matmul(
    w: MatRef<'_>,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let _ = (w, x, n_tokens, out);
    Err(KernelError::Unsupported(GgmlType::F32, "matmul"))
}
