//! Malformed files: each crafted variant must give `Err` of the expected variant,
//! never panic, and never allocate much more than the file's size (checked with a
//! counting global allocator). Also: truncation at every byte of the header,
//! metadata and directory, and a deterministic mutation fuzz loop.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use dwarfstar_gguf::{GgmlType, GgufError, GgufFile, GgufWriter, Value};

// ---- allocation watch -------------------------------------------------------

/// Records the largest single allocation made by the current thread.
struct Watch;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|m| m.set(m.get().max(size)));
}

unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Watch = Watch;

/// Opens `bytes`, asserting that no single allocation exceeded a small multiple
/// of the file size (so no count from the file was trusted before checking).
fn open(bytes: &[u8]) -> Result<GgufFile, GgufError> {
    LARGEST.with(|m| m.set(0));
    let r = GgufFile::from_bytes(bytes);
    let largest = LARGEST.with(|m| m.get());
    let limit = 4096 + 16 * bytes.len();
    assert!(
        largest <= limit,
        "an allocation of {largest} bytes for a {}-byte file",
        bytes.len()
    );
    r
}

// ---- raw file builder -------------------------------------------------------

#[derive(Default, Clone)]
struct Raw(Vec<u8>);

impl Raw {
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn str(self, s: &str) -> Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    /// A key followed by a value type id.
    fn key(self, k: &str, ty: u32) -> Self {
        self.str(k).u32(ty)
    }
    /// A tensor directory entry.
    fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        let mut r = self.str(name).u32(dims.len() as u32);
        for &d in dims {
            r = r.u64(d);
        }
        r.u32(ty).u64(offset)
    }
    /// Zero padding to a multiple of `a`.
    fn pad(mut self, a: usize) -> Self {
        while !self.0.len().is_multiple_of(a) {
            self.0.push(0);
        }
        self
    }
    fn zeros(mut self, n: usize) -> Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
}

/// Magic, version 3 and the two counts.
fn header(n_tensors: u64, n_kv: u64) -> Raw {
    Raw::default()
        .bytes(b"GGUF")
        .u32(3)
        .u64(n_tensors)
        .u64(n_kv)
}

/// A valid file (for alignment 32 or 64) with one F32 tensor after `kv` (n_kv pairs).
fn with_kv(n_kv: u64, kv: Raw) -> Vec<u8> {
    let mut r = header(1, n_kv).bytes(&kv.0);
    r = r.tensor("t", &[4], 0, 0).pad(64).zeros(16);
    r.0
}

/// A valid file whose directory is `dir` (n_tensors entries) and data `data_len` bytes.
fn with_tensors(n_tensors: u64, dir: Raw, data_len: usize) -> Vec<u8> {
    header(n_tensors, 1)
        .key("general.architecture", 8)
        .str("x")
        .bytes(&dir.0)
        .pad(32)
        .zeros(data_len)
        .0
}

// ---- the crafted variants ---------------------------------------------------

type Check = fn(&GgufError) -> bool;

