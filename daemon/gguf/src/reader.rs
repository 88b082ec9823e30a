//! The GGUF parser: turns the bytes of a file into header, metadata and a validated
//! tensor directory. Every count, length, offset and shape is checked against the
//! bytes that are left before anything is allocated for it; nothing here panics.
//!
//! Policy choices (documented for callers):
//! * versions 2 and 3 are read; v1, v0 and > 3 are `UnsupportedVersion`; a byte-swapped
//!   small version is `BigEndian`.
//! * a length or count that cannot fit in the rest of the file is `CountTooLarge`;
//!   a fixed-size field cut off by the end of the file is `Truncated`.
//! * bools must be 0 or 1; keys must be non-empty; arrays may nest at most
//!   `MAX_ARRAY_DEPTH` levels (llama.cpp itself rejects any nesting).
//! * `general.alignment`, when present, must be a u32 nonzero power of two.
//! * tensor data must be aligned, inside the file, and must not overlap another
//!   tensor's data (llama.cpp is stricter still: it wants the tensors packed in
//!   directory order; we accept any non-overlapping aligned layout).

use std::collections::HashSet;

use dwarfstar_kernels::GgmlType;

use crate::error::GgufError;
use crate::metadata::Metadata;
use crate::tensor::{check_shape, TensorInfo, MAX_DIMS};
use crate::value::{Array, Value, ValueType};

/// `GGUF` read as a little-endian u32.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The alignment used when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key holding the alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Deepest array nesting the reader accepts (an array of arrays is depth 2).
pub const MAX_ARRAY_DEPTH: usize = 8;

/// Smallest possible metadata entry: key length, a 1-byte key, type, 1-byte value.
const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1;
/// Smallest possible tensor entry: name length, n_dims, one dim, type, offset.
const MIN_TENSOR_BYTES: u64 = 8 + 4 + 8 + 4 + 8;

/// What `parse` found.
pub(crate) struct Parsed {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    pub data_offset: u64,
}

/// A bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                offset: self.offset(),
                needed: n,
                what: what(),
                file_len: self.buf.len() as u64,
            });
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        self.array::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        self.array::<8>(what).map(u64::from_le_bytes)
    }

    /// Reads a count and checks that `count * min_elem` bytes remain.
    fn count(&mut self, min_elem: u64, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        let offset = self.offset();
        let count = self.u64(what)?;
        if count > self.remaining() / min_elem.max(1) {
            return Err(GgufError::CountTooLarge {
                what: what(),
                offset,
                count,
                remaining: self.remaining(),
            });
        }
        Ok(count)
    }

    /// A GGUF string: u64 length then UTF-8 bytes.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.count(1, &|| format!("length of {}", what()))?;
        let offset = self.offset();
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::InvalidUtf8 {
            what: what(),
            offset,
        })
    }
}

/// Reads `count` fixed-size little-endian numbers.
fn numbers<const N: usize, T>(
    c: &mut Cursor<'_>,
    count: u64,
    what: &dyn Fn() -> String,
    conv: fn([u8; N]) -> T,
) -> Result<Vec<T>, GgufError> {
    let n_bytes = count.saturating_mul(N as u64);
    let bytes = c.take(n_bytes, what)?;
    Ok(bytes
        .chunks_exact(N)
        .map(|ch| {
            let mut a = [0u8; N];
            a.copy_from_slice(ch);
            conv(a)
        })
        .collect())
}

fn value_type(c: &mut Cursor<'_>, key: &str) -> Result<ValueType, GgufError> {
    let offset = c.offset();
    let id = c.u32(&|| format!("value type of '{key}'"))?;
    ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType {
        key: key.to_string(),
        type_id: id,
        offset,
    })
}

fn bool_byte(c: &mut Cursor<'_>, key: &str) -> Result<bool, GgufError> {
    let offset = c.offset();
    match c.array::<1>(&|| format!("bool value of '{key}'"))?[0] {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(GgufError::InvalidBool {
            key: key.to_string(),
            value,
            offset,
        }),
    }
}

