//! DwarfStar's model layer: everything between a GGUF file and logits.
//!
//! - [`arch`]: the dense architecture table (tensor names, per-arch choices);
//! - [`architecture`]: the interface every architecture implements (its
//!   state, a forward over any layer range, its expert hook); [`Model`] is
//!   the registry that picks one;
//! - [`hparams`]: hyper-parameters from metadata, checked;
//! - [`weights`]: tensors bound to roles, shapes checked;
//! - [`dense`]: the forward pass of dense transformers over a layer range;
//! - [`kv`]: KV caches; [`kv_file`] saves and restores them, [`kv_store`]
//!   keeps a directory of them keyed by token prefix;
//! - [`sampler`]: logits to tokens; [`draft`]: draft tokens for speculative
//!   decoding;
//! - [`generate`]: the prompt → tokens loop with stop conditions;
//! - [`stage`]: a node's share of a split model (layer ranges, remote experts);
//! - [`store`]: where weight bytes come from, within a memory budget;
//! - [`synth`]: synthetic MoE GGUFs with realistic shapes, for tests.
//!
//! The model code never assumes it holds every layer: a caller may run any
//! contiguous range, which is how a pipeline stage runs its share.

pub mod arch;
pub mod architecture;
mod attn_tiled;
mod batch;
pub mod deepseek2;
pub mod deepseek4;
pub mod dense;
mod dense_arch;
pub mod draft;
pub mod draft_mtp;
pub mod error;
pub mod generate;

pub mod hparams;
pub mod kv;
mod kv_attn;
pub mod kv_file;
pub mod kv_store;
pub mod observe;
pub mod sampler;
pub mod shape;
pub mod stage;
pub mod store;
pub mod synth;
pub mod weights;

use std::path::Path;
use std::sync::Arc;

use dwarfstar_gguf::GgufFile;

pub use architecture::{Architecture, Capabilities, SeqCache};
pub use dense::{DenseModel, SeqBatch};
pub use error::{ModelError, Result};
pub use generate::Forward;
pub use kv::{KvCache, KvType};
pub use observe::{MatIndex, MatmulObserver};
pub use sampler::{Sampler, SamplerConfig, Verdict};
pub use stage::{ExpertBatch, ExpertDispatch, ExpertTicket};

/// A loaded model of any supported architecture: the registry of
/// [`Architecture`] implementations, picked by `general.architecture`.
pub enum Model {
    Dense(DenseModel),
    Deepseek2(deepseek2::Deepseek2Model),
    Deepseek4(Box<deepseek4::Deepseek4Model>),
}

/// The per-sequence state a model keeps between calls, one variant per
/// architecture (each a [`SeqCache`]).
#[derive(Clone, Debug)]
pub enum SeqState {
    Dense(KvCache),
    Mla(deepseek2::MlaCache),
    Ds4(deepseek4::Ds4Cache),
}

impl SeqState {
    /// The architecture's state behind the generic interface.
    pub fn cache(&self) -> &dyn SeqCache {
        match self {
            SeqState::Dense(kv) => kv,
            SeqState::Mla(c) => c,
            SeqState::Ds4(c) => c,
        }
    }

    pub fn cache_mut(&mut self) -> &mut dyn SeqCache {
        match self {
            SeqState::Dense(kv) => kv,
            SeqState::Mla(c) => c,
            SeqState::Ds4(c) => c,
        }
    }

    /// Positions in the sequence (held, or pending recomputation).
    pub fn len(&self) -> usize {
        self.cache().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Positions whose state is held: the next layer call starts here.
    pub fn held(&self) -> usize {
        self.cache().held()
    }

    /// Tokens a truncation kept whose state must be recomputed first (see
    /// [`SeqCache::pending`]).
    pub fn pending(&self) -> &[u32] {
        self.cache().pending()
    }

    /// Forgets every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.cache_mut().truncate(len)
    }

    /// Positions whose state a truncation to `len` keeps (see
    /// [`SeqCache::kept_by_truncate`]).
    pub fn kept_by_truncate(&self, len: usize) -> usize {
        self.cache().kept_by_truncate(len)
    }

    /// Bytes of cache held.
    pub fn bytes(&self) -> usize {
        self.cache().bytes()
    }
}

impl Model {
    /// Opens `path` with metadata overrides applied before anything reads it.
    pub fn open(
        path: &Path,
        overrides: &[(String, dwarfstar_gguf::Value)],
    ) -> Result<(Model, Arc<GgufFile>)> {
        let mut file = GgufFile::open(path)?;
        for (k, v) in overrides {
            file.set(k, v.clone());
        }
        let file = Arc::new(file);
        Ok((Model::load(file.clone())?, file))
    }

    /// Attaches the MTP block of another GGUF file (ds4 ships DeepSeek V4's
    /// as a file of its own, `mtp.0.*`); an error for a model of another
    /// architecture or a file that holds no such block.
    pub fn attach_mtp_file(&mut self, path: &Path) -> Result<()> {
        let Model::Deepseek4(m) = self else {
            return Err(ModelError::Invalid(format!(
                "{}: only DeepSeek V4 models draft with an MTP block, this one is {}",
                path.display(),
                self.arch()
            )));
        };
        m.attach_mtp(Arc::new(GgufFile::open(path)?))
    }

