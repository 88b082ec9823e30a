//! `GgufWriter`: writes GGUF v3 in gguf-py's byte layout (header, metadata, tensor
//! directory, zero padding to the alignment, then each tensor's data in declaration
//! order, each followed by zero padding to the alignment).
//!
//! Streaming use, in bounded memory: declare every tensor with `add_tensor_info`
//! (offsets and sizes are computed then), call `write_header`, then hand each
//! tensor's bytes to `write_tensor_data` in declaration order (in one piece or in
//! several chunks), then `finish`. Small files: `add_tensor` with the bytes, then
//! `write_to_path`, `write_all` or `to_bytes`.
//!
//! Checked against the reference tools: quant-zoo.gguf (gguf-py) and both test
//! models (llama-quantize) re-write byte for byte, and ggml's `gguf_init_from_file`
//! loads a file with every scalar and array type. Nested arrays are written (GGUF
//! allows them) but ggml's reader refuses them, so do not use them in model files.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use dwarfstar_kernels::GgmlType;

use crate::error::GgufError;
use crate::metadata::Metadata;
use crate::reader::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC};
use crate::tensor::{check_shape, TensorInfo};
use crate::value::{Array, Value};

/// The version the writer produces.
pub const WRITE_VERSION: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Declaring,
    /// Header written; `next` is the tensor being written, `done` its bytes so far.
    Data {
        next: usize,
        done: u64,
    },
    Finished,
}

/// Builds a GGUF v3 file.
#[derive(Debug)]
pub struct GgufWriter {
    alignment: u64,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    data: Vec<Option<Vec<u8>>>,
    names: HashSet<String>,
    next_offset: u64,
    state: State,
}

impl Default for GgufWriter {
    fn default() -> Self {
        GgufWriter {
            alignment: DEFAULT_ALIGNMENT,
            metadata: Metadata::new(),
            tensors: Vec::new(),
            data: Vec::new(),
            names: HashSet::new(),
            next_offset: 0,
            state: State::Declaring,
        }
    }
}

