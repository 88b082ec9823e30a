//! What both architectures' plans share: the request ([`SynthConfig`]),
//! and the tensors a plan lists ([`TensorPlan`]) with how each is filled
//! ([`Fill`]).

use dwarfstar_kernels::GgmlType;

/// What the user asked for; `None` fields are chosen.
#[derive(Clone, Debug)]
pub struct SynthConfig {
    /// `deepseek2` or `deepseek4`.
    pub arch: String,
    /// Target file size in bytes (64 MiB when neither this nor `layers`).
    pub size: Option<u64>,
    pub layers: Option<usize>,
    pub hidden: Option<usize>,
    pub experts: Option<usize>,
    pub top_k: Option<usize>,
    /// Hidden size of one routed expert.
    pub ffn: Option<usize>,
    pub seed: u64,
    /// Zipf exponent of expert popularity (0: uniform routing).
    pub skew: f32,
    /// The type of the big matrices (deepseek4: of the routed experts'
    /// gate and up projections).
    pub ty: GgmlType,
    /// deepseek4 only: the type of the routed experts' down projection
    /// (`None`: `ty`).
    pub down_ty: Option<GgmlType>,
    /// deepseek4 only: attention heads and their size.
    pub heads: Option<usize>,
    pub head_dim: Option<usize>,
    /// deepseek4 only: append the multi-token-prediction block.
    pub mtp: bool,
}

impl SynthConfig {
    /// A deepseek2 config with everything else chosen.
    pub fn new(size: Option<u64>, ty: GgmlType) -> SynthConfig {
        SynthConfig {
            arch: super::ARCH.to_string(),
            size,
            layers: None,
            hidden: None,
            experts: None,
            top_k: None,
            ffn: None,
            seed: 0,
            skew: 1.0,
            ty,
            down_ty: None,
            heads: None,
            head_dim: None,
            mtp: true,
        }
    }

    /// A deepseek4 config of ds4's "dwarf-q2" types (routed gate/up
    /// IQ2_XXS, down Q2_K) with everything else chosen.
    pub fn deepseek4(size: Option<u64>) -> SynthConfig {
        SynthConfig {
            arch: super::ds4::ARCH.to_string(),
            down_ty: Some(GgmlType::Q2_K),
            ..SynthConfig::new(size, GgmlType::IQ2_XXS)
        }
    }
}

/// How a tensor's values are made.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fill {
    /// Random values of standard deviation `sigma`, drawn from a pool of
    /// pre-quantized 256-value chunks.
    Pool { sigma: f32 },
    /// An RMS-norm weight: `1 ± 5%`.
    Norm,
    /// An f32 router matrix of standard deviation `sigma`.
    Router { sigma: f32 },
    /// The `exp_probs_b` selection bias of an MoE layer (see `fill`).
    Bias,
    /// Small values `mean + sigma·N(0, 1)` (sinks, hyper-connection scales).
    Normal { mean: f32, sigma: f32 },
    /// A hyper-connection base of `hc` streams (see `fill::hc_base`).
    HcBase { hc: usize },
    /// An I32 hash routing table over `n_expert` experts (`fill::hash_ids`).
    HashIds { n_expert: usize },
}

/// One tensor of the file.
#[derive(Clone, Debug)]
pub struct TensorPlan {
    pub name: String,
    /// ggml order: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub fill: Fill,
}

impl TensorPlan {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Bytes of the data (the shape is a whole number of blocks).
    pub fn bytes(&self) -> u64 {
        self.n_elements() / self.ty.block_size() as u64 * self.ty.type_size() as u64
    }
}
