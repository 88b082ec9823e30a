//! DeepSeek V4's mixture of experts.
//!
//! Routing: router logits → `sqrt(softplus(·))` scores. Hash layers take
//! their experts from the token id (`ffn_gate_tid2eid`); the others take
//! the `n_expert_used` best scores after adding the selection bias
//! (`exp_probs_b`, which steers the choice only). The chosen experts'
//! scores are normalised to sum to one and multiplied by
//! `expert_weights_scale`.
//!
//! Experts are SwiGLU with DeepSeek's clamp (`swiglu_clamp_*`): the gate is
//! capped at `limit`, the up projection clamped to `±limit`. Tokens are
//! grouped by expert, and each expert runs one product per projection over
//! its slice of the stacked tensors; the shared expert runs on every token
//! and is added to the weighted routed outputs. Routed experts another node
//! holds (expert parallelism) are sent there first and their answers fill
//! the same slots, so the sums equal the single-node ones bit for bit.

use crate::error::{ModelError, Result};
use crate::stage::{collect_remote, submit_remote, ExpertBatch};

use super::weights::{MoeWeights, Router, SharedExpert};
use super::Ctx;

/// The experts one token uses, in router order, with their weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub experts: Vec<usize>,
    pub weights: Vec<f32>,
}

/// `sqrt(softplus(x))`, softplus linear above 20 as torch's.
pub fn sqrt_softplus(x: f32) -> f32 {
    let sp = if x > 20.0 { x } else { x.exp().ln_1p() };
    sp.sqrt()
}

