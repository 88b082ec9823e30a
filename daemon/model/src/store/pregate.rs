//! Pre-gating: predicting the experts of the next MoE layer from the
//! hidden state the current layer starts with, so their reads run while
//! this layer computes.
//!
//! The residual stream changes little from one layer to the next, so the
//! next layer's router (its `ffn_norm` then `ffn_gate_inp`) applied to the
//! current state picks mostly the experts it will pick a layer later. The
//! product is the router's (`n_embd × n_expert`), small next to one
//! expert; it runs only when experts are paged, and outside any observer.
//!
//! DeepSeek V4's hash-routed layers need no prediction: their experts are
//! a function of the token ids, known before the pass starts, so exactly
//! those are read ahead. Its learned-routing layers are pre-gated as above,
//! the router's input being the next layer's FFN hyper-connection collapse
//! (`hc_ffn`, global like the routers) of the current streams.

use dwarfstar_kernels::{matmul, ops};

use crate::deepseek2::moe::route;
use crate::deepseek2::weights::Ffn;
use crate::deepseek2::Deepseek2Model;
use crate::deepseek4::weights::Router;
use crate::deepseek4::{hc, moe as moe4, Ctx as Ctx4, Deepseek4Model};
use crate::error::{ModelError, Result};

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
    Ok(by_votes(&votes))
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

/// Experts ordered by votes (token count, then summed weight), best first.
fn by_votes(votes: &[(usize, f32)]) -> Vec<usize> {
    let mut ids: Vec<usize> = (0..votes.len()).filter(|&e| votes[e].0 > 0).collect();
    ids.sort_by(|&a, &b| {
        votes[b]
            .0
            .cmp(&votes[a].0)
            .then(votes[b].1.total_cmp(&votes[a].1))
    });
    ids
}

/// The experts of deepseek4 layer `il` for `tokens` whose streams an
/// earlier layer starts with `x`: exact for a hash-routed layer, predicted
/// by its router otherwise.
fn predict4(m: &Deepseek4Model, il: usize, x: &[f32], tokens: &[u32]) -> Result<Vec<usize>> {
    let Some(l) = m.w.layers.get(il) else {
        return Ok(Vec::new());
    };
    let hp = &m.hp;
    let (ne, k) = (hp.n_expert, hp.n_expert_used);
    let mut votes = vec![(0usize, 0f32); ne];
    match &l.moe.router {
        Router::Hash(table) => {
            for &t in tokens {
                let t = t as usize;
                let row = table.get(t * k..(t + 1) * k).ok_or_else(|| {
                    ModelError::Invalid(format!("token {t} outside the hash routing table"))
                })?;
                for &e in row {
                    if let Some(v) = votes.get_mut(e as usize) {
                        v.0 += 1;
                    }
                }
            }
        }
        Router::Learned(bias) => {
            let src = m.store.resident();
            let cx = Ctx4 {
                file: src,
                store: &m.store,
                exact: false,
                f32_experts: false,
                obs: None,
                remote: None,
            };
            let (mut h, _) = hc::pre(
                &cx,
                &l.hc_ffn,
                x,
                hp.hc_mult,
                hp.hc_iters,
                hp.rms_eps,
                hp.hc_eps,
            )?;
            for row in h.chunks_exact_mut(l.ffn_norm.len()) {
                ops::rms_norm(row, &l.ffn_norm, hp.rms_eps);
            }
            let n = tokens.len();
            let mut logits = vec![0f32; n * ne];
            matmul(l.moe.gate_inp.mat(src), &h, n, &mut logits)?;
            for lg in logits.chunks_exact(ne) {
                let r = moe4::route(lg, None, bias.as_deref(), k, hp.weights_norm, 1.0);
                for (&e, &wt) in r.experts.iter().zip(&r.weights) {
                    if let Some(v) = votes.get_mut(e) {
                        v.0 += 1;
                        v.1 += wt;
                    }
                }
            }
        }
    }
    Ok(by_votes(&votes))
}

/// Starts reading the experts deepseek4 layer `il` will use (hash
/// routing) or is predicted to use (learned routing) for `tokens`, given
/// the streams `x` an earlier layer starts with. A no-op unless the store
/// pages experts; a failed prediction only costs the prefetch.
pub(crate) fn deepseek4(m: &Deepseek4Model, il: usize, x: &[f32], tokens: &[u32]) {
    if il >= m.w.layers.len() || !m.store.pregating() {
        return;
    }
    match predict4(m, il, x, tokens) {
        Ok(ids) => m.store.prefetch_experts(il, &ids),
        Err(e) => tracing::debug!("pre-gating layer {il}: {e}"),
    }
}
