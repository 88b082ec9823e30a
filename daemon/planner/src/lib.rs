//! DwarfStar's mesh planner: which node runs which layers, and which node
//! holds which routed experts, for one model over the nodes of a mesh.
//!
//! Pure: no I/O, no async, no clocks, no randomness. [`plan`] takes a
//! [`PlanRequest`] (a [`ModelShape`], the nodes' measured [`NodeCaps`] and
//! [`Link`]s) and returns a [`Plan`] or a [`PlanError`].
//!
//! - [`types`]: the data types (serde), shared with the mesh and the CLI;
//! - [`cost`]: the cost model (see its doc for the formulas and the paging
//!   limits);
//! - [`search`]: pipeline orders, the exact layer split per order, expert
//!   placements;
//! - [`predict`]: the time split, memory, batched and prefill predictions;
//! - [`sim`]: the simulator (hardware files, profiles, built-in shapes).
//!
//! What is chosen, and how:
//!
//! 1. For every stage count allowed (`force_stages`, else 1..=nodes) the best
//!    pipeline: an order of nodes (the coordinator first when it runs
//!    layers) and contiguous layer ranges, minimising (bytes over budget,
//!    predicted seconds per token); the output (norm + lm head) goes on the
//!    last stage, or on the coordinator when it runs the first stage,
//!    whichever is cheaper. The coordinator may also run no stage at all
//!    (it then only embeds and samples).
//! 2. On each of those, expert-parallel variants for MoE layers: moving a
//!    share of an over-budget node's experts to nodes with room (so they
//!    are fetched over the network instead of paged from disk), and
//!    spreading every layer's experts over all nodes (by bandwidth, or by
//!    spare memory). A variant is taken when it is predicted faster, or
//!    always when `expert_parallel` is asked for.
//! 3. Among the candidates within the budgets, the one giving work to the
//!    fewest nodes besides the coordinator (then the fewest layers run
//!    away from it) whose predicted time is within [`SPREAD_MIN_GAIN`] (5%)
//!    of the fastest: measured speeds are noisy, and moving work must pay
//!    for its hops clearly.
//! 4. Activation dtype: **f32 unless f16 makes the predicted time per token
//!    at least [`F16_MIN_GAIN`] (10%) lower** — i.e. only when links are
//!    slow enough that activation transfer is a real share of a token's
//!    time. f32 keeps distributed logits equal to single-node ones.
//!    `force_act_dtype` overrides the rule.
//!
//! The plan is deterministic: nodes are sorted by id before anything else,
//! links are keyed by node pair (a duplicate pair merges to the slower
//! measurement), and every tie keeps the first candidate in a fixed order.
//! When no candidate fits the budgets, [`PlanError::Infeasible`] names the
//! bytes missing and, per node, what it had to hold.

pub mod cost;
pub mod predict;
pub mod search;
pub mod sim;
pub mod types;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

pub use cost::{Split, DEFAULT_LINK};
pub use predict::{plan_and_predict, NodeMemory, PredictOptions, Prediction, StreamRate};
pub use types::{
    ActDType, CostTerms, ExpertShard, LayerShape, Link, ModelShape, NodeCaps, NodeTerms, Plan,
    PlanError, PlanRequest, Stage, DEFAULT_KV_TOKENS,
};

use cost::{Candidate, Ctx, Eval};

/// f16 activations are chosen only when they cut the predicted time per
/// token by at least this fraction.
pub const F16_MIN_GAIN: f64 = 0.10;

/// A plan that gives more work to nodes besides the coordinator than
/// another (more nodes, or as many running more layers) is chosen only
/// when it is predicted at least this fraction faster: benchmark and link
/// figures vary by a few percent between runs, and every extra node adds
/// hops and a way to fail.
pub const SPREAD_MIN_GAIN: f64 = 0.05;

/// Plans `req`; see the crate doc.
pub fn plan(req: &PlanRequest) -> Result<Plan, PlanError> {
    plan_with(req, &CostTerms::default())
}

/// Plans `req` with the cost terms `terms` (fixed costs, batched kernels,
/// skewed routing).
pub fn plan_with(req: &PlanRequest, terms: &CostTerms) -> Result<Plan, PlanError> {
    let ctx = Ctx::new(req, terms)?;
    let (cand, ev) = choose(&ctx, req)?;
    Ok(build(&ctx, req, &cand, &ev))
}

/// The chosen candidate for `req`, or why none fits.
pub(crate) fn choose(ctx: &Ctx, req: &PlanRequest) -> Result<(Candidate, Eval), PlanError> {
    let usable = ctx.nodes.iter().filter(|n| n.usable()).count();
    let max_k = usable.min(ctx.layers.len());
    let ks: BTreeSet<usize> = match req.force_stages {
        Some(k) => {
            let k = k as usize;
            if k == 0 || k > max_k {
                return Err(PlanError::BadInput(format!(
                    "force_stages {k}: between 1 and {max_k} (nodes that compute: {usable}, layers: {})",
                    ctx.layers.len()
                )));
            }
            [k].into_iter().collect()
        }
        None => (1..=max_k).collect(),
    };
    let best = |act| best_for(ctx, &ks, req.expert_parallel, act);
    let (cand, ev) = match req.force_act_dtype {
        Some(act) => best(act),
        None => {
            let f32_best = best(ActDType::F32);
            let fits32 = f32_best
                .as_ref()
                .filter(|b| b.1.overflow == 0)
                .map(|b| b.1.time);
            match (fits32, fits32.and_then(|_| best(ActDType::F16))) {
                (Some(t32), Some(b16))
                    if b16.1.overflow == 0 && b16.1.time <= t32 * (1.0 - F16_MIN_GAIN) =>
                {
                    Some(b16)
                }
                _ => f32_best,
            }
        }
    }
    .ok_or_else(|| PlanError::BadInput("no pipeline can be formed".into()))?;
    if ev.overflow > 0 {
        return Err(infeasible(ctx, &cand, &ev));
    }
    Ok((cand, ev))
}

