//! Continuous batching: the engine loop that owns the model.
//!
//! One thread runs [`Scheduler::run`]. Each step it admits waiting requests
//! (FIFO, up to `max_batch` active sequences, and only while the positions
//! they may reach — prompt plus `max_tokens`, at most the context — fit
//! `kv_positions`, so caches stay within the memory left for them; one
//! sequence always runs), builds one batch out of every
//! active sequence — the next token of each decoding sequence, and a chunk of
//! the prompt of each sequence still in prefill, at most `prefill_chunk`
//! prompt tokens per step in all so decoding sequences keep getting steps —
//! runs it through the model in one [`Backend::forward_batch`], samples the
//! sequences whose input is all in, and sends each token to its request's
//! channel. A request whose receiver is gone (client disconnected, or it saw
//! a stop string) is dropped at the next step; the state of every sequence
//! that ends goes into the [`PrefixCache`] for later prompts sharing its start.
//! A backend with a disk cache ([`Backend::load_prefix`]) is asked on a
//! miss, and offered every ended sequence's state.
//!
//! With a drafter ([`Scheduler::with_speculation`]), decoding sequences
//! also run draft tokens and keep those the target agrees with (see
//! [`super::spec`]).
//!
//! On a split model ([`Scheduler::with_replan`]) a failed step loses no
//! request: the running sequences wait for a new plan and rebuild their
//! caches from their tokens (see `recover`).
//!
//! The logic is generic over [`Backend`] so tests can drive it with a fake
//! model and no sockets; the real backend is [`dwarfstar_model::Model`].

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;

use dwarfstar_model::draft::{DraftAsk, Observed};
use dwarfstar_model::{Model, Sampler, SamplerConfig, SeqState};
use tokio::sync::mpsc::UnboundedSender;

use super::grammar::Constraint;
use super::logprobs::TokenLogprobs;
use super::metrics::Metrics;
use super::prefix::PrefixCache;
use super::replan::{Replan, Resume};
use super::spec::{DraftLen, Speculation};

mod embed;
mod recover;
mod sample;

pub use embed::EmbedRequest;

#[cfg(test)]
use sample::penalize;
use sample::{sample, verify, Ends};

/// What the scheduler needs of a model.
pub trait Backend {
    type State;
    fn new_state(&self, capacity: usize) -> Self::State;
    fn state_len(&self, s: &Self::State) -> usize;
    fn truncate(&self, s: &mut Self::State, len: usize);
    fn clone_state(&self, s: &Self::State) -> Self::State;
    /// Positions whose state a truncation of `s` to `len` keeps (the rest
    /// are recomputed).
    fn kept_by_truncate(&self, s: &Self::State, len: usize) -> usize {
        len.min(self.state_len(s))
    }
    /// Whether states keep their positions when cut to any length (see
    /// [`dwarfstar_model::Capabilities::cuts_anywhere`]).
    fn cuts_anywhere(&self) -> bool {
        true
    }
    /// Whether a state cut back into its last pass keeps its positions
    /// (see [`dwarfstar_model::Capabilities::cuts_last_pass`]): what
    /// speculation needs.
    fn cuts_last_pass(&self) -> bool {
        self.cuts_anywhere()
    }
    /// Releases spare capacity before a state is kept in the cache.
    fn compact(&self, _s: &mut Self::State) {}
    fn state_bytes(&self, s: &Self::State) -> usize;
    /// Runs every `(tokens, state, all_logits)` in one pass; one logits
    /// vector per item.
    fn forward_batch(
        &self,
        items: &mut [(&[u32], &mut Self::State, bool)],
    ) -> Result<Vec<Vec<f32>>, String>;
    /// A saved state of the longest prefix of `prompt` (holding at most
    /// `capacity` positions) and its length, from a disk cache; None
    /// without one.
    fn load_prefix(&self, _prompt: &[u32], _capacity: usize) -> Option<(Self::State, usize)> {
        None
    }
    /// Offers the state of `tokens` to a disk cache (which may skip it).
    fn save_prefix(&self, _tokens: &[u32], _s: &Self::State) {}
    /// The final hidden rows `s` keeps of its last pass, and the first
    /// one's position (what an MTP drafter drafts from); None where the
    /// state keeps none.
    fn hidden<'a>(&self, _s: &'a Self::State) -> Option<(usize, &'a [f32])> {
        None
    }
    /// Asks the backend to keep its states' final hidden rows from now on
    /// ([`Backend::hidden`]); returns whether it will. A model running
    /// alone is loaded to keep them and answers through `hidden` alone.
    fn keep_hidden(&mut self) -> bool {
        false
    }
    /// Runs every `(tokens, state)` through the whole model; each one's
    /// final hidden rows after the final norm (what embeddings pool).
    fn final_rows(
        &self,
        _items: &mut [(&[u32], &mut Self::State)],
    ) -> Result<Vec<Vec<f32>>, String> {
        Err("this engine cannot give final hidden rows".into())
    }
    /// Names the API request `s` serves, where the backend passes it on
    /// (a pipeline's stages log it).
    fn tag(&self, _s: &mut Self::State, _request: &Arc<str>) {}
}

