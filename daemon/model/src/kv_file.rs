//! KV cache files: a sequence's cache saved to disk and restored, so a
//! prompt prefix is never prefilled twice (see [`crate::kv_store`] for the
//! directory of them).
//!
//! Layout, little-endian:
//!
//! ```text
//! 0   magic        b"DSKV"
//! 4   version      u32 (= 1)
//! 8   fingerprint  [u8; 32]  the model's (see `fingerprint`)
//! 40  kind         u8        0: dense KvCache, 1: DeepSeek2 latent cache,
//!                            2: DeepSeek V4 compressed cache
//! 41  kv type      u8        KvType::id
//! 42  reserved     [u8; 2]   zero
//! 44  n_layer      u32
//! 48  k_dim        u32       values per position and layer (latent row for kind 1;
//!                            kind 2: the low 32 bits of the state's byte length)
//! 52  v_dim        u32       (0 for kind 1; kind 2: the high 32 bits)
//! 56  n_tokens     u32       positions held = the prefix's token ids
//! 60  tokens       n_tokens × u32
//!     layers       per layer: n_tokens key rows, then n_tokens value rows,
//!                  each row as the cache stores it (f32, or blocks of the type);
//!                  kind 2: the state as `Ds4Cache::state_bytes` writes it
//!                  (windows, compressor states, compressed rows), whose
//!                  windows cannot be cut to a prefix, so it is saved whole
//!     checksum     blake3 of every byte before it, 32 bytes
//! ```
//!
//! Loading checks, in this order, the magic, the version, that the length
//! the header implies is the file's length (before anything is allocated),
//! the checksum, the model fingerprint ("foreign" file), then the cache
//! type and shapes against the model. Every failure is a [`KvFileError`].

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::{KvType, Model, SeqState};

pub const MAGIC: [u8; 4] = *b"DSKV";
pub const VERSION: u32 = 1;
/// Bytes before the token ids.
pub const HEADER_BYTES: u64 = 60;
const CHECKSUM_BYTES: u64 = 32;
const KIND_DENSE: u8 = 0;
const KIND_MLA: u8 = 1;
const KIND_DS4: u8 = 2;

/// What identifies a model's weights and how it computes: two models with
/// the same fingerprint give the same KV for the same tokens.
pub type Fingerprint = [u8; 32];

/// Why a KV file was not saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum KvFileError {
    #[error("KV file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a DwarfStar KV file (bad magic)")]
    BadMagic,
    #[error("KV file version {0}; this build reads version {VERSION}")]
    Version(u32),
    #[error("KV file is truncated or padded: {found} bytes, its header says {expected}")]
    Length { expected: u64, found: u64 },
    #[error("KV file checksum mismatch: the file is corrupted")]
    Checksum,
    #[error("KV file comes from another model (fingerprint {file}, this model's is {model})")]
    Foreign { file: String, model: String },
    #[error("KV file does not fit this model: {0}")]
    Mismatch(String),
    #[error("KV file holds {positions} positions; the sequence holds at most {capacity}")]
    TooLong { positions: usize, capacity: usize },
    #[error("saving or restoring KV caches is not supported for {0}")]
    Unsupported(String),
}

type Result<T> = std::result::Result<T, KvFileError>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KvFileError + '_ {
    move |source| KvFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Hex of the first `n` bytes of `b`.
pub fn hex(b: &[u8], n: usize) -> String {
    b.iter().take(n).map(|x| format!("{x:02x}")).collect()
}

