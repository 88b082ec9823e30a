//! The simulator: plan a model over machines described in a hardware file
//! (TOML) instead of over connected peers, and predict how it runs.
//!
//! - [`HardwareFile`]: the nodes (a named profile and/or figures: RAM or
//!   memory budget, memory bandwidth, the kernels' decode throughput,
//!   GFLOP/s, disk rates, threads, fixed costs) and the links between
//!   them (a named profile or bandwidth and latency).
//! - [`Profiles`]: named node and link profiles; [`Profiles::builtin`]
//!   reads those of `deploy/hardware/` (compiled in).
//! - [`SimModel`]: a model's shape plus its head-divisible attention
//!   bytes; [`catalog`] holds the built-in shapes of models too large to
//!   have here.
//! - [`simulate`]: the plan and [`Prediction`] for a model on a hardware
//!   file; [`render`] writes the report as text.
//!
//! Pure: the callers read the files; this module parses strings.

pub mod catalog;
mod render;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::predict::{plan_and_predict, HeadSplit, PredictOptions, Prediction};
use crate::types::{
    CostTerms, Link, ModelShape, NodeCaps, NodeTerms, Plan, PlanError, PlanRequest,
};

pub use render::render;

/// Kernel decode throughput assumed when a node gives only its memory
/// bandwidth: this share of it (llama.cpp's token generation reaches 58–64%
/// of Apple's quoted bandwidth; see `deploy/hardware/`).
pub const DEFAULT_KERNEL_SHARE: f64 = 0.6;

/// Memory budget assumed when a node gives only its RAM: this share (the
/// daemon's default budget; macOS's default GPU wired limit on large
/// machines).
pub const DEFAULT_BUDGET_SHARE: f64 = 0.75;

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("hardware file: {0}")]
    Parse(String),
    #[error("{0}")]
    Hardware(String),
    #[error(transparent)]
    Plan(#[from] PlanError),
}

/// A node as the hardware file (or a profile) describes it; every figure
/// optional so that a file can name a profile and override some.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    #[serde(default)]
    pub id: String,
    /// A node profile's name (a file stem of `deploy/hardware/`).
    pub profile: Option<String>,
    /// Free-text description (profiles).
    pub describe: Option<String>,
    pub ram_gb: Option<f64>,
    /// Bytes the model may use, GB (default: [`DEFAULT_BUDGET_SHARE`] of RAM).
    pub mem_budget_gb: Option<f64>,
    /// Peak memory bandwidth, GB/s.
    pub mem_bw_gbs: Option<f64>,
    /// Bytes of weights per second the decode kernels stream, GB/s
    /// (default: [`DEFAULT_KERNEL_SHARE`] of `mem_bw_gbs`).
    pub kernel_gbs: Option<f64>,
    /// f32-equivalent GFLOP/s of a decode (matrix-vector) step.
    pub gflops: Option<f64>,
    /// GFLOP/s of batched kernels (prefill, many streams).
    pub batch_gflops: Option<f64>,
    /// Disk sequential and 4K-random read, GB/s. Expert pages are
    /// megabytes long, so paging uses the sequential rate.
    pub disk_seq_gbs: Option<f64>,
    pub disk_rand_gbs: Option<f64>,
    pub threads: Option<u32>,
    pub layer_overhead_us: Option<f64>,
    pub step_overhead_us: Option<f64>,
}

