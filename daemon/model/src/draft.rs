//! Draft tokens for speculative decoding: the [`Drafter`] interface the
//! scheduler asks for proposals, and [`ModelDrafter`], a smaller model of
//! the same vocabulary (a lower-bit quantization of the target, say) that
//! proposes its most likely continuation.
//!
//! A drafter keeps one state per sequence, keyed by the caller's id. Each
//! call gives the sequence's whole history; the drafter keeps the part of
//! its state that agrees with it (what the target accepted), runs the
//! tokens it has not seen in one batched pass, then proposes one token per
//! further pass. Proposals are greedy (the draft's argmax), which is what
//! [`crate::Sampler::verify`]'s acceptance rule assumes.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use dwarfstar_gguf::GgufFile;

use crate::error::{ModelError, Result};
use crate::sampler::argmax;
use crate::{Model, SeqState};

/// One sequence's request for drafts.
#[derive(Clone, Copy, Debug)]
pub struct DraftAsk<'a> {
    /// The caller's id of the sequence (states are kept per id).
    pub seq: u64,
    /// Every token of the sequence so far (prompt and generated).
    pub history: &'a [u32],
    /// Tokens wanted (at least 1).
    pub k: usize,
}

/// What the target computed for one sequence in a step, shown to a
/// drafter that drafts from the target's hidden state (MTP).
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    pub seq: u64,
    /// Position of the first row of `hidden`.
    pub pos0: usize,
    /// The target's final hidden rows of the positions it holds from
    /// `pos0` on (the step's kept positions).
    pub hidden: &'a [f32],
    /// Every token of the sequence so far.
    pub history: &'a [u32],
}

