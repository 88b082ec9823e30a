//! `--target-size`: choosing each routed-expert tensor's type (in a model
//! without routed experts: each FFN tensor's) so the file fits.
//!
//! One stacked GGUF tensor has one type, so the choice is per (layer,
//! tensor), not per expert. Each candidate gets a ladder of types its rows
//! can hold (IQ2_XXS, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_0; for rows that are
//! not whole 256-blocks IQ4_NL, Q5_0, Q8_0). For each rung the expected
//! output error is estimated on a sample of the tensor's rows, spread over
//! its experts: `Σ_e f_e Σ_j a_ej (w_j − q(w)_j)²`, where `a_ej` is expert
//! `e`'s mean squared input of column `j` (the imatrix; 1 without one) and
//! `f_e` its routing frequency relative to the mean (the imatrix counts; 1
//! without). So importance = routing frequency × imatrix weight, summed over
//! the experts, and the weights' own scale counts too.
//!
//! Every candidate starts at its cheapest rung; then, while bytes are left,
//! the upgrade with the largest error reduction per added byte is taken.
//! The file size is estimated as the source's header plus 4 KiB plus each
//! tensor's data padded to 32 bytes.

use dwarfstar_gguf::{GgmlType, GgufFile};
use dwarfstar_kernels::dequantize_row;
use rayon::prelude::*;

use crate::error::{QuantizeError, Result};
use crate::imatrix::Imatrix;
use crate::kernel::{can_quantize, quantize_rows};
use crate::plan::{is_plain_source, TensorPlan, Why};
use crate::recipe::{layer_of, Class};

/// Values sampled per candidate tensor for the error estimate.
const SAMPLE_VALUES: u64 = 1 << 17;

/// One candidate's outcome.
#[derive(Clone, Debug)]
pub struct BudgetRow {
    pub name: String,
    pub layer: Option<usize>,
    pub ty: GgmlType,
    pub bytes: u64,
    /// Σ over experts of routing frequency × mean imatrix weight.
    pub importance: f64,
    /// Estimated output error at the chosen type, relative to the
    /// cheapest rung's.
    pub rel_error: f64,
}

fn ladder(cols: u64) -> Vec<GgmlType> {
    use GgmlType as T;
    let all: &[GgmlType] = if cols.is_multiple_of(256) {
        &[
            T::IQ2_XXS,
            T::Q2_K,
            T::Q3_K,
            T::Q4_K,
            T::Q5_K,
            T::Q6_K,
            T::Q8_0,
        ]
    } else {
        &[T::IQ4_NL, T::Q5_0, T::Q8_0]
    };
    all.iter()
        .copied()
        .filter(|t| cols.is_multiple_of(t.block_size() as u64) && can_quantize(*t))
        .collect()
}

fn padded(n: u64) -> u64 {
    n.div_ceil(32) * 32
}

/// Parses `80GiB`, `512M`, `1.5TB`, `123456` as `--mem-budget` does
/// ([`dwarfstar_model::store::parse_size`]).
pub fn parse_size(s: &str) -> Result<u64> {
    dwarfstar_model::store::parse_size(s).map_err(|_| QuantizeError::BadSize(s.to_string()))
}

/// Per-expert importance inputs of one candidate.
struct Importance {
    /// `cols * n_mat` column weights.
    weights: Option<Vec<f32>>,
    /// Relative routing frequency per matrix (mean 1).
    freq: Vec<f64>,
}

fn importance_of(t: &TensorPlan, imatrix: Option<&Imatrix>) -> Importance {
    let n_mat = t.n_mat() as usize;
    let want = (t.cols() as usize) * n_mat;
    let weights = imatrix
        .and_then(|m| m.weights(&t.name))
        .filter(|w| w.len() == want);
    let counts = imatrix.and_then(|m| m.expert_counts(&t.name));
    let freq = match counts {
        Some(c) if c.len() == n_mat && c.iter().sum::<u64>() > 0 => {
            let total: u64 = c.iter().sum();
            c.iter()
                .map(|&x| x as f64 * n_mat as f64 / total as f64)
                .collect()
        }
        _ => vec![1.0; n_mat],
    };
    Importance { weights, freq }
}

/// Estimated error of each rung of `ladder` for tensor `t`.
fn rung_errors(
    file: &GgufFile,
    t: &TensorPlan,
    ladder: &[GgmlType],
    imp: &Importance,
) -> Result<Vec<f64>> {
    let info = file.tensor(&t.name).ok_or_else(|| QuantizeError::Tensor {
        name: t.name.clone(),
        msg: "not in the source file".into(),
    })?;
    let data = file.tensor_data(info);
    let cols = t.cols() as usize;
    let total_rows = t.rows();
    let rows_per_mat = t.dims.get(1).copied().unwrap_or(1).max(1);
    let sample = (SAMPLE_VALUES / t.cols().max(1)).clamp(total_rows.min(8), total_rows);
    let row_bytes = info.row_bytes() as usize;
    let errs = (0..sample)
        .into_par_iter()
        .map(|k| -> Result<Vec<f64>> {
            let r = k * total_rows / sample;
            let e = (r / rows_per_mat) as usize;
            let mut x = vec![0f32; cols];
            let src = &data[r as usize * row_bytes..(r as usize + 1) * row_bytes];
            dequantize_row(t.src, src, &mut x)?;
            let w = imp.weights.as_ref().map(|w| &w[e * cols..(e + 1) * cols]);
            let f = imp.freq.get(e).copied().unwrap_or(1.0);
            let mut out = Vec::with_capacity(ladder.len());
            let mut back = vec![0f32; cols];
            for &ty in ladder {
                let mut q = vec![0u8; ty.row_bytes(cols).unwrap_or(0)];
                quantize_rows(ty, &x, cols, w, &mut q)?;
                dequantize_row(ty, &q, &mut back)?;
                let err: f64 = (0..cols)
                    .map(|j| {
                        let d = (x[j] - back[j]) as f64;
                        w.map_or(1.0, |w| w[j] as f64) * d * d
                    })
                    .sum();
                out.push(f * err);
            }
            Ok(out)
        })
        .collect::<Result<Vec<_>>>()?;
    let scale = total_rows as f64 / sample as f64;
    Ok((0..ladder.len())
        .map(|i| errs.iter().map(|e| e[i]).sum::<f64>() * scale)
        .collect())
}

