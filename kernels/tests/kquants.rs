//! K-quant kernels against ggml: bit-exact dequantization and reference
//! quantization on the quant-zoo fixture, every SIMD `vec_dot` against the
//! scalar reference and against ggml's own kernel, Q8_K activation
//! rounding, and the importance-weighted quantizers.

mod common;

use common::{Rng, Zoo};
use dwarfstar_kernels::dispatch::kernels_at;
use dwarfstar_kernels::quants::kquants::*;
use dwarfstar_kernels::{GgmlType, SimdLevel};

const TYPES: [(&str, GgmlType); 5] = [
    ("q2_K", GgmlType::Q2_K),
    ("q3_K", GgmlType::Q3_K),
    ("q4_K", GgmlType::Q4_K),
    ("q5_K", GgmlType::Q5_K),
    ("q6_K", GgmlType::Q6_K),
];

fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let k = kernels_at(ty, SimdLevel::Scalar).expect("K-quant kernels");
    let mut out = vec![0u8; ty.row_bytes(x.len()).expect("whole blocks")];
    (k.quantize.expect("K-quants quantize"))(x, &mut out);
    out
}

fn dequantize(ty: GgmlType, q: &[u8]) -> Vec<f32> {
    let k = kernels_at(ty, SimdLevel::Scalar).expect("K-quant kernels");
    let mut out = vec![0f32; q.len() / ty.type_size() * ty.block_size()];
    (k.dequantize)(q, &mut out);
    out
}

fn q8k_bytes(x: &[f32]) -> Vec<u8> {
    quantize(GgmlType::Q8_K, x)
}

fn rmse(a: &[f32], b: &[f32]) -> f64 {
    let s: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    (s / a.len() as f64).sqrt()
}

/// `(Σ w·a, Σ |w·a|)` in f64.
fn dot_f64(w: &[f32], a: &[f32]) -> (f64, f64) {
    w.iter().zip(a).fold((0.0, 0.0), |(s, l1), (x, y)| {
        let p = *x as f64 * *y as f64;
        (s + p, l1 + p.abs())
    })
}

#[test]
fn dequantization_is_bit_exact_with_ggml() {
    let zoo = Zoo::load();
    for (name, ty) in TYPES {
        let got = dequantize(ty, zoo.quantized(name));
        let want = zoo.dequantized(name);
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{name}: element {i}: {g} vs {w}");
        }
    }
}

#[test]
fn reference_quantizers_write_ggmls_bytes() {
    let zoo = Zoo::load();
    let src = zoo.source();
    for (name, ty) in TYPES {
        let ours = quantize(ty, &src);
        let theirs = zoo.quantized(name);
        let diff = ours.iter().zip(theirs).filter(|(a, b)| a != b).count();
        assert_eq!(
            diff,
            0,
            "{name}: {diff} of {} bytes differ from ggml",
            ours.len()
        );
        let err = rmse(&dequantize(ty, &ours), &src);
        let ggml = zoo.entry(name)["quant_error_rmse"].as_f64().unwrap();
        assert!(err <= ggml * 1.01, "{name}: rmse {err} vs ggml {ggml}");
    }
}

#[test]
fn vec_dot_matches_scalar_f64_and_ggml_on_the_fixture() {
    let zoo = Zoo::load();
    let (rows, cols) = (zoo.rows(), zoo.cols());
    let act = zoo.activation();
    let act_q8 = q8k_bytes(&act);
    for (name, ty) in TYPES {
        let q = zoo.quantized(name);
        let deq = zoo.dequantized(name);
        let ggml = zoo.floats_of(name, "dot_ggml_vec_dot");
        let row_bytes = ty.row_bytes(cols).unwrap();
        let scalar = kernels_at(ty, SimdLevel::Scalar).unwrap().vec_dot.unwrap();
        for r in 0..rows {
            let w = &q[r * row_bytes..(r + 1) * row_bytes];
            let (exact, l1) = dot_f64(&deq[r * cols..(r + 1) * cols], &act);
            let reference = scalar(cols, w, &act_q8);
            let rel = (reference as f64 - ggml[r]).abs() / l1;
            assert!(
                rel < 2e-6,
                "{name} row {r}: {reference} vs ggml {} ({rel:e})",
                ggml[r]
            );
            for level in SimdLevel::available() {
                let k = kernels_at(ty, level).unwrap();
                assert_eq!(k.vec_dot_type, GgmlType::Q8_K);
                let got = (k.vec_dot.unwrap())(cols, w, &act_q8);
                let vs_ref = (got - reference).abs() as f64 / l1;
                assert!(
                    vs_ref < 1e-6,
                    "{name} {level:?} row {r}: {got} vs scalar {reference}"
                );
                let vs_f64 = (got as f64 - exact).abs() / l1;
                assert!(
                    vs_f64 < 5e-3,
                    "{name} {level:?} row {r}: {got} vs f64 {exact}"
                );
                let vs_ggml = (got as f64 - ggml[r]).abs() / l1;
                assert!(
                    vs_ggml < 2e-6,
                    "{name} {level:?} row {r}: {got} vs ggml {}",
                    ggml[r]
                );
            }
        }
    }
}

