//! The cost model: a request checked and normalised into [`Ctx`], and the
//! predicted per-token time and memory of a [`Candidate`] plan.
//!
//! Per decoded token (single sequence), in seconds:
//!
//! - **compute** of each layer on the node that runs it, as a roofline:
//!   `max(bytes / mem_bw, 2·params / matmul_gflops)` for the dense +
//!   shared-expert part, and again for the routed experts it runs locally
//!   (`n_used · local / n_experts` of them, expected under uniform routing);
//!   the output (lm head) on the output node, one embedding row on the
//!   coordinator;
//! - **paging** where a node's routed experts exceed what its budget leaves
//!   after its resident bytes: with `X` expert bytes held, `C` bytes of room
//!   for them and `T` expert bytes a token touches there, a token misses
//!   `T · (X − C) / X` bytes (uniform routing over a cache of `C`), read at
//!   `disk_read_gbs`;
//! - **hops**: `latency + bytes·8 / bandwidth` for each activation hop
//!   (`hidden × 4` bytes, or `× 2` for f16): coordinator → first stage →
//!   … → last stage, then LOGITS (`n_vocab × 4`, always f32) to the
//!   coordinator, or the last hidden row to the coordinator when it holds
//!   the output;
//! - **expert-parallel round trips**: for each peer holding `c` of a layer's
//!   `E` experts, `P(contacted) · (2·latency + (request + reply)·8 /
//!   bandwidth) + its compute`, with `P = 1 − C(E−c, k)/C(E, k)`; the
//!   layer's expert phase costs the slowest of the local experts and those
//!   round trips (they run at the same time).
//!
//! - **fixed costs** ([`crate::CostTerms`]): `layer_overhead_s` per layer
//!   a node runs, `step_overhead_s` per step on every node that takes part.
//!
//! Skewed routing: with `expert_skew` `s > 0` expert popularity is Zipf(s)
//! and a node caching `C` of `X` expert bytes keeps the most popular, so a
//! token misses `T · (1 − H(C/X·E)/H(E))` (`H` the generalised harmonic
//! number, continuous) instead of `T · (X − C)/X`.
//!
//! A step of `n` tokens (batched decode over `n` streams, or a prefill of
//! `n` prompt tokens) reads every weight once, reads `cnt · (1 − (1 −
//! k/E)^n)` of a holder's `cnt` experts (those any of the `n` picks), does
//! `n` times the flops (at `batch_gflops` when given, but never in less
//! time than one token's flops at `matmul_gflops`), sends `n` rows per
//! hop for one latency, and contacts a peer with probability `1 − (1 −
//! P)^n`.
//!
//! Paging limits: only routed experts page. Everything else a node holds
//! (dense and shared-expert weights, KV for `kv_tokens` positions, the
//! embedding on the coordinator, the output on the output node) plus a
//! working set of one layer's active experts must fit its budget, else the
//! plan is short by the difference. A node with `disk_read_gbs == 0` cannot
//! page: all its experts must fit too.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::types::{ActDType, CostTerms, ModelShape, PlanError, PlanRequest};

mod memory;

pub use memory::hit_rate;
pub(crate) use memory::{Holding, MemFit};

/// The link assumed between two nodes the request gives none for: 1 Gbit/s,
/// 1 ms.
pub const DEFAULT_LINK: (f64, f64) = (1e9, 1e-3);

/// A node, normalised: budget in bytes, rates in bytes/s and flop/s.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub id: String,
    pub budget: u64,
    pub bw: f64,
    pub flops: f64,
    pub disk: f64,
    /// Fixed seconds per layer and per step; flop/s of batched kernels.
    pub layer_oh: f64,
    pub step_oh: f64,
    pub batch_flops: f64,
}

impl Node {
    /// Whether it can run layers or experts.
    pub fn usable(&self) -> bool {
        self.bw > 0.0 && self.flops > 0.0
    }

    /// Roofline time of reading `bytes` and doing `flops` here.
    pub fn roof(&self, bytes: f64, flops: f64) -> f64 {
        if bytes <= 0.0 && flops <= 0.0 {
            return 0.0;
        }
        (bytes / self.bw).max(flops / self.flops)
    }