impl NodeSpec {
    /// `self`'s figures, the missing ones taken from `base`.
    fn over(&self, base: &NodeSpec) -> NodeSpec {
        NodeSpec {
            id: self.id.clone(),
            profile: self.profile.clone(),
            describe: self.describe.clone().or(base.describe.clone()),
            ram_gb: self.ram_gb.or(base.ram_gb),
            mem_budget_gb: self.mem_budget_gb.or(if self.ram_gb.is_some() {
                None
            } else {
                base.mem_budget_gb
            }),
            mem_bw_gbs: self.mem_bw_gbs.or(base.mem_bw_gbs),
            kernel_gbs: self.kernel_gbs.or(if self.mem_bw_gbs.is_some() {
                None
            } else {
                base.kernel_gbs
            }),
            gflops: self.gflops.or(base.gflops),
            batch_gflops: self.batch_gflops.or(base.batch_gflops),
            disk_seq_gbs: self.disk_seq_gbs.or(base.disk_seq_gbs),
            disk_rand_gbs: self.disk_rand_gbs.or(base.disk_rand_gbs),
            threads: self.threads.or(base.threads),
            layer_overhead_us: self.layer_overhead_us.or(base.layer_overhead_us),
            step_overhead_us: self.step_overhead_us.or(base.step_overhead_us),
        }
    }
}

/// A link's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    #[serde(default)]
    pub a: String,
    #[serde(default)]
    pub b: String,
    pub profile: Option<String>,
    pub describe: Option<String>,
    /// Goodput, Gbit/s.
    pub bandwidth_gbps: Option<f64>,
    /// One-way latency, ms.
    pub latency_ms: Option<f64>,
}

/// The hardware file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareFile {
    /// The node that embeds, samples and serves (default: the first).
    pub coordinator: Option<String>,
    /// Zipf exponent of expert popularity (default 0: uniform).
    pub expert_skew: Option<f64>,
    /// The link every pair not listed in `link` gets (default: the
    /// planner's 1 Gbit/s, 1 ms).
    pub all_links: Option<LinkSpec>,
    #[serde(default)]
    pub node: Vec<NodeSpec>,
    #[serde(default)]
    pub link: Vec<LinkSpec>,
}

impl HardwareFile {
    pub fn from_toml(text: &str) -> Result<HardwareFile, SimError> {
        toml::from_str(text).map_err(|e| SimError::Parse(e.to_string()))
    }
}

/// Named node and link profiles.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Profiles {
    pub nodes: BTreeMap<String, NodeSpec>,
    pub links: BTreeMap<String, LinkSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    node: Option<NodeSpec>,
    #[serde(default)]
    link: BTreeMap<String, LinkSpec>,
}

/// `deploy/hardware/`, compiled in: (file stem, text).
const BUILTIN_PROFILES: &[(&str, &str)] = &[
    (
        "apple-m3-max-128",
        include_str!("../../../deploy/hardware/apple-m3-max-128.toml"),
    ),
    (
        "apple-m4-max-128",
        include_str!("../../../deploy/hardware/apple-m4-max-128.toml"),
    ),
    (
        "apple-m4-max-36",
        include_str!("../../../deploy/hardware/apple-m4-max-36.toml"),
    ),
    (
        "apple-m4-pro-64",
        include_str!("../../../deploy/hardware/apple-m4-pro-64.toml"),
    ),
    (
        "amd-ryzen-ai-max-395-128",
        include_str!("../../../deploy/hardware/amd-ryzen-ai-max-395-128.toml"),
    ),
    (
        "ddr5-desktop-64",
        include_str!("../../../deploy/hardware/ddr5-desktop-64.toml"),
    ),
    (
        "this-machine",
        include_str!("../../../deploy/hardware/this-machine.toml"),
    ),
    ("links", include_str!("../../../deploy/hardware/links.toml")),
];

impl Profiles {
    /// Adds a profile file: `[node]` (named `stem`) and/or `[link.NAME]`
    /// tables.
    pub fn add(&mut self, stem: &str, text: &str) -> Result<(), SimError> {
        let f: ProfileFile =
            toml::from_str(text).map_err(|e| SimError::Parse(format!("profile {stem}: {e}")))?;
        if let Some(n) = f.node {
            self.nodes.insert(stem.to_string(), n);
        }
        self.links.extend(f.link);
        Ok(())
    }

    /// The profiles of `deploy/hardware/` (every one parses: tested).
    pub fn builtin() -> Result<Profiles, SimError> {
        let mut p = Profiles::default();
        for (stem, text) in BUILTIN_PROFILES {
            p.add(stem, text)?;
        }
        Ok(p)
    }
}

