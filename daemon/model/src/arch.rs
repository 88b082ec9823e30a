//! The architecture registry: for each supported `general.architecture`,
//! the tensor names (templates with `{}` for the layer index), the metadata
//! keys it reads, and the choices that distinguish one family from another.
//!
//! Adding a dense architecture that follows the llama shape is a table entry
//! here, not new forward code.

use dwarfstar_kernels::ops::RopeStyle;

/// A tensor's role in a dense transformer block or around it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    TokenEmbd,
    OutputNorm,
    Output,
    AttnNorm,
    AttnQ,
    AttnK,
    AttnV,
    AttnQBias,
    AttnKBias,
    AttnVBias,
    AttnOut,
    AttnQNorm,
    AttnKNorm,
    AttnPostNorm,
    FfnNorm,
    FfnGate,
    FfnUp,
    FfnDown,
    FfnPostNorm,
}

impl Role {
    /// The GGUF tensor name; per-layer roles take the layer index.
    pub fn name(self, layer: usize) -> String {
        let t = match self {
            Role::TokenEmbd => return "token_embd.weight".into(),
            Role::OutputNorm => return "output_norm.weight".into(),
            Role::Output => return "output.weight".into(),
            Role::AttnNorm => "attn_norm.weight",
            Role::AttnQ => "attn_q.weight",
            Role::AttnK => "attn_k.weight",
            Role::AttnV => "attn_v.weight",
            Role::AttnQBias => "attn_q.bias",
            Role::AttnKBias => "attn_k.bias",
            Role::AttnVBias => "attn_v.bias",
            Role::AttnOut => "attn_output.weight",
            Role::AttnQNorm => "attn_q_norm.weight",
            Role::AttnKNorm => "attn_k_norm.weight",
            Role::AttnPostNorm => "post_attention_norm.weight",
            Role::FfnNorm => "ffn_norm.weight",
            Role::FfnGate => "ffn_gate.weight",
            Role::FfnUp => "ffn_up.weight",
            Role::FfnDown => "ffn_down.weight",
            Role::FfnPostNorm => "post_ffw_norm.weight",
        };
        format!("blk.{layer}.{t}")
    }

    /// Whether the role repeats once per layer.
    pub fn per_layer(self) -> bool {
        !matches!(self, Role::TokenEmbd | Role::OutputNorm | Role::Output)
    }
}

/// The gated activation of the feed-forward block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    SwiGlu,
    GeGlu,
}

/// Everything that distinguishes one dense architecture from another.
#[derive(Clone, Debug)]
pub struct ArchSpec {
    /// `general.architecture`, also the prefix of its metadata keys.
    pub name: &'static str,
    pub rope_style: RopeStyle,
    pub activation: Activation,
    /// Per-layer tensors that must be present.
    pub required: &'static [Role],
    /// Per-layer tensors that may be present (biases, extra norms).
    pub optional: &'static [Role],
    /// Embeddings are multiplied by `sqrt(n_embd)` (Gemma).
    pub scale_embeddings: bool,
    /// Sliding-window layer pattern: every `n`-th layer is global (Gemma 3).
    pub swa_pattern: Option<u32>,
    /// The default RoPE base of sliding-window layers.
    pub swa_rope_base: Option<f32>,
}

const BASE: &[Role] = &[
    Role::AttnNorm,
    Role::AttnQ,
    Role::AttnK,
    Role::AttnV,
    Role::AttnOut,
    Role::FfnNorm,
    Role::FfnGate,
    Role::FfnUp,
    Role::FfnDown,
];

const QK_NORM: &[Role] = &[
    Role::AttnNorm,
    Role::AttnQ,
    Role::AttnK,
    Role::AttnV,
    Role::AttnOut,
    Role::AttnQNorm,
    Role::AttnKNorm,
    Role::FfnNorm,
    Role::FfnGate,
    Role::FfnUp,
    Role::FfnDown,
];

const GEMMA3: &[Role] = &[
    Role::AttnNorm,
    Role::AttnQ,
    Role::AttnK,
    Role::AttnV,
    Role::AttnOut,
    Role::AttnQNorm,
    Role::AttnKNorm,
    Role::AttnPostNorm,
    Role::FfnNorm,
    Role::FfnGate,
    Role::FfnUp,
    Role::FfnDown,
    Role::FfnPostNorm,
];

const BIASES: &[Role] = &[Role::AttnQBias, Role::AttnKBias, Role::AttnVBias];

/// The dense architectures DwarfStar runs.
pub static DENSE_ARCHS: &[ArchSpec] = &[
    ArchSpec {
        name: "llama",
        rope_style: RopeStyle::Normal,
        activation: Activation::SwiGlu,
        required: BASE,
        optional: BIASES,
        scale_embeddings: false,
        swa_pattern: None,
        swa_rope_base: None,
    },
    ArchSpec {
        name: "qwen2",
        rope_style: RopeStyle::Neox,
        activation: Activation::SwiGlu,
        required: BASE,
        optional: BIASES,
        scale_embeddings: false,
        swa_pattern: None,
        swa_rope_base: None,
    },
    ArchSpec {
        name: "qwen3",
        rope_style: RopeStyle::Neox,
        activation: Activation::SwiGlu,
        required: QK_NORM,
        optional: &[],
        scale_embeddings: false,
        swa_pattern: None,
        swa_rope_base: None,
    },
    ArchSpec {
        name: "gemma3",
        rope_style: RopeStyle::Neox,
        activation: Activation::GeGlu,
        required: GEMMA3,
        optional: &[],
        scale_embeddings: true,
        swa_pattern: Some(6),
        swa_rope_base: Some(10000.0),
    },
];

/// The spec of architecture `name`, if it is a dense one we run.
pub fn dense_arch(name: &str) -> Option<&'static ArchSpec> {
    DENSE_ARCHS.iter().find(|a| a.name == name)
}

/// The architectures with a module of their own (their forward code is not
/// the dense block's): MLA + MoE, and DeepSeek V4.
pub const MODULE_ARCHS: &[&str] = &[
    crate::deepseek2::hparams::ARCH,
    crate::deepseek4::hparams::ARCH,
];

/// Whether DwarfStar runs `general.architecture = name`.
pub fn is_supported(name: &str) -> bool {
    dense_arch(name).is_some() || MODULE_ARCHS.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_llama_cpp() {
        assert_eq!(Role::AttnQ.name(3), "blk.3.attn_q.weight");
        assert_eq!(Role::Output.name(7), "output.weight");
        assert_eq!(Role::FfnPostNorm.name(0), "blk.0.post_ffw_norm.weight");
        assert!(dense_arch("gemma3").is_some());
        assert!(dense_arch("gpt-j").is_none());
        assert!(is_supported("deepseek4") && is_supported("deepseek2") && is_supported("qwen3"));
        assert!(!is_supported("gpt-j"));
    }
}