/// Chooses the candidates' types so the file fits in `target` bytes;
/// updates `tensors` and returns the table of choices.
pub fn allocate(
    file: &GgufFile,
    tensors: &mut [TensorPlan],
    imatrix: Option<&Imatrix>,
    target: u64,
    has_routed: bool,
    allow_requantize: bool,
) -> Result<Vec<BudgetRow>> {
    let is_candidate = |t: &TensorPlan| {
        let class_ok = match t.class {
            Class::Routed(_) => true,
            Class::DenseFfn(_) => !has_routed,
            _ => false,
        };
        class_ok
            && matches!(t.why, Why::Recipe | Why::Fallback(_))
            && (is_plain_source(t.src) || allow_requantize)
            && !ladder(t.cols()).is_empty()
    };
    let cand: Vec<usize> = (0..tensors.len())
        .filter(|&i| is_candidate(&tensors[i]))
        .collect();
    let header = file.data_offset() + 4096;
    let fixed: u64 = header
        + tensors
            .iter()
            .enumerate()
            .filter(|(i, _)| !cand.contains(i))
            .map(|(_, t)| padded(t.dst_bytes()))
            .sum::<u64>();
    struct C {
        idx: usize,
        ladder: Vec<GgmlType>,
        bytes: Vec<u64>,
        errs: Vec<f64>,
        importance: f64,
        at: usize,
    }
    let mut cs: Vec<C> = cand
        .par_iter()
        .map(|&idx| -> Result<C> {
            let t = &tensors[idx];
            let ladder = ladder(t.cols());
            let imp = importance_of(t, imatrix);
            let errs = rung_errors(file, t, &ladder, &imp)?;
            let n_mat = t.n_mat() as usize;
            let cols = t.cols() as usize;
            let importance = (0..n_mat)
                .map(|e| {
                    let w = imp.weights.as_ref().map_or(1.0, |w| {
                        w[e * cols..(e + 1) * cols]
                            .iter()
                            .map(|&v| v as f64)
                            .sum::<f64>()
                            / cols as f64
                    });
                    imp.freq[e] * w
                })
                .sum::<f64>();
            let bytes = ladder.iter().map(|&ty| padded(t.bytes_at(ty))).collect();
            Ok(C {
                idx,
                ladder,
                bytes,
                errs,
                importance,
                at: 0,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut total = fixed + cs.iter().map(|c| c.bytes[0]).sum::<u64>();
    if total > target {
        return Err(QuantizeError::TargetTooSmall { target, min: total });
    }
    loop {
        let left = target - total;
        let mut best: Option<(usize, usize, f64)> = None;
        for (ci, c) in cs.iter().enumerate() {
            for k in c.at + 1..c.ladder.len() {
                let add = c.bytes[k] - c.bytes[c.at];
                if add > left {
                    break;
                }
                let gain = (c.errs[c.at] - c.errs[k]) / add.max(1) as f64;
                if gain > 0.0 && best.is_none_or(|b| gain > b.2) {
                    best = Some((ci, k, gain));
                }
            }
        }
        let Some((ci, k, _)) = best else { break };
        let c = &mut cs[ci];
        total += c.bytes[k] - c.bytes[c.at];
        c.at = k;
    }
    let mut rows = Vec::with_capacity(cs.len());
    for c in &cs {
        let t = &mut tensors[c.idx];
        t.dst = c.ladder[c.at];
        t.why = Why::Budget;
        rows.push(BudgetRow {
            name: t.name.clone(),
            layer: layer_of(&t.name),
            ty: t.dst,
            bytes: c.bytes[c.at],
            importance: c.importance,
            rel_error: c.errs[c.at] / c.errs[0].max(f64::MIN_POSITIVE),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("80GiB").unwrap(), 80 << 30);
        assert_eq!(parse_size("80G").unwrap(), 80 << 30);
        assert_eq!(parse_size("1.5 MB").unwrap(), 1_500_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("GiB").is_err());
    }

    #[test]
    fn ladders_fit_rows() {
        assert_eq!(ladder(512).first(), Some(&GgmlType::IQ2_XXS));
        assert_eq!(
            ladder(576),
            vec![GgmlType::IQ4_NL, GgmlType::Q5_0, GgmlType::Q8_0]
        );
        assert!(ladder(40).is_empty());
    }
}
