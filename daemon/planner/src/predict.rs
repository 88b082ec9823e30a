//! Predictions beyond the plan's tokens/s: where a decoded token's time
//! goes ([`Split`]), each node's memory, aggregate tokens/s at several
//! streams (one batched step per token of every stream), time to first
//! token (one prefill step of the prompt), and the head-parallel attention
//! option (simulated only: the runtime does not split attention yet).
//!
//! Head-parallel attention: the layers' head-divisible attention weights
//! ([`HeadSplit::per_layer_bytes`], e.g. V4's `attn_q_b` and
//! `attn_output_a`, whose `groups` output groups are independent) are
//! divided, in whole groups, over every node the plan gives work; a node
//! other than the layer's stage node receives the normalised row and
//! returns its groups' partial output (`hidden` f32 values each way: one
//! round trip per layer). Groups go one at a time to the node that would
//! finish its share soonest. Everything else (the KV path, compressor,
//! indexer, the experts) stays as planned; each helper's share of the
//! attention weights is reported as extra memory.

use serde::{Deserialize, Serialize};

use crate::cost::{Candidate, Ctx, Eval, Split};
use crate::types::{CostTerms, Plan, PlanError, PlanRequest};

/// What to predict besides the plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictOptions {
    /// Stream counts for aggregate tokens/s.
    pub streams: Vec<u32>,
    /// Prompt length for time to first token.
    pub prompt_tokens: u64,
    /// Also predict head-parallel attention (None: not asked).
    pub head_split: Option<HeadSplit>,
}

impl Default for PredictOptions {
    fn default() -> Self {
        PredictOptions {
            streams: vec![1, 4, 16],
            prompt_tokens: 512,
            head_split: None,
        }
    }
}

/// The attention weights that divide over heads, per layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadSplit {
    /// Independent head groups (V4: its output groups; dense: heads).
    pub groups: u32,
    /// Bytes per layer that divide over the groups.
    pub per_layer_bytes: Vec<u64>,
}

/// A node's memory under the plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeMemory {
    pub node: String,
    pub budget: u64,
    /// Dense and shared-expert weights of its layers.
    pub weights: u64,
    pub kv: u64,
    pub embed: u64,
    pub output: u64,
    /// Routed-expert bytes assigned to it, and how many of those page.
    pub experts: u64,
    pub experts_paged: u64,
}

/// Aggregate throughput at a number of streams.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamRate {
    pub streams: u32,
    /// Seconds of one batched step (one token of every stream).
    pub step_s: f64,
    pub split: Split,
    /// `streams / step_s`.
    pub tokens_per_s: f64,
}

/// Head-parallel attention's predicted decode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadParallel {
    /// Per stage node, the groups each node computes for its layers.
    pub groups: Vec<(String, Vec<(String, u32)>)>,
    pub split: Split,
    pub tokens_per_s: f64,
    /// Attention bytes each node holds for other nodes' layers.
    pub extra_bytes: Vec<(String, u64)>,
}

/// Everything predicted for a plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// One decoded token of one stream.
    pub decode: Split,
    pub tokens_per_s: f64,
    pub prompt_tokens: u64,
    pub prefill: Split,
    /// Time to first token: the prefill step of the prompt.
    pub ttft_s: f64,
    pub streams: Vec<StreamRate>,
    pub nodes: Vec<NodeMemory>,
    pub head_parallel: Option<HeadParallel>,
}