fn cases() -> Vec<(&'static str, Vec<u8>, Check)> {
    use GgufError as E;
    let r = Raw::default;
    let big = 1u64 << 63;
    let mut v: Vec<(&'static str, Vec<u8>, Check)> = vec![
        ("empty file", vec![], |e| matches!(e, E::Truncated { .. })),
        ("3 bytes of magic", b"GGU".to_vec(), |e| {
            matches!(e, E::Truncated { .. })
        }),
        ("magic only", b"GGUF".to_vec(), |e| {
            matches!(e, E::Truncated { .. })
        }),
        (
            "magic GGML",
            r().bytes(b"GGML").u32(3).u64(0).u64(0).0,
            |e| matches!(e, E::BadMagic { .. }),
        ),
        (
            "lower-case magic",
            r().bytes(b"gguf").u32(3).u64(0).u64(0).0,
            |e| matches!(e, E::BadMagic { .. }),
        ),
        ("one wrong byte", b"X".to_vec(), |e| {
            matches!(e, E::BadMagic { .. })
        }),
        (
            "version 1",
            r().bytes(b"GGUF").u32(1).u64(0).u64(0).0,
            |e| matches!(e, E::UnsupportedVersion { version: 1, .. }),
        ),
        (
            "version 0",
            r().bytes(b"GGUF").u32(0).u64(0).u64(0).0,
            |e| matches!(e, E::UnsupportedVersion { version: 0, .. }),
        ),
        (
            "version 4",
            r().bytes(b"GGUF").u32(4).u64(0).u64(0).0,
            |e| matches!(e, E::UnsupportedVersion { version: 4, .. }),
        ),
        (
            "version u32::MAX",
            r().bytes(b"GGUF").u32(u32::MAX).u64(0).u64(0).0,
            |e| matches!(e, E::UnsupportedVersion { .. }),
        ),
        (
            "big-endian v3",
            r().bytes(b"GGUF").u32(3u32.swap_bytes()).0,
            |e| matches!(e, E::BigEndian { swapped: 3, .. }),
        ),
        (
            "big-endian v2",
            r().bytes(b"GGUF").u32(2u32.swap_bytes()).0,
            |e| matches!(e, E::BigEndian { swapped: 2, .. }),
        ),
        (
            "tensor_count u64::MAX",
            header(u64::MAX, 0).zeros(64).0,
            |e| matches!(e, E::CountTooLarge { .. }),
        ),
        ("kv_count u64::MAX", header(0, u64::MAX).zeros(64).0, |e| {
            matches!(e, E::CountTooLarge { .. })
        }),
        ("kv_count 2^62", header(0, 1 << 62).zeros(64).0, |e| {
            matches!(e, E::CountTooLarge { .. })
        }),
        (
            "tensor_count 2 with room for 1",
            header(2, 0).tensor("a", &[4], 0, 0).0,
            |e| matches!(e, E::CountTooLarge { .. }),
        ),
        ("key length 2^63", header(0, 1).u64(big).zeros(32).0, |e| {
            matches!(e, E::CountTooLarge { .. })
        }),
        (
            "key length u64::MAX",
            header(0, 1).u64(u64::MAX).zeros(32).0,
            |e| matches!(e, E::CountTooLarge { .. }),
        ),
        (
            "string value length 2^63",
            with_kv(1, r().key("k", 8).u64(big)),
            |e| matches!(e, E::CountTooLarge { .. }),
        ),
        (
            "string value length just past the end",
            {
                let mut f = header(0, 1).key("k", 8).0;
                f.extend_from_slice(&11u64.to_le_bytes());
                f.extend_from_slice(b"0123456789");
                f
            },
            |e| matches!(e, E::CountTooLarge { .. }),
        ),
        (
            "u8 array length u64::MAX",
            with_kv(1, r().key("k", 9).u32(0).u64(u64::MAX)),
            |e| matches!(e, E::CountTooLarge { .. }),
        ),
        (
            "u64 array length 2^61",
            with_kv(1, r().key("k", 9).u32(10).u64(1 << 61)),
            |e| matches!(e, E::CountTooLarge { .. }),
        ),
        (
            "u64 array one element too long",
            {
                let mut f = header(0, 1).key("k", 9).u32(10).u64(3).0;
                f.extend_from_slice(&[0; 23]);
                f
            },
            |e| matches!(e, E::CountTooLarge { .. }),
        ),
        (
            "string array length 2^62",
            with_kv(1, r().key("k", 9).u32(8).u64(1 << 62)),
            |e| matches!(e, E::CountTooLarge { .. }),
        ),
        (
            "array of arrays, huge outer count",
            with_kv(1, r().key("k", 9).u32(9).u64(1 << 40)),
            |e| matches!(e, E::CountTooLarge { .. }),
        ),
        (
            "array of arrays, huge inner count",
            with_kv(1, r().key("k", 9).u32(9).u64(1).u32(6).u64(big)),
            |e| matches!(e, E::CountTooLarge { .. }),
        ),
        (
            "string in array, length 2^63",
            with_kv(1, r().key("k", 9).u32(8).u64(1).u64(big)),
            |e| matches!(e, E::CountTooLarge { .. }),
        ),
        (
            "unknown value type 13",
            with_kv(1, r().key("k", 13).u32(0)),
            |e| matches!(e, E::UnknownValueType { type_id: 13, .. }),
        ),
        (
            "unknown value type u32::MAX",
            with_kv(1, r().key("k", u32::MAX).u32(0)),
            |e| matches!(e, E::UnknownValueType { .. }),
        ),
        (
            "unknown array element type",
            with_kv(1, r().key("k", 9).u32(99).u64(1).u32(0)),
            |e| matches!(e, E::UnknownValueType { type_id: 99, .. }),
        ),
        (
            "unknown type inside nested array",
            with_kv(1, r().key("k", 9).u32(9).u64(1).u32(77).u64(0)),
            |e| matches!(e, E::UnknownValueType { type_id: 77, .. }),
        ),
        ("bool value 2", with_kv(1, r().key("k", 7).u8(2)), |e| {
            matches!(e, E::InvalidBool { value: 2, .. })
        }),
        (
            "bool 0xff in array",
            with_kv(1, r().key("k", 9).u32(7).u64(2).u8(1).u8(0xff)),
            |e| matches!(e, E::InvalidBool { value: 0xff, .. }),
        ),
        (
            "invalid UTF-8 key",
            with_kv(1, r().u64(2).bytes(&[0xc3, 0x28]).u32(0).u8(0)),
            |e| matches!(e, E::InvalidUtf8 { .. }),
        ),
        (
            "invalid UTF-8 string value",
            with_kv(1, r().key("k", 8).u64(1).u8(0xff)),
            |e| matches!(e, E::InvalidUtf8 { .. }),
        ),
        (
            "invalid UTF-8 in string array",
            with_kv(
                1,
                r().key("k", 9)
                    .u32(8)
                    .u64(1)
                    .u64(3)
                    .bytes(&[0xe2, 0x82, 0x28]),
            ),
            |e| matches!(e, E::InvalidUtf8 { .. }),
        ),
        (
            "invalid UTF-8 tensor name",
            with_tensors(1, r().u64(1).u8(0x80).u32(1).u64(4).u32(0).u64(0), 16),
            |e| matches!(e, E::InvalidUtf8 { .. }),
        ),
        ("empty key", with_kv(1, r().key("", 0).u8(0)), |e| {
            matches!(e, E::EmptyKey { .. })
        }),
        (
            "duplicate key",
            with_kv(2, r().key("k", 0).u8(1).key("k", 4).u32(2)),
            |e| matches!(e, E::DuplicateKey { key, .. } if key == "k"),
        ),
        (
            "arrays nested 9 deep",
            {
                let mut kv = r().key("k", 9);
                for _ in 0..9 {
                    kv = kv.u32(9).u64(1);
                }
                with_kv(1, kv.u32(0).u64(0))
            },
            |e| matches!(e, E::NestingTooDeep { .. }),
        ),
        (
            "alignment 0",
            with_kv(1, r().key("general.alignment", 4).u32(0)),
            |e| matches!(e, E::BadAlignment { .. }),
        ),
        (
            "alignment 48",
            with_kv(1, r().key("general.alignment", 4).u32(48)),
            |e| matches!(e, E::BadAlignment { .. }),
        ),
        (
            "alignment stored as u64",
            with_kv(1, r().key("general.alignment", 10).u64(32)),
            |e| matches!(e, E::BadAlignment { .. }),
        ),
        (
            "alignment stored as string",
            with_kv(1, r().key("general.alignment", 8).str("32")),
            |e| matches!(e, E::BadAlignment { .. }),
        ),
        (
            "duplicate tensor names",
            with_tensors(2, r().tensor("w", &[4], 0, 0).tensor("w", &[4], 0, 32), 64),
            |e| matches!(e, E::DuplicateTensor { name } if name == "w"),
        ),
        (
            "tensor name of 64 bytes",
            with_tensors(1, r().tensor(&"n".repeat(64), &[4], 0, 0), 16),
            |e| matches!(e, E::TensorNameTooLong { len: 64, .. }),
        ),
        (
            "n_dims 0",
            with_tensors(1, r().str("w").u32(0).u32(0).u64(0), 16),
            |e| matches!(e, E::BadDimCount { n_dims: 0, .. }),
        ),
        (
            "n_dims 5",
            with_tensors(1, r().tensor("w", &[1, 1, 1, 1, 1], 0, 0), 16),
            |e| matches!(e, E::BadDimCount { n_dims: 5, .. }),
        ),
        (
            "n_dims u32::MAX",
            with_tensors(1, r().str("w").u32(u32::MAX).zeros(64), 16),
            |e| matches!(e, E::BadDimCount { .. }),
        ),
        (
            "negative dimension",
            with_tensors(1, r().tensor("w", &[4, u64::MAX], 0, 0), 16),
            |e| matches!(e, E::BadShape { .. }),
        ),
        (
            "element count overflows i64",
            with_tensors(1, r().tensor("w", &[1 << 32, 1 << 32], 0, 0), 16),
            |e| matches!(e, E::BadShape { .. }),
        ),
        (
            "element count overflows over 4 dims",
            with_tensors(
                1,
                r().tensor("w", &[1 << 16, 1 << 16, 1 << 16, 1 << 16], 0, 0),
                16,
            ),
            |e| matches!(e, E::BadShape { .. }),
        ),
        (
            "byte size overflows u64",
            with_tensors(1, r().tensor("w", &[1 << 62], 0, 0), 16),
            |e| matches!(e, E::BadShape { .. }),
        ),
        (
            "ne0 33 for Q4_0",
            with_tensors(1, r().tensor("w", &[33, 2], 2, 0), 64),
            |e| {
                matches!(
                    e,
                    E::BlockMismatch {
                        ne0: 33,
                        block_size: 32,
                        ..
                    }
                )
            },
        ),
        (
            "ne0 32 for Q4_K",
            with_tensors(1, r().tensor("w", &[32], 12, 0), 256),
            |e| {
                matches!(
                    e,
                    E::BlockMismatch {
                        block_size: 256,
                        ..
                    }
                )
            },
        ),
        (
            "removed type id 4 (Q4_2)",
            with_tensors(1, r().tensor("w", &[32], 4, 0), 64),
            |e| matches!(e, E::UnknownTensorType { type_id: 4, name } if name == "w"),
        ),
        (
            "type id 36",
            with_tensors(1, r().tensor("w", &[32], 36, 0), 64),
            |e| matches!(e, E::UnknownTensorType { type_id: 36, .. }),
        ),
        (
            "type id u32::MAX",
            with_tensors(1, r().tensor("w", &[32], u32::MAX, 0), 64),
            |e| matches!(e, E::UnknownTensorType { .. }),
        ),
        (
            "misaligned offset",
            with_tensors(1, r().tensor("w", &[4], 0, 4), 64),
            |e| matches!(e, E::MisalignedTensor { offset: 4, .. }),
        ),
        (
            "offset past the end",
            with_tensors(1, r().tensor("w", &[4], 0, 1 << 40), 64),
            |e| matches!(e, E::TensorOutOfBounds { .. }),
        ),
        (
            "offset near u64::MAX",
            with_tensors(1, r().tensor("w", &[4], 0, u64::MAX - 31), 64),
            |e| matches!(e, E::TensorOutOfBounds { .. }),
        ),
        (
            "shape bigger than the data",
            with_tensors(1, r().tensor("w", &[1024], 0, 0), 64),
            |e| matches!(e, E::TensorOutOfBounds { .. }),
        ),
        (
            "data one byte short",
            with_tensors(1, r().tensor("w", &[4, 4], 0, 0), 63),
            |e| matches!(e, E::TensorOutOfBounds { .. }),
        ),
        (
            "second tensor past the end",
            with_tensors(2, r().tensor("a", &[4], 0, 0).tensor("b", &[4], 0, 32), 40),
            |e| matches!(e, E::TensorOutOfBounds { name, .. } if name == "b"),
        ),
        (
            "two tensors at the same offset",
            with_tensors(2, r().tensor("a", &[4], 0, 0).tensor("b", &[4], 0, 0), 64),
            |e| matches!(e, E::OverlappingTensors { .. }),
        ),
        (
            "tensors overlapping partly",
            with_tensors(
                2,
                r().tensor("a", &[16], 0, 0).tensor("b", &[4], 0, 32),
                128,
            ),
            |e| matches!(e, E::OverlappingTensors { .. }),
        ),
        (
            "no padding before the data section",
            {
                let mut f = with_tensors(1, r().tensor("w", &[4], 0, 0), 0);
                while f.len().is_multiple_of(32) {
                    f.pop();
                }
                f
            },
            |e| matches!(e, E::Truncated { .. } | E::TensorOutOfBounds { .. }),
        ),
    ];
    // Every scalar value type cut off right after its type id.
    for ty in [0u32, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12] {
        let f = header(0, 1).key("key.name", ty).0;
        v.push(("scalar value missing", f, |e| {
            matches!(e, E::Truncated { .. })
        }));
    }
    v
}