impl Backend for Model {
    type State = SeqState;

    fn new_state(&self, capacity: usize) -> SeqState {
        Model::new_state(self, capacity)
    }

    fn state_len(&self, s: &SeqState) -> usize {
        s.len()
    }

    fn truncate(&self, s: &mut SeqState, len: usize) {
        s.truncate(len)
    }

    fn clone_state(&self, s: &SeqState) -> SeqState {
        s.clone()
    }

    fn kept_by_truncate(&self, s: &SeqState, len: usize) -> usize {
        s.kept_by_truncate(len)
    }

    fn cuts_anywhere(&self) -> bool {
        self.capabilities().cuts_anywhere
    }

    fn cuts_last_pass(&self) -> bool {
        self.capabilities().cuts_last_pass
    }

    fn compact(&self, s: &mut SeqState) {
        if let SeqState::Dense(kv) = s {
            kv.shrink_to_fit();
        }
    }

    fn state_bytes(&self, s: &SeqState) -> usize {
        s.bytes()
    }

    fn forward_batch(
        &self,
        items: &mut [(&[u32], &mut SeqState, bool)],
    ) -> Result<Vec<Vec<f32>>, String> {
        Model::forward_batch(self, items).map_err(|e| e.to_string())
    }

    fn hidden<'a>(&self, s: &'a SeqState) -> Option<(usize, &'a [f32])> {
        match s {
            SeqState::Ds4(c) => c.hidden(),
            _ => None,
        }
    }

    fn final_rows(&self, items: &mut [(&[u32], &mut SeqState)]) -> Result<Vec<Vec<f32>>, String> {
        Model::final_rows(self, items).map_err(|e| e.to_string())
    }
}

/// Whether `s` keeps its state when cut below its end (so one cached
/// entry serves every prefix of its tokens).
fn cuts<B: Backend>(b: &B, s: &B::State) -> bool {
    let len = b.state_len(s);
    // A state that cuts back into its last pass only keeps the cut just
    // below its end, not every prefix.
    len < 2 || (b.cuts_anywhere() && b.kept_by_truncate(s, len - 1) == len - 1)
}

/// Why a sequence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-generation token.
    Stop,
    /// `max_tokens` or the context reached.
    Length,
}

/// What the engine tells a request, in order: `Started`, then `Token`s,
/// then `Done` or `Failed`.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Admitted; `cached_tokens` prompt tokens came from the prefix cache.
    Started {
        cached_tokens: usize,
    },
    /// The next token's logprobs (when asked), just before its `Token`.
    Logprobs(TokenLogprobs),
    Token(u32),
    Done(Finish),
    Failed(String),
}

/// A request for generation, with its prompt already tokenized.
#[derive(Debug)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    /// At least 1; the context also stops a sequence.
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// OpenAI's penalties, over the generated tokens (0 disables).
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
    /// A grammar the output must follow (such a sequence never drafts).
    pub constraint: Option<Constraint>,
    /// Send each token's logprob and this many most likely alternatives.
    pub logprobs: Option<usize>,
    pub events: UnboundedSender<Event>,
    /// The API request's id (its response id or the client's
    /// `x-request-id`): logs name it, and a pipeline's stages too.
    pub request_id: Option<Arc<str>>,
}

/// Why a request was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is full (HTTP 429).
    Full,
    /// The engine has stopped (HTTP 503).
    Closed,
}

/// What the queue carries.
#[derive(Debug)]
pub enum Request {
    Gen(GenRequest),
    Embed(EmbedRequest),
}

