//! The scalar level's kernels sum in ggml's x86 order, so they give the
//! AVX2 kernels' bits exactly: random rows of every length class (odd
//! block counts, float tails of every length), ordinary and extreme
//! activations, single dots and whole matrix products. (The generic-order
//! references are checked against ggml's own outputs in the other files.)
//!
//! The model-level reference tests rely on this: a last-bit difference in
//! one dot flips an 8-bit activation rounding downstream, so a scalar run
//! (what aarch64 executes) must reproduce the x86 bits.
#![cfg(target_arch = "x86_64")]

mod common;

use common::Rng;
use dwarfstar_kernels::dispatch::kernels_at;
use dwarfstar_kernels::matmul::matmul_at;
use dwarfstar_kernels::quants::kquants::{quantize_q8_k, BlockQ8_K};
use dwarfstar_kernels::quants::legacy::act::{quantize_q8_0_bytes, quantize_q8_1_bytes};
use dwarfstar_kernels::quants::legacy::dot::vec_dot_q4_1_q8_1_ref;
use dwarfstar_kernels::{quantize_row, GgmlType, MatRef, SimdLevel};

fn has_avx2() -> bool {
    let ok = SimdLevel::available().contains(&SimdLevel::Avx2);
    assert!(
        ok,
        "these tests compare the scalar kernels with the AVX2 ones: this CPU has no AVX2/FMA/F16C"
    );
    ok
}

/// Every type whose scalar `vec_dot` follows the x86 order.
const TYPES: [GgmlType; 16] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
    GgmlType::MXFP4,
];

/// A random weight row of `n` values: quantized from random floats, or
/// for IQ2_XXS (which needs an importance matrix) random codes under a
/// sane scale.
fn weight_row(rng: &mut Rng, ty: GgmlType, n: usize) -> Vec<u8> {
    let mut w = vec![0u8; ty.row_bytes(n).unwrap()];
    if ty == GgmlType::IQ2_XXS {
        for b in w.chunks_exact_mut(66) {
            for v in b.iter_mut() {
                *v = rng.next_u64() as u8;
            }
            let d = half::f16::from_f32(0.001 + rng.uniform().abs() * 0.01);
            b[..2].copy_from_slice(&d.to_le_bytes());
        }
    } else {
        quantize_row(ty, &rng.vec(n, 0.3), &mut w).unwrap();
    }
    w
}

/// Activations rounded to `vdt` as the matmul rounds them.
fn act_row(vdt: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; vdt.row_bytes(x.len()).unwrap()];
    match vdt {
        GgmlType::Q8_0 => quantize_q8_0_bytes(x, &mut out),
        GgmlType::Q8_1 => quantize_q8_1_bytes(x, &mut out),
        GgmlType::Q8_K => {
            let mut b = vec![bytemuck::Zeroable::zeroed(); x.len() / 256];
            quantize_q8_k(x, &mut b);
            out.copy_from_slice(bytemuck::cast_slice::<BlockQ8_K, u8>(&b));
        }
        _ => quantize_row(vdt, x, &mut out).unwrap(),
    }
    out
}

/// Lengths with every tail: 1..=13 blocks (odd counts for the paired
/// loops) and longer rows; floats every length up to 70 and around 128.
fn lengths(ty: GgmlType) -> Vec<usize> {
    match ty.block_size() {
        1 => (1..=70).chain([127, 128, 129, 255, 576, 1000]).collect(),
        b => (1..=13).map(|k| k * b).chain([40 * b]).collect(),
    }
}

#[test]
fn scalar_dots_equal_avx2_bit_for_bit() {
    if !has_avx2() {
        return;
    }
    let mut rng = Rng::new(0x5ca1a2);
    // Cases where ggml's generic order gives other bits than the x86 one:
    // without any, this test could not tell the two orders apart.
    let mut generic_differs = 0;
    for ty in TYPES.into_iter().chain([GgmlType::IQ2_XXS]) {
        let scalar = kernels_at(ty, SimdLevel::Scalar).unwrap();
        let avx2 = kernels_at(ty, SimdLevel::Avx2).unwrap();
        let (s, v) = (scalar.vec_dot.unwrap(), avx2.vec_dot.unwrap());
        for n in lengths(ty) {
            for extreme in [false, true] {
                let w = weight_row(&mut rng, ty, n);
                // `extreme`: every activation rounds to ±127 (or ±1.0 for
                // floats), the largest integer partial sums.
                let x: Vec<f32> = (0..n)
                    .map(|_| {
                        let v = rng.value(1.0);
                        if extreme {
                            v.signum()
                        } else {
                            v
                        }
                    })
                    .collect();
                let a = act_row(scalar.vec_dot_type, &x);
                let (got, want) = (s(n, &w, &a), v(n, &w, &a));
                if ty == GgmlType::Q4_1 && vec_dot_q4_1_q8_1_ref(n, &w, &a) != want {
                    generic_differs += 1;
                }
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{ty} n={n} extreme={extreme}: scalar {got} vs avx2 {want}"
                );
            }
        }
    }
    assert!(generic_differs > 0, "the generic Q4_1 order never differed");
}

