//! DwarfStar's model layer: everything between a GGUF file and logits.
//!
//! - [`arch`]: the architecture registry (tensor names, per-arch choices);
//! - [`hparams`]: hyper-parameters from metadata, checked;
//! - [`weights`]: tensors bound to roles, shapes checked;
//! - [`dense`]: the forward pass of dense transformers over a layer range;
//! - [`kv`]: KV caches; [`kv_file`] saves and restores them, [`kv_store`]
//!   keeps a directory of them keyed by token prefix;
//! - [`sampler`]: logits to tokens;
//! - [`generate`]: the prompt → tokens loop with stop conditions;
//! - [`stage`]: a node's share of a split model (layer ranges, remote experts);
//! - [`store`]: where weight bytes come from, within a memory budget;
//! - [`synth`]: synthetic MoE GGUFs with realistic shapes, for tests.
//!
//! The model code never assumes it holds every layer: a caller may run any
//! contiguous range, which is how a pipeline stage runs its share.

pub mod arch;
mod batch;
pub mod deepseek2;
pub mod deepseek4;
pub mod dense;
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

pub use dense::{DenseModel, SeqBatch};
pub use error::{ModelError, Result};
pub use generate::Forward;
pub use kv::{KvCache, KvType};
pub use observe::{MatIndex, MatmulObserver};
pub use sampler::{Sampler, SamplerConfig};
pub use stage::{ExpertBatch, ExpertDispatch, ExpertTicket};

/// A loaded model of any supported architecture.
pub enum Model {
    Dense(DenseModel),
    Deepseek2(deepseek2::Deepseek2Model),
    Deepseek4(Box<deepseek4::Deepseek4Model>),
}

/// The per-sequence state a model keeps between calls.
#[derive(Clone, Debug)]
pub enum SeqState {
    Dense(KvCache),
    Mla(deepseek2::MlaCache),
    Ds4(deepseek4::Ds4Cache),
}

