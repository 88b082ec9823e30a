//! Recipes: which type each tensor gets, by what the tensor is, and the
//! fallback for rows a type cannot hold.
//!
//! | recipe     | routed experts                                   | dense FFN (`ffn_gate/up/down`)        | rest  |
//! |------------|--------------------------------------------------|---------------------------------------|-------|
//! | `dwarf-q2` | `ffn_gate_exps`/`ffn_up_exps` IQ2_XXS, `ffn_down_exps` Q2_K | Q8_0; in a model without routed experts: gate/up IQ2_XXS, down Q2_K | Q8_0 |
//! | `dwarf-q4` | Q4_K                                             | Q8_0; without routed experts: Q4_K    | Q8_0  |
//! | `q8_0`, `q4_k`, `q2_k` (or any type name DwarfStar quantizes to) | that type | that type | that type |
//!
//! In every recipe, 1-D tensors (norms, biases, `exp_probs_b`) and the
//! router (`ffn_gate_inp`) are F32, and tensors whose name does not end in
//! `weight` keep their type (as llama-quantize). "Rest" is attention, the
//! shared experts, the embedding and the output head.
//!
//! On a DeepSeek V4 source the two dwarf recipes give ds4's layouts
//! (`ds4f-q2`, `ds4f-q4`, which ds4's loader checks tensor by tensor): the
//! stream-mixing matrices of the hyper-connections, the compressors and the
//! indexer, the router and the token embedding are F16 ([`ds4_type`]);
//! attention, the shared expert and the output head Q8_0, as above.
//!
//! Fallback (llama-quantize's table) when a row is not a whole number of
//! the chosen type's blocks: IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S,
//! IQ3_XXS, IQ3_S, IQ4_XS -> IQ4_NL; Q2_K, Q3_K, TQ1_0, TQ2_0 -> Q4_0;
//! Q4_K -> Q5_0; Q5_K -> Q5_1; Q6_K -> Q8_0; and F16 when even a block of
//! 32 does not fit.

use dwarfstar_gguf::GgmlType;

use crate::error::{QuantizeError, Result};
use crate::kernel::can_quantize;

/// A named way to choose every tensor's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipe {
    DwarfQ2,
    DwarfQ4,
    /// Every quantizable tensor at one type.
    Uniform(GgmlType),
}

impl Recipe {
    pub fn parse(s: &str) -> Result<Recipe> {
        match s.to_ascii_lowercase().as_str() {
            "dwarf-q2" => Ok(Recipe::DwarfQ2),
            "dwarf-q4" => Ok(Recipe::DwarfQ4),
            other => match GgmlType::from_name(other) {
                Some(t) if can_quantize(t) => Ok(Recipe::Uniform(t)),
                _ => Err(QuantizeError::UnknownRecipe(s.to_string())),
            },
        }
    }

    pub fn name(&self) -> String {
        match self {
            Recipe::DwarfQ2 => "dwarf-q2".into(),
            Recipe::DwarfQ4 => "dwarf-q4".into(),
            Recipe::Uniform(t) => t.name().to_ascii_lowercase(),
        }
    }
}

/// Which projection of an FFN a tensor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proj {
    Gate,
    Up,
    Down,
    /// `ffn_gate_up_exps`: gate and up fused.
    GateUp,
}

/// What a tensor is, as far as recipes care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A 1-D tensor: norm, bias, expert selection bias.
    Vector,
    /// The expert router `ffn_gate_inp`.
    Router,
    /// A stacked routed-expert tensor (`*_exps`).
    Routed(Proj),
    /// A dense FFN projection (`ffn_gate`/`ffn_up`/`ffn_down`).
    DenseFfn(Proj),
    /// DeepSeek V4's small stream-mixing matrices: hyper-connection
    /// (`hc_*_fn`, `output_hc_fn`), compressor (`*compressor_*`) and
    /// indexer (`indexer.*`) weights.
    Mixing,
    /// A tensor llama-quantize never quantizes (name not ending in
    /// `weight`): kept as it is.
    Keep,
    /// Everything else: attention, shared experts, embedding, output.
    Other,
}

