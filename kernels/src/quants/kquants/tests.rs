//! Unit tests of the type-erased wrappers (alignment handling, level
//! selection); the fixture and cross-level tests live in kernels/tests/kquants.rs.

use super::*;

fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32 - 0.5) * 2.0
        })
        .collect()
}

#[test]
fn misaligned_bytes_are_copied_not_rejected() {
    let x = pseudo_random(512, 7);
    let k = kernels(GgmlType::Q4_K, SimdLevel::Scalar).expect("Q4_K is a K-quant");
    let q = k.quantize.expect("Q4_K quantizes");
    let mut aligned = vec![0u8; 2 * 144];
    q(&x, &mut aligned);
    // The same bytes one past an even address: f16 fields are misaligned.
    let mut buf = vec![0u8; 2 * 144 + 1];
    let off = if (buf.as_ptr() as usize).is_multiple_of(2) {
        1
    } else {
        0
    };
    q(&x, &mut buf[off..off + 2 * 144]);
    assert_eq!(&buf[off..off + 2 * 144], &aligned[..]);
    let mut a = vec![0f32; 512];
    let mut b = vec![0f32; 512];
    (k.dequantize)(&aligned, &mut a);
    (k.dequantize)(&buf[off..off + 2 * 144], &mut b);
    assert_eq!(a, b);

    let mut act = vec![<BlockQ8_K as bytemuck::Zeroable>::zeroed(); 2];
    quantize_q8_k(&pseudo_random(512, 9), &mut act);
    let act_bytes: &[u8] = bytemuck::cast_slice(&act);
    let mut shifted = vec![0u8; act_bytes.len() + 1];
    let off_a = if (shifted.as_ptr() as usize).is_multiple_of(4) {
        1
    } else {
        0
    };
    shifted[off_a..off_a + act_bytes.len()].copy_from_slice(act_bytes);
    let dot = k.vec_dot.expect("Q4_K has a vec_dot");
    let d0 = dot(512, &aligned, act_bytes);
    let d1 = dot(
        512,
        &buf[off..off + 2 * 144],
        &shifted[off_a..off_a + act_bytes.len()],
    );
    assert_eq!(d0, d1);
}

/// Every kernel variant this CPU can run (including the plain AVX-512 ones
/// that `kernels()` skips when VNNI is present) against the scalar one, bit
/// for bit.
#[test]
fn every_variant_matches_scalar() {
    let hw = SimdLevel::available();
    let n = 256 * 9;
    for (i, ty) in [
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
    ]
    .into_iter()
    .enumerate()
    {
        let k = kernels(ty, SimdLevel::Scalar).expect("K-quant");
        let x: Vec<f32> = pseudo_random(n, 11 + i as u32)
            .iter()
            .map(|v| v * v * v)
            .collect();
        let mut w = vec![0u8; ty.row_bytes(n).expect("whole blocks")];
        (k.quantize.expect("quantizer"))(&x, &mut w);
        let mut act = vec![<BlockQ8_K as bytemuck::Zeroable>::zeroed(); n / QK_K];
        quantize_q8_k(&pseudo_random(n, 99 + i as u32), &mut act);
        let a: &[u8] = bytemuck::cast_slice(&act);
        let dots = dots_for(ty);
        let want = (dots.scalar)(n, &w, a);
        let mut variants = vec![];
        if hw.contains(&SimdLevel::Avx2) {
            variants.extend(dots.avx2.map(|f| ("avx2", f)));
        }
        if hw.contains(&SimdLevel::Avx512) {
            variants.extend(dots.avx512.map(|f| ("avx512", f)));
            if has_avx512_vnni() {
                variants.extend(dots.avx512_vnni.map(|f| ("avx512vnni", f)));
            }
        }
        for (name, f) in variants {
            let got = f(n, &w, a);
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{ty:?} {name}: {got} vs {want}"
            );
        }
    }
}