/// The best candidate for one activation dtype.
fn best_for(ctx: &Ctx, ks: &BTreeSet<usize>, ep: bool, act: ActDType) -> Option<(Candidate, Eval)> {
    let mut all: Vec<(Candidate, Eval)> = Vec::new();
    for base in search::pipelines(ctx, ks, act) {
        let ev = ctx.evaluate(&base);
        let variants = search::expert_variants(ctx, &base, &ev);
        all.push((base, ev));
        for v in variants {
            let e = ctx.evaluate(&v);
            all.push((v, e));
        }
    }
    if ep && all.iter().any(|(c, _)| Eval::has_remote_experts(c)) {
        all.retain(|(c, _)| Eval::has_remote_experts(c));
    }
    let mut best: Option<(Candidate, Eval)> = None;
    // The best candidate per spread (how much work it gives nodes besides
    // the coordinator), among those within the budgets.
    let mut by_spread: std::collections::BTreeMap<(usize, u32), (Candidate, Eval)> =
        Default::default();
    for (c, e) in all {
        if e.overflow == 0 {
            let n = spread(ctx, &c);
            if by_spread.get(&n).is_none_or(|(_, b)| e.better_than(b)) {
                by_spread.insert(n, (c.clone(), e.clone()));
            }
        }
        if best.as_ref().is_none_or(|(_, b)| e.better_than(b)) {
            best = Some((c, e));
        }
    }
    // Measured speeds are noisy: work goes to more nodes only when that is
    // predicted at least SPREAD_MIN_GAIN faster.
    let Some(fastest) = best
        .as_ref()
        .filter(|(_, e)| e.overflow == 0)
        .map(|b| b.1.time)
    else {
        return best;
    };
    by_spread
        .into_values()
        .find(|(_, e)| e.time <= fastest * (1.0 + SPREAD_MIN_GAIN))
        .or(best)
}

/// How much work `c` gives nodes other than the coordinator: how many
/// nodes it gives layers or experts, then how many layers they run.
fn spread(ctx: &Ctx, c: &Candidate) -> (usize, u32) {
    let mut n: BTreeSet<usize> = c.stages.iter().map(|(n, _)| *n).collect();
    for l in &c.experts {
        n.extend(l.iter().filter(|(_, k)| *k > 0).map(|(n, _)| *n));
    }
    n.remove(&ctx.coord);
    let layers = c
        .stages
        .iter()
        .filter(|(n, _)| *n != ctx.coord)
        .map(|(_, r)| r.end - r.start)
        .sum();
    (n.len(), layers)
}

fn infeasible(ctx: &Ctx, cand: &Candidate, ev: &Eval) -> PlanError {
    let mut parts = Vec::new();
    for (i, node) in ctx.nodes.iter().enumerate() {
        let f = &ev.fits[i];
        if f.overflow == 0 {
            continue;
        }
        let h = &ev.holdings[i];
        let mut what = Vec::new();
        if let Some((_, r)) = cand.stages.iter().find(|s| s.0 == i) {
            what.push(format!(
                "layers {}..{}: weights {} + KV {} ({} positions)",
                r.start, r.end, h.weights, h.kv, ctx.kv_tokens
            ));
        }
        if h.embed > 0 {
            what.push(format!("embedding {}", h.embed));
        }
        if h.output > 0 {
            what.push(format!("output {}", h.output));
        }
        if h.experts > 0 {
            if node.disk > 0.0 {
                what.push(format!("expert working set {}", h.working.min(h.experts)));
            } else {
                what.push(format!(
                    "routed experts {} (no disk to page from)",
                    h.experts
                ));
            }
        }
        parts.push(format!(
            "node {} must keep {} bytes in RAM ({}) but its budget is {}",
            node.id,
            h.required(node),
            what.join(", "),
            node.budget
        ));
    }
    let budget: u64 = ctx
        .nodes
        .iter()
        .map(|n| n.budget)
        .fold(0, u64::saturating_add);
    PlanError::Infeasible {
        shortfall_bytes: ev.overflow,
        detail: format!(
            "{}; all budgets together: {budget} bytes. Non-expert weights and KV must be resident; only routed experts page",
            parts.join("; ")
        ),
    }
}

pub(crate) fn build(ctx: &Ctx, req: &PlanRequest, c: &Candidate, ev: &Eval) -> Plan {
    let id = |n: usize| ctx.nodes[n].id.clone();
    let stages = c
        .stages
        .iter()
        .map(|(n, r)| Stage {
            node: id(*n),
            layers: r.clone(),
            holds_embed: *n == ctx.coord,
            holds_output: *n == c.output,
        })
        .collect();
    let mut experts = Vec::new();
    for (l, placement) in c.experts.iter().enumerate() {
        let mut next = 0u32;
        for &(n, cnt) in placement {
            if cnt == 0 {
                continue;
            }
            experts.push(ExpertShard {
                node: id(n),
                layer: l as u32,
                experts: (next..next + cnt).collect(),
            });
            next += cnt;
        }
    }
    Plan {
        version: req.version,
        model: req.model.name.clone(),
        coordinator: id(ctx.coord),
        stages,
        experts,
        activation_dtype: c.act,
        predicted_tokens_per_s: if ev.time > 0.0 { 1.0 / ev.time } else { 0.0 },
        predicted_paging: ctx
            .nodes
            .iter()
            .zip(&ev.fits)
            .map(|(n, f)| (n.id.clone(), f.paged))
            .collect(),
        output_node: id(c.output),
    }
}