    /// Roofline time of a step of `n` tokens: `bytes` read once, `flops`
    /// per token.
    pub fn roof_n(&self, bytes: f64, flops: f64, n: f64) -> f64 {
        if n <= 1.0 {
            return self.roof(bytes, flops);
        }
        if bytes <= 0.0 && flops <= 0.0 {
            return 0.0;
        }
        // A step of n tokens is never cheaper than one token's (the
        // per-weight work of the matrix-vector kernels is shared by the n
        // tokens), and its flops run at most at the batched rate.
        let rate = self.batch_flops.max(self.flops);
        (bytes / self.bw)
            .max(n * flops / rate)
            .max(flops / self.flops)
    }
}

/// A layer, normalised.
#[derive(Clone, Debug)]
pub(crate) struct Layer {
    /// Resident bytes besides routed experts: dense + shared + KV.
    pub resident: u64,
    pub weights: u64,
    pub kv: u64,
    /// Bytes and flops of the dense + shared part, per token.
    pub ne_bytes: f64,
    pub ne_flops: f64,
    pub n_exp: u32,
    pub n_used: u32,
    /// One expert: bytes and flops.
    pub eb: u64,
    pub e_flops: f64,
}

impl Layer {
    pub fn is_moe(&self) -> bool {
        self.n_exp > 0
    }
}

/// The request, checked and normalised. Nodes are sorted by id.
pub(crate) struct Ctx {
    pub nodes: Vec<Node>,
    pub coord: usize,
    pub layers: Vec<Layer>,
    pub hidden: u64,
    pub n_vocab: u64,
    pub embed: u64,
    pub output: u64,
    pub output_flops: f64,
    pub kv_tokens: u64,
    /// Zipf exponent of expert popularity (0: uniform).
    pub skew: f64,
    /// [`PlanRequest::output_on_coordinator`].
    pub output_on_coord: bool,
    links: BTreeMap<(usize, usize), (f64, f64)>,
    /// Per node, per layer: time of the whole layer with every expert local.
    pub layer_time: Vec<Vec<f64>>,
}

fn finite_nonneg(what: &str, v: f64) -> Result<(), PlanError> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(PlanError::BadInput(format!("{what} is {v}")))
    }
}

fn check_model(m: &ModelShape) -> Result<(), PlanError> {
    let bad = |s: String| Err(PlanError::BadInput(s));
    if m.n_layer == 0 {
        return bad(format!("model {} has no layers", m.name));
    }
    if m.layers.len() != m.n_layer as usize {
        return bad(format!(
            "model {}: n_layer is {} but {} layer shapes are given",
            m.name,
            m.n_layer,
            m.layers.len()
        ));
    }
    for (i, l) in m.layers.iter().enumerate() {
        if l.n_experts_used > l.n_experts {
            return bad(format!(
                "layer {i}: {} of {} experts used",
                l.n_experts_used, l.n_experts
            ));
        }
        if l.n_experts > 0 && l.n_experts_used == 0 {
            return bad(format!("layer {i}: MoE layer that uses no expert"));
        }
    }
    if m.weight_bytes() == 0 {
        return bad(format!("model {} has no weight bytes", m.name));
    }
    Ok(())
}