/// The model's fingerprint: blake3 over the architecture, the llama-exact
/// switch (it changes summation orders, so the KV's last bits), every
/// metadata entry (after overrides), every tensor's name, shape, type,
/// offset and size, and the first 256 bytes of each tensor's data (so two
/// fine-tunes of one shape differ). Cheap: no full pass over the weights.
pub fn fingerprint(model: &Model) -> Fingerprint {
    let arch = model.architecture();
    let (file, exact) = (arch.file(), arch.llama_exact());
    let mut h = blake3::Hasher::new();
    h.update(b"dwarfstar kv fingerprint v1\0");
    h.update(model.arch().as_bytes());
    h.update(&[exact as u8]);
    for (k, v) in file.metadata().iter() {
        h.update(&(k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        let v = format!("{v:?}");
        h.update(&(v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
    for t in file.tensors() {
        h.update(&(t.name.len() as u64).to_le_bytes());
        h.update(t.name.as_bytes());
        for d in &t.dims {
            h.update(&d.to_le_bytes());
        }
        h.update(&t.ty.id().to_le_bytes());
        h.update(&t.offset.to_le_bytes());
        h.update(&t.n_bytes.to_le_bytes());
        let data = file.tensor_data(t);
        h.update(&data[..data.len().min(256)]);
    }
    *h.finalize().as_bytes()
}

/// A KV file's header and token ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvHeader {
    pub fingerprint: Fingerprint,
    /// 0: dense, 1: DeepSeek2 latent, 2: DeepSeek V4 compressed.
    pub kind: u8,
    pub kv_type: KvType,
    pub n_layer: usize,
    pub k_dim: usize,
    pub v_dim: usize,
    pub tokens: Vec<u32>,
}

impl KvHeader {
    /// Bytes of one position's key and value rows in one layer.
    fn row_bytes(&self) -> Result<(u64, u64)> {
        let rb = |d: usize| {
            if d == 0 {
                return Some(0);
            }
            self.kv_type.row_bytes(d).map(|b| b as u64)
        };
        match (rb(self.k_dim), rb(self.v_dim)) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => Err(KvFileError::Mismatch(format!(
                "rows of {}/{} values are not whole {} blocks",
                self.k_dim, self.v_dim, self.kv_type
            ))),
        }
    }

    /// Bytes of a V4 state (kind 2).
    fn state_len(&self) -> u64 {
        self.k_dim as u64 | (self.v_dim as u64) << 32
    }

    /// The file length this header implies (None on overflow).
    fn file_len(&self) -> Result<u64> {
        if self.kind == KIND_DS4 {
            let n = self.tokens.len() as u128;
            let total =
                HEADER_BYTES as u128 + 4 * n + self.state_len() as u128 + CHECKSUM_BYTES as u128;
            return u64::try_from(total)
                .map_err(|_| KvFileError::Mismatch("impossible sizes".into()));
        }
        let (kr, vr) = self.row_bytes()?;
        let n = self.tokens.len() as u128;
        let total = HEADER_BYTES as u128
            + 4 * n
            + self.n_layer as u128 * n * (kr as u128 + vr as u128)
            + CHECKSUM_BYTES as u128;
        u64::try_from(total).map_err(|_| KvFileError::Mismatch("impossible sizes".into()))
    }
}

/// Writes and hashes.
struct HashWriter<W: Write> {
    w: W,
    h: blake3::Hasher,
}

impl<W: Write> HashWriter<W> {
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.h.update(b);
        self.w.write_all(b)
    }
}

/// Reads and hashes.
struct HashReader<R: Read> {
    r: R,
    h: blake3::Hasher,
}

impl<R: Read> HashReader<R> {
    fn take(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.r.read_exact(buf)?;
        self.h.update(buf);
        Ok(())
    }
}

/// The header a state of `model` would be saved with.
fn header_of(fp: &Fingerprint, state: &SeqState, tokens: &[u32]) -> Result<KvHeader> {
    let (kind, kv_type, n_layer, k_dim, v_dim) = match state {
        SeqState::Dense(kv) => (KIND_DENSE, kv.ty(), kv.layers.len(), kv.k_dim(), kv.v_dim()),
        SeqState::Mla(c) => (KIND_MLA, KvType::F32, c.n_layer(), c.row(), 0),
        SeqState::Ds4(c) => (KIND_DS4, c.kv_type().to_kv(), c.n_layer(), 0, 0),
    };
    Ok(KvHeader {
        fingerprint: *fp,
        kind,
        kv_type,
        n_layer,
        k_dim,
        v_dim,
        tokens: tokens.to_vec(),
    })
}

/// Saves the first `tokens.len()` positions of `state` (whose token ids
/// `tokens` are) to `w`. Returns the bytes written.
pub fn save(fp: &Fingerprint, tokens: &[u32], state: &SeqState, w: impl Write) -> Result<u64> {
    save_inner(fp, tokens, state, w).map_err(|e| match e {
        SaveErr::Io(source) => KvFileError::Io {
            path: PathBuf::from("<stream>"),
            source,
        },
        SaveErr::Kv(e) => e,
    })
}

enum SaveErr {
    Io(std::io::Error),
    Kv(KvFileError),
}

impl From<std::io::Error> for SaveErr {
    fn from(e: std::io::Error) -> Self {
        SaveErr::Io(e)
    }
}

impl From<KvFileError> for SaveErr {
    fn from(e: KvFileError) -> Self {
        SaveErr::Kv(e)
    }
}

fn save_inner(
    fp: &Fingerprint,
    tokens: &[u32],
    state: &SeqState,
    w: impl Write,
) -> std::result::Result<u64, SaveErr> {
    let n = tokens.len();
    if n > state.len() {
        return Err(KvFileError::Mismatch(format!(
            "{n} token ids for a state of {} positions",
            state.len()
        ))
        .into());
    }
    if n > u32::MAX as usize {
        return Err(KvFileError::Mismatch("too many positions".into()).into());
    }
    let mut hd = header_of(fp, state, tokens)?;
    // A V4 state is saved whole: cut to the prefix first (below what it
    // holds, that keeps the tokens and drops the layers' state).
    let ds4 = match state {
        SeqState::Ds4(c) => {
            let mut c = c.clone();
            c.truncate(n);
            let b = c.state_bytes();
            hd.k_dim = (b.len() as u64 & u32::MAX as u64) as usize;
            hd.v_dim = (b.len() as u64 >> 32) as usize;
            Some(b)
        }
        _ => None,
    };
    let len = hd.file_len()?;
    let mut w = HashWriter {
        w: BufWriter::with_capacity(1 << 20, w),
        h: blake3::Hasher::new(),
    };
    let mut head = Vec::with_capacity(HEADER_BYTES as usize + 4 * n);
    head.extend_from_slice(&MAGIC);
    head.extend_from_slice(&VERSION.to_le_bytes());
    head.extend_from_slice(fp);
    head.extend_from_slice(&[hd.kind, hd.kv_type.id(), 0, 0]);
    for v in [hd.n_layer, hd.k_dim, hd.v_dim, n] {
        head.extend_from_slice(&(v as u32).to_le_bytes());
    }
    for t in tokens {
        head.extend_from_slice(&t.to_le_bytes());
    }
    w.put(&head)?;
    let f32_bytes = |w: &mut HashWriter<_>, x: &[f32]| -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(x.len().min(1 << 16) * 4);
        for chunk in x.chunks(1 << 16) {
            buf.clear();
            for v in chunk {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            w.put(&buf)?;
        }
        Ok(())
    };
    match state {
        SeqState::Dense(kv) => {
            let (kr, vr) = kv.row_bytes();
            for l in &kv.layers {
                if kv.ty() == KvType::F32 {
                    f32_bytes(&mut w, &l.k[..n * kv.k_dim()])?;
                    f32_bytes(&mut w, &l.v[..n * kv.v_dim()])?;
                } else {
                    w.put(&l.kq[..n * kr])?;
                    w.put(&l.vq[..n * vr])?;
                }
            }
        }
        SeqState::Mla(c) => {
            for il in 0..hd.n_layer {
                f32_bytes(&mut w, &c.layer(il)[..n * c.row()])?;
            }
        }
        SeqState::Ds4(_) => w.put(ds4.as_deref().unwrap_or_default())?,
    }
    let sum = *w.h.finalize().as_bytes();
    w.w.write_all(&sum)?;
    w.w.flush()?;
    Ok(len)
}

/// Saves to `path` atomically: a temporary file beside it, synced, then
/// renamed over it. Returns the bytes written.
pub fn save_file(fp: &Fingerprint, tokens: &[u32], state: &SeqState, path: &Path) -> Result<u64> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tmp = dir.join(format!(".tmp-{}-{nanos}.dskv", std::process::id()));
    let res = (|| {
        let f = File::create(&tmp).map_err(io_err(&tmp))?;
        let n = save(fp, tokens, state, &f).map_err(|e| match e {
            KvFileError::Io { source, .. } => KvFileError::Io {
                path: tmp.clone(),
                source,
            },
            e => e,
        })?;
        f.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))?;
        Ok(n)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Reads the header and token ids; `file_len` is the file's length, which
/// the header must imply exactly (so nothing is allocated past it).
pub fn read_header(r: &mut impl Read, file_len: u64) -> Result<KvHeader> {
    read_header_hashed(
        &mut HashReader {
            r,
            h: blake3::Hasher::new(),
        },
        file_len,
    )
}

fn read_header_hashed<R: Read>(r: &mut HashReader<R>, file_len: u64) -> Result<KvHeader> {
    let short = |e: std::io::Error| -> KvFileError {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            KvFileError::Length {
                expected: HEADER_BYTES + CHECKSUM_BYTES,
                found: file_len,
            }
        } else {
            KvFileError::Io {
                path: PathBuf::from("<stream>"),
                source: e,
            }
        }
    };
    let mut head = [0u8; HEADER_BYTES as usize];
    if file_len < 8 {
        return Err(KvFileError::BadMagic);
    }
    r.take(&mut head[..8]).map_err(short)?;
    if head[..4] != MAGIC {
        return Err(KvFileError::BadMagic);
    }
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let version = u32_at(&head, 4);
    if version != VERSION {
        return Err(KvFileError::Version(version));
    }
    if file_len < HEADER_BYTES + CHECKSUM_BYTES {
        return Err(KvFileError::Length {
            expected: HEADER_BYTES + CHECKSUM_BYTES,
            found: file_len,
        });
    }
    r.take(&mut head[8..]).map_err(short)?;
    let mut fp = [0u8; 32];
    fp.copy_from_slice(&head[8..40]);
    let kind = head[40];
    if kind != KIND_DENSE && kind != KIND_MLA && kind != KIND_DS4 {
        return Err(KvFileError::Mismatch(format!("unknown cache kind {kind}")));
    }
    let kv_type = KvType::from_id(head[41])
        .ok_or_else(|| KvFileError::Mismatch(format!("unknown KV type id {}", head[41])))?;
    let n_tokens = u32_at(&head, 56) as u64;
    // Bound the token list by the file before allocating it.
    if HEADER_BYTES + 4 * n_tokens + CHECKSUM_BYTES > file_len {
        return Err(KvFileError::Length {
            expected: HEADER_BYTES + 4 * n_tokens + CHECKSUM_BYTES,
            found: file_len,
        });
    }
    let mut raw = vec![0u8; 4 * n_tokens as usize];
    r.take(&mut raw).map_err(short)?;
    let tokens = raw
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let hd = KvHeader {
        fingerprint: fp,
        kind,
        kv_type,
        n_layer: u32_at(&head, 44) as usize,
        k_dim: u32_at(&head, 48) as usize,
        v_dim: u32_at(&head, 52) as usize,
        tokens,
    };
    let expected = hd.file_len()?;
    if expected != file_len {
        return Err(KvFileError::Length {
            expected,
            found: file_len,
        });
    }
    Ok(hd)
}

/// Restores a state of `model` holding at most `capacity` positions from
/// `r` (a file of `file_len` bytes saved with fingerprint `fp`). Returns
/// the token ids and the state, which holds one position per id.
pub fn load(
    model: &Model,
    fp: &Fingerprint,
    r: impl Read,
    file_len: u64,
    capacity: usize,
) -> Result<(Vec<u32>, SeqState)> {
    let mut r = HashReader {
        r: BufReader::with_capacity(1 << 20, r),
        h: blake3::Hasher::new(),
    };
    let hd = read_header_hashed(&mut r, file_len)?;
    let n = hd.tokens.len();
    if n > capacity {
        return Err(KvFileError::TooLong {
            positions: n,
            capacity,
        });
    }
    let (kr, vr) = if hd.kind == KIND_DS4 {
        (0, 0)
    } else {
        hd.row_bytes()?
    };
    let io = |e: std::io::Error| KvFileError::Io {
        path: PathBuf::from("<stream>"),
        source: e,
    };
    // Read every layer (the length check bounded these allocations by the
    // file), then verify the checksum before looking at the contents.
    let mut ds4 = Vec::new();
    if hd.kind == KIND_DS4 {
        ds4 = vec![0u8; hd.state_len() as usize];
        r.take(&mut ds4).map_err(io)?;
    }
    let mut layers = Vec::with_capacity(hd.n_layer.min(1 << 16));
    for _ in 0..hd
        .n_layer
        .min(if hd.kind == KIND_DS4 { 0 } else { usize::MAX })
    {
        let mut k = vec![0u8; n * kr as usize];
        r.take(&mut k).map_err(io)?;
        let mut v = vec![0u8; n * vr as usize];
        r.take(&mut v).map_err(io)?;
        layers.push((k, v));
    }
    let mut sum = [0u8; 32];
    r.r.read_exact(&mut sum).map_err(io)?;
    if sum != *r.h.finalize().as_bytes() {
        return Err(KvFileError::Checksum);
    }
    if hd.fingerprint != *fp {
        return Err(KvFileError::Foreign {
            file: hex(&hd.fingerprint, 8),
            model: hex(fp, 8),
        });
    }
    let mut state = model.new_state(capacity);
    let mut want = header_of(fp, &state, &hd.tokens)?;
    if want.kind == KIND_DS4 {
        // The state's length is the file's to say (and checked on restore).
        (want.k_dim, want.v_dim) = (hd.k_dim, hd.v_dim);
    }
    if (
        want.kind,
        want.kv_type,
        want.n_layer,
        want.k_dim,
        want.v_dim,
    ) != (hd.kind, hd.kv_type, hd.n_layer, hd.k_dim, hd.v_dim)
    {
        return Err(KvFileError::Mismatch(format!(
            "the file holds a {} cache of {} layers × {}/{} values, the model makes a {} cache of {} layers × {}/{}",
            hd.kv_type, hd.n_layer, hd.k_dim, hd.v_dim, want.kv_type, want.n_layer, want.k_dim, want.v_dim
        )));
    }
    let to_f32 = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    match &mut state {
        SeqState::Dense(kv) => {
            let f32_rows = kv.ty() == KvType::F32;
            for (l, (k, v)) in kv.layers.iter_mut().zip(layers) {
                if f32_rows {
                    l.k = to_f32(&k);
                    l.v = to_f32(&v);
                } else {
                    l.kq = k;
                    l.vq = v;
                }
            }
            kv.advance(n);
        }
        SeqState::Mla(c) => {
            for (il, (k, _)) in layers.into_iter().enumerate() {
                c.write(il, 0, &to_f32(&k));
            }
            c.advance(n);
        }
        SeqState::Ds4(c) => c.restore(&hd.tokens, &ds4).map_err(KvFileError::Mismatch)?,
    }
    Ok((hd.tokens, state))
}

/// [`load`] from a file.
pub fn load_file(
    model: &Model,
    fp: &Fingerprint,
    path: &Path,
    capacity: usize,
) -> Result<(Vec<u32>, SeqState)> {
    let f = File::open(path).map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len();
    load(model, fp, f, len, capacity).map_err(|e| match e {
        KvFileError::Io { source, .. } => KvFileError::Io {
            path: path.to_path_buf(),
            source,
        },
        e => e,
    })
}

/// The header and token ids of the file at `path`.
pub fn read_header_file(path: &Path) -> Result<KvHeader> {
    let f = File::open(path).map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len();
    read_header(&mut BufReader::new(f), len)
}
