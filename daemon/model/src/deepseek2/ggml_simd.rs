//! The f32 arithmetic of llama.cpp's AVX-512 CPU build, lane for lane: its
//! vectorised `exp` (`ggml_v_expf`, a polynomial that differs from libm's
//! `expf` in the last bit now and then), SwiGLU in chunks of 16 with a libm
//! tail, the attention softmax with its f64 sum of 16-lane reductions, and
//! the summation orders of `ggml_vec_dot_f32` and llamafile's tinyBLAS
//! (which runs F32/F16 products). Used when a model reproduces llama.cpp
//! exactly: a differing last bit can flip a Q8/f16 rounding of the next
//! product's activations.

use dwarfstar_kernels::{GgmlType, MatRef};
use half::f16;
use rayon::prelude::*;

fn c(bits: u32) -> f32 {
    f32::from_bits(bits)
}

/// `ggml_v_expf` (AVX-512) for one lane.
pub fn v_expf(x: f32) -> f32 {
    let r = c(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(c(0x3fb8_aa3b), r); // log2(e)
    let n = z - r;
    let b = (-n).mul_add(c(0x35bf_be8e), (-n).mul_add(c(0x3f31_7200), x));
    let u = b * b;
    let j = c(0x3c07_2010)
        .mul_add(b, c(0x3d2b_9f17))
        .mul_add(u, c(0x3e2a_af33).mul_add(b, c(0x3eff_fedb)))
        .mul_add(u, c(0x3f7f_fff6).mul_add(b, 1.0));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    // scalef: j · 2^n, rounded once (exact in f64, then to f32).
    (j as f64 * (n as f64).exp2()) as f32
}

/// Whether the CPU fuses multiply-adds in hardware (else `mul_add` is a
/// libm call: correct, slow).
pub fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        true
    }
}

/// Runs `f` compiled with AVX2 and FMA enabled where the CPU has them.
#[inline(always)]
pub fn fast<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn with_fma<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if has_fma() {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { with_fma(f) };
        }
    }
    f()
}

/// `gate[i] = silu(gate[i]) · up[i]` for rows of `row` values, as
/// `ggml_vec_swiglu_f32` per row: vector lanes for whole chunks of 16,
/// libm for the tail.
pub fn swiglu(gate: &mut [f32], up: &[f32], row: usize) {
    fast(|| {
        for (g, u) in gate.chunks_mut(row).zip(up.chunks(row)) {
            swiglu_row(g, u);
        }
    })
}

#[inline(always)]
fn swiglu_row(gate: &mut [f32], up: &[f32]) {
    let whole = gate.len() / 16 * 16;
    for (g, &u) in gate[..whole].iter_mut().zip(up) {
        let x = *g;
        *g = x / (1.0 + v_expf(0.0 - x)) * u;
    }
    for (g, &u) in gate[whole..].iter_mut().zip(&up[whole..]) {
        let x = *g;
        *g = x / (1.0 + (-x).exp()) * u;
    }
}

/// `_mm512_reduce_add_ps`: halves added pairwise down to one lane.
pub fn reduce16(v: &[f32; 16]) -> f32 {
    let mut a = *v;
    let mut w = 8;
    while w > 0 {
        for i in 0..w {
            a[i] += a[i + w];
        }
        w /= 2;
    }
    a[0]
}

/// In-place softmax of already-scaled scores as llama.cpp runs it over its
/// KV cells: every value goes through the vector `exp` (the row is a whole
/// number of 16-lane chunks, masked cells being 0), each chunk's
/// `_mm512_reduce_add_ps` is added to an f64 sum, and the row is scaled by
/// the f32 inverse of that sum.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for chunk in x.chunks_mut(16) {
        let mut lanes = [0f32; 16];
        for (l, v) in lanes.iter_mut().zip(chunk.iter_mut()) {
            *v = v_expf(*v - max);
            *l = *v;
        }
        sum += reduce16(&lanes) as f64;
    }
    let inv = (1.0 / sum) as f32;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// `ggml_vec_dot_f32` (AVX-512): four 16-lane FMA accumulators over whole
/// 64-element steps, folded pairwise, reduced, then the rest added one
/// product at a time (not fused).
#[inline(always)]
pub fn vec_dot_f32(x: &[f32], y: &[f32]) -> f32 {
    let np = x.len() / 64 * 64;
    let mut acc = [[0f32; 16]; 4];
    for (xs, ys) in x[..np].chunks_exact(64).zip(y[..np].chunks_exact(64)) {
        for (k, a) in acc.iter_mut().enumerate() {
            for (l, v) in a.iter_mut().enumerate() {
                *v = xs[16 * k + l].mul_add(ys[16 * k + l], *v);
            }
        }
    }
    let mut s = [0f32; 16];
    for l in 0..16 {
        let a = acc[0][l] + acc[2][l];
        let b = acc[1][l] + acc[3][l];
        s[l] = a + b;
    }
    let mut sum = reduce16(&s);
    for (a, b) in x[np..].iter().zip(&y[np..]) {
        sum += a * b;
    }
    sum
}

/// `ggml_vec_dot_f16` (AVX-512, values already widened): the F32 vector
/// part, then an f64 sum for the rest.
#[inline(always)]
pub fn vec_dot_f16(x: &[f32], y: &[f32]) -> f32 {
    let np = x.len() / 64 * 64;
    let mut sum = vec_dot_f32(&x[..np], &y[..np]) as f64;
    for (a, b) in x[np..].iter().zip(&y[np..]) {
        sum += (a * b) as f64;
    }
    sum as f32
}