impl Ctx {
    /// Checks `req` and normalises it, with the cost terms `terms`.
    pub fn new(req: &PlanRequest, terms: &CostTerms) -> Result<Ctx, PlanError> {
        finite_nonneg("expert_skew", terms.expert_skew)?;
        if req.nodes.is_empty() {
            return Err(PlanError::NoNodes);
        }
        check_model(&req.model)?;
        let mut caps: Vec<_> = req.nodes.iter().collect();
        caps.sort_by(|a, b| a.id.cmp(&b.id));
        for w in caps.windows(2) {
            if w[0].id == w[1].id {
                return Err(PlanError::BadInput(format!("node {} given twice", w[0].id)));
            }
        }
        let mut nodes = Vec::with_capacity(caps.len());
        for c in caps {
            finite_nonneg(&format!("node {} matmul_gflops", c.id), c.matmul_gflops)?;
            finite_nonneg(&format!("node {} mem_bw_gbs", c.id), c.mem_bw_gbs)?;
            finite_nonneg(&format!("node {} disk_read_gbs", c.id), c.disk_read_gbs)?;
            let t = terms.nodes.get(&c.id).cloned().unwrap_or_default();
            finite_nonneg(
                &format!("node {} layer_overhead_s", c.id),
                t.layer_overhead_s,
            )?;
            finite_nonneg(&format!("node {} step_overhead_s", c.id), t.step_overhead_s)?;
            finite_nonneg(&format!("node {} batch_gflops", c.id), t.batch_gflops)?;
            nodes.push(Node {
                id: c.id.clone(),
                budget: c.mem_budget,
                bw: c.mem_bw_gbs * 1e9,
                flops: c.matmul_gflops * 1e9,
                disk: c.disk_read_gbs * 1e9,
                layer_oh: t.layer_overhead_s,
                step_oh: t.step_overhead_s,
                batch_flops: t.batch_gflops * 1e9,
            });
        }
        if let Some(id) = terms
            .nodes
            .keys()
            .find(|id| !nodes.iter().any(|n| &n.id == *id))
        {
            return Err(PlanError::BadInput(format!(
                "cost terms name node {id}, which is not among the nodes"
            )));
        }
        if !nodes.iter().any(Node::usable) {
            return Err(PlanError::BadInput(
                "no node can compute (mem_bw_gbs and matmul_gflops must be > 0 somewhere)".into(),
            ));
        }
        let coord = nodes
            .iter()
            .position(|n| n.id == req.coordinator)
            .ok_or_else(|| {
                PlanError::BadInput(format!(
                    "coordinator {} is not among the nodes",
                    req.coordinator
                ))
            })?;
        let index = |id: &str| nodes.iter().position(|n| n.id == id);
        let mut links: BTreeMap<(usize, usize), (f64, f64)> = BTreeMap::new();
        for l in &req.links {
            let (Some(a), Some(b)) = (index(&l.a), index(&l.b)) else {
                return Err(PlanError::BadInput(format!(
                    "link {}–{} names an unknown node",
                    l.a, l.b
                )));
            };
            if !(l.bandwidth_bps.is_finite() && l.bandwidth_bps > 0.0) {
                return Err(PlanError::BadInput(format!(
                    "link {}–{}: bandwidth {}",
                    l.a, l.b, l.bandwidth_bps
                )));
            }
            finite_nonneg(&format!("link {}–{} latency", l.a, l.b), l.latency_s)?;
            if a == b {
                continue;
            }
            let key = (a.min(b), a.max(b));
            let e = links.entry(key).or_insert((l.bandwidth_bps, l.latency_s));
            // Two measurements of one pair: plan for the slower.
            e.0 = e.0.min(l.bandwidth_bps);
            e.1 = e.1.max(l.latency_s);
        }
        let m = &req.model;
        let layers: Vec<Layer> = m
            .layers
            .iter()
            .map(|l| {
                let kv = l
                    .kv_bytes_per_token
                    .saturating_mul(req.kv_tokens)
                    .saturating_add(l.kv_fixed_bytes);
                let weights = l.dense_bytes.saturating_add(l.shared_expert_bytes);
                Layer {
                    resident: weights.saturating_add(kv),
                    weights,
                    kv,
                    ne_bytes: weights as f64,
                    ne_flops: 2.0 * (l.dense_params as f64 + l.shared_expert_params as f64),
                    n_exp: l.n_experts,
                    n_used: l.n_experts_used,
                    eb: if l.n_experts > 0 { l.expert_bytes } else { 0 },
                    e_flops: 2.0 * l.expert_params as f64,
                }
            })
            .collect();
        let layer_time = nodes
            .iter()
            .map(|n| {
                layers
                    .iter()
                    .map(|l| {
                        if !n.usable() {
                            return f64::INFINITY;
                        }
                        let u = l.n_used as f64;
                        n.roof(l.ne_bytes, l.ne_flops)
                            + n.roof(u * l.eb as f64, u * l.e_flops)
                            + n.layer_oh
                    })
                    .collect()
            })
            .collect();
        Ok(Ctx {
            nodes,
            coord,
            layers,
            hidden: m.hidden as u64,
            n_vocab: m.n_vocab as u64,
            embed: m.embed_bytes,
            output: m.output_bytes,
            output_flops: 2.0 * m.output_params as f64,
            kv_tokens: req.kv_tokens,
            skew: terms.expert_skew,
            output_on_coord: req.output_on_coordinator,
            links,
            layer_time,
        })
    }

    /// Seconds to send `bytes` from `a` to `b` (0 within a node).
    pub fn hop(&self, a: usize, b: usize, bytes: u64) -> f64 {
        self.hop_f(a, b, bytes as f64)
    }

