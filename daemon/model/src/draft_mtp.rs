//! [`MtpDrafter`]: drafts with DeepSeek V4's own MTP block
//! ([`crate::deepseek4::mtp`]), from the target's hidden state.
//!
//! After every step the scheduler shows the drafter the target's final
//! hyper-connection streams of the positions the step kept
//! ([`Drafter::observe`]). For each position whose next token is known the
//! block runs once (its own cache follows the trunk's positions), and the
//! last one's logits give the first draft: the token after the one just
//! sampled. Further drafts chain: the block's output streams stand in for
//! the trunk's at the next position, with the previous draft as its token;
//! those positions are taken back afterwards (the block's cache is restored
//! to the verified positions), so the next observation continues from what
//! the target accepted.
//!
//! A sequence the drafter first sees past position 0 (its start came from
//! a cached prefix) has no MTP state for the positions before: it is not
//! drafted for.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use crate::deepseek4::{Deepseek4Model, Ds4Cache, MtpSeq};
use crate::draft::{DraftAsk, Drafter, Observed};
use crate::error::{ModelError, Result};
use crate::sampler::argmax;
use crate::Model;

/// One sequence's MTP state.
#[derive(Clone)]
struct MtpState {
    cache: Ds4Cache,
    /// The block's output streams at its last position, and the draft
    /// they gave.
    last: Option<(Vec<f32>, u32)>,
    /// Positions before the first one seen are missing: no drafts.
    lost: bool,
}

/// Drafts with the target's MTP block. See the module doc.
pub struct MtpDrafter {
    model: Arc<Model>,
    capacity: usize,
    seqs: HashMap<u64, MtpState>,
}

impl MtpDrafter {
    /// A drafter over `model`'s MTP block, for sequences of up to
    /// `capacity` positions. It drafts from the target's final hidden
    /// rows, which [`Drafter::observe`] must be shown: a model running
    /// alone keeps them with [`Deepseek4Model::keep_hidden`], a split one
    /// gets them back from its last stage.
    pub fn new(model: Arc<Model>, capacity: usize) -> Result<MtpDrafter> {
        let d = ds4(&model)?;
        if !d.has_mtp() {
            return Err(ModelError::Invalid(
                "the model has no MTP block to draft with".into(),
            ));
        }
        d.mtp_cache(capacity)?;
        Ok(MtpDrafter {
            model,
            capacity,
            seqs: HashMap::new(),
        })
    }

    fn fresh(&self) -> Result<MtpState> {
        Ok(MtpState {
            cache: ds4(&self.model)?.mtp_cache(self.capacity)?,
            last: None,
            lost: false,
        })
    }
}

fn ds4(m: &Model) -> Result<&Deepseek4Model> {
    match m {
        Model::Deepseek4(d) => Ok(d),
        _ => Err(ModelError::Invalid(format!(
            "MTP drafting needs a deepseek4 model, not {}",
            m.arch()
        ))),
    }
}

impl Drafter for MtpDrafter {
    fn wants_hidden(&self) -> bool {
        true
    }

