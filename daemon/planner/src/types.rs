//! The planner's data types (all serde): what a model needs ([`ModelShape`],
//! [`LayerShape`]), what the nodes offer ([`NodeCaps`], [`Link`]), the
//! question ([`PlanRequest`]) and the answer ([`Plan`], [`Stage`],
//! [`ExpertShard`]) or why there is none ([`PlanError`]).
//!
//! Fields added beyond the mesh design's contract carry `#[serde(default)]`,
//! so JSON written without them still reads.

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// What a model asks of the machines that run it, per layer and in total.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelShape {
    pub name: String,
    pub arch: String,
    pub n_layer: u32,
    pub hidden: u32,
    pub n_vocab: u32,
    /// Token embedding (+ any other tensor outside the layers that is not
    /// part of the output).
    pub embed_bytes: u64,
    /// Output norm + lm head (+ anything after the last layer). With tied
    /// embeddings the lm head *is* the embedding table, and it is counted
    /// here as well, because the node that computes logits must hold it.
    pub output_bytes: u64,
    /// Parameters of the output (lm head) matrix, for its flops.
    #[serde(default)]
    pub output_params: u64,
    /// Whether the lm head is the embedding table (then `output_bytes`
    /// counts that table a second time).
    #[serde(default)]
    pub tied_embeddings: bool,
    /// Bytes in the file that the forward pass never reads (e.g. trailing
    /// multi-token-prediction blocks), so the totals reconcile.
    #[serde(default)]
    pub unused_bytes: u64,
    pub layers: Vec<LayerShape>,
    /// Whole model, all layers, f32 cache.
    pub kv_bytes_per_token: u64,
    /// Bytes a decode step reads: one embedding row, every layer's dense
    /// and shared-expert bytes, the top-k routed experts, the output.
    pub active_bytes_per_token: u64,
}

/// One transformer block.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct LayerShape {
    /// Attention + norms + dense FFN + router: everything but the experts.
    pub dense_bytes: u64,
    pub shared_expert_bytes: u64,
    /// Routed experts of this layer (0 for a dense layer).
    pub n_experts: u32,
    /// Experts each token is routed to.
    pub n_experts_used: u32,
    /// Bytes of ONE routed expert (its gate + up + down slices).
    pub expert_bytes: u64,
    /// Cache bytes each position adds to this layer (f32).
    pub kv_bytes_per_token: u64,
    /// Cache bytes a sequence holds in this layer whatever its length (e.g.
    /// a sliding window's ring), 0 for a plain KV cache.
    #[serde(default)]
    pub kv_fixed_bytes: u64,
    #[serde(default)]
    pub dense_params: u64,
    #[serde(default)]
    pub shared_expert_params: u64,
    /// Parameters of ONE routed expert.
    #[serde(default)]
    pub expert_params: u64,
}

impl LayerShape {
    /// Whether tokens are routed through experts here.
    pub fn is_moe(&self) -> bool {
        self.n_experts > 0
    }

    /// Every weight byte of the layer.
    pub fn total_bytes(&self) -> u64 {
        self.dense_bytes + self.shared_expert_bytes + self.n_experts as u64 * self.expert_bytes
    }
}

impl ModelShape {
    /// Every weight byte the forward pass uses (a tied table once).
    pub fn weight_bytes(&self) -> u64 {
        let tied = if self.tied_embeddings {
            self.embed_bytes.min(self.output_bytes)
        } else {
            0
        };
        self.embed_bytes + self.output_bytes - tied
            + self.layers.iter().map(LayerShape::total_bytes).sum::<u64>()
    }
}

/// A node's measured capabilities.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeCaps {
    /// libp2p PeerId as a string.
    pub id: String,
    /// Bytes this node lets the model use (weights + KV). The planner trusts
    /// this and reads `free_ram` as information only.
    pub mem_budget: u64,
    pub free_ram: u64,
    pub cores: u32,
    /// Measured self-benchmark: f32-equivalent GFLOP/s of a q4/q8 matvec.
    /// 0: this node computes nothing (it may still coordinate).
    pub matmul_gflops: f64,
    /// Measured memory bandwidth, GB/s. 0: computes nothing.
    pub mem_bw_gbs: f64,
    /// Measured NVMe read, GB/s (paging cost). 0: cannot page.
    pub disk_read_gbs: f64,
}

/// Cost terms beyond [`NodeCaps`] (kept apart so that the capabilities a
/// node announces keep their wire form). The defaults add nothing: a plan
/// made with `CostTerms::default()` is the plan [`crate::plan`] makes.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct CostTerms {
    /// Per node id; a node missing here gets [`NodeTerms::default`].
    #[serde(default)]
    pub nodes: std::collections::BTreeMap<String, NodeTerms>,
    /// Zipf exponent of routed-expert popularity (0: uniform routing). A
    /// node caching a fraction of its experts keeps the most popular ones,
    /// so it hits more often than that fraction when this is above 0.
    #[serde(default)]
    pub expert_skew: f64,
}

/// One node's fixed costs and batched throughput.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeTerms {
    /// Seconds every layer costs per step beyond its roofline (kernel
    /// launches, synchronisation, small ops).
    #[serde(default)]
    pub layer_overhead_s: f64,
    /// Seconds every step costs a node that takes part (scheduling, the
    /// step's set-up), whatever it runs.
    #[serde(default)]
    pub step_overhead_s: f64,
    /// f32-equivalent GFLOP/s of the kernels when a step carries many
    /// tokens (matrix-matrix: batched decode, prefill). 0: `matmul_gflops`.
    #[serde(default)]
    pub batch_gflops: f64,
}

