//! The forward pass of dense decoder-only transformers (llama, qwen2,
//! qwen3, gemma3): embeddings, a range of blocks, and the output head.
//!
//! The pass is split so that a pipeline stage can run any contiguous range
//! of layers: [`DenseModel::embed`], [`DenseModel::forward_layers`] and
//! [`DenseModel::logits`].

use std::ops::Range;
use std::sync::Arc;

use dwarfstar_gguf::GgufFile;
use dwarfstar_kernels::matmul::matmul_many;
use dwarfstar_kernels::ops::VSumOrder;
use dwarfstar_kernels::quants::kquants::{matmul_tiled_order, tiled_supported};
use dwarfstar_kernels::{matmul, ops};
use rayon::prelude::*;

use crate::arch::{dense_arch, Activation, ArchSpec};
use crate::deepseek2::repack;
use crate::error::{ModelError, Result};
use crate::hparams::HParams;
use crate::kv::{KvCache, KvType};
use crate::observe::{MatIndex, MatmulObserver};
use crate::store::{WeightBytes, WeightStore};
use crate::weights::{DenseWeights, Weight};

/// A loaded dense model: the mapped file, its hyper-parameters and weights.
pub struct DenseModel {
    pub file: Arc<GgufFile>,
    pub spec: &'static ArchSpec,
    pub hp: HParams,
    pub w: DenseWeights,
    /// Sum the products of the weights llama.cpp repacks (Q4_0, Q4_K, Q2_K
    /// on x86) in its repacked kernels' order, so that logits reproduce
    /// llama.cpp's to the last bits (slower; off by default).
    pub llama_exact: bool,
    /// Where weight bytes come from: the mapped file, or paged within a
    /// memory budget ([`crate::Model::set_memory_budget`]).
    pub store: WeightStore,
    /// Sees the input of every weight product (importance matrices).
    pub observer: Option<Arc<dyn MatmulObserver>>,
    /// How new KV caches store their rows (f32 unless set, see
    /// [`DenseModel::set_kv_type`]).
    pub kv_type: KvType,
}

fn add_bias(y: &mut [f32], b: &Option<Vec<f32>>) {
    if let Some(b) = b {
        for row in y.chunks_exact_mut(b.len()) {
            ops::add_assign(row, b);
        }
    }
}

/// Logs the sum of a named intermediate tensor (target
/// `dwarfstar::tensors`, level TRACE), for comparing a forward pass with
/// another engine's op by op.
fn trace_tensor(name: &str, il: usize, x: &[f32]) {
    if tracing::enabled!(target: "dwarfstar::tensors", tracing::Level::TRACE) {
        let s: f64 = x.iter().map(|&v| v as f64).sum();
        if let Some(dir) = std::env::var_os("DWARFSTAR_DUMP_DIR") {
            let b: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
            let _ = std::fs::write(
                std::path::Path::new(&dir).join(format!("{name}-{il}.bin")),
                b,
            );
        }
        let head: Vec<f32> = x.iter().take(3).copied().collect();
        let tail: Vec<f32> = x.iter().rev().take(3).rev().copied().collect();
        tracing::trace!(target: "dwarfstar::tensors", "{name}-{il} sum = {s:.6} first {head:?} last {tail:?}");
    }
}

fn norm_rows(x: &mut [f32], w: &[f32], eps: f32) {
    let n = w.len();
    for row in x.chunks_exact_mut(n) {
        ops::rms_norm(row, w, eps);
    }
}

/// The order attention sums values in for a sequence running `rows` tokens
/// in one pass. llama.cpp (`llama_exact`) uses sgemm for batches and
/// vec_dot for one token; otherwise every pass sums as one token's does, so
/// a position's output does not depend on how many run with it (speculative
/// decoding's verification equals plain decoding).
pub(crate) fn value_order(llama_exact: bool, rows: usize) -> VSumOrder {
    if llama_exact && rows > 1 {
        VSumOrder::Gemm
    } else {
        VSumOrder::VecDot
    }
}

impl DenseModel {
    fn mm(&self, src: &dyn WeightBytes, w: &Weight, x: &[f32], n: usize) -> Result<Vec<f32>> {
        if let Some(o) = &self.observer {
            o.observe(&w.info.name, x, w.cols, MatIndex::Whole);
        }
        let mut out = vec![0f32; n * w.rows];
        if self.llama_exact && repack::eligible(w.ty, w.rows) {
            // llama.cpp runs its GEMM on groups of four rows, GEMV on the rest.
            repack::matmul(w.mat(src), x, n, &mut out, n - n % 4)?;
        } else if self.tiled(w, n) {
            matmul_tiled_order(w.mat(src), x, n, &mut out)?;
        } else {
            matmul(w.mat(src), x, n, &mut out)?;
        }
        Ok(out)
    }