#[test]
fn every_simd_level_matches_scalar_on_random_rows() {
    let mut rng = Rng::new(42);
    let n = 256 * 24;
    for (name, ty) in TYPES {
        for trial in 0..4 {
            let scale = [1.0, 0.01, 30.0, 1e-4][trial];
            let w = quantize(ty, &rng.vec(n, scale));
            let a = rng.vec(n, 1.0);
            let aq = q8k_bytes(&a);
            let (_, l1) = dot_f64(&dequantize(ty, &w), &a);
            let reference =
                (kernels_at(ty, SimdLevel::Scalar).unwrap().vec_dot.unwrap())(n, &w, &aq);
            for level in SimdLevel::available() {
                let f = kernels_at(ty, level).unwrap().vec_dot.unwrap();
                // Prefixes too: odd block counts exercise loop tails.
                for nb in [1, 3, 24] {
                    let k = 256 * nb;
                    let wb = ty.row_bytes(k).unwrap();
                    let want = (kernels_at(ty, SimdLevel::Scalar).unwrap().vec_dot.unwrap())(
                        k,
                        &w[..wb],
                        &aq[..nb * 292],
                    );
                    let got = f(k, &w[..wb], &aq[..nb * 292]);
                    assert!(
                        (got - want).abs() as f64 <= 1e-6 * l1 + f32::MIN_POSITIVE as f64,
                        "{name} {level:?} scale {scale} {nb} blocks: {got} vs {want}"
                    );
                }
                let got = f(n, &w, &aq);
                assert!(
                    (got - reference).abs() as f64 <= 1e-6 * l1,
                    "{name} {level:?}: {got} vs {reference}"
                );
            }
        }
    }
}