    fn observe(&mut self, seen: &[Observed<'_>]) -> Result<()> {
        let d = ds4(&self.model)?;
        let w = d.hp.n_embd * d.hp.hc_mult;
        let mut runs: Vec<(u64, MtpState, &[f32], &[u32])> = Vec::new();
        for o in seen {
            let mut st = match self.seqs.remove(&o.seq) {
                Some(s) => s,
                None => {
                    let mut s = self.fresh()?;
                    s.lost = o.pos0 > 0;
                    s
                }
            };
            // Positions whose next token is known.
            let n = (o.history.len().saturating_sub(1))
                .saturating_sub(o.pos0)
                .min(o.hidden.len() / w);
            if st.lost || n == 0 {
                self.seqs.insert(o.seq, st);
                continue;
            }
            if st.cache.len() > o.pos0 {
                st.cache.truncate(o.pos0);
                if !st.cache.pending().is_empty() {
                    // Cut below what the block's cache can go back to.
                    st = self.fresh()?;
                    st.lost = o.pos0 > 0;
                }
            }
            if st.lost || st.cache.len() < o.pos0 {
                st.lost = true;
                self.seqs.insert(o.seq, st);
                continue;
            }
            let hidden = &o.hidden[..n * w];
            let next = &o.history[o.pos0 + 1..o.pos0 + 1 + n];
            runs.push((o.seq, st, hidden, next));
        }
        if runs.is_empty() {
            return Ok(());
        }
        let outs = {
            let mut batch: Vec<MtpSeq> = runs
                .iter_mut()
                .map(|(_, st, hidden, next)| MtpSeq {
                    hidden,
                    next,
                    cache: &mut st.cache,
                })
                .collect();
            d.mtp_forward(&mut batch)
        };
        // A failed pass leaves its states half written: they start over.
        let outs = outs?;
        for ((seq, mut st, _, _), o) in runs.into_iter().zip(outs) {
            let t = argmax(&o.logits);
            st.last = Some((o.streams, t));
            self.seqs.insert(seq, st);
        }
        Ok(())
    }

    fn draft(&mut self, asks: &[DraftAsk<'_>]) -> Result<Vec<Vec<u32>>> {
        let d = ds4(&self.model)?;
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); asks.len()];
        // Sequences whose block state ends where the target's does.
        let mut chain: Vec<(usize, Ds4Cache, Vec<f32>)> = Vec::new();
        for (i, a) in asks.iter().enumerate() {
            let Some(st) = self.seqs.get(&a.seq) else {
                continue;
            };
            let Some((streams, t)) = &st.last else {
                continue;
            };
            if st.lost || a.k == 0 || st.cache.len() + 1 != a.history.len() {
                continue;
            }
            out[i].push(*t);
            if a.k > 1 {
                // A copy runs the chain; the state itself stays at the
                // verified positions.
                chain.push((i, st.cache.clone(), streams.clone()));
            }
        }
        let kmax = asks.iter().map(|a| a.k).max().unwrap_or(0);
        for round in 1..kmax {
            chain.retain(|(i, _, _)| asks[*i].k > round);
            if chain.is_empty() {
                break;
            }
            let prev: Vec<[u32; 1]> = chain.iter().map(|(i, _, _)| [out[*i][round - 1]]).collect();
            let outs = {
                let mut batch: Vec<MtpSeq> = chain
                    .iter_mut()
                    .zip(&prev)
                    .map(|((_, cache, streams), next)| MtpSeq {
                        hidden: streams,
                        next,
                        cache,
                    })
                    .collect();
                d.mtp_forward(&mut batch)
            };
            // Out of room (or any failure): the drafts so far stand.
            let Ok(outs) = outs else { break };
            for ((i, _, streams), o) in chain.iter_mut().zip(outs) {
                out[*i].push(argmax(&o.logits));
                *streams = o.streams;
            }
        }
        Ok(out)
    }

    fn forget(&mut self, seq: u64) {
        self.seqs.remove(&seq);
    }

    /// The block's state goes with the target's into the prefix cache: a
    /// sequence starting from that prefix drafts from its first step.
    fn snapshot(&self, seq: u64) -> Option<Box<dyn Any + Send>> {
        let st = self.seqs.get(&seq).filter(|st| !st.lost)?;
        Some(Box::new(st.clone()))
    }

    fn restore(&mut self, seq: u64, saved: &(dyn Any + Send), len: usize) {
        let Some(st) = saved.downcast_ref::<MtpState>() else {
            return;
        };
        if st.cache.len() < len {
            return;
        }
        let mut st = st.clone();
        st.cache.truncate(len);
        st.last = None;
        // Cut below what the block's cache can go back to: no drafts.
        st.lost = !st.cache.pending().is_empty();
        self.seqs.insert(seq, st);
    }
}
