//! The float and legacy formats against ggml's own outputs (the quant-zoo
//! fixture) and every SIMD level against the scalar references.

mod common;

use common::{Rng, Zoo};
use dwarfstar_kernels::dispatch::kernels_at;
use dwarfstar_kernels::quants::float::{bf16_bits_to_f32, f32_to_bf16_bits};
use dwarfstar_kernels::quants::legacy::act::{quantize_q8_0_scalar, quantize_q8_1_scalar};
use dwarfstar_kernels::quants::legacy::{quantize_q8_0, quantize_q8_1, BlockQ8_0, BlockQ8_1};
use dwarfstar_kernels::{dequantize_row, quantize_row, GgmlType, SimdLevel};

/// (fixture name, type) of every type this family writes.
const TYPES: [(&str, GgmlType); 7] = [
    ("f16", GgmlType::F16),
    ("bf16", GgmlType::BF16),
    ("q4_0", GgmlType::Q4_0),
    ("q4_1", GgmlType::Q4_1),
    ("q5_0", GgmlType::Q5_0),
    ("q5_1", GgmlType::Q5_1),
    ("q8_0", GgmlType::Q8_0),
];

/// Rounds activations to `vdt` the way the matmul does (ggml's x86 path).
fn activation_bytes(vdt: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; vdt.row_bytes(x.len()).unwrap()];
    match vdt {
        GgmlType::Q8_0 => {
            let mut b = vec![bytemuck::Zeroable::zeroed(); x.len() / 32];
            quantize_q8_0(x, &mut b);
            out.copy_from_slice(bytemuck::cast_slice::<BlockQ8_0, u8>(&b));
        }
        GgmlType::Q8_1 => {
            let mut b = vec![bytemuck::Zeroable::zeroed(); x.len() / 32];
            quantize_q8_1(x, &mut b);
            out.copy_from_slice(bytemuck::cast_slice::<BlockQ8_1, u8>(&b));
        }
        _ => quantize_row(vdt, x, &mut out).unwrap(),
    }
    out
}

fn dequant(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let n = bytes.len() / ty.type_size() * ty.block_size();
    let mut out = vec![0.0; n];
    dequantize_row(ty, bytes, &mut out).unwrap();
    out
}

#[test]
fn dequantization_is_bit_exact_with_ggml() {
    let zoo = Zoo::load();
    for (name, ty) in TYPES {
        let ours = dequant(ty, zoo.quantized(name));
        let ggml = zoo.dequantized(name);
        assert_eq!(ours.len(), ggml.len(), "{name}");
        let bad = ours
            .iter()
            .zip(&ggml)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(bad, 0, "{name}: {bad} values differ from ggml's to_float");
    }
}

#[test]
fn quantization_reproduces_ggml_files() {
    let zoo = Zoo::load();
    let src = zoo.source();
    for (name, ty) in TYPES {
        let mut ours = vec![0u8; ty.row_bytes(src.len()).unwrap()];
        quantize_row(ty, &src, &mut ours).unwrap();
        // Same bytes as ggml_quantize_chunk wrote...
        let ggml = zoo.quantized(name);
        let diff = ours.iter().zip(ggml).filter(|(a, b)| a != b).count();
        assert_eq!(
            diff, 0,
            "{name}: {diff} bytes differ from ggml's quantization"
        );
        // ...and so the same error against the source.
        let back = dequant(ty, &ours);
        let mse = src
            .iter()
            .zip(&back)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum::<f64>()
            / src.len() as f64;
        let limit = zoo.entry(name)["quant_error_rmse"].as_f64().unwrap() * 1.01;
        assert!(mse.sqrt() <= limit, "{name}: rmse {} > {limit}", mse.sqrt());
    }
}

#[test]
fn q8_1_reference_quantizer_round_trips() {
    let mut rng = Rng::new(7);
    let x = rng.vec(1024, 0.5);
    let mut q = vec![0u8; GgmlType::Q8_1.row_bytes(x.len()).unwrap()];
    quantize_row(GgmlType::Q8_1, &x, &mut q).unwrap();
    let back = dequant(GgmlType::Q8_1, &q);
    for (blk, xb) in x.chunks(32).zip(back.chunks(32)) {
        let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (a, b) in blk.iter().zip(xb) {
            // Half a step, plus the f16 rounding of d times up to 127 steps.
            assert!(
                (a - b).abs() <= amax / 127.0 * 0.5 + amax / 1024.0,
                "{a} vs {b}"
            );
        }
    }
    // s = d * Σq for every block, with d = amax / 127 before its f16 rounding.
    for (c, blk) in q.chunks_exact(36).zip(x.chunks(32)) {
        let d = blk.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
        let s = half::f16::from_le_bytes([c[2], c[3]]);
        let sum: i32 = c[4..].iter().map(|&b| i32::from(b as i8)).sum();
        assert_eq!(s, half::f16::from_f32(sum as f32 * d));
    }
}

