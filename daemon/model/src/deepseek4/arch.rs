//! [`Architecture`] for DeepSeek V4 ([`Deepseek4Model`]) and [`SeqCache`]
//! for its compressed cache.
//!
//! Between layers a row is the hyper-connection residual (`hc_mult ×
//! n_embd` per token), so that is what a pipeline step carries; the hash
//! routed layers read each row's token id. The routed experts see
//! `n_embd`-wide rows.

use std::ops::Range;
use std::sync::Arc;

use dwarfstar_gguf::GgufFile;

use crate::architecture::{check_expert_width, wrong_state, Architecture, Capabilities, SeqCache};
use crate::error::{ModelError, Result};
use crate::observe::MatmulObserver;
use crate::stage::{ExpertBatch, ExpertDispatch};
use crate::store::{self, StoreConfig, StoreStats};
use crate::{KvType, SeqState};

use super::{hparams, moe, Deepseek4Model, Ds4Cache, Ds4SeqBatch};

impl SeqCache for Ds4Cache {
    fn len(&self) -> usize {
        Ds4Cache::len(self)
    }

    fn held(&self) -> usize {
        Ds4Cache::held(self)
    }

    fn pending(&self) -> &[u32] {
        Ds4Cache::pending(self)
    }

    fn truncate(&mut self, len: usize) {
        Ds4Cache::truncate(self, len)
    }

    /// The windows and compressors hold the last positions only: a cut
    /// below the held state keeps it only within a marked last pass.
    fn kept_by_truncate(&self, len: usize) -> usize {
        Ds4Cache::kept_by_truncate(self, len)
    }

    fn bytes(&self) -> usize {
        Ds4Cache::bytes(self)
    }

    fn advance(&mut self, run: &[u32]) {
        Ds4Cache::advance(self, run)
    }

    fn abort_step(&mut self) {
        self.drop_state()
    }
}

fn ds4(s: &mut SeqState) -> Result<&mut Ds4Cache> {
    match s {
        SeqState::Ds4(c) => Ok(c),
        _ => Err(wrong_state()),
    }
}

impl Architecture for Deepseek4Model {
    fn name(&self) -> &str {
        hparams::ARCH
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            paging: true,
            stages: true,
            expert_parallel: true,
            kv_types: vec![KvType::F32, KvType::F16, KvType::Q8_0],
            kv_save: true,
            // Windows and compressors hold the last positions only; a
            // short pass is marked so that it can be taken back.
            cuts_anywhere: false,
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
        self.hp.n_embd * self.hp.hc_mult
    }

    fn expert_width(&self) -> usize {
        self.hp.n_embd
    }

    fn kv_bytes_per_token(&self) -> usize {
        Deepseek4Model::kv_bytes_per_token(self)
    }

    fn new_state(&self, capacity: usize) -> SeqState {
        SeqState::Ds4(self.new_cache(capacity))
    }

    fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        Deepseek4Model::embed(self, tokens)
    }

    fn forward_layers(
        &self,
        layers: Range<usize>,
        x: &mut [f32],
        seqs: &mut [(&[u32], &mut SeqState)],
    ) -> Result<()> {
        let mut segs = Vec::with_capacity(seqs.len());
        for (t, s) in seqs.iter_mut() {
            segs.push((*t, ds4(s)?));
        }
        Deepseek4Model::forward_layers(self, layers, x, &mut segs)
    }

    fn logits(&self, x: &[f32]) -> Result<Vec<f32>> {
        Deepseek4Model::logits(self, x)
    }

    fn final_norm(&self, x: &[f32]) -> Result<Vec<f32>> {
        Deepseek4Model::final_norm(self, x)
    }

    fn forward_batch(&self, items: &mut [(&[u32], &mut SeqState, bool)]) -> Result<Vec<Vec<f32>>> {
        let mut batch = Vec::with_capacity(items.len());
        for (tokens, state, all_logits) in items.iter_mut() {
            batch.push(Ds4SeqBatch {
                tokens,
                cache: ds4(state)?,
                all_logits: *all_logits,
            });
        }
        Deepseek4Model::forward_batch(self, &mut batch)
    }

    fn is_moe_layer(&self, il: usize) -> bool {
        il < self.hp.n_layer
    }

    fn n_expert(&self) -> usize {
        self.hp.n_expert
    }

    fn set_expert_dispatch(&mut self, d: Option<Arc<dyn ExpertDispatch>>) -> Result<()> {
        self.remote = d;
        Ok(())
    }

    fn run_experts(&self, il: usize, batch: &ExpertBatch) -> Result<Vec<f32>> {
        let l = self.w.layers.get(il).filter(|_| il < self.hp.n_layer);
        let Some(l) = l else {
            return Err(ModelError::Invalid(format!(
                "layer {il} has no routed experts"
            )));
        };
        check_expert_width(batch, self.hp.n_embd)?;
        moe::run_experts(&self.ctx(), &l.moe, self.hp.swiglu_exp[il], batch)
    }

    fn set_llama_exact(&mut self, on: bool) {
        Deepseek4Model::set_llama_exact(self, on)
    }

    fn llama_exact(&self) -> bool {
        self.llama_exact
    }

    fn set_kv_type(&mut self, ty: KvType) -> Result<()> {
        let t = super::KvType::from_kv(ty)
            .filter(|t| t.fits(self.hp.head_dim) && t.fits(self.hp.idx_dim))
            .ok_or_else(|| {
                ModelError::Invalid(format!(
                    "KV cache type {ty} does not fit deepseek4's compressed cache (f32, f16 or q8_0 over rows of {} and {} values)",
                    self.hp.head_dim, self.hp.idx_dim
                ))
            })?;
        self.kv_type = t;
        Ok(())
    }

    fn kv_type(&self) -> KvType {
        self.kv_type.to_kv()
    }

    fn set_memory_budget(&mut self, cfg: &StoreConfig) -> Result<()> {
        let plan = store::deepseek4_plan(&self.w, self.hp.n_expert_used);
        self.store = store::WeightStore::new(self.file.clone(), &plan, cfg)?;
        Ok(())
    }

    fn weight_bytes(&self) -> u64 {
        Deepseek4Model::weight_bytes(self)
    }

    fn store_stats(&self) -> StoreStats {
        self.store.stats()
    }

    fn set_observer(&mut self, observer: Option<Arc<dyn MatmulObserver>>) {
        self.observer = observer;
    }
}