#[test]
fn crafted_variants_fail_with_the_expected_error() {
    let cases = cases();
    assert!(cases.len() >= 70, "only {} variants", cases.len());
    for (what, bytes, check) in &cases {
        match open(bytes) {
            Ok(_) => panic!("{what}: opened, expected an error"),
            Err(e) => {
                assert!(check(&e), "{what}: unexpected error {e:?}");
                assert!(!e.to_string().is_empty());
            }
        }
    }
}

#[test]
fn crafted_near_misses_are_valid() {
    let r = Raw::default;
    // The builders above produce valid files when nothing is broken.
    let f = open(&with_tensors(1, r().tensor("w", &[4, 4], 0, 0), 64)).unwrap();
    assert_eq!(f.tensor("w").unwrap().n_bytes, 64);
    let f = open(&with_kv(1, r().key("general.alignment", 4).u32(64))).unwrap();
    assert_eq!(f.alignment(), 64);
    // A zero-sized tensor may share an offset with another one.
    let f = open(&with_tensors(
        2,
        r().tensor("a", &[0, 3], 0, 0).tensor("b", &[4], 0, 0),
        16,
    ));
    assert_eq!(f.unwrap().tensor("a").unwrap().n_elements(), 0);
    // 8 levels of nesting is the limit, inclusive.
    let mut kv = r().key("k", 9);
    for _ in 0..7 {
        kv = kv.u32(9).u64(1);
    }
    let f = open(&with_kv(1, kv.u32(0).u64(0))).unwrap();
    assert!(f.get("k").is_some());
    // Tensor name of 63 bytes is fine; no tensors and no padding is fine.
    open(&with_tensors(
        1,
        r().tensor(&"n".repeat(63), &[4], 0, 0),
        16,
    ))
    .unwrap();
    let f = open(&header(0, 0).0).unwrap();
    assert_eq!((f.tensors().len(), f.metadata().len()), (0, 0));
}