/// A measured link between two nodes (either direction).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub a: String,
    pub b: String,
    /// Bits per second.
    pub bandwidth_bps: f64,
    /// One-way latency, seconds.
    pub latency_s: f64,
}

/// How activations travel between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ActDType {
    #[default]
    F32,
    F16,
}

impl ActDType {
    /// Bytes per value on the wire.
    pub fn size(self) -> u64 {
        match self {
            ActDType::F32 => 4,
            ActDType::F16 => 2,
        }
    }
}

/// The default context the planner reserves KV for.
pub const DEFAULT_KV_TOKENS: u64 = 4096;

fn default_kv_tokens() -> u64 {
    DEFAULT_KV_TOKENS
}

/// The question: run this model on these nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanRequest {
    pub model: ModelShape,
    pub nodes: Vec<NodeCaps>,
    /// Missing pairs get [`crate::DEFAULT_LINK`]; two entries for one pair
    /// (e.g. both directions) merge to the slower.
    pub links: Vec<Link>,
    /// The node that embeds tokens, samples and talks to clients.
    pub coordinator: String,
    pub version: u64,
    /// Exactly this many pipeline stages (each a node with >= 1 layer).
    pub force_stages: Option<u32>,
    /// Spread routed experts over the nodes even when that is not faster.
    pub expert_parallel: bool,
    /// Positions of KV cache to reserve room for (all sequences together).
    #[serde(default = "default_kv_tokens")]
    pub kv_tokens: u64,
    /// Force the activation dtype (None: the planner's rule, see
    /// [`crate::F16_MIN_GAIN`]).
    #[serde(default)]
    pub force_act_dtype: Option<ActDType>,
    /// Put the output head on the coordinator wherever it runs the first
    /// stage (the last stage then sends its hidden rows back): the
    /// coordinator drafts with the model's MTP block, which reads those
    /// rows and shares the head.
    #[serde(default)]
    pub output_on_coordinator: bool,
}

impl PlanRequest {
    /// A request with the defaults: no forced split, no forced expert
    /// parallelism, [`DEFAULT_KV_TOKENS`], the planner's dtype rule.
    pub fn new(
        model: ModelShape,
        nodes: Vec<NodeCaps>,
        links: Vec<Link>,
        coordinator: impl Into<String>,
    ) -> PlanRequest {
        PlanRequest {
            model,
            nodes,
            links,
            coordinator: coordinator.into(),
            version: 0,
            force_stages: None,
            expert_parallel: false,
            kv_tokens: DEFAULT_KV_TOKENS,
            force_act_dtype: None,
            output_on_coordinator: false,
        }
    }
}

/// The answer.
///
/// Execution: the coordinator embeds; activations go through `stages` in
/// order (the coordinator's own stage, if it has one, is the first); after
/// the last stage they go to `output_node` (unless that is the last
/// stage's node), which applies the output norm and lm head and sends
/// LOGITS to the coordinator (unless it is the coordinator).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub version: u64,
    pub model: String,
    /// Node that embeds tokens, samples, and talks to clients.
    pub coordinator: String,
    /// In pipeline order; contiguous, cover 0..n_layer exactly once; a node
    /// appears at most once.
    pub stages: Vec<Stage>,
    /// For MoE layers: every (layer, expert) exactly once, sorted by layer
    /// then first expert. Without expert parallelism each MoE layer has one
    /// shard, on its stage's node.
    pub experts: Vec<ExpertShard>,
    pub activation_dtype: ActDType,
    pub predicted_tokens_per_s: f64,
    /// Every node of the request, by id: bytes of routed experts it cannot
    /// keep in its budget and pages from disk (0 when it fits).
    pub predicted_paging: Vec<(String, u64)>,
    /// The node holding the output norm + lm head: the last stage's node,
    /// or the coordinator when it runs the first stage. Exactly one stage
    /// has `holds_output`.
    #[serde(default)]
    pub output_node: String,
}

impl Plan {
    /// Every node the plan gives work: the coordinator, the stages' nodes
    /// and the expert holders.
    pub fn members(&self) -> std::collections::BTreeSet<&str> {
        self.stages
            .iter()
            .map(|s| s.node.as_str())
            .chain(self.experts.iter().map(|e| e.node.as_str()))
            .chain([self.coordinator.as_str()])
            .collect()
    }
}

/// A pipeline stage: one node running a contiguous range of layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub node: String,
    pub layers: Range<u32>,
    /// This stage's node is the coordinator (it embeds).
    pub holds_embed: bool,
    /// This stage's node is the output node.
    pub holds_output: bool,
}

/// Experts of one MoE layer held by one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExpertShard {
    pub node: String,
    pub layer: u32,
    /// Ascending expert ids.
    pub experts: Vec<u32>,
}

/// Why no plan came out.
#[derive(Clone, Debug, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum PlanError {
    #[error("no nodes to plan over")]
    NoNodes,
    #[error("no plan fits: {shortfall_bytes} bytes short: {detail}")]
    Infeasible {
        shortfall_bytes: u64,
        detail: String,
    },
    #[error("bad plan request: {0}")]
    BadInput(String),
}
