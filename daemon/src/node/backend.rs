//! The coordinator's side of a split model: a scheduler [`Backend`] whose
//! forward pass embeds the tokens, runs the coordinator's own layers, and
//! sends the rest of the step down the pipeline through a [`Hop`].
//!
//! Each sequence has an id the other stages key their caches by. Stages
//! truncate to the step's start position themselves, so rewinding a state
//! here costs no message; a clone becomes a *fork* the next step carries;
//! dropping a state releases its caches downstream. A state that cannot
//! rewind exactly (DeepSeek V4's) keeps the tokens it dropped, and the next
//! step replays them from position 0 through every stage.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dwarfstar_model::{Forward, Model, ModelError, SeqState};

use super::pipeline::{Hop, Span, Step, Want};
use crate::serve::scheduler::Backend;

mod embed;

/// Sequence ids whose states were dropped, released in batches.
#[derive(Default)]
struct Released(Mutex<Vec<u64>>);

/// A sequence of a split model, as the coordinator holds it.
pub struct DistSeq {
    pub id: u64,
    /// The coordinator's own layers' cache.
    local: SeqState,
    /// Positions held (on every stage, once the next step ran).
    len: usize,
    /// Copy sequence `.0`'s positions on the stages first.
    fork: Option<u64>,
    /// The API request it serves (every step names it to the stages).
    request: Option<Arc<str>>,
    released: Arc<Released>,
    /// The final hidden rows of the last step's run, from position
    /// `hidden_pos0` (kept when the backend keeps them, for MTP drafting).
    hidden: Vec<f32>,
    hidden_pos0: usize,
}

impl Drop for DistSeq {
    fn drop(&mut self) {
        if let Ok(mut r) = self.released.0.lock() {
            r.push(self.id);
        }
    }
}

/// The coordinator's model share and the way to the other stages. Clones
/// share the sequence ids and the release list, so the scheduler and the
/// Control service's generations can drive one pipeline side by side.
#[derive(Clone)]
pub struct DistBackend {
    model: Arc<Model>,
    local: Range<usize>,
    next: Option<Arc<dyn Hop>>,
    /// The output head is here (the pipeline returns final hidden rows).
    holds_output: bool,
    plan_version: u64,
    ids: Arc<AtomicU64>,
    released: Arc<Released>,
    /// Every step asks the pipeline for the final hidden rows of all its
    /// positions and keeps them in each sequence ([`DistBackend::keep_hidden`]).
    keep_hidden: bool,
}

impl DistBackend {
    /// `local`: the layers this node runs first (may be empty); `next`: the
    /// rest of the pipeline, `None` when this node also holds the output.
    pub fn new(
        model: Arc<Model>,
        local: Range<usize>,
        next: Option<Arc<dyn Hop>>,
        holds_output: bool,
        plan_version: u64,
    ) -> DistBackend {
        let next_is_none = next.is_none();
        DistBackend {
            model,
            local,
            next,
            holds_output: holds_output || next_is_none,
            plan_version,
            ids: Arc::new(AtomicU64::new(1)),
            released: Arc::default(),
            keep_hidden: false,
        }
    }

    /// Keeps each step's final hidden rows in its sequences, for a drafter
    /// that drafts from them (DeepSeek V4's MTP block). Only possible where
    /// the output head is on this node (the pipeline then returns hidden
    /// rows, not logits): returns whether the rows will be kept.
    pub fn keep_hidden(&mut self) -> bool {
        self.keep_hidden = self.holds_output;
        self.keep_hidden
    }

    /// Keeps each sequence's hidden rows from `rows` (every run row of the
    /// step, in order) and returns the rows its caller wants logits of.
    fn split_hidden(
        &self,
        items: &mut [(&[u32], &mut DistSeq, bool)],
        runs: &[Vec<u32>],
        pos0: &[usize],
        rows: Vec<f32>,
    ) -> Result<Vec<f32>, String> {
        let e = self.model.n_embd();
        let total: usize = runs.iter().map(Vec::len).sum();
        if rows.len() != total * e {
            return Err(format!(
                "the pipeline returned {} hidden values for {total} rows of {e}",
                rows.len()
            ));
        }
        let mut wanted = Vec::new();
        let mut at = 0;
        for (((_, s, all), run), &p) in items.iter_mut().zip(runs).zip(pos0) {
            let mine = &rows[at * e..(at + run.len()) * e];
            s.hidden.clear();
            s.hidden.extend_from_slice(mine);
            s.hidden_pos0 = p;
            let from = if *all { 0 } else { run.len() - 1 };
            wanted.extend_from_slice(&mine[from * e..]);
            at += run.len();
        }
        Ok(wanted)
    }

