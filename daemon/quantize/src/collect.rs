//! Collecting an importance matrix: a [`MatmulObserver`] that sums each
//! weight input's squared activations per column, as llama-imatrix does,
//! and the loop that runs a model over calibration text in chunks.
//!
//! As llama-imatrix: only `blk.*` weights are collected (plus
//! `output.weight` with `process_output`); routed experts keep sums and a
//! token count per expert (so the counts are the routing frequencies);
//! 3-D weights every token uses (MLA's per-head `attn_k_b`/`attn_v_b`) keep
//! sums per matrix and one count; each chunk starts from an empty cache,
//! its first token replaced by BOS when the model adds one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dwarfstar_model::{MatIndex, MatmulObserver, Model};

use crate::error::{QuantizeError, Result};
use crate::imatrix::{Entry, Imatrix};

#[derive(Default)]
struct Acc {
    sums: Vec<f32>,
    counts: Vec<u64>,
}

/// Accumulates squared activations per weight tensor.
#[derive(Default)]
pub struct Collector {
    process_output: bool,
    stats: Mutex<HashMap<String, Acc>>,
    /// The first tensor whose sums stopped being finite.
    non_finite: Mutex<Option<String>>,
}

impl Collector {
    /// A collector; `process_output` also collects `output.weight`.
    pub fn new(process_output: bool) -> Collector {
        Collector {
            process_output,
            ..Default::default()
        }
    }

    /// Takes the sums gathered so far as an imatrix.
    pub fn to_imatrix(&self, datasets: Vec<String>, chunk_count: u32, chunk_size: u32) -> Imatrix {
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let entries = stats
            .iter()
            .map(|(k, a)| {
                let e = Entry {
                    sums: a.sums.clone(),
                    counts: a.counts.clone(),
                };
                (k.clone(), e)
            })
            .collect();
        Imatrix {
            entries,
            datasets,
            chunk_count,
            chunk_size,
            legacy: false,
        }
    }

    fn check_finite(&self) -> Result<()> {
        match self
            .non_finite
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            Some(name) => Err(QuantizeError::Tensor {
                name,
                msg: "non-finite activations while collecting the imatrix".into(),
            }),
            None => Ok(()),
        }
    }
}

impl MatmulObserver for Collector {
    fn observe(&self, tensor: &str, rows: &[f32], n_cols: usize, mat: MatIndex) {
        if n_cols == 0
            || !(tensor.starts_with("blk.") || self.process_output && tensor == "output.weight")
        {
            return;
        }
        let n = rows.len() / n_cols;
        let (id, of, per_expert) = match mat {
            MatIndex::Whole => (0, 1, false),
            MatIndex::Expert { id, of } => (id as usize, of as usize, true),
            MatIndex::Slice { id, of } => (id as usize, of as usize, false),
        };
        if id >= of {
            return;
        }
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let a = stats.entry(tensor.to_string()).or_default();
        if a.sums.len() != n_cols * of {
            // First sight (a tensor always comes with the same shape).
            a.sums = vec![0.0; n_cols * of];
            a.counts = vec![0; if per_expert { of } else { 1 }];
        }
        let acc = &mut a.sums[id * n_cols..(id + 1) * n_cols];
        for row in rows.chunks_exact(n_cols) {
            for (s, &x) in acc.iter_mut().zip(row) {
                *s += x * x;
            }
        }
        if per_expert {
            a.counts[id] += n as u64;
        } else if id == 0 {
            // A 3-D weight is seen once per matrix; count its tokens once.
            a.counts[0] += n as u64;
        }
        if !acc.iter().all(|v| v.is_finite()) {
            let mut nf = self.non_finite.lock().unwrap_or_else(|e| e.into_inner());
            nf.get_or_insert_with(|| tensor.to_string());
        }
    }
}

/// How to run the calibration text.
#[derive(Clone, Debug)]
pub struct CollectOptions {
    /// Tokens per chunk (llama-imatrix's context size).
    pub chunk: usize,
    /// At most this many chunks.
    pub max_chunks: Option<usize>,
    /// Put BOS first in each chunk (when the model's tokenizer adds one).
    pub bos: Option<u32>,
    /// Also collect `output.weight`.
    pub process_output: bool,
    /// Recorded as `imatrix.datasets`.
    pub dataset: String,
}

/// What one chunk did.
#[derive(Clone, Copy, Debug)]
pub struct ChunkDone {
    pub index: usize,
    pub of: usize,
    /// Perplexity so far (second half of each chunk, as llama-imatrix).
    pub ppl: f64,
    pub seconds: f64,
}

/// Runs `model` over `tokens` in chunks and returns the imatrix collected.
/// The model's observer is set for the run and cleared afterwards.
pub fn collect(
    model: &mut Model,
    tokens: &[u32],
    opts: &CollectOptions,
    mut on_chunk: impl FnMut(ChunkDone),
) -> Result<Imatrix> {
    let chunk = opts.chunk;
    if chunk < 2 {
        return Err(QuantizeError::Invalid(
            "chunks must hold at least 2 tokens".into(),
        ));
    }
    let mut n_chunks = tokens.len() / chunk;
    if let Some(m) = opts.max_chunks {
        n_chunks = n_chunks.min(m);
    }
    if n_chunks == 0 {
        return Err(QuantizeError::Invalid(format!(
            "the text has {} tokens, less than one chunk of {chunk}",
            tokens.len()
        )));
    }
    let collector = Arc::new(Collector::new(opts.process_output));
    model.set_observer(Some(collector.clone()));
    let run = run_chunks(model, tokens, opts, n_chunks, &collector, &mut on_chunk);
    model.set_observer(None);
    run?;
    Ok(collector.to_imatrix(vec![opts.dataset.clone()], n_chunks as u32, chunk as u32))
}

fn run_chunks(
    model: &Model,
    tokens: &[u32],
    opts: &CollectOptions,
    n_chunks: usize,
    collector: &Collector,
    on_chunk: &mut impl FnMut(ChunkDone),
) -> Result<()> {
    let chunk = opts.chunk;
    let n_vocab = model.n_vocab();
    let (mut nll, mut count) = (0f64, 0usize);
    for i in 0..n_chunks {
        let t0 = std::time::Instant::now();
        let mut ids = tokens[i * chunk..(i + 1) * chunk].to_vec();
        if let Some(b) = opts.bos {
            ids[0] = b;
        }
        let mut state = model.new_state(chunk);
        let logits = model.forward(&ids, &mut state, true)?;
        collector.check_finite()?;
        let orig = &tokens[i * chunk..(i + 1) * chunk];
        for j in chunk / 2..chunk - 1 {
            let row = &logits[j * n_vocab..(j + 1) * n_vocab];
            nll -= crate::quality::log_prob(row, orig[j + 1] as usize);
            count += 1;
        }
        on_chunk(ChunkDone {
            index: i,
            of: n_chunks,
            ppl: (nll / count.max(1) as f64).exp(),
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    Ok(())
}
