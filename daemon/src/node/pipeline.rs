//! Pipeline stages, sans I/O: what a step is, what a stage node does with
//! one, and the [`Hop`] through which a step reaches the next stage.
//!
//! A *step* is one batched forward pass of the coordinator's scheduler:
//! hidden rows of several sequences ([`Span`]s) entering layer `layer`. A
//! [`StageHost`] keeps each sequence's cache for its layers, truncates it to
//! the step's start position (so retries and prompt-cache rewinds need no
//! extra message), runs its layer range, and either hands the rows on or,
//! holding the output head, returns the logits the step asked for. Every
//! row travels with its token id (hash-routed MoE layers read it). A cache
//! that cannot rewind exactly (DeepSeek V4's) starts over at 0, and the
//! coordinator, whose own state dropped the same positions, replays them.
//!
//! Everything here is synchronous and socket-free: the transport adapts
//! [`Hop`] to QUIC streams, and tests chain hosts in one process.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use dwarfstar_model::{Model, SeqState};

use super::error::{NodeError, Result};

/// Which logits a sequence wants from a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// None (a prompt chunk that is not the prompt's end).
    Nothing,
    /// The last row's.
    Last,
    /// Every row's.
    All,
}

/// One sequence's rows in a step.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    /// The coordinator's id for the sequence.
    pub seq: u64,
    /// Rows (tokens) of this sequence in the step.
    pub rows: u32,
    /// Position of its first row; stages forget whatever they held from here on.
    pub pos0: u32,
    pub want: Want,
    /// Start this sequence as a copy of sequence `fork`'s first `pos0`
    /// positions (a prompt-cache hit on the coordinator).
    pub fork: Option<u64>,
    /// The API request it serves, for joining logs across nodes.
    pub request: Option<Arc<str>>,
}

/// Rows of hidden state entering `layer`, each with its token id.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub plan_version: u64,
    pub layer: u32,
    pub spans: Vec<Span>,
    /// The token of each row (`Σ rows`): hash-routed MoE layers read it.
    pub tokens: Vec<u32>,
    /// `Σ rows × n_embd` values (the model's row width between layers).
    pub x: Vec<f32>,
}

impl Step {
    pub fn rows(&self) -> usize {
        self.spans.iter().map(|s| s.rows as usize).sum()
    }

    /// Rows whose logits the step wants, in order (indices into the rows).
    pub fn output_rows(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let mut row = 0u32;
        for s in &self.spans {
            match s.want {
                Want::Nothing => {}
                Want::Last => out.push(row + s.rows - 1),
                Want::All => out.extend(row..row + s.rows),
            }
            row += s.rows;
        }
        out
    }
}

/// Where a step goes after this node: the next stage, wherever it runs.
/// Returns the logits of the step's output rows (`rows × n_vocab`), or
/// their final hidden rows (`rows × n_embd`) when the plan gives the output
/// head to the coordinator.
pub trait Hop: Send + Sync {
    fn call(&self, step: Step) -> Result<Vec<f32>>;
    /// Frees the named sequences' state downstream (best effort).
    fn release(&self, seqs: &[u64]);
}

/// Logs a sequence new to this stage under its API request, once (the
/// coordinator logs the same `request <id>: seq N`).
fn announce(s: &Span, layers: &Range<usize>) {
    match &s.request {
        Some(r) => tracing::info!(
            "request {r}: seq {} starts on layers {}..{} at position {}",
            s.seq,
            layers.start,
            layers.end,
            s.pos0
        ),
        None => tracing::debug!("seq {} starts on layers {layers:?}", s.seq),
    }
}

/// Sequences a stage holds at once: the coordinator's running batch, the
/// prefix cache's entries (kept alive on every stage) and releases not yet
/// delivered. Coordinator and workers use the same bound.
pub const STAGE_MAX_SEQS: usize = 256;

/// Limits a stage enforces on what peers ask of it.
#[derive(Clone, Copy, Debug)]
pub struct StageLimits {
    /// Positions a sequence may hold.
    pub ctx_size: usize,
    /// Sequences held at once.
    pub max_seqs: usize,
}

