//! DwarfStar's compute kernels: the GGUF block formats and everything that
//! touches their bytes.
//!
//! This crate knows nothing of files, models, async runtimes or networks.
//! It owns:
//! - [`types`]: the ggml type ids, block sizes and byte sizes;
//! - [`quants`]: one `#[repr(C)]` block type per format, with a compile-time
//!   size assert, dequantization identical to ggml's, quantization, and for
//!   the hot formats a scalar reference `vec_dot` (ggml's generic order)
//!   beside its SIMD versions and a portable one in their x86 order, which
//!   the scalar level runs so that every level gives the same bits;
//! - [`dispatch`]: the type-erased table the rest of the engine calls, with
//!   the SIMD level picked once at run time ([`simd`]);
//! - [`matmul`]: matrix-vector and matrix-matrix products over quantized
//!   weights, parallel over rows with rayon;
//! - [`quantize`]: whole-matrix quantization as `llama-quantize` does it,
//!   with an optional importance matrix;
//! - [`ops`]: the small f32 operations of a forward pass (norms, RoPE,
//!   softmax, activations).

pub mod dispatch;
pub mod matmul;
pub mod ops;
pub mod quantize;
pub mod quants;
pub mod simd;
pub mod types;

pub use dispatch::{dequantize_row, quantize_row, type_kernels, vec_dot, TypeKernels};
pub use matmul::{matmul, MatRef};
pub use simd::SimdLevel;
pub use types::GgmlType;

/// Errors from the type-erased kernel entry points.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum KernelError {
    #[error("ggml type {0:?} has no {1} kernel")]
    Unsupported(GgmlType, &'static str),
    #[error("{ty:?}: {len} elements is not a multiple of the block size {block}")]
    NotBlockMultiple {
        ty: GgmlType,
        len: usize,
        block: usize,
    },
    #[error("{ty:?}: expected {expected} bytes, got {got}")]
    ByteLength {
        ty: GgmlType,
        expected: usize,
        got: usize,
    },
    #[error("{ty:?}: data is not aligned for its block type")]
    Misaligned { ty: GgmlType },
    #[error("shape mismatch: {0}")]
    Shape(String),
}