impl SeqState {
    /// Positions processed so far.
    pub fn len(&self) -> usize {
        match self {
            SeqState::Dense(kv) => kv.len(),
            SeqState::Mla(c) => c.len(),
            SeqState::Ds4(c) => c.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        match self {
            SeqState::Dense(kv) => kv.truncate(len),
            SeqState::Mla(c) => c.truncate(len),
            SeqState::Ds4(c) => c.truncate(len),
        }
    }

    /// Bytes of cache held.
    pub fn bytes(&self) -> usize {
        match self {
            SeqState::Dense(kv) => kv.bytes(),
            SeqState::Mla(c) => c.bytes(),
            SeqState::Ds4(c) => c.bytes(),
        }
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

    pub fn arch(&self) -> &str {
        match self {
            Model::Dense(m) => m.spec.name,
            Model::Deepseek2(_) => deepseek2::hparams::ARCH,
            Model::Deepseek4(_) => deepseek4::hparams::ARCH,
        }
    }

    /// Reproduce llama.cpp's x86 summation orders (repacked kernels, its
    /// vector `exp`) so logits agree to the last bits; slower.
    pub fn set_llama_exact(&mut self, on: bool) {
        match self {
            Model::Dense(m) => m.llama_exact = on,
            Model::Deepseek2(m) => m.llama_exact = on,
            Model::Deepseek4(m) => m.set_llama_exact(on),
        }
    }

    /// How new KV caches store their rows: any type for dense caches;
    /// f32, f16 or q8_0 for DeepSeek V4's compressed entries and indexer
    /// keys (f16 unless set). DeepSeek V2/V3's latent cache stays f32 (it
    /// is already a small fraction of a dense cache): any other type is an
    /// error for it.
    pub fn set_kv_type(&mut self, ty: KvType) -> Result<()> {
        match self {
            Model::Dense(m) => m.set_kv_type(ty),
            Model::Deepseek4(m) => {
                let t = deepseek4::KvType::from_kv(ty)
                    .filter(|t| t.fits(m.hp.head_dim) && t.fits(m.hp.idx_dim))
                    .ok_or_else(|| {
                        ModelError::Invalid(format!(
                            "KV cache type {ty} does not fit deepseek4's compressed cache (f32, f16 or q8_0 over rows of {} and {} values)",
                            m.hp.head_dim, m.hp.idx_dim
                        ))
                    })?;
                m.kv_type = t;
                Ok(())
            }
            _ if ty == KvType::F32 => Ok(()),
            _ => Err(ModelError::Invalid(format!(
                "KV cache type {ty} is for dense models and deepseek4; {}'s compressed latent cache stays f32",
                self.arch()
            ))),
        }
    }

    /// The type new KV caches store rows as.
    pub fn kv_type(&self) -> KvType {
        match self {
            Model::Dense(m) => m.kv_type,
            Model::Deepseek4(m) => m.kv_type.to_kv(),
            _ => KvType::F32,
        }
    }

    /// Holds the weights within `cfg.budget` bytes: the mapped file when
    /// they fit, else paged (see [`store`]): pinned non-expert weights,
    /// streamed layers, cached routed experts. Outputs are bit-identical
    /// either way.
    pub fn set_memory_budget(&mut self, cfg: &store::StoreConfig) -> Result<()> {
        match self {
            Model::Dense(m) => {
                let plan = store::dense_plan(&m.w);
                m.store = store::WeightStore::new(m.file.clone(), &plan, cfg)?;
            }
            Model::Deepseek2(m) => {
                let k = m.hp.moe.as_ref().map_or(0, |p| p.n_expert_used);
                let plan = store::deepseek2_plan(&m.w, k);
                m.store = store::WeightStore::new(m.file.clone(), &plan, cfg)?;
            }
            Model::Deepseek4(m) => {
                let plan = store::deepseek4_plan(&m.w, m.hp.n_expert_used);
                m.store = store::WeightStore::new(m.file.clone(), &plan, cfg)?;
            }
        }
        Ok(())
    }

    /// Bytes of the weights the model reads (what a budget is held to).
    pub fn weight_bytes(&self) -> u64 {
        match self {
            Model::Dense(m) => store::dense_plan(&m.w).total_bytes(),
            Model::Deepseek2(m) => store::deepseek2_plan(&m.w, 0).total_bytes(),
            Model::Deepseek4(m) => m.weight_bytes(),
        }
    }

    /// What the weight store did and holds (expert hit rate, bytes read,
    /// I/O stalls, resident bytes).
    pub fn store_stats(&self) -> store::StoreStats {
        match self {
            Model::Dense(m) => m.store.stats(),
            Model::Deepseek2(m) => m.store.stats(),
            Model::Deepseek4(m) => m.store.stats(),
        }
    }

    /// Shows the input of every weight product to `observer` (None: stop).
    pub fn set_observer(&mut self, observer: Option<Arc<dyn MatmulObserver>>) {
        match self {
            Model::Dense(m) => m.observer = observer,
            Model::Deepseek2(m) => m.observer = observer,
            Model::Deepseek4(m) => m.observer = observer,
        }
    }

    pub fn n_vocab(&self) -> usize {
        match self {
            Model::Dense(m) => m.hp.n_vocab,
            Model::Deepseek2(m) => m.hp.n_vocab,
            Model::Deepseek4(m) => m.hp.n_vocab,
        }
    }

    pub fn n_layer(&self) -> usize {
        match self {
            Model::Dense(m) => m.hp.n_layer,
            Model::Deepseek2(m) => m.hp.n_layer,
            Model::Deepseek4(m) => m.hp.n_layer,
        }
    }

    /// The context length the model was trained for.
    pub fn n_ctx_train(&self) -> usize {
        match self {
            Model::Dense(m) => m.hp.n_ctx_train,
            Model::Deepseek2(m) => m.hp.n_ctx_train,
            Model::Deepseek4(m) => m.hp.n_ctx_train,
        }
    }

    /// KV bytes one position costs.
    pub fn kv_bytes_per_token(&self) -> usize {
        match self {
            Model::Dense(m) => m.kv_bytes_per_token(),
            Model::Deepseek2(m) => m.kv_bytes_per_token(),
            Model::Deepseek4(m) => m.kv_bytes_per_token(),
        }
    }

    /// A fresh sequence state able to hold `capacity` positions.
    pub fn new_state(&self, capacity: usize) -> SeqState {
        match self {
            Model::Dense(m) => SeqState::Dense(m.new_cache(capacity)),
            Model::Deepseek2(m) => SeqState::Mla(m.new_cache(capacity)),
            Model::Deepseek4(m) => SeqState::Ds4(m.new_cache(capacity)),
        }
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
        match (self, state) {
            (Model::Dense(m), SeqState::Dense(kv)) => m.forward(tokens, kv, all_logits),
            (Model::Deepseek2(m), SeqState::Mla(c)) => m.forward(tokens, c, all_logits),
            (Model::Deepseek4(m), SeqState::Ds4(c)) => m.forward(tokens, c, all_logits),
            _ => Err(ModelError::Invalid(
                "sequence state of another architecture".into(),
            )),
        }
    }

    /// Runs several sequences in one pass (continuous batching): each item
    /// is `(tokens, state, all_logits)`. Returns each sequence's logits as
    /// [`Model::forward`] would.
    pub fn forward_batch(
        &self,
        items: &mut [(&[u32], &mut SeqState, bool)],
    ) -> Result<Vec<Vec<f32>>> {
        match self {
            Model::Dense(m) => {
                let mut batch = Vec::with_capacity(items.len());
                for (tokens, state, all_logits) in items.iter_mut() {
                    let SeqState::Dense(kv) = &mut **state else {
                        return Err(ModelError::Invalid(
                            "sequence state of another architecture".into(),
                        ));
                    };
                    batch.push(SeqBatch {
                        tokens,
                        kv,
                        all_logits: *all_logits,
                    });
                }
                m.forward_batch(&mut batch)
            }
            Model::Deepseek2(m) => {
                let mut batch = Vec::with_capacity(items.len());
                for (tokens, state, all_logits) in items.iter_mut() {
                    let SeqState::Mla(cache) = &mut **state else {
                        return Err(ModelError::Invalid(
                            "sequence state of another architecture".into(),
                        ));
                    };
                    batch.push(deepseek2::MlaSeqBatch {
                        tokens,
                        cache,
                        all_logits: *all_logits,
                    });
                }
                m.forward_batch(&mut batch)
            }
            Model::Deepseek4(m) => {
                let mut batch = Vec::with_capacity(items.len());
                for (tokens, state, all_logits) in items.iter_mut() {
                    let SeqState::Ds4(cache) = &mut **state else {
                        return Err(ModelError::Invalid(
                            "sequence state of another architecture".into(),
                        ));
                    };
                    batch.push(deepseek4::Ds4SeqBatch {
                        tokens,
                        cache,
                        all_logits: *all_logits,
                    });
                }
                m.forward_batch(&mut batch)
            }
        }
    }
}