/// The legacy formats' AVX-512 VNNI kernels sum the same lanes in the same
/// order as AVX2: all three levels agree.
#[test]
fn legacy_dots_are_the_same_on_every_level() {
    if !has_avx2() {
        return;
    }
    let mut rng = Rng::new(77);
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::MXFP4,
        GgmlType::IQ4_NL,
    ] {
        let scalar = kernels_at(ty, SimdLevel::Scalar).unwrap();
        for n in lengths(ty) {
            let w = weight_row(&mut rng, ty, n);
            let a = act_row(scalar.vec_dot_type, &rng.vec(n, 1.0));
            let want = (scalar.vec_dot.unwrap())(n, &w, &a);
            for level in SimdLevel::available() {
                let got = (kernels_at(ty, level).unwrap().vec_dot.unwrap())(n, &w, &a);
                assert_eq!(got.to_bits(), want.to_bits(), "{ty} n={n} {level:?}");
            }
        }
    }
}

/// Whole products (the tiled kernels for several rows and tokens, the
/// rounding of the activations) give the same bits at Scalar and AVX2.
#[test]
fn scalar_matmul_equals_avx2_bit_for_bit() {
    if !has_avx2() {
        return;
    }
    let mut rng = Rng::new(31337);
    for ty in TYPES {
        let cols = 3 * 256;
        for (rows, n) in [(1usize, 1usize), (5, 3), (9, 8), (16, 17)] {
            let w: Vec<u8> = (0..rows)
                .flat_map(|_| weight_row(&mut rng, ty, cols))
                .collect();
            let x = rng.vec(n * cols, 1.0);
            let m = MatRef {
                ty,
                data: &w,
                rows,
                cols,
            };
            let mut want = vec![0f32; n * rows];
            let mut got = vec![0f32; n * rows];
            matmul_at(m, &x, n, &mut want, SimdLevel::Avx2).unwrap();
            matmul_at(m, &x, n, &mut got, SimdLevel::Scalar).unwrap();
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    e.to_bits(),
                    "{ty} {rows}x{cols} n={n} out {i}: {g} vs {e}"
                );
            }
        }
    }
}

/// f32 → f16 with F16C (`vcvtps2ph`, round to nearest even): what ggml's
/// `GGML_CPU_FP32_TO_FP16` and `_mm256_cvtps_ph` compute on x86.
#[target_feature(enable = "f16c")]
fn f16c_bits(x: f32) -> u16 {
    use std::arch::x86_64::*;
    let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(x));
    _mm_extract_epi16::<0>(h) as u16
}

/// The portable conversion every level uses (KV cache, F16 activations,
/// Q8 block scales) rounds exactly as F16C does: a sweep over the f32 bit
/// patterns (every exponent, subnormal and overflowing results) and every
/// exact halfway case between neighbouring f16 values.
#[test]
fn f16_conversion_rounds_like_f16c() {
    if !has_avx2() {
        return;
    }
    let check = |x: f32| {
        let (ours, hw) = (
            half::f16::from_f32(x).to_bits(),
            // SAFETY: F16C is part of the AVX2 level, checked above.
            unsafe { f16c_bits(x) },
        );
        if x.is_nan() {
            assert!(half::f16::from_bits(ours).is_nan(), "{x:?}");
        } else {
            assert_eq!(ours, hw, "{x:e} ({:#010x})", x.to_bits());
        }
    };
    for bits in (0..=u32::MAX).step_by(997) {
        check(f32::from_bits(bits));
    }
    for h in 0..0x7bffu16 {
        let (a, b) = (
            half::f16::from_bits(h).to_f32(),
            half::f16::from_bits(h + 1).to_f32(),
        );
        let mid = (a as f64 + b as f64) / 2.0;
        for x in [mid as f32, -(mid as f32)] {
            check(x);
            check(f32::from_bits(x.to_bits() + 1));
            check(f32::from_bits(x.to_bits() - 1));
        }
    }
}
