//! The `deepseek4` architecture: DeepSeek V4 Flash/Pro GGUF files as
//! llama.cpp writes them.
//!
//! - [`hparams`]: metadata, checked (errors name the key);
//! - [`weights`], [`mtp`]: tensors bound with every dimension checked;
//! - [`attention`]: single-KV-head attention with sinks, sliding window,
//!   CSA/HCA compressed blocks ([`compressor`]) and the lightning
//!   [`indexer`]; the grouped output projection;
//! - [`hc`]: manifold-constrained hyper-connections;
//! - [`moe`]: hash and learned routing, clamped SwiGLU experts;
//! - [`rope`]: partial interleaved RoPE and its inverse;
//! - [`cache`]: the compressed per-sequence state.
//!
//! By default the model follows DeepSeek's own indexer (its FP4
//! quantization-aware step, [`IndexerRule::DeepSeek`]) and runs the
//! routed experts as quantized dot products in their own type (MXFP4,
//! IQ2_XXS, Q2_K, …: activations rounded once to the type's
//! `vec_dot_type`, never a dequantized f32 copy of the weights).
//! [`Deepseek4Model::f32_experts`] keeps the experts' activations in f32
//! instead (each weight row dequantized as it is used): DeepSeek's
//! reference arithmetic on weights the file holds exactly, what the
//! comparisons with transformers use, and slower.
//! [`Deepseek4Model::set_llama_exact`] switches to what llama.cpp computes
//! on the same file: no FP4 step in the indexer, ggml's RoPE angles, and
//! ggml's product orders.

mod arch;
pub mod attention;
pub mod cache;
pub mod compressor;
pub mod hc;
pub mod hparams;
pub mod indexer;
pub mod moe;
pub mod mtp;
pub mod mtp_run;
pub mod rope;
pub mod weights;

use std::ops::Range;
use std::sync::Arc;

use dwarfstar_gguf::GgufFile;
use dwarfstar_kernels::{matmul, ops, MatRef};

use crate::deepseek2::ggml_simd::{self, FloatOp};
use crate::deepseek2::repack;
use crate::deepseek2::weights::Stack;
use crate::error::{ModelError, Result};
use crate::observe::{MatIndex, MatmulObserver};
use crate::stage::ExpertDispatch;
use crate::store::{WeightBytes, WeightStore};
use crate::weights::Weight;

pub use cache::{Ds4Cache, KvType, Selection};
pub use hparams::{Ds4HParams, LayerKind};
pub use indexer::IndexerRule;
pub use mtp::{EhProj, MtpWeights};
pub use mtp_run::MtpSeq;
pub use weights::Ds4Weights;

use attention::{norm_rows, LayerCx, Span};
use rope::Rotary;

/// What a layer needs besides its weights: where their bytes come from,
/// and whether to compute as llama.cpp does.
pub(crate) struct Ctx<'a> {
    /// Where non-expert weight bytes come from: the mapped file, the
    /// store's resident set, or the current layer's unit.
    pub file: &'a dyn WeightBytes,
    /// Holds routed experts (paged under a memory budget).
    pub store: &'a WeightStore,
    pub exact: bool,
    /// Routed experts with f32 activations (see the module doc).
    pub f32_experts: bool,
    /// Sees the input of every weight product (importance matrices).
    pub obs: Option<&'a dyn MatmulObserver>,
    /// Where the routed experts other nodes hold are run.
    pub remote: Option<&'a dyn ExpertDispatch>,
}

