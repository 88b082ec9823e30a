//! `dwarfstar_kernels::quantize` against ggml: the bytes of
//! `ggml_quantize_chunk` with and without an importance matrix
//! (kernels/tests/fixtures/quant-weighted), the quantization error on the
//! shared quant-zoo inputs (tests/fixtures/quant), the effect of skewed
//! importance weights, shape errors, and parallel == serial.

use std::path::PathBuf;

use dwarfstar_kernels::dispatch::dequantize_row;
use dwarfstar_kernels::quantize::{
    imatrix_required_by_llama_quantize, quantize, quantize_parallel, quantize_requires_imatrix,
    quantize_supported, quantize_uses_imatrix, QuantError,
};
use dwarfstar_kernels::GgmlType;

const ROWS: usize = 4;
const COLS: usize = 1024;

/// Every type the tests expect `quantize` to support, with ggml's name.
const TYPES: &[(GgmlType, &str)] = &[
    (GgmlType::Q4_0, "q4_0"),
    (GgmlType::Q4_1, "q4_1"),
    (GgmlType::Q5_0, "q5_0"),
    (GgmlType::Q5_1, "q5_1"),
    (GgmlType::Q8_0, "q8_0"),
    (GgmlType::Q2_K, "q2_K"),
    (GgmlType::Q3_K, "q3_K"),
    (GgmlType::Q4_K, "q4_K"),
    (GgmlType::Q5_K, "q5_K"),
    (GgmlType::Q6_K, "q6_K"),
    (GgmlType::IQ2_XXS, "iq2_xxs"),
    (GgmlType::IQ2_XS, "iq2_xs"),
    (GgmlType::IQ3_XXS, "iq3_xxs"),
    (GgmlType::IQ3_S, "iq3_s"),
    (GgmlType::IQ1_S, "iq1_s"),
    (GgmlType::IQ4_NL, "iq4_nl"),
    (GgmlType::IQ4_XS, "iq4_xs"),
];

fn weighted_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/quant-weighted"
    ))
}

fn zoo_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/quant"
    ))
}