/// The layer of `blk.N.*` names.
pub fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// Classifies a tensor by its name and number of dimensions.
pub fn classify(name: &str, n_dims: usize) -> Class {
    if n_dims < 2 {
        return Class::Vector;
    }
    let base = name.split('.').rev().nth(1).unwrap_or("");
    if base.starts_with("ffn_gate_inp") || base == "exp_probs_b" {
        return Class::Router;
    }
    if !name.ends_with("weight") {
        return Class::Keep;
    }
    if base.starts_with("hc_")
        || base.starts_with("output_hc_")
        || base.contains("compressor_")
        || base.starts_with("indexer")
        || name.contains(".indexer.")
    {
        return Class::Mixing;
    }
    let proj = |b: &str| match b {
        "ffn_gate_up" => Some(Proj::GateUp),
        "ffn_gate" => Some(Proj::Gate),
        "ffn_up" => Some(Proj::Up),
        "ffn_down" => Some(Proj::Down),
        _ => None,
    };
    if let Some(p) = base.strip_suffix("_exps").and_then(proj) {
        return Class::Routed(p);
    }
    match proj(base) {
        Some(p) => Class::DenseFfn(p),
        None => Class::Other,
    }
}

fn two_bit(p: Proj) -> GgmlType {
    match p {
        Proj::Down => GgmlType::Q2_K,
        _ => GgmlType::IQ2_XXS,
    }
}

/// The type `recipe` gives a tensor of class `class` in a model that has
/// (or has not) routed experts; `None`: keep the source type.
pub fn recipe_type(recipe: Recipe, class: Class, has_routed: bool) -> Option<GgmlType> {
    use GgmlType as T;
    Some(match (class, recipe) {
        (Class::Keep, _) => return None,
        (Class::Vector | Class::Router, _) => T::F32,
        (_, Recipe::Uniform(t)) => t,
        (Class::Routed(p), Recipe::DwarfQ2) => two_bit(p),
        (Class::DenseFfn(p), Recipe::DwarfQ2) if !has_routed => two_bit(p),
        (Class::Routed(_), Recipe::DwarfQ4) => T::Q4_K,
        (Class::DenseFfn(_), Recipe::DwarfQ4) if !has_routed => T::Q4_K,
        (Class::Mixing, _) => T::F16,
        _ => T::Q8_0,
    })
}

/// ds4's type for a tensor of a DeepSeek V4 model named `name`, where it
/// differs from [`recipe_type`]'s: the router and the token embedding are
/// F16 in the dwarf recipes. `None`: as [`recipe_type`].
pub fn ds4_type(recipe: Recipe, class: Class, name: &str) -> Option<GgmlType> {
    match (recipe, class) {
        (Recipe::Uniform(_), _) => None,
        (_, Class::Router) if name.ends_with("ffn_gate_inp.weight") => Some(GgmlType::F16),
        (_, Class::Other) if name == "token_embd.weight" => Some(GgmlType::F16),
        _ => None,
    }
}

/// llama-quantize's fallback for a type whose blocks do not fit a row.
pub fn fallback(ty: GgmlType) -> GgmlType {
    use GgmlType as T;
    match ty {
        T::IQ1_S
        | T::IQ1_M
        | T::IQ2_XXS
        | T::IQ2_XS
        | T::IQ2_S
        | T::IQ3_XXS
        | T::IQ3_S
        | T::IQ4_XS => T::IQ4_NL,
        T::Q2_K | T::Q3_K | T::TQ1_0 | T::TQ2_0 => T::Q4_0,
        T::Q4_K => T::Q5_0,
        T::Q5_K => T::Q5_1,
        T::Q6_K => T::Q8_0,
        _ => T::F16,
    }
}

/// `ty` if its blocks divide `cols`, else the fallback (then F16).
pub fn fit(ty: GgmlType, cols: u64) -> GgmlType {
    let fits = |t: GgmlType| cols.is_multiple_of(t.block_size() as u64);
    if fits(ty) {
        return ty;
    }
    let fb = fallback(ty);
    if fits(fb) {
        fb
    } else {
        GgmlType::F16
    }
}

