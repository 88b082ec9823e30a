//! A node's share of a model: the calls a pipeline stage or an expert
//! holder makes when the model is split across machines.
//!
//! - [`Model::embed`], [`Model::forward_layers`], [`Model::finish_step`] and
//!   [`Model::logits`] run any contiguous range of layers over hidden rows
//!   (each row with its token id, which hash-routed layers read), so a
//!   stage never needs the layers it does not hold;
//! - [`ExpertDispatch`] lets a MoE layer hand the routed experts it does not
//!   hold to whoever does (expert parallelism), and
//!   [`Model::run_experts`] is what that holder runs.
//!
//! Results do not depend on where a piece runs: the same kernels see the
//! same rows, and partial expert outputs are combined in the router's order,
//! so a split model's logits equal the whole model's bit for bit.

use std::ops::Range;
use std::sync::Arc;

use crate::error::{ModelError, Result};
use crate::{Model, SeqState};

/// Rows for some routed experts of one layer: `counts[i]` rows of `d`
/// values for `experts[i]`, back to back in `rows`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExpertBatch {
    pub d: usize,
    pub experts: Vec<u32>,
    pub counts: Vec<u32>,
    pub rows: Vec<f32>,
}

impl ExpertBatch {
    /// Checks that the counts, the rows and the width agree.
    pub fn check(&self) -> Result<()> {
        if self.experts.len() != self.counts.len() {
            return Err(ModelError::Invalid(format!(
                "expert batch: {} experts but {} counts",
                self.experts.len(),
                self.counts.len()
            )));
        }
        let n: usize = self.counts.iter().map(|&c| c as usize).sum();
        if self.d == 0 || n.checked_mul(self.d) != Some(self.rows.len()) {
            return Err(ModelError::Invalid(format!(
                "expert batch: {n} rows of {} values need {} floats, got {}",
                self.d,
                n.saturating_mul(self.d),
                self.rows.len()
            )));
        }
        Ok(())
    }
}

/// Work handed to another node: waits for its rows of expert outputs.
pub trait ExpertTicket: Send {
    /// The outputs, `n_embd` per input row, in the batch's row order.
    fn wait(self: Box<Self>) -> Result<Vec<f32>>;
}

/// Where the routed experts a node does not hold are computed.
pub trait ExpertDispatch: Send + Sync {
    /// The node that holds expert `e` of layer `il`; `None` when it is here.
    fn owner(&self, il: usize, e: usize) -> Option<u32>;
    /// Starts `batch` on `node`; the caller runs its own experts meanwhile.
    fn submit(&self, node: u32, il: usize, batch: ExpertBatch) -> Result<Box<dyn ExpertTicket>>;
}

/// A batch on its way to another node, and the experts it covers.
pub(crate) type Sent = (Box<dyn ExpertTicket>, Vec<usize>);

/// Sends the routed experts of layer `il` that other nodes hold (rows of
/// width `d`, `by_expert[e]` listing each expert's (token, slot) pairs,
/// `gather` copying their rows), one batch per holder, so they run while
/// the caller runs its own; returns the tickets with the experts each one
/// covers (in batch order). Every architecture's MoE layer shares it.
pub(crate) fn submit_remote(
    dispatch: Option<&dyn ExpertDispatch>,
    il: usize,
    d: usize,
    by_expert: &[Vec<(usize, usize)>],
    gather: impl Fn(&[(usize, usize)], &mut Vec<f32>),
) -> Result<Vec<Sent>> {
    let Some(r) = dispatch else {
        return Ok(Vec::new());
    };
    let mut remote: Vec<(u32, ExpertBatch, Vec<usize>)> = Vec::new();
    for (e, list) in by_expert.iter().enumerate() {
        let Some(node) = (!list.is_empty()).then(|| r.owner(il, e)).flatten() else {
            continue;
        };
        let i = match remote.iter().position(|b| b.0 == node) {
            Some(i) => i,
            None => {
                let b = ExpertBatch {
                    d,
                    ..Default::default()
                };
                remote.push((node, b, Vec::new()));
                remote.len() - 1
            }
        };
        let (_, b, es) = &mut remote[i];
        b.experts.push(e as u32);
        b.counts.push(list.len() as u32);
        gather(list, &mut b.rows);
        es.push(e);
    }
    remote
        .into_iter()
        .map(|(node, batch, es)| Ok((r.submit(node, il, batch)?, es)))
        .collect()
}

/// Waits for the batches [`submit_remote`] sent and hands each expert's
/// `(token, slot)` list with its rows of the answer to `place`, in the
/// order sent; an answer of the wrong size is an error.
pub(crate) fn collect_remote(
    tickets: Vec<Sent>,
    by_expert: &[Vec<(usize, usize)>],
    d: usize,
    mut place: impl FnMut(&[(usize, usize)], &[f32]),
) -> Result<()> {
    for (ticket, es) in tickets {
        let y = ticket.wait()?;
        let rows: usize = es.iter().map(|&e| by_expert[e].len()).sum();
        if y.len() != rows * d {
            return Err(ModelError::Invalid(format!(
                "a remote expert holder returned {} values for {rows} rows of {d}",
                y.len()
            )));
        }
        let mut off = 0;
        for e in es {
            let list = &by_expert[e];
            place(list, &y[off..off + list.len() * d]);
            off += list.len() * d;
        }
    }
    Ok(())
}

