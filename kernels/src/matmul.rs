//! Matrix products over quantized weights: `out[t][r] = dot(w[r], x[t])`.
//!
//! Each activation row is rounded ONCE to the weight type's `vec_dot_type`
//! (Q8_0 / Q8_1 with ggml's x86 rounding, f16, bf16, or kept f32), into a
//! thread-local scratch, then the rows of the weight matrix are split among
//! rayon's current pool. Within a task, a block of weight rows is dotted
//! against a block of activation rows while both sit in cache, so prefill
//! reuses each weight row for many tokens. Types without a `vec_dot`
//! dequantize each weight row once to f32 and dot it with the f32
//! activations. Small products run on the calling thread: a decode step
//! issues hundreds of them and rayon's wake-up would cost more than the work.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use crate::dispatch::{kernels_at, type_kernels, TypeKernels, VecDotFn};
use crate::quants::{float, legacy};
use crate::simd::SimdLevel;
use crate::types::GgmlType;
use crate::KernelError;

/// A row-major weight matrix in its GGUF bytes: `rows` rows of `cols`
/// elements of type `ty` (ggml's `ne0 = cols`, `ne1 = rows`).
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub ty: GgmlType,
    pub data: &'a [u8],
    pub rows: usize,
    pub cols: usize,
}

/// Activation rows dotted against one weight row while it is hot.
const TOKEN_BLOCK: usize = 16;
/// Bytes of weight rows kept hot across a block of activation rows.
const ROW_BLOCK_BYTES: usize = 16 * 1024;
/// Below this much work (weight bytes × activation rows) stay on one thread.
const SERIAL_WORK: usize = 48 * 1024;
/// Tasks per pool thread (some slack for threads that start late).
const TASKS_PER_THREAD: usize = 2;

