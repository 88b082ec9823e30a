//! llama.cpp's x86 "repacked" matrix products, reproduced bit for bit.
//!
//! On x86 llama.cpp's CPU backend moves Q4_0 and Q4_K weights (AVX2) and
//! Q2_K weights (AVX-512) whose row count is a multiple of 8 into its
//! repack buffer when they feed a matrix product (`MUL_MAT` on a 2-D weight
//! or `MUL_MAT_ID` on an expert stack). Those GEMM/GEMV kernels round the
//! activations exactly like ggml's `vec_dot` path (Q8_0 / Q8_K), but they
//! add up the integer partial sums in a different order:
//!
//! - Q4_0: one fused multiply-add `acc += isum(block) · (d_w · d_a)` per block;
//! - Q4_K: per 64-element group in the GEMM, per super-block in the GEMV,
//!   with the mins in a second accumulator subtracted at the end;
//! - Q2_K: per 128-element half in the GEMM, per super-block in the GEMV.
//!
//! `MUL_MAT` runs the GEMM on whole groups of four activation rows and the
//! GEMV on the remainder; `MUL_MAT_ID` always runs the GEMV. The outputs
//! differ from ggml's `vec_dot` only in the last bits, but a random tiny
//! model turns such bits into different Q8 roundings downstream, so the
//! comparison with llama.cpp's logits needs the same order.

use dwarfstar_kernels::{GgmlType, MatRef};
use half::f16;
use rayon::prelude::*;

use crate::error::{ModelError, Result};

/// Whether llama.cpp (x86, AVX-512 build) repacks a weight of this type and
/// row count.
pub fn eligible(ty: GgmlType, rows: usize) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_K | GgmlType::Q2_K) && rows.is_multiple_of(8)
}

/// Which of llama.cpp's two kernels computes an activation row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Gemm,
    Gemv,
}

/// Activation rows quantized as llama.cpp does for these kernels.
struct Act {
    /// Per row, the quantized values.
    q: Vec<i8>,
    /// Per row and block, the scale.
    d: Vec<f32>,
    /// Per row and 16 values, the sum of the quantized values.
    sums: Vec<i32>,
    block: usize,
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Q8_0 as ggml's x86 `quantize_row_q8_0`: `id = 127 / amax`, ties to even,
/// the scale stored as f16.
fn quantize_q8_0(x: &[f32], q: &mut [i8], d: &mut [f32]) {
    for ((xb, qb), db) in x
        .chunks_exact(32)
        .zip(q.chunks_exact_mut(32))
        .zip(d.iter_mut())
    {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        for (o, &v) in qb.iter_mut().zip(xb) {
            *o = (v * id).round_ties_even() as i8;
        }
        *db = f16::from_f32(amax / 127.0).to_f32();
    }
}

/// Q8_K as ggml's `quantize_row_q8_K_ref`: the scale from the signed value
/// of largest magnitude (`iscale = -127 / max`), ties to even, capped at 127.
fn quantize_q8_k(x: &[f32], q: &mut [i8], d: &mut [f32]) {
    for ((xb, qb), db) in x
        .chunks_exact(256)
        .zip(q.chunks_exact_mut(256))
        .zip(d.iter_mut())
    {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            qb.fill(0);
            *db = 0.0;
            continue;
        }
        let iscale = -127.0 / max;
        for (o, &v) in qb.iter_mut().zip(xb) {
            *o = ((iscale * v).round_ties_even() as i32).min(127) as i8;
        }
        *db = 1.0 / iscale;
    }
}

fn quantize_acts(ty: GgmlType, x: &[f32], cols: usize) -> Act {
    let n = x.len() / cols;
    let block = if ty == GgmlType::Q4_0 { 32 } else { 256 };
    let mut q = vec![0i8; x.len()];
    let mut d = vec![0f32; n * cols / block];
    let nb = cols / block;
    for t in 0..n {
        let (xr, qr, dr) = (
            &x[t * cols..(t + 1) * cols],
            &mut q[t * cols..(t + 1) * cols],
            &mut d[t * nb..(t + 1) * nb],
        );
        if block == 32 {
            quantize_q8_0(xr, qr, dr);
        } else {
            quantize_q8_k(xr, qr, dr);
        }
    }
    let sums = q
        .chunks_exact(16)
        .map(|c| c.iter().map(|&v| v as i32).sum())
        .collect();
    Act { q, d, sums, block }
}

/// One weight row unpacked to integers: values, per-sub-block scales and
/// mins, per-block `d` and `dmin`.
#[derive(Default)]
struct Row {
    q: Vec<i8>,
    sc: Vec<i32>,
    m: Vec<i32>,
    d: Vec<f32>,
    dmin: Vec<f32>,
}

