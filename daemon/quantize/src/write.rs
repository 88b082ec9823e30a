//! Writing the quantized file, streamed tensor by tensor in bounded memory.
//!
//! The source stays memory-mapped; each tensor is converted in slabs of
//! rows (never crossing an expert's boundary, so each slab has one
//! importance row), each slab split into tasks of about 64 Ki values that
//! rayon's pool dequantizes and quantizes in parallel, and written out
//! before the next slab is read. Memory beyond the map: one slab's output
//! (at most [`SLAB_VALUES`] values' worth) and each worker's task buffer.
//! Tensors whose type does not change are copied byte for byte.
//!
//! The file is written next to its destination as `NAME.partial` and
//! renamed when complete. Metadata: the source's, with
//! `general.file_type` and `general.quantization_version` set, split keys
//! dropped, llama-quantize's `quantize.imatrix.*` provenance keys (when an
//! imatrix was used) and `dwarfstar.quantize.recipe`.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use dwarfstar_gguf::{GgufFile, GgufWriter, Metadata, Value};
use dwarfstar_kernels::dequantize_row;
use rayon::prelude::*;

use crate::error::{io_err, QuantizeError, Result};
use crate::imatrix::Imatrix;
use crate::kernel::quantize_rows;
use crate::plan::{Plan, TensorPlan};

/// Values per slab (the unit read, converted and written at once).
pub const SLAB_VALUES: usize = 1 << 23;
/// Values per parallel task.
const TASK_VALUES: usize = 1 << 16;
/// Bytes per piece when copying a tensor unchanged.
const COPY_BYTES: usize = 64 << 20;

/// Where the conversion is; all methods have empty defaults.
pub trait Progress: Sync {
    /// Before the first tensor: the source bytes that will be read.
    fn begin(&self, _total_src_bytes: u64) {}
    /// Tensor `index` starts.
    fn tensor(&self, _index: usize, _t: &TensorPlan) {}
    /// `src_bytes` more of the source were converted.
    fn advance(&self, _src_bytes: u64) {}
}

/// No progress output.
pub struct NoProgress;
impl Progress for NoProgress {}

/// The imatrix used, and the path it came from (for provenance).
#[derive(Clone, Copy)]
pub struct ImatrixSource<'a> {
    pub path: &'a str,
    pub data: &'a Imatrix,
}

/// What was written.
#[derive(Clone, Debug)]
pub struct WriteReport {
    pub path: PathBuf,
    pub bytes: u64,
    pub seconds: f64,
}

/// The output file's metadata.
pub fn output_metadata(
    file: &GgufFile,
    plan: &Plan,
    imatrix: Option<ImatrixSource<'_>>,
) -> Metadata {
    let mut m = file.metadata().clone();
    for k in ["split.no", "split.count", "split.tensors.count"] {
        m.remove(k);
    }
    let stale: Vec<String> = m
        .iter()
        .map(|(k, _)| k.to_string())
        .filter(|k| k.starts_with("quantize.imatrix."))
        .collect();
    for k in stale {
        m.remove(&k);
    }
    m.set("general.quantization_version", Value::U32(2));
    m.set("general.file_type", Value::U32(plan.file_type));
    if let Some(im) = imatrix {
        m.set("quantize.imatrix.file", Value::String(im.path.to_string()));
        if let Some(d) = im.data.datasets.first() {
            m.set("quantize.imatrix.dataset", Value::String(d.clone()));
        }
        let used = plan.tensors.iter().filter(|t| t.weighted).count();
        m.set("quantize.imatrix.entries_count", Value::U32(used as u32));
        if im.data.chunk_count > 0 {
            m.set(
                "quantize.imatrix.chunks_count",
                Value::U32(im.data.chunk_count),
            );
        }
    }
    m.set(
        "dwarfstar.quantize.recipe",
        Value::String(plan.recipe.name()),
    );
    m
}