/// A small valid file with several value types and three tensors (written by our
/// writer, which the round-trip tests check against gguf-py and llama.cpp).
fn sample() -> Vec<u8> {
    let mut w = GgufWriter::default();
    w.add_kv("general.architecture", "llama").unwrap();
    w.add_kv("llama.block_count", Value::U32(2)).unwrap();
    w.add_kv("llama.rope.freq_base", Value::F32(10000.0))
        .unwrap();
    w.add_kv(
        "tokenizer.ggml.tokens",
        Value::from(vec!["<s>".to_string(), "a".into(), "bc".into()]),
    )
    .unwrap();
    w.add_kv(
        "tokenizer.ggml.scores",
        Value::from(vec![0.0f32, -1.0, -2.0]),
    )
    .unwrap();
    w.add_kv("tokenizer.ggml.add_bos_token", Value::Bool(true))
        .unwrap();
    w.add_kv("x.i64", Value::I64(-5)).unwrap();
    w.add_kv(
        "x.nested",
        Value::Array(dwarfstar_gguf::Array::Array(vec![
            dwarfstar_gguf::Array::U16(vec![1, 2]),
        ])),
    )
    .unwrap();
    w.add_tensor("token_embd.weight", &[4, 3], GgmlType::F32, vec![1u8; 48])
        .unwrap();
    w.add_tensor(
        "blk.0.attn_q.weight",
        &[32, 2],
        GgmlType::Q8_0,
        vec![2u8; 68],
    )
    .unwrap();
    w.add_tensor("output_norm.weight", &[4], GgmlType::F16, vec![3u8; 8])
        .unwrap();
    w.to_bytes().unwrap()
}