fn pad_to(n: u64, alignment: u64) -> u64 {
    n.div_ceil(alignment) * alignment
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_array_body(out: &mut Vec<u8>, a: &Array) {
    out.extend_from_slice(&a.elem_type().id().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! nums {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => nums!(v),
        Array::U16(v) => nums!(v),
        Array::I16(v) => nums!(v),
        Array::U32(v) => nums!(v),
        Array::I32(v) => nums!(v),
        Array::U64(v) => nums!(v),
        Array::I64(v) => nums!(v),
        Array::F32(v) => nums!(v),
        Array::F64(v) => nums!(v),
        Array::Bool(v) => out.extend(v.iter().map(|&b| b as u8)),
        Array::String(v) => v.iter().for_each(|s| put_string(out, s)),
        Array::Array(v) => v.iter().for_each(|x| put_array_body(out, x)),
    }
}

/// Appends a value's type id and payload.
fn put_value(out: &mut Vec<u8>, v: &Value) {
    out.extend_from_slice(&v.value_type().id().to_le_bytes());
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_string(out, s),
        Value::Array(a) => put_array_body(out, a),
    }
}

impl GgufWriter {
    /// A writer with the given data alignment (a nonzero power of two that fits
    /// in u32). When it is not 32, `general.alignment` is written too (appended
    /// after the other keys unless added explicitly with `add_kv`).
    pub fn new(alignment: u64) -> Result<Self, GgufError> {
        if !alignment.is_power_of_two() || alignment > u64::from(u32::MAX) {
            return Err(GgufError::BadAlignment {
                reason: format!("{alignment} is not a nonzero power of two that fits in u32"),
            });
        }
        Ok(GgufWriter {
            alignment,
            ..Self::default()
        })
    }

    /// The data alignment.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// The metadata added so far.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The tensors declared so far, with their computed offsets and sizes.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    fn declaring(&self, what: &str) -> Result<(), GgufError> {
        if self.state == State::Declaring {
            Ok(())
        } else {
            Err(GgufError::writer(format!(
                "{what} after the header was written"
            )))
        }
    }

    /// Adds a metadata pair. Keys must be non-empty and unique;
    /// `general.alignment` must be a u32 equal to the writer's alignment.
    pub fn add_kv(
        &mut self,
        key: impl Into<String>,
        value: impl Into<Value>,
    ) -> Result<(), GgufError> {
        self.declaring("add_kv")?;
        let key = key.into();
        let value = value.into();
        if key.is_empty() {
            return Err(GgufError::writer("empty metadata key"));
        }
        if key == ALIGNMENT_KEY && value != Value::U32(self.alignment as u32) {
            return Err(GgufError::BadAlignment {
                reason: format!(
                    "general.alignment = {value} ({}) does not match the writer's alignment {}",
                    value.type_name(),
                    self.alignment
                ),
            });
        }
        if !self.metadata.insert_new(key.clone(), value) {
            return Err(GgufError::DuplicateKey { key, offset: 0 });
        }
        Ok(())
    }

    /// Adds every pair of `metadata`, in order.
    pub fn add_metadata(&mut self, metadata: &Metadata) -> Result<(), GgufError> {
        for (k, v) in metadata.iter() {
            self.add_kv(k, v.clone())?;
        }
        Ok(())
    }

    /// Declares a tensor whose bytes will be streamed with `write_tensor_data`.
    /// Returns its directory entry (offset relative to the data section, size).
    pub fn add_tensor_info(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
    ) -> Result<&TensorInfo, GgufError> {
        self.declare(name.into(), dims, ty, None)
    }

    /// Declares a tensor together with its bytes (for small files); the length
    /// must match the shape.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
        data: impl Into<Vec<u8>>,
    ) -> Result<&TensorInfo, GgufError> {
        self.declare(name.into(), dims, ty, Some(data.into()))
    }

    fn declare(
        &mut self,
        name: String,
        dims: &[u64],
        ty: GgmlType,
        data: Option<Vec<u8>>,
    ) -> Result<&TensorInfo, GgufError> {
        self.declaring("add_tensor")?;
        let n_bytes = check_shape(&name, dims, ty)?;
        if self.names.contains(&name) {
            return Err(GgufError::DuplicateTensor { name });
        }
        if let Some(d) = &data {
            if d.len() as u64 != n_bytes {
                return Err(GgufError::writer(format!(
                    "tensor '{name}' {ty} {dims:?} needs {n_bytes} bytes, got {}",
                    d.len()
                )));
            }
        }
        let offset = self.next_offset;
        self.next_offset = offset
            .checked_add(n_bytes)
            .and_then(|e| e.checked_add(self.alignment - 1))
            .map(|e| e / self.alignment * self.alignment)
            .ok_or_else(|| GgufError::writer("data section size overflows u64"))?;
        self.names.insert(name.clone());
        self.tensors.push(TensorInfo {
            name,
            dims: dims.to_vec(),
            ty,
            offset,
            n_bytes,
        });
        self.data.push(data);
        Ok(&self.tensors[self.tensors.len() - 1])
    }

    /// The header, metadata and tensor directory, padded to the alignment.
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC);
        out.extend_from_slice(&WRITE_VERSION.to_le_bytes());
        let add_alignment =
            self.alignment != DEFAULT_ALIGNMENT && !self.metadata.contains_key(ALIGNMENT_KEY);
        let n_kv = self.metadata.len() as u64 + u64::from(add_alignment);
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&n_kv.to_le_bytes());
        for (k, v) in self.metadata.iter() {
            put_string(&mut out, k);
            put_value(&mut out, v);
        }
        if add_alignment {
            put_string(&mut out, ALIGNMENT_KEY);
            put_value(&mut out, &Value::U32(self.alignment as u32));
        }
        for t in &self.tensors {
            put_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.id().to_le_bytes());
            out.extend_from_slice(&t.offset.to_le_bytes());
        }
        out.resize(pad_to(out.len() as u64, self.alignment) as usize, 0);
        out
    }

    /// Writes header, metadata, directory and padding. No more keys or tensors
    /// can be added afterwards.
    pub fn write_header(&mut self, w: &mut impl Write) -> Result<(), GgufError> {
        self.declaring("write_header")?;
        w.write_all(&self.header_bytes())?;
        self.state = State::Data { next: 0, done: 0 };
        Ok(())
    }

    /// Writes (part of) the data of tensor `name`, which must be the next one in
    /// declaration order. When the tensor's bytes are complete, the padding is
    /// written. Writing more bytes than the tensor holds is an error.
    pub fn write_tensor_data(
        &mut self,
        w: &mut impl Write,
        name: &str,
        bytes: &[u8],
    ) -> Result<(), GgufError> {
        let State::Data { next, done } = self.state else {
            return Err(GgufError::writer(format!(
                "write_tensor_data('{name}') before write_header or after finish"
            )));
        };
        let Some(t) = self.tensors.get(next) else {
            return Err(GgufError::writer(format!(
                "write_tensor_data('{name}'): every declared tensor is already written"
            )));
        };
        if t.name != name {
            return Err(GgufError::writer(format!(
                "write_tensor_data('{name}'): expected data of tensor '{}' next ({done} of {} bytes written)",
                t.name, t.n_bytes
            )));
        }
        let done = done + bytes.len() as u64;
        if done > t.n_bytes {
            return Err(GgufError::writer(format!(
                "tensor '{name}': {done} bytes written, more than its {} bytes",
                t.n_bytes
            )));
        }
        w.write_all(bytes)?;
        if done == t.n_bytes {
            let pad = pad_to(t.n_bytes, self.alignment) - t.n_bytes;
            w.write_all(&vec![0u8; pad as usize])?;
            self.state = State::Data {
                next: next + 1,
                done: 0,
            };
        } else {
            self.state = State::Data { next, done };
        }
        Ok(())
    }

    /// Checks that every tensor was written completely and flushes `w`.
    pub fn finish(&mut self, w: &mut impl Write) -> Result<(), GgufError> {
        match self.state {
            State::Data { next, .. } if next == self.tensors.len() => {
                w.flush()?;
                self.state = State::Finished;
                Ok(())
            }
            State::Data { next, done } => Err(GgufError::writer(format!(
                "finish: tensor '{}' has {done} of {} bytes written ({} tensors left)",
                self.tensors[next].name,
                self.tensors[next].n_bytes,
                self.tensors.len() - next
            ))),
            State::Declaring => Err(GgufError::writer("finish before write_header")),
            State::Finished => Err(GgufError::writer("finish called twice")),
        }
    }

    /// Writes a whole file whose tensors were all added with `add_tensor`.
    pub fn write_all(mut self, w: &mut impl Write) -> Result<(), GgufError> {
        if let Some(i) = self.data.iter().position(Option::is_none) {
            return Err(GgufError::writer(format!(
                "tensor '{}' was declared without data; stream it with write_tensor_data",
                self.tensors[i].name
            )));
        }
        self.write_header(w)?;
        let data = std::mem::take(&mut self.data);
        for (i, d) in data.iter().enumerate() {
            let name = self.tensors[i].name.clone();
            self.write_tensor_data(w, &name, d.as_deref().unwrap_or_default())?;
        }
        self.finish(w)
    }

    /// `write_all` into a byte vector.
    pub fn to_bytes(self) -> Result<Vec<u8>, GgufError> {
        let mut out = Vec::new();
        self.write_all(&mut out)?;
        Ok(out)
    }

    /// `write_all` into a new file at `path`.
    pub fn write_to_path(self, path: impl AsRef<Path>) -> Result<(), GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::create(path).map_err(io)?;
        let mut w = std::io::BufWriter::new(file);
        match self.write_all(&mut w) {
            Err(GgufError::Write(source)) => Err(io(source)),
            r => r,
        }
    }
}
