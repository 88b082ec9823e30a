//! `QuantizeError`: what can go wrong planning, writing or measuring a
//! quantization, or reading and writing an importance matrix.

use std::path::PathBuf;

use dwarfstar_gguf::{GgmlType, GgufError};
use dwarfstar_kernels::KernelError;
use dwarfstar_model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Quant(#[from] dwarfstar_kernels::quantize::QuantError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An importance-matrix file that cannot be read as either format.
    #[error("imatrix {path}: {msg}")]
    Imatrix { path: String, msg: String },
    /// An `--override` that does not parse.
    #[error("--override {text:?}: {msg}")]
    BadOverride { text: String, msg: String },
    /// A type named by `--override` cannot hold the tensor's rows.
    #[error(
        "tensor {name} {dims:?}: --override {pattern:?} asks for {ty}, whose blocks of {block} \
         values do not divide its rows of {cols}; name a type with blocks that fit (e.g. Q8_0, Q4_0 \
         for rows that are a multiple of 32) or leave the tensor to the recipe's fallback"
    )]
    OverrideShape {
        name: String,
        dims: Vec<u64>,
        ty: GgmlType,
        cols: u64,
        block: usize,
        pattern: String,
    },
    /// A type DwarfStar has no quantizer for.
    #[error("tensor {name}: DwarfStar cannot quantize to {ty}")]
    Unsupported { name: String, ty: GgmlType },
    /// A quantized source tensor that would be requantized.
    #[error(
        "tensor {name} is {ty}: requantizing an already quantized tensor compounds the error; \
         pass --allow-requantize to do it anyway"
    )]
    Requantize { name: String, ty: GgmlType },
    /// `--target-size` below what the cheapest choices reach.
    #[error(
        "target size {target} bytes is below the smallest file this recipe can make ({min} bytes)"
    )]
    TargetTooSmall { target: u64, min: u64 },
    #[error("unknown recipe {0:?} (known: dwarf-q2, dwarf-q4, q8_0, q4_k, q2_k, or any type DwarfStar quantizes to)")]
    UnknownRecipe(String),
    #[error("bad size {0:?}: write a number with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB; K/M/G/T are binary)")]
    BadSize(String),
    #[error("tensor {name}: {msg}")]
    Tensor { name: String, msg: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = QuantizeError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> QuantizeError {
    let path = path.into();
    move |source| QuantizeError::Io { path, source }
}