/// The HTTP side's handle on the queue.
#[derive(Clone)]
pub struct Submitter {
    tx: SyncSender<Request>,
    metrics: Arc<Metrics>,
}

impl Submitter {
    /// Queues `r` unless the queue is full.
    pub fn submit(&self, r: GenRequest) -> Result<(), SubmitError> {
        self.send(Request::Gen(r))
    }

    /// Queues inputs to embed unless the queue is full.
    pub fn embed(&self, r: EmbedRequest) -> Result<(), SubmitError> {
        self.send(Request::Embed(r))
    }

    fn send(&self, r: Request) -> Result<(), SubmitError> {
        self.metrics.queue_depth.fetch_add(1, Relaxed);
        let res = self.tx.try_send(r);
        if res.is_err() {
            self.metrics.queue_depth.fetch_sub(1, Relaxed);
        }
        match res {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(SubmitError::Full),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Closed),
        }
    }
}

/// A bounded queue of `capacity` (at least 1) waiting requests.
pub fn queue(capacity: usize, metrics: Arc<Metrics>) -> (Submitter, Receiver<Request>) {
    let (tx, rx) = mpsc::sync_channel(capacity.max(1));
    (Submitter { tx, metrics }, rx)
}

/// The engine's knobs.
#[derive(Clone, Debug)]
pub struct SchedConfig {
    /// Most sequences run at once.
    pub max_batch: usize,
    /// Most prompt tokens run in one step, all sequences together.
    pub prefill_chunk: usize,
    /// Positions each sequence may hold.
    pub ctx_size: usize,
    pub cache_entries: usize,
    pub cache_bytes: usize,
    /// Shortest cached prefix worth a clone.
    pub min_prefix: usize,
    /// Positions the running sequences may hold together (their caches'
    /// memory); `usize::MAX` for no bound.
    pub kv_positions: usize,
}

/// One running sequence.
struct Seq<S> {
    /// The drafter's key for it.
    id: u64,
    req: GenRequest,
    state: S,
    /// Prompt then generated tokens; `history[state_len..]` is the input
    /// still to run (during a step, its last `drafted` are draft tokens).
    history: Vec<u32>,
    n_gen: usize,
    sampler: Sampler,
    counts: HashMap<u32, u32>,
    ended: bool,
    /// Draft tokens at the end of `history` this step.
    drafted: usize,
    draft_len: DraftLen,
    /// Times its cache was rebuilt from its tokens after a broken step.
    replays: u32,
    /// The logprobs of the token just sampled, sent with it.
    lp: Option<TokenLogprobs>,
}

/// A prefix cache entry: the target's state, and the drafter's where it
/// keeps one ([`dwarfstar_model::draft::Drafter::snapshot`]).
struct Cached<S> {
    state: S,
    draft: Option<Box<dyn std::any::Any + Send>>,
}

/// The engine loop's state. See the module doc.
pub struct Scheduler<B: Backend> {
    backend: B,
    cfg: SchedConfig,
    eog: Vec<bool>,
    rx: Receiver<Request>,
    open: bool,
    active: Vec<Seq<B::State>>,
    cache: PrefixCache<Cached<B::State>>,
    metrics: Arc<Metrics>,
    replan: Option<Arc<Replan<B>>>,
    /// A request taken from the queue that waits for cache room.
    waiting: Option<GenRequest>,
    spec: Option<Speculation>,
    next_id: u64,
    /// Set by a recovery (see `recover`) until the next step runs.
    recovering: Option<std::time::Instant>,
}

impl<B: Backend> Scheduler<B> {
    /// `eog[id]` tells whether token `id` ends generation.
    pub fn new(
        backend: B,
        cfg: SchedConfig,
        eog: Vec<bool>,
        rx: Receiver<Request>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let cache = PrefixCache::new(cfg.cache_entries, cfg.cache_bytes);
        Scheduler {
            backend,
            cfg,
            eog,
            rx,
            open: true,
            active: Vec::new(),
            cache,
            metrics,
            replan: None,
            waiting: None,
            spec: None,
            next_id: 0,
            recovering: None,
        }
    }

