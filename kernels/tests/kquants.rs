//! K-quant kernels against ggml: bit-exact dequantization and reference
//! quantization on the quant-zoo fixture, every SIMD `vec_dot` against the
//! scalar reference and against ggml's own kernel, Q8_K activation
//! rounding, and the importance-weighted quantizers.

use std::path::PathBuf;

use dwarfstar_kernels::dispatch::kernels_at;
use dwarfstar_kernels::quants::kquants::*;
use dwarfstar_kernels::{GgmlType, SimdLevel};

/// quant-zoo.gguf and its index.json (tests/fixtures/quant).
struct Zoo {
    file: Vec<u8>,
    index: serde_json::Value,
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl Zoo {
    fn dir() -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/quant"
        ))
    }

    fn load() -> Zoo {
        let dir = Self::dir();
        let read = |name: &str| {
            std::fs::read(dir.join(name))
                .unwrap_or_else(|e| panic!("reading {}/{name}: {e}", dir.display()))
        };
        let index = serde_json::from_slice(&read("index.json")).expect("parsing index.json");
        Zoo {
            file: read("quant-zoo.gguf"),
            index,
        }
    }

    fn usize(&self, key: &str) -> usize {
        self.index[key].as_u64().expect("index.json field") as usize
    }

    fn tensor(&self, entry: &serde_json::Value) -> &[u8] {
        let off = entry["offset"].as_u64().expect("offset") as usize;
        let n = entry["n_bytes"].as_u64().expect("n_bytes") as usize;
        &self.file[off..off + n]
    }

    fn entry(&self, name: &str) -> &serde_json::Value {
        &self.index["types"][name]
    }

    /// `source`, `activation` or `imatrix`, as f32.
    fn f32_tensor(&self, key: &str) -> Vec<f32> {
        floats(self.tensor(&self.index[key]))
    }

    /// ggml's quantized rows of type `name` (e.g. "q4_K").
    fn quantized(&self, name: &str) -> &[u8] {
        self.tensor(self.entry(name))
    }

    /// ggml's dequantization of type `name`.
    fn dequantized(&self, name: &str) -> Vec<f32> {
        let f = self.entry(name)["dequant_file"]
            .as_str()
            .expect("dequant_file");
        floats(&std::fs::read(Self::dir().join(f)).expect("reading dequant file"))
    }

    fn f64s(&self, name: &str, key: &str) -> Vec<f64> {
        let list = self.entry(name)[key].as_array().expect("array field");
        list.iter().map(|v| v.as_f64().expect("number")).collect()
    }
}

