//! Every level's value sum over stored rows equals, to the bit,
//! `weighted_sum_v` over the same rows dequantized.

use super::*;
use crate::dispatch::{dequantize_row, quantize_row};
use crate::ops::weighted_sum_v;

fn rng(seed: u64) -> impl FnMut() -> f32 {
    let mut s = seed | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
    }
}

/// A cache of `n` rows of `heads` heads of `d` values, stored as `ty`,
/// and the same rows dequantized.
fn cache(ty: GgmlType, n: usize, heads: usize, d: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let mut next = rng(seed);
    let x: Vec<f32> = (0..n * heads * d).map(|_| next()).collect();
    let mut bytes = vec![0u8; ty.row_bytes(x.len()).unwrap()];
    if ty == GgmlType::F32 {
        bytes.copy_from_slice(bytemuck::cast_slice(&x));
    } else if ty == GgmlType::F16 {
        crate::quants::float::quantize_f16(&x, &mut bytes);
    } else {
        quantize_row(ty, &x, &mut bytes).unwrap();
    }
    let mut deq = vec![0f32; x.len()];
    dequantize_row(ty, &bytes, &mut deq).unwrap();
    (bytes, deq)
}

#[test]
fn stored_rows_sum_as_their_dequantized_copy_at_every_level() {
    let mut next = rng(7);
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_0] {
        for d in [32, 64, 96, 256] {
            let (n, heads) = (150, 3);
            let (bytes, deq) = cache(ty, n, heads, d, d as u64 + ty.id() as u64);
            let rb = ty.row_bytes(heads * d).unwrap();
            let hb = ty.row_bytes(d).unwrap();
            for (first, len) in [(0, 1), (0, 150), (5, 70), (63, 64), (17, 133)] {
                let p: Vec<f32> = (0..len).map(|_| next().abs() / 2.0).collect();
                for g in [0, 2] {
                    let rows = ValueRows::new(ty, &bytes, rb, g * hb, d).unwrap();
                    let v = |j: usize| &deq[j * heads * d + g * d..j * heads * d + (g + 1) * d];
                    for order in [VSumOrder::VecDot, VSumOrder::Gemm] {
                        let mut want = vec![0f32; d];
                        let mut acc = Vec::new();
                        weighted_sum_v(&p, first, &v, &mut want, order, &mut acc);
                        for level in SimdLevel::available() {
                            let mut got = vec![0f32; d];
                            weighted_sum_rows_at(
                                level, &p, first, &rows, &mut got, order, &mut acc,
                            );
                            let same = got
                                .iter()
                                .zip(&want)
                                .all(|(a, b)| a.to_bits() == b.to_bits());
                            assert!(
                                same,
                                "{ty:?} d {d} {first}+{len} head {g} {order:?} {level:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn f32_rows_with_a_tail_and_bad_shapes() {
    let d = 72;
    let (_, deq) = cache(GgmlType::F32, 40, 2, d, 3);
    let p: Vec<f32> = (0..39).map(|i| 1.0 / (1.0 + i as f32)).collect();
    let rows = ValueRows::f32(&deq, 2 * d, d, d);
    let v = |j: usize| &deq[j * 2 * d + d..(j + 1) * 2 * d];
    let mut want = vec![0f32; d];
    let mut acc = Vec::new();
    weighted_sum_v(&p, 1, &v, &mut want, VSumOrder::VecDot, &mut acc);
    for level in SimdLevel::available() {
        let mut got = vec![0f32; d];
        weighted_sum_rows_at(level, &p, 1, &rows, &mut got, VSumOrder::VecDot, &mut acc);
        assert_eq!(got, want, "{level:?}");
    }
    assert!(ValueRows::new(GgmlType::Q8_0, &[], 0, 0, 48).is_err());
    assert!(ValueRows::new(GgmlType::Q4_K, &[], 0, 0, 256).is_err());
}