fn unpack(ty: GgmlType, bytes: &[u8], cols: usize, r: &mut Row) {
    r.q.resize(cols, 0);
    r.sc.clear();
    r.m.clear();
    r.d.clear();
    r.dmin.clear();
    match ty {
        GgmlType::Q4_0 => {
            for (b, blk) in bytes.chunks_exact(18).enumerate() {
                r.d.push(f16_at(blk, 0));
                for l in 0..16 {
                    r.q[b * 32 + l] = (blk[2 + l] & 0xF) as i8 - 8;
                    r.q[b * 32 + 16 + l] = (blk[2 + l] >> 4) as i8 - 8;
                }
            }
        }
        GgmlType::Q4_K => {
            for (b, blk) in bytes.chunks_exact(144).enumerate() {
                r.d.push(f16_at(blk, 0));
                r.dmin.push(f16_at(blk, 2));
                let s = &blk[4..16];
                for j in 0..8 {
                    let (sc, m) = if j < 4 {
                        (s[j] & 63, s[j + 4] & 63)
                    } else {
                        (
                            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
                            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
                        )
                    };
                    r.sc.push(sc as i32);
                    r.m.push(m as i32);
                }
                let qs = &blk[16..144];
                for j in 0..4 {
                    for l in 0..32 {
                        r.q[b * 256 + 64 * j + l] = (qs[32 * j + l] & 0xF) as i8;
                        r.q[b * 256 + 64 * j + 32 + l] = (qs[32 * j + l] >> 4) as i8;
                    }
                }
            }
        }
        GgmlType::Q2_K => {
            for (b, blk) in bytes.chunks_exact(84).enumerate() {
                for &s in &blk[..16] {
                    r.sc.push((s & 0xF) as i32);
                    r.m.push((s >> 4) as i32);
                }
                let qs = &blk[16..80];
                for half in 0..2 {
                    for j in 0..4 {
                        for l in 0..32 {
                            r.q[b * 256 + 128 * half + 32 * j + l] =
                                ((qs[32 * half + l] >> (2 * j)) & 3) as i8;
                        }
                    }
                }
                r.d.push(f16_at(blk, 80));
                r.dmin.push(f16_at(blk, 82));
            }
        }
        _ => unreachable!("only eligible types are unpacked"),
    }
}

/// Dot product of two 16-value groups.
#[inline(always)]
fn idot16(a: &[i8], b: &[i8]) -> i32 {
    let (a, b) = (&a[..16], &b[..16]);
    let mut s = 0i32;
    for i in 0..16 {
        s += a[i] as i32 * b[i] as i32;
    }
    s
}

/// One output: weight row `w` (type `ty`) against activation row `t`.
#[inline(always)]
fn dot(ty: GgmlType, w: &Row, a: &Act, t: usize, cols: usize, k: Kernel) -> f32 {
    let aq = &a.q[t * cols..(t + 1) * cols];
    let ad = &a.d[t * (cols / a.block)..(t + 1) * (cols / a.block)];
    if ty == GgmlType::Q4_0 {
        let mut acc = 0f32;
        for (b, &da) in ad.iter().enumerate() {
            let o = b * 32;
            let s = idot16(&w.q[o..], &aq[o..]) + idot16(&w.q[o + 16..], &aq[o + 16..]);
            acc = (s as f32).mul_add(w.d[b] * da, acc);
        }
        return acc;
    }
    // K-quants: integer dots per 16 values, combined into sub-blocks with
    // their scales, summed per GEMM group.
    // Q4_K: sub-blocks of 2×16 values, groups of 2 sub-blocks (64 values);
    // Q2_K: sub-blocks of 16 values, groups of 8 (128 values).
    let (sub, group) = if ty == GgmlType::Q4_K { (2, 2) } else { (1, 8) };
    let sums = &a.sums[t * (cols / 16)..(t + 1) * (cols / 16)];
    let (mut acc, mut accm) = (0f32, 0f32);
    for (b, &da) in ad.iter().enumerate() {
        let (dd, dm) = (w.d[b] * da, w.dmin[b] * da);
        let mut d16 = [0i32; 16];
        for (k16, v) in d16.iter_mut().enumerate() {
            let o = b * 256 + 16 * k16;
            *v = idot16(&w.q[o..], &aq[o..]);
        }
        let (mut ib, mut imb) = (0i32, 0i32);
        for g in 0..16 / (sub * group) {
            let (mut is, mut im) = (0i32, 0i32);
            for s in 0..group {
                let k16 = (g * group + s) * sub;
                let si = b * (16 / sub) + g * group + s;
                let (dv, av) = if sub == 2 {
                    (
                        d16[k16] + d16[k16 + 1],
                        sums[b * 16 + k16] + sums[b * 16 + k16 + 1],
                    )
                } else {
                    (d16[k16], sums[b * 16 + k16])
                };
                is += w.sc[si] * dv;
                im += w.m[si] * av;
            }
            match k {
                Kernel::Gemm => {
                    acc = (is as f32).mul_add(dd, acc);
                    accm = (im as f32).mul_add(dm, accm);
                }
                Kernel::Gemv => {
                    ib += is;
                    imb += im;
                }
            }
        }
        if k == Kernel::Gemv {
            acc = (ib as f32).mul_add(dd, acc);
            accm = (imb as f32).mul_add(dm, accm);
        }
    }
    acc - accm
}

