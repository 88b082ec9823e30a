//! The plan: every tensor's target type and why, decided before a byte is
//! written (recipe, then `--override`s, then the shape fallback, then the
//! `--target-size` budget), with the notes the user should see.

use std::collections::BTreeMap;

use dwarfstar_gguf::{GgmlType, GgufFile};

use crate::budget::{self, BudgetRow};
use crate::error::{QuantizeError, Result};
use crate::imatrix::Imatrix;
use crate::kernel::{can_quantize, needs_imatrix, uses_imatrix};
use crate::pattern::{first_match, Override};
use crate::recipe::{classify, ds4_type, file_type, fit, recipe_type, Class, Recipe};

/// What to make.
#[derive(Clone, Debug)]
pub struct Options<'a> {
    pub recipe: Recipe,
    pub overrides: &'a [Override],
    pub imatrix: Option<&'a Imatrix>,
    /// Fit the whole file in this many bytes by choosing the routed experts'
    /// (dense models: the FFN's) types per tensor.
    pub target_size: Option<u64>,
    /// Quantize tensors whose source is already quantized (other than Q8_0).
    pub allow_requantize: bool,
}

/// Why a tensor gets its type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    Recipe,
    /// The recipe leaves it as it is (not a weight llama-quantize touches,
    /// or an integer tensor).
    Kept,
    /// Named by this `--override`.
    Override(String),
    /// The recipe's type cannot hold its rows.
    Fallback(GgmlType),
    /// Chosen to fit `--target-size`.
    Budget,
}

/// One tensor's decision.
#[derive(Clone, Debug)]
pub struct TensorPlan {
    pub name: String,
    pub dims: Vec<u64>,
    pub src: GgmlType,
    pub dst: GgmlType,
    pub class: Class,
    pub why: Why,
    /// Whether importance weights go into its quantization.
    pub weighted: bool,
}

impl TensorPlan {
    pub fn cols(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    pub fn rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }

    /// Matrices stacked in the tensor (experts or heads; 1 for 2-D).
    pub fn n_mat(&self) -> u64 {
        self.dims.iter().skip(2).product()
    }

    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Bytes of the data at type `ty`.
    pub fn bytes_at(&self, ty: GgmlType) -> u64 {
        self.cols() / ty.block_size() as u64 * ty.type_size() as u64 * self.rows()
    }

    /// Bytes of the written data.
    pub fn dst_bytes(&self) -> u64 {
        self.bytes_at(self.dst)
    }

    /// Copied byte for byte rather than converted.
    pub fn is_copy(&self) -> bool {
        self.src == self.dst
    }
}

/// Every tensor's decision, in file order.
#[derive(Clone, Debug)]
pub struct Plan {
    pub recipe: Recipe,
    pub tensors: Vec<TensorPlan>,
    /// Fallbacks and other things worth a line of output.
    pub notes: Vec<String>,
    /// The `--target-size` choices, when one was given.
    pub budget: Option<Vec<BudgetRow>>,
    /// `general.file_type` to write.
    pub file_type: u32,
}

impl Plan {
    /// Bytes of tensor data (without padding or header).
    pub fn data_bytes(&self) -> u64 {
        self.tensors.iter().map(TensorPlan::dst_bytes).sum()
    }

    /// Bits per weight over a set of tensors.
    pub fn bpw(&self, pick: impl Fn(&TensorPlan) -> bool) -> f64 {
        let (mut bits, mut n) = (0u64, 0u64);
        for t in self.tensors.iter().filter(|t| pick(t)) {
            bits += t.dst_bytes() * 8;
            n += t.n_elements();
        }
        bits as f64 / n.max(1) as f64
    }
}

/// Source types converted without `--allow-requantize`.
pub fn is_plain_source(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0
    )
}