    /// Whether the model has an MTP block to draft with (DeepSeek V4).
    pub fn has_mtp(&self) -> bool {
        matches!(self, Model::Deepseek4(m) if m.has_mtp())
    }

    /// Binds the architecture that `general.architecture` names.
    pub fn load(file: Arc<GgufFile>) -> Result<Model> {
        let arch = file.get_str("general.architecture")?.to_string();
        if arch::dense_arch(&arch).is_some() {
            return Ok(Model::Dense(DenseModel::load(file)?));
        }
        if arch == deepseek2::hparams::ARCH {
            return Ok(Model::Deepseek2(deepseek2::Deepseek2Model::load(file)?));
        }
        if arch == deepseek4::hparams::ARCH {
            let m = deepseek4::Deepseek4Model::load(file)?;
            return Ok(Model::Deepseek4(Box::new(m)));
        }
        Err(ModelError::UnsupportedArch(arch))
    }

    /// The architecture's implementation.
    pub fn architecture(&self) -> &dyn Architecture {
        match self {
            Model::Dense(m) => m,
            Model::Deepseek2(m) => m,
            Model::Deepseek4(m) => &**m,
        }
    }

    pub fn architecture_mut(&mut self) -> &mut dyn Architecture {
        match self {
            Model::Dense(m) => m,
            Model::Deepseek2(m) => m,
            Model::Deepseek4(m) => &mut **m,
        }
    }

    pub fn arch(&self) -> &str {
        self.architecture().name()
    }

    /// What this model's architecture supports.
    pub fn capabilities(&self) -> Capabilities {
        self.architecture().capabilities()
    }

    /// Reproduce llama.cpp's x86 summation orders (repacked kernels, its
    /// vector `exp`) so logits agree to the last bits; slower.
    pub fn set_llama_exact(&mut self, on: bool) {
        self.architecture_mut().set_llama_exact(on)
    }

    /// How new KV caches store their rows: any type for dense caches;
    /// f32, f16 or q8_0 for DeepSeek V4's compressed entries and indexer
    /// keys (f16 unless set). DeepSeek V2/V3's latent cache stays f32 (it
    /// is already a small fraction of a dense cache): any other type is an
    /// error for it.
    pub fn set_kv_type(&mut self, ty: KvType) -> Result<()> {
        self.architecture_mut().set_kv_type(ty)
    }

    /// The type new KV caches store rows as.
    pub fn kv_type(&self) -> KvType {
        self.architecture().kv_type()
    }

    /// Holds the weights within `cfg.budget` bytes: the mapped file when
    /// they fit, else paged (see [`store`]): pinned non-expert weights,
    /// streamed layers, cached routed experts. Outputs are bit-identical
    /// either way.
    pub fn set_memory_budget(&mut self, cfg: &store::StoreConfig) -> Result<()> {
        self.architecture_mut().set_memory_budget(cfg)
    }

    /// Bytes of the weights the model reads (what a budget is held to).
    pub fn weight_bytes(&self) -> u64 {
        self.architecture().weight_bytes()
    }

    /// What the weight store did and holds (expert hit rate, bytes read,
    /// I/O stalls, resident bytes).
    pub fn store_stats(&self) -> store::StoreStats {
        self.architecture().store_stats()
    }

    /// Shows the input of every weight product to `observer` (None: stop).
    pub fn set_observer(&mut self, observer: Option<Arc<dyn MatmulObserver>>) {
        self.architecture_mut().set_observer(observer)
    }

    pub fn n_vocab(&self) -> usize {
        self.architecture().n_vocab()
    }

    pub fn n_layer(&self) -> usize {
        self.architecture().n_layer()
    }

    /// The context length the model was trained for.
    pub fn n_ctx_train(&self) -> usize {
        self.architecture().n_ctx_train()
    }

    /// KV bytes one position costs.
    pub fn kv_bytes_per_token(&self) -> usize {
        self.architecture().kv_bytes_per_token()
    }

    /// A fresh sequence state able to hold `capacity` positions.
    pub fn new_state(&self, capacity: usize) -> SeqState {
        self.architecture().new_state(capacity)
    }

    /// Runs `tokens` after what `state` holds; returns the last token's
    /// logits, or every token's (`tokens.len() × n_vocab`) when `all_logits`.
    pub fn forward(
        &self,
        tokens: &[u32],
        state: &mut SeqState,
        all_logits: bool,
    ) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(ModelError::Invalid("no tokens to run".into()));
        }
        let mut out = self.forward_batch(&mut [(tokens, state, all_logits)])?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Runs several sequences in one pass (continuous batching): each item
    /// is `(tokens, state, all_logits)`. Returns each sequence's logits as
    /// [`Model::forward`] would. On an error no state is left half written
    /// ([`SeqCache::abort_step`]).
    pub fn forward_batch(
        &self,
        items: &mut [(&[u32], &mut SeqState, bool)],
    ) -> Result<Vec<Vec<f32>>> {
        let r = self.architecture().forward_batch(items);
        if r.is_err() {
            for (_, s, _) in items.iter_mut() {
                s.cache_mut().abort_step();
            }
        }
        r
    }
}