    /// Drafts tokens for decoding sequences with `spec`'s drafter. States
    /// that cannot be cut back into their last pass exactly (see
    /// [`dwarfstar_model::Capabilities::cuts_last_pass`]) would recompute
    /// their whole prefix after each rejected draft, so they run without.
    pub fn with_speculation(mut self, spec: Speculation) -> Self {
        if self.backend.cuts_last_pass() {
            self.spec = Some(spec);
        } else {
            tracing::warn!(
                "speculative decoding is off: this model's state cannot be cut back to the \
                 accepted drafts"
            );
        }
        self
    }

    /// Lets a re-planner swap the backend between steps ([`Replan`]).
    pub fn with_replan(mut self, r: Arc<Replan<B>>) -> Self {
        self.replan = Some(r);
        self
    }

    /// Under a re-plan's hold: true while sequences still run (admit
    /// nothing); with none running, waits for the re-planner and takes the
    /// new backend, dropping the old one's cached prefixes.
    fn held_for_replan(&mut self) -> bool {
        let Some(r) = self.replan.clone() else {
            return false;
        };
        if !r.held() {
            return false;
        }
        if !self.active.is_empty() {
            return true;
        }
        match r.idle_until_resumed() {
            Resume::Keep | Resume::Failed(_) => {}
            Resume::Swap(b) => {
                self.set_backend(b);
                self.drop_cache();
            }
            Resume::Retire => self.close_for_good(),
        }
        false
    }

    /// Runs the steps from now on through `b` (a new plan's pipeline),
    /// keeping the hidden rows a drafter drafts from where it wants them.
    fn set_backend(&mut self, b: B) {
        self.backend = b;
        if self.spec.as_ref().is_some_and(|s| s.drafter.wants_hidden())
            && !self.backend.keep_hidden()
        {
            tracing::warn!(
                "the new plan puts the output head on another node: MTP drafting stops \
                 (the hidden rows it drafts from stay there)"
            );
        }
    }

    fn drop_cache(&mut self) {
        self.cache = PrefixCache::new(self.cfg.cache_entries, self.cfg.cache_bytes);
        self.metrics.prefix_entries.store(0, Relaxed);
        self.metrics.prefix_bytes.store(0, Relaxed);
    }

    /// The model this engine serves is no longer served here: the requests
    /// still queued for it fail, and the engine ends (nothing runs now).
    fn close_for_good(&mut self) {
        let waiting = self.waiting.take().map(Request::Gen);
        for r in waiting
            .into_iter()
            .chain(std::iter::from_fn(|| self.rx.try_recv().ok()))
        {
            self.metrics.queue_depth.fetch_sub(1, Relaxed);
            let why = "this daemon stopped serving the model while the request waited \
                 (another model was loaded, or another node took over the mesh); send it again";
            match r {
                Request::Gen(r) => {
                    let _ = r.events.send(Event::Failed(why.into()));
                }
                Request::Embed(r) => {
                    let _ = r.reply.send(Err(why.into()));
                }
            }
        }
        self.drop_cache();
        self.open = false;
    }

    /// Runs until every submitter is gone and the last sequence ended.
    pub fn run(mut self) {
        loop {
            self.admit(true);
            if self.active.is_empty() && !self.open {
                break;
            }
            self.step();
        }
    }

    /// Sequences running now.
    #[cfg(test)]
    pub fn active(&self) -> usize {
        self.active.len()
    }