/// What a Q8_1 dot adds over the plain dequantized dot: the weight minimum
/// times the rounding of `s = f16(d_a * Σq_a)` (zero for other types).
fn s_rounding(ty: GgmlType, w: &[u8], act: &[u8]) -> f64 {
    if !matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
        return 0.0;
    }
    let h = |b: &[u8], o: usize| f64::from(half::f16::from_le_bytes([b[o], b[o + 1]]).to_f32());
    w.chunks_exact(ty.type_size())
        .zip(act.chunks_exact(36))
        .map(|(wb, ab)| {
            let sum: i32 = ab[4..].iter().map(|&q| i32::from(q as i8)).sum();
            h(wb, 2) * (h(ab, 2) - h(ab, 0) * f64::from(sum))
        })
        .sum()
}

/// Σ|w·a| and Σ w·a in f64 over a dequantized row.
fn dot_stats(w: &[f32], a: &[f32]) -> (f64, f64) {
    let l1 = w.iter().zip(a).map(|(w, a)| f64::from(*w * *a).abs()).sum();
    let dot = w
        .iter()
        .zip(a)
        .map(|(w, a)| f64::from(*w) * f64::from(*a))
        .sum();
    (l1, dot)
}

#[test]
fn vec_dot_matches_ggml_at_every_level() {
    let zoo = Zoo::load();
    let (rows, cols) = (zoo.rows(), zoo.cols());
    let act = zoo.activation();
    for (name, ty) in TYPES {
        let w = zoo.quantized(name);
        let deq = zoo.dequantized(name);
        let ggml = zoo.floats_of(name, "dot_ggml_vec_dot");
        let row_bytes = ty.row_bytes(cols).unwrap();
        let scalar = kernels_at(ty, SimdLevel::Scalar).unwrap();
        let act_q = activation_bytes(scalar.vec_dot_type, &act);
        // The activation as the kernel sees it, to bound the pure summation error.
        let act_deq = dequant(scalar.vec_dot_type, &act_q);
        for level in SimdLevel::available() {
            let k = kernels_at(ty, level).unwrap();
            assert_eq!(k.vec_dot_type, scalar.vec_dot_type);
            let vd = k.vec_dot.unwrap();
            for r in 0..rows {
                let wr = &w[r * row_bytes..(r + 1) * row_bytes];
                let ours = vd(cols, wr, &act_q);
                let reference = (scalar.vec_dot.unwrap())(cols, wr, &act_q);
                let (l1, exact) = dot_stats(&deq[r * cols..(r + 1) * cols], &act_deq);
                let exact = exact + s_rounding(ty, wr, &act_q);
                let (l1_f32, exact_f32) = dot_stats(&deq[r * cols..(r + 1) * cols], &act);
                let tag = format!("{name} row {r} at {level:?}");
                assert!(
                    (f64::from(ours) - f64::from(reference)).abs() <= 2e-6 * l1,
                    "{tag}: simd {ours} vs scalar {reference}"
                );
                // Same rounded operands as ggml: only the summation order differs.
                assert!(
                    (f64::from(ours) - exact).abs() <= 2e-6 * l1,
                    "{tag}: {ours} vs exact {exact}"
                );
                assert!(
                    (f64::from(ours) - ggml[r]).abs() <= 1e-6 * l1,
                    "{tag}: {ours} vs ggml {}",
                    ggml[r]
                );
                // And close to the f32-activation dot (the 8-bit rounding of a).
                let tol = if ty == GgmlType::F16 { 2e-4 } else { 5e-3 };
                assert!(
                    (f64::from(ours) - exact_f32).abs() <= tol * l1_f32,
                    "{tag}: {ours} vs f32-activation dot {exact_f32}"
                );
            }
        }
    }
}

