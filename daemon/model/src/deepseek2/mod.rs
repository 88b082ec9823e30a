//! The `deepseek2` architecture: DeepSeek V2/V2.5/V3/R1 GGUF files as
//! llama.cpp writes them (MLA stored as `attn_kv_a_mqa` + split
//! `attn_k_b`/`attn_v_b`).
//!
//! - [`hparams`]: metadata, checked, and the YaRN/attention scales;
//! - [`weights`]: tensors bound with every dimension checked against its key;
//! - [`mla`]: absorbed multi-head latent attention and its latent cache;
//! - [`moe`]: routing and per-expert execution, plus the shared experts;
//! - [`repack`], [`ggml_simd`]: llama.cpp's x86 summation orders and vector
//!   `exp`, for [`Deepseek2Model::llama_exact`].
//!
//! As with the dense models, the pass is split into [`Deepseek2Model::embed`],
//! [`Deepseek2Model::forward_layers`] (any contiguous layer range) and
//! [`Deepseek2Model::logits`].

mod arch;
pub mod ggml_simd;
pub mod hparams;
pub mod mla;
pub mod moe;
pub mod repack;
pub mod weights;

use std::ops::Range;
use std::sync::Arc;

use dwarfstar_gguf::GgufFile;
use dwarfstar_kernels::{matmul, ops};

use crate::error::{ModelError, Result};
use crate::observe::{MatIndex, MatmulObserver};
use crate::stage::{ExpertBatch, ExpertDispatch};
use crate::store::{WeightBytes, WeightStore};
use crate::weights::Weight;

pub use hparams::{Ds2HParams, Gating, MoeParams};
pub use mla::MlaCache;
pub use weights::Ds2Weights;

use ggml_simd::FloatOp;
use mla::{norm_rows, Span};
use weights::{Ffn, Stack};

/// What a layer needs besides its weights: the mapped file, and whether to
/// reproduce llama.cpp's x86 arithmetic bit for bit ([`repack`],
/// [`ggml_simd`]).
pub(crate) struct Ctx<'a> {
    /// Where non-expert weight bytes come from: the mapped file, the
    /// store's resident set, or the current layer's unit.
    pub file: &'a dyn WeightBytes,
    /// Holds routed experts (paged under a memory budget).
    pub store: &'a WeightStore,
    pub exact: bool,
    /// Sees the input of every weight product (importance matrices).
    pub obs: Option<&'a dyn MatmulObserver>,
    /// Where routed experts held by other nodes run (expert parallelism).
    pub remote: Option<&'a dyn ExpertDispatch>,
}

impl Ctx<'_> {
    /// `x · wᵀ` for `n` rows, as llama.cpp's `MUL_MAT` on a 2-D weight.
    pub fn mm(&self, w: &Weight, x: &[f32], n: usize) -> Result<Vec<f32>> {
        if let Some(o) = self.obs {
            o.observe(&w.info.name, x, w.cols, MatIndex::Whole);
        }
        let mut out = vec![0f32; n * w.rows];
        if self.exact && repack::eligible(w.ty, w.rows) {
            repack::matmul(w.mat(self.file), x, n, &mut out, n - n % 4)?;
        } else if let Some(o) = self
            .exact
            .then(|| ggml_simd::float_matmul(w.mat(self.file), x, n, FloatOp::MulMat))
            .flatten()
        {
            out = o;
        } else {
            matmul(w.mat(self.file), x, n, &mut out)?;
        }
        Ok(out)
    }

    /// Matrix `e` of an expert stack over `n` rows, as `MUL_MAT_ID`.
    pub fn expert_mm(&self, s: &Stack, e: usize, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let g = self.store.expert(&s.info, e)?;
        if let Some(o) = self.obs {
            let mat = MatIndex::Expert {
                id: e as u32,
                of: s.n as u32,
            };
            o.observe(&s.info.name, x, s.cols, mat);
        }
        let mut out = vec![0f32; n * s.rows];
        if self.exact && repack::eligible(s.info.ty, s.rows) {
            repack::matmul(s.mat(&g, e), x, n, &mut out, 0)?;
        } else if let Some(o) = self
            .exact
            .then(|| ggml_simd::float_matmul(s.mat(&g, e), x, n, FloatOp::MulMatId))
            .flatten()
        {
            out = o;
        } else {
            matmul(s.mat(&g, e), x, n, &mut out)?;
        }
        Ok(out)
    }

    /// `gate = silu(gate) · up`, rows of `row` values.
    pub fn swiglu(&self, gate: &mut [f32], up: &[f32], row: usize) {
        if self.exact {
            ggml_simd::swiglu(gate, up, row);
        } else {
            ops::swiglu(gate, up);
        }
    }
}

