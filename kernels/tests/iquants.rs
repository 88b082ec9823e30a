//! Checks the i-quant, MXFP4 and ternary kernels against ggml's own output
//! on the quant-zoo fixture (tests/fixtures/quant, see
//! /work/shared/reference/README.md): dequantization bit-exact, quantizer
//! error no worse than ggml's, and every SIMD dot product against the
//! scalar reference, the f64 dot of the dequantized row and ggml's value.

use std::path::PathBuf;

use dwarfstar_kernels::{dequantize_row, quantize_row, GgmlType};
use serde_json::Value;

const ROWS: usize = 8;
const COLS: usize = 1024;

fn fixture_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/quant"
    ))
}

struct Zoo {
    index: Value,
    gguf: Vec<u8>,
}

impl Zoo {
    fn load() -> Zoo {
        let dir = fixture_dir();
        let index = std::fs::read_to_string(dir.join("index.json"))
            .unwrap_or_else(|e| panic!("reading {}/index.json: {e}", dir.display()));
        let gguf = std::fs::read(dir.join("quant-zoo.gguf"))
            .unwrap_or_else(|e| panic!("reading {}/quant-zoo.gguf: {e}", dir.display()));
        Zoo {
            index: serde_json::from_str(&index).expect("index.json parses"),
            gguf,
        }
    }

    fn tensor(&self, entry: &Value) -> &[u8] {
        let off = entry["offset"].as_u64().expect("offset") as usize;
        let len = entry["n_bytes"].as_u64().expect("n_bytes") as usize;
        &self.gguf[off..off + len]
    }

    fn f32s(&self, entry: &Value) -> Vec<f32> {
        bytes_to_f32(self.tensor(entry))
    }

    fn source(&self) -> Vec<f32> {
        self.f32s(&self.index["source"])
    }

    fn ty(&self, name: &str) -> &Value {
        &self.index["types"][name]
    }

    fn quantized(&self, name: &str) -> &[u8] {
        self.tensor(self.ty(name))
    }

    fn dequantized(&self, name: &str) -> Vec<f32> {
        let file = self.ty(name)["dequant_file"]
            .as_str()
            .expect("dequant_file");
        bytes_to_f32(&std::fs::read(fixture_dir().join(file)).expect("dequant file"))
    }
}

fn bytes_to_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

const TYPES: [(&str, GgmlType); 12] = [
    ("iq2_xxs", GgmlType::IQ2_XXS),
    ("iq2_xs", GgmlType::IQ2_XS),
    ("iq2_s", GgmlType::IQ2_S),
    ("iq3_xxs", GgmlType::IQ3_XXS),
    ("iq3_s", GgmlType::IQ3_S),
    ("iq1_s", GgmlType::IQ1_S),
    ("iq1_m", GgmlType::IQ1_M),
    ("iq4_nl", GgmlType::IQ4_NL),
    ("iq4_xs", GgmlType::IQ4_XS),
    ("tq1_0", GgmlType::TQ1_0),
    ("tq2_0", GgmlType::TQ2_0),
    ("mxfp4", GgmlType::MXFP4),
];

fn rmse(a: &[f32], b: &[f32]) -> f64 {
    let s: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    (s / a.len() as f64).sqrt()
}