/// The `general.file_type` (llama_ftype) for a file whose most common
/// quantized type is `ty`.
pub fn file_type(ty: GgmlType) -> u32 {
    use GgmlType as T;
    match ty {
        T::F32 => 0,
        T::F16 => 1,
        T::Q4_0 => 2,
        T::Q4_1 => 3,
        T::Q8_0 => 7,
        T::Q5_0 => 8,
        T::Q5_1 => 9,
        T::Q2_K => 10,
        T::Q3_K => 12,
        T::Q4_K => 15,
        T::Q5_K => 17,
        T::Q6_K => 18,
        T::IQ2_XXS => 19,
        T::IQ2_XS => 20,
        T::IQ3_XXS => 23,
        T::IQ1_S => 24,
        T::IQ4_NL => 25,
        T::IQ3_S => 26,
        T::IQ2_S => 28,
        T::IQ4_XS => 30,
        T::IQ1_M => 31,
        T::BF16 => 32,
        T::TQ1_0 => 36,
        T::TQ2_0 => 37,
        T::MXFP4 => 38,
        _ => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlType as T;

    #[test]
    fn classes() {
        assert_eq!(
            classify("blk.1.ffn_gate_exps.weight", 3),
            Class::Routed(Proj::Gate)
        );
        assert_eq!(
            classify("blk.1.ffn_down_exps.weight", 3),
            Class::Routed(Proj::Down)
        );
        assert_eq!(
            classify("blk.1.ffn_gate_up_exps.weight", 3),
            Class::Routed(Proj::GateUp)
        );
        assert_eq!(classify("blk.1.ffn_up_shexp.weight", 2), Class::Other);
        assert_eq!(
            classify("blk.0.ffn_up.weight", 2),
            Class::DenseFfn(Proj::Up)
        );
        assert_eq!(classify("blk.1.ffn_gate_inp.weight", 2), Class::Router);
        assert_eq!(classify("blk.1.exp_probs_b.bias", 1), Class::Vector);
        assert_eq!(classify("blk.1.attn_norm.weight", 1), Class::Vector);
        assert_eq!(classify("token_embd.weight", 2), Class::Other);
        assert_eq!(classify("rope_freqs", 2), Class::Keep);
        for v4 in [
            "blk.1.hc_attn_fn.weight",
            "output_hc_fn.weight",
            "mtp.0.hc_head_fn.weight",
            "blk.2.attn_compressor_kv.weight",
            "blk.2.attn_compressor_ape.weight",
            "blk.2.indexer.proj.weight",
            "blk.2.indexer.attn_q_b.weight",
            "blk.2.indexer_compressor_gate.weight",
        ] {
            assert_eq!(classify(v4, 2), Class::Mixing, "{v4}");
        }
        assert_eq!(classify("blk.2.attn_q_b.weight", 2), Class::Other);
        assert_eq!(classify("blk.2.attn_output_a.weight", 2), Class::Other);
        assert_eq!(classify("blk.2.hc_attn_base.weight", 1), Class::Vector);
        assert_eq!(layer_of("blk.12.attn_q.weight"), Some(12));
        assert_eq!(layer_of("output.weight"), None);
    }

    #[test]
    fn dwarf_q2_layout() {
        let r = Recipe::DwarfQ2;
        assert_eq!(
            recipe_type(r, Class::Routed(Proj::Up), true),
            Some(T::IQ2_XXS)
        );
        assert_eq!(
            recipe_type(r, Class::Routed(Proj::Down), true),
            Some(T::Q2_K)
        );
        assert_eq!(
            recipe_type(r, Class::DenseFfn(Proj::Up), true),
            Some(T::Q8_0)
        );
        assert_eq!(
            recipe_type(r, Class::DenseFfn(Proj::Gate), false),
            Some(T::IQ2_XXS)
        );
        assert_eq!(
            recipe_type(r, Class::DenseFfn(Proj::Down), false),
            Some(T::Q2_K)
        );
        assert_eq!(recipe_type(r, Class::Other, false), Some(T::Q8_0));
        assert_eq!(recipe_type(r, Class::Router, true), Some(T::F32));
        assert_eq!(recipe_type(r, Class::Keep, true), None);
        assert_eq!(recipe_type(r, Class::Mixing, true), Some(T::F16));
        let emb = "token_embd.weight";
        assert_eq!(ds4_type(r, Class::Other, emb), Some(T::F16));
        let router = "blk.3.ffn_gate_inp.weight";
        assert_eq!(ds4_type(r, Class::Router, router), Some(T::F16));
        assert_eq!(ds4_type(r, Class::Other, "output.weight"), None);
        assert_eq!(
            ds4_type(Recipe::Uniform(T::Q4_K), Class::Router, router),
            None
        );
        assert_eq!(Recipe::parse("Q4_K").unwrap(), Recipe::Uniform(T::Q4_K));
        assert!(Recipe::parse("q8_k").is_err());
    }

    #[test]
    fn fallbacks_follow_llama_quantize() {
        assert_eq!(fit(T::Q2_K, 128), T::Q4_0);
        assert_eq!(fit(T::IQ2_XXS, 576), T::IQ4_NL);
        assert_eq!(fit(T::Q4_K, 640), T::Q5_0);
        assert_eq!(fit(T::Q6_K, 96), T::Q8_0);
        assert_eq!(fit(T::Q8_0, 40), T::F16);
        assert_eq!(fit(T::Q2_K, 40), T::F16);
        assert_eq!(fit(T::Q2_K, 512), T::Q2_K);
    }
}