#[test]
fn truncation_at_every_byte_fails_cleanly() {
    let full = sample();
    let f = open(&full).unwrap();
    let data_offset = f.data_offset() as usize;
    let last = f
        .tensors()
        .iter()
        .map(|t| f.tensor_file_offset(t) + t.n_bytes)
        .max()
        .unwrap() as usize;
    let mut n = 0;
    // Every cut inside the header, metadata, directory and padding.
    for len in 0..data_offset {
        let e = open(&full[..len])
            .err()
            .unwrap_or_else(|| panic!("cut at {len} opened"));
        assert!(
            matches!(
                e,
                GgufError::Truncated { .. }
                    | GgufError::CountTooLarge { .. }
                    | GgufError::TensorOutOfBounds { .. }
            ),
            "cut at {len}: {e:?}"
        );
        n += 1;
    }
    // Cuts inside the data section (before the last tensor's final byte).
    for len in (data_offset..last).step_by(7) {
        let e = open(&full[..len])
            .err()
            .unwrap_or_else(|| panic!("cut at {len} opened"));
        assert!(
            matches!(e, GgufError::TensorOutOfBounds { .. }),
            "cut at {len}: {e:?}"
        );
        n += 1;
    }
    // Cutting only the final padding leaves a valid file.
    open(&full[..last]).unwrap();
    assert!(n > 300, "{n} truncation points");
}