/// llamafile's tinyBLAS (AVX-512) for one output: lane `l` accumulates the
/// products `l, l + 16, …` with FMA, then the lanes are reduced. The length
/// must be a multiple of 16.
#[inline(always)]
pub fn sgemm_dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for (xs, ys) in x.chunks_exact(16).zip(y.chunks_exact(16)) {
        for l in 0..16 {
            acc[l] = xs[l].mul_add(ys[l], acc[l]);
        }
    }
    reduce16(&acc)
}

/// `o = Σ_j p_j · rows_j` (rows `width` apart, `o.len()` used) as tinyBLAS
/// computes `V · softmax`: lane `j mod 16` of each output accumulates with
/// FMA, then the lanes are reduced.
#[inline(always)]
pub fn weighted_rows(p: &[f32], rows: &[f32], width: usize, o: &mut [f32], lanes: &mut Vec<f32>) {
    let n = o.len();
    lanes.clear();
    lanes.resize(16 * n, 0.0);
    for (j, &pj) in p.iter().enumerate() {
        let acc = &mut lanes[(j % 16) * n..(j % 16 + 1) * n];
        for (a, &v) in acc.iter_mut().zip(&rows[j * width..j * width + n]) {
            *a = pj.mul_add(v, *a);
        }
    }
    for (c, out) in o.iter_mut().enumerate() {
        let mut l16 = [0f32; 16];
        for (l, v) in l16.iter_mut().enumerate() {
            *v = lanes[l * n + c];
        }
        *out = reduce16(&l16);
    }
}

/// How llama.cpp reaches an F32/F16 product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatOp {
    /// `MUL_MAT` with contiguous activations: tinyBLAS when the rows are a
    /// multiple of 16 long.
    MulMat,
    /// `MUL_MAT` with strided activations (a permuted view): F32 weights
    /// skip tinyBLAS; F16 ones get converted, contiguous, activations.
    MulMatStrided,
    /// `MUL_MAT_ID`: always the `vec_dot` kernels.
    MulMatId,
}

/// An F32/F16 product `out[t·rows + r] = w_r · x_t` in llama.cpp's order
/// (tinyBLAS or `ggml_vec_dot_f32`/`_f16`, see [`FloatOp`]). `None` for
/// other weight types.
pub fn float_matmul(w: MatRef<'_>, x: &[f32], n: usize, op: FloatOp) -> Option<Vec<f32>> {
    let (rows, cols) = (w.rows, w.cols);
    let tiny = cols % 16 == 0 && op != FloatOp::MulMatId;
    let (sgemm, xs): (bool, std::borrow::Cow<'_, [f32]>) = match w.ty {
        GgmlType::F32 => (tiny && op == FloatOp::MulMat, x.into()),
        GgmlType::F16 => (
            tiny,
            x.iter()
                .map(|&v| f16::from_f32(v).to_f32())
                .collect::<Vec<_>>()
                .into(),
        ),
        _ => return None,
    };
    let half = w.ty == GgmlType::F16;
    let rb = w.data.len() / rows.max(1);
    let mut by_row = vec![0f32; rows * n];
    by_row
        .par_chunks_mut(n)
        .enumerate()
        .with_min_len(8)
        .for_each_init(Vec::new, |wr: &mut Vec<f32>, (r, o)| {
            fast(|| {
                let bytes = &w.data[r * rb..(r + 1) * rb];
                wr.clear();
                if w.ty == GgmlType::F32 {
                    wr.extend(
                        bytes
                            .chunks_exact(4)
                            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    );
                } else {
                    wr.extend(
                        bytes
                            .chunks_exact(2)
                            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()),
                    );
                }
                for (t, v) in o.iter_mut().enumerate() {
                    let xt = &xs[t * cols..(t + 1) * cols];
                    *v = if sgemm {
                        sgemm_dot(wr, xt)
                    } else if half {
                        vec_dot_f16(wr, xt)
                    } else {
                        vec_dot_f32(wr, xt)
                    };
                }
            })
        });
    let mut out = vec![0f32; n * rows];
    for (r, o) in by_row.chunks_exact(n).enumerate() {
        for (t, &v) in o.iter().enumerate() {
            out[t * rows + r] = v;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v_expf_is_exp_to_a_few_ulps() {
        for i in -800..800 {
            let x = i as f32 * 0.11;
            let (a, b) = (v_expf(x), x.exp());
            assert!(((a - b) / b).abs() < 4e-7, "{x}: {a} vs {b}");
        }
        assert_eq!(v_expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(v_expf(-200.0), 0.0);
        assert_eq!(v_expf(200.0), f32::INFINITY);
    }

    #[test]
    fn dots_are_dots() {
        let x: Vec<f32> = (0..80).map(|i| (i as f32 * 0.7).cos()).collect();
        let y: Vec<f32> = (0..80).map(|i| (i as f32 * 0.3).sin()).collect();
        let want: f64 = x.iter().zip(&y).map(|(a, b)| *a as f64 * *b as f64).sum();
        assert!((vec_dot_f32(&x, &y) as f64 - want).abs() < 1e-5);
        assert!((sgemm_dot(&x, &y) as f64 - want).abs() < 1e-5);
        let mut o = vec![0f32; 3];
        let mut lanes = Vec::new();
        weighted_rows(&x[..20], &y, 4, &mut o, &mut lanes);
        for (c, v) in o.iter().enumerate() {
            let w: f32 = (0..20).map(|j| x[j] * y[j * 4 + c]).sum();
            assert!((v - w).abs() < 1e-5);
        }
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        x[5] = f32::NEG_INFINITY;
        softmax(&mut x);
        assert_eq!(x[5], 0.0);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
}