/// xorshift64* test data: roughly normal values with the odd outlier.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let v = (self.uniform() + self.uniform() + self.uniform()) * scale;
                if self.next_u64().is_multiple_of(97) {
                    v * 20.0
                } else {
                    v
                }
            })
            .collect()
    }
}

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
    let src = zoo.f32_tensor("source");
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
fn vec_dot_is_bit_exact_with_ggml_on_the_fixture() {
    let zoo = Zoo::load();
    let (rows, cols) = (zoo.usize("rows"), zoo.usize("cols"));
    let act = zoo.f32_tensor("activation");
    let act_q8 = q8k_bytes(&act);
    for (name, ty) in TYPES {
        let q = zoo.quantized(name);
        let deq = zoo.dequantized(name);
        let ggml = zoo.f64s(name, "dot_ggml_vec_dot");
        let row_bytes = ty.row_bytes(cols).unwrap();
        let scalar = kernels_at(ty, SimdLevel::Scalar).unwrap().vec_dot.unwrap();
        for r in 0..rows {
            let w = &q[r * row_bytes..(r + 1) * row_bytes];
            let (exact, l1) = dot_f64(&deq[r * cols..(r + 1) * cols], &act);
            // index.json prints ggml's f32 result to ~16 digits: far
            // closer to it than half an f32 ulp, so rounding recovers it.
            let want = ggml[r] as f32;
            assert!(
                (want as f64 - ggml[r]).abs() <= 1e-12 * ggml[r].abs(),
                "{name} row {r}: {} is not an f32 printed",
                ggml[r]
            );
            let reference = scalar(cols, w, &act_q8);
            assert_eq!(
                reference.to_bits(),
                want.to_bits(),
                "{name} row {r}: scalar {reference} vs ggml {want}"
            );
            for level in SimdLevel::available() {
                let k = kernels_at(ty, level).unwrap();
                assert_eq!(k.vec_dot_type, GgmlType::Q8_K);
                let got = (k.vec_dot.unwrap())(cols, w, &act_q8);
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{name} {level:?} row {r}: {got} vs ggml {want}"
                );
                let vs_f64 = (got as f64 - exact).abs() / l1;
                assert!(
                    vs_f64 < 5e-3,
                    "{name} {level:?} row {r}: {got} vs f64 {exact}"
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
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{name} {level:?} scale {scale} {nb} blocks: {got} vs {want}"
                    );
                }
                let got = f(n, &w, &aq);
                assert_eq!(
                    got.to_bits(),
                    reference.to_bits(),
                    "{name} {level:?}: {got} vs {reference}"
                );
                let vs_f64 = (got as f64 - dot_f64(&dequantize(ty, &w), &a).0).abs();
                assert!(vs_f64 <= 5e-3 * l1, "{name} {level:?}: {got}");
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
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
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
    let src = zoo.f32_tensor("source");
    let imatrix = zoo.f32_tensor("imatrix");
    assert_eq!(imatrix.len(), zoo.usize("cols"));
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

/// 32 rows of 1024 in eight regimes that stress the quantizers' edge
/// cases, and an importance row with some zero entries.
fn edge_case_rows() -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(2024);
    let mut x = Vec::with_capacity(32 * 1024);
    for r in 0..32 {
        let v = rng.vec(1024, 1.0);
        let row: Vec<f32> = match r % 8 {
            0 => v.iter().map(|a| a * 0.02).collect(),
            1 => {
                let s = [0.01, 0.3, 7.0, 100.0][r / 8];
                v.iter().map(|a| a * s).collect()
            }
            2 => v.iter().map(|a| a.abs() + 0.5).collect(),
            3 => v.iter().map(|a| -a.abs() - 0.1).collect(),
            4 => (0..1024)
                .map(|i| if i % 211 == 5 { 3.0 * v[0] } else { v[0] })
                .collect(),
            5 => (0..1024)
                .map(|i| {
                    if (256..512).contains(&i) || (600..616).contains(&i) {
                        0.0
                    } else {
                        v[i]
                    }
                })
                .collect(),
            6 => v
                .iter()
                .map(|a| {
                    let b = a / 3.0;
                    b * b * b * b * b * b * b
                })
                .collect(),
            _ => v.iter().map(|a| (a * 4.0).round() / 4.0).collect(),
        };
        x.extend(row);
    }
    let im = (0..1024)
        .map(|i| {
            let u = rng.uniform();
            if i % 97 == 0 {
                0.0
            } else {
                0.55 + 0.45 * u + 0.5 * u * u * u * u
            }
        })
        .collect();
    (x, im)
}

/// FNV-1a, 64 bit.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|f| f.to_le_bytes()).collect()
}