/// xorshift64*: a tiny deterministic generator (no dependency).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Touches everything a caller might use on a file that opened.
fn exercise(f: &GgufFile) {
    for (k, v) in f.metadata().iter() {
        let _ = (v.to_string(), v.type_name());
        let _ = (
            f.get_u32(k),
            f.get_u64(k),
            f.get_f32(k),
            f.get_bool(k),
            f.get_str(k),
        );
        let _ = (
            f.get_str_array(k),
            f.get_f32_array(k),
            f.get_i32_array(k),
            f.get_u32_array(k),
        );
    }
    for t in f.tensors() {
        assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
        assert_eq!(t.rows() * t.row_bytes(), t.n_bytes);
        assert_eq!(t.offset % f.alignment(), 0);
    }
}

#[test]
fn mutation_fuzz_never_panics() {
    let base = sample();
    let interesting: [u64; 8] = [
        0,
        1,
        0xff,
        0x7fff_ffff,
        0xffff_ffff,
        1 << 32,
        1 << 63,
        u64::MAX,
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut err) = (0, 0);
    for _ in 0..3000 {
        let mut f = base.clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(f.len());
            match rng.below(5) {
                0 => f[i] = rng.next() as u8,
                1 => f[i] ^= 1 << rng.below(8),
                2 => {
                    let v = interesting[rng.below(interesting.len())].to_le_bytes();
                    let n = if rng.below(2) == 0 { 4 } else { 8 };
                    let end = (i + n).min(f.len());
                    f[i..end].copy_from_slice(&v[..end - i]);
                }
                3 => f.truncate(i),
                _ => {
                    let v = rng.below(64) as u8;
                    f.insert(i, v);
                }
            }
            if f.is_empty() {
                break;
            }
        }
        match open(&f) {
            Ok(file) => {
                exercise(&file);
                ok += 1;
            }
            Err(e) => {
                let _ = e.to_string();
                err += 1;
            }
        }
    }
    assert!(err > 1000 && ok > 10, "ok {ok}, err {err}");
}