impl Ctx<'_> {
    /// `x · wᵀ` for `n` rows.
    pub fn mm(&self, w: &Weight, x: &[f32], n: usize) -> Result<Vec<f32>> {
        self.see(w, x, MatIndex::Whole);
        self.mat(w.mat(self.file), x, n)
    }

    /// Shows the input `x` of a product with (part of) `w` to the observer.
    pub fn see(&self, w: &Weight, x: &[f32], mat: MatIndex) {
        if let Some(o) = self.obs {
            o.observe(&w.info.name, x, w.cols, mat);
        }
    }

    /// `x · mᵀ` for `n` rows, as llama.cpp's `MUL_MAT` in exact mode.
    pub fn mat(&self, m: MatRef<'_>, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let mut out = vec![0f32; n * m.rows];
        if self.exact && repack::eligible(m.ty, m.rows) {
            repack::matmul(m, x, n, &mut out, n - n % 4)?;
        } else if let Some(o) = self
            .exact
            .then(|| ggml_simd::float_matmul(m, x, n, FloatOp::MulMat))
            .flatten()
        {
            out = o;
        } else {
            matmul(m, x, n, &mut out)?;
        }
        Ok(out)
    }

    /// Expert `e` of a stack over `n` rows: quantized dot products by
    /// default, f32 activations with `f32_experts`, ggml's `MUL_MAT_ID`
    /// orders in exact mode. Only that expert's bytes are read.
    pub fn expert(&self, s: &Stack, e: usize, x: &[f32], n: usize) -> Result<Vec<f32>> {
        if e >= s.n {
            return Err(ModelError::Invalid(format!("expert {e} of {}", s.n)));
        }
        if let Some(o) = self.obs {
            let mat = MatIndex::Expert {
                id: e as u32,
                of: s.n as u32,
            };
            o.observe(&s.info.name, x, s.cols, mat);
        }
        let g = self.store.expert(&s.info, e)?;
        let m = s.mat(&g, e);
        let mut out = vec![0f32; n * m.rows];
        if !self.exact {
            if self.f32_experts {
                ops::matmul_dequant_f32(m, x, n, &mut out)?;
            } else {
                matmul(m, x, n, &mut out)?;
            }
        } else if repack::eligible(m.ty, m.rows) {
            repack::matmul(m, x, n, &mut out, 0)?;
        } else if let Some(o) = ggml_simd::float_matmul(m, x, n, FloatOp::MulMatId) {
            out = o;
        } else {
            matmul(m, x, n, &mut out)?;
        }
        Ok(out)
    }
}

/// A loaded deepseek4 model.
pub struct Deepseek4Model {
    pub file: Arc<GgufFile>,
    pub hp: Ds4HParams,
    pub w: Ds4Weights,
    /// Compute as llama.cpp does (see the module doc); off by default.
    pub llama_exact: bool,
    /// Routed experts with f32 activations, each weight row dequantized
    /// as it is used (DeepSeek's reference arithmetic; slower). Off by
    /// default: the experts run as quantized dot products.
    pub f32_experts: bool,
    /// How the indexer prepares queries and keys.
    pub indexer: IndexerRule,
    /// Storage of the cache's compressed entries and indexer keys (new
    /// caches only).
    pub kv_type: KvType,
    /// Sees the input of every weight product (importance matrices).
    pub observer: Option<Arc<dyn MatmulObserver>>,
    /// New caches keep each pass's final streams (for MTP drafting).
    pub keep_hidden: bool,
    /// Where the routed experts other nodes hold are run (expert
    /// parallelism); `None`: all here.
    pub remote: Option<Arc<dyn ExpertDispatch>>,
    /// Where weight bytes come from: the mapped file, or paged within a
    /// memory budget ([`crate::Model::set_memory_budget`]).
    pub store: WeightStore,
}

/// One sequence of a batch: its new tokens, its cache, and whether every
/// new token's logits are wanted (else only the last one's).
pub struct Ds4SeqBatch<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut Ds4Cache,
    pub all_logits: bool,
}

