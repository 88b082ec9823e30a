//! The one interface every architecture implements ([`Architecture`]), and
//! the per-sequence state behind [`crate::SeqState`] ([`SeqCache`]).
//!
//! An architecture declares its per-sequence state, a forward pass over any
//! contiguous layer range given each row's token id (hash-routed MoE layers
//! choose experts by it; the hidden rows are as wide as
//! [`Architecture::n_embd`] says, e.g. DeepSeek V4's hyper-connection
//! streams), its output head, an expert-dispatch hook for expert
//! parallelism, and the switches the daemon sets (arithmetic, KV type,
//! memory budget, observer). [`crate::Model`] is a thin wrapper that picks
//! the implementation by `general.architecture`; pipeline stages and expert
//! holders are written once against this trait, so every capability holds
//! for every architecture.
//!
//! Adding an architecture: implement this trait (and [`SeqCache`] for its
//! state) in the architecture's own module, then add a variant to
//! [`crate::Model`] and [`crate::SeqState`] and a line to `Model::load`.

use std::ops::Range;
use std::sync::Arc;

use dwarfstar_gguf::GgufFile;

use crate::error::{ModelError, Result};
use crate::observe::MatmulObserver;
use crate::stage::{ExpertBatch, ExpertDispatch};
use crate::store::{StoreConfig, StoreStats};
use crate::{KvType, SeqState};

/// What an architecture supports, as `dwarfstar inspect` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Weights held within a memory budget (paged from the file).
    pub paging: bool,
    /// Splits into pipeline stages over layer ranges.
    pub stages: bool,
    /// Routed experts run by other nodes.
    pub expert_parallel: bool,
    /// KV cache storage types `set_kv_type` accepts.
    pub kv_types: Vec<KvType>,
    /// Sequence states saved to and restored from KV files.
    pub kv_save: bool,
    /// A state cut to any shorter length keeps its positions (rows at
    /// fixed positions); false where running state (windows,
    /// compressors) makes a cut recompute the kept prefix, so prefix
    /// reuse needs a state saved at the very length reused.
    pub cuts_anywhere: bool,
    /// A state cut back to any length from the start of its last pass
    /// (a short one: a verification of draft tokens) keeps its positions,
    /// exactly: what speculative decoding needs. True wherever
    /// `cuts_anywhere` is.
    pub cuts_last_pass: bool,
}

/// A sequence's state as the generic code handles it: positions, the
/// tokens a truncation left to recompute, and bytes.
pub trait SeqCache {
    /// Positions in the sequence (held, or pending recomputation).
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Positions whose state is held; the next layer call starts here.
    fn held(&self) -> usize {
        self.len()
    }
    /// Tokens a truncation kept but whose state was dropped: the next call
    /// must run them again before its new tokens (empty for caches that
    /// truncate exactly).
    fn pending(&self) -> &[u32] {
        &[]
    }
    /// Forgets every position from `len` on.
    fn truncate(&mut self, len: usize);
    /// Positions whose state a truncation to `len` would keep (the rest
    /// of the first `len` is recomputed): all of them where rows sit at
    /// fixed positions.
    fn kept_by_truncate(&self, len: usize) -> usize {
        len.min(self.held())
    }
    /// Bytes held now.
    fn bytes(&self) -> usize;
    /// Commits the positions of `run` (the pending tokens, then the new
    /// ones), once every layer of a step has written them.
    fn advance(&mut self, run: &[u32]);
    /// Forgets whatever a failed step wrote. Caches whose rows sit at
    /// fixed positions need nothing; running state (DeepSeek V4's windows
    /// and compressors) is dropped, its tokens kept for recomputation.
    fn abort_step(&mut self) {}
}

/// One architecture's forward pass and switches. See the module doc.
pub trait Architecture: Send + Sync {
    /// `general.architecture`.
    fn name(&self) -> &str;
    fn capabilities(&self) -> Capabilities;
    /// The mapped model file.
    fn file(&self) -> &Arc<GgufFile>;