    /// [`Ctx::hop`] of a fractional (expected) byte count.
    pub fn hop_f(&self, a: usize, b: usize, bytes: f64) -> f64 {
        if a == b {
            return 0.0;
        }
        let (bps, lat) = self
            .links
            .get(&(a.min(b), a.max(b)))
            .copied()
            .unwrap_or(DEFAULT_LINK);
        lat + bytes * 8.0 / bps
    }

    /// One activation row on the wire.
    pub fn act_bytes(&self, act: ActDType) -> u64 {
        self.hidden * act.size()
    }

    /// Time on node `n` of the output (lm head).
    pub fn output_time(&self, n: usize) -> f64 {
        self.nodes[n].roof(self.output as f64, self.output_flops)
    }

    /// Time on the coordinator of reading one embedding row.
    pub fn embed_time(&self) -> f64 {
        let c = &self.nodes[self.coord];
        if !c.usable() || self.n_vocab == 0 {
            return 0.0;
        }
        c.roof(self.embed as f64 / self.n_vocab as f64, 0.0)
    }

    /// The time of the hops around the pipeline `order` (node indices), with
    /// the output on the coordinator or on the last stage.
    pub fn chain_time(&self, order: &[usize], out_on_coord: bool, act: ActDType) -> f64 {
        self.chain_time_n(order, out_on_coord, act, 1.0, 1.0)
    }

    /// [`Ctx::chain_time`] for a step of `n` rows, `logit_rows` of them
    /// coming back as logits.
    pub fn chain_time_n(
        &self,
        order: &[usize],
        out_on_coord: bool,
        act: ActDType,
        n: f64,
        logit_rows: f64,
    ) -> f64 {
        let a = self.act_bytes(act) as f64 * n;
        let (Some(&first), Some(&last)) = (order.first(), order.last()) else {
            return 0.0;
        };
        let mut t = self.hop_f(self.coord, first, a);
        for w in order.windows(2) {
            t += self.hop_f(w[0], w[1], a);
        }
        let row = if out_on_coord {
            self.act_bytes(act)
        } else {
            self.n_vocab * 4
        };
        t + self.hop_f(last, self.coord, row as f64 * logit_rows)
    }

    /// Fixed per-step cost of the nodes in `order` and the coordinator.
    pub fn step_overhead(&self, order: &[usize]) -> f64 {
        let mut t = self.nodes[self.coord].step_oh;
        for &n in order {
            if n != self.coord {
                t += self.nodes[n].step_oh;
            }
        }
        t
    }
}

/// A plan under construction: node indices instead of ids.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Candidate {
    pub stages: Vec<(usize, Range<u32>)>,
    pub output: usize,
    /// Per layer: who holds how many of its experts, in id order (the
    /// stage's node first). Empty for dense layers.
    pub experts: Vec<Vec<(usize, u32)>>,
    pub act: ActDType,
}

/// Where a step's predicted seconds go.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Split {
    /// Rooflines of the layers, the local experts, embedding and output.
    pub compute: f64,
    /// Expert bytes read from disk.
    pub paging: f64,
    /// Activation and logits hops along the pipeline.
    pub hops: f64,
    /// Expert-parallel round trips beyond the local experts' time.
    pub expert_round_trips: f64,
    /// Per-layer and per-step fixed costs.
    pub overhead: f64,
    /// Head-parallel attention's round trips beyond the stage node's own
    /// share (0 unless that option is simulated).
    #[serde(default)]
    pub head_round_trips: f64,
}

impl Split {
    pub fn total(&self) -> f64 {
        self.compute
            + self.paging
            + self.hops
            + self.expert_round_trips
            + self.overhead
            + self.head_round_trips
    }
}

/// A candidate's predicted cost.
#[derive(Clone, Debug)]
pub(crate) struct Eval {
    pub overflow: u64,
    pub time: f64,
    pub split: Split,
    pub holdings: Vec<Holding>,
    pub fits: Vec<MemFit>,
}

impl Eval {
    /// Lexicographic: less overflow first, then less time.
    pub fn better_than(&self, o: &Eval) -> bool {
        (self.overflow, self.time) < (o.overflow, o.time)
    }

    pub fn has_remote_experts(c: &Candidate) -> bool {
        c.stages.iter().any(|(n, r)| {
            r.clone()
                .any(|l| c.experts[l as usize].iter().any(|&(p, k)| p != *n && k > 0))
        })
    }
}

