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
//!
//! [`matmul_many`] runs several matrices that read the same activations
//! (Q, K and V; gate and up) in one parallel region, rounding the
//! activations once. Calling these from inside the pool (`pool.install`
//! around the whole forward pass) keeps the calling thread a pool worker,
//! which is cheaper than entering the pool from outside on every call.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use crate::dispatch::{kernels_at, type_kernels, DequantFn, TypeKernels, VecDotFn};
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
    let k = type_kernels(w.ty)?;
    let job = Job::new(w, out, x, n_tokens, k, SimdLevel::current())?;
    execute(&mut [job], x, n_tokens)
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
    let job = Job::new(w, out, x, n_tokens, &k, level)?;
    execute(&mut [job], x, n_tokens)
}

/// Several products with the same activations, e.g. Q, K and V:
/// `mats[i].1[t * rows_i + r] = dot(mats[i].0 row r, x row t)`. The
/// activations are rounded once per distinct `vec_dot_type` and all rows of
/// all matrices share one parallel region. Matrices may differ in type and
/// row count but all have `x.len() / n_tokens` columns. At most
/// [`MAX_MANY`] matrices.
pub fn matmul_many(
    mats: &mut [(MatRef<'_>, &mut [f32])],
    x: &[f32],
    n_tokens: usize,
) -> Result<(), KernelError> {
    if mats.len() > MAX_MANY {
        return Err(KernelError::Shape(format!(
            "matmul_many takes at most {MAX_MANY} matrices, got {}",
            mats.len()
        )));
    }
    let level = SimdLevel::current();
    let mut jobs: [Option<Job>; MAX_MANY] = Default::default();
    for (slot, (w, out)) in jobs.iter_mut().zip(mats.iter_mut()) {
        *slot = Some(Job::new(*w, out, x, n_tokens, type_kernels(w.ty)?, level)?);
    }
    let mut list: [Job; MAX_MANY] = std::array::from_fn(|i| jobs[i].take().unwrap_or(Job::EMPTY));
    execute(&mut list[..mats.len()], x, n_tokens)
}

/// The most matrices one [`matmul_many`] call takes.
pub const MAX_MANY: usize = 8;

/// How one matrix's dots are done.
#[derive(Clone, Copy)]
enum How {
    /// Against activations rounded to `vdt` (`act_off` into the scratch,
    /// filled by [`execute`]; `x` itself when `vdt` is F32).
    Dots {
        dots: Dots,
        vdt: GgmlType,
        act_row: usize,
        act_off: usize,
    },
    /// Dequantize rows, dot in f32.
    Dequant { deq: DequantFn, f32dot: VecDotFn },
}

/// One validated matrix product, ready to run over any range of its rows.
#[derive(Clone, Copy)]
struct Job<'a> {
    w: MatRef<'a>,
    row_bytes: usize,
    out: OutPtr,
    how: How,
}

impl<'a> Job<'a> {
    const EMPTY: Job<'static> = Job {
        w: MatRef {
            ty: GgmlType::F32,
            data: &[],
            rows: 0,
            cols: 0,
        },
        row_bytes: 0,
        out: OutPtr(std::ptr::null_mut()),
        how: How::Dots {
            dots: Dots::Pairs(float::vec_dot_f32_ref),
            vdt: GgmlType::F32,
            act_row: 0,
            act_off: 0,
        },
    };

    /// Validates `w`, `x` and `out` and picks the kernels. The job keeps a
    /// raw pointer to `out`: it must only run while `out` is borrowed.
    fn new(
        w: MatRef<'a>,
        out: &mut [f32],
        x: &[f32],
        n_tokens: usize,
        k: &TypeKernels,
        level: SimdLevel,
    ) -> Result<Job<'a>, KernelError> {
        if k.ty != w.ty {
            return Err(KernelError::Shape(format!(
                "{} kernels for a {} matrix",
                k.ty, w.ty
            )));
        }
        let row_bytes = check_shapes(&w, x, n_tokens, out)?;
        let how = match k.vec_dot {
            Some(vd) => {
                let vdt = k.vec_dot_type;
                let act_row = vdt.row_bytes(w.cols).ok_or(KernelError::NotBlockMultiple {
                    ty: vdt,
                    len: w.cols,
                    block: vdt.block_size(),
                })?;
                How::Dots {
                    dots: Dots::pick(w.ty, vd, level),
                    vdt,
                    act_row,
                    act_off: 0,
                }
            }
            None => How::Dequant {
                deq: k.dequantize,
                f32dot: float::vec_dot_for(GgmlType::F32, level)
                    .ok_or(KernelError::Unsupported(GgmlType::F32, "vec_dot"))?,
            },
        };
        Ok(Job {
            w,
            row_bytes,
            out: OutPtr(out.as_mut_ptr()),
            how,
        })
    }

    /// Work units per row, to size the parallel split.
    fn work_per_row(&self, n_tokens: usize) -> usize {
        match self.how {
            How::Dots { .. } => self.row_bytes * n_tokens,
            How::Dequant { .. } => self.w.cols * 4 * n_tokens.max(4),
        }
    }
}