/// Indices of the `k` largest values (ties: lower index; NaN last).
fn best(v: &[f32], k: usize) -> Vec<usize> {
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

/// Routes one token: `logits` (`n_expert`), the hash table row if the layer
/// hashes, the selection bias otherwise.
pub fn route(
    logits: &[f32],
    hashed: Option<&[i32]>,
    bias: Option<&[f32]>,
    k: usize,
    norm: bool,
    scale: f32,
) -> Route {
    let scores: Vec<f32> = logits.iter().map(|&l| sqrt_softplus(l)).collect();
    let experts = match hashed {
        Some(ids) => ids.iter().map(|&e| e as usize).collect(),
        None => match bias {
            Some(b) => {
                let sel: Vec<f32> = scores.iter().zip(b).map(|(s, b)| s + b).collect();
                best(&sel, k)
            }
            None => best(&scores, k),
        },
    };
    let mut weights: Vec<f32> = experts.iter().map(|&e| scores[e]).collect();
    if norm {
        let sum: f32 = weights.iter().sum();
        if sum > 0.0 {
            weights.iter_mut().for_each(|w| *w /= sum);
        }
    }
    weights.iter_mut().for_each(|w| *w *= scale);
    Route { experts, weights }
}

/// DeepSeek's clamped SwiGLU in place on `gate`: `silu(min(g, l)) ·
/// clamp(u, -l, l)` (no clamp when `limit ≤ 1e-6`).
pub fn swiglu_clamp(gate: &mut [f32], up: &[f32], limit: f32) {
    let on = limit > 1e-6;
    for (g, &u) in gate.iter_mut().zip(up) {
        let (x, u) = if on {
            (g.min(limit), u.clamp(-limit, limit))
        } else {
            (*g, u)
        };
        *g = x / (1.0 + (-x).exp()) * u;
    }
}

fn shared_expert(
    cx: &Ctx<'_>,
    w: &SharedExpert,
    x: &[f32],
    n: usize,
    limit: f32,
) -> Result<Vec<f32>> {
    let mut g = cx.mm(&w.gate, x, n)?;
    let u = cx.mm(&w.up, x, n)?;
    swiglu_clamp(&mut g, &u, limit);
    cx.mm(&w.down, &g, n)
}

/// Per-layer routing constants.
pub struct MoeCfg {
    pub n_expert: usize,
    pub k: usize,
    pub norm: bool,
    pub scale: f32,
    pub limit_exp: f32,
    pub limit_shexp: f32,
}

/// Routed expert `e` over the gathered rows `x` (`m × e`): clamped SwiGLU,
/// unweighted.
fn expert(
    cx: &Ctx<'_>,
    w: &MoeWeights,
    e: usize,
    x: &[f32],
    m: usize,
    limit: f32,
) -> Result<Vec<f32>> {
    let mut g = cx.expert(&w.gate, e, x, m)?;
    let u = cx.expert(&w.up, e, x, m)?;
    swiglu_clamp(&mut g, &u, limit);
    cx.expert(&w.down, e, &g, m)
}

/// The MoE FFN of layer `il` over the normalised rows `x` (`n × e`) of
/// tokens `tokens`. Experts other nodes hold go to them first
/// ([`Ctx::remote`]) and run while the local and shared ones do; every
/// output keeps its slot, so the sums do not depend on where it ran.
pub(crate) fn moe(
    cx: &Ctx<'_>,
    c: &MoeCfg,
    w: &MoeWeights,
    il: usize,
    x: &[f32],
    tokens: &[u32],
) -> Result<Vec<f32>> {
    let n = tokens.len();
    let d = x.len() / n.max(1);
    let logits = cx.mm(&w.gate_inp, x, n)?;
    let mut routes = Vec::with_capacity(n);
    for (t, l) in logits.chunks_exact(c.n_expert).enumerate() {
        let r = match &w.router {
            Router::Hash(table) => {
                let tok = tokens[t] as usize;
                let row = table.get(tok * c.k..(tok + 1) * c.k).ok_or_else(|| {
                    ModelError::Invalid(format!("token {tok} outside the hash routing table"))
                })?;
                route(l, Some(row), None, c.k, c.norm, c.scale)
            }
            Router::Learned(bias) => route(l, None, bias.as_deref(), c.k, c.norm, c.scale),
        };
        routes.push(r);
    }
    // Token slots per expert: (token, slot in that token's route).
    let mut by_expert: Vec<Vec<(usize, usize)>> = vec![Vec::new(); c.n_expert];
    for (t, r) in routes.iter().enumerate() {
        for (s, &e) in r.experts.iter().enumerate() {
            by_expert
                .get_mut(e)
                .ok_or_else(|| ModelError::Invalid(format!("expert {e} of {}", c.n_expert)))?
                .push((t, s));
        }
    }
    let gather = |list: &[(usize, usize)], xe: &mut Vec<f32>| {
        for &(t, _) in list {
            xe.extend_from_slice(&x[t * d..(t + 1) * d]);
        }
    };
    let tickets = submit_remote(cx.remote, il, d, &by_expert, gather)?;
    let is_remote = |e: usize| tickets.iter().any(|(_, es)| es.contains(&e));

    let k = c.k;
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
    let mut xe = Vec::new();
    // Experts in memory first, then as their reads come in (the order
    // does not change the sums: each output has its own slot).
    let wanted: Vec<(usize, usize)> = by_expert
        .iter()
        .enumerate()
        .filter(|&(e, list)| !list.is_empty() && !is_remote(e))
        .map(|(e, list)| (e, list.len()))
        .collect();
    for e in cx.store.want_experts(il, &wanted) {
        let list = &by_expert[e];
        xe.clear();
        gather(list, &mut xe);
        let y = expert(cx, w, e, &xe, list.len(), c.limit_exp)?;
        place(&mut slots, list, &y);
    }
    // The shared expert runs while remote answers are on their way; its
    // output is still added last.
    let shared = match &w.shared {
        Some(sh) => Some(shared_expert(cx, sh, x, n, c.limit_shexp)?),
        None => None,
    };
    collect_remote(tickets, &by_expert, d, |list, y| place(&mut slots, list, y))?;
    let mut out = vec![0f32; n * d];
    for (t, o) in out.chunks_exact_mut(d).enumerate() {
        for s in 0..k {
            let src = &slots[(t * k + s) * d..(t * k + s + 1) * d];
            o.iter_mut().zip(src).for_each(|(a, &b)| *a += b);
        }
    }
    if let Some(y) = shared {
        out.iter_mut().zip(&y).for_each(|(a, &b)| *a += b);
    }
    Ok(out)
}

/// Runs `batch`'s experts of a layer over their rows, for the node that
/// routed them: unweighted outputs in row order.
pub(crate) fn run_experts(
    cx: &Ctx<'_>,
    w: &MoeWeights,
    limit: f32,
    batch: &ExpertBatch,
) -> Result<Vec<f32>> {
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
            out.extend(expert(cx, w, e, &batch.rows[off..off + c * d], c, limit)?);
        }
        off += c * d;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqrt_softplus_matches_the_formula() {
        for x in [-30.0f32, -2.0, 0.0, 0.7, 19.0, 25.0] {
            let want = (1.0f64 + (x as f64).exp()).ln().sqrt() as f32;
            assert!((sqrt_softplus(x) - want).abs() < 1e-5, "{x}");
        }
    }

    #[test]
    fn bias_steers_choice_not_weights() {
        let logits = [0.0, 1.0, 0.5, -1.0];
        let r = route(&logits, None, None, 2, true, 1.5);
        assert_eq!(r.experts, vec![1, 2]);
        let bias = [0.0, 0.0, 0.0, 5.0];
        let r = route(&logits, None, Some(&bias), 2, true, 1.5);
        assert_eq!(r.experts, vec![3, 1]);
        let (s3, s1) = (sqrt_softplus(-1.0), sqrt_softplus(1.0));
        assert!((r.weights[0] - 1.5 * s3 / (s3 + s1)).abs() < 1e-6);
        // Hash routing ignores the scores' order.
        let r = route(&logits, Some(&[3, 0]), None, 2, false, 1.0);
        assert_eq!(r.experts, vec![3, 0]);
        assert_eq!(r.weights, vec![sqrt_softplus(-1.0), sqrt_softplus(0.0)]);
    }

    #[test]
    fn swiglu_clamp_caps_gate_and_up() {
        let mut g = [20.0, -3.0];
        swiglu_clamp(&mut g, &[50.0, -50.0], 10.0);
        let silu = |x: f32| x / (1.0 + (-x).exp());
        assert!((g[0] - silu(10.0) * 10.0).abs() < 1e-4);
        assert!((g[1] - silu(-3.0) * -10.0).abs() < 1e-5);
    }
}