#[test]
fn dequantize_matches_ggml_bit_exactly() {
    let zoo = Zoo::load();
    for (name, ty) in TYPES {
        let q = zoo.quantized(name);
        let want = zoo.dequantized(name);
        assert_eq!(want.len(), ROWS * COLS, "{name}");
        assert_eq!(zoo.ty(name)["ggml_type_id"].as_u64(), Some(ty.id() as u64));
        let row_bytes = ty.row_bytes(COLS).expect("whole blocks");
        assert_eq!(q.len(), ROWS * row_bytes, "{name}");

        // Whole tensor at once, then row by row from an unaligned copy (the
        // kernels must not care about alignment).
        let mut got = vec![0.0f32; ROWS * COLS];
        dequantize_row(ty, q, &mut got).expect("dequantize");
        let mut shifted = vec![0u8; q.len() + 1];
        shifted[1..].copy_from_slice(q);
        let mut got_rows = vec![0.0f32; ROWS * COLS];
        for (r, out) in got_rows.chunks_exact_mut(COLS).enumerate() {
            let src = &shifted[1 + r * row_bytes..1 + (r + 1) * row_bytes];
            dequantize_row(ty, src, out).expect("dequantize row");
        }
        for (i, ((&g, &gr), &w)) in got.iter().zip(&got_rows).zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{name}[{i}]: {g} vs ggml {w}");
            assert_eq!(gr.to_bits(), w.to_bits(), "{name}[{i}] (unaligned)");
        }
    }
}

#[test]
fn wrong_lengths_are_errors_not_panics() {
    for (name, ty) in TYPES {
        let bs = ty.block_size();
        let mut out = vec![0.0f32; bs];
        let short = vec![0u8; ty.type_size() - 1];
        assert!(dequantize_row(ty, &short, &mut out).is_err(), "{name}");
        let mut odd = vec![0.0f32; bs + 1];
        let ok = vec![0u8; ty.type_size()];
        assert!(dequantize_row(ty, &ok, &mut odd).is_err(), "{name}");
    }
}

/// Quantizes the source with our quantizer and checks its error against
/// ggml's (`quant_error_rmse`); returns how many bytes equal ggml's.
fn check_quantizer(zoo: &Zoo, name: &str, ty: GgmlType) -> usize {
    let src = zoo.source();
    let mut q = vec![0u8; ROWS * ty.row_bytes(COLS).expect("row")];
    quantize_row(ty, &src, &mut q).expect("quantize");
    let mut deq = vec![0.0f32; src.len()];
    dequantize_row(ty, &q, &mut deq).expect("dequantize");
    let ours = rmse(&src, &deq);
    let ggml = zoo.ty(name)["quant_error_rmse"].as_f64().expect("rmse");
    assert!(
        ours <= ggml * 1.0001,
        "{name}: rmse {ours:e} worse than ggml's {ggml:e}"
    );
    let same = q
        .iter()
        .zip(zoo.quantized(name))
        .filter(|(a, b)| a == b)
        .count();
    eprintln!(
        "{name}: rmse {ours:e} (ggml {ggml:e}), {same}/{} bytes as ggml",
        q.len()
    );
    same
}

#[test]
fn iq4_quantizers_reproduce_ggml() {
    let zoo = Zoo::load();
    for (name, ty) in [("iq4_nl", GgmlType::IQ4_NL), ("iq4_xs", GgmlType::IQ4_XS)] {
        let same = check_quantizer(&zoo, name, ty);
        assert_eq!(
            same,
            zoo.quantized(name).len(),
            "{name}: bytes differ from ggml"
        );
    }
}

#[test]
fn mxfp4_quantizer_reproduces_ggml() {
    let zoo = Zoo::load();
    let same = check_quantizer(&zoo, "mxfp4", GgmlType::MXFP4);
    assert_eq!(
        same,
        zoo.quantized("mxfp4").len(),
        "mxfp4: bytes differ from ggml"
    );
}

#[test]
fn zero_and_tiny_blocks_quantize_to_zero() {
    for ty in [GgmlType::IQ4_NL, GgmlType::IQ4_XS, GgmlType::MXFP4] {
        let n = 256;
        let src = vec![0.0f32; n];
        let mut q = vec![0xa5u8; ty.row_bytes(n).expect("row")];
        quantize_row(ty, &src, &mut q).expect("quantize");
        let mut deq = vec![1.0f32; n];
        dequantize_row(ty, &q, &mut deq).expect("dequantize");
        assert!(deq.iter().all(|&v| v == 0.0), "{ty}: {deq:?}");
    }
}