#[test]
fn vec_dot_levels_agree_on_random_rows() {
    let mut rng = Rng::new(42);
    for (name, ty) in TYPES.into_iter().chain([("f32", GgmlType::F32)]) {
        // Lengths with every tail: odd block counts, float tails of 1..63.
        let lens: Vec<usize> = if ty.block_size() == 32 {
            (1..=13).map(|b| b * 32).chain([1024, 1536]).collect()
        } else {
            (1..=70).chain([127, 128, 129, 576, 1000, 1536]).collect()
        };
        for n in lens {
            let wf = rng.vec(n, 0.3);
            let af = rng.vec(n, 1.0);
            let mut w = vec![0u8; ty.row_bytes(n).unwrap()];
            quantize_row(ty, &wf, &mut w).unwrap();
            let scalar = kernels_at(ty, SimdLevel::Scalar).unwrap();
            let a = activation_bytes(scalar.vec_dot_type, &af);
            let reference = (scalar.vec_dot.unwrap())(n, &w, &a);
            let (l1, exact) = dot_stats(&dequant(ty, &w), &dequant(scalar.vec_dot_type, &a));
            let exact = exact + s_rounding(ty, &w, &a);
            assert!(
                (f64::from(reference) - exact).abs() <= 2e-6 * l1 + 1e-30,
                "{name} n={n}"
            );
            for level in SimdLevel::available() {
                let vd = kernels_at(ty, level).unwrap().vec_dot.unwrap();
                let got = vd(n, &w, &a);
                assert!(
                    (f64::from(got) - f64::from(reference)).abs() <= 2e-6 * l1 + 1e-30,
                    "{name} n={n} {level:?}: {got} vs {reference}"
                );
                // Short slices are clamped, never read past.
                let short = vd(n, &w[..w.len() / 2], &a);
                assert!(short.is_finite());
            }
        }
    }
}

#[test]
fn activation_quantizers_round_like_ggml_x86() {
    // amax = 127 makes the multiplier exactly 1: ties must go to even.
    let mut x = [0.0f32; 32];
    x[0] = 127.0;
    let ties = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, 126.5, -126.5];
    x[1..1 + ties.len()].copy_from_slice(&ties);
    let mut b = [BlockQ8_0 {
        d: half::f16::ZERO,
        qs: [0; 32],
    }];
    quantize_q8_0(&x, &mut b);
    assert_eq!(&b[0].qs[..10], &[127, 0, 2, 2, 0, -2, -2, 4, 126, -126]);
    assert_eq!(b[0].d, half::f16::from_f32(1.0));
    // The multiplier is 127 / amax, not 1 / d.
    let mut y = [0.0f32; 32];
    y[0] = 0.3;
    y[1] = 0.1;
    quantize_q8_0(&y, &mut b);
    assert_eq!(b[0].qs[1], (0.1f32 * (127.0 / 0.3)).round() as i8);
    // An all-zero block quantizes to zeros with d = 0.
    quantize_q8_0(&[0.0; 32], &mut b);
    assert_eq!((b[0].d, b[0].qs), (half::f16::ZERO, [0; 32]));
}

#[test]
fn activation_quantizers_simd_equal_scalar() {
    let mut rng = Rng::new(3);
    for n_blocks in [1, 2, 7, 18, 48] {
        let mut x = rng.vec(n_blocks * 32, 2.0);
        x[..32].fill(0.0); // one zero block
        let (mut a0, mut b0) = (
            vec![bytemuck::Zeroable::zeroed(); n_blocks],
            vec![bytemuck::Zeroable::zeroed(); n_blocks],
        );
        quantize_q8_0(&x, &mut a0);
        quantize_q8_0_scalar(&x, &mut b0);
        assert_eq!(
            bytemuck::cast_slice::<BlockQ8_0, u8>(&a0),
            bytemuck::cast_slice::<BlockQ8_0, u8>(&b0)
        );
        let (mut a1, mut b1) = (
            vec![bytemuck::Zeroable::zeroed(); n_blocks],
            vec![bytemuck::Zeroable::zeroed(); n_blocks],
        );
        quantize_q8_1(&x, &mut a1);
        quantize_q8_1_scalar(&x, &mut b1);
        assert_eq!(
            bytemuck::cast_slice::<BlockQ8_1, u8>(&a1),
            bytemuck::cast_slice::<BlockQ8_1, u8>(&b1)
        );
    }
}

#[test]
fn bf16_conversion_follows_ggml() {
    assert_eq!(f32_to_bf16_bits(1.0), 0x3f80);
    // Exactly half way: to even (down here, up when the kept lsb is odd).
    assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80);
    assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
    assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8001)), 0x3f81);
    // NaNs stay NaN and become quiet; infinities stay infinite.
    assert_eq!(f32_to_bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fc0);
    assert_eq!(f32_to_bf16_bits(f32::INFINITY), 0x7f80);
    assert_eq!(f32_to_bf16_bits(-f32::INFINITY), 0xff80);
    assert_eq!(bf16_bits_to_f32(0xc040), -3.0);
}
