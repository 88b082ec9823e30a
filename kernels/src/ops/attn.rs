//! Attention's two reductions, summed in the lane order of ggml's AVX-512
//! CPU kernels: `q·k` as `ggml_vec_dot_f32` (four accumulators of 16 lanes
//! over steps of 64), and the probability-weighted sum of values either as
//! llamafile's sgemm (one accumulator of 16 lanes; prompt batches) or as
//! `ggml_vec_dot_f32` (single-token decode). Cells are indexed from 0, as
//! in a KV cache, so lanes line up with ggml's. An f16 key is dotted in
//! tinyBLAS's order ([`dot_kq_f16`]). None of these depends on the SIMD
//! level: the x86 versions only run the same lanes in registers.

use half::f16;

use super::exp::reduce16;

/// Which of ggml's kernels the value sum follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VSumOrder {
    /// llamafile sgemm: lane `cell % 16`, fused multiply-adds.
    Gemm,
    /// `ggml_vec_dot_f32`: accumulator `(cell / 16) % 4`, lane `cell % 16`.
    VecDot,
}

#[inline(always)]
fn dot_kq_portable(q: &[f32], k: &[f32]) -> f32 {
    let n = q.len().min(k.len());
    let np = n & !63;
    let mut acc = [[0f32; 16]; 4];
    let mut i = 0;
    while i < np {
        for (j, a) in acc.iter_mut().enumerate() {
            for (l, s) in a.iter_mut().enumerate() {
                let at = i + 16 * j + l;
                *s = q[at].mul_add(k[at], *s);
            }
        }
        i += 64;
    }
    let mut t = [0f32; 16];
    for l in 0..16 {
        t[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    }
    let mut s = reduce16(&t);
    for at in np..n {
        s += q[at] * k[at];
    }
    s
}

/// [`dot_kq_portable`] in AVX2 registers: ggml's 16-lane accumulator `j`
/// is the register pair `lo[j]`/`hi[j]`, each lane fused-multiply-added
/// exactly as the portable loop does, so the sum is the same to the bit.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_kq_avx2(q: &[f32], k: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = q.len().min(k.len());
    let np = n & !63;
    let mut lo = [_mm256_setzero_ps(); 4];
    let mut hi = [_mm256_setzero_ps(); 4];
    let (qp, kp) = (q.as_ptr(), k.as_ptr());
    let mut i = 0;
    while i < np {
        for j in 0..4 {
            let o = i + 16 * j;
            // SAFETY: o + 16 <= np <= n, within both slices.
            let (q0, k0, q1, k1) = unsafe {
                (
                    _mm256_loadu_ps(qp.add(o)),
                    _mm256_loadu_ps(kp.add(o)),
                    _mm256_loadu_ps(qp.add(o + 8)),
                    _mm256_loadu_ps(kp.add(o + 8)),
                )
            };
            lo[j] = _mm256_fmadd_ps(q0, k0, lo[j]);
            hi[j] = _mm256_fmadd_ps(q1, k1, hi[j]);
        }
        i += 64;
    }
    let tlo = _mm256_add_ps(_mm256_add_ps(lo[0], lo[2]), _mm256_add_ps(lo[1], lo[3]));
    let thi = _mm256_add_ps(_mm256_add_ps(hi[0], hi[2]), _mm256_add_ps(hi[1], hi[3]));
    let mut t = [0f32; 16];
    // SAFETY: `t` holds the 16 lanes stored.
    unsafe {
        _mm256_storeu_ps(t.as_mut_ptr(), tlo);
        _mm256_storeu_ps(t.as_mut_ptr().add(8), thi);
    }
    let mut s = reduce16(&t);
    for at in np..n {
        s += q[at] * k[at];
    }
    s
}

#[cfg(target_arch = "x86_64")]
fn avx2_fma() -> bool {
    use std::sync::OnceLock;
    static YES: OnceLock<bool> = OnceLock::new();
    *YES.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    })
}

/// `q·k` summed as `ggml_vec_dot_f32` does.
#[inline]
pub fn dot_kq(q: &[f32], k: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if avx2_fma() {
            // SAFETY: AVX2 and FMA were detected at run time.
            return unsafe { dot_kq_avx2(q, k) };
        }
    }
    dot_kq_portable(q, k)
}