fn read_value(c: &mut Cursor<'_>, ty: ValueType, key: &str) -> Result<Value, GgufError> {
    let what = || format!("value of '{key}'");
    Ok(match ty {
        ValueType::U8 => Value::U8(c.array::<1>(&what)?[0]),
        ValueType::I8 => Value::I8(c.array::<1>(&what)?[0] as i8),
        ValueType::U16 => Value::U16(u16::from_le_bytes(c.array(&what)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(c.array(&what)?)),
        ValueType::U32 => Value::U32(u32::from_le_bytes(c.array(&what)?)),
        ValueType::I32 => Value::I32(i32::from_le_bytes(c.array(&what)?)),
        ValueType::U64 => Value::U64(u64::from_le_bytes(c.array(&what)?)),
        ValueType::I64 => Value::I64(i64::from_le_bytes(c.array(&what)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(c.array(&what)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(c.array(&what)?)),
        ValueType::Bool => Value::Bool(bool_byte(c, key)?),
        ValueType::String => Value::String(c.string(&what)?),
        ValueType::Array => Value::Array(read_array(c, key, 1)?),
    })
}

/// Reads an array's element type, count and elements; `depth` is 1 for a top-level array.
fn read_array(c: &mut Cursor<'_>, key: &str, depth: usize) -> Result<Array, GgufError> {
    if depth > MAX_ARRAY_DEPTH {
        return Err(GgufError::NestingTooDeep {
            key: key.to_string(),
            max: MAX_ARRAY_DEPTH,
            offset: c.offset(),
        });
    }
    let elem = value_type(c, key)?;
    let n = c.count(elem.min_size(), &|| format!("array length of '{key}'"))?;
    let what = || format!("array elements of '{key}'");
    Ok(match elem {
        ValueType::U8 => Array::U8(numbers(c, n, &what, |[b]| b)?),
        ValueType::I8 => Array::I8(numbers(c, n, &what, |[b]| b as i8)?),
        ValueType::U16 => Array::U16(numbers(c, n, &what, u16::from_le_bytes)?),
        ValueType::I16 => Array::I16(numbers(c, n, &what, i16::from_le_bytes)?),
        ValueType::U32 => Array::U32(numbers(c, n, &what, u32::from_le_bytes)?),
        ValueType::I32 => Array::I32(numbers(c, n, &what, i32::from_le_bytes)?),
        ValueType::U64 => Array::U64(numbers(c, n, &what, u64::from_le_bytes)?),
        ValueType::I64 => Array::I64(numbers(c, n, &what, i64::from_le_bytes)?),
        ValueType::F32 => Array::F32(numbers(c, n, &what, f32::from_le_bytes)?),
        ValueType::F64 => Array::F64(numbers(c, n, &what, f64::from_le_bytes)?),
        ValueType::Bool => {
            let mut v = Vec::with_capacity(n as usize);
            for _ in 0..n {
                v.push(bool_byte(c, key)?);
            }
            Array::Bool(v)
        }
        ValueType::String => {
            let mut v = Vec::with_capacity(n as usize);
            for i in 0..n {
                v.push(c.string(&|| format!("string {i} of array '{key}'"))?);
            }
            Array::String(v)
        }
        ValueType::Array => {
            let mut v = Vec::with_capacity(n as usize);
            for _ in 0..n {
                v.push(read_array(c, key, depth + 1)?);
            }
            Array::Array(v)
        }
    })
}

fn read_header(c: &mut Cursor<'_>) -> Result<u32, GgufError> {
    let head = &c.buf[..c.buf.len().min(4)];
    if head != &GGUF_MAGIC[..head.len()] {
        return Err(GgufError::BadMagic {
            found: head.to_vec(),
        });
    }
    c.take(4, &|| "magic".to_string())?;
    let version = c.u32(&|| "version".to_string())?;
    let swapped = version.swap_bytes();
    if version & 0xffff == 0 && (1..=3).contains(&swapped) {
        return Err(GgufError::BigEndian {
            raw: version,
            swapped,
        });
    }
    match version {
        2 | 3 => Ok(version),
        1 => Err(GgufError::UnsupportedVersion {
            version,
            hint: "; GGUF v1 is obsolete, re-convert the model",
        }),
        _ => Err(GgufError::UnsupportedVersion { version, hint: "" }),
    }
}

fn read_alignment(metadata: &Metadata) -> Result<u64, GgufError> {
    match metadata.get(ALIGNMENT_KEY) {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(Value::U32(a)) if a.is_power_of_two() => Ok(u64::from(*a)),
        Some(Value::U32(a)) => Err(GgufError::BadAlignment {
            reason: format!("{a} is not a nonzero power of two"),
        }),
        Some(v) => Err(GgufError::BadAlignment {
            reason: format!("it has type {}, must be u32", v.type_name()),
        }),
    }
}

fn read_tensor_info(c: &mut Cursor<'_>, index: u64) -> Result<TensorInfo, GgufError> {
    let name = c.string(&|| format!("name of tensor {index}"))?;
    let n_dims = c.u32(&|| format!("n_dims of tensor '{name}'"))?;
    if n_dims == 0 || n_dims as usize > MAX_DIMS {
        return Err(GgufError::BadDimCount { name, n_dims });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for j in 0..n_dims {
        dims.push(c.u64(&|| format!("dimension {j} of tensor '{name}'"))?);
    }
    let type_id = c.u32(&|| format!("type of tensor '{name}'"))?;
    let ty = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
        name: name.clone(),
        type_id,
    })?;
    let n_bytes = check_shape(&name, &dims, ty)?;
    let offset = c.u64(&|| format!("data offset of tensor '{name}'"))?;
    Ok(TensorInfo {
        name,
        dims,
        ty,
        offset,
        n_bytes,
    })
}

/// Checks alignment, bounds and overlap of every tensor's data.
fn check_layout(
    tensors: &[TensorInfo],
    alignment: u64,
    data_offset: u64,
    file_len: u64,
) -> Result<(), GgufError> {
    for t in tensors {
        if t.offset % alignment != 0 {
            return Err(GgufError::MisalignedTensor {
                name: t.name.clone(),
                offset: t.offset,
                alignment,
            });
        }
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        if end.is_none_or(|e| e > file_len) {
            return Err(GgufError::TensorOutOfBounds {
                name: t.name.clone(),
                start: start.unwrap_or(u64::MAX),
                n_bytes: t.n_bytes,
                file_len,
            });
        }
    }
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
    by_offset.sort_by_key(|t| t.offset);
    for w in by_offset.windows(2) {
        if w[0].offset + w[0].n_bytes > w[1].offset {
            return Err(GgufError::OverlappingTensors {
                first: w[0].name.clone(),
                second: w[1].name.clone(),
            });
        }
    }
    Ok(())
}

/// Parses and validates a whole GGUF file held in `buf`.
pub(crate) fn parse(buf: &[u8]) -> Result<Parsed, GgufError> {
    let mut c = Cursor { buf, pos: 0 };
    let version = read_header(&mut c)?;
    let tensor_count = c.count(MIN_TENSOR_BYTES, &|| "tensor count".to_string())?;
    let kv_count = c.count(MIN_KV_BYTES, &|| "metadata key count".to_string())?;

    let mut metadata = Metadata::new();
    for i in 0..kv_count {
        let key_offset = c.offset();
        let key = c.string(&|| format!("metadata key {i}"))?;
        if key.is_empty() {
            return Err(GgufError::EmptyKey {
                index: i,
                offset: key_offset,
            });
        }
        let ty = value_type(&mut c, &key)?;
        let value = read_value(&mut c, ty, &key)?;
        if metadata.contains_key(&key) {
            return Err(GgufError::DuplicateKey {
                key,
                offset: key_offset,
            });
        }
        metadata.insert_new(key, value);
    }
    let alignment = read_alignment(&metadata)?;

    if tensor_count > c.remaining() / MIN_TENSOR_BYTES {
        return Err(GgufError::CountTooLarge {
            what: "tensor count".to_string(),
            offset: 8,
            count: tensor_count,
            remaining: c.remaining(),
        });
    }
    let mut tensors = Vec::with_capacity(tensor_count as usize);
    let mut names = HashSet::with_capacity(tensor_count as usize);
    for i in 0..tensor_count {
        let t = read_tensor_info(&mut c, i)?;
        if !names.insert(t.name.clone()) {
            return Err(GgufError::DuplicateTensor { name: t.name });
        }
        tensors.push(t);
    }

    let file_len = buf.len() as u64;
    let data_offset = c.offset().div_ceil(alignment) * alignment;
    if !tensors.is_empty() && data_offset > file_len {
        return Err(GgufError::Truncated {
            offset: c.offset(),
            needed: data_offset - c.offset(),
            what: "padding before the data section".to_string(),
            file_len,
        });
    }
    check_layout(&tensors, alignment, data_offset, file_len)?;
    Ok(Parsed {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}