/// ggml's own output on [`edge_case_rows`] — `ggml_quantize_chunk` (what
/// llama-quantize calls) without and with the importance row, and
/// `quantize_row_q8_K_ref` — recorded as FNV-1a hashes of the bytes (from a
/// small C program linked against the reference build's libggml-base).
#[test]
fn quantizers_match_ggml_on_edge_cases_with_and_without_imatrix() {
    let (x, im) = edge_case_rows();
    assert_eq!(
        fnv1a(&le_bytes(&x)),
        0x50c0_d68b_341e_2c7e,
        "input generator changed"
    );
    assert_eq!(
        fnv1a(&le_bytes(&im)),
        0xc05a_6e5b_7a83_9d74,
        "input generator changed"
    );
    let nb = x.len() / 256;
    macro_rules! check {
        ($block:ty, $f:ident, $plain:expr, $weighted:expr) => {{
            for (weights, want) in [(None, $plain), (Some(&im[..]), $weighted)] {
                let mut out = vec![<$block as bytemuck::Zeroable>::zeroed(); nb];
                $f(&x, &mut out, weights);
                let got = fnv1a(bytemuck::cast_slice(&out));
                assert_eq!(
                    got,
                    want,
                    "{} (imatrix: {})",
                    stringify!($f),
                    weights.is_some()
                );
            }
        }};
    }
    check!(
        BlockQ2_K,
        quantize_q2_k_weighted,
        0x45e5_0441_a2a3_fc5c,
        0xbdef_c8ac_dfd6_9402
    );
    check!(
        BlockQ3_K,
        quantize_q3_k_weighted,
        0x3a26_75cd_3a6b_8037,
        0x58b5_139b_d24e_eaa2
    );
    check!(
        BlockQ4_K,
        quantize_q4_k_weighted,
        0xdbfa_70be_66fe_6e37,
        0x9156_3014_6eb8_65d4
    );
    check!(
        BlockQ5_K,
        quantize_q5_k_weighted,
        0xd216_8311_183f_83df,
        0x36c9_257d_e429_a587
    );
    check!(
        BlockQ6_K,
        quantize_q6_k_weighted,
        0x4d6f_7cd1_0c4e_68aa,
        0x8758_9bb3_6699_8573
    );
    let mut q8 = vec![<BlockQ8_K as bytemuck::Zeroable>::zeroed(); nb];
    quantize_q8_k(&x, &mut q8);
    assert_eq!(
        fnv1a(bytemuck::cast_slice(&q8)),
        0x731f_645a_0de6_c7e4,
        "quantize_q8_k"
    );
}

/// The random rows of the ggml comparison below: every weight byte random
/// (levels, packed scales and mins), f16 `d`/`dmin` of random sign with a
/// narrow or (`wide`) near-full exponent range, and Q8_K activations with
/// random `d`, values in `[−lim, lim)` clipped to 127 (so −128 occurs) and
/// consistent `bsums`. A xorshift64 whose draws follow a C harness linked
/// against ggml's CPU backend, which printed [`GGML_PINNED`].
struct RawRows(u64);

impl RawRows {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 16) as u32
    }

    fn f16_bits(&mut self, wide: bool) -> [u8; 2] {
        let e = if wide {
            1 + self.next() % 29
        } else {
            8 + self.next() % 10
        };
        let sign = self.next() & 1;
        let m = self.next() & 1023;
        (((sign << 15) | (e << 10) | m) as u16).to_le_bytes()
    }

    /// Case `c`: `nb` blocks of `ty` and of Q8_K.
    fn case(&mut self, c: usize, ty: GgmlType, nb: usize, wide: bool) -> (Vec<u8>, Vec<u8>) {
        let bs = ty.type_size();
        // Offsets of `d` and `dmin` inside each block.
        let (d_at, dmin_at) = match ty {
            GgmlType::Q2_K => (80, Some(82)),
            GgmlType::Q3_K => (108, None),
            GgmlType::Q6_K => (208, None),
            _ => (0, Some(2)),
        };
        let mut w: Vec<u8> = (0..nb * bs).map(|_| self.next() as u8).collect();
        let mut a = vec![0u8; nb * 292];
        for b in 0..nb {
            let x = &mut w[b * bs..(b + 1) * bs];
            x[d_at..d_at + 2].copy_from_slice(&self.f16_bits(wide));
            if let Some(m) = dmin_at {
                x[m..m + 2].copy_from_slice(&self.f16_bits(wide));
            }
            let mant = 1.0 + (self.next() % 100_000) as f32 / 100_000.0;
            let ex = if wide {
                (self.next() % 40) as i32 - 30
            } else {
                -((self.next() % 10) as i32) - 5
            };
            let d = mant * f32::from_bits(((127 + ex) as u32) << 23);
            let lim = if matches!(c % 7, 0) {
                128
            } else {
                1 + self.next() % 128
            };
            let q: Vec<i8> = (0..256)
                .map(|_| ((self.next() % (2 * lim)) as i32 - lim as i32).min(127) as i8)
                .collect();
            let y = &mut a[b * 292..(b + 1) * 292];
            y[..4].copy_from_slice(&d.to_le_bytes());
            for (dst, &v) in y[4..260].iter_mut().zip(&q) {
                *dst = v as u8;
            }
            for g in 0..16 {
                let s: i16 = q[16 * g..16 * g + 16].iter().map(|&v| v as i16).sum();
                y[260 + 2 * g..262 + 2 * g].copy_from_slice(&s.to_le_bytes());
            }
        }
        (w, a)
    }
}