/// Plans `req` with `terms` and predicts as `opts` asks.
pub fn plan_and_predict(
    req: &PlanRequest,
    terms: &CostTerms,
    opts: &PredictOptions,
) -> Result<(Plan, Prediction), PlanError> {
    let ctx = Ctx::new(req, terms)?;
    if let Some(h) = &opts.head_split {
        if h.groups == 0 || h.per_layer_bytes.len() != ctx.layers.len() {
            return Err(PlanError::BadInput(format!(
                "head split: {} groups, {} layer sizes for {} layers",
                h.groups,
                h.per_layer_bytes.len(),
                ctx.layers.len()
            )));
        }
    }
    let (cand, ev) = crate::choose(&ctx, req)?;
    let plan = crate::build(&ctx, req, &cand, &ev);
    let p = opts.prompt_tokens.max(1) as f64;
    let prefill = ctx.evaluate_n(&cand, p, 1.0).split;
    let streams = opts
        .streams
        .iter()
        .filter(|&&n| n > 0)
        .map(|&n| {
            let split = ctx.evaluate_n(&cand, n as f64, n as f64).split;
            let step_s = split.total();
            StreamRate {
                streams: n,
                step_s,
                split,
                tokens_per_s: rate(n as f64, step_s),
            }
        })
        .collect();
    let nodes = ctx
        .nodes
        .iter()
        .zip(ev.holdings.iter().zip(&ev.fits))
        .map(|(n, (h, f))| NodeMemory {
            node: n.id.clone(),
            budget: n.budget,
            weights: h.weights,
            kv: h.kv,
            embed: h.embed,
            output: h.output,
            experts: h.experts,
            experts_paged: f.paged,
        })
        .collect();
    let head_parallel = opts
        .head_split
        .as_ref()
        .map(|h| head_parallel(&ctx, &cand, &ev, h));
    Ok((
        plan,
        Prediction {
            decode: ev.split,
            tokens_per_s: rate(1.0, ev.time),
            prompt_tokens: p as u64,
            prefill,
            ttft_s: prefill.total(),
            streams,
            nodes,
            head_parallel,
        },
    ))
}

fn rate(n: f64, s: f64) -> f64 {
    if s > 0.0 {
        n / s
    } else {
        0.0
    }
}

/// The decode split with each layer's head-divisible bytes spread over
/// the plan's compute nodes (see the module doc).
fn head_parallel(ctx: &Ctx, c: &Candidate, ev: &Eval, h: &HeadSplit) -> HeadParallel {
    let mut members: Vec<usize> = c.stages.iter().map(|s| s.0).collect();
    for l in &c.experts {
        members.extend(l.iter().filter(|(_, k)| *k > 0).map(|(p, _)| p));
    }
    members.sort_unstable();
    members.dedup();
    members.retain(|&m| ctx.nodes[m].usable());
    let mut split = ev.split;
    let mut groups = Vec::new();
    let mut extra = vec![0u64; ctx.nodes.len()];
    let row = (ctx.hidden * 4) as f64;
    for (s, range) in &c.stages {
        let bytes: f64 = range
            .clone()
            .map(|l| h.per_layer_bytes[l as usize] as f64)
            .sum();
        let per_group = bytes / h.groups as f64;
        // Per layer round trip to a helper.
        let rtt = |p: usize| {
            if p == *s {
                0.0
            } else {
                (ctx.hop_f(*s, p, row) + ctx.hop_f(p, *s, row)) * (range.end - range.start) as f64
            }
        };
        let mut count = vec![0u32; ctx.nodes.len()];
        let finish = |count: &[u32], p: usize| {
            if count[p] == 0 {
                0.0
            } else {
                count[p] as f64 * per_group / ctx.nodes[p].bw + rtt(p)
            }
        };
        for _ in 0..h.groups {
            let best = members
                .iter()
                .copied()
                .min_by(|&a, &b| {
                    let mut ca = count.clone();
                    ca[a] += 1;
                    let mut cb = count.clone();
                    cb[b] += 1;
                    finish(&ca, a).total_cmp(&finish(&cb, b))
                })
                .unwrap_or(*s);
            count[best] += 1;
        }
        let before = bytes / ctx.nodes[*s].bw;
        let own = finish(&count, *s);
        let slowest = members
            .iter()
            .map(|&p| finish(&count, p))
            .fold(own, f64::max);
        split.compute -= before - own;
        split.head_round_trips += slowest - own;
        for &p in &members {
            if p != *s {
                extra[p] += (count[p] as f64 * per_group) as u64;
            }
        }
        groups.push((
            ctx.nodes[*s].id.clone(),
            members
                .iter()
                .filter(|&&p| count[p] > 0)
                .map(|&p| (ctx.nodes[p].id.clone(), count[p]))
                .collect(),
        ));
    }
    HeadParallel {
        groups,
        tokens_per_s: rate(1.0, split.total()),
        split,
        extra_bytes: ctx
            .nodes
            .iter()
            .zip(extra)
            .filter(|(_, b)| *b > 0)
            .map(|(n, b)| (n.id.clone(), b))
            .collect(),
    }
}