fn read(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The fixed input and importance row of the ggml harness.
fn weighted_inputs() -> (Vec<f32>, Vec<f32>) {
    let x = floats(&read(weighted_dir().join("input.f32")));
    let w = floats(&read(weighted_dir().join("imatrix.f32")));
    assert_eq!((x.len(), w.len()), (ROWS * COLS, COLS));
    (x, w)
}

fn ours(ty: GgmlType, x: &[f32], cols: usize, w: Option<&[f32]>) -> Vec<u8> {
    let bytes = ty.row_bytes(cols).expect("whole blocks") * (x.len() / cols);
    let mut q = vec![0u8; bytes];
    let n = quantize(ty, x, cols, w, &mut q).unwrap_or_else(|e| panic!("{ty:?}: {e}"));
    assert_eq!(n, bytes);
    q
}

fn dequant(ty: GgmlType, q: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![0f32; n];
    dequantize_row(ty, q, &mut y).expect("dequantize");
    y
}

/// `Σ w[col]·(x − y)²` over all rows.
fn weighted_sq_error(x: &[f32], y: &[f32], w: &[f32]) -> f64 {
    x.iter()
        .zip(y)
        .enumerate()
        .map(|(i, (a, b))| w[i % w.len()] as f64 * (*a as f64 - *b as f64).powi(2))
        .sum()
}

fn rmse(x: &[f32], y: &[f32]) -> f64 {
    let s: f64 = x
        .iter()
        .zip(y)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum();
    (s / x.len() as f64).sqrt()
}

#[test]
fn bytes_match_ggml_with_and_without_imatrix() {
    let (x, w) = weighted_inputs();
    let mut report = Vec::new();
    for &(ty, name) in TYPES {
        assert!(quantize_supported(ty), "{ty:?}");
        for (mode, weights) in [("none", None), ("imat", Some(w.as_slice()))] {
            let path = weighted_dir().join(format!("{name}.{mode}.bin"));
            if weights.is_none() && quantize_requires_imatrix(ty) {
                assert!(!path.exists(), "{name}: ggml needs an imatrix");
                continue;
            }
            let ggml = read(path);
            let q = ours(ty, &x, COLS, weights);
            let same = q.iter().zip(&ggml).filter(|(a, b)| a == b).count();
            report.push(format!("{name}.{mode}: {same}/{} bytes", q.len()));
            assert_eq!(q.len(), ggml.len(), "{name}.{mode}");
            if q != ggml {
                let (yo, yg) = (dequant(ty, &q, x.len()), dequant(ty, &ggml, x.len()));
                let ones = vec![1f32; COLS];
                let w = weights.unwrap_or(&ones);
                let (eo, eg) = (weighted_sq_error(&x, &yo, w), weighted_sq_error(&x, &yg, w));
                panic!("{name}.{mode}: {same}/{} bytes as ggml; weighted error ours {eo:e} ggml {eg:e}\n{report:#?}", q.len());
            }
        }
    }
    eprintln!("{report:#?}");
}

#[test]
fn skewed_importance_lowers_the_weighted_error() {
    let (x, w) = weighted_inputs();
    let flat = vec![1f32; COLS];
    for &(ty, name) in TYPES {
        if !quantize_uses_imatrix(ty) {
            // Q8_0: ggml ignores the weights, so do we.
            assert_eq!(
                ours(ty, &x, COLS, None),
                ours(ty, &x, COLS, Some(&w)),
                "{name}"
            );
            continue;
        }
        // The baseline is the unweighted quantizer, or for types that need
        // an imatrix the same quantizer with flat importance.
        let base = if quantize_requires_imatrix(ty) {
            ours(ty, &x, COLS, Some(&flat))
        } else {
            ours(ty, &x, COLS, None)
        };
        let weighted = ours(ty, &x, COLS, Some(&w));
        let eb = weighted_sq_error(&x, &dequant(ty, &base, x.len()), &w);
        let ew = weighted_sq_error(&x, &dequant(ty, &weighted, x.len()), &w);
        eprintln!(
            "{name}: importance-weighted error {ew:.4e} vs {eb:.4e} unweighted ({:.1}%)",
            100.0 * ew / eb
        );
        assert!(
            ew < 0.9 * eb,
            "{name}: weighted {ew:e} vs unweighted {eb:e}"
        );
    }
}

/// Offsets, sizes and ggml's errors for the quant-zoo fixture.
struct Zoo {
    file: Vec<u8>,
    index: serde_json::Value,
}

impl Zoo {
    fn load() -> Zoo {
        Zoo {
            file: read(zoo_dir().join("quant-zoo.gguf")),
            index: serde_json::from_slice(&read(zoo_dir().join("index.json"))).expect("index.json"),
        }
    }

    fn tensor(&self, entry: &serde_json::Value) -> Vec<f32> {
        let off = entry["offset"].as_u64().expect("offset") as usize;
        let n = entry["n_bytes"].as_u64().expect("n_bytes") as usize;
        floats(&self.file[off..off + n])
    }
}

/// On the shared quant-zoo source (with the zoo's imatrix where ggml used
/// one) our bytes are ggml's, and so is the error of their dequantization.
#[test]
fn zoo_error_is_no_worse_than_ggml() {
    let zoo = Zoo::load();
    let x = zoo.tensor(&zoo.index["source"]);
    let imatrix = zoo.tensor(&zoo.index["imatrix"]);
    let cols = zoo.index["cols"].as_u64().expect("cols") as usize;
    let mut checked = 0;
    for &(ty, name) in TYPES {
        let entry = &zoo.index["types"][name];
        let used = entry["imatrix_used"].as_bool().expect("imatrix_used");
        let ggml = entry["quant_error_rmse"]
            .as_f64()
            .expect("quant_error_rmse");
        let q = ours(ty, &x, cols, used.then_some(imatrix.as_slice()));
        let off = entry["offset"].as_u64().expect("offset") as usize;
        let same = q == zoo.file[off..off + q.len()];
        let e = rmse(&x, &dequant(ty, &q, x.len()));
        assert!(same, "{name}: bytes differ from ggml's in the quant zoo");
        eprintln!("{name}: rmse {e:.6e} (ggml {ggml:.6e})");
        assert!(
            e <= ggml * (1.0 + 1e-6),
            "{name}: rmse {e:e} vs ggml {ggml:e}"
        );
        checked += 1;
    }
    assert_eq!(checked, TYPES.len());
}

#[test]
fn parallel_equals_serial() {
    let (x, w) = weighted_inputs();
    // Many short rows, so the parallel split has several tasks.
    let x: Vec<f32> = x.iter().cycle().take(256 * 512).copied().collect();
    let w = &w[..512];
    for &(ty, name) in TYPES {
        for weights in [None, Some(w)] {
            if weights.is_none() && quantize_requires_imatrix(ty) {
                continue;
            }
            let serial = ours(ty, &x, 512, weights);
            let mut par = vec![0u8; serial.len()];
            let n = quantize_parallel(ty, &x, 512, weights, &mut par).expect("parallel");
            assert_eq!(n, serial.len());
            assert!(par == serial, "{name}");
        }
    }
}

#[test]
fn bad_shapes_and_missing_imatrix_are_errors() {
    let (x, w) = weighted_inputs();
    let mut dst = vec![0u8; 1 << 16];
    let ty = GgmlType::Q4_K;
    assert_eq!(
        quantize(ty, &x, 1000, None, &mut dst),
        Err(QuantError::RowNotBlockMultiple {
            ty,
            n_per_row: 1000,
            block: 256
        })
    );
    assert!(matches!(
        quantize(GgmlType::Q4_0, &x, 0, None, &mut dst),
        Err(QuantError::RowNotBlockMultiple { .. })
    ));
    assert_eq!(
        quantize(ty, &x[..COLS + 256], COLS, None, &mut dst),
        Err(QuantError::NotWholeRows {
            len: COLS + 256,
            n_per_row: COLS
        })
    );
    assert_eq!(
        quantize(ty, &x, COLS, Some(&w[..512]), &mut dst),
        Err(QuantError::ImatrixLength {
            expected: COLS,
            got: 512
        })
    );
    let mut bad = w.clone();
    bad[7] = f32::NAN;
    assert!(matches!(
        quantize(ty, &x, COLS, Some(&bad), &mut dst),
        Err(QuantError::BadImatrix { index: 7, .. })
    ));
    bad[7] = -1.0;
    assert!(matches!(
        quantize(ty, &x, COLS, Some(&bad), &mut dst),
        Err(QuantError::BadImatrix { index: 7, .. })
    ));
    let need = ty.row_bytes(COLS).expect("row") * ROWS;
    assert_eq!(
        quantize(ty, &x, COLS, None, &mut dst[..need - 1]),
        Err(QuantError::DstLength {
            ty,
            expected: need,
            got: need - 1
        })
    );
    // A longer destination is fine: only the front is written.
    let mut long = vec![0xAAu8; need + 5];
    assert_eq!(quantize(ty, &x, COLS, None, &mut long), Ok(need));
    assert_eq!(&long[need..], &[0xAA; 5]);
    assert_eq!(
        quantize(GgmlType::IQ2_XXS, &x, COLS, None, &mut dst),
        Err(QuantError::ImatrixRequired(GgmlType::IQ2_XXS))
    );
    assert!(imatrix_required_by_llama_quantize(GgmlType::IQ2_XXS));
    assert!(!imatrix_required_by_llama_quantize(GgmlType::Q4_K));
    assert_eq!(
        quantize(GgmlType::Q8_K, &x, COLS, None, &mut dst),
        Err(QuantError::Unsupported(GgmlType::Q8_K))
    );
    // No rows is zero bytes, not an error.
    assert_eq!(quantize(ty, &[], COLS, None, &mut []), Ok(0));
}

/// ggml misplaces the bytes of the IQ3_S groups that follow an all-zero
/// group of 32 inside a non-zero super-block; ours stay in place, so every
/// group decodes close to its input (the zero group to the format's
/// smallest magnitude, IQ3_S has no exact zero).
#[test]
fn iq3_s_block_with_a_zero_group_decodes_in_place() {
    let (x, w) = weighted_inputs();
    let mut row = x[..256].to_vec();
    row[64..96].fill(0.0);
    for qw in [None, Some(&w[..256])] {
        let q = ours(GgmlType::IQ3_S, &row, 256, qw);
        let y = dequant(GgmlType::IQ3_S, &q, 256);
        let scale = rmse(&row, &[0.0; 256]);
        for g in 0..8 {
            let r = 32 * g..32 * g + 32;
            let e = rmse(&row[r.clone()], &y[r.clone()]);
            let rms = rmse(&row[r], &[0.0; 32]);
            // Misplaced indices or signs would give errors of order `rms`.
            let bound = if g == 2 { 0.1 * scale } else { 0.6 * rms };
            assert!(e < bound, "group {g}: rmse {e:e}, group rms {rms:e}");
        }
    }
}
