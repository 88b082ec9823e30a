//! `GgufFile`: an opened, fully validated GGUF file. It owns the bytes (a read-only
//! memory map, or an aligned copy for `from_bytes`), the metadata and the tensor
//! directory, and hands out tensor data as borrowed slices. Send + Sync.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::GgufError;
use crate::metadata::Metadata;
use crate::reader::parse;
use crate::tensor::TensorInfo;
use crate::value::{Array, Value};

/// 64-byte aligned chunk, so that owned buffers start as aligned as a mapping's
/// tensor data would be (tensor offsets are multiples of the alignment).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Chunk([u8; 64]);

enum Backing {
    Mmap(memmap2::Mmap),
    Owned { chunks: Vec<Chunk>, len: usize },
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned { chunks, len } => {
                // SAFETY: `chunks` is a contiguous allocation of `chunks.len() * 64`
                // initialized bytes (Chunk is a plain byte array with no padding) and
                // `len <= chunks.len() * 64`; the slice borrows `chunks`.
                unsafe { std::slice::from_raw_parts(chunks.as_ptr().cast::<u8>(), *len) }
            }
        }
    }

    fn owned(bytes: &[u8]) -> Self {
        let mut chunks = vec![Chunk([0; 64]); bytes.len().div_ceil(64)];
        for (c, src) in chunks.iter_mut().zip(bytes.chunks(64)) {
            c.0[..src.len()].copy_from_slice(src);
        }
        Backing::Owned {
            chunks,
            len: bytes.len(),
        }
    }
}

/// An opened GGUF file (v2 or v3, little-endian), validated at open.
pub struct GgufFile {
    backing: Backing,
    path: Option<PathBuf>,
    version: u32,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("len", &self.len())
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

impl GgufFile {
    /// Maps `path` read-only and validates it. The file must not be truncated or
    /// rewritten while it is open (as with any memory map).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let backing = if len == 0 {
            Backing::owned(&[])
        } else {
            // SAFETY: read-only private mapping; the documented contract is that the
            // file is not modified while mapped.
            Backing::Mmap(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?)
        };
        Self::from_backing(backing, Some(path.to_path_buf()))
    }

    /// Validates a GGUF image held in memory (copied into a 64-byte aligned buffer).
    pub fn from_bytes(bytes: impl AsRef<[u8]>) -> Result<Self, GgufError> {
        Self::from_backing(Backing::owned(bytes.as_ref()), None)
    }

    fn from_backing(backing: Backing, path: Option<PathBuf>) -> Result<Self, GgufError> {
        let p = parse(backing.bytes())?;
        let tensor_index = p
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            backing,
            path,
            version: p.version,
            metadata: p.metadata,
            tensors: p.tensors,
            tensor_index,
            alignment: p.alignment,
            data_offset: p.data_offset,
        })
    }

    /// The path given to `open`, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Data alignment in bytes (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute byte offset where the data section starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// File size in bytes.
    pub fn len(&self) -> u64 {
        self.backing.bytes().len() as u64
    }

    /// Whether the file is empty (never true for a file that opened).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.backing.bytes()
    }

    /// Whether the bytes are a memory map of the file (as opposed to a copy).
    pub fn is_mmapped(&self) -> bool {
        matches!(self.backing, Backing::Mmap(_))
    }

    /// The metadata, in file order.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Mutable metadata (for `--override-kv`).
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    /// Sets a metadata value (see `Metadata::set`). Changing `general.alignment`
    /// here does not change how the already validated data is laid out.
    pub fn set(&mut self, key: impl Into<String>, value: Value) -> Option<Value> {
        self.metadata.set(key, value)
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The tensor directory, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// Absolute file offset of a tensor's first byte.
    pub fn tensor_file_offset(&self, t: &TensorInfo) -> u64 {
        self.data_offset + t.offset
    }

    /// A tensor's bytes. Infallible for a `TensorInfo` of this file (validated at
    /// open); for one that is not, returns an empty slice if it does not fit.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let start = self.data_offset.saturating_add(t.offset);
        let end = start.saturating_add(t.n_bytes);
        match (usize::try_from(start), usize::try_from(end)) {
            (Ok(s), Ok(e)) => self.bytes().get(s..e).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// The bytes of the tensor called `name`.
    pub fn tensor_bytes(&self, name: &str) -> Option<&[u8]> {
        self.tensor(name).map(|t| self.tensor_data(t))
    }

    /// The data section (from `data_offset` to the end of the file).
    pub fn data_section(&self) -> &[u8] {
        let start = usize::try_from(self.data_offset).unwrap_or(usize::MAX);
        self.bytes().get(start..).unwrap_or(&[])
    }
}

/// Generates `GgufFile` methods that forward to the `Metadata` getters.
macro_rules! forward_getters {
    ($($name:ident : $t:ty),* $(,)?) => {
        impl GgufFile {
            $(
                #[doc = concat!("Forwards to `Metadata::", stringify!($name), "`.")]
                pub fn $name(&self, key: &str) -> Result<$t, GgufError> {
                    self.metadata.$name(key)
                }
            )*
        }
    };
}
forward_getters!(
    get_u32: u32, get_i32: i32, get_u64: u64, get_i64: i64, get_f32: f32, get_f64: f64,
    get_bool: bool, get_str: &str, get_array: &Array, get_str_array: &[String],
    get_f32_array: Cow<'_, [f32]>, get_i32_array: Cow<'_, [i32]>, get_u32_array: Cow<'_, [u32]>,
    opt_u32: Option<u32>, opt_i32: Option<i32>, opt_u64: Option<u64>, opt_i64: Option<i64>,
    opt_f32: Option<f32>, opt_f64: Option<f64>, opt_bool: Option<bool>, opt_str: Option<&str>,
    opt_array: Option<&Array>, opt_str_array: Option<&[String]>,
    opt_f32_array: Option<Cow<'_, [f32]>>, opt_i32_array: Option<Cow<'_, [i32]>>,
    opt_u32_array: Option<Cow<'_, [u32]>>,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<GgufFile>();
    }

    #[test]
    fn owned_buffer_is_aligned_and_exact() {
        let bytes: Vec<u8> = (0..200u8).collect();
        let b = Backing::owned(&bytes);
        assert_eq!(b.bytes(), &bytes[..]);
        assert_eq!(b.bytes().as_ptr() as usize % 64, 0);
    }
}