    fn n_vocab(&self) -> usize;
    /// Layers of the trunk (what stages split).
    fn n_layer(&self) -> usize;
    fn n_ctx_train(&self) -> usize;
    /// Width of a hidden row between layers: what a pipeline step carries
    /// per token.
    fn n_embd(&self) -> usize;
    /// Width of a row into the routed experts ([`ExpertBatch::d`]).
    fn expert_width(&self) -> usize;
    /// KV bytes one position costs.
    fn kv_bytes_per_token(&self) -> usize;

    /// A fresh sequence state able to hold `capacity` positions.
    fn new_state(&self, capacity: usize) -> SeqState;
    /// Embeds `tokens` into `n × n_embd()` hidden rows.
    fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>>;
    /// Runs `layers` over the hidden rows `x` of several sequences back to
    /// back: `seqs[i]` owns one row per token of `seqs[i].0`, at positions
    /// [`SeqCache::held`]`..` of its state. States are advanced by the
    /// caller once the step's last layer on this node has run.
    fn forward_layers(
        &self,
        layers: Range<usize>,
        x: &mut [f32],
        seqs: &mut [(&[u32], &mut SeqState)],
    ) -> Result<()>;
    /// Final norm and output head over `m × n_embd()` rows: `m × n_vocab`.
    fn logits(&self, x: &[f32]) -> Result<Vec<f32>>;
    /// What the output head reads of `m × n_embd()` rows: the rows after
    /// the final norm, `m × d` (`d` the model's width, which is not
    /// `n_embd()` where rows carry several streams).
    fn final_norm(&self, x: &[f32]) -> Result<Vec<f32>>;
    /// The whole model over several sequences (`(tokens, state,
    /// all_logits)`): each one's last row's logits, or all its rows'.
    fn forward_batch(&self, items: &mut [(&[u32], &mut SeqState, bool)]) -> Result<Vec<Vec<f32>>>;

    /// Whether layer `il` has routed experts.
    fn is_moe_layer(&self, il: usize) -> bool;
    /// Routed experts per MoE layer (0 without).
    fn n_expert(&self) -> usize;
    /// Sends the experts this node does not hold to their holders (`None`:
    /// all run here).
    fn set_expert_dispatch(&mut self, d: Option<Arc<dyn ExpertDispatch>>) -> Result<()>;
    /// Runs layer `il`'s routed experts over `batch`'s rows for the node
    /// that routed them: unweighted outputs, `expert_width()` per row.
    fn run_experts(&self, il: usize, batch: &ExpertBatch) -> Result<Vec<f32>>;

    /// llama.cpp's summation orders (on) or the architecture's default.
    fn set_llama_exact(&mut self, on: bool);
    fn llama_exact(&self) -> bool;
    /// How new KV caches store their rows.
    fn set_kv_type(&mut self, ty: KvType) -> Result<()>;
    fn kv_type(&self) -> KvType;
    /// Holds the weights within `cfg.budget` bytes.
    fn set_memory_budget(&mut self, cfg: &StoreConfig) -> Result<()>;
    /// Bytes of the weights the model reads.
    fn weight_bytes(&self) -> u64;
    fn store_stats(&self) -> StoreStats;
    /// Shows the input of every weight product to `observer`.
    fn set_observer(&mut self, observer: Option<Arc<dyn MatmulObserver>>);
}

/// The error for a state of another architecture.
pub(crate) fn wrong_state() -> ModelError {
    ModelError::Invalid("sequence state of another architecture".into())
}

/// The error for an expert batch of the wrong width.
pub(crate) fn check_expert_width(batch: &ExpertBatch, want: usize) -> Result<()> {
    if batch.d != want {
        return Err(ModelError::Invalid(format!(
            "expert rows of {} values, the model's are {want}",
            batch.d
        )));
    }
    Ok(())
}
