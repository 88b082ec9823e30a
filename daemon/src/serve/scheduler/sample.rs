//! Sampling a sequence's next token: OpenAI's penalties, a grammar's mask,
//! the sampler's draw or a draft's acceptance test, the token's logprobs
//! when asked; checking a step's drafts; and what ends a sequence.

use std::collections::HashMap;

use dwarfstar_model::Verdict;

use super::{Backend, Event, Finish, Seq};
use crate::serve::logprobs;

/// What ends a sequence.
pub(super) struct Ends<'a> {
    pub(super) eog: &'a [bool],
    pub(super) ctx_size: usize,
}

impl Ends<'_> {
    /// Appends `tok` to `s`, sends it to the request, and ends `s` when it
    /// is the last one. Whether it was.
    pub(super) fn emit<S>(&self, s: &mut Seq<S>, tok: u32) -> bool {
        s.history.push(tok);
        s.n_gen += 1;
        if let Some(c) = s.req.constraint.as_mut() {
            c.accept(tok);
        }
        if s.req.presence_penalty != 0.0 || s.req.frequency_penalty != 0.0 {
            *s.counts.entry(tok).or_insert(0) += 1;
        }
        if let Some(lp) = s.lp.take() {
            let _ = s.req.events.send(Event::Logprobs(lp));
        }
        let _ = s.req.events.send(Event::Token(tok));
        let eog = self.eog.get(tok as usize).copied().unwrap_or(false);
        let finish = if eog && (!s.req.ignore_eos || s.req.constraint.is_some()) {
            Some(Finish::Stop)
        } else if s.n_gen >= s.req.max_tokens || s.history.len() > self.ctx_size {
            Some(Finish::Length)
        } else {
            None
        };
        if let Some(f) = finish {
            let _ = s.req.events.send(Event::Done(f));
            s.ended = true;
        }
        s.ended
    }
}

/// [`pick`], keeping the token's logprobs (from the raw logits) in `s.lp`
/// when the request asks for them.
pub(super) fn sample<S>(s: &mut Seq<S>, l: &mut [f32], draft: Option<u32>) -> (u32, bool) {
    let raw = s.req.logprobs.map(|k| (k, l.to_vec()));
    let r = pick(s, l, draft);
    if let Some((k, raw)) = raw {
        s.lp = Some(logprobs::of(&raw, r.0, k));
    }
    r
}

/// The next token from one position's logits `l` (penalised by what `s`
/// generated so far), or, given the `draft` for that position, the
/// acceptance test: the token and whether it is the draft.
fn pick<S>(s: &mut Seq<S>, l: &mut [f32], draft: Option<u32>) -> (u32, bool) {
    penalize(
        l,
        &s.counts,
        s.req.presence_penalty,
        s.req.frequency_penalty,
    );
    if let Some(c) = &s.req.constraint {
        // The draw first, the mask only when the grammar refuses it (see
        // `grammar`); a grammar that allows nothing ends the sequence.
        let t = s.sampler.sample(l, &s.history);
        if c.allows(t) {
            return (t, false);
        }
        if !c.mask(l) {
            return (c.an_eog().unwrap_or(t), false);
        }
        // A draw that rounding carried past the allowed tokens falls back
        // to the best allowed one.
        let t = s.sampler.sample(l, &s.history);
        if c.allows(t) {
            return (t, false);
        }
        return (dwarfstar_model::sampler::argmax(l), false);
    }
    match draft {
        None => (s.sampler.sample(l, &s.history), false),
        Some(d) => match s.sampler.verify(l, &s.history, d) {
            Verdict::Accept => (d, true),
            Verdict::Reject(t) => (t, false),
        },
    }
}

/// Checks `s`'s drafts (its last `drafted` history tokens) against the
/// logits of the step's `drafted + 1` positions: emits the accepted drafts
/// and one token more (a draft's replacement, or the next after them all),
/// cuts the state back to the accepted positions and adapts the draft
/// length. The tokens emitted and the drafts accepted.
pub(super) fn verify<B: Backend>(
    backend: &B,
    ends: &Ends,
    s: &mut Seq<B::State>,
    logits: &[f32],
) -> (u64, usize) {
    let d = std::mem::take(&mut s.drafted);
    let base = s.history.len() - d;
    let drafts = s.history.split_off(base);
    let nv = logits.len() / (d + 1);
    let (mut emitted, mut accepted) = (0, 0);
    for i in 0..=d {
        let mut l = logits[i * nv..(i + 1) * nv].to_vec();
        let (tok, ok) = sample(s, &mut l, drafts.get(i).copied());
        emitted += 1;
        accepted += ok as usize;
        if ends.emit(s, tok) || !ok {
            break;
        }
    }
    // The accepted drafts' positions hold what plain decoding would have
    // computed; the rest are dropped.
    backend.truncate(&mut s.state, base + accepted);
    s.draft_len.update(d, accepted);
    (emitted, accepted)
}

/// OpenAI's presence and frequency penalties on `logits`, from the counts of
/// the tokens generated so far.
pub(super) fn penalize(
    logits: &mut [f32],
    counts: &HashMap<u32, u32>,
    presence: f32,
    frequency: f32,
) {
    for (&t, &c) in counts {
        if let Some(l) = logits.get_mut(t as usize) {
            *l -= presence + frequency * c as f32;
        }
    }
}
