//! The server's KV caches on disk (`[model] kv_cache_dir`): a [`Backend`]
//! over the shared model that, when the in-memory prefix cache misses,
//! restores the longest saved prefix of a prompt from a
//! [`KvStore`](dwarfstar_model::kv_store::KvStore), and saves the states of
//! long finished sequences there. Saving runs on its own thread (the engine
//! only clones the state), restoring on the engine thread.

use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use anyhow::{Context, Result};
use dwarfstar_model::kv_store::KvStore;
use dwarfstar_model::{Model, SeqState};

use super::scheduler::Backend;

/// Sequences shorter than this are not saved.
pub const MIN_SAVE_TOKENS: usize = 64;

/// The shared model with a disk cache of KV states.
pub struct DiskCached {
    model: Arc<Model>,
    store: Arc<KvStore>,
    tx: SyncSender<(Vec<u32>, SeqState)>,
}

impl DiskCached {
    /// Opens `dir` (created if missing) within `budget` bytes for `model`.
    pub fn open(model: Arc<Model>, dir: &Path, budget: u64) -> Result<DiskCached> {
        let store = KvStore::open(dir, budget, &model)
            .with_context(|| format!("kv_cache_dir {}", dir.display()))?
            .with_min_tokens(MIN_SAVE_TOKENS);
        let store = Arc::new(store);
        // A few states may wait; more are dropped rather than held.
        let (tx, rx) = sync_channel::<(Vec<u32>, SeqState)>(4);
        let writer = store.clone();
        std::thread::Builder::new()
            .name("dwarfstar-kv-save".into())
            .spawn(move || {
                for (tokens, state) in rx {
                    match writer.save(&tokens, &state) {
                        Ok(Some(b)) => {
                            tracing::info!("saved the KV of {} tokens ({b} bytes)", tokens.len())
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!("KV not saved: {e}"),
                    }
                }
            })
            .context("starting the KV saving thread")?;
        tracing::info!(
            "KV cache directory {} ({} bytes budget)",
            dir.display(),
            budget
        );
        Ok(DiskCached { model, store, tx })
    }
}

impl Backend for DiskCached {
    type State = SeqState;

    fn new_state(&self, capacity: usize) -> SeqState {
        self.model.new_state(capacity)
    }

    fn state_len(&self, s: &SeqState) -> usize {
        s.len()
    }

    fn truncate(&self, s: &mut SeqState, len: usize) {
        s.truncate(len)
    }

    fn clone_state(&self, s: &SeqState) -> SeqState {
        s.clone()
    }

    fn kept_by_truncate(&self, s: &SeqState, len: usize) -> usize {
        s.kept_by_truncate(len)
    }

    fn cuts_anywhere(&self) -> bool {
        self.model.capabilities().cuts_anywhere
    }

    fn cuts_last_pass(&self) -> bool {
        self.model.capabilities().cuts_last_pass
    }

    fn compact(&self, s: &mut SeqState) {
        <Model as Backend>::compact(&self.model, s)
    }

    fn state_bytes(&self, s: &SeqState) -> usize {
        s.bytes()
    }

    fn forward_batch(
        &self,
        items: &mut [(&[u32], &mut SeqState, bool)],
    ) -> Result<Vec<Vec<f32>>, String> {
        self.model.forward_batch(items).map_err(|e| e.to_string())
    }

    fn hidden<'a>(&self, s: &'a SeqState) -> Option<(usize, &'a [f32])> {
        <Model as Backend>::hidden(&self.model, s)
    }

    fn final_rows(&self, items: &mut [(&[u32], &mut SeqState)]) -> Result<Vec<Vec<f32>>, String> {
        <Model as Backend>::final_rows(&self.model, items)
    }

    fn load_prefix(&self, prompt: &[u32], capacity: usize) -> Option<(SeqState, usize)> {
        let found = self.store.lookup(&self.model, prompt, capacity);
        for (p, e) in &found.rejected {
            tracing::warn!("KV file {} refused and removed: {e}", p.display());
        }
        let r = found.restored?;
        tracing::info!(
            "restored {} of {} prompt tokens from {}",
            r.tokens,
            prompt.len(),
            r.path.display()
        );
        Some((r.state, r.tokens))
    }

    fn save_prefix(&self, tokens: &[u32], s: &SeqState) {
        if tokens.len() < MIN_SAVE_TOKENS {
            return;
        }
        let mut state = s.clone();
        state.truncate(tokens.len());
        if let Err(TrySendError::Full(_)) = self.tx.try_send((tokens.to_vec(), state)) {
            tracing::debug!(
                "KV saver busy; a state of {} tokens not saved",
                tokens.len()
            );
        }
    }
}
