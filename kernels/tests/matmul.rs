//! The matmul against per-pair `vec_dot`s: every float and legacy type,
//! every SIMD level, awkward shapes, token counts across the tile and block
//! edges, the dequantizing fallback, and shape errors.

mod common;

use common::Rng;
use dwarfstar_kernels::dispatch::kernels_at;
use dwarfstar_kernels::matmul::{matmul_at, matmul_many, MAX_MANY};
use dwarfstar_kernels::quants::legacy::act::{quantize_q8_0_bytes, quantize_q8_1_bytes};
use dwarfstar_kernels::{
    dequantize_row, matmul, quantize_row, GgmlType, KernelError, MatRef, SimdLevel,
};

const TYPES: [GgmlType; 8] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
];

fn weights(rng: &mut Rng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let x = rng.vec(rows * cols, 0.2);
    let mut w = vec![0u8; ty.row_bytes(cols).unwrap() * rows];
    quantize_row(ty, &x, &mut w).unwrap();
    w
}

/// `x` rounded to `vdt` as the matmul rounds activations.
fn act_bytes(vdt: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut a = vec![0u8; vdt.row_bytes(x.len()).unwrap()];
    match vdt {
        GgmlType::Q8_0 => quantize_q8_0_bytes(x, &mut a),
        GgmlType::Q8_1 => quantize_q8_1_bytes(x, &mut a),
        _ => quantize_row(vdt, x, &mut a).unwrap(),
    }
    a
}

/// What the matmul must produce: one `vec_dot` per (row, token) at `level`.
fn naive(
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    level: SimdLevel,
) -> Vec<f32> {
    let k = kernels_at(ty, level).unwrap();
    let vd = k.vec_dot.unwrap();
    let rb = ty.row_bytes(cols).unwrap();
    let mut out = vec![0.0; n * rows];
    for t in 0..n {
        let a = act_bytes(k.vec_dot_type, &x[t * cols..(t + 1) * cols]);
        for r in 0..rows {
            out[t * rows + r] = vd(cols, &w[r * rb..(r + 1) * rb], &a);
        }
    }
    out
}

fn check_type(ty: GgmlType, shapes: &[(usize, usize)], tokens: &[usize], seed: u64) {
    let mut rng = Rng::new(seed);
    for &(rows, cols) in shapes {
        let w = weights(&mut rng, ty, rows, cols);
        for &n in tokens {
            let x = rng.vec(n * cols, 1.0);
            for level in SimdLevel::available() {
                let want = naive(ty, &w, rows, cols, &x, n, level);
                let mut got = vec![f32::NAN; n * rows];
                let m = MatRef {
                    ty,
                    data: &w,
                    rows,
                    cols,
                };
                matmul_at(m, &x, n, &mut got, level).unwrap();
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    // Tiles accumulate each pair exactly like the single dot.
                    assert_eq!(
                        g.to_bits(),
                        e.to_bits(),
                        "{ty} {rows}x{cols} n={n} {level:?} at token {} row {}: {g} vs {e}",
                        i / rows,
                        i % rows
                    );
                }
            }
        }
    }
}

#[test]
fn matmul_equals_pairwise_dots_small() {
    let shapes = [(1, 32), (3, 64), (5, 96), (7, 32), (17, 160), (4, 64)];
    let tokens: Vec<usize> = (1..=9).collect();
    for (i, ty) in TYPES.into_iter().enumerate() {
        check_type(ty, &shapes, &tokens, 100 + i as u64);
    }
}

#[test]
fn matmul_equals_pairwise_dots_parallel() {
    // Big enough to be split across threads, with token counts crossing the
    // 16-token block and the tile widths.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    pool.install(|| {
        for (i, ty) in TYPES.into_iter().enumerate() {
            check_type(
                ty,
                &[(130, 576), (67, 256)],
                &[1, 2, 5, 17, 33],
                200 + i as u64,
            );
        }
    });
}

