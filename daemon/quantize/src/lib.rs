//! dwarfstar-quantize: making smaller GGUF files and measuring what they
//! lost.
//!
//! - [`recipe`]: named recipes (`dwarf-q2`, `dwarf-q4`, uniform types), the
//!   tensor classes they go by, and llama-quantize's shape fallback;
//! - [`pattern`]: `--override PATTERN=TYPE`;
//! - [`plan`]: every tensor's type and why, before anything is written;
//! - [`budget`]: `--target-size`, per (layer, tensor) choices for the
//!   routed experts by estimated error per byte;
//! - [`write`]: the streaming, parallel conversion and its metadata;
//! - [`imatrix`]: importance matrices in llama.cpp's GGUF and legacy
//!   formats; [`collect`]: gathering one by running a model;
//! - [`quality`]: perplexity, KL divergence and top-1 agreement of two
//!   models over a text;
//! - [`kernel`]: the single call into the kernels' quantizers.

pub mod budget;
pub mod collect;
pub mod error;
pub mod imatrix;
pub mod kernel;
pub mod pattern;
pub mod plan;
pub mod quality;
pub mod recipe;
pub mod write;

pub use budget::parse_size;
pub use error::{QuantizeError, Result};
pub use imatrix::Imatrix;
pub use pattern::Override;
pub use plan::{plan, Options, Plan, TensorPlan, Why};
pub use recipe::Recipe;
pub use write::{check_written, write, ImatrixSource, NoProgress, Progress, WriteReport};