/// A loaded deepseek2 model: the mapped file, hyper-parameters, weights.
pub struct Deepseek2Model {
    pub file: Arc<GgufFile>,
    pub hp: Ds2HParams,
    pub w: Ds2Weights,
    /// Reproduce llama.cpp's x86 (AVX-512) CPU results bit for bit where
    /// its arithmetic differs in the last bits: Q4_0/Q4_K/Q2_K products in
    /// its repacked order, F32/F16 products in tinyBLAS/`vec_dot` order, its
    /// vectorised `exp` in SwiGLU and the attention softmax. Off by default
    /// (DwarfStar's SIMD kernels and libm: equal up to those last bits, and
    /// 5–10× faster on repacked types); the reference tests turn it on.
    pub llama_exact: bool,
    /// Where weight bytes come from: the mapped file, or paged within a
    /// memory budget ([`crate::Model::set_memory_budget`]).
    pub store: WeightStore,
    /// Sees the input of every weight product (importance matrices).
    pub observer: Option<Arc<dyn MatmulObserver>>,
    /// Routed experts held by other nodes run there (see [`crate::stage`]).
    pub remote: Option<Arc<dyn ExpertDispatch>>,
}

/// One sequence of a batch: its new tokens, its cache, and whether every
/// token's logits are wanted (else only the last one's).
pub struct MlaSeqBatch<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut MlaCache,
    pub all_logits: bool,
}

impl Deepseek2Model {
    /// Binds a deepseek2 model from an opened GGUF file.
    pub fn load(file: Arc<GgufFile>) -> Result<Deepseek2Model> {
        let arch = file.get_str("general.architecture")?;
        if arch != hparams::ARCH {
            return Err(ModelError::UnsupportedArch(arch.to_string()));
        }
        let hp = Ds2HParams::from_gguf(&file)?;
        let w = Ds2Weights::bind(&file, &hp)?;
        Ok(Deepseek2Model {
            store: WeightStore::mapped(file.clone()),
            file,
            hp,
            w,
            llama_exact: false,
            observer: None,
            remote: None,
        })
    }

