//! The subcommands, one module each, and what they share: loading a model
//! with metadata overrides and setting up the thread pool.

pub mod bench;
pub mod imatrix;
pub mod inspect;
pub mod quality;
pub mod quantize;
pub mod run;
pub mod synth;
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
    /// Memory for weights, e.g. 6GiB or 512MiB (KiB/MiB/GiB binary, KB/MB/GB
    /// decimal). A larger model is paged from disk: non-expert weights stay
    /// resident, routed experts are cached by use, layers that do not fit
    /// stream. Default: 75% of available memory (or of the cgroup limit's
    /// headroom, if lower) less the KV cache; "none": map the whole file.
    #[arg(long, value_name = "SIZE")]
    pub mem_budget: Option<String>,
    /// How the KV cache stores keys and values: f32, f16, q8_0 or q4_0
    /// (dense models); f32, f16 or q8_0 for DeepSeek V4's compressed cache
    /// (DeepSeek V2/V3's latent cache stays f32). Default: f32, f16 for V4.
    #[arg(long, value_name = "TYPE")]
    pub kv_type: Option<dwarfstar_model::KvType>,
}

/// A model with its tokenizer, ready to run.
pub struct Loaded {
    pub model: Model,
    pub tokenizer: Tokenizer,
}

impl ModelArgs {
    /// Sets up the thread pool, opens the file, applies overrides, binds
    /// the model, holds its weights within the memory budget and builds
    /// its tokenizer.
    /// `kv_positions` is the context the caller will hold: the default
    /// memory budget leaves room for its KV cache (None: the model's
    /// training context, at most 8192).
    pub fn load_for(&self, kv_positions: Option<usize>) -> Result<Loaded> {
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
        if let Some(ty) = self.kv_type {
            model
                .set_kv_type(ty)
                .with_context(|| format!("--kv-type {ty}"))?;
        }
        let positions = kv_positions.unwrap_or_else(|| model.n_ctx_train().min(8192));
        apply_mem_budget(&mut model, self.mem_budget.as_deref(), positions)?;
        let tokenizer = load_tokenizer(&file, &self.model)?;
        Ok(Loaded { model, tokenizer })
    }
}

pub fn load_tokenizer(file: &GgufFile, path: &Path) -> Result<Tokenizer> {
    let spec = TokenizerSpec::from_gguf(file)
        .with_context(|| format!("reading the tokenizer of {}", path.display()))?;
    Ok(Tokenizer::new(spec)?)
}

/// Holds `model`'s weights within `--mem-budget` (`flag`), or by default
/// within a share of available memory less the KV cache of `kv_positions`
/// positions. `DWARFSTAR_IO=buffered` reads through the page cache (with
/// `posix_fadvise(DONTNEED)`) instead of `O_DIRECT`;
/// `DWARFSTAR_IO_THREADS` sets the reader threads (default 2).
pub fn apply_mem_budget(model: &mut Model, flag: Option<&str>, kv_positions: usize) -> Result<()> {
    use dwarfstar_model::store::{self, format_size, IoMode, StoreConfig};
    let budget = match flag.map(str::trim) {
        Some("none") => return Ok(()),
        Some(s) => store::parse_size(s).map_err(|e| anyhow::anyhow!("--mem-budget {e}"))?,
        None => {
            let kv = (model.kv_bytes_per_token() * kv_positions) as u64;
            match store::default_budget(kv) {
                Some(b) => b,
                None => return Ok(()),
            }
        }
    };
    let mut cfg = StoreConfig::new(budget);
    if std::env::var("DWARFSTAR_IO").is_ok_and(|v| v == "buffered") {
        cfg.io_mode = IoMode::Buffered;
    }
    if let Some(n) = std::env::var("DWARFSTAR_IO_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.io_threads = n;
    }
    let weights = model.weight_bytes();
    model.set_memory_budget(&cfg)?;
    let s = model.store_stats();
    if s.paged {
        eprintln!(
            "weights ({}) paged within a budget of {}: {} resident, {} expert cache, {} streamed layers, {} reads",
            format_size(weights),
            format_size(budget),
            format_size(s.pinned_bytes),
            format_size(s.expert_cache_bytes),
            s.streamed_layers,
            s.io_mode,
        );
    }
    Ok(())
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