    /// Whether llama.cpp computes this product on its tiled K-quant path
    /// (>= 8 rows, weights not in the repack buffer), whose float order
    /// differs from `vec_dot`'s.
    fn tiled(&self, w: &Weight, n: usize) -> bool {
        self.llama_exact && n >= 8 && tiled_supported(w.ty) && !repack::eligible(w.ty, w.rows)
    }

    /// Several products of the same input (Q/K/V, gate/up) in one parallel
    /// region, the input rounded once per activation type.
    fn mm_many<const N: usize>(
        &self,
        src: &dyn WeightBytes,
        ws: [&Weight; N],
        x: &[f32],
        n: usize,
    ) -> Result<[Vec<f32>; N]> {
        let mut outs: [Vec<f32>; N] = std::array::from_fn(|i| vec![0f32; n * ws[i].rows]);
        // With an observer, each product goes through `mm`, which shows it.
        if self.observer.is_some()
            || (self.llama_exact
                && ws
                    .iter()
                    .any(|w| repack::eligible(w.ty, w.rows) || self.tiled(w, n)))
        {
            for (o, w) in outs.iter_mut().zip(ws) {
                *o = self.mm(src, w, x, n)?;
            }
            return Ok(outs);
        }
        {
            let mut mats: Vec<(dwarfstar_kernels::MatRef<'_>, &mut [f32])> = ws
                .iter()
                .zip(outs.iter_mut())
                .map(|(w, o)| (w.mat(src), o.as_mut_slice()))
                .collect();
            matmul_many(&mut mats, x, n)?;
        }
        Ok(outs)
    }

    /// Binds a dense model from an opened GGUF file.
    pub fn load(file: Arc<GgufFile>) -> Result<DenseModel> {
        let arch = file.get_str("general.architecture")?.to_string();
        let spec = dense_arch(&arch).ok_or(ModelError::UnsupportedArch(arch))?;
        let hp = HParams::from_gguf(&file, spec)?;
        let w = DenseWeights::bind(&file, spec, &hp)?;
        Ok(DenseModel {
            store: WeightStore::mapped(file.clone()),
            file,
            spec,
            hp,
            w,
            llama_exact: false,
            observer: None,
            kv_type: KvType::F32,
        })
    }

    /// An empty KV cache for up to `capacity` positions, of
    /// [`DenseModel::kv_type`].
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        let hp = &self.hp;
        if self.kv_type != KvType::F32 {
            match KvCache::with_type(
                hp.n_layer,
                (hp.k_dim(), hp.head_dim_k),
                (hp.v_dim(), hp.head_dim_v),
                capacity,
                self.kv_type,
            ) {
                Ok(c) => return c,
                // set_kv_type checked the heads; never reached.
                Err(e) => tracing::warn!("{e}; using an f32 KV cache"),
            }
        }
        KvCache::new(hp.n_layer, hp.k_dim(), hp.v_dim(), capacity)
    }

    /// Makes new caches store rows as `ty`; an error when this model's
    /// heads are not whole blocks of it.
    pub fn set_kv_type(&mut self, ty: KvType) -> Result<()> {
        ty.check_heads(self.hp.head_dim_k, self.hp.head_dim_v)?;
        self.kv_type = ty;
        Ok(())
    }

    /// Cache bytes one position costs.
    pub fn kv_bytes_per_token(&self) -> usize {
        let row = |d: usize| self.kv_type.row_bytes(d).unwrap_or(d * 4);
        self.hp.n_layer * (row(self.hp.k_dim()) + row(self.hp.v_dim()))
    }

