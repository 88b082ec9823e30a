//! [`Architecture`] for the dense transformers ([`DenseModel`]) and
//! [`SeqCache`] for their [`KvCache`].

use std::ops::Range;
use std::sync::Arc;

use dwarfstar_gguf::GgufFile;

use crate::architecture::{wrong_state, Architecture, Capabilities, SeqCache};
use crate::error::{ModelError, Result};
use crate::observe::MatmulObserver;
use crate::stage::{ExpertBatch, ExpertDispatch};
use crate::store::{self, StoreConfig, StoreStats};
use crate::{DenseModel, KvCache, KvType, SeqBatch, SeqState};

impl SeqCache for KvCache {
    fn len(&self) -> usize {
        KvCache::len(self)
    }

    fn truncate(&mut self, len: usize) {
        KvCache::truncate(self, len)
    }

    fn bytes(&self) -> usize {
        KvCache::bytes(self)
    }

    fn advance(&mut self, run: &[u32]) {
        KvCache::advance(self, run.len())
    }
}

fn kv(s: &mut SeqState) -> Result<&mut KvCache> {
    match s {
        SeqState::Dense(kv) => Ok(kv),
        _ => Err(wrong_state()),
    }
}

impl Architecture for DenseModel {
    fn name(&self) -> &str {
        self.spec.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            paging: true,
            stages: true,
            // No routed experts to spread.
            expert_parallel: false,
            kv_types: KvType::ALL.to_vec(),
            kv_save: true,
            cuts_anywhere: true,
            cuts_last_pass: true,
        }
    }

    fn file(&self) -> &Arc<GgufFile> {
        &self.file
    }

    fn n_vocab(&self) -> usize {
        self.hp.n_vocab
    }

    fn n_layer(&self) -> usize {
        self.hp.n_layer
    }

    fn n_ctx_train(&self) -> usize {
        self.hp.n_ctx_train
    }

    fn n_embd(&self) -> usize {
        self.hp.n_embd
    }

    fn expert_width(&self) -> usize {
        self.hp.n_embd
    }

    fn kv_bytes_per_token(&self) -> usize {
        DenseModel::kv_bytes_per_token(self)
    }

    fn new_state(&self, capacity: usize) -> SeqState {
        SeqState::Dense(self.new_cache(capacity))
    }

    fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        DenseModel::embed(self, tokens)
    }

    fn forward_layers(
        &self,
        layers: Range<usize>,
        x: &mut [f32],
        seqs: &mut [(&[u32], &mut SeqState)],
    ) -> Result<()> {
        let mut segs = Vec::with_capacity(seqs.len());
        for (t, s) in seqs.iter_mut() {
            segs.push((t.len(), kv(s)?));
        }
        DenseModel::forward_layers(self, layers, x, &mut segs)
    }

    fn logits(&self, x: &[f32]) -> Result<Vec<f32>> {
        DenseModel::logits(self, x)
    }

    fn final_norm(&self, x: &[f32]) -> Result<Vec<f32>> {
        Ok(DenseModel::final_norm(self, x))
    }

    fn forward_batch(&self, items: &mut [(&[u32], &mut SeqState, bool)]) -> Result<Vec<Vec<f32>>> {
        let mut batch = Vec::with_capacity(items.len());
        for (tokens, state, all_logits) in items.iter_mut() {
            batch.push(SeqBatch {
                tokens,
                kv: kv(state)?,
                all_logits: *all_logits,
            });
        }
        DenseModel::forward_batch(self, &mut batch)
    }

    fn is_moe_layer(&self, _il: usize) -> bool {
        false
    }

    fn n_expert(&self) -> usize {
        0
    }

    fn set_expert_dispatch(&mut self, d: Option<Arc<dyn ExpertDispatch>>) -> Result<()> {
        match d {
            Some(_) => Err(ModelError::Invalid(
                "expert parallelism needs a mixture-of-experts model".into(),
            )),
            None => Ok(()),
        }
    }

    fn run_experts(&self, _il: usize, _batch: &ExpertBatch) -> Result<Vec<f32>> {
        Err(ModelError::Invalid(
            "this model has no routed experts".into(),
        ))
    }

    fn set_llama_exact(&mut self, on: bool) {
        self.llama_exact = on;
    }

    fn llama_exact(&self) -> bool {
        self.llama_exact
    }

    fn set_kv_type(&mut self, ty: KvType) -> Result<()> {
        DenseModel::set_kv_type(self, ty)
    }

    fn kv_type(&self) -> KvType {
        self.kv_type
    }

    fn set_memory_budget(&mut self, cfg: &StoreConfig) -> Result<()> {
        let plan = store::dense_plan(&self.w);
        self.store = store::WeightStore::new(self.file.clone(), &plan, cfg)?;
        Ok(())
    }

    fn weight_bytes(&self) -> u64 {
        store::dense_plan(&self.w).total_bytes()
    }

    fn store_stats(&self) -> StoreStats {
        self.store.stats()
    }

    fn set_observer(&mut self, observer: Option<Arc<dyn MatmulObserver>>) {
        self.observer = observer;
    }
}
