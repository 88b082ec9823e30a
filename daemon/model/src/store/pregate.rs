//! Pre-gating: predicting the experts of the next MoE layer from the
//! hidden state the current layer starts with, so their reads run while
//! this layer computes.
//!
//! The residual stream changes little from one layer to the next, so the
//! next layer's router (its `ffn_norm` then `ffn_gate_inp`) applied to the
//! current state picks mostly the experts it will pick a layer later. The
//! product is the router's (`n_embd × n_expert`), small next to one
//! expert; it runs only when experts are paged, and outside any observer.

use dwarfstar_kernels::{matmul, ops};

use crate::deepseek2::moe::route;
use crate::deepseek2::weights::Ffn;
use crate::deepseek2::Deepseek2Model;
use crate::error::Result;

use super::WeightBytes;

/// The experts of layer `il` that `x` (`n` rows) would pick, most often
/// picked first (ties: larger summed weight first).
fn predict(
    m: &Deepseek2Model,
    src: &dyn WeightBytes,
    il: usize,
    x: &[f32],
    n: usize,
) -> Result<Vec<usize>> {
    let (Some(l), Some(p)) = (m.w.layers.get(il), m.hp.moe.as_ref()) else {
        return Ok(Vec::new());
    };
    let Ffn::Moe(w) = &l.ffn else {
        return Ok(Vec::new());
    };
    let mut h = x.to_vec();
    for row in h.chunks_exact_mut(l.ffn_norm.len()) {
        ops::rms_norm(row, &l.ffn_norm, m.hp.rms_eps);
    }
    let mut logits = vec![0f32; n * p.n_expert];
    matmul(w.gate_inp.mat(src), &h, n, &mut logits)?;
    let mut votes = vec![(0usize, 0f32); p.n_expert];
    for lg in logits.chunks_exact(p.n_expert) {
        let r = route(lg, w.probs_bias.as_deref(), p);
        for (&e, &wt) in r.experts.iter().zip(&r.weights) {
            if let Some(v) = votes.get_mut(e) {
                v.0 += 1;
                v.1 += wt;
            }
        }
    }
    let mut ids: Vec<usize> = (0..p.n_expert).filter(|&e| votes[e].0 > 0).collect();
    ids.sort_by(|&a, &b| {
        votes[b]
            .0
            .cmp(&votes[a].0)
            .then(votes[b].1.total_cmp(&votes[a].1))
    });
    Ok(ids)
}

/// Starts reading the experts layer `il` is predicted to use, given the
/// hidden rows `x` an earlier layer starts with. A no-op unless the
/// store pages experts; a failed prediction only costs the prefetch.
pub(crate) fn deepseek2(m: &Deepseek2Model, il: usize, x: &[f32], n: usize) {
    if il >= m.w.layers.len() || !m.store.pregating() {
        return;
    }
    match predict(m, m.store.resident(), il, x, n) {
        Ok(ids) => m.store.prefetch_experts(il, &ids),
        Err(e) => tracing::debug!("pre-gating layer {il}: {e}"),
    }
}
