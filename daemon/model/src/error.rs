//! The model layer's error type.

use dwarfstar_gguf::GgufError;
use dwarfstar_kernels::KernelError;

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Tokenizer(#[from] dwarfstar_tokenizer::TokenizerError),
    #[error("unsupported architecture {0:?}")]
    UnsupportedArch(String),
    #[error("metadata {key}: {msg}")]
    Metadata { key: String, msg: String },
    #[error("missing tensor {0}")]
    MissingTensor(String),
    #[error("tensor {name}: expected shape {expected:?}, found {found:?}")]
    TensorShape {
        name: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    #[error("tensor {name}: {msg}")]
    Tensor { name: String, msg: String },
    #[error("context full: {needed} positions needed, the cache holds {capacity}")]
    ContextFull { needed: usize, capacity: usize },
    #[error("token id {id} is outside the vocabulary of {n_vocab}")]
    BadToken { id: u32, n_vocab: usize },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

pub(crate) fn meta_err(key: &str, msg: impl Into<String>) -> ModelError {
    ModelError::Metadata {
        key: key.to_string(),
        msg: msg.into(),
    }
}