#[inline(always)]
fn row_outputs(
    ty: GgmlType,
    w: MatRef<'_>,
    r: usize,
    a: &Act,
    gemm_rows: usize,
    row: &mut Row,
    o: &mut [f32],
) {
    let rb = w.data.len() / w.rows;
    unpack(ty, &w.data[r * rb..(r + 1) * rb], w.cols, row);
    for (t, v) in o.iter_mut().enumerate() {
        let k = if t < gemm_rows {
            Kernel::Gemm
        } else {
            Kernel::Gemv
        };
        *v = dot(ty, row, a, t, w.cols, k);
    }
}

/// `out[t * rows + r] = w_r · x_t` in llama.cpp's repacked order; `gemm_rows`
/// activation rows use the GEMM, the others the GEMV.
pub fn matmul(w: MatRef<'_>, x: &[f32], n: usize, out: &mut [f32], gemm_rows: usize) -> Result<()> {
    if !eligible(w.ty, w.rows) || !w.cols.is_multiple_of(w.ty.block_size()) {
        return Err(ModelError::Invalid(format!(
            "{} {}×{} is not a repacked type",
            w.ty, w.rows, w.cols
        )));
    }
    if x.len() != n * w.cols
        || out.len() != n * w.rows
        || w.ty.row_bytes(w.cols).map(|b| b * w.rows) != Some(w.data.len())
    {
        return Err(ModelError::Invalid(
            "repacked matmul: lengths disagree".into(),
        ));
    }
    let a = quantize_acts(w.ty, x, w.cols);
    let mut by_row = vec![0f32; w.rows * n];
    by_row
        .par_chunks_mut(n)
        .enumerate()
        .with_min_len(8)
        .for_each_init(Row::default, |row, (r, o)| {
            super::ggml_simd::fast(|| row_outputs(w.ty, w, r, &a, gemm_rows, row, o))
        });
    for (r, o) in by_row.chunks_exact(n).enumerate() {
        for (t, &v) in o.iter().enumerate() {
            out[t * w.rows + r] = v;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dwarfstar_kernels::{dequantize_row, quantize_row};

    /// Against a plain f64 product of the dequantized weight and the
    /// dequantized activations: the order changes the last bits only.
    fn check(ty: GgmlType) {
        let (rows, cols, n) = (16, 512, 6);
        let wf: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.3)
            .collect();
        let mut wb = vec![0u8; ty.row_bytes(cols).unwrap() * rows];
        quantize_row(ty, &wf, &mut wb).unwrap();
        let mut wd = vec![0f32; rows * cols];
        dequantize_row(ty, &wb, &mut wd).unwrap();
        let x: Vec<f32> = (0..n * cols)
            .map(|i| (i * 104729 % 977) as f32 / 488.0 - 1.0)
            .collect();
        let a = quantize_acts(ty, &x, cols);
        let w = MatRef {
            ty,
            data: &wb,
            rows,
            cols,
        };
        let mut out = vec![0f32; n * rows];
        matmul(w, &x, n, &mut out, 4).unwrap();
        for t in 0..n {
            let xa: Vec<f64> = (0..cols)
                .map(|i| a.q[t * cols + i] as f64 * a.d[t * cols / a.block + i / a.block] as f64)
                .collect();
            for r in 0..rows {
                let want: f64 = (0..cols).map(|i| wd[r * cols + i] as f64 * xa[i]).sum();
                let got = out[t * rows + r] as f64;
                assert!(
                    (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "{ty} t{t} r{r}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn repacked_products_are_the_products() {
        for ty in [GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q2_K] {
            check(ty);
        }
    }

    #[test]
    fn q8_k_maps_the_largest_value_to_minus_127() {
        // ggml's iscale = -127 / max: the sign lives in d.
        for big in [-2.0f32, 2.0] {
            let mut x = vec![0.5f32; 256];
            x[3] = big;
            let (mut q, mut d) = (vec![0i8; 256], vec![0f32; 1]);
            quantize_q8_k(&x, &mut q, &mut d);
            assert_eq!(q[3], -127);
            assert_eq!(d[0] < 0.0, big > 0.0);
            assert!((q[0] as f32 * d[0] - 0.5).abs() < 0.01);
        }
    }
}