#[test]
fn matmul_default_level_matches() {
    let mut rng = Rng::new(9);
    let (rows, cols, n) = (50, 128, 3);
    for ty in TYPES {
        let w = weights(&mut rng, ty, rows, cols);
        let x = rng.vec(n * cols, 1.0);
        let mut a = vec![0.0; n * rows];
        let mut b = vec![0.0; n * rows];
        matmul(
            MatRef {
                ty,
                data: &w,
                rows,
                cols,
            },
            &x,
            n,
            &mut a,
        )
        .unwrap();
        matmul_at(
            MatRef {
                ty,
                data: &w,
                rows,
                cols,
            },
            &x,
            n,
            &mut b,
            SimdLevel::current(),
        )
        .unwrap();
        assert_eq!(a, b, "{ty}");
    }
}

#[test]
fn types_without_vec_dot_dequantize_rows() {
    // Q8_1 is an activation type: no vec_dot, so the matmul dequantizes.
    let ty = GgmlType::Q8_1;
    assert!(kernels_at(ty, SimdLevel::Scalar).unwrap().vec_dot.is_none());
    let mut rng = Rng::new(11);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for (rows, cols, n) in [(3, 32, 1), (9, 96, 4), (300, 256, 3)] {
        let w = weights(&mut rng, ty, rows, cols);
        let x = rng.vec(n * cols, 1.0);
        let mut deq = vec![0.0; rows * cols];
        dequantize_row(ty, &w, &mut deq).unwrap();
        for level in SimdLevel::available() {
            let mut got = vec![0.0; n * rows];
            pool.install(|| {
                matmul_at(
                    MatRef {
                        ty,
                        data: &w,
                        rows,
                        cols,
                    },
                    &x,
                    n,
                    &mut got,
                    level,
                )
            })
            .unwrap();
            for t in 0..n {
                for r in 0..rows {
                    let (wr, xt) = (&deq[r * cols..(r + 1) * cols], &x[t * cols..(t + 1) * cols]);
                    let exact: f64 = wr
                        .iter()
                        .zip(xt)
                        .map(|(a, b)| f64::from(*a) * f64::from(*b))
                        .sum();
                    let l1: f64 = wr
                        .iter()
                        .zip(xt)
                        .map(|(a, b)| f64::from(*a * *b).abs())
                        .sum();
                    let g = f64::from(got[t * rows + r]);
                    assert!(
                        (g - exact).abs() <= 1e-6 * l1 + 1e-30,
                        "{level:?} {t} {r}: {g} vs {exact}"
                    );
                }
            }
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    let mut rng = Rng::new(1);
    let (rows, cols) = (4, 64);
    let w = weights(&mut rng, GgmlType::Q4_1, rows, cols);
    let m = MatRef {
        ty: GgmlType::Q4_1,
        data: &w,
        rows,
        cols,
    };
    let x = vec![0.5; 2 * cols];
    let mut out = vec![0.0; 2 * rows];
    assert!(matmul(m, &x, 2, &mut out).is_ok());
    assert!(matches!(
        matmul(m, &x[1..], 2, &mut out),
        Err(KernelError::Shape(_))
    ));
    assert!(matches!(
        matmul(m, &x, 2, &mut out[1..]),
        Err(KernelError::Shape(_))
    ));
    assert!(matches!(
        matmul(m, &x, 3, &mut out),
        Err(KernelError::Shape(_))
    ));
    let short = MatRef { data: &w[1..], ..m };
    assert!(matches!(
        matmul(short, &x, 2, &mut out),
        Err(KernelError::ByteLength { .. })
    ));
    let ragged = MatRef { cols: 48, ..m };
    assert!(matches!(
        matmul(ragged, &x[..96], 2, &mut out),
        Err(KernelError::NotBlockMultiple { .. })
    ));
    let huge = MatRef {
        rows: usize::MAX,
        ..m
    };
    assert!(matmul(huge, &x, 2, &mut out).is_err());
    // Integer tensors have no float kernels at all.
    let ints = vec![0u8; rows * cols * 4];
    let mi = MatRef {
        ty: GgmlType::I32,
        data: &ints,
        rows,
        cols,
    };
    assert!(matmul(mi, &x, 2, &mut out).is_err());
    // Empty products are fine and write nothing.
    assert!(matmul(m, &[], 0, &mut []).is_ok());
}

#[test]
fn every_family_goes_through_the_matmul() {
    // Whatever the other families provide: their vec_dot pair by pair (or
    // the dequantized f32 dot where they have none) is what the matmul
    // must produce, including their activation rounding (e.g. Q8_K).
    let mut rng = Rng::new(77);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for ty in GgmlType::ALL {
        let Some(k) = kernels_at(ty, SimdLevel::current()) else {
            continue;
        };
        let Some(quantize) = k.quantize else { continue };
        if ty.is_integer() {
            continue;
        }
        let (rows, cols, n) = (37, 512, 3);
        let src = rng.vec(rows * cols, 0.2);
        let mut w = vec![0u8; ty.row_bytes(cols).unwrap() * rows];
        quantize(&src, &mut w);
        let x = rng.vec(n * cols, 1.0);
        let mut got = vec![0.0; n * rows];
        pool.install(|| {
            matmul(
                MatRef {
                    ty,
                    data: &w,
                    rows,
                    cols,
                },
                &x,
                n,
                &mut got,
            )
        })
        .unwrap_or_else(|e| panic!("{ty}: {e}"));
        let rb = ty.row_bytes(cols).unwrap();
        let mut deq = vec![0.0; rows * cols];
        dequantize_row(ty, &w, &mut deq).unwrap();
        for t in 0..n {
            let xt = &x[t * cols..(t + 1) * cols];
            for r in 0..rows {
                let g = got[t * rows + r];
                match k.vec_dot {
                    Some(vd) => {
                        let a = act_bytes(k.vec_dot_type, xt);
                        let e = vd(cols, &w[r * rb..(r + 1) * rb], &a);
                        assert_eq!(g.to_bits(), e.to_bits(), "{ty} t{t} r{r}: {g} vs {e}");
                    }
                    None => {
                        let wr = &deq[r * cols..(r + 1) * cols];
                        let e: f64 = wr
                            .iter()
                            .zip(xt)
                            .map(|(a, b)| f64::from(*a) * f64::from(*b))
                            .sum();
                        let l1: f64 = wr
                            .iter()
                            .zip(xt)
                            .map(|(a, b)| f64::from(*a * *b).abs())
                            .sum();
                        assert!(
                            (f64::from(g) - e).abs() <= 1e-6 * l1 + 1e-30,
                            "{ty} t{t} r{r}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_many_equals_separate_matmuls() {
    let mut rng = Rng::new(5);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let cols = 512;
    // Mixed activation types (Q8_1, Q8_0, f16, Q8_K, none) and row counts.
    let specs = [
        (GgmlType::Q4_1, 576),
        (GgmlType::Q4_1, 192),
        (GgmlType::Q8_0, 61),
        (GgmlType::F16, 33),
        (GgmlType::Q8_1, 9),
        (GgmlType::Q4_K, 130),
        (GgmlType::F32, 0),
    ];
    let weights: Vec<Vec<u8>> = specs
        .iter()
        .map(|&(ty, rows)| weights(&mut rng, ty, rows, cols))
        .collect();
    for n in [1, 3, 20] {
        let x = rng.vec(n * cols, 1.0);
        let mut want: Vec<Vec<f32>> = Vec::new();
        for (&(ty, rows), w) in specs.iter().zip(&weights) {
            let mut o = vec![0.0; n * rows];
            matmul(
                MatRef {
                    ty,
                    data: w,
                    rows,
                    cols,
                },
                &x,
                n,
                &mut o,
            )
            .unwrap();
            want.push(o);
        }
        let mut outs: Vec<Vec<f32>> = specs
            .iter()
            .map(|&(_, rows)| vec![f32::NAN; n * rows])
            .collect();
        let mut mats: Vec<(MatRef<'_>, &mut [f32])> = specs
            .iter()
            .zip(&weights)
            .zip(outs.iter_mut())
            .map(|((&(ty, rows), w), o)| {
                (
                    MatRef {
                        ty,
                        data: w,
                        rows,
                        cols,
                    },
                    &mut o[..],
                )
            })
            .collect();
        pool.install(|| matmul_many(&mut mats, &x, n)).unwrap();
        for ((o, e), (ty, _)) in outs.iter().zip(&want).zip(specs) {
            let same = o.iter().zip(e).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{ty} n={n}");
        }
    }
}

#[test]
fn matmul_many_rejects_bad_input() {
    let mut rng = Rng::new(6);
    let (rows, cols) = (8, 64);
    let w = weights(&mut rng, GgmlType::Q4_0, rows, cols);
    let x = vec![0.25; cols];
    let m = MatRef {
        ty: GgmlType::Q4_0,
        data: &w,
        rows,
        cols,
    };
    let mut bufs: Vec<Vec<f32>> = (0..=MAX_MANY).map(|_| vec![0.0; rows]).collect();
    let mut too_many: Vec<(MatRef<'_>, &mut [f32])> =
        bufs.iter_mut().map(|b| (m, &mut b[..])).collect();
    assert!(matches!(
        matmul_many(&mut too_many, &x, 1),
        Err(KernelError::Shape(_))
    ));
    let (mut a, mut b) = (vec![0.0; rows], vec![0.0; rows - 1]);
    let mut bad = [(m, &mut a[..]), (m, &mut b[..])];
    assert!(matches!(
        matmul_many(&mut bad, &x, 1),
        Err(KernelError::Shape(_))
    ));
    let other = MatRef {
        cols: 32,
        data: &w[..rows * 18],
        ..m
    };
    let mut c = vec![0.0; rows];
    let mut mixed = [(m, &mut a[..]), (other, &mut c[..])];
    assert!(matmul_many(&mut mixed, &x, 1).is_err());
    assert!(matmul_many(&mut [], &x, 1).is_ok());
}

/// IQ2_XXS goes through a tile on AVX-512 and AVX2 (each row's grid points
/// decoded once for four or two tokens): every (row, token) equals that level's single
/// dot product bit for bit, at token counts across the tile and block
/// edges, in one thread and split across several.
#[test]
fn iq2_xxs_tiles_equal_pairwise_dots() {
    let ty = GgmlType::IQ2_XXS;
    let mut rng = Rng::new(4242);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    for (rows, cols) in [(1, 256), (5, 512), (67, 768)] {
        // Random codes under a sane scale (IQ2_XXS quantization needs an
        // importance matrix; any code is a valid grid point and sign set).
        let mut w = vec![0u8; ty.row_bytes(cols).unwrap() * rows];
        for b in w.chunks_exact_mut(66) {
            for v in b.iter_mut() {
                *v = rng.next_u64() as u8;
            }
            let d = half::f16::from_f32(0.001 + rng.uniform().abs() * 0.01);
            b[..2].copy_from_slice(&d.to_le_bytes());
        }
        for n in [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33] {
            let x = rng.vec(n * cols, 1.0);
            for level in SimdLevel::available() {
                let want = naive(ty, &w, rows, cols, &x, n, level);
                let mut got = vec![f32::NAN; n * rows];
                let m = MatRef {
                    ty,
                    data: &w,
                    rows,
                    cols,
                };
                pool.install(|| matmul_at(m, &x, n, &mut got, level).unwrap());
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        e.to_bits(),
                        "{rows}x{cols} n={n} {level:?} at token {} row {}: {g} vs {e}",
                        i / rows,
                        i % rows
                    );
                }
            }
        }
    }
}
