//! DeepSeek's mixture of experts: routing (softmax or sigmoid scores, the
//! V3 selection bias, group-limited top-k, normalised and scaled weights)
//! and expert execution that reads only the selected experts' bytes.
//!
//! Tokens are grouped by expert, and each (expert, token group) runs one
//! matrix product per projection over that expert's slice of the stacked
//! tensors. The weighted outputs are summed per token in the router's
//! order, then the shared experts' output is added, as llama.cpp does.

use dwarfstar_kernels::ops;

use crate::error::{ModelError, Result};

use super::hparams::{Gating, MoeParams};
use super::weights::{GateUp, Mlp, MoeWeights};
use super::Ctx;
use crate::stage::{collect_remote, submit_remote, ExpertBatch};

/// The experts one token uses, best first, with their weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub experts: Vec<usize>,
    pub weights: Vec<f32>,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Indices of the `k` largest values of `v`, largest first (ties: lower
/// index first; NaN sorts last).
fn top_k(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| {
        let (x, y) = (v[a], v[b]);
        y.partial_cmp(&x)
            .unwrap_or_else(|| x.is_nan().cmp(&y.is_nan()))
            .then(a.cmp(&b))
    });
    idx.truncate(k);
    idx
}

/// Routes one token from its router logits (`n_expert` values).
pub fn route(logits: &[f32], bias: Option<&[f32]>, p: &MoeParams) -> Route {
    let mut probs = logits.to_vec();
    match p.gating {
        Gating::Softmax => ops::softmax(&mut probs),
        Gating::Sigmoid => probs.iter_mut().for_each(|v| *v = sigmoid(*v)),
    }
    // The bias only steers selection; weights come from the raw scores.
    let mut sel = probs.clone();
    if let Some(b) = bias {
        ops::add_assign(&mut sel, b);
    }
    if p.n_group > 1 {
        // A group scores the sum of its two best experts; only the best
        // `n_group_used` groups stay selectable.
        let per = p.n_expert / p.n_group;
        let scores: Vec<f32> = sel
            .chunks_exact(per)
            .map(|g| top_k(g, 2).iter().map(|&i| g[i]).sum())
            .collect();
        let keep = top_k(&scores, p.n_group_used);
        for (g, chunk) in sel.chunks_exact_mut(per).enumerate() {
            if !keep.contains(&g) {
                chunk.fill(f32::NEG_INFINITY);
            }
        }
    }
    let experts = top_k(&sel, p.n_expert_used);
    let mut weights: Vec<f32> = experts.iter().map(|&e| probs[e]).collect();
    if p.weights_norm {
        // ggml clamps the sum to the smallest normal f16.
        let sum = weights.iter().sum::<f32>().max(6.103_515_6e-5);
        weights.iter_mut().for_each(|w| *w /= sum);
    }
    if p.weights_scale != 0.0 && p.weights_scale != 1.0 {
        weights.iter_mut().for_each(|w| *w *= p.weights_scale);
    }
    Route { experts, weights }
}

/// A SwiGLU FFN over `n` rows.
pub(crate) fn mlp(cx: &Ctx<'_>, w: &Mlp, x: &[f32], n: usize) -> Result<Vec<f32>> {
    let mut g = cx.mm(&w.gate, x, n)?;
    let u = cx.mm(&w.up, x, n)?;
    cx.swiglu(&mut g, &u, w.gate.rows);
    cx.mm(&w.down, &g, n)
}

/// Expert `e` over the gathered rows `x` (`m × n_embd`).
fn expert(cx: &Ctx<'_>, w: &MoeWeights, e: usize, x: &[f32], m: usize) -> Result<Vec<f32>> {
    let act = match &w.gate_up {
        GateUp::Split { gate, up } => {
            let mut g = cx.expert_mm(gate, e, x, m)?;
            let u = cx.expert_mm(up, e, x, m)?;
            cx.swiglu(&mut g, &u, gate.rows);
            g
        }
        GateUp::Fused(s) => {
            let gu = cx.expert_mm(s, e, x, m)?;
            let ff = s.rows / 2;
            let mut g = vec![0f32; m * ff];
            for (t, row) in gu.chunks_exact(2 * ff).enumerate() {
                let gt = &mut g[t * ff..(t + 1) * ff];
                gt.copy_from_slice(&row[..ff]);
                cx.swiglu(gt, &row[ff..], ff);
            }
            g
        }
    };
    cx.expert_mm(&w.down, e, &act, m)
}