    /// An empty latent cache for up to `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> MlaCache {
        MlaCache::new(self.hp.n_layer, self.hp.cache_row(), capacity)
    }

    /// Cache bytes one position costs (f32 latent + rope key per layer).
    pub fn kv_bytes_per_token(&self) -> usize {
        self.hp.n_layer * self.hp.cache_row() * 4
    }

    /// Embeds `tokens` into `n × n_embd` hidden states.
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        crate::batch::embed_rows(
            &self.w.tok_embd,
            self.store.resident(),
            tokens,
            self.hp.n_vocab,
            self.hp.n_embd,
        )
    }

    /// Runs `layers` over `x`: the hidden rows of one or more sequences,
    /// back to back (`seqs[i]` owns the next `seqs[i].0` rows, at positions
    /// `cache.len()..` of its own cache). Latent rows are written into each
    /// cache; the caller advances the caches once every layer has run.
    pub fn forward_layers(
        &self,
        layers: Range<usize>,
        x: &mut [f32],
        seqs: &mut [(usize, &mut MlaCache)],
    ) -> Result<()> {
        let e = self.hp.n_embd;
        let n: usize = seqs.iter().map(|s| s.0).sum();
        crate::batch::check_layer_call(x.len(), e, n, &layers, self.hp.n_layer)?;
        self.store.begin_pass(n);
        let mut spans = Vec::with_capacity(seqs.len());
        let mut row = 0;
        for (cnt, c) in seqs.iter() {
            c.reserve(*cnt)?;
            if c.row() != self.hp.cache_row() {
                return Err(ModelError::Invalid(format!(
                    "cache rows of {} floats, the model needs {}",
                    c.row(),
                    self.hp.cache_row()
                )));
            }
            spans.push(Span {
                row,
                len: *cnt,
                pos0: c.len(),
            });
            row += *cnt;
        }
        let mut caches: Vec<&mut MlaCache> = seqs.iter_mut().map(|s| &mut *s.1).collect();
        for il in layers {
            self.layer(il, x, n, &spans, &mut caches)?;
        }
        Ok(())
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            file: self.store.resident(),
            store: &self.store,
            exact: self.llama_exact,
            obs: self.observer.as_deref(),
            remote: self.remote.as_deref(),
        }
    }

    fn layer(
        &self,
        il: usize,
        x: &mut [f32],
        n: usize,
        spans: &[Span],
        caches: &mut [&mut MlaCache],
    ) -> Result<()> {
        let hp = &self.hp;
        let l = &self.w.layers[il];
        // Start reading the experts the next layer is likely to pick.
        crate::store::pregate::deepseek2(self, il + 1, x, n);
        // This layer's bytes stay held until it returns.
        let lay = self.store.layer(il)?;
        let f = &Ctx {
            file: &lay,
            ..self.ctx()
        };

        let mut cur = x.to_vec();
        norm_rows(&mut cur, &l.attn_norm, hp.rms_eps);
        let attn = mla::attention(f, hp, &l.attn, il, &cur, spans, caches)?;
        ops::add_assign(x, &attn);

        let mut cur = x.to_vec();
        norm_rows(&mut cur, &l.ffn_norm, hp.rms_eps);
        let out = match &l.ffn {
            Ffn::Dense(w) => moe::mlp(f, w, &cur, n)?,
            Ffn::Moe(w) => {
                let p = hp.moe.as_ref().ok_or_else(|| {
                    ModelError::Invalid("MoE layer without MoE parameters".into())
                })?;
                moe::moe_ffn(f, p, w, il, &cur, n)?
            }
        };
        ops::add_assign(x, &out);
        Ok(())
    }

    /// Whether layer `il` has routed experts.
    pub fn is_moe_layer(&self, il: usize) -> bool {
        matches!(self.w.layers.get(il).map(|l| &l.ffn), Some(Ffn::Moe(_)))
    }

    /// Runs layer `il`'s routed experts on `batch` for another node.
    pub fn run_experts(&self, il: usize, batch: &ExpertBatch) -> Result<Vec<f32>> {
        let Some(Ffn::Moe(w)) = self.w.layers.get(il).map(|l| &l.ffn) else {
            return Err(ModelError::Invalid(format!(
                "layer {il} has no routed experts"
            )));
        };
        if batch.d != self.hp.n_embd {
            return Err(ModelError::Invalid(format!(
                "expert rows of {} values, the model's are {}",
                batch.d, self.hp.n_embd
            )));
        }
        moe::run_experts(&self.ctx(), w, batch)
    }

    /// The final norm of the hidden rows `x` (`m × n_embd`).
    pub fn final_norm(&self, x: &[f32]) -> Vec<f32> {
        let mut h = x.to_vec();
        norm_rows(&mut h, &self.w.output_norm, self.hp.rms_eps);
        h
    }

    /// Final norm and output head for the hidden rows `x` (`m × n_embd`):
    /// `m × n_vocab` logits.
    pub fn logits(&self, x: &[f32]) -> Result<Vec<f32>> {
        let e = self.hp.n_embd;
        let h = self.final_norm(x);
        self.ctx().mm(&self.w.output, &h, x.len() / e)
    }

    /// Runs `tokens` through the whole model after what `cache` holds and
    /// returns the last token's logits, or every token's when `all_logits`.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut MlaCache,
        all_logits: bool,
    ) -> Result<Vec<f32>> {
        let mut batch = [MlaSeqBatch {
            tokens,
            cache,
            all_logits,
        }];
        Ok(self.forward_batch(&mut batch)?.pop().unwrap_or_default())
    }

    /// Runs several sequences in one pass: their tokens share every matrix
    /// product (and every expert's), each attends over its own cache.
    pub fn forward_batch(&self, seqs: &mut [MlaSeqBatch<'_>]) -> Result<Vec<Vec<f32>>> {
        if seqs.iter().any(|s| s.tokens.is_empty()) {
            return Err(ModelError::Invalid(
                "a sequence in the batch has no tokens".into(),
            ));
        }
        let tokens: Vec<u32> = seqs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let mut x = self.embed(&tokens)?;
        {
            let mut segs: Vec<(usize, &mut MlaCache)> = seqs
                .iter_mut()
                .map(|s| (s.tokens.len(), &mut *s.cache))
                .collect();
            self.forward_layers(0..self.hp.n_layer, &mut x, &mut segs)?;
        }
        for s in seqs.iter_mut() {
            s.cache.advance(s.tokens.len());
        }
        let shape = || seqs.iter().map(|s| (s.tokens.len(), s.all_logits));
        let rows = crate::batch::wanted_rows(&x, self.hp.n_embd, shape());
        let logits = self.logits(&rows)?;
        Ok(crate::batch::split_logits(
            &logits,
            self.hp.n_vocab,
            shape(),
        ))
    }
}
