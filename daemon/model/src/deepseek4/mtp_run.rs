//! Running the MTP block ([`super::mtp`]) as DeepSeek's reference defines
//! it: for each position `q`, the embedding of the token that follows it
//! (`enorm`) and the trunk's final hyper-connection streams at `q`
//! (`hnorm`, each stream alone) are projected (`e_proj` + `h_proj`, the
//! embedding's projection added to every stream), run through the block
//! (attention over its own cache, MoE), then the hyper-connection head,
//! the norm and the output head: logits for the token after next.
//!
//! The block's cache is a [`Ds4Cache`] of its own, holding the block's
//! layer only (at index `block`); it marks its passes like the trunk's.

use std::sync::Arc;

use dwarfstar_gguf::GgufFile;

use crate::error::{ModelError, Result};
use crate::store::{WeightBytes, WeightStore};

use super::attention::{norm_rows, Span};
use super::cache::Ds4Cache;
use super::mtp::{EhProj, MtpWeights};
use super::rope::Rotary;
use super::{hc, Ctx, Deepseek4Model};

/// One sequence's input to the MTP block: `n` positions from its cache's
/// held state, each with the trunk's (or the block's own, when chaining)
/// final streams (`n × hc × n_embd`) and the token that follows it.
pub struct MtpSeq<'a> {
    pub hidden: &'a [f32],
    pub next: &'a [u32],
    pub cache: &'a mut Ds4Cache,
}

/// What the block gives back for one sequence: its output streams at the
/// last position (to chain a further draft on) and that position's logits.
pub struct MtpOut {
    pub streams: Vec<f32>,
    pub logits: Vec<f32>,
}

impl Deepseek4Model {
    fn mtp_weights(&self) -> Result<&MtpWeights> {
        self.w
            .mtp
            .as_deref()
            .ok_or_else(|| ModelError::Invalid("the model has no MTP block".into()))
    }

    /// Whether the model holds an MTP block.
    pub fn has_mtp(&self) -> bool {
        self.w.mtp.is_some()
    }

    /// An empty cache for the MTP block, up to `capacity` positions.
    pub fn mtp_cache(&self, capacity: usize) -> Result<Ds4Cache> {
        let m = self.mtp_weights()?;
        let mut hp = self.hp.clone();
        if hp.kinds.len() <= m.block {
            return Err(ModelError::Invalid(format!(
                "no layer kind for the MTP block {}",
                m.block
            )));
        }
        hp.n_layer = m.block + 1;
        Ok(Ds4Cache::new(&hp, capacity, self.kv_type))
    }

