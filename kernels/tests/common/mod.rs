//! Shared helpers of the kernel integration tests: the quant-zoo fixture
//! (tests/fixtures/quant) and a small deterministic random generator.
#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::Value;

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/quant"
    ))
}

/// quant-zoo.gguf and its index.json.
pub struct Zoo {
    pub file: Vec<u8>,
    pub index: Value,
}

impl Zoo {
    pub fn load() -> Zoo {
        let dir = fixture_dir();
        let file = std::fs::read(dir.join("quant-zoo.gguf"))
            .unwrap_or_else(|e| panic!("reading {}/quant-zoo.gguf: {e}", dir.display()));
        let index: Value = serde_json::from_slice(
            &std::fs::read(dir.join("index.json")).expect("reading index.json"),
        )
        .expect("parsing index.json");
        Zoo { file, index }
    }

    pub fn rows(&self) -> usize {
        self.index["rows"].as_u64().unwrap() as usize
    }

    pub fn cols(&self) -> usize {
        self.index["cols"].as_u64().unwrap() as usize
    }

    fn slice(&self, entry: &Value) -> &[u8] {
        let off = entry["offset"].as_u64().unwrap() as usize;
        let n = entry["n_bytes"].as_u64().unwrap() as usize;
        &self.file[off..off + n]
    }

    fn floats(bytes: &[u8]) -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// The f32 source matrix, `rows * cols`.
    pub fn source(&self) -> Vec<f32> {
        Self::floats(self.slice(&self.index["source"]))
    }

    /// The f32 activation vector, `cols`.
    pub fn activation(&self) -> Vec<f32> {
        Self::floats(self.slice(&self.index["activation"]))
    }

    pub fn entry(&self, name: &str) -> &Value {
        &self.index["types"][name]
    }

    /// The quantized bytes of type `name` (e.g. "q4_1"), all rows.
    pub fn quantized(&self, name: &str) -> &[u8] {
        self.slice(self.entry(name))
    }

    /// ggml's dequantization of type `name`, all rows.
    pub fn dequantized(&self, name: &str) -> Vec<f32> {
        let f = self.entry(name)["dequant_file"].as_str().unwrap();
        Self::floats(&std::fs::read(fixture_dir().join(f)).expect("reading dequant file"))
    }

    pub fn floats_of(&self, name: &str, key: &str) -> Vec<f64> {
        self.entry(name)[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    }
}

/// xorshift64*: deterministic test data without extra dependencies.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Roughly normal-ish values of scale `s`, with the odd outlier.
    pub fn value(&mut self, s: f32) -> f32 {
        let v = (self.uniform() + self.uniform() + self.uniform()) * s;
        if self.next_u64().is_multiple_of(97) {
            v * 20.0
        } else {
            v
        }
    }

    pub fn vec(&mut self, n: usize, s: f32) -> Vec<f32> {
        (0..n).map(|_| self.value(s)).collect()
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}
