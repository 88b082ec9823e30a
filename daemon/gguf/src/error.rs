//! `GgufError`: every way reading, querying or writing a GGUF file can fail.
//! Each variant says what is wrong and where (byte offset, key or tensor name).

use std::path::PathBuf;

/// Errors of the GGUF reader, the metadata accessors and the writer.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened, mapped or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An I/O error while streaming a file out (no path known).
    #[error("write failed: {0}")]
    Write(#[from] std::io::Error),

    /// The first four bytes are not `GGUF`.
    #[error("not a GGUF file: magic bytes are {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: Vec<u8> },

    /// A version this reader does not handle (v1 is obsolete; only v2 and v3 are read).
    #[error("unsupported GGUF version {version} (only versions 2 and 3 are supported{hint})")]
    UnsupportedVersion { version: u32, hint: &'static str },

    /// The version field reads as a byte-swapped small number: a big-endian file.
    #[error("GGUF file is big-endian (version field reads {raw:#010x}, i.e. version {swapped} byte-swapped); only little-endian files are supported")]
    BigEndian { raw: u32, swapped: u32 },

    /// The file ends before a field that must be there.
    #[error("file truncated at byte {offset}: need {needed} more bytes for {what}, file is {file_len} bytes")]
    Truncated {
        offset: u64,
        needed: u64,
        what: String,
        file_len: u64,
    },

    /// A count or length cannot possibly fit in the rest of the file.
    #[error("{what} at byte {offset} is {count}, which cannot fit in the {remaining} bytes left in the file")]
    CountTooLarge {
        what: String,
        offset: u64,
        count: u64,
        remaining: u64,
    },

    /// A string (key, value or tensor name) is not valid UTF-8.
    #[error("invalid UTF-8 in {what} at byte {offset}")]
    InvalidUtf8 { what: String, offset: u64 },

    /// A metadata key is the empty string (llama.cpp rejects these too).
    #[error("metadata key number {index} at byte {offset} is empty")]
    EmptyKey { index: u64, offset: u64 },

    /// A metadata key appears twice.
    #[error("duplicate metadata key '{key}' at byte {offset}")]
    DuplicateKey { key: String, offset: u64 },

    /// A value type id outside the GGUF set (0..=12).
    #[error("metadata key '{key}': unknown value type {type_id} at byte {offset}")]
    UnknownValueType {
        key: String,
        type_id: u32,
        offset: u64,
    },

    /// A bool stored as something other than 0 or 1.
    #[error("metadata key '{key}': invalid bool byte {value} at byte {offset}")]
    InvalidBool { key: String, value: u8, offset: u64 },

    /// Arrays nested deeper than the reader accepts.
    #[error("metadata key '{key}': arrays nested deeper than {max} levels at byte {offset}")]
    NestingTooDeep {
        key: String,
        max: usize,
        offset: u64,
    },

    /// `general.alignment` is not a `u32` nonzero power of two.
    #[error("invalid general.alignment: {reason}")]
    BadAlignment { reason: String },

    /// Two tensors share a name.
    #[error("duplicate tensor name '{name}'")]
    DuplicateTensor { name: String },

    /// A tensor name is 64 bytes or longer (ggml's GGML_MAX_NAME limit).
    #[error("tensor name '{name}' is {len} bytes long; ggml allows at most {max}")]
    TensorNameTooLong {
        name: String,
        len: usize,
        max: usize,
    },

    /// A tensor with 0 or more than 4 dimensions.
    #[error("tensor '{name}' has {n_dims} dimensions; 1 to 4 are allowed")]
    BadDimCount { name: String, n_dims: u32 },

    /// A shape whose dimensions are negative as i64, or whose element or byte count overflows.
    #[error("tensor '{name}' has an invalid shape {dims:?}: {reason}")]
    BadShape {
        name: String,
        dims: Vec<u64>,
        reason: String,
    },

    /// A tensor type id this crate does not know.
    #[error("tensor '{name}' has unknown ggml type id {type_id}")]
    UnknownTensorType { name: String, type_id: u32 },

    /// The first dimension is not a whole number of the type's blocks.
    #[error("tensor '{name}' of type {ty}: ne0 = {ne0} is not a multiple of the block size {block_size}")]
    BlockMismatch {
        name: String,
        ty: dwarfstar_kernels::GgmlType,
        ne0: u64,
        block_size: u64,
    },

    /// A tensor offset not on the file's alignment.
    #[error("tensor '{name}' offset {offset} (relative to the data section) is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        name: String,
        offset: u64,
        alignment: u64,
    },

    /// A tensor's data reaches past the end of the file.
    #[error("tensor '{name}' data [{start}, {start}+{n_bytes}) (absolute) goes past the end of the file ({file_len} bytes)")]
    TensorOutOfBounds {
        name: String,
        start: u64,
        n_bytes: u64,
        file_len: u64,
    },

    /// Two tensors' data ranges overlap.
    #[error("tensor '{first}' and tensor '{second}' have overlapping data")]
    OverlappingTensors { first: String, second: String },

    /// A metadata key that must be present is absent.
    #[error("metadata key '{key}' not found")]
    MissingKey { key: String },

    /// A metadata value of a type the getter cannot convert.
    #[error("metadata key '{key}' has type {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },

    /// A metadata integer that does not fit the requested width.
    #[error("metadata key '{key}': value {value} does not fit in {target}")]
    OutOfRange {
        key: String,
        value: String,
        target: &'static str,
    },

    /// A malformed `--override-kv` argument.
    #[error("invalid metadata override '{input}': {reason}")]
    BadOverride { input: String, reason: String },

    /// The writer was asked for something that would produce an invalid file.
    #[error("GGUF writer: {0}")]
    Writer(String),
}

impl GgufError {
    pub(crate) fn writer(msg: impl Into<String>) -> Self {
        GgufError::Writer(msg.into())
    }
}