/// A node's pipeline stage: its layer range and its sequences' caches.
pub struct StageHost {
    model: Arc<Model>,
    pub layers: Range<usize>,
    pub holds_output: bool,
    pub plan_version: u64,
    limits: StageLimits,
    seqs: HashMap<u64, SeqState>,
}

impl StageHost {
    pub fn new(
        model: Arc<Model>,
        layers: Range<usize>,
        holds_output: bool,
        plan_version: u64,
        limits: StageLimits,
    ) -> Result<StageHost> {
        if layers.start > layers.end || layers.end > model.n_layer() {
            return Err(NodeError::BadRequest(format!(
                "layers {layers:?} of a {}-layer model",
                model.n_layer()
            )));
        }
        Ok(StageHost {
            model,
            layers,
            holds_output,
            plan_version,
            limits,
            seqs: HashMap::new(),
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Sequences held now.
    #[cfg(test)]
    pub fn n_seqs(&self) -> usize {
        self.seqs.len()
    }

    /// Checks a step a peer sent before anything runs.
    fn check(&self, step: &Step) -> Result<()> {
        if step.plan_version != self.plan_version {
            return Err(NodeError::WrongPlan {
                got: step.plan_version,
                have: self.plan_version,
            });
        }
        if step.layer as usize != self.layers.start {
            return Err(NodeError::BadRequest(format!(
                "rows for layer {}, this stage starts at layer {}",
                step.layer, self.layers.start
            )));
        }
        let e = self.model.n_embd();
        let rows = step.rows();
        if step.spans.is_empty() || rows.checked_mul(e) != Some(step.x.len()) {
            return Err(NodeError::BadRequest(format!(
                "{} values for {rows} rows of {e}",
                step.x.len()
            )));
        }
        if step.tokens.len() != rows {
            return Err(NodeError::BadRequest(format!(
                "{} token ids for {rows} rows",
                step.tokens.len()
            )));
        }
        let n_vocab = self.model.n_vocab();
        if let Some(t) = step.tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(NodeError::BadRequest(format!(
                "token id {t} of a {n_vocab}-token vocabulary"
            )));
        }
        let mut new = 0;
        for (i, s) in step.spans.iter().enumerate() {
            if s.rows == 0 || step.spans[..i].iter().any(|o| o.seq == s.seq) {
                return Err(NodeError::BadRequest(format!(
                    "sequence {} empty or repeated in a step",
                    s.seq
                )));
            }
            let end = s.pos0 as usize + s.rows as usize;
            if end > self.limits.ctx_size {
                return Err(NodeError::BadRequest(format!(
                    "sequence {} reaches position {end}, the context is {}",
                    s.seq, self.limits.ctx_size
                )));
            }
            let have = match (self.seqs.get(&s.seq), s.fork) {
                (Some(st), _) => st.len(),
                (None, Some(f)) => self.seqs.get(&f).map_or(0, |st| st.len()),
                (None, None) => 0,
            };
            if s.pos0 as usize > have {
                return Err(NodeError::BadRequest(format!(
                    "sequence {} starts at {} but this stage holds {have} positions",
                    s.seq, s.pos0
                )));
            }
            if !self.seqs.contains_key(&s.seq) {
                new += 1;
            }
        }
        if self.seqs.len() + new > self.limits.max_seqs {
            return Err(NodeError::BadRequest(format!(
                "more than {} sequences at once",
                self.limits.max_seqs
            )));
        }
        Ok(())
    }

    /// Runs this stage's layers over the step's rows in place and advances
    /// the step to the next layer.
    pub fn run(&mut self, step: &mut Step) -> Result<()> {
        self.check(step)?;
        let cap = self.limits.ctx_size;
        let mut states: Vec<(usize, SeqState)> = Vec::with_capacity(step.spans.len());
        for s in &step.spans {
            let st = match self.seqs.remove(&s.seq) {
                Some(st) => st,
                None => {
                    announce(s, &self.layers);
                    match s.fork.and_then(|f| self.seqs.get(&f)) {
                        Some(src) => src.clone(),
                        None => self.model.new_state(cap),
                    }
                }
            };
            states.push((s.rows as usize, st));
        }
        // A state that cannot rewind exactly (DeepSeek V4's windows) drops
        // what it held below `pos0`; the coordinator then replays from 0.
        let mut lost = None;
        for ((_, st), s) in states.iter_mut().zip(&step.spans) {
            st.truncate(s.pos0 as usize);
            if st.held() != s.pos0 as usize {
                lost = Some(NodeError::BadRequest(format!(
                    "sequence {} cannot resume at position {} on this stage (it holds {}): replay it from {}",
                    s.seq,
                    s.pos0,
                    st.held(),
                    st.held()
                )));
            }
        }
        let ran = match lost {
            Some(e) => Err(e),
            None => {
                let mut at = 0;
                let mut refs: Vec<(&[u32], &mut SeqState)> = Vec::with_capacity(states.len());
                for (n, s) in states.iter_mut() {
                    refs.push((&step.tokens[at..at + *n], s));
                    at += *n;
                }
                let r = self
                    .model
                    .forward_layers(self.layers.clone(), &mut step.x, &mut refs);
                if r.is_ok() {
                    self.model.finish_step(&mut refs);
                }
                r.map_err(NodeError::from)
            }
        };
        for ((_, st), s) in states.into_iter().zip(&step.spans) {
            self.seqs.insert(s.seq, st);
        }
        ran?;
        step.layer = self.layers.end as u32;
        Ok(())
    }

    /// The logits of the step's output rows (after [`StageHost::run`]).
    pub fn logits(&self, step: &Step) -> Result<Vec<f32>> {
        if !self.holds_output {
            return Err(NodeError::BadRequest(
                "this stage does not hold the output head".into(),
            ));
        }
        let e = self.model.n_embd();
        let rows = step.output_rows();
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut h = Vec::with_capacity(rows.len() * e);
        for r in rows {
            let r = r as usize;
            h.extend_from_slice(&step.x[r * e..(r + 1) * e]);
        }
        Ok(self.model.logits(&h)?)
    }

    pub fn release(&mut self, seqs: &[u64]) {
        for s in seqs {
            self.seqs.remove(s);
        }
    }
}

/// A stage on this node plus the way on: runs its layers, then either
/// returns the logits or relays to the next stage and returns its answer.
pub struct StageWorker {
    pub host: Mutex<StageHost>,
    pub next: Option<Arc<dyn Hop>>,
}

impl StageWorker {
    pub fn handle(&self, mut step: Step) -> Result<Vec<f32>> {
        let mut host = self.host.lock().unwrap_or_else(|e| e.into_inner());
        host.run(&mut step)?;
        if host.holds_output {
            return host.logits(&step);
        }
        if host.layers.end == host.model().n_layer() {
            // The coordinator holds the output head: hand back the final
            // hidden rows whose logits it wants.
            let e = host.model().n_embd();
            let rows = step.output_rows();
            let mut h = Vec::with_capacity(rows.len() * e);
            for r in rows {
                h.extend_from_slice(&step.x[r as usize * e..(r as usize + 1) * e]);
            }
            return Ok(h);
        }
        drop(host);
        match &self.next {
            Some(next) => next.call(step),
            None => Err(NodeError::NotReady(
                "this stage has no next stage and no output head".into(),
            )),
        }
    }

    pub fn release(&self, seqs: &[u64]) {
        self.host
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release(seqs);
        if let Some(next) = &self.next {
            next.release(seqs);
        }
    }
}

/// A hop to a stage in the same process (tests, and a plan whose next
/// stage is this node).
impl Hop for StageWorker {
    fn call(&self, step: Step) -> Result<Vec<f32>> {
        self.handle(step)
    }

    fn release(&self, seqs: &[u64]) {
        StageWorker::release(self, seqs)
    }
}