/// Converts `file` as `plan` says and writes it to `out`.
pub fn write(
    file: &GgufFile,
    plan: &Plan,
    imatrix: Option<ImatrixSource<'_>>,
    out: &Path,
    progress: &dyn Progress,
) -> Result<WriteReport> {
    let t0 = Instant::now();
    let mut w = GgufWriter::new(file.alignment())?;
    w.add_metadata(&output_metadata(file, plan, imatrix))?;
    for t in &plan.tensors {
        w.add_tensor_info(t.name.clone(), &t.dims, t.dst)?;
    }
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let f = std::fs::File::create(&partial).map_err(io_err(&partial))?;
    let mut sink = BufWriter::with_capacity(8 << 20, f);
    let wrap = |e: QuantizeError| match e {
        QuantizeError::Gguf(dwarfstar_gguf::GgufError::Write(source)) => QuantizeError::Io {
            path: partial.clone(),
            source,
        },
        e => e,
    };
    let total: u64 = plan
        .tensors
        .iter()
        .filter_map(|t| file.tensor(&t.name))
        .map(|t| t.n_bytes)
        .sum();
    progress.begin(total);
    let run = (|| -> Result<()> {
        w.write_header(&mut sink)?;
        for (i, t) in plan.tensors.iter().enumerate() {
            progress.tensor(i, t);
            let weights = match (imatrix, t.weighted) {
                (Some(im), true) => im.data.weights(&t.name),
                _ => None,
            };
            convert(file, t, weights.as_deref(), &mut w, &mut sink, progress)?;
        }
        w.finish(&mut sink)?;
        sink.flush().map_err(io_err(&partial))?;
        Ok(())
    })();
    if let Err(e) = run {
        drop(sink);
        let _ = std::fs::remove_file(&partial);
        return Err(wrap(e));
    }
    drop(sink);
    std::fs::rename(&partial, out).map_err(io_err(out))?;
    let bytes = std::fs::metadata(out).map_err(io_err(out))?.len();
    Ok(WriteReport {
        path: out.to_path_buf(),
        bytes,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn convert(
    file: &GgufFile,
    t: &TensorPlan,
    weights: Option<&[f32]>,
    w: &mut GgufWriter,
    sink: &mut impl Write,
    progress: &dyn Progress,
) -> Result<()> {
    let info = file.tensor(&t.name).ok_or_else(|| QuantizeError::Tensor {
        name: t.name.clone(),
        msg: "not in the source file".into(),
    })?;
    let src = file.tensor_data(info);
    if t.is_copy() {
        for piece in src.chunks(COPY_BYTES) {
            w.write_tensor_data(sink, &t.name, piece)?;
            progress.advance(piece.len() as u64);
        }
        if src.is_empty() {
            w.write_tensor_data(sink, &t.name, &[])?;
        }
        return Ok(());
    }
    let cols = t.cols() as usize;
    let rows = t.rows() as usize;
    let per_mat = (t.dims.get(1).copied().unwrap_or(1) as usize).max(1);
    let bad_shape = |ty| QuantizeError::Tensor {
        name: t.name.clone(),
        msg: format!("rows of {cols} are not whole {ty} blocks"),
    };
    let srb = t.src.row_bytes(cols).ok_or_else(|| bad_shape(t.src))?;
    let drb = t.dst.row_bytes(cols).ok_or_else(|| bad_shape(t.dst))?;
    let slab_rows = (SLAB_VALUES / cols.max(1)).max(1);
    let task_rows = (TASK_VALUES / cols.max(1)).max(1);
    let mut buf = Vec::new();
    let mut r = 0;
    while r < rows {
        let mat = r / per_mat;
        let end = (r + slab_rows).min(rows).min((mat + 1) * per_mat);
        let wrow = weights.map(|w| &w[mat * cols..(mat + 1) * cols]);
        buf.clear();
        buf.resize((end - r) * drb, 0u8);
        buf.par_chunks_mut(task_rows * drb)
            .enumerate()
            .try_for_each(|(k, out)| -> Result<()> {
                let r0 = r + k * task_rows;
                let n = out.len() / drb;
                let mut x = vec![0f32; n * cols];
                dequantize_row(t.src, &src[r0 * srb..(r0 + n) * srb], &mut x)?;
                if let Some(i) = x.iter().position(|v| !v.is_finite()) {
                    return Err(QuantizeError::Tensor {
                        name: t.name.clone(),
                        msg: format!("value {} is {}", r0 * cols + i, x[i]),
                    });
                }
                quantize_rows(t.dst, &x, cols, wrow, out)?;
                Ok(())
            })?;
        w.write_tensor_data(sink, &t.name, &buf)?;
        progress.advance(((end - r) * srb) as u64);
        r = end;
    }
    if rows == 0 {
        w.write_tensor_data(sink, &t.name, &[])?;
    }
    Ok(())
}

/// Checks a written file against its plan: it opens (which validates
/// offsets, alignment and sizes against the file), every tensor is there
/// with the planned type, shape and byte size, in the planned order.
pub fn check_written(path: &Path, plan: &Plan) -> Result<GgufFile> {
    let f = GgufFile::open(path)?;
    let mismatch = |name: &str, msg: String| QuantizeError::Tensor {
        name: name.to_string(),
        msg,
    };
    if f.tensors().len() != plan.tensors.len() {
        return Err(QuantizeError::Invalid(format!(
            "{} has {} tensors, the plan {}",
            path.display(),
            f.tensors().len(),
            plan.tensors.len()
        )));
    }
    for (got, want) in f.tensors().iter().zip(&plan.tensors) {
        if got.name != want.name || got.ty != want.dst || got.dims != want.dims {
            return Err(mismatch(
                &want.name,
                format!("written as {} {} {:?}", got.name, got.ty, got.dims),
            ));
        }
        if got.n_bytes != want.dst_bytes() || got.offset % f.alignment() != 0 {
            return Err(mismatch(
                &want.name,
                format!("{} bytes at offset {}", got.n_bytes, got.offset),
            ));
        }
    }
    Ok(f)
}
