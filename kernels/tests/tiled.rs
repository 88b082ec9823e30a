//! `matmul_tiled_order` against llama.cpp's tiled K-quant path, bit for bit.
//!
//! Fixtures in tests/fixtures/tiled (see its README): synthetic Q2_K … Q6_K
//! weights (16 rows × 512) with 20 activation rows, multiplied by ggml's
//! CPU `mul_mat` with 8 rows (narrow path) and 20 rows (standard path);
//! and 16 rows of Gemma-3-270M's layer-0 Q6_K `ffn_down` with llama.cpp's
//! real 8-token activations and outputs.

use std::path::PathBuf;

use dwarfstar_kernels::quants::kquants::matmul_tiled_order;
use dwarfstar_kernels::{GgmlType, MatRef};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/tiled")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Runs the product and returns how many outputs differ in their bits.
fn mismatches(
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    want: &[f32],
) -> usize {
    let m = MatRef {
        ty,
        data: w,
        rows,
        cols,
    };
    let mut out = vec![f32::NAN; n * rows];
    matmul_tiled_order(m, &x[..n * cols], n, &mut out).expect("tiled matmul");
    out.iter()
        .zip(want)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count()
}

#[test]
fn synthetic_k_quants_match_ggml_tiled() {
    let x = floats(&fixture("x.bin"));
    let cases = [
        ("q2_k", GgmlType::Q2_K),
        ("q3_k", GgmlType::Q3_K),
        ("q4_k", GgmlType::Q4_K),
        ("q5_k", GgmlType::Q5_K),
        ("q6_k", GgmlType::Q6_K),
    ];
    for (name, ty) in cases {
        let w = fixture(&format!("{name}_w.bin"));
        for n in [8usize, 20] {
            let want = floats(&fixture(&format!("{name}_y{n}.bin")));
            assert_eq!(want.len(), n * 16);
            let bad = mismatches(ty, &w, 16, 512, &x, n, &want);
            assert_eq!(
                bad,
                0,
                "{name} n={n}: {bad} of {} outputs differ",
                want.len()
            );
        }
    }
}

#[test]
fn gemma_ffn_down_matches_llama_cpp() {
    let w = fixture("gemma_ffn_down0_w.bin");
    let x = floats(&fixture("gemma_ffn_down0_x.bin"));
    let want = floats(&fixture("gemma_ffn_down0_y.bin"));
    assert_eq!(want.len(), 8 * 16);
    let bad = mismatches(GgmlType::Q6_K, &w, 16, 2048, &x, 8, &want);
    assert_eq!(bad, 0, "{bad} of 128 outputs differ");
}

#[test]
fn rejects_bad_shapes_and_types() {
    let w = fixture("q4_k_w.bin");
    let x = vec![0.5f32; 8 * 512];
    let mut out = vec![0f32; 8 * 16];
    let short = MatRef {
        ty: GgmlType::Q4_K,
        data: &w[..w.len() - 1],
        rows: 16,
        cols: 512,
    };
    assert!(matmul_tiled_order(short, &x, 8, &mut out).is_err());
    let ok = MatRef {
        ty: GgmlType::Q4_K,
        data: &w,
        rows: 16,
        cols: 512,
    };
    assert!(matmul_tiled_order(ok, &x[..100], 8, &mut out).is_err());
    let f32m = MatRef {
        ty: GgmlType::F32,
        data: &w,
        rows: 16,
        cols: 512,
    };
    assert!(matmul_tiled_order(f32m, &x, 8, &mut out).is_err());
}