    /// Embeds `tokens` into `n × n_embd` hidden states.
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let e = self.hp.n_embd;
        let mut x = crate::batch::embed_rows(
            &self.w.tok_embd,
            self.store.resident(),
            tokens,
            self.hp.n_vocab,
            e,
        )?;
        if self.spec.scale_embeddings {
            let s = (e as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= s);
        }
        Ok(x)
    }

    /// Runs `layers` over `x`: the hidden rows of one or more sequences,
    /// concatenated (`seqs[i]` owns the next `seqs[i].0` rows, at positions
    /// `kv.len()..` of its own cache). Keys and values are written into each
    /// cache; the caller advances the caches once every layer has run.
    pub fn forward_layers(
        &self,
        layers: Range<usize>,
        x: &mut [f32],
        seqs: &mut [(usize, &mut KvCache)],
    ) -> Result<()> {
        let e = self.hp.n_embd;
        let n: usize = seqs.iter().map(|s| s.0).sum();
        crate::batch::check_layer_call(x.len(), e, n, &layers, self.hp.n_layer)?;
        self.store.begin_pass(n);
        for (k, kv) in seqs.iter() {
            kv.reserve(*k)?;
        }
        for il in layers {
            self.layer(il, x, n, seqs)?;
        }
        Ok(())
    }

    fn layer(
        &self,
        il: usize,
        x: &mut [f32],
        n: usize,
        seqs: &mut [(usize, &mut KvCache)],
    ) -> Result<()> {
        let hp = &self.hp;
        let l = &self.w.layers[il];
        // This layer's bytes stay held until it returns.
        let src = &self.store.layer(il)?;

        let mut cur = x.to_vec();
        norm_rows(&mut cur, &l.attn_norm, hp.rms_eps);
        trace_tensor("attn_norm", il, &cur);
        let [mut q, mut k, mut v] = self.mm_many(src, [&l.wq, &l.wk, &l.wv], &cur, n)?;
        trace_tensor("Qcur", il, &q);
        add_bias(&mut v, &l.bv);
        add_bias(&mut q, &l.bq);
        add_bias(&mut k, &l.bk);
        if let Some(w) = &l.q_norm {
            norm_rows(&mut q, w, hp.rms_eps);
        }
        if let Some(w) = &l.k_norm {
            norm_rows(&mut k, w, hp.rms_eps);
        }
        let rope = hp.rope_for(il);
        let mut cs = Vec::new();
        let (qd, kd, vd) = (hp.q_dim(), hp.k_dim(), hp.v_dim());
        let mut row = 0;
        // Per sequence: rotate at its own positions, append to its cache.
        let mut spans = Vec::with_capacity(seqs.len());
        for (cnt, kv) in seqs.iter_mut() {
            let pos0 = kv.len();
            for t in row..row + *cnt {
                rope.cos_sin((pos0 + t - row) as i64, &mut cs);
                rope.apply(&mut q[t * qd..(t + 1) * qd], hp.head_dim_k, &cs);
                rope.apply(&mut k[t * kd..(t + 1) * kd], hp.head_dim_k, &cs);
            }
            kv.write(
                il,
                pos0,
                &k[row * kd..(row + *cnt) * kd],
                &v[row * vd..(row + *cnt) * vd],
            );
            spans.push((row, *cnt, pos0));
            row += *cnt;
        }

        let window = if hp.swa_layers[il] { hp.n_swa } else { 0 };
        let caches: Vec<&KvCache> = seqs.iter().map(|s| &*s.1).collect();
        trace_tensor("Qrope", il, &q);
        trace_tensor("Krope", il, &k);
        trace_tensor("Vcur", il, &v);
        let attn = self.attention(&q, &caches, &spans, il, n, window);
        trace_tensor("kqv_out", il, &attn);
        let mut o = self.mm(src, &l.wo, &attn, n)?;
        trace_tensor("attn_out", il, &o);
        if let Some(w) = &l.attn_post_norm {
            norm_rows(&mut o, w, hp.rms_eps);
        }
        ops::add_assign(x, &o);

        let mut cur = x.to_vec();
        norm_rows(&mut cur, &l.ffn_norm, hp.rms_eps);
        let [mut g, u] = self.mm_many(src, [&l.gate, &l.up], &cur, n)?;
        match self.spec.activation {
            Activation::SwiGlu => ops::swiglu(&mut g, &u),
            Activation::GeGlu => ops::geglu(&mut g, &u),
        }
        trace_tensor("ffn_act", il, &g);
        let mut d = self.mm(src, &l.down, &g, n)?;
        trace_tensor("ffn_out", il, &d);
        if let Some(w) = &l.ffn_post_norm {
            norm_rows(&mut d, w, hp.rms_eps);
        }
        ops::add_assign(x, &d);
        trace_tensor("l_out", il, x);
        Ok(())
    }

    /// Causal attention of every query row over its own sequence's cache of
    /// layer `il`. `spans[i] = (first row, rows, first position)` of
    /// sequence `i`; `window > 0` limits a query to its last `window`
    /// positions.
    fn attention(
        &self,
        q: &[f32],
        caches: &[&KvCache],
        spans: &[(usize, usize, usize)],
        il: usize,
        n: usize,
        window: usize,
    ) -> Vec<f32> {
        let hp = &self.hp;
        if caches.iter().any(|c| c.ty() != KvType::F32) {
            return crate::kv_attn::attention(
                hp,
                q,
                caches,
                spans,
                il,
                n,
                window,
                self.llama_exact,
            );
        }
        let (dk, dv) = (hp.head_dim_k, hp.head_dim_v);
        let group = hp.n_head / hp.n_head_kv;
        let scale = hp.attn_scale;
        let mut out = vec![0f32; n * hp.n_head * dv];
        // Prompt batches: tiled, the same bits (llama.cpp's batch order
        // under `llama_exact` is the one-row path's with sgemm's lanes).
        let tiled = |rows: usize| !self.llama_exact && rows >= crate::attn_tiled::MIN_ROWS;
        if spans.iter().any(|sp| tiled(sp.1)) {
            crate::attn_tiled::attention(hp, q, caches, spans, il, window, &mut out);
        }
        out.par_chunks_mut(dv)
            .enumerate()
            .with_min_len(2)
            .for_each_init(Vec::new, |acc, (i, o)| {
                let (t, h) = (i / hp.n_head, i % hp.n_head);
                let s = spans.partition_point(|sp| sp.0 + sp.1 <= t);
                let (row0, rows, pos0) = spans[s];
                if tiled(rows) {
                    return;
                }
                let kv = caches[s];
                let (kd, vd) = (kv.k_dim(), kv.v_dim());
                let (lk, lv) = (&kv.layers[il].k, &kv.layers[il].v);
                let g = h / group;
                let p = pos0 + t - row0;
                let lo = if window > 0 {
                    (p + 1).saturating_sub(window)
                } else {
                    0
                };
                let qh = &q[t * hp.q_dim() + h * dk..t * hp.q_dim() + (h + 1) * dk];
                let mut sc: Vec<f32> = (lo..=p)
                    .map(|j| ops::dot_kq(qh, &lk[j * kd + g * dk..j * kd + (g + 1) * dk]) * scale)
                    .collect();
                ops::softmax_aligned(&mut sc, lo);
                let order = value_order(self.llama_exact, rows);
                let v = ops::ValueRows::f32(lv, vd, g * dv, dv);
                ops::weighted_sum_rows(&sc, lo, &v, o, order, acc);
            });
        out
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
        let mut out = self.mm(self.store.resident(), &self.w.output, &h, x.len() / e)?;
        if let Some(c) = self.hp.final_softcap {
            out.iter_mut().for_each(|v| *v = (*v / c).tanh() * c);
        }
        Ok(out)
    }

    /// Runs `tokens` through the whole model after what `kv` holds and
    /// returns the logits of the last token, or of every token when
    /// `all_logits`.
    pub fn forward(&self, tokens: &[u32], kv: &mut KvCache, all_logits: bool) -> Result<Vec<f32>> {
        let mut batch = [SeqBatch {
            tokens,
            kv,
            all_logits,
        }];
        Ok(self.forward_batch(&mut batch)?.pop().unwrap_or_default())
    }

    /// Runs several sequences in one pass: their tokens share every matrix
    /// product (continuous batching), each attends over its own cache.
    /// Returns, per sequence, its last token's logits or all of them.
    pub fn forward_batch(&self, seqs: &mut [SeqBatch<'_>]) -> Result<Vec<Vec<f32>>> {
        let tokens: Vec<u32> = seqs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        if seqs.iter().any(|s| s.tokens.is_empty()) {
            return Err(ModelError::Invalid(
                "a sequence in the batch has no tokens".into(),
            ));
        }
        let mut x = self.embed(&tokens)?;
        {
            let mut segs: Vec<(usize, &mut KvCache)> = seqs
                .iter_mut()
                .map(|s| (s.tokens.len(), &mut *s.kv))
                .collect();
            self.forward_layers(0..self.hp.n_layer, &mut x, &mut segs)?;
        }
        for s in seqs.iter_mut() {
            s.kv.advance(s.tokens.len());
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

/// One sequence's share of a batched forward pass.
pub struct SeqBatch<'a> {
    pub tokens: &'a [u32],
    pub kv: &'a mut KvCache,
    pub all_logits: bool,
}