    fn flush_released(&self) {
        let ids = std::mem::take(&mut *self.released.0.lock().unwrap_or_else(|e| e.into_inner()));
        if !ids.is_empty() {
            if let Some(n) = &self.next {
                n.release(&ids);
            }
        }
    }

    /// Embeds `tokens` (the `runs` back to back) and runs this node's own
    /// layers over them, committing each run's positions into its state:
    /// the hidden rows the next stage takes.
    fn local_pass(
        &self,
        tokens: &[u32],
        runs: &[Vec<u32>],
        states: Vec<&mut SeqState>,
    ) -> Result<Vec<f32>, String> {
        let mut x = self.model.embed(tokens).map_err(|e| e.to_string())?;
        let mut refs: Vec<(&[u32], &mut SeqState)> =
            runs.iter().map(Vec::as_slice).zip(states).collect();
        if !self.local.is_empty() {
            self.model
                .forward_layers(self.local.clone(), &mut x, &mut refs)
                .map_err(|e| e.to_string())?;
        }
        self.model.finish_step(&mut refs);
        Ok(x)
    }

    /// One step down the pipeline. Each sequence runs what a truncation
    /// left to recompute (states that cannot rewind exactly), then its new
    /// tokens; every stage dropped the same positions and starts where its
    /// state holds. Returns each sequence's run and the rows the pipeline
    /// gave back for `wants`: final hidden rows where the output head is
    /// here, logits where it is not.
    fn pass(
        &self,
        items: &mut [(&[u32], &mut DistSeq)],
        wants: &[Want],
    ) -> Result<(Vec<Vec<u32>>, Vec<f32>), String> {
        if items.iter().any(|(t, _)| t.is_empty()) {
            return Err("a sequence in the batch has no tokens".into());
        }
        let runs: Vec<Vec<u32>> = items
            .iter()
            .map(|(t, s)| [s.local.pending(), t].concat())
            .collect();
        let spans: Vec<Span> = items
            .iter()
            .zip(&runs)
            .zip(wants)
            .map(|(((_, s), run), &want)| Span {
                seq: s.id,
                rows: run.len() as u32,
                pos0: s.local.held() as u32,
                want,
                fork: s.fork,
                request: s.request.clone(),
            })
            .collect();
        let tokens: Vec<u32> = runs.concat();
        let states = items.iter_mut().map(|(_, s)| &mut s.local).collect();
        let x = self.local_pass(&tokens, &runs, states)?;
        let step = Step {
            plan_version: self.plan_version,
            layer: self.local.end as u32,
            spans,
            tokens,
            x,
        };
        let rows = match &self.next {
            // Releases go after the step: a fork in it may copy a dropped state.
            Some(next) => {
                let r = next.call(step).map_err(|e| e.to_string());
                self.flush_released();
                if r.is_err() {
                    // The step did not happen downstream: take it back here
                    // too (a V4 state replays its kept tokens next time).
                    for (_, s) in items.iter_mut() {
                        s.local.truncate(s.len);
                    }
                }
                r?
            }
            None => {
                let e = self.model.n_embd();
                step.output_rows()
                    .iter()
                    .flat_map(|&r| step.x[r as usize * e..(r as usize + 1) * e].iter().copied())
                    .collect()
            }
        };
        for (_, s) in items.iter_mut() {
            s.len = s.local.len();
            s.fork = None;
        }
        Ok((runs, rows))
    }

    fn step(&self, items: &mut [(&[u32], &mut DistSeq, bool)]) -> Result<Vec<Vec<f32>>, String> {
        let keep = self.keep_hidden;
        let pos0: Vec<usize> = items.iter().map(|(_, s, _)| s.local.held()).collect();
        let wants: Vec<Want> = items
            .iter()
            .map(|&(_, _, all)| if all || keep { Want::All } else { Want::Last })
            .collect();
        let mut pairs: Vec<(&[u32], &mut DistSeq)> =
            items.iter_mut().map(|(t, s, _)| (*t, &mut **s)).collect();
        let (runs, mut rows) = self.pass(&mut pairs, &wants)?;
        drop(pairs);
        if keep {
            rows = self.split_hidden(items, &runs, &pos0, rows)?;
        }
        let logits = if self.holds_output {
            self.model.logits(&rows).map_err(|e| e.to_string())?
        } else {
            rows
        };
        let v = self.model.n_vocab();
        let want: usize = items
            .iter()
            .zip(&runs)
            .map(|((_, _, all), run)| if *all { run.len() } else { 1 })
            .sum();
        if logits.len() != want * v {
            return Err(format!(
                "the pipeline returned {} logits for {want} rows of {v}",
                logits.len()
            ));
        }
        let mut out = Vec::with_capacity(items.len());
        let mut off = 0;
        for ((t, _, all), run) in items.iter().zip(&runs) {
            // A rewound V4 sequence replays its kept tokens first; the
            // caller asked only for the logits of its new tokens.
            let (n, replayed) = if *all {
                (run.len(), run.len() - t.len())
            } else {
                (1, 0)
            };
            out.push(logits[(off + replayed) * v..(off + n) * v].to_vec());
            off += n;
        }
        Ok(out)
    }
}