impl Deepseek4Model {
    /// Binds a deepseek4 model from an opened GGUF file.
    pub fn load(file: Arc<GgufFile>) -> Result<Deepseek4Model> {
        let arch = file.get_str("general.architecture")?;
        if arch != hparams::ARCH {
            return Err(ModelError::UnsupportedArch(arch.to_string()));
        }
        let hp = Ds4HParams::from_gguf(&file)?;
        if hp.kinds[..hp.n_layer].contains(&LayerKind::Csa)
            && !(hp.idx_dim.is_power_of_two() && hp.idx_dim % indexer::FP4_BLOCK == 0)
        {
            return Err(crate::error::meta_err(
                &hparams::key("attention.indexer.key_length"),
                format!(
                    "{}: the indexer's Hadamard/FP4 step needs a power of two ≥ {}",
                    hp.idx_dim,
                    indexer::FP4_BLOCK
                ),
            ));
        }
        let w = Ds4Weights::bind(&file, &hp)?;
        Ok(Deepseek4Model {
            store: WeightStore::mapped(file.clone()),
            file,
            hp,
            w,
            llama_exact: false,
            f32_experts: false,
            indexer: IndexerRule::DeepSeek,
            kv_type: KvType::F16,
            observer: None,
            keep_hidden: false,
            remote: None,
        })
    }

    /// llama.cpp's arithmetic and indexer (on) or DeepSeek's definition
    /// (off, the default).
    pub fn set_llama_exact(&mut self, on: bool) {
        self.llama_exact = on;
        self.indexer = if on {
            IndexerRule::Plain
        } else {
            IndexerRule::DeepSeek
        };
    }

    /// Binds the MTP block of another file: ds4's `mtp.0.*` GGUF, which
    /// its trunk files leave out. Every dimension is checked against this
    /// model's; the block replaces any the trunk's file had.
    pub fn attach_mtp(&mut self, file: Arc<GgufFile>) -> Result<()> {
        let probe = format!("{}e_proj.weight", mtp::DS4_PREFIX);
        if file.tensor(&probe).is_none() {
            return Err(ModelError::MissingTensor(format!(
                "{probe} (not a ds4 MTP file)"
            )));
        }
        let mut m = mtp::bind_ds4_mtp(&file, &self.hp)?;
        m.file = Some(file);
        self.w.mtp = Some(Box::new(m));
        Ok(())
    }

