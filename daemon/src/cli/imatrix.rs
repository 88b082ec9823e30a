//! `dwarfstar imatrix MODEL --text FILE`: runs the model over calibration
//! text and writes the importance matrix in llama.cpp's GGUF format (or its
//! legacy `.dat` with `--output-format dat`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use dwarfstar_model::Model;
use dwarfstar_quantize::collect::{collect, CollectOptions};

use super::load_tokenizer;

#[derive(Args, Debug)]
pub struct ImatrixArgs {
    /// The model to run (GGUF).
    pub model: PathBuf,
    /// Calibration text file.
    #[arg(long, short = 'f')]
    pub text: PathBuf,
    /// Output file.
    #[arg(long, short = 'o', default_value = "imatrix.gguf")]
    pub output: PathBuf,
    /// Tokens per chunk (llama-imatrix's -c; each chunk runs from an empty
    /// cache).
    #[arg(long, short = 'c', default_value_t = 512)]
    pub chunk: usize,
    /// Use at most this many chunks.
    #[arg(long)]
    pub chunks: Option<usize>,
    /// gguf (llama.cpp's current format) or dat (legacy).
    #[arg(long, default_value = "gguf")]
    pub output_format: String,
    /// Also collect output.weight.
    #[arg(long)]
    pub process_output: bool,
    /// Worker threads (default: all cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
}

pub fn run(a: ImatrixArgs) -> Result<()> {
    let legacy = match a.output_format.as_str() {
        "gguf" => false,
        "dat" => true,
        f => bail!("--output-format {f}: use gguf or dat"),
    };
    let (mut model, file) =
        Model::open(&a.model, &[]).with_context(|| format!("loading {}", a.model.display()))?;
    let tok = load_tokenizer(&file, &a.model)?;
    let text = std::fs::read_to_string(&a.text)
        .with_context(|| format!("reading {}", a.text.display()))?;
    let tokens = tok.encode(&text, true, false)?;
    let n_chunks = a.chunks.map_or(tokens.len() / a.chunk.max(1), |c| {
        c.min(tokens.len() / a.chunk.max(1))
    });
    eprintln!(
        "{}: {} tokens, {n_chunks} chunks of {}",
        a.text.display(),
        tokens.len(),
        a.chunk
    );
    let opts = CollectOptions {
        chunk: a.chunk,
        max_chunks: a.chunks,
        bos: tok.add_bos().then(|| tok.bos_id()).flatten(),
        process_output: a.process_output,
        dataset: a.text.display().to_string(),
    };
    let t0 = std::time::Instant::now();
    let m = collect(&mut model, &tokens, &opts, |c| {
        eprintln!(
            "[{}/{}] {:.2}s, perplexity so far {:.4}",
            c.index + 1,
            c.of,
            c.seconds,
            c.ppl
        );
    })?;
    m.write(&a.output, legacy)?;
    let experts = m.entries.values().filter(|e| e.counts.len() > 1).count();
    eprintln!(
        "wrote {}: {} entries ({experts} with per-expert counts) from {} chunks in {:.1}s",
        a.output.display(),
        m.entries.len(),
        m.chunk_count,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
