//! The tiled block equals the one-row path to the bit, at every level.

use super::*;
use crate::ops::{dot_kq, expf, softmax_aligned, weighted_sum_v, VSumOrder};

fn rng(seed: u64) -> impl FnMut() -> f32 {
    let mut s = seed | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
    }
}

/// The one-row path: what `DenseModel::attention` computes for a row.
fn one_row(
    q: &[f32],
    (lo, p): (usize, usize),
    k: &F32Rows<'_>,
    v: &F32Rows<'_>,
    scale: f32,
) -> Vec<f32> {
    let mut sc: Vec<f32> = (lo..=p).map(|j| dot_kq(q, k.row(j)) * scale).collect();
    softmax_aligned(&mut sc, lo);
    let dv = v.d;
    let vr = |j: usize| v.row(j);
    let mut o = vec![0f32; dv];
    weighted_sum_v(&sc, lo, &vr, &mut o, VSumOrder::VecDot, &mut Vec::new());
    o
}

#[test]
fn lanes_exp_is_expf() {
    let mut next = rng(11);
    let mut xs: Vec<f32> = (0..20000).map(|i| next() * (1 + i % 60) as f32).collect();
    xs.extend([
        0.0, -0.0, -87.0, -88.7, -103.9, -104.0, -150.0, 88.0, 89.0, 1e30, -1e30,
    ]);
    xs.extend([
        f32::NEG_INFINITY,
        f32::INFINITY,
        f32::NAN,
        f32::MIN_POSITIVE,
        -1e-40,
    ]);
    for c in xs.chunks(8) {
        let mut v = [0f32; 8];
        v[..c.len()].copy_from_slice(c);
        let want = v.map(expf);
        expf_lanes(&mut v);
        for (a, b) in v.iter().zip(&want) {
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{a} {b}"
            );
        }
    }
}

#[test]
fn blocks_equal_the_one_row_path_at_every_level() {
    let mut next = rng(5);
    // (dk, dv, kv heads, window, first position, rows)
    let cases = [
        (64, 64, 3, 0, 0, 16),
        (64, 64, 3, 0, 0, 5),
        (64, 64, 1, 0, 37, 16),
        (128, 128, 2, 0, 100, 13),
        (256, 256, 1, 20, 0, 16),
        (256, 256, 1, 7, 45, 9),
        (80, 48, 2, 0, 3, 16),
        (32, 40, 1, 0, 130, 1),
        (192, 64, 1, 64, 200, 16),
    ];
    for (ci, &(dk, dv, heads, window, pos0, rows)) in cases.iter().enumerate() {
        let n = pos0 + rows;
        let kd = dk * heads;
        let vd = dv * heads;
        let kc: Vec<f32> = (0..n * kd).map(|_| next()).collect();
        let vc: Vec<f32> = (0..n * vd).map(|_| next()).collect();
        let qs: Vec<Vec<f32>> = (0..rows)
            .map(|_| (0..dk).map(|_| next()).collect())
            .collect();
        let scale = 1.0 / (dk as f32).sqrt();
        let g = heads - 1;
        let keys = F32Rows {
            data: &kc,
            stride: kd,
            offset: g * dk,
            d: dk,
        };
        let values = F32Rows {
            data: &vc,
            stride: vd,
            offset: g * dv,
            d: dv,
        };
        let ranges: Vec<(usize, usize)> = (0..rows)
            .map(|r| {
                let p = pos0 + r;
                let lo = if window > 0 {
                    (p + 1).saturating_sub(window)
                } else {
                    0
                };
                (lo, p)
            })
            .collect();
        let want: Vec<Vec<f32>> = (0..rows)
            .map(|r| one_row(&qs[r], ranges[r], &keys, &values, scale))
            .collect();
        for level in SimdLevel::available() {
            let tr = tile_rows(level);
            let mut scratch = TileScratch::default();
            for b0 in (0..rows).step_by(tr) {
                let b1 = (b0 + tr).min(rows);
                let q: Vec<&[f32]> = qs[b0..b1].iter().map(|v| v.as_slice()).collect();
                let mut out = vec![0f32; (b1 - b0) * dv];
                attend_tile(
                    level,
                    &q,
                    &ranges[b0..b1],
                    &keys,
                    &values,
                    scale,
                    &mut out,
                    &mut scratch,
                );
                for r in b0..b1 {
                    let got = &out[(r - b0) * dv..(r - b0 + 1) * dv];
                    let same = got
                        .iter()
                        .zip(&want[r])
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "case {ci} row {r} {level:?}");
                }
            }
        }
    }
}