impl Backend for DistBackend {
    type State = DistSeq;

    fn new_state(&self, capacity: usize) -> DistSeq {
        DistSeq {
            id: self.ids.fetch_add(1, Ordering::Relaxed),
            local: self.model.new_state(capacity),
            len: 0,
            fork: None,
            request: None,
            released: self.released.clone(),
            hidden: Vec::new(),
            hidden_pos0: 0,
        }
    }

    fn state_len(&self, s: &DistSeq) -> usize {
        s.len
    }

    fn truncate(&self, s: &mut DistSeq, len: usize) {
        s.local.truncate(len);
        s.len = s.len.min(len);
        let e = self.model.n_embd();
        if s.hidden_pos0 >= len {
            s.hidden.clear();
        } else {
            s.hidden.truncate((len - s.hidden_pos0) * e);
        }
    }

    /// What the coordinator's own state keeps (every stage holds the
    /// same architecture's state, so it keeps as much).
    fn kept_by_truncate(&self, s: &DistSeq, len: usize) -> usize {
        s.local.kept_by_truncate(len.min(s.len))
    }

    fn cuts_anywhere(&self) -> bool {
        self.model.capabilities().cuts_anywhere
    }

    /// Every stage cuts its own state to the step's start, as a model
    /// alone would: what the architecture allows there holds here.
    fn cuts_last_pass(&self) -> bool {
        self.model.capabilities().cuts_last_pass
    }

    fn clone_state(&self, s: &DistSeq) -> DistSeq {
        DistSeq {
            id: self.ids.fetch_add(1, Ordering::Relaxed),
            local: s.local.clone(),
            len: s.len,
            // A fork of a fork not yet run copies the same original.
            fork: Some(s.fork.unwrap_or(s.id)),
            request: None,
            released: self.released.clone(),
            hidden: s.hidden.clone(),
            hidden_pos0: s.hidden_pos0,
        }
    }

    /// What the sequence holds across the whole pipeline: its positions'
    /// keys and values on every stage (at least the coordinator's own
    /// layers), so the prefix cache's byte bound covers the mesh.
    fn state_bytes(&self, s: &DistSeq) -> usize {
        let all = self.model.kv_bytes_per_token().saturating_mul(s.len);
        all.max(s.local.bytes())
    }

    fn forward_batch(
        &self,
        items: &mut [(&[u32], &mut DistSeq, bool)],
    ) -> Result<Vec<Vec<f32>>, String> {
        self.step(items)
    }

    fn keep_hidden(&mut self) -> bool {
        DistBackend::keep_hidden(self)
    }

    fn hidden<'a>(&self, s: &'a DistSeq) -> Option<(usize, &'a [f32])> {
        (self.keep_hidden && !s.hidden.is_empty()).then_some((s.hidden_pos0, s.hidden.as_slice()))
    }

    fn final_rows(&self, items: &mut [(&[u32], &mut DistSeq)]) -> Result<Vec<Vec<f32>>, String> {
        self.final_rows_step(items)
    }

    fn tag(&self, s: &mut DistSeq, request: &Arc<str>) {
        tracing::info!("request {request}: seq {} on the pipeline", s.id);
        s.request = Some(request.clone());
    }
}

/// One sequence at a time through the pipeline, for [`dwarfstar_model::generate`].
impl Forward for DistBackend {
    type State = DistSeq;

    fn state_len(&self, s: &DistSeq) -> usize {
        Backend::state_len(self, s)
    }

    fn truncate(&self, s: &mut DistSeq, len: usize) {
        Backend::truncate(self, s, len)
    }

    fn forward_last(&self, tokens: &[u32], s: &mut DistSeq) -> dwarfstar_model::Result<Vec<f32>> {
        let mut out = self
            .step(&mut [(tokens, s, false)])
            .map_err(ModelError::Invalid)?;
        out.pop()
            .ok_or_else(|| ModelError::Invalid("the pipeline returned no logits".into()))
    }
}
