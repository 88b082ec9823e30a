//! dwarfstar-gguf: reads and writes GGUF files (llama.cpp's model format).
//!
//! * [`GgufFile`] maps a v2/v3 little-endian file read-only and validates all of it
//!   at open (every count, length, offset and shape against the file size), so that
//!   later accessors are infallible and nothing panics on bad input.
//! * [`Metadata`] holds the key/value pairs in file order with typed getters that
//!   coerce between integer widths; [`parse_override`] reads `--override-kv` syntax.
//! * [`GgufWriter`] writes v3 in gguf-py's layout, streaming tensor data in bounded
//!   memory.

mod error;
mod file;
mod metadata;
mod reader;
mod tensor;
mod value;
mod writer;

pub use dwarfstar_kernels::GgmlType;
pub use error::GgufError;
pub use file::GgufFile;
pub use metadata::{parse_override, Metadata};
pub use reader::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_DEPTH};
pub use tensor::{TensorInfo, MAX_DIMS, MAX_NAME_LEN};
pub use value::{Array, Value, ValueType};
pub use writer::{GgufWriter, WRITE_VERSION};