#[test]
fn extreme_levels_do_not_overflow_simd_paths() {
    // Every weight at its largest level and every activation at ±127:
    // the integer sums reach their maxima.
    for (name, ty) in TYPES {
        for sign in [1.0f32, -1.0] {
            let n = 512;
            let w: Vec<f32> = (0..n)
                .map(|i| if i % 7 == 3 { -1.0 } else { 1.0 })
                .collect();
            let a: Vec<f32> = (0..n).map(|_| sign).collect();
            let wq = quantize(ty, &w);
            let aq = q8k_bytes(&a);
            let want = (kernels_at(ty, SimdLevel::Scalar).unwrap().vec_dot.unwrap())(n, &wq, &aq);
            let (exact, l1) = dot_f64(&dequantize(ty, &wq), &a);
            assert!(
                (want as f64 - exact).abs() / l1 < 5e-3,
                "{name}: {want} vs {exact}"
            );
            for level in SimdLevel::available() {
                let got = (kernels_at(ty, level).unwrap().vec_dot.unwrap())(n, &wq, &aq);
                assert!(
                    (got - want).abs() as f64 <= 1e-6 * l1,
                    "{name} {level:?}: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn q8_k_rounds_like_ggml() {
    let x: Vec<f32> = (0..512)
        .map(|i| ((i as f32) * 0.37).sin() * (1.0 + i as f32 / 64.0))
        .collect();
    let mut blocks = vec![
        BlockQ8_K {
            d: 0.0,
            qs: [0; 256],
            bsums: [0; 16]
        };
        2
    ];
    quantize_q8_k(&x, &mut blocks);
    for (b, x) in blocks.iter().zip(x.chunks(256)) {
        // The signed value of largest magnitude maps to exactly -127.
        let (imax, _) = x.iter().enumerate().fold((0, 0f32), |(bi, bv), (i, v)| {
            if v.abs() > bv {
                (i, v.abs())
            } else {
                (bi, bv)
            }
        });
        assert_eq!(b.qs[imax], -127);
        let iscale = -127.0f32 / x[imax];
        assert_eq!(b.d, 1.0 / iscale);
        for (j, (&q, &v)) in b.qs.iter().zip(x).enumerate() {
            let want = (iscale * v).round_ties_even().min(127.0) as i8;
            assert_eq!(q, want, "element {j}");
        }
        for g in 0..16 {
            let s: i16 = b.qs[16 * g..16 * g + 16].iter().map(|&q| q as i16).sum();
            assert_eq!(b.bsums[g], s);
        }
    }
    // An all-zero block is all zero, sums included.
    let mut z = vec![
        BlockQ8_K {
            d: 1.0,
            qs: [1; 256],
            bsums: [5; 16]
        };
        1
    ];
    quantize_q8_k(&[0.0; 256], &mut z);
    assert_eq!(z[0].d, 0.0);
    assert!(z[0].qs.iter().all(|&q| q == 0) && z[0].bsums.iter().all(|&s| s == 0));
}

fn weighted_error(x: &[f32], y: &[f32], w: &[f32]) -> f64 {
    x.iter()
        .zip(y)
        .enumerate()
        .map(|(i, (a, b))| w[i % w.len()] as f64 * (*a as f64 - *b as f64).powi(2))
        .sum()
}

#[test]
fn importance_weighted_quantizers() {
    let zoo = Zoo::load();
    let src = zoo.source();
    let cols = zoo.cols();
    let imatrix: Vec<f32> = {
        let e = &zoo.index["imatrix"];
        let off = e["offset"].as_u64().unwrap() as usize;
        zoo.file[off..off + 4 * cols]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    macro_rules! check {
        ($block:ty, $zero:expr, $q:ident, $wq:ident, $deq:ident, $bound:expr) => {{
            let nb = src.len() / 256;
            let mut plain = vec![$zero; nb];
            let mut none = vec![$zero; nb];
            let mut weighted = vec![$zero; nb];
            $q(&src, &mut plain);
            $wq(&src, &mut none, None);
            $wq(&src, &mut weighted, Some(&imatrix));
            assert!(
                none == plain,
                "{}: weights None is the reference",
                stringify!($q)
            );
            let (mut yp, mut yw) = (vec![0f32; src.len()], vec![0f32; src.len()]);
            $deq(&plain, &mut yp);
            $deq(&weighted, &mut yw);
            let (ep, ew) = (
                weighted_error(&src, &yp, &imatrix),
                weighted_error(&src, &yw, &imatrix),
            );
            assert!(
                ew <= ep * $bound,
                "{}: weighted error {ew} vs reference {ep}",
                stringify!($wq)
            );
            assert!(
                rmse(&yw, &src) < 2.0 * rmse(&yp, &src),
                "{}",
                stringify!($wq)
            );
        }};
    }
    let z2: BlockQ2_K = bytemuck::Zeroable::zeroed();
    let z3: BlockQ3_K = bytemuck::Zeroable::zeroed();
    let z4: BlockQ4_K = bytemuck::Zeroable::zeroed();
    let z5: BlockQ5_K = bytemuck::Zeroable::zeroed();
    let z6: BlockQ6_K = bytemuck::Zeroable::zeroed();
    check!(
        BlockQ2_K,
        z2,
        quantize_q2_k,
        quantize_q2_k_weighted,
        dequantize_q2_k,
        1.0
    );
    check!(
        BlockQ3_K,
        z3,
        quantize_q3_k,
        quantize_q3_k_weighted,
        dequantize_q3_k,
        1.0
    );
    check!(
        BlockQ4_K,
        z4,
        quantize_q4_k,
        quantize_q4_k_weighted,
        dequantize_q4_k,
        1.0
    );
    check!(
        BlockQ5_K,
        z5,
        quantize_q5_k,
        quantize_q5_k_weighted,
        dequantize_q5_k,
        1.0
    );
    check!(
        BlockQ6_K,
        z6,
        quantize_q6_k,
        quantize_q6_k_weighted,
        dequantize_q6_k,
        1.0
    );
}

#[test]
fn zero_and_tiny_blocks_quantize_cleanly() {
    for (name, ty) in TYPES {
        let mut x = vec![0f32; 512];
        for (i, v) in x[256..].iter_mut().enumerate() {
            *v = (i as f32 - 128.0) * 1e-20;
        }
        let q = quantize(ty, &x);
        let y = dequantize(ty, &q);
        assert!(y[..256].iter().all(|&v| v == 0.0), "{name}: zero block");
        assert!(y.iter().all(|v| v.is_finite()), "{name}: finite");
    }
}