/// Decides every tensor's type.
pub fn plan(file: &GgufFile, opts: &Options<'_>) -> Result<Plan> {
    let has_routed = file
        .tensors()
        .iter()
        .any(|t| matches!(classify(&t.name, t.dims.len()), Class::Routed(_)));
    // DeepSeek V4 sources get ds4's layout (see `recipe`).
    let v4 = file.get_str("general.architecture").ok() == Some("deepseek4");
    let mut notes = Vec::new();
    // (wanted, got, row length) -> tensors that fell back.
    let mut fallbacks: BTreeMap<(u32, u32, u64), Vec<&str>> = BTreeMap::new();
    let mut tensors = Vec::with_capacity(file.tensors().len());
    for t in file.tensors() {
        let class = classify(&t.name, t.dims.len());
        let cols = t.cols();
        let overridable = !matches!(class, Class::Vector | Class::Router | Class::Keep);
        let (dst, why) = if t.ty.is_integer() {
            (t.ty, Why::Kept)
        } else if let Some(o) = first_match(opts.overrides, &t.name).filter(|_| overridable) {
            if !cols.is_multiple_of(o.ty.block_size() as u64) {
                return Err(QuantizeError::OverrideShape {
                    name: t.name.clone(),
                    dims: t.dims.clone(),
                    ty: o.ty,
                    cols,
                    block: o.ty.block_size(),
                    pattern: o.text.clone(),
                });
            }
            (o.ty, Why::Override(o.text.clone()))
        } else {
            let ds4 = v4.then(|| ds4_type(opts.recipe, class, &t.name)).flatten();
            match ds4.or_else(|| recipe_type(opts.recipe, class, has_routed)) {
                None => (t.ty, Why::Kept),
                Some(want) => {
                    let got = fit(want, cols);
                    if got == want {
                        (got, Why::Recipe)
                    } else {
                        fallbacks
                            .entry((want.id(), got.id(), cols))
                            .or_default()
                            .push(&t.name);
                        (got, Why::Fallback(want))
                    }
                }
            }
        };
        if dst != t.ty {
            if !can_quantize(dst) {
                return Err(QuantizeError::Unsupported {
                    name: t.name.clone(),
                    ty: dst,
                });
            }
            if !is_plain_source(t.ty) && !opts.allow_requantize {
                return Err(QuantizeError::Requantize {
                    name: t.name.clone(),
                    ty: t.ty,
                });
            }
        }
        tensors.push(TensorPlan {
            name: t.name.clone(),
            dims: t.dims.clone(),
            src: t.ty,
            dst,
            class,
            why,
            weighted: false,
        });
    }

    for ((want, got, cols), names) in &fallbacks {
        let ty = |id: &u32| GgmlType::from_id(*id).map_or("?", |t| t.name());
        let shown: Vec<&str> = names.iter().take(3).copied().collect();
        let more = names.len().saturating_sub(shown.len());
        notes.push(format!(
            "{} tensor(s) with rows of {cols} (not whole {} blocks of {}) fall back to {}: {}{}",
            names.len(),
            ty(want),
            GgmlType::from_id(*want).map_or(0, |t| t.block_size()),
            ty(got),
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    }

    let budget = match opts.target_size {
        Some(target) => Some(budget::allocate(
            file,
            &mut tensors,
            opts.imatrix,
            target,
            has_routed,
            opts.allow_requantize,
        )?),
        None => None,
    };

    let mut uniform_iq2 = 0;
    for t in tensors.iter_mut().filter(|t| !t.is_copy()) {
        let w = opts.imatrix.and_then(|m| m.weights(&t.name));
        if let Some(w) = &w {
            let want = (t.cols() * t.n_mat()) as usize;
            if w.len() != want && t.name != "token_embd.weight" {
                return Err(QuantizeError::Tensor {
                    name: t.name.clone(),
                    msg: format!(
                        "the imatrix has {} weights for it, its shape {:?} needs {want}",
                        w.len(),
                        t.dims
                    ),
                });
            }
            t.weighted = w.len() == want && uses_imatrix(t.dst);
        }
        if needs_imatrix(t.dst) && !t.weighted {
            uniform_iq2 += 1;
        }
    }
    if uniform_iq2 > 0 {
        notes.push(format!(
            "{uniform_iq2} tensor(s) go to IQ2_XXS without imatrix data: quantized with uniform \
             importance (llama-quantize refuses this; pass --imatrix for better quality)"
        ));
    }

    // The file type: the most common type (by weights) of the routed
    // experts, else (dwarf recipes) of the dense FFN, else of every matrix.
    let dense_ffn = !matches!(opts.recipe, Recipe::Uniform(_));
    let main_class = |t: &TensorPlan| match t.class {
        Class::Routed(_) => true,
        Class::DenseFfn(_) => !has_routed && dense_ffn,
        _ => false,
    };
    let pick_main = tensors.iter().any(main_class);
    let mut by_type: Vec<(GgmlType, u64)> = Vec::new();
    for t in tensors
        .iter()
        .filter(|t| t.dims.len() >= 2 && (!pick_main || main_class(t)))
    {
        match by_type.iter_mut().find(|(ty, _)| *ty == t.dst) {
            Some((_, n)) => *n += t.n_elements(),
            None => by_type.push((t.dst, t.n_elements())),
        }
    }
    let main = by_type
        .iter()
        .max_by_key(|(_, n)| *n)
        .map_or(GgmlType::F32, |(t, _)| *t);
    Ok(Plan {
        recipe: opts.recipe,
        tensors,
        notes,
        budget,
        file_type: file_type(main),
    })
}