/// The MoE FFN (routed plus shared experts) of layer `il` over the
/// normalised rows `x` (`n × n_embd`). Experts other nodes hold go to them
/// first ([`Ctx::remote`]) and run while the local and shared ones do.
pub(crate) fn moe_ffn(
    cx: &Ctx<'_>,
    p: &MoeParams,
    w: &MoeWeights,
    il: usize,
    x: &[f32],
    n: usize,
) -> Result<Vec<f32>> {
    let d = x.len() / n;
    let k = p.n_expert_used;
    let logits = cx.mm(&w.gate_inp, x, n)?;
    let routes: Vec<Route> = logits
        .chunks_exact(p.n_expert)
        .map(|l| route(l, w.probs_bias.as_deref(), p))
        .collect();

    // Token slots per expert: (token, slot in that token's route).
    let mut by_expert: Vec<Vec<(usize, usize)>> = vec![Vec::new(); p.n_expert];
    for (t, r) in routes.iter().enumerate() {
        for (s, &e) in r.experts.iter().enumerate() {
            let list = by_expert.get_mut(e).ok_or_else(|| {
                ModelError::Invalid(format!("router chose expert {e} of {}", p.n_expert))
            })?;
            list.push((t, s));
        }
    }
    let gather = |list: &[(usize, usize)], xe: &mut Vec<f32>| {
        for &(t, _) in list {
            xe.extend_from_slice(&x[t * d..(t + 1) * d]);
        }
    };

    // Remote experts first, one batch per holder, so they overlap ours.
    let tickets = submit_remote(cx.remote, il, d, &by_expert, gather)?;
    let is_remote = |e: usize| tickets.iter().any(|(_, es)| es.contains(&e));

    let mut slots = vec![0f32; n * k * d];
    let place = |slots: &mut [f32], list: &[(usize, usize)], y: &[f32]| {
        for (i, &(t, s)) in list.iter().enumerate() {
            let wt = routes[t].weights[s];
            let dst = &mut slots[(t * k + s) * d..(t * k + s + 1) * d];
            for (o, &v) in dst.iter_mut().zip(&y[i * d..(i + 1) * d]) {
                *o = v * wt;
            }
        }
    };
    // Experts in memory first, then as their reads come in (the order
    // does not change the sums: each output has its own slot).
    let local: Vec<(usize, usize)> = by_expert
        .iter()
        .enumerate()
        .filter(|(e, list)| !list.is_empty() && !is_remote(*e))
        .map(|(e, list)| (e, list.len()))
        .collect();
    let mut xe = Vec::new();
    for e in cx.store.want_experts(il, &local) {
        let list = &by_expert[e];
        xe.clear();
        gather(list, &mut xe);
        let y = expert(cx, w, e, &xe, list.len())?;
        place(&mut slots, list, &y);
    }
    // The shared experts run while remote answers are on their way; their
    // output is still added last, so the sums do not depend on the split.
    let shared = match &w.shared {
        Some(sh) => Some(mlp(cx, sh, x, n)?),
        None => None,
    };
    collect_remote(tickets, &by_expert, d, |list, y| place(&mut slots, list, y))?;
    let mut out = vec![0f32; n * d];
    for t in 0..n {
        let o = &mut out[t * d..(t + 1) * d];
        o.copy_from_slice(&slots[t * k * d..(t * k + 1) * d]);
        for s in 1..k {
            ops::add_assign(o, &slots[(t * k + s) * d..(t * k + s + 1) * d]);
        }
    }
    if let Some(y) = shared {
        ops::add_assign(&mut out, &y);
    }
    Ok(out)
}

/// Runs `batch`'s experts over their rows, for the node that routed them:
/// unweighted outputs in row order.
pub(crate) fn run_experts(cx: &Ctx<'_>, w: &MoeWeights, batch: &ExpertBatch) -> Result<Vec<f32>> {
    let d = batch.d;
    let mut out = Vec::with_capacity(batch.rows.len());
    let mut off = 0;
    for (&e, &c) in batch.experts.iter().zip(&batch.counts) {
        let (e, c) = (e as usize, c as usize);
        if e >= w.down.n {
            return Err(ModelError::Invalid(format!(
                "expert {e} requested, the layer has {}",
                w.down.n
            )));
        }
        if c > 0 {
            out.extend(expert(cx, w, e, &batch.rows[off..off + c * d], c)?);
        }
        off += c * d;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(gating: Gating, n_group: usize, n_group_used: usize) -> MoeParams {
        MoeParams {
            n_expert: 8,
            n_expert_used: 2,
            n_group,
            n_group_used,
            n_ff_exp: 4,
            n_shared: 1,
            weights_scale: 2.5,
            weights_norm: true,
            gating,
        }
    }

    #[test]
    fn sigmoid_routing_uses_bias_for_choice_only() {
        let logits = [0.0, 1.0, 0.5, -1.0, 0.9, 0.0, 0.0, 0.0];
        let p = params(Gating::Sigmoid, 1, 1);
        let r = route(&logits, None, &p);
        assert_eq!(r.experts, vec![1, 4]);
        // A bias promotes expert 3 into the top two; its weight stays its score.
        let bias = [0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0];
        let r = route(&logits, Some(&bias), &p);
        assert_eq!(r.experts, vec![3, 1]);
        let (s3, s1) = (sigmoid(-1.0), sigmoid(1.0));
        assert!((r.weights[0] - 2.5 * s3 / (s3 + s1)).abs() < 1e-6);
        assert!((r.weights[1] - 2.5 * s1 / (s3 + s1)).abs() < 1e-6);
    }

    #[test]
    fn group_limit_masks_weak_groups() {
        // Groups of two: {0,1} {2,3} {4,5} {6,7}. Expert 6 is the best one,
        // but group {2,3} and {4,5} have the best pair sums.
        let logits = [0.0, 0.0, 0.8, 0.8, 0.7, 0.7, 0.9, -3.0];
        let p = params(Gating::Sigmoid, 4, 2);
        let r = route(&logits, None, &p);
        assert_eq!(r.experts, vec![2, 3]);
        let p = params(Gating::Sigmoid, 1, 1);
        assert_eq!(route(&logits, None, &p).experts, vec![6, 2]);
    }

    #[test]
    fn softmax_routing_without_norm() {
        let logits = [1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let mut p = params(Gating::Softmax, 0, 0);
        p.weights_norm = false;
        p.weights_scale = 0.0;
        let r = route(&logits, None, &p);
        let mut probs = logits.to_vec();
        ops::softmax(&mut probs);
        assert_eq!(r.experts, vec![2, 1]);
        assert_eq!(r.weights, vec![probs[2], probs[1]]);
    }
}
