//! [`Architecture`] for DeepSeek V2/V3 ([`Deepseek2Model`]) and
//! [`SeqCache`] for its latent cache.

use std::ops::Range;
use std::sync::Arc;

use dwarfstar_gguf::GgufFile;

use crate::architecture::{wrong_state, Architecture, Capabilities, SeqCache};
use crate::error::{ModelError, Result};
use crate::observe::MatmulObserver;
use crate::stage::{ExpertBatch, ExpertDispatch};
use crate::store::{self, StoreConfig, StoreStats};
use crate::{KvType, SeqState};

use super::{hparams, Deepseek2Model, MlaCache, MlaSeqBatch};

impl SeqCache for MlaCache {
    fn len(&self) -> usize {
        MlaCache::len(self)
    }

    fn truncate(&mut self, len: usize) {
        MlaCache::truncate(self, len)
    }

    fn bytes(&self) -> usize {
        MlaCache::bytes(self)
    }

    fn advance(&mut self, run: &[u32]) {
        MlaCache::advance(self, run.len())
    }
}

fn latent(s: &mut SeqState) -> Result<&mut MlaCache> {
    match s {
        SeqState::Mla(c) => Ok(c),
        _ => Err(wrong_state()),
    }
}

impl Architecture for Deepseek2Model {
    fn name(&self) -> &str {
        hparams::ARCH
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            paging: true,
            stages: true,
            expert_parallel: self.hp.moe.is_some(),
            // The compressed latent cache stays f32.
            kv_types: vec![KvType::F32],
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
        Deepseek2Model::kv_bytes_per_token(self)
    }

    fn new_state(&self, capacity: usize) -> SeqState {
        SeqState::Mla(self.new_cache(capacity))
    }

    fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        Deepseek2Model::embed(self, tokens)
    }

    fn forward_layers(
        &self,
        layers: Range<usize>,
        x: &mut [f32],
        seqs: &mut [(&[u32], &mut SeqState)],
    ) -> Result<()> {
        let mut segs = Vec::with_capacity(seqs.len());
        for (t, s) in seqs.iter_mut() {
            segs.push((t.len(), latent(s)?));
        }
        Deepseek2Model::forward_layers(self, layers, x, &mut segs)
    }

    fn logits(&self, x: &[f32]) -> Result<Vec<f32>> {
        Deepseek2Model::logits(self, x)
    }

    fn final_norm(&self, x: &[f32]) -> Result<Vec<f32>> {
        Ok(Deepseek2Model::final_norm(self, x))
    }

    fn forward_batch(&self, items: &mut [(&[u32], &mut SeqState, bool)]) -> Result<Vec<Vec<f32>>> {
        let mut batch = Vec::with_capacity(items.len());
        for (tokens, state, all_logits) in items.iter_mut() {
            batch.push(MlaSeqBatch {
                tokens,
                cache: latent(state)?,
                all_logits: *all_logits,
            });
        }
        Deepseek2Model::forward_batch(self, &mut batch)
    }

    fn is_moe_layer(&self, il: usize) -> bool {
        Deepseek2Model::is_moe_layer(self, il)
    }

    fn n_expert(&self) -> usize {
        self.hp.moe.as_ref().map_or(0, |p| p.n_expert)
    }

    fn set_expert_dispatch(&mut self, d: Option<Arc<dyn ExpertDispatch>>) -> Result<()> {
        if d.is_some() && self.hp.moe.is_none() {
            return Err(ModelError::Invalid(
                "expert parallelism needs a mixture-of-experts model".into(),
            ));
        }
        self.remote = d;
        Ok(())
    }

    fn run_experts(&self, il: usize, batch: &ExpertBatch) -> Result<Vec<f32>> {
        Deepseek2Model::run_experts(self, il, batch)
    }

    fn set_llama_exact(&mut self, on: bool) {
        self.llama_exact = on;
    }

    fn llama_exact(&self) -> bool {
        self.llama_exact
    }

    fn set_kv_type(&mut self, ty: KvType) -> Result<()> {
        if ty == KvType::F32 {
            return Ok(());
        }
        Err(ModelError::Invalid(format!(
            "KV cache type {ty} is for dense models; deepseek2's compressed latent cache stays f32"
        )))
    }

    fn kv_type(&self) -> KvType {
        KvType::F32
    }

    fn set_memory_budget(&mut self, cfg: &StoreConfig) -> Result<()> {
        let k = self.hp.moe.as_ref().map_or(0, |p| p.n_expert_used);
        let plan = store::deepseek2_plan(&self.w, k);
        self.store = store::WeightStore::new(self.file.clone(), &plan, cfg)?;
        Ok(())
    }

    fn weight_bytes(&self) -> u64 {
        store::deepseek2_plan(&self.w, 0).total_bytes()
    }

    fn store_stats(&self) -> StoreStats {
        self.store.stats()
    }

    fn set_observer(&mut self, observer: Option<Arc<dyn MatmulObserver>>) {
        self.observer = observer;
    }
}