/// `q·k` of an f16 key with a query already rounded to f16 (both as raw
/// little-endian bytes, `n` values), summed as llama.cpp's AVX-512 build
/// sums it for an f16 cache with flash attention off: `MUL_MAT` converts
/// the query to f16 and hands the product to llamafile's tinyBLAS, whose
/// one accumulator of 16 lanes takes the widened values with FMA, then
/// `_mm512_reduce_add_ps`. (tinyBLAS needs `n % 16 == 0`; the products of a
/// shorter tail are added after the reduction, one at a time.) The same
/// on every SIMD level: products of two f16 are exact in f32, only the
/// order of the sums matters.
pub fn dot_kq_f16(n: usize, k: &[u8], q: &[u8]) -> f32 {
    let n = n.min(k.len() / 2).min(q.len() / 2);
    let h = |b: &[u8], i: usize| f16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32();
    let np = n & !15;
    let mut acc = [0f32; 16];
    for i in (0..np).step_by(16) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a = h(q, i + l).mul_add(h(k, i + l), *a);
        }
    }
    let mut s = reduce16(&acc);
    for i in np..n {
        s += h(q, i) * h(k, i);
    }
    s
}

#[inline(always)]
fn weighted_sum_portable<'a>(
    p: &[f32],
    first: usize,
    v: &dyn Fn(usize) -> &'a [f32],
    out: &mut [f32],
    order: VSumOrder,
    acc: &mut Vec<f32>,
) {
    let d = out.len();
    let slots = match order {
        VSumOrder::Gemm => 16,
        VSumOrder::VecDot => 64,
    };
    acc.clear();
    acc.resize(slots * d, 0.0);
    for (i, &w) in p.iter().enumerate() {
        let cell = first + i;
        let slot = cell % slots;
        let row = &mut acc[slot * d..(slot + 1) * d];
        for (a, &x) in row.iter_mut().zip(v(cell)) {
            *a = x.mul_add(w, *a);
        }
    }
    let mut lanes = [0f32; 16];
    for (c, o) in out.iter_mut().enumerate() {
        for (l, lane) in lanes.iter_mut().enumerate() {
            *lane = match order {
                VSumOrder::Gemm => acc[l * d + c],
                VSumOrder::VecDot => {
                    let s = |j: usize| acc[(16 * j + l) * d + c];
                    (s(0) + s(2)) + (s(1) + s(3))
                }
            };
        }
        *o = reduce16(&lanes);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn weighted_sum_fma<'a>(
    p: &[f32],
    first: usize,
    v: &dyn Fn(usize) -> &'a [f32],
    out: &mut [f32],
    order: VSumOrder,
    acc: &mut Vec<f32>,
) {
    weighted_sum_portable(p, first, v, out, order, acc)
}

/// `out[c] = Σ_i p[i] · v(first + i)[c]`, summed in ggml's lane order.
/// `acc` is scratch (reused between calls to avoid allocation).
pub fn weighted_sum_v<'a>(
    p: &[f32],
    first: usize,
    v: &dyn Fn(usize) -> &'a [f32],
    out: &mut [f32],
    order: VSumOrder,
    acc: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::exp::fma_available() {
            // SAFETY: FMA was detected at run time.
            unsafe { weighted_sum_fma(p, first, v, out, order, acc) };
            return;
        }
    }
    weighted_sum_portable(p, first, v, out, order, acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SIMD dot is the portable one to the bit, whole steps and tails.
    #[test]
    fn simd_dot_equals_the_portable_dot() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        };
        for n in [0, 1, 7, 63, 64, 65, 128, 136, 192, 576] {
            for _ in 0..20 {
                let q: Vec<f32> = (0..n).map(|_| next()).collect();
                let k: Vec<f32> = (0..n).map(|_| next()).collect();
                let want = dot_kq_portable(&q, &k);
                assert_eq!(dot_kq(&q, &k).to_bits(), want.to_bits(), "n = {n}");
            }
        }
    }

    #[test]
    fn dot_and_weighted_sum_agree_with_plain_sums() {
        let q: Vec<f32> = (0..136)
            .map(|i| ((i * 37 % 19) as f32 - 9.0) * 0.1)
            .collect();
        let k: Vec<f32> = (0..136)
            .map(|i| ((i * 11 % 23) as f32 - 11.0) * 0.05)
            .collect();
        let plain: f64 = q
            .iter()
            .zip(&k)
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum();
        assert!((dot_kq(&q, &k) as f64 - plain).abs() < 1e-4);
        let vals: Vec<Vec<f32>> = (0..40)
            .map(|j| (0..8).map(|c| (j * 8 + c) as f32 * 0.01).collect())
            .collect();
        let p: Vec<f32> = (0..30).map(|i| 1.0 / (1.0 + i as f32)).collect();
        for order in [VSumOrder::Gemm, VSumOrder::VecDot] {
            let mut out = vec![0f32; 8];
            let mut acc = Vec::new();
            weighted_sum_v(&p, 7, &|j| &vals[j], &mut out, order, &mut acc);
            for c in 0..8 {
                let want: f64 = p
                    .iter()
                    .enumerate()
                    .map(|(i, w)| *w as f64 * vals[7 + i][c] as f64)
                    .sum();
                assert!((out[c] as f64 - want).abs() < 1e-4, "{order:?} {c}");
            }
        }
    }
}
