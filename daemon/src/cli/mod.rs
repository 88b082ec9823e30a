//! The subcommands, one module each, and what they share: loading a model
//! with metadata overrides and setting up the thread pool.

pub mod bench;
pub mod bench_spec;
pub mod imatrix;
pub mod inspect;
pub mod plan;
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
    /// headroom, if lower) less the KV cache the context needs (at most a
    /// third of that share); "none": map the whole file.
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
    /// memory budget leaves room for its KV cache (None: [`DEFAULT_CTX`],
    /// or the model's training context if shorter).
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
        let positions = kv_positions.unwrap_or_else(|| default_ctx(&model));
        let kv = (model.kv_bytes_per_token() as u64).saturating_mul(positions as u64);
        apply_mem_budget(&mut model, self.mem_budget.as_deref(), kv)?;
        let tokenizer = load_tokenizer(&file, &self.model)?;
        Ok(Loaded { model, tokenizer })
    }
}

/// The context a command holds unless told otherwise, as llama.cpp's
/// default: 4096 positions, or the model's training context if shorter.
/// KV memory grows with the positions a sequence uses, not with this.
pub const DEFAULT_CTX: usize = 4096;

/// [`DEFAULT_CTX`], or `model`'s training context if shorter.
pub fn default_ctx(model: &Model) -> usize {
    model.n_ctx_train().clamp(2, DEFAULT_CTX)
}

pub fn load_tokenizer(file: &GgufFile, path: &Path) -> Result<Tokenizer> {
    let spec = TokenizerSpec::from_gguf(file)
        .with_context(|| format!("reading the tokenizer of {}", path.display()))?;
    Ok(Tokenizer::new(spec)?)
}

/// What [`apply_mem_budget`] settled on.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemSplit {
    /// Bytes of KV cache the default budget left room for (None: no
    /// default budget was computed, KV is not bounded by it).
    pub kv: Option<u64>,
}

/// Holds `model`'s weights within `--mem-budget` (`flag`), or by default
/// within a share of available memory less the KV cache (`kv_wanted`
/// bytes, held to a part of that share: see [`store::default_split`]).
/// `DWARFSTAR_IO=buffered` reads through the page cache (with
/// `posix_fadvise(DONTNEED)`) instead of `O_DIRECT`;
/// `DWARFSTAR_IO_THREADS` sets the reader threads (default 2).
pub fn apply_mem_budget(model: &mut Model, flag: Option<&str>, kv_wanted: u64) -> Result<MemSplit> {
    use dwarfstar_model::store::{self, format_size, IoMode, StoreConfig, StoreError};
    let (budget, kv) = match flag.map(str::trim) {
        Some("none") => return Ok(MemSplit::default()),
        Some(s) => (
            store::parse_size(s).map_err(|e| anyhow::anyhow!("--mem-budget {e}"))?,
            None,
        ),
        None => match store::default_split(kv_wanted) {
            Some((w, kv)) => (w, Some(kv)),
            None => return Ok(MemSplit::default()),
        },
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
    match model.set_memory_budget(&cfg) {
        Ok(()) => {}
        Err(dwarfstar_model::ModelError::Store(StoreError::Budget { need, budget })) => {
            let how = if flag.is_some() {
                format!("pass --mem-budget {} or more", format_size(need))
            } else {
                format!(
                    "the default budget is 75% of the memory free to this process ({}) less the \
                     KV cache; raise the container's memory limit or free memory, or pass \
                     --mem-budget {} (or more) if the memory is there",
                    store::MemInfo::read()
                        .usable()
                        .map_or("unknown".into(), format_size),
                    format_size(need)
                )
            };
            anyhow::bail!(
                "memory budget of {} is too small for this model: paging it needs at least {}; {how}",
                format_size(budget),
                format_size(need)
            );
        }
        Err(e) => return Err(e.into()),
    }
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
    Ok(MemSplit { kv })
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