/// P(a peer holding `c` of `e` experts is among a token's `k` picks).
fn p_contact(e: u32, c: u32, k: u32) -> f64 {
    if c == 0 {
        return 0.0;
    }
    let mut miss = 1.0;
    for i in 0..k {
        let num = e as f64 - c as f64 - i as f64;
        if num <= 0.0 {
            return 1.0;
        }
        miss *= num / (e as f64 - i as f64);
    }
    1.0 - miss
}

impl Ctx {
    /// Predicts `c`'s per-token time and each node's memory.
    pub fn evaluate(&self, c: &Candidate) -> Eval {
        self.evaluate_n(c, 1.0, 1.0)
    }

    /// Predicts the time of one step of `n` tokens under `c` (see the
    /// module doc), `logit_rows` of them through the output (all for
    /// decode, 1 for a prefill), and each node's memory.
    pub fn evaluate_n(&self, c: &Candidate, n: f64, logit_rows: f64) -> Eval {
        let mut h = vec![Holding::default(); self.nodes.len()];
        h[self.coord].embed = self.embed;
        h[c.output].output = self.output;
        let act = self.act_bytes(c.act) as f64;
        let out = &self.nodes[c.output];
        let mut sp = Split {
            compute: n * self.embed_time()
                + out.roof_n(self.output as f64, self.output_flops, logit_rows),
            ..Split::default()
        };
        for (s, range) in &c.stages {
            let node = &self.nodes[*s];
            for l in range.clone() {
                let ly = &self.layers[l as usize];
                h[*s].weights += ly.weights;
                h[*s].kv += ly.kv;
                sp.compute += node.roof_n(ly.ne_bytes, ly.ne_flops, n);
                sp.overhead += node.layer_oh;
                if !ly.is_moe() {
                    continue;
                }
                let (e, k) = (ly.n_exp as f64, ly.n_used as f64);
                // Share of a layer's experts that some token of the step picks.
                let picked = 1.0 - (1.0 - k / e).powf(n);
                let mut local = 0.0f64;
                let mut remote = 0.0f64;
                for &(p, cnt) in &c.experts[l as usize] {
                    let hp = &mut h[p];
                    let read = cnt as f64 * picked * ly.eb as f64;
                    hp.experts += cnt as u64 * ly.eb;
                    hp.touched += read;
                    hp.working = hp.working.max(cnt.min(ly.n_used) as u64 * ly.eb);
                    hp.n_exp = hp.n_exp.max(ly.n_exp);
                    let m = k * cnt as f64 / e;
                    let work = self.nodes[p].roof_n(read, m * ly.e_flops, n);
                    if p == *s {
                        local += work;
                    } else if cnt > 0 {
                        let pc = 1.0 - (1.0 - p_contact(ly.n_exp, cnt, ly.n_used)).powf(n);
                        let req = n * (act + k * 8.0);
                        let rtt = self.hop_f(*s, p, req) + self.hop_f(p, *s, n * act);
                        remote = remote.max(pc * rtt + work);
                    }
                }
                sp.compute += local;
                sp.expert_round_trips += (remote - local).max(0.0);
            }
        }
        let order: Vec<usize> = c.stages.iter().map(|s| s.0).collect();
        sp.hops += self.chain_time_n(&order, c.output == self.coord, c.act, n, logit_rows);
        let mut members: std::collections::BTreeSet<usize> = order.iter().copied().collect();
        for l in &c.experts {
            members.extend(l.iter().filter(|(_, k)| *k > 0).map(|(p, _)| *p));
        }
        members.insert(self.coord);
        sp.overhead += members.iter().map(|&m| self.nodes[m].step_oh).sum::<f64>();
        let mut overflow = 0u64;
        let mut fits = Vec::with_capacity(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            let f = h[i].fit(node, self.skew);
            overflow = overflow.saturating_add(f.overflow);
            sp.paging += f.page_time;
            fits.push(f);
        }
        Eval {
            overflow,
            time: sp.total(),
            split: sp,
            holdings: h,
            fits,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::p_contact;

    #[test]
    fn contact_probability_matches_the_closed_forms() {
        // One pick among 4, holding 1: 1/4.
        assert!((p_contact(4, 1, 1) - 0.25).abs() < 1e-12);
        // Holding all: always contacted.
        assert_eq!(p_contact(8, 8, 2), 1.0);
        // 2 of 8 picked, holding 4: 1 - (4·3)/(8·7).
        assert!((p_contact(8, 4, 2) - (1.0 - 12.0 / 56.0)).abs() < 1e-12);
        assert_eq!(p_contact(8, 0, 2), 0.0);
    }
}