    /// An empty cache for up to `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> Ds4Cache {
        let mut c = Ds4Cache::new(&self.hp, capacity, self.kv_type);
        c.keep_hidden = self.keep_hidden;
        c
    }

    /// Cache bytes one more position costs on average (see
    /// [`cache::kv_bytes_per_token`]).
    pub fn kv_bytes_per_token(&self) -> usize {
        cache::kv_bytes_per_token(&self.hp, self.kv_type)
    }

    /// Cache bytes a sequence holds whatever its length (see
    /// [`cache::fixed_kv_bytes`]).
    pub fn fixed_kv_bytes(&self) -> usize {
        cache::fixed_kv_bytes(&self.hp)
    }

    /// Bytes of the weights a forward pass reads (what a memory budget is
    /// held to; the MTP block, which drafting runs, is not counted).
    pub fn weight_bytes(&self) -> u64 {
        crate::store::deepseek4_plan(&self.w, self.hp.n_expert_used).total_bytes()
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            file: self.store.resident(),
            store: &self.store,
            exact: self.llama_exact,
            f32_experts: self.f32_experts,
            obs: self.observer.as_deref(),
            remote: self.remote.as_deref(),
        }
    }

    /// Embeds `tokens` into `n × hc × n_embd` hyper-connection streams
    /// (every stream a copy of the embedding).
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let e = self.hp.n_embd;
        let hc = self.hp.hc_mult;
        let emb = crate::batch::embed_rows(
            &self.w.tok_embd,
            self.store.resident(),
            tokens,
            self.hp.n_vocab,
            e,
        )?;
        let mut x = Vec::with_capacity(emb.len() * hc);
        for row in emb.chunks_exact(e) {
            for _ in 0..hc {
                x.extend_from_slice(row);
            }
        }
        Ok(x)
    }

    /// Runs `layers` over the streams `x` of one or more sequences back to
    /// back: `seqs[i]` owns the rows of its tokens, at positions
    /// `cache.held()..` of its own cache (a truncated cache's pending tokens
    /// come first in `seqs[i].0`). The caller advances the caches
    /// ([`Ds4Cache::advance`] happens in [`Deepseek4Model::forward_batch`])
    /// once every layer has run.
    pub fn forward_layers(
        &self,
        layers: Range<usize>,
        x: &mut [f32],
        seqs: &mut [(&[u32], &mut Ds4Cache)],
    ) -> Result<()> {
        let hp = &self.hp;
        let (e, hc) = (hp.n_embd, hp.hc_mult);
        let n: usize = seqs.iter().map(|s| s.0.len()).sum();
        crate::batch::check_layer_call(x.len(), e * hc, n, &layers, hp.n_layer)?;
        let mut spans = Vec::with_capacity(seqs.len());
        let mut tokens = Vec::with_capacity(n);
        let mut row = 0;
        for (toks, c) in seqs.iter() {
            if c.n_layer() != hp.n_layer {
                return Err(ModelError::Invalid(format!(
                    "cache of {} layers, the model has {}",
                    c.n_layer(),
                    hp.n_layer
                )));
            }
            if c.held() + toks.len() > c.capacity() {
                return Err(ModelError::ContextFull {
                    needed: c.held() + toks.len(),
                    capacity: c.capacity(),
                });
            }
            spans.push(Span {
                row,
                len: toks.len(),
                pos0: c.held(),
            });
            tokens.extend_from_slice(toks);
            row += toks.len();
        }
        let mut caches: Vec<&mut Ds4Cache> = seqs.iter_mut().map(|s| &mut *s.1).collect();
        // A stage's caches hold windows for its own layers only. A short
        // pass is marked so that a cut back into it is exact.
        for (c, sp) in caches.iter_mut().zip(&spans) {
            c.open_layers(layers.clone());
            c.mark_pass(layers.clone(), sp.len);
        }
        let exact = self.llama_exact;
        let rot_main = Rotary::new(&hp.rope_main, hp.n_rot, exact);
        let rot_comp = Rotary::new(&hp.rope_compress, hp.n_rot, exact);
        self.store.begin_pass(n);
        // The first layer's experts, when its router hashes the tokens.
        crate::store::pregate::deepseek4(self, layers.start, x, &tokens);
        for il in layers {
            let l = &self.w.layers[il];
            // Start reading the experts the next layer will (hash routing)
            // or is likely to (learned routing) pick.
            crate::store::pregate::deepseek4(self, il + 1, x, &tokens);
            // This layer's bytes stay held until the iteration ends.
            let lay = self.store.layer(il)?;
            let cx = Ctx {
                file: &lay,
                ..self.ctx()
            };
            let limits = (hp.swiglu_exp[il], hp.swiglu_shexp[il]);
            let rot = (&rot_main, &rot_comp);
            self.run_layer(&cx, l, il, limits, rot, x, &spans, &mut caches, &tokens)?;
        }
        Ok(())
    }

    /// One layer (`l`, at block index `il`) over the streams `x` of the
    /// sequences `spans`, each with its cache: attention, then the MoE,
    /// each between its hyper-connections. `limits`: the SwiGLU clamps of
    /// the routed and shared experts; `rot`: the main and compressed
    /// layers' RoPE.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_layer(
        &self,
        cx: &Ctx<'_>,
        l: &weights::Ds4Layer,
        il: usize,
        limits: (f32, f32),
        rot: (&Rotary, &Rotary),
        x: &mut [f32],
        spans: &[Span],
        caches: &mut [&mut Ds4Cache],
        tokens: &[u32],
    ) -> Result<()> {
        let hp = &self.hp;
        let hc = hp.hc_mult;
        let lx = LayerCx {
            hp,
            il,
            kind: l.kind,
            rot: if l.kind == LayerKind::Sliding {
                rot.0
            } else {
                rot.1
            },
            rule: self.indexer,
        };
        let (mut cur, mix) = hc::pre(cx, &l.hc_attn, x, hc, hp.hc_iters, hp.rms_eps, hp.hc_eps)?;
        norm_rows(&mut cur, &l.attn_norm, hp.rms_eps);
        let a = attention::attention(cx, &lx, &l.attn, &cur, spans, caches)?;
        hc::post(x, &a, &mix, hc);

        let (mut cur, mix) = hc::pre(cx, &l.hc_ffn, x, hc, hp.hc_iters, hp.rms_eps, hp.hc_eps)?;
        norm_rows(&mut cur, &l.ffn_norm, hp.rms_eps);
        let cfg = moe::MoeCfg {
            n_expert: hp.n_expert,
            k: hp.n_expert_used,
            norm: hp.weights_norm,
            scale: hp.weights_scale,
            limit_exp: limits.0,
            limit_shexp: limits.1,
        };
        let m = moe::moe(cx, &cfg, &l.moe, il, &cur, tokens)?;
        hc::post(x, &m, &mix, hc);
        Ok(())
    }

    /// The streams `x` (`m × hc × n_embd`) collapsed by the head's
    /// hyper-connection and normed: `m × n_embd`, what the output reads.
    pub fn final_norm(&self, x: &[f32]) -> Result<Vec<f32>> {
        let hp = &self.hp;
        let mut h = hc::head(
            &self.ctx(),
            &self.w.hc_head,
            x,
            hp.hc_mult,
            hp.rms_eps,
            hp.hc_eps,
        )?;
        norm_rows(&mut h, &self.w.output_norm, hp.rms_eps);
        Ok(h)
    }

    /// The head for the streams `x` (`m × hc × n_embd`): hyper-connection
    /// collapse, final norm, output: `m × n_vocab` logits.
    pub fn logits(&self, x: &[f32]) -> Result<Vec<f32>> {
        let h = self.final_norm(x)?;
        self.ctx().mm(&self.w.output, &h, h.len() / self.hp.n_embd)
    }

    /// Runs `tokens` after what `cache` holds and returns the last token's
    /// logits, or every token's when `all_logits`.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut Ds4Cache,
        all_logits: bool,
    ) -> Result<Vec<f32>> {
        let mut batch = [Ds4SeqBatch {
            tokens,
            cache,
            all_logits,
        }];
        Ok(self.forward_batch(&mut batch)?.pop().unwrap_or_default())
    }

    /// Runs several sequences in one pass: their tokens share every matrix
    /// product and expert, each attends over its own cache. A cache that
    /// was truncated below its state first recomputes its kept tokens.
    pub fn forward_batch(&self, seqs: &mut [Ds4SeqBatch<'_>]) -> Result<Vec<Vec<f32>>> {
        if seqs.iter().any(|s| s.tokens.is_empty()) {
            return Err(ModelError::Invalid(
                "a sequence in the batch has no tokens".into(),
            ));
        }
        let mut runs = Vec::with_capacity(seqs.len());
        for s in seqs.iter() {
            s.cache.reserve(s.tokens.len())?;
            let mut run = s.cache.pending().to_vec();
            run.extend_from_slice(s.tokens);
            runs.push(run);
        }
        let all: Vec<u32> = runs.iter().flatten().copied().collect();
        let mut x = self.embed(&all)?;
        {
            let mut segs: Vec<(&[u32], &mut Ds4Cache)> = runs
                .iter()
                .zip(seqs.iter_mut())
                .map(|(r, s)| (r.as_slice(), &mut *s.cache))
                .collect();
            self.forward_layers(0..self.hp.n_layer, &mut x, &mut segs)?;
        }
        let w = self.hp.n_embd * self.hp.hc_mult;
        let mut rows = Vec::new();
        let mut counts = Vec::with_capacity(seqs.len());
        let mut at = 0;
        for (run, s) in runs.iter().zip(seqs.iter_mut()) {
            let pos0 = s.cache.held();
            s.cache
                .set_hidden(pos0, &x[at * w..(at + run.len()) * w], w);
            s.cache.advance(run);
            let m = if s.all_logits { s.tokens.len() } else { 1 };
            let end = at + run.len();
            rows.extend_from_slice(&x[(end - m) * w..end * w]);
            counts.push(m);
            at = end;
        }
        let logits = self.logits(&rows)?;
        let nv = self.hp.n_vocab;
        let mut out = Vec::with_capacity(counts.len());
        let mut r = 0;
        for m in counts {
            out.push(logits[r * nv..(r + m) * nv].to_vec());
            r += m;
        }
        Ok(out)
    }
}
