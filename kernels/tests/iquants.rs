//! Checks the i-quant, MXFP4 and ternary kernels against ggml's own output
//! on the quant-zoo fixture (tests/fixtures/quant, see
//! /work/shared/reference/README.md): dequantization bit-exact, quantizer
//! error no worse than ggml's, and every SIMD dot product against the
//! scalar reference, the f64 dot of the dequantized row and ggml's value.

use std::path::PathBuf;

use dwarfstar_kernels::dispatch::kernels_at;
use dwarfstar_kernels::quants::iquants::{
    quantize_iq2_xxs, quantize_iq4_nl_weighted, quantize_iq4_xs_weighted, vec_dot_iq2_xxs_q8_k_ref,
    vec_dot_iq4_nl_q8_0_ref, vec_dot_iq4_xs_q8_k_ref,
};
use dwarfstar_kernels::quants::kquants::{quantize_q8_k, BlockQ8_K};
use dwarfstar_kernels::quants::legacy::{quantize_q8_0, BlockQ8_0};
use dwarfstar_kernels::quants::mxfp4::vec_dot_mxfp4_q8_0_ref;
use dwarfstar_kernels::{dequantize_row, quantize_row, vec_dot, GgmlType, SimdLevel};
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

    fn activation(&self) -> Vec<f32> {
        self.f32s(&self.index["activation"])
    }

    fn imatrix(&self) -> Vec<f32> {
        self.f32s(&self.index["imatrix"])
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

    fn f64s(&self, name: &str, key: &str) -> Vec<f64> {
        self.ty(name)[key]
            .as_array()
            .unwrap_or_else(|| panic!("{name}.{key}"))
            .iter()
            .map(|v| v.as_f64().expect("number"))
            .collect()
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
fn iq4_quantizers_use_importance_weights() {
    let zoo = Zoo::load();
    let src = zoo.source();
    let imatrix: Vec<f32> = (0..ROWS).flat_map(|_| zoo.imatrix()).collect();
    for (name, ty) in [("iq4_nl", GgmlType::IQ4_NL), ("iq4_xs", GgmlType::IQ4_XS)] {
        let quantize = match ty {
            GgmlType::IQ4_NL => quantize_iq4_nl_weighted,
            _ => quantize_iq4_xs_weighted,
        };
        let mut plain = vec![0u8; ROWS * ty.row_bytes(COLS).expect("row")];
        quantize(&src, None, &mut plain);
        assert_eq!(plain, zoo.quantized(name), "{name}: no weights = ggml");
        let mut weighted = vec![0u8; plain.len()];
        quantize(&src, Some(&imatrix), &mut weighted);
        assert_ne!(weighted, plain, "{name}: the weights change the result");
        // Importance-weighted error: the weighted quantization must do at
        // least as well as the unweighted one on the weighted metric.
        let werr = |q: &[u8]| {
            let mut d = vec![0.0f32; src.len()];
            dequantize_row(ty, q, &mut d).expect("dequantize");
            (0..src.len())
                .map(|i| imatrix[i] as f64 * (src[i] as f64 - d[i] as f64).powi(2))
                .sum::<f64>()
        };
        let (w, p) = (werr(&weighted), werr(&plain));
        eprintln!("{name}: imatrix-weighted error {w:e} with weights, {p:e} without");
        assert!(w <= p, "{name}: {w:e} > {p:e}");
    }
}

#[test]
fn mxfp4_and_ternary_quantizers_reproduce_ggml() {
    let zoo = Zoo::load();
    for (name, ty) in [
        ("mxfp4", GgmlType::MXFP4),
        ("tq1_0", GgmlType::TQ1_0),
        ("tq2_0", GgmlType::TQ2_0),
    ] {
        let same = check_quantizer(&zoo, name, ty);
        assert_eq!(
            same,
            zoo.quantized(name).len(),
            "{name}: bytes differ from ggml"
        );
    }
}

#[test]
fn iq2_xxs_quantizer_reproduces_ggml() {
    let zoo = Zoo::load();
    let ty = GgmlType::IQ2_XXS;
    assert_eq!(zoo.ty("iq2_xxs")["imatrix_used"].as_bool(), Some(true));
    let src = zoo.source();
    let imatrix = zoo.imatrix();
    let mut q = vec![0u8; ROWS * ty.row_bytes(COLS).expect("row")];
    quantize_iq2_xxs(&src, COLS, &imatrix, &mut q).expect("quantize");
    let mut deq = vec![0.0f32; src.len()];
    dequantize_row(ty, &q, &mut deq).expect("dequantize");
    let ours = rmse(&src, &deq);
    let ggml = zoo.ty("iq2_xxs")["quant_error_rmse"]
        .as_f64()
        .expect("rmse");
    let same = q
        .iter()
        .zip(zoo.quantized("iq2_xxs"))
        .filter(|(a, b)| a == b)
        .count();
    eprintln!(
        "iq2_xxs: rmse {ours:e} (ggml {ggml:e}), {same}/{} bytes as ggml",
        q.len()
    );
    assert!(
        ours <= ggml * 1.05,
        "iq2_xxs: rmse {ours:e} vs ggml {ggml:e}"
    );
    assert_eq!(same, q.len(), "iq2_xxs: bytes differ from ggml");

    // Bad shapes are errors.
    assert!(quantize_iq2_xxs(&src, COLS, &imatrix[1..], &mut q).is_err());
    assert!(quantize_iq2_xxs(&src, 100, &imatrix[..100], &mut q).is_err());
    assert!(quantize_iq2_xxs(&src, COLS, &imatrix, &mut q[1..]).is_err());
    // A zero row quantizes to zeros; all-zero weights do not panic.
    let zeros = vec![0.0f32; COLS];
    let mut qz = vec![0xffu8; ty.row_bytes(COLS).expect("row")];
    let mut dz = vec![1.0f32; COLS];
    quantize_iq2_xxs(&zeros, COLS, &imatrix, &mut qz).expect("zeros");
    dequantize_row(ty, &qz, &mut dz).expect("dequantize");
    assert!(dz.iter().all(|&v| v == 0.0));
    quantize_iq2_xxs(&src[..COLS], COLS, &zeros, &mut qz).expect("zero weights");
    dequantize_row(ty, &qz, &mut dz).expect("dequantize");
    assert!(dz.iter().all(|v| v.is_finite()));
}

#[test]
fn zero_and_tiny_blocks_quantize_to_zero() {
    for ty in [
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
        GgmlType::MXFP4,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
    ] {
        let n = 256;
        let src = vec![0.0f32; n];
        let mut q = vec![0xa5u8; ty.row_bytes(n).expect("row")];
        quantize_row(ty, &src, &mut q).expect("quantize");
        let mut deq = vec![1.0f32; n];
        dequantize_row(ty, &q, &mut deq).expect("dequantize");
        assert!(deq.iter().all(|&v| v == 0.0), "{ty}: {deq:?}");
    }
}

/// Activation rounding as ggml does before `vec_dot` (the x86 CPU path).
enum Act {
    Q80(Vec<BlockQ8_0>),
    Q8k(Vec<BlockQ8_K>),
}

impl Act {
    fn new(ty: GgmlType, x: &[f32]) -> Act {
        match ty {
            GgmlType::Q8_0 => {
                let mut b = vec![bytemuck::Zeroable::zeroed(); x.len() / 32];
                quantize_q8_0(x, &mut b);
                Act::Q80(b)
            }
            GgmlType::Q8_K => {
                let mut b = vec![bytemuck::Zeroable::zeroed(); x.len() / 256];
                quantize_q8_k(x, &mut b);
                Act::Q8k(b)
            }
            other => panic!("no activation type {other}"),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Act::Q80(b) => bytemuck::cast_slice(b),
            Act::Q8k(b) => bytemuck::cast_slice(b),
        }
    }
}

type DotFn = fn(usize, &[u8], &[u8]) -> f32;

/// The four types with a fast dot product, with their scalar references.
const DOT_TYPES: [(&str, GgmlType, GgmlType, DotFn); 4] = [
    (
        "iq4_nl",
        GgmlType::IQ4_NL,
        GgmlType::Q8_0,
        vec_dot_iq4_nl_q8_0_ref,
    ),
    (
        "iq4_xs",
        GgmlType::IQ4_XS,
        GgmlType::Q8_K,
        vec_dot_iq4_xs_q8_k_ref,
    ),
    (
        "iq2_xxs",
        GgmlType::IQ2_XXS,
        GgmlType::Q8_K,
        vec_dot_iq2_xxs_q8_k_ref,
    ),
    (
        "mxfp4",
        GgmlType::MXFP4,
        GgmlType::Q8_0,
        vec_dot_mxfp4_q8_0_ref,
    ),
];

/// Σ|w·a| and the f64 dot of a dequantized row with an f32 activation.
fn l1_and_dot(w: &[f32], a: &[f32]) -> (f64, f64) {
    w.iter().zip(a).fold((0.0, 0.0), |(l1, d), (&w, &a)| {
        let p = w as f64 * a as f64;
        (l1 + p.abs(), d + p)
    })
}

#[test]
fn vec_dot_on_fixture_matches_reference_and_ggml() {
    let zoo = Zoo::load();
    let act = zoo.activation();
    for (name, ty, act_ty, reference) in DOT_TYPES {
        let k = kernels_at(ty, SimdLevel::Scalar).expect("kernels");
        assert_eq!(k.vec_dot_type, act_ty, "{name}");
        let fixture_act = zoo.ty(name)["vec_dot_type"].as_str().map(str::to_lowercase);
        assert_eq!(fixture_act, Some(act_ty.name().to_lowercase()), "{name}");
        let q8 = Act::new(act_ty, &act);
        let deq = zoo.dequantized(name);
        let ggml = zoo.f64s(name, "dot_ggml_vec_dot");
        let ggml_err = zoo.ty(name)["vec_dot_err_rel_l1"].as_f64().expect("err");
        let row_bytes = ty.row_bytes(COLS).expect("row");
        for level in SimdLevel::available() {
            let f = kernels_at(ty, level)
                .and_then(|k| k.vec_dot)
                .expect("vec_dot");
            let mut worst_f64 = 0.0f64;
            let mut worst_ggml = 0.0f64;
            for r in 0..ROWS {
                let w = &zoo.quantized(name)[r * row_bytes..(r + 1) * row_bytes];
                let (l1, exact) = l1_and_dot(&deq[r * COLS..(r + 1) * COLS], &act);
                let got = f(COLS, w, q8.bytes()) as f64;
                let want = reference(COLS, w, q8.bytes()) as f64;
                assert!(
                    (got - want).abs() <= 1e-6 * l1,
                    "{name} {level:?} row {r}: {got} vs reference {want} (l1 {l1})"
                );
                assert!(
                    (got - ggml[r]).abs() <= 1e-6 * l1,
                    "{name} {level:?} row {r}: {got} vs ggml {} (l1 {l1})",
                    ggml[r]
                );
                worst_f64 = worst_f64.max((got - exact).abs() / l1);
                worst_ggml = worst_ggml.max((got - ggml[r]).abs() / l1);
            }
            assert!(
                worst_f64 <= ggml_err * 1.05 + 1e-6,
                "{name} {level:?}: error vs f64 dot {worst_f64:e}, ggml's {ggml_err:e}"
            );
            eprintln!(
                "{name} {level:?}: rel error vs f64 dot {worst_f64:.3e} (ggml's {ggml_err:.3e}), \
                 vs ggml's value {worst_ggml:.3e}"
            );
        }
        // Through the checked entry point too.
        let w = &zoo.quantized(name)[..row_bytes];
        let v = vec_dot(ty, COLS, w, q8.bytes()).expect("vec_dot");
        assert!((v as f64 - ggml[0]).abs() <= 1e-6 * l1_and_dot(&deq[..COLS], &act).0);
        assert!(vec_dot(ty, COLS, &w[1..], q8.bytes()).is_err());
    }
}

/// A small deterministic generator (xorshift64*), enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Random weight bytes of `nb` blocks of `ty`, with sane scales.
fn random_blocks(ty: GgmlType, nb: usize, rng: &mut Rng) -> Vec<u8> {
    let size = ty.type_size();
    let mut out: Vec<u8> = (0..nb * size).map(|_| rng.next() as u8).collect();
    for b in out.chunks_exact_mut(size) {
        if ty == GgmlType::MXFP4 {
            b[0] = 110 + (rng.next() % 30) as u8;
        } else {
            // Every other type here starts with an f16 scale.
            let d = half::f16::from_f32(rng.f32() * 0.01);
            b[..2].copy_from_slice(&d.to_le_bytes());
        }
    }
    out
}

#[test]
fn simd_vec_dot_matches_reference_on_random_rows() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (name, ty, act_ty, reference) in DOT_TYPES {
        let bs = ty.block_size();
        // Odd block counts exercise the pairwise loops' tails.
        for nb in [1usize, 2, 3, 5, 8, 17] {
            let n = nb * bs;
            let w = random_blocks(ty, nb, &mut rng);
            let mut deq = vec![0.0f32; n];
            dequantize_row(ty, &w, &mut deq).expect("dequantize");
            for extreme in [false, true] {
                // `extreme`: every activation quantizes to ±127, the largest
                // products the integer paths must hold without saturating.
                let a: Vec<f32> = (0..n)
                    .map(|_| {
                        if extreme {
                            rng.f32().signum()
                        } else {
                            rng.f32()
                        }
                    })
                    .collect();
                let q8 = Act::new(act_ty, &a);
                let want = reference(n, &w, q8.bytes()) as f64;
                let (l1, exact) = l1_and_dot(&deq, &a);
                assert!(
                    (want - exact).abs() <= 0.02 * l1 + 1e-30,
                    "{name} n={n}: reference {want} vs f64 {exact}"
                );
                for level in SimdLevel::available() {
                    let f = kernels_at(ty, level)
                        .and_then(|k| k.vec_dot)
                        .expect("vec_dot");
                    let got32 = f(n, &w, q8.bytes());
                    let got = got32 as f64;
                    assert!(
                        (got - want).abs() <= 1e-6 * l1,
                        "{name} {level:?} n={n} extreme={extreme}: {got} vs reference {want}"
                    );
                    // Unaligned weight bytes give the same value.
                    let mut shifted = vec![0u8; w.len() + 1];
                    shifted[1..].copy_from_slice(&w);
                    assert_eq!(f(n, &shifted[1..], q8.bytes()).to_bits(), got32.to_bits());
                }
            }
        }
    }
}