/// Proposes the tokens a target model is likely to produce next.
pub trait Drafter: Send {
    /// Up to `ask.k` proposed tokens per ask, in order.
    fn draft(&mut self, asks: &[DraftAsk<'_>]) -> Result<Vec<Vec<u32>>>;
    /// The sequence `seq` ended: drop its state.
    fn forget(&mut self, seq: u64);
    /// Whether [`Drafter::observe`] wants the target's hidden rows after
    /// each step.
    fn wants_hidden(&self) -> bool {
        false
    }
    /// The target's hidden rows of a step's sequences, once the step's
    /// drafts are verified and cut back.
    fn observe(&mut self, _seen: &[Observed<'_>]) -> Result<()> {
        Ok(())
    }
    /// A copy of `seq`'s drafting state, kept with its target state in a
    /// prefix cache where a later sequence starting from that prefix needs
    /// it to draft ([`Drafter::restore`]); None where the drafter rebuilds
    /// what it needs from the tokens alone.
    fn snapshot(&self, _seq: u64) -> Option<Box<dyn Any + Send>> {
        None
    }
    /// The new sequence `seq` starts from a cached prefix of `len`
    /// positions whose drafting state [`Drafter::snapshot`] gave.
    fn restore(&mut self, _seq: u64, _saved: &(dyn Any + Send), _len: usize) {}
}

/// A draft model's state of one sequence: the tokens it has run, and their
/// cache.
struct Drafted {
    tokens: Vec<u32>,
    state: SeqState,
}

/// Drafts with a smaller model of the same vocabulary. See the module doc.
pub struct ModelDrafter {
    model: Arc<Model>,
    capacity: usize,
    seqs: HashMap<u64, Drafted>,
}

impl ModelDrafter {
    /// A drafter over `model`, whose sequences hold up to `capacity`
    /// positions (the target's context).
    pub fn new(model: Arc<Model>, capacity: usize) -> ModelDrafter {
        ModelDrafter {
            model,
            capacity: capacity.max(2),
            seqs: HashMap::new(),
        }
    }
}

impl Drafter for ModelDrafter {
    fn draft(&mut self, asks: &[DraftAsk<'_>]) -> Result<Vec<Vec<u32>>> {
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); asks.len()];
        // Catch up: keep what agrees with the history, run the rest.
        let mut states: Vec<Drafted> = Vec::with_capacity(asks.len());
        let mut inputs: Vec<Vec<u32>> = Vec::with_capacity(asks.len());
        for a in asks {
            if a.history.is_empty() || a.history.len() + a.k > self.capacity {
                return Err(ModelError::ContextFull {
                    needed: a.history.len() + a.k,
                    capacity: self.capacity,
                });
            }
            let mut d = self.seqs.remove(&a.seq).unwrap_or_else(|| Drafted {
                tokens: Vec::new(),
                state: self.model.new_state(self.capacity),
            });
            // At least the last token runs: it gives the logits.
            let keep = common_prefix(&d.tokens, a.history).min(a.history.len() - 1);
            d.state.truncate(keep);
            d.tokens.truncate(keep);
            inputs.push(a.history[keep..].to_vec());
            states.push(d);
        }
        let result = self.rounds(asks, &mut states, inputs, &mut out);
        if result.is_err() {
            // Half-run states are dropped; the next call starts over.
            return result.map(|_| out);
        }
        for (a, d) in asks.iter().zip(states) {
            self.seqs.insert(a.seq, d);
        }
        Ok(out)
    }

    fn forget(&mut self, seq: u64) {
        self.seqs.remove(&seq);
    }
}

impl ModelDrafter {
    /// Runs the catch-up pass, then one pass per further proposal, every
    /// sequence still wanting tokens together.
    fn rounds(
        &self,
        asks: &[DraftAsk<'_>],
        states: &mut [Drafted],
        mut inputs: Vec<Vec<u32>>,
        out: &mut [Vec<u32>],
    ) -> Result<()> {
        let kmax = asks.iter().map(|a| a.k).max().unwrap_or(0);
        for round in 0..kmax {
            let live: Vec<usize> = (0..asks.len()).filter(|&i| asks[i].k > round).collect();
            let logits = {
                let mut items: Vec<(&[u32], &mut SeqState, bool)> = states
                    .iter_mut()
                    .zip(&inputs)
                    .zip(asks)
                    .filter(|(_, a)| a.k > round)
                    .map(|((d, input), _)| (input.as_slice(), &mut d.state, false))
                    .collect();
                self.model.forward_batch(&mut items)?
            };
            for (&i, l) in live.iter().zip(logits) {
                let t = argmax(&l);
                states[i].tokens.extend_from_slice(&inputs[i]);
                out[i].push(t);
                inputs[i] = vec![t];
            }
        }
        Ok(())
    }
}

/// Length of the common prefix of `a` and `b`.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Refuses a draft model whose vocabulary is not the target's: drafts are
/// token ids, so both must number the same tokens the same way.
pub fn check_vocab(target: &GgufFile, draft: &GgufFile) -> Result<()> {
    const KEY: &str = "tokenizer.ggml.tokens";
    let t = target.opt_str_array(KEY)?;
    let d = draft.opt_str_array(KEY)?;
    let (Some(t), Some(d)) = (t, d) else {
        return Err(ModelError::Invalid(format!(
            "the draft model's vocabulary cannot be checked: {KEY} is missing from the {} file",
            if t.is_none() { "target" } else { "draft" }
        )));
    };
    if t.len() != d.len() {
        return Err(ModelError::Invalid(format!(
            "the draft model has {} tokens in its vocabulary, the target {}: a draft must share \
             the target's vocabulary",
            d.len(),
            t.len()
        )));
    }
    if let Some(i) = t.iter().zip(d).position(|(a, b)| a != b) {
        return Err(ModelError::Invalid(format!(
            "the draft model's token {i} is {:?}, the target's {:?}: a draft must share the \
             target's vocabulary",
            d[i], t[i]
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::common_prefix;

    #[test]
    fn common_prefix_stops_at_the_first_difference() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
    }
}