    /// Runs the MTP block over every sequence of `seqs` in one pass (see
    /// the module doc) and advances their caches.
    pub fn mtp_forward(&self, seqs: &mut [MtpSeq<'_>]) -> Result<Vec<MtpOut>> {
        let m = self.mtp_weights()?;
        let hp = &self.hp;
        let (e, hc) = (hp.n_embd, hp.hc_mult);
        let w = e * hc;
        let il = m.block;
        let mut spans = Vec::with_capacity(seqs.len());
        let mut tokens = Vec::new();
        let mut hidden = Vec::new();
        for s in seqs.iter() {
            let n = s.next.len();
            if n == 0 || s.hidden.len() != n * w {
                return Err(ModelError::Invalid(format!(
                    "MTP input of {} tokens and {} stream values",
                    n,
                    s.hidden.len()
                )));
            }
            if s.cache.n_layer() != il + 1 || !s.cache.pending().is_empty() {
                return Err(ModelError::Invalid(
                    "not an MTP cache, or one cut below its state".into(),
                ));
            }
            s.cache.reserve(n)?;
            spans.push(Span {
                row: tokens.len(),
                len: n,
                pos0: s.cache.held(),
            });
            tokens.extend_from_slice(s.next);
            hidden.extend_from_slice(s.hidden);
        }
        let n = tokens.len();
        // The block's weights: its own file (ds4's MTP GGUF) or the trunk's.
        let file: Arc<GgufFile> = m.file.clone().unwrap_or_else(|| self.file.clone());
        let store = WeightStore::mapped(file.clone());
        let cx = Ctx {
            file: &*file as &dyn WeightBytes,
            store: &store,
            exact: self.llama_exact,
            f32_experts: self.f32_experts,
            obs: None,
            remote: None,
        };
        let trunk = self.ctx();

        let mut emb = match &m.embed_tokens {
            Some(t) => crate::batch::embed_rows(t, &*file, &tokens, hp.n_vocab, e)?,
            None => crate::batch::embed_rows(
                &self.w.tok_embd,
                self.store.resident(),
                &tokens,
                hp.n_vocab,
                e,
            )?,
        };
        norm_rows(&mut emb, &m.enorm, hp.rms_eps);
        norm_rows(&mut hidden, &m.hnorm, hp.rms_eps);
        let mut x = match &m.eh_proj {
            EhProj::Joint(eh) => {
                // [enorm(e) ‖ hnorm(h_s)] for every stream s.
                let mut cat = Vec::with_capacity(n * hc * 2 * e);
                for (er, hr) in emb.chunks_exact(e).zip(hidden.chunks_exact(w)) {
                    for hs in hr.chunks_exact(e) {
                        cat.extend_from_slice(er);
                        cat.extend_from_slice(hs);
                    }
                }
                cx.mm(eh, &cat, n * hc)?
            }
            EhProj::Split { e: ep, h: hp_ } => {
                let pe = cx.mm(ep, &emb, n)?;
                let mut ph = cx.mm(hp_, &hidden, n * hc)?;
                for (row, er) in ph.chunks_exact_mut(w).zip(pe.chunks_exact(e)) {
                    for hs in row.chunks_exact_mut(e) {
                        hs.iter_mut().zip(er).for_each(|(a, b)| *a += b);
                    }
                }
                ph
            }
        };

        let mut caches: Vec<&mut Ds4Cache> = seqs.iter_mut().map(|s| &mut *s.cache).collect();
        for (c, sp) in caches.iter_mut().zip(&spans) {
            c.open_layers(il..il + 1);
            c.mark_pass(il..il + 1, sp.len);
        }
        let exact = self.llama_exact;
        let rot_main = Rotary::new(&hp.rope_main, hp.n_rot, exact);
        let rot_comp = Rotary::new(&hp.rope_compress, hp.n_rot, exact);
        let last = |v: &[f32]| v.last().copied().unwrap_or(10.0);
        let limits = (
            hp.swiglu_exp
                .get(il)
                .copied()
                .unwrap_or(last(&hp.swiglu_exp)),
            hp.swiglu_shexp
                .get(il)
                .copied()
                .unwrap_or(last(&hp.swiglu_shexp)),
        );
        self.run_layer(
            &cx,
            &m.layer,
            il,
            limits,
            (&rot_main, &rot_comp),
            &mut x,
            &spans,
            &mut caches,
            &tokens,
        )?;
        let mut rows = Vec::with_capacity(spans.len() * w);
        for (sp, c) in spans.iter().zip(caches.iter_mut()) {
            c.advance(&tokens[sp.row..sp.row + sp.len]);
            let end = sp.row + sp.len;
            rows.extend_from_slice(&x[(end - 1) * w..end * w]);
        }
        drop(caches);

        let hcw = m.hc_head.as_ref().unwrap_or(&self.w.hc_head);
        let hcx = if m.hc_head.is_some() { &cx } else { &trunk };
        let mut h = hc::head(hcx, hcw, &rows, hc, hp.rms_eps, hp.hc_eps)?;
        norm_rows(
            &mut h,
            m.shared_head_norm.as_ref().unwrap_or(&self.w.output_norm),
            hp.rms_eps,
        );
        let logits = match &m.head {
            Some(o) => cx.mm(o, &h, spans.len())?,
            None => trunk.mm(&self.w.output, &h, spans.len())?,
        };
        let nv = hp.n_vocab;
        Ok(rows
            .chunks_exact(w)
            .zip(logits.chunks_exact(nv))
            .map(|(s, l)| MtpOut {
                streams: s.to_vec(),
                logits: l.to_vec(),
            })
            .collect())
    }
}
