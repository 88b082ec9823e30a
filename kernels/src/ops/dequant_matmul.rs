//! Matrix products that keep the activations in f32: each weight row is
//! dequantized once (into a small per-task buffer) and dotted in f32 with
//! every activation row.
//!
//! [`crate::matmul`] rounds activations to the weight type's
//! `vec_dot_type` first, as ggml does (Q8_0 for MXFP4, for example). That
//! rounding is the main difference between llama.cpp and an f32 reference
//! (transformers, DeepSeek's own code) on weights the file holds exactly;
//! this product avoids it. It reads each weight row's bytes once, like the
//! quantized path, so running one expert of a stacked tensor touches only
//! that expert's bytes.

use rayon::prelude::*;

use crate::dispatch::type_kernels;
use crate::matmul::MatRef;
use crate::types::GgmlType;
use crate::KernelError;

/// Below this much work (weight elements × activation rows) stay on the
/// calling thread.
const SERIAL_WORK: usize = 1 << 16;
/// Weight rows per task.
const ROWS_PER_TASK: usize = 16;

/// `out[t·rows + r] = Σ_c dequant(w)[r][c] · x[t·cols + c]` for `n` rows
/// of `x`, with `x` never rounded.
pub fn matmul_dequant_f32(
    w: MatRef<'_>,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let row_bytes =
        w.ty.row_bytes(w.cols)
            .ok_or(KernelError::NotBlockMultiple {
                ty: w.ty,
                len: w.cols,
                block: w.ty.block_size(),
            })?;
    if w.data.len() != row_bytes * w.rows {
        return Err(KernelError::ByteLength {
            ty: w.ty,
            expected: row_bytes * w.rows,
            got: w.data.len(),
        });
    }
    if x.len() != n * w.cols || out.len() != n * w.rows {
        return Err(KernelError::Shape(format!(
            "activation {} / output {} for {n} rows of a {}x{} matrix",
            x.len(),
            out.len(),
            w.rows,
            w.cols
        )));
    }
    if n == 0 || w.rows == 0 {
        return Ok(());
    }
    let deq = type_kernels(w.ty)?.dequantize;
    let dot = type_kernels(GgmlType::F32)?
        .vec_dot
        .ok_or(KernelError::Unsupported(GgmlType::F32, "vec_dot"))?;
    let cols = w.cols;
    // Per block of weight rows: that block's outputs, token-major.
    let block = |r0: usize, res: &mut [f32]| {
        let r1 = (r0 + ROWS_PER_TASK).min(w.rows);
        let mut row = vec![0f32; cols];
        for r in r0..r1 {
            deq(&w.data[r * row_bytes..(r + 1) * row_bytes], &mut row);
            let wb: &[u8] = bytemuck::cast_slice(&row);
            for t in 0..n {
                let xb: &[u8] = bytemuck::cast_slice(&x[t * cols..(t + 1) * cols]);
                res[t * ROWS_PER_TASK + (r - r0)] = dot(cols, wb, xb);
            }
        }
    };
    let n_blocks = w.rows.div_ceil(ROWS_PER_TASK);
    let mut parts = vec![0f32; n_blocks * n * ROWS_PER_TASK];
    let work = w.rows.saturating_mul(cols).saturating_mul(n);
    if work < SERIAL_WORK || rayon::current_num_threads() <= 1 {
        for (b, res) in parts.chunks_exact_mut(n * ROWS_PER_TASK).enumerate() {
            block(b * ROWS_PER_TASK, res);
        }
    } else {
        parts
            .par_chunks_exact_mut(n * ROWS_PER_TASK)
            .enumerate()
            .for_each(|(b, res)| block(b * ROWS_PER_TASK, res));
    }
    for (b, res) in parts.chunks_exact(n * ROWS_PER_TASK).enumerate() {
        let r0 = b * ROWS_PER_TASK;
        let m = (w.rows - r0).min(ROWS_PER_TASK);
        for t in 0..n {
            out[t * w.rows + r0..t * w.rows + r0 + m]
                .copy_from_slice(&res[t * ROWS_PER_TASK..t * ROWS_PER_TASK + m]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize_row;

    #[test]
    fn equals_f32_product_of_the_dequantized_matrix() {
        let (rows, cols, n) = (37, 64, 5);
        let wf: Vec<f32> = (0..rows * cols)
            .map(|i| (((i * 7919) % 113) as f32 - 56.0) / 17.0)
            .collect();
        let rb = GgmlType::MXFP4.row_bytes(cols).unwrap();
        let mut wq = vec![0u8; rb * rows];
        for r in 0..rows {
            quantize_row(
                GgmlType::MXFP4,
                &wf[r * cols..(r + 1) * cols],
                &mut wq[r * rb..(r + 1) * rb],
            )
            .unwrap();
        }
        let mut wd = vec![0f32; rows * cols];
        for r in 0..rows {
            crate::dequantize_row(
                GgmlType::MXFP4,
                &wq[r * rb..(r + 1) * rb],
                &mut wd[r * cols..(r + 1) * cols],
            )
            .unwrap();
        }
        let x: Vec<f32> = (0..n * cols)
            .map(|i| (((i * 31) % 29) as f32 - 14.0) * 0.013)
            .collect();
        let mut out = vec![0f32; n * rows];
        let m = MatRef {
            ty: GgmlType::MXFP4,
            data: &wq,
            rows,
            cols,
        };
        matmul_dequant_f32(m, &x, n, &mut out).unwrap();
        for t in 0..n {
            for r in 0..rows {
                let want: f64 = (0..cols)
                    .map(|c| wd[r * cols + c] as f64 * x[t * cols + c] as f64)
                    .sum();
                let got = out[t * rows + r] as f64;
                assert!((got - want).abs() < 1e-5, "{t},{r}: {got} vs {want}");
            }
        }
        let mut bad = vec![0f32; 3];
        assert!(matmul_dequant_f32(m, &x, n, &mut bad).is_err());
    }
}