/// Rounds the activations for every job, then runs all their rows.
fn execute(jobs: &mut [Job<'_>], x: &[f32], n_tokens: usize) -> Result<(), KernelError> {
    if n_tokens == 0 {
        return Ok(());
    }
    // One scratch segment per distinct activation type (F32 reads `x`).
    let mut segments: [(GgmlType, usize, usize); MAX_MANY] = [(GgmlType::F32, 0, 0); MAX_MANY];
    let mut n_seg = 0;
    let mut total = 0;
    for job in jobs.iter_mut() {
        if let How::Dots {
            vdt,
            act_row,
            act_off,
            ..
        } = &mut job.how
        {
            if *vdt == GgmlType::F32 {
                continue;
            }
            match segments[..n_seg].iter().find(|s| s.0 == *vdt) {
                Some(s) => *act_off = s.1,
                None => {
                    let len = *act_row * n_tokens;
                    segments[n_seg] = (*vdt, total, len);
                    *act_off = total;
                    n_seg += 1;
                    // Keep segments 8-byte aligned.
                    total += len.next_multiple_of(8);
                }
            }
        }
    }
    with_act_scratch(total / 8, |scratch| {
        let act = bytemuck::cast_slice_mut::<u64, u8>(scratch);
        for &(vdt, off, len) in &segments[..n_seg] {
            quantize_activations(vdt, x, &mut act[off..off + len])?;
        }
        let act: &[u8] = act;
        let jobs: &[Job<'_>] = jobs;
        for_tasks(jobs, n_tokens, |j, rows| {
            run_rows(&jobs[j], rows, x, act, n_tokens)
        });
        Ok(())
    })
}

/// Splits the rows of all jobs into tasks and runs them, in parallel when
/// the work is worth it. Row ranges are whole tiles.
fn for_tasks(jobs: &[Job<'_>], n_tokens: usize, task: impl Fn(usize, Range<usize>) + Sync) {
    let work: usize = jobs
        .iter()
        .map(|j| j.w.rows.saturating_mul(j.work_per_row(n_tokens)))
        .sum();
    let threads = rayon::current_num_threads();
    if threads <= 1 || work < SERIAL_WORK {
        for (j, job) in jobs.iter().enumerate() {
            task(j, 0..job.w.rows);
        }
        return;
    }
    // Enough tasks to balance, none so small that scheduling dominates.
    // Each job gets at least one task and rounding adds at most one more,
    // so `MAX_TASKS / 2 + MAX_MANY` tasks always fit the list.
    let n_tasks = (threads * TASKS_PER_THREAD)
        .min((work / (SERIAL_WORK / 2)).max(2))
        .min(MAX_TASKS / 2);
    let mut list = [(0usize, 0usize, 0usize); MAX_TASKS];
    let mut n = 0;
    for (j, job) in jobs.iter().enumerate() {
        let rows = job.w.rows;
        let share = rows.saturating_mul(job.work_per_row(n_tokens)) as f64 / work as f64;
        let parts = ((share * n_tasks as f64).round() as usize).clamp(1, rows.max(1));
        // Multiples of 4 rows: whole tiles, and tasks off each other's lines.
        let per = rows
            .div_ceil(parts)
            .next_multiple_of(4)
            .clamp(1, rows.max(1));
        let mut start = 0;
        while start < rows {
            let end = (start + per).min(rows);
            if n < MAX_TASKS {
                list[n] = (j, start, end);
                n += 1;
            } else {
                task(j, start..end); // unreachable by the count above; stays correct
            }
            start = end;
        }
    }
    list[..n]
        .par_iter()
        .for_each(|&(j, start, end)| task(j, start..end));
}

/// Most tasks one call is split into.
const MAX_TASKS: usize = 64;

/// Rows `rows` of one job, every token.
fn run_rows(job: &Job<'_>, rows: Range<usize>, x: &[f32], act: &[u8], n_tokens: usize) {
    match job.how {
        How::Dots {
            dots,
            vdt,
            act_row,
            act_off,
        } => {
            let act = if vdt == GgmlType::F32 {
                bytemuck::cast_slice(x)
            } else {
                &act[act_off..act_off + act_row * n_tokens]
            };
            dot_rows(job, rows, act, act_row, n_tokens, dots)
        }
        How::Dequant { deq, f32dot } => dequant_rows(job, rows, x, n_tokens, deq, f32dot),
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
            if let Some((f, shape)) = crate::quants::iquants::dot::tile_for(ty, level) {
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

/// Every (row, token) dot of `rows` with the activations already in
/// `vec_dot_type`, a block of weight rows against a block of tokens at a time.
fn dot_rows(
    job: &Job<'_>,
    range: Range<usize>,
    act: &[u8],
    act_row: usize,
    n_tokens: usize,
    dots: Dots,
) {
    let (w, row_bytes, optr) = (job.w, job.row_bytes, job.out);
    let (rows, cols) = (w.rows, w.cols);
    let tr = dots.tile_rows();
    let row_block = (ROW_BLOCK_BYTES / row_bytes.max(1))
        .clamp(1, 64)
        .next_multiple_of(tr);
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
                            // SAFETY: the tile reads rows r..r+nr of `w` and
                            // t..t+nt of `act` (whole blocks, lengths checked)
                            // and writes (t.., r..) of `out`, which this task
                            // alone owns.
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
}

/// The fallback for types without `vec_dot`: dequantize each weight row once
/// and dot it (f32) with every activation row.
fn dequant_rows(
    job: &Job<'_>,
    range: Range<usize>,
    x: &[f32],
    n_tokens: usize,
    deq: DequantFn,
    f32dot: VecDotFn,
) {
    let (w, row_bytes, optr) = (job.w, job.row_bytes, job.out);
    let (rows, cols) = (w.rows, w.cols);
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
                // SAFETY: as in `dot_rows`.
                unsafe { *optr.at(t * rows + r) = f32dot(cols, wb, xt) };
            }
        }
    });
}