/// ggml's `vec_dot` (x86 build, AVX-512 machine) on [`RawRows`] case `c`
/// (seed 88172645463325252): type `c % 5` of Q2_K..Q6_K,
/// `[1, 2, 5, 9][(c / 5) % 4]` blocks, wide exponents from case 40 on.
const GGML_PINNED: [u32; 60] = [
    0x40012bae, 0xc143f7ac, 0xc1bdfac4, 0xc569ea4e, 0xc346738a, //
    0xbfafa6e4, 0xc1411251, 0xc59987c4, 0xc7a6c7d1, 0x44b619ca, //
    0x409f014d, 0xc3a5b488, 0xc2ef5308, 0x45e0330a, 0x456d8d64, //
    0x45234dba, 0x440010a4, 0x47af7007, 0xc6429f7b, 0xc440a182, //
    0xc24e9ef5, 0x436f6f3c, 0x4054033a, 0xc026d110, 0x409f468e, //
    0xc20c49d3, 0xbd9ab54c, 0xc3de8b54, 0x454d2a44, 0x42ed15e6, //
    0xc29a23ec, 0xc2bcad8a, 0x449addaf, 0x45ee4de6, 0xc5d24186, //
    0xc2c9cb88, 0x4411a2ff, 0x45e6a021, 0x44dc7125, 0x443c87ec, //
    0xd0806ad6, 0x4ccffe1e, 0xc4a7f526, 0x3cbe797e, 0xc8b432b6, //
    0x40be57a0, 0x3a914900, 0xce4458ff, 0xcd586b45, 0xd22f9a40, //
    0x4c6ce48a, 0xc73dd032, 0xcc493d5c, 0xd1b8157e, 0x4ea8e078, //
    0x4c57a552, 0x4b4254cd, 0xcfb2c65a, 0xd5b7e029, 0xd3d9fc2a, //
];

#[test]
fn vec_dot_is_bit_exact_with_ggml_on_raw_random_blocks() {
    let mut rng = RawRows(88_172_645_463_325_252);
    for (c, &want) in GGML_PINNED.iter().enumerate() {
        let (name, ty) = TYPES[c % 5];
        let nb = [1, 2, 5, 9][(c / 5) % 4];
        let (w, a) = rng.case(c, ty, nb, c >= 40);
        let want = f32::from_bits(want);
        for level in SimdLevel::available() {
            let got = (kernels_at(ty, level).unwrap().vec_dot.unwrap())(256 * nb, &w, &a);
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{name} {level:?} case {c} ({nb} blocks): {got:e} vs ggml {want:e}"
            );
        }
    }
}

#[test]
fn every_simd_level_is_bit_exact_with_scalar_on_raw_random_blocks() {
    let mut rng = RawRows(0x5eed_1234_abcd_0001);
    for c in 0..200 {
        let (name, ty) = TYPES[c % 5];
        let nb = [1, 3, 8, 17, 33][(c / 5) % 5];
        let (w, a) = rng.case(c, ty, nb, c % 3 == 1);
        let want = (kernels_at(ty, SimdLevel::Scalar).unwrap().vec_dot.unwrap())(256 * nb, &w, &a);
        assert!(want.is_finite(), "{name} case {c}: {want}");
        for level in SimdLevel::available() {
            let got = (kernels_at(ty, level).unwrap().vec_dot.unwrap())(256 * nb, &w, &a);
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{name} {level:?} case {c} ({nb} blocks): {got:e} vs {want:e}"
            );
        }
    }
}
