//! `TensorInfo` (one entry of the tensor directory) and the shape rules shared by
//! the reader and the writer: 1..=4 dims, element count within i64, ne0 a whole
//! number of blocks, byte size within u64, names shorter than 64 bytes.

use dwarfstar_kernels::GgmlType;

use crate::error::GgufError;

/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: usize = 4;
/// ggml's GGML_MAX_NAME: a tensor name must be shorter than this many bytes.
pub const MAX_NAME_LEN: usize = 64;

/// One tensor of the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` (ne0) varies fastest, i.e. it is the row length.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Byte offset of the data relative to the start of the data section.
    pub offset: u64,
    /// Bytes of data (validated against the file at open).
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Product of the dimensions.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Elements per row (ne0).
    pub fn cols(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows: the product of every dimension but the first.
    pub fn rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }

    /// Bytes of one row (`cols / block_size * type_size`).
    pub fn row_bytes(&self) -> u64 {
        self.cols() / self.ty.block_size() as u64 * self.ty.type_size() as u64
    }

    /// Number of dimensions.
    pub fn n_dims(&self) -> usize {
        self.dims.len()
    }
}

/// Checks a tensor's name length and shape for `ty` and returns its size in bytes.
pub(crate) fn check_shape(name: &str, dims: &[u64], ty: GgmlType) -> Result<u64, GgufError> {
    if name.len() >= MAX_NAME_LEN {
        return Err(GgufError::TensorNameTooLong {
            name: name.to_string(),
            len: name.len(),
            max: MAX_NAME_LEN - 1,
        });
    }
    if dims.is_empty() || dims.len() > MAX_DIMS {
        return Err(GgufError::BadDimCount {
            name: name.to_string(),
            n_dims: dims.len() as u32,
        });
    }
    let bad = |reason: &str| GgufError::BadShape {
        name: name.to_string(),
        dims: dims.to_vec(),
        reason: reason.to_string(),
    };
    if dims.iter().any(|&d| d > i64::MAX as u64) {
        return Err(bad("a dimension is negative as a signed 64-bit ggml ne"));
    }
    if !dims.contains(&0) {
        let mut n: u64 = 1;
        for &d in dims {
            n = n
                .checked_mul(d)
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| bad("element count overflows i64"))?;
        }
    }
    let block = ty.block_size() as u64;
    if !dims[0].is_multiple_of(block) {
        return Err(GgufError::BlockMismatch {
            name: name.to_string(),
            ty,
            ne0: dims[0],
            block_size: block,
        });
    }
    let row_bytes = (dims[0] / block)
        .checked_mul(ty.type_size() as u64)
        .ok_or_else(|| bad("row size in bytes overflows"))?;
    let mut n_bytes = row_bytes;
    for &d in &dims[1..] {
        n_bytes = n_bytes
            .checked_mul(d)
            .ok_or_else(|| bad("size in bytes overflows"))?;
    }
    if usize::try_from(n_bytes).is_err() {
        return Err(bad("size in bytes does not fit in usize"));
    }
    Ok(n_bytes)
}