    /// Moves waiting requests into free slots, oldest first. With `block`
    /// and nothing running, waits for the first one.
    pub fn admit(&mut self, block: bool) {
        if self.held_for_replan() {
            return;
        }
        while self.open && self.active.len() < self.cfg.max_batch.max(1) {
            let r = if let Some(r) = self.waiting.take() {
                Request::Gen(r)
            } else if block && self.active.is_empty() {
                // Wakes now and then to see whether a re-plan waits.
                match self.rx.recv_timeout(std::time::Duration::from_millis(100)) {
                    Ok(r) => r,
                    Err(RecvTimeoutError::Timeout) => {
                        self.held_for_replan();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        self.open = false;
                        break;
                    }
                }
            } else {
                match self.rx.try_recv() {
                    Ok(r) => r,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.open = false;
                        break;
                    }
                }
            };
            let r = match r {
                Request::Gen(r) => r,
                Request::Embed(e) => {
                    self.metrics.queue_depth.fetch_sub(1, Relaxed);
                    self.embed(e);
                    continue;
                }
            };
            if r.events.is_closed() {
                self.metrics.queue_depth.fetch_sub(1, Relaxed);
                continue;
            }
            if !self.active.is_empty() && self.reserved() + self.reach(&r) > self.cfg.kv_positions {
                // Stays first in line until running sequences end.
                self.waiting = Some(r);
                break;
            }
            self.metrics.queue_depth.fetch_sub(1, Relaxed);
            self.start(r);
        }
        self.metrics.active.store(self.active.len(), Relaxed);
    }

    /// The most positions `r` can hold: its prompt and `max_tokens`, at
    /// most the context.
    fn reach(&self, r: &GenRequest) -> usize {
        r.prompt
            .len()
            .saturating_add(r.max_tokens)
            .min(self.cfg.ctx_size)
    }

    /// Positions the running sequences may still reach together.
    fn reserved(&self) -> usize {
        self.active.iter().map(|s| self.reach(&s.req)).sum()
    }

    fn start(&mut self, r: GenRequest) {
        let n = r.prompt.len();
        if n == 0 || n >= self.cfg.ctx_size {
            let _ = r.events.send(Event::Failed(format!(
                "the prompt has {n} tokens; this server runs 1 to {} per request",
                self.cfg.ctx_size.saturating_sub(1)
            )));
            return;
        }
        // Keep at least the last prompt token to run: it gives the logits.
        // A hit counts the positions whose state the cut keeps.
        let min = self.cfg.min_prefix.max(1);
        let backend = &self.backend;
        let hit = self
            .cache
            .best_by(&r.prompt, |c, len| {
                backend.kept_by_truncate(&c.state, len.min(n - 1))
            })
            .filter(|&(_, _, kept)| kept >= min);
        // The sequence's id (the drafter's key for it).
        self.next_id += 1;
        let id = self.next_id;
        let (mut state, cached) = match hit {
            Some((c, len, kept)) => {
                let mut s = self.backend.clone_state(&c.state);
                self.backend.truncate(&mut s, len.min(n - 1));
                self.metrics.prefix_hits.fetch_add(1, Relaxed);
                self.metrics.prefix_tokens.fetch_add(kept as u64, Relaxed);
                if let (Some(spec), Some(d)) = (self.spec.as_mut(), &c.draft) {
                    spec.drafter
                        .restore(id, d.as_ref(), self.backend.state_len(&s));
                }
                (s, kept)
            }
            None => {
                let disk = self
                    .backend
                    .load_prefix(&r.prompt, self.cfg.ctx_size)
                    .map(|(s, len)| {
                        let kept = self.backend.kept_by_truncate(&s, len.min(n - 1));
                        (s, len.min(n - 1), kept)
                    })
                    .filter(|&(_, _, kept)| kept >= min);
                match disk {
                    Some((mut s, len, kept)) => {
                        self.backend.truncate(&mut s, len);
                        self.metrics.prefix_hits.fetch_add(1, Relaxed);
                        self.metrics.prefix_tokens.fetch_add(kept as u64, Relaxed);
                        (s, kept)
                    }
                    None => {
                        self.metrics.prefix_misses.fetch_add(1, Relaxed);
                        (self.backend.new_state(self.cfg.ctx_size), 0)
                    }
                }
            }
        };
        if let Some(rid) = &r.request_id {
            tracing::info!("request {rid}: seq {id} admitted, {n} prompt tokens ({cached} cached)");
            self.backend.tag(&mut state, rid);
        }
        let _ = r.events.send(Event::Started {
            cached_tokens: cached,
        });
        let max = self.spec.as_ref().map_or(1, |s| s.max_tokens);
        self.active.push(Seq {
            id,
            history: r.prompt.clone(),
            sampler: Sampler::new(r.sampler.clone()),
            req: r,
            state,
            n_gen: 0,
            counts: HashMap::new(),
            ended: false,
            drafted: 0,
            draft_len: DraftLen::new(max),
            replays: 0,
            lp: None,
        });
    }

    /// One batched forward pass over every active sequence, then sampling.
    pub fn step(&mut self) {
        for s in &mut self.active {
            if s.req.events.is_closed() {
                s.ended = true;
            }
        }
        self.retire();
        if self.active.is_empty() {
            return;
        }
        // How many input tokens each sequence runs this step. Where states
        // cannot be cut, a prompt's last token waits for the next step, so
        // the state of all but that token can be kept for prefix reuse.
        let hold_last = !self.backend.cuts_anywhere() && self.cfg.cache_entries > 0;
        let started = self.spec.is_some().then(std::time::Instant::now);
        let drafting = match self.spec.as_mut() {
            Some(s) => s.payoff.as_mut().is_none_or(|p| p.draft_now()),
            None => false,
        };
        if drafting {
            self.draft();
        }
        let drafted = self.active.iter().any(|s| s.drafted > 0);
        let mut budget = self.cfg.prefill_chunk.max(1);
        let mut take = Vec::with_capacity(self.active.len());
        let mut prefill = 0;
        for s in &self.active {
            let pending = s.history.len() - self.backend.state_len(&s.state);
            let t = if s.n_gen > 0 {
                pending
            } else {
                let runnable = if hold_last && pending > 1 {
                    pending - 1
                } else {
                    pending
                };
                let t = runnable.min(budget);
                budget -= t;
                prefill += t;
                t
            };
            take.push(t);
        }
        let backend = &self.backend;
        let mut items: Vec<(&[u32], &mut B::State, bool)> = Vec::new();
        for (s, &t) in self.active.iter_mut().zip(&take) {
            if t > 0 {
                let at = backend.state_len(&s.state);
                items.push((&s.history[at..at + t], &mut s.state, s.drafted > 0));
            }
        }
        if items.is_empty() {
            return;
        }
        let together = items.len();
        let result = backend.forward_batch(&mut items);
        drop(items);
        self.metrics.steps.fetch_add(1, Relaxed);
        if together > 1 {
            self.metrics.batched_steps.fetch_add(1, Relaxed);
        }
        self.metrics
            .prefill_tokens
            .fetch_add(prefill as u64, Relaxed);
        let mut logits = match result {
            Ok(l) => l.into_iter(),
            Err(e) => {
                tracing::error!("forward pass failed: {e}");
                for s in &mut self.active {
                    let n = s.history.len() - std::mem::take(&mut s.drafted);
                    s.history.truncate(n);
                }
                if self.replan.is_some() {
                    // A split model: the mesh may have lost a node. The
                    // sequences wait for a new plan and go on (`recover`).
                    self.recover(e);
                    return;
                }
                for (s, &t) in self.active.iter_mut().zip(&take) {
                    if t > 0 {
                        let _ = s.req.events.send(Event::Failed(e.clone()));
                        s.ended = true;
                    }
                }
                // Their states may be half written: do not cache them.
                self.active.retain(|s| !s.ended);
                self.metrics.active.store(self.active.len(), Relaxed);
                return;
            }
        };
        self.recovered();
        let mut sampled = 0;
        // Prompt states to cache once the drafter has seen this step.
        let mut held = Vec::new();
        for (s, &t) in self.active.iter_mut().zip(&take) {
            if t == 0 {
                continue;
            }
            let Some(mut l) = logits.next() else { break };
            let len = self.backend.state_len(&s.state);
            if len < s.history.len() {
                // Still in prefill. All of the prompt but its last token
                // is in: where states cannot be cut back, keep a copy of
                // this one (see `prefix`).
                if hold_last && s.n_gen == 0 && len + 1 == s.history.len() {
                    // The cache keeps this very state and the sequence
                    // goes on as its copy: a split model's stages copy a
                    // state when its copy first runs, and a kept state
                    // that never runs again is still this one then.
                    let bytes = self.backend.state_bytes(&s.state);
                    let copy = self.backend.clone_state(&s.state);
                    let state = std::mem::replace(&mut s.state, copy);
                    held.push((s.id, s.history[..len].to_vec(), state, bytes));
                }
                continue;
            }
            let ends = Ends {
                eog: &self.eog,
                ctx_size: self.cfg.ctx_size,
            };
            if s.drafted > 0 {
                let (emitted, accepted) = verify(&self.backend, &ends, s, &l);
                sampled += emitted;
                self.metrics
                    .spec_accepted
                    .fetch_add(accepted as u64, Relaxed);
            } else {
                let (tok, _) = sample(s, &mut l, None);
                sampled += 1;
                ends.emit(s, tok);
            }
        }
        self.observe(&take);
        for (id, key, state, bytes) in held {
            let draft = self.spec.as_ref().and_then(|s| s.drafter.snapshot(id));
            self.cache
                .insert(key, Cached { state, draft }, bytes, false);
        }
        self.metrics.decoded(sampled);
        // Decode-only steps tell whether drafting pays.
        if let (0, Some(t)) = (prefill, started) {
            if let Some(p) = self.spec.as_mut().and_then(|s| s.payoff.as_mut()) {
                p.learn(drafted, t.elapsed(), sampled);
            }
        }
        self.retire();
    }

    /// Appends draft tokens to the decoding sequences that want them (see
    /// [`super::spec`]); a drafter's failure only costs this step's drafts.
    fn draft(&mut self) {
        let Some(spec) = self.spec.as_mut() else {
            return;
        };
        let mut wants = Vec::new();
        for (i, s) in self.active.iter_mut().enumerate() {
            let pending = s.history.len() - self.backend.state_len(&s.state);
            if s.n_gen == 0 || pending != 1 || s.ended || s.req.constraint.is_some() {
                continue;
            }
            // The state holds the context; the request its max_tokens,
            // one of them the token sampled after the drafts.
            let room = (self.cfg.ctx_size.saturating_sub(s.history.len()))
                .min(s.req.max_tokens.saturating_sub(s.n_gen + 1));
            let k = s.draft_len.want().min(room).min(spec.max_tokens);
            if k > 0 {
                wants.push((i, k));
            }
        }
        if wants.is_empty() {
            return;
        }
        let asks: Vec<DraftAsk> = wants
            .iter()
            .map(|&(i, k)| DraftAsk {
                seq: self.active[i].id,
                history: &self.active[i].history,
                k,
            })
            .collect();
        let drafts = spec.drafter.draft(&asks);
        drop(asks);
        let drafts = match drafts {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("drafting failed; this step runs without drafts: {e}");
                return;
            }
        };
        let n_vocab = self.eog.len();
        for (&(i, k), d) in wants.iter().zip(drafts) {
            let s = &mut self.active[i];
            let d: Vec<u32> = d
                .into_iter()
                .take(k)
                .take_while(|&t| (t as usize) < n_vocab)
                .collect();
            s.history.extend_from_slice(&d);
            s.drafted = d.len();
            self.metrics.spec_drafted.fetch_add(d.len() as u64, Relaxed);
        }
    }

    /// Shows a drafter that drafts from the target's hidden state (MTP)
    /// what this step kept of each sequence that ran (`take[i]` > 0).
    fn observe(&mut self, take: &[usize]) {
        let Some(spec) = self.spec.as_mut().filter(|s| s.drafter.wants_hidden()) else {
            return;
        };
        let mut seen = Vec::new();
        for (s, &t) in self.active.iter().zip(take) {
            if t == 0 || s.ended {
                continue;
            }
            if let Some((pos0, hidden)) = self.backend.hidden(&s.state) {
                seen.push(Observed {
                    seq: s.id,
                    pos0,
                    hidden,
                    history: &s.history,
                });
            }
        }
        if let Err(e) = spec.drafter.observe(&seen) {
            tracing::warn!(
                "the drafter could not follow this step; its next drafts may be fewer: {e}"
            );
        }
    }

    /// Removes ended sequences, keeping their states in the prefix cache.
    fn retire(&mut self) {
        if self.active.iter().any(|s| s.ended) {
            let (ended, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.active)
                .into_iter()
                .partition(|s| s.ended);
            self.active = keep;
            for mut s in ended {
                let len = self.backend.state_len(&s.state);
                let caching = len > 0 && self.cfg.cache_entries > 0;
                let draft = self.spec.as_mut().and_then(|spec| {
                    let d = caching.then(|| spec.drafter.snapshot(s.id)).flatten();
                    spec.drafter.forget(s.id);
                    d
                });
                if len > 0 {
                    self.backend.save_prefix(&s.history[..len], &s.state);
                }
                if caching {
                    self.backend.compact(&mut s.state);
                    let bytes = self.backend.state_bytes(&s.state);
                    s.history.truncate(len);
                    let cuts = cuts(&self.backend, &s.state);
                    let state = s.state;
                    self.cache
                        .insert(s.history, Cached { state, draft }, bytes, cuts);
                }
            }
            self.metrics.prefix_entries.store(self.cache.len(), Relaxed);
            self.metrics.prefix_bytes.store(self.cache.bytes(), Relaxed);
        }
        self.metrics.active.store(self.active.len(), Relaxed);
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "spec_tests.rs"]
mod spec_tests;