/// A model as the simulator takes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimModel {
    pub shape: ModelShape,
    /// Head-divisible attention bytes per layer (None: unknown).
    pub head_split: Option<HeadSplit>,
}

/// What to simulate besides the model and the hardware.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimOptions {
    pub force_stages: Option<u32>,
    pub expert_parallel: bool,
    /// Also predict head-parallel attention.
    pub head_parallel: bool,
    pub kv_tokens: u64,
    pub prompt_tokens: u64,
    pub streams: Vec<u32>,
}

impl Default for SimOptions {
    fn default() -> Self {
        let p = PredictOptions::default();
        SimOptions {
            force_stages: None,
            expert_parallel: false,
            head_parallel: false,
            kv_tokens: crate::DEFAULT_KV_TOKENS,
            prompt_tokens: p.prompt_tokens,
            streams: p.streams,
        }
    }
}

/// A node with every figure resolved, as simulated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimNode {
    pub id: String,
    pub profile: Option<String>,
    pub caps: NodeCaps,
    pub terms: NodeTerms,
}

/// The simulator's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimReport {
    pub model: String,
    pub weight_bytes: u64,
    pub active_bytes_per_token: u64,
    pub nodes: Vec<SimNode>,
    pub links: Vec<Link>,
    pub options: SimOptions,
    pub plan: Plan,
    pub prediction: Prediction,
}

fn need(v: Option<f64>, what: &str, id: &str) -> Result<f64, SimError> {
    match v {
        Some(x) if x.is_finite() && x >= 0.0 => Ok(x),
        Some(x) => Err(SimError::Hardware(format!("node {id}: {what} is {x}"))),
        None => Err(SimError::Hardware(format!(
            "node {id}: no {what} (give it or a profile that has it)"
        ))),
    }
}

