//! The subcommands, one module each, and what they share: loading a model
//! with metadata overrides and setting up the thread pool.

pub mod bench;
pub mod imatrix;
pub mod inspect;
pub mod quality;
pub mod quantize;
pub mod run;
pub mod tokenize;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use dwarfstar_gguf::GgufFile;
use dwarfstar_model::Model;
use dwarfstar_tokenizer::{Tokenizer, TokenizerSpec};

/// Options every model-loading command takes.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Path to a GGUF model file.
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// Override a metadata value: KEY=TYPE:VALUE with TYPE int, float, bool
    /// or str (as llama.cpp's flag of the same name). Repeatable.
    #[arg(long = "override-kv", value_name = "KEY=TYPE:VALUE")]
    pub override_kv: Vec<String>,
    /// Worker threads for the kernels (default: all cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Reproduce llama.cpp's x86 summation orders (its repacked Q4_0/Q4_K/
    /// Q2_K kernels), so logits agree with it to the last bits. Slower.
    #[arg(long)]
    pub llama_exact: bool,
}

/// A model with its tokenizer, ready to run.
pub struct Loaded {
    pub model: Model,
    pub tokenizer: Tokenizer,
}

impl ModelArgs {
    /// Sets up the thread pool, opens the file, applies overrides, binds
    /// the model and builds its tokenizer.
    pub fn load(&self) -> Result<Loaded> {
        init_threads(self.threads)?;
        let overrides = self
            .override_kv
            .iter()
            .map(|s| {
                dwarfstar_gguf::parse_override(s).with_context(|| format!("--override-kv {s}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let (mut model, file) = Model::open(&self.model, &overrides)
            .with_context(|| format!("loading {}", self.model.display()))?;
        model.set_llama_exact(self.llama_exact);
        let tokenizer = load_tokenizer(&file, &self.model)?;
        Ok(Loaded { model, tokenizer })
    }
}

pub fn load_tokenizer(file: &GgufFile, path: &Path) -> Result<Tokenizer> {
    let spec = TokenizerSpec::from_gguf(file)
        .with_context(|| format!("reading the tokenizer of {}", path.display()))?;
    Ok(Tokenizer::new(spec)?)
}

/// Installs the global rayon pool with `threads` workers (once).
pub fn init_threads(threads: Option<usize>) -> Result<()> {
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n.max(1))
        .build_global();
    Ok(())
}

/// Parses `1,2,3` into token ids.
pub fn parse_ids(s: &str) -> Result<Vec<u32>> {
    s.split(',')
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .with_context(|| format!("bad token id {t:?}"))
        })
        .collect()
}