thread_local! {
    /// Scratch for quantized activations (u64 words keep it 8-byte aligned).
    static ACT_SCRATCH: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    /// Scratch for one dequantized weight row (types without `vec_dot`).
    static ROW_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out[t * rows + r] = dot(w row r, x row t)` for `n_tokens` activation
/// rows `x` (`x.len() == n_tokens * cols`, `out.len() == n_tokens * rows`).
pub fn matmul(
    w: MatRef<'_>,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    run(
        w,
        x,
        n_tokens,
        out,
        type_kernels(w.ty)?,
        SimdLevel::current(),
    )
}

/// [`matmul`] with the kernels of one SIMD level (tests run every level
/// this way; `level` is lowered to what the CPU has).
pub fn matmul_at(
    w: MatRef<'_>,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
    level: SimdLevel,
) -> Result<(), KernelError> {
    let k = kernels_at(w.ty, level).ok_or(KernelError::Unsupported(w.ty, "dequantize"))?;
    run(w, x, n_tokens, out, &k, level)
}

fn run(
    w: MatRef<'_>,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
    k: &TypeKernels,
    level: SimdLevel,
) -> Result<(), KernelError> {
    let row_bytes = check_shapes(&w, x, n_tokens, out)?;
    if w.rows == 0 || n_tokens == 0 {
        return Ok(());
    }
    if w.cols == 0 {
        out.fill(0.0);
        return Ok(());
    }
    match k.vec_dot {
        Some(vd) => {
            let dots = Dots::pick(w.ty, vd, level);
            quantized(w, row_bytes, x, n_tokens, out, k.vec_dot_type, dots)
        }
        None => dequantized(w, row_bytes, x, n_tokens, out, k, level),
    }
}

/// Validates every length; returns the bytes of one weight row.
fn check_shapes(
    w: &MatRef<'_>,
    x: &[f32],
    n_tokens: usize,
    out: &[f32],
) -> Result<usize, KernelError> {
    let row_bytes =
        w.ty.row_bytes(w.cols)
            .ok_or(KernelError::NotBlockMultiple {
                ty: w.ty,
                len: w.cols,
                block: w.ty.block_size(),
            })?;
    let expected = row_bytes
        .checked_mul(w.rows)
        .ok_or_else(|| KernelError::Shape(format!("{} x {} overflows", w.rows, w.cols)))?;
    if w.data.len() != expected {
        return Err(KernelError::ByteLength {
            ty: w.ty,
            expected,
            got: w.data.len(),
        });
    }
    let shape = |what: &str, len: usize, n: usize, m: usize| {
        KernelError::Shape(format!("{what} has {len} elements, expected {n} x {m}"))
    };
    if n_tokens.checked_mul(w.cols) != Some(x.len()) {
        return Err(shape("activation", x.len(), n_tokens, w.cols));
    }
    if n_tokens.checked_mul(w.rows) != Some(out.len()) {
        return Err(shape("output", out.len(), n_tokens, w.rows));
    }
    Ok(row_bytes)
}

/// The output pointer shared by tasks that write disjoint rows.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint elements (each owns a range of rows).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The element `i` (a method, so closures capture the whole wrapper).
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// Runs `task(rows)` over `0..rows`, in parallel when the work is worth it.
fn for_row_ranges(rows: usize, work_per_row: usize, task: impl Fn(Range<usize>) + Sync) {
    let threads = rayon::current_num_threads();
    let work = rows.saturating_mul(work_per_row);
    if threads <= 1 || work < SERIAL_WORK || rows < 2 {
        task(0..rows);
        return;
    }
    // Enough tasks to balance, none so small that scheduling dominates.
    let max_tasks = (work / (SERIAL_WORK / 2)).max(2);
    let n_tasks = (threads * TASKS_PER_THREAD).min(max_tasks).min(rows);
    // Row ranges in multiples of 4 rows keep neighbouring tasks off shared lines.
    let per = rows.div_ceil(n_tasks).next_multiple_of(4).min(rows);
    let n_tasks = rows.div_ceil(per);
    (0..n_tasks).into_par_iter().for_each(|i| {
        let start = i * per;
        task(start..(start + per).min(rows));
    });
}

/// Borrows this thread's scratch of at least `words` u64s (a fresh vector
/// if the scratch is already in use further up the stack).
fn with_act_scratch<R>(words: usize, f: impl FnOnce(&mut [u64]) -> R) -> R {
    ACT_SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            if v.len() < words {
                v.resize(words, 0);
            }
            f(&mut v[..words])
        }
        Err(_) => f(&mut vec![0u64; words]),
    })
}

/// Rounds `x` (whole rows) to `vdt` into `dst`, as ggml does before a dot.
fn quantize_activations(vdt: GgmlType, x: &[f32], dst: &mut [u8]) -> Result<(), KernelError> {
    match vdt {
        GgmlType::Q8_0 => legacy::act::quantize_q8_0_bytes(x, dst),
        GgmlType::Q8_1 => legacy::act::quantize_q8_1_bytes(x, dst),
        GgmlType::F16 => float::quantize_f16(x, dst),
        GgmlType::BF16 => float::quantize_bf16(x, dst),
        other => {
            let q = type_kernels(other)?
                .quantize
                .ok_or(KernelError::Unsupported(other, "activation quantize"))?;
            q(x, dst)
        }
    }
    Ok(())
}

fn quantized(
    w: MatRef<'_>,
    row_bytes: usize,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
    vdt: GgmlType,
    vd: Dots,
) -> Result<(), KernelError> {
    let act_row = vdt.row_bytes(w.cols).ok_or(KernelError::NotBlockMultiple {
        ty: vdt,
        len: w.cols,
        block: vdt.block_size(),
    })?;
    if vdt == GgmlType::F32 {
        let act: &[u8] = bytemuck::cast_slice(x);
        dot_all(w, row_bytes, act, act_row, n_tokens, out, vd);
        return Ok(());
    }
    let total = act_row * n_tokens;
    with_act_scratch(total.div_ceil(8), |scratch| {
        let act = &mut bytemuck::cast_slice_mut::<u64, u8>(scratch)[..total];
        quantize_activations(vdt, x, act)?;
        dot_all(w, row_bytes, act, act_row, n_tokens, out, vd);
        Ok(())
    })
}

/// How the dots of one matmul are computed: pair by pair through the
/// dispatch `vec_dot`, or by the format's multi-row, multi-token tiles.
#[derive(Clone, Copy)]
enum Dots {
    Pairs(VecDotFn),
    #[cfg(target_arch = "x86_64")]
    Tiles(legacy::TileFn, legacy::TileShape),
}

impl Dots {
    fn pick(ty: GgmlType, vd: VecDotFn, level: SimdLevel) -> Dots {
        #[cfg(target_arch = "x86_64")]
        {
            if let Some((f, shape)) = legacy::tile_for(ty, level) {
                return Dots::Tiles(f, shape);
            }
        }
        let _ = (ty, level);
        Dots::Pairs(vd)
    }

    /// Rows per tile (row ranges are cut in multiples of it).
    fn tile_rows(self) -> usize {
        match self {
            Dots::Pairs(_) => 1,
            #[cfg(target_arch = "x86_64")]
            Dots::Tiles(_, shape) => shape.rows,
        }
    }
}

/// Every (row, token) dot with the activations already in `vec_dot_type`.
fn dot_all(
    w: MatRef<'_>,
    row_bytes: usize,
    act: &[u8],
    act_row: usize,
    n_tokens: usize,
    out: &mut [f32],
    dots: Dots,
) {
    let (rows, cols) = (w.rows, w.cols);
    let optr = OutPtr(out.as_mut_ptr());
    let tr = dots.tile_rows();
    let row_block = (ROW_BLOCK_BYTES / row_bytes)
        .clamp(1, 64)
        .next_multiple_of(tr);
    for_row_ranges(rows, row_bytes * n_tokens, |range| {
        for r0 in range.clone().step_by(row_block) {
            let r1 = (r0 + row_block).min(range.end);
            for t0 in (0..n_tokens).step_by(TOKEN_BLOCK) {
                let t1 = (t0 + TOKEN_BLOCK).min(n_tokens);
                match dots {
                    Dots::Pairs(vd) => {
                        for r in r0..r1 {
                            let wr = &w.data[r * row_bytes..(r + 1) * row_bytes];
                            for t in t0..t1 {
                                let v = vd(cols, wr, &act[t * act_row..(t + 1) * act_row]);
                                // SAFETY: r < rows and t < n_tokens, so the index
                                // is inside `out`; this task alone owns row r.
                                unsafe { *optr.at(t * rows + r) = v };
                            }
                        }
                    }
                    #[cfg(target_arch = "x86_64")]
                    Dots::Tiles(tile, shape) => {
                        let nb = cols / 32;
                        for r in (r0..r1).step_by(shape.rows) {
                            let nr = shape.rows.min(r1 - r);
                            for t in (t0..t1).step_by(shape.tokens) {
                                let nt = shape.tokens.min(t1 - t);
                                // SAFETY: the tile reads rows r..r+nr of `w`
                                // and t..t+nt of `act` (whole blocks, checked
                                // lengths) and writes (t.., r..) of `out`,
                                // which this task alone owns.
                                unsafe {
                                    tile(
                                        nb,
                                        w.data.as_ptr().add(r * row_bytes),
                                        row_bytes,
                                        nr,
                                        act.as_ptr().add(t * act_row),
                                        act_row,
                                        nt,
                                        optr.at(t * rows + r),
                                        rows,
                                    )
                                };
                            }
                        }
                    }
                }
            }
        }
    });
}

/// The fallback for types without `vec_dot`: dequantize each weight row once
/// and dot it (f32) with every activation row.
fn dequantized(
    w: MatRef<'_>,
    row_bytes: usize,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
    k: &TypeKernels,
    level: SimdLevel,
) -> Result<(), KernelError> {
    let f32dot = float::vec_dot_for(GgmlType::F32, level)
        .ok_or(KernelError::Unsupported(GgmlType::F32, "vec_dot"))?;
    let (rows, cols) = (w.rows, w.cols);
    let optr = OutPtr(out.as_mut_ptr());
    let deq = k.dequantize;
    for_row_ranges(rows, cols * 4 * n_tokens.max(4), |range| {
        ROW_SCRATCH.with(|cell| {
            let mut fresh = Vec::new();
            let mut guard = cell.try_borrow_mut();
            let buf = match guard.as_mut() {
                Ok(v) => &mut **v,
                Err(_) => &mut fresh,
            };
            buf.resize(cols, 0.0);
            for r in range {
                deq(&w.data[r * row_bytes..(r + 1) * row_bytes], buf);
                let wb: &[u8] = bytemuck::cast_slice(&buf[..]);
                for t in 0..n_tokens {
                    let xt: &[u8] = bytemuck::cast_slice(&x[t * cols..(t + 1) * cols]);
                    // SAFETY: as in `dot_all`.
                    unsafe { *optr.at(t * rows + r) = f32dot(cols, wb, xt) };
                }
            }
        });
    });
    Ok(())
}