impl Model {
    /// Width of a hidden row between layers (DeepSeek V4: its
    /// hyper-connection streams).
    pub fn n_embd(&self) -> usize {
        self.architecture().n_embd()
    }

    /// Width of a row into the routed experts ([`ExpertBatch::d`]).
    pub fn expert_width(&self) -> usize {
        self.architecture().expert_width()
    }

    /// Embeds `tokens` into `n × n_embd` hidden rows.
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.architecture().embed(tokens)
    }

    /// Runs `layers` over the hidden rows `x` of several sequences back to
    /// back: `seqs[i]` owns one row per token of `seqs[i].0`, at positions
    /// [`SeqState::held`]`..` (a truncated state's [`SeqState::pending`]
    /// tokens come first). Call [`Model::finish_step`] once the last layer
    /// of the step has run on this node. On an error no state is left half
    /// written ([`crate::SeqCache::abort_step`]).
    pub fn forward_layers(
        &self,
        layers: Range<usize>,
        x: &mut [f32],
        seqs: &mut [(&[u32], &mut SeqState)],
    ) -> Result<()> {
        let r = self.architecture().forward_layers(layers, x, seqs);
        if r.is_err() {
            for (_, s) in seqs.iter_mut() {
                s.cache_mut().abort_step();
            }
        }
        r
    }

    /// Commits the positions a step wrote into each state.
    pub fn finish_step(&self, seqs: &mut [(&[u32], &mut SeqState)]) {
        for (run, s) in seqs.iter_mut() {
            s.cache_mut().advance(run);
        }
    }

    /// Final norm and output head over `m × n_embd` rows: `m × n_vocab`.
    pub fn logits(&self, x: &[f32]) -> Result<Vec<f32>> {
        self.architecture().logits(x)
    }

    /// What the output head reads of `m × n_embd` final hidden rows: the
    /// rows after the final norm (`m × d`, `d` the model's width).
    pub fn final_norm(&self, x: &[f32]) -> Result<Vec<f32>> {
        self.architecture().final_norm(x)
    }

    /// Runs every layer over several sequences (`(tokens, state)`, as
    /// [`Model::forward_layers`]) and returns each one's final hidden rows
    /// after the final norm, one row of the model's width per token: what
    /// an embedding pools. On an error no state is left half written.
    pub fn final_rows(&self, seqs: &mut [(&[u32], &mut SeqState)]) -> Result<Vec<Vec<f32>>> {
        if seqs.iter().any(|(t, _)| t.is_empty()) {
            return Err(ModelError::Invalid(
                "a sequence in the batch has no tokens".into(),
            ));
        }
        let runs: Vec<Vec<u32>> = seqs
            .iter()
            .map(|(t, s)| [s.pending(), t].concat())
            .collect();
        let tokens = runs.concat();
        let mut x = self.embed(&tokens)?;
        {
            let mut refs: Vec<(&[u32], &mut SeqState)> = runs
                .iter()
                .zip(seqs.iter_mut())
                .map(|(r, (_, s))| (r.as_slice(), &mut **s))
                .collect();
            self.forward_layers(0..self.n_layer(), &mut x, &mut refs)?;
            self.finish_step(&mut refs);
        }
        let h = self.final_norm(&x)?;
        let d = h.len() / tokens.len();
        let mut out = Vec::with_capacity(seqs.len());
        let mut off = 0;
        for ((t, _), run) in seqs.iter().zip(&runs) {
            // A rewound state replays its kept tokens first: their rows
            // are not asked for.
            let skip = run.len() - t.len();
            out.push(h[(off + skip) * d..(off + run.len()) * d].to_vec());
            off += run.len();
        }
        Ok(out)
    }

    /// Whether layer `il` has routed experts.
    pub fn is_moe_layer(&self, il: usize) -> bool {
        self.architecture().is_moe_layer(il)
    }

    /// Routed experts per MoE layer (0 for dense models).
    pub fn n_expert(&self) -> usize {
        self.architecture().n_expert()
    }

    /// Sends the experts this node does not hold elsewhere (`None`: every
    /// expert runs here).
    pub fn set_expert_dispatch(&mut self, d: Option<Arc<dyn ExpertDispatch>>) -> Result<()> {
        self.architecture_mut().set_expert_dispatch(d)
    }

    /// Runs the routed experts of layer `il` on `batch`'s rows (what an
    /// expert holder does for the node running the layer); unweighted
    /// outputs, [`Model::expert_width`] per row, in row order.
    pub fn run_experts(&self, il: usize, batch: &ExpertBatch) -> Result<Vec<f32>> {
        batch.check()?;
        self.architecture().run_experts(il, batch)
    }
}
