//! Which experts a model's router picks on a prompt: per MoE layer, how
//! many times each expert was selected.
//!
//! For deepseek2 ([`expert_counts`]) the count uses the model's own public
//! pieces: a layer run through [`Deepseek2Model::forward_layers`] with its
//! FFN norm zeroed leaves `x + attention(x)` (a zero input gives a zero MoE
//! and shared-expert output), which is exactly the router's input before
//! its RMS norm; the routes then come from [`route`] as in the forward
//! pass. For any architecture ([`observed_expert_counts`], used for
//! deepseek4) a [`MatmulObserver`] counts the rows each routed expert's
//! gate projection receives during a forward pass: one per token routed
//! to it, hash-routed layers included.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use dwarfstar_kernels::{matmul, ops};

use crate::deepseek2::moe::route;
use crate::deepseek2::weights::Ffn;
use crate::deepseek2::Deepseek2Model;
use crate::error::{ModelError, Result};
use crate::observe::{MatIndex, MatmulObserver};
use crate::Model;

/// Selections per expert, for each MoE layer.
#[derive(Clone, Debug, Default)]
pub struct RouteCounts {
    /// `(layer index, selections of each expert)`.
    pub layers: Vec<(usize, Vec<u64>)>,
}

impl RouteCounts {
    /// Every layer's counts, each sorted most-picked first, summed rank by
    /// rank: the popularity curve of a "typical" layer.
    pub fn by_rank(&self) -> Vec<u64> {
        let n = self.layers.first().map_or(0, |l| l.1.len());
        let mut out = vec![0u64; n];
        for (_, c) in &self.layers {
            let mut s = c.clone();
            s.sort_unstable_by(|a, b| b.cmp(a));
            for (o, v) in out.iter_mut().zip(s) {
                *o += v;
            }
        }
        out
    }

    /// The share of all selections that went to the `frac` most-picked
    /// experts of each layer (0.25: the top quarter).
    pub fn top_share(&self, frac: f64) -> f64 {
        let r = self.by_rank();
        let total: u64 = r.iter().sum();
        let k = ((r.len() as f64 * frac).round() as usize).clamp(1, r.len().max(1));
        r.iter().take(k).sum::<u64>() as f64 / total.max(1) as f64
    }

    /// A text histogram of [`RouteCounts::by_rank`] (share per rank).
    pub fn histogram(&self) -> String {
        let r = self.by_rank();
        let total: u64 = r.iter().sum::<u64>().max(1);
        let mut s = String::new();
        for (i, v) in r.iter().enumerate() {
            let share = *v as f64 / total as f64;
            s.push_str(&format!(
                "rank {:>3}: {:5.2}% {}\n",
                i + 1,
                100.0 * share,
                "#".repeat((share * 400.0).round() as usize)
            ));
        }
        s
    }
}

/// Runs `tokens` through `model` and counts the experts each MoE layer's
/// router selects for each token.
pub fn expert_counts(model: &Deepseek2Model, tokens: &[u32]) -> Result<RouteCounts> {
    let hp = &model.hp;
    let Some(p) = hp.moe.as_ref() else {
        return Ok(RouteCounts::default());
    };
    let mut probe = Deepseek2Model::load(Arc::clone(&model.file))?;
    for l in &mut probe.w.layers {
        l.ffn_norm.iter_mut().for_each(|v| *v = 0.0);
    }
    let n = tokens.len();
    let e = hp.n_embd;
    let mut x = model.embed(tokens)?;
    let mut cache = model.new_cache(n);
    let mut counts = RouteCounts::default();
    for (il, l) in model.w.layers.iter().enumerate() {
        if let Ffn::Moe(w) = &l.ffn {
            // Both runs write the same latent rows at the same positions.
            let mut h = x.clone();
            probe.forward_layers(il..il + 1, &mut h, &mut [(n, &mut cache)])?;
            for row in h.chunks_exact_mut(e) {
                ops::rms_norm(row, &l.ffn_norm, hp.rms_eps);
            }
            let mut logits = vec![0f32; n * p.n_expert];
            matmul(w.gate_inp.mat(&model.file), &h, n, &mut logits)?;
            let mut c = vec![0u64; p.n_expert];
            for lg in logits.chunks_exact(p.n_expert) {
                for ex in route(lg, w.probs_bias.as_deref(), p).experts {
                    *c.get_mut(ex).ok_or_else(|| {
                        ModelError::Invalid(format!("router chose expert {ex}"))
                    })? += 1;
                }
            }
            counts.layers.push((il, c));
        }
        model.forward_layers(il..il + 1, &mut x, &mut [(n, &mut cache)])?;
    }
    Ok(counts)
}

/// Rows per routed expert of each layer's `ffn_gate_exps`.
#[derive(Default)]
struct GateRows(Mutex<BTreeMap<usize, Vec<u64>>>);

impl MatmulObserver for GateRows {
    fn observe(&self, tensor: &str, rows: &[f32], n_cols: usize, mat: MatIndex) {
        let MatIndex::Expert { id, of } = mat else {
            return;
        };
        let Some(il) = tensor
            .strip_prefix("blk.")
            .and_then(|r| r.strip_suffix(".ffn_gate_exps.weight"))
            .and_then(|s| s.parse::<usize>().ok())
        else {
            return;
        };
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let c = m.entry(il).or_insert_with(|| vec![0; of as usize]);
        if let Some(v) = c.get_mut(id as usize) {
            *v += (rows.len() / n_cols.max(1)) as u64;
        }
    }
}

/// Runs `tokens` through `model` (one prompt pass) and counts, per layer,
/// the tokens each routed expert ran on. The model's observer is replaced
/// for the pass and cleared after it.
pub fn observed_expert_counts(model: &mut Model, tokens: &[u32]) -> Result<RouteCounts> {
    let rows = Arc::new(GateRows::default());
    model.set_observer(Some(rows.clone()));
    let mut st = model.new_state(tokens.len() + 1);
    let res = model.forward(tokens, &mut st, false);
    model.set_observer(None);
    res?;
    let m = rows.0.lock().unwrap_or_else(|e| e.into_inner());
    Ok(RouteCounts {
        layers: m.iter().map(|(&il, c)| (il, c.clone())).collect(),
    })
}