/// `spec` with its profile's figures filled in, as planner inputs.
pub fn resolve_node(spec: &NodeSpec, profiles: &Profiles) -> Result<SimNode, SimError> {
    let id = spec.id.as_str();
    if id.is_empty() {
        return Err(SimError::Hardware("a node without an id".into()));
    }
    let n = match &spec.profile {
        Some(p) => {
            let base = profiles.nodes.get(p).ok_or_else(|| {
                SimError::Hardware(format!(
                    "node {id}: no node profile {p} (known: {})",
                    profiles
                        .nodes
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            spec.over(base)
        }
        None => spec.clone(),
    };
    let budget = match (n.mem_budget_gb, n.ram_gb) {
        (Some(b), _) => need(Some(b), "mem_budget_gb", id)?,
        (None, Some(r)) => need(Some(r), "ram_gb", id)? * DEFAULT_BUDGET_SHARE,
        (None, None) => need(None, "ram_gb or mem_budget_gb", id)?,
    };
    let kernel = match (n.kernel_gbs, n.mem_bw_gbs) {
        (Some(k), _) => need(Some(k), "kernel_gbs", id)?,
        (None, bw) => need(bw, "mem_bw_gbs or kernel_gbs", id)? * DEFAULT_KERNEL_SHARE,
    };
    let gflops = need(n.gflops, "gflops", id)?;
    let us = |v: Option<f64>, what: &str| need(Some(v.unwrap_or(0.0)), what, id).map(|x| x * 1e-6);
    Ok(SimNode {
        id: id.to_string(),
        profile: spec.profile.clone(),
        caps: NodeCaps {
            id: id.to_string(),
            mem_budget: (budget * 1e9) as u64,
            free_ram: (n.ram_gb.unwrap_or(budget) * 1e9) as u64,
            cores: n.threads.unwrap_or(1),
            matmul_gflops: gflops,
            mem_bw_gbs: kernel,
            disk_read_gbs: need(Some(n.disk_seq_gbs.unwrap_or(0.0)), "disk_seq_gbs", id)?,
        },
        terms: NodeTerms {
            layer_overhead_s: us(n.layer_overhead_us, "layer_overhead_us")?,
            step_overhead_s: us(n.step_overhead_us, "step_overhead_us")?,
            batch_gflops: need(Some(n.batch_gflops.unwrap_or(0.0)), "batch_gflops", id)?,
        },
    })
}

/// `spec`'s figures (its profile's where it gives none) as a planner link
/// between `a` and `b`.
fn resolve_link(spec: &LinkSpec, a: &str, b: &str, profiles: &Profiles) -> Result<Link, SimError> {
    let base = match &spec.profile {
        Some(p) => profiles.links.get(p).cloned().ok_or_else(|| {
            SimError::Hardware(format!(
                "link {a}–{b}: no link profile {p} (known: {})",
                profiles
                    .links
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?,
        None => LinkSpec::default(),
    };
    let bw = spec.bandwidth_gbps.or(base.bandwidth_gbps);
    let lat = spec.latency_ms.or(base.latency_ms);
    match (bw, lat) {
        (Some(bw), Some(lat)) if bw > 0.0 && bw.is_finite() && lat >= 0.0 && lat.is_finite() => {
            Ok(Link {
                a: a.to_string(),
                b: b.to_string(),
                bandwidth_bps: bw * 1e9,
                latency_s: lat * 1e-3,
            })
        }
        _ => Err(SimError::Hardware(format!(
            "link {a}–{b}: needs bandwidth_gbps > 0 and latency_ms >= 0 (or a profile)"
        ))),
    }
}

/// Plans `model` over the machines of `hw` and predicts it.
pub fn simulate(
    model: &SimModel,
    hw: &HardwareFile,
    profiles: &Profiles,
    opts: &SimOptions,
) -> Result<SimReport, SimError> {
    if hw.node.is_empty() {
        return Err(SimError::Hardware(
            "no [[node]] in the hardware file".into(),
        ));
    }
    let nodes = hw
        .node
        .iter()
        .map(|n| resolve_node(n, profiles))
        .collect::<Result<Vec<_>, _>>()?;
    let mut links = Vec::new();
    for l in &hw.link {
        links.push(resolve_link(l, &l.a, &l.b, profiles)?);
    }
    if let Some(all) = &hw.all_links {
        for (i, x) in nodes.iter().enumerate() {
            for y in &nodes[i + 1..] {
                let given = hw
                    .link
                    .iter()
                    .any(|l| (l.a == x.id && l.b == y.id) || (l.a == y.id && l.b == x.id));
                if !given {
                    links.push(resolve_link(all, &x.id, &y.id, profiles)?);
                }
            }
        }
    }
    let coordinator = hw
        .coordinator
        .clone()
        .unwrap_or_else(|| nodes[0].id.clone());
    let mut req = PlanRequest::new(
        model.shape.clone(),
        nodes.iter().map(|n| n.caps.clone()).collect(),
        links.clone(),
        coordinator,
    );
    req.force_stages = opts.force_stages;
    req.expert_parallel = opts.expert_parallel;
    req.kv_tokens = opts.kv_tokens;
    let terms = CostTerms {
        nodes: nodes
            .iter()
            .map(|n| (n.id.clone(), n.terms.clone()))
            .collect(),
        expert_skew: hw.expert_skew.unwrap_or(0.0),
    };
    let popts = PredictOptions {
        streams: opts.streams.clone(),
        prompt_tokens: opts.prompt_tokens,
        head_split: if opts.head_parallel {
            Some(model.head_split.clone().ok_or_else(|| {
                SimError::Hardware(format!(
                    "model {}: its head-divisible attention is unknown",
                    model.shape.name
                ))
            })?)
        } else {
            None
        },
    };
    let (plan, prediction) = plan_and_predict(&req, &terms, &popts)?;
    Ok(SimReport {
        model: model.shape.name.clone(),
        weight_bytes: model.shape.weight_bytes(),
        active_bytes_per_token: model.shape.active_bytes_per_token,
        nodes,
        links,
        options: opts.clone(),
        plan,
        prediction,
    })
}

#[cfg(test)]
mod published;
#[cfg(test)]
mod tests;
