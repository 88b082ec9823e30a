//! How far a quantized model is from its source: perplexity of each over a
//! text, the KL divergence of B's next-token distribution from A's, and
//! how often their top choices agree.
//!
//! As llama-perplexity: the text is cut into chunks of `ctx` tokens, each
//! run from an empty cache with its first token replaced by BOS when the
//! model adds one, and only the second half of each chunk is scored (each
//! position predicts the next token with at least `ctx/2` tokens of
//! context). KL is `Σ p_A · (log p_A − log p_B)` per position (A is the
//! reference, as llama-perplexity's `--kl-divergence-base`).

use dwarfstar_model::Model;
use rayon::prelude::*;

use crate::error::{QuantizeError, Result};

/// `log_softmax(row)[tok]`, in f64.
pub fn log_prob(row: &[f32], tok: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    row.get(tok)
        .map_or(f64::NEG_INFINITY, |&v| v as f64 - max - sum.ln())
}

/// The scores of one position.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Position {
    pub nll_a: f64,
    pub nll_b: f64,
    pub kl: f64,
    pub same_top: bool,
}

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = row
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    row.iter().map(|&v| v as f64 - lse).collect()
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Scores one position from both models' logits and the true next token.
pub fn score(a: &[f32], b: &[f32], next: usize) -> Position {
    let (la, lb) = (log_softmax(a), log_softmax(b));
    let kl = la
        .iter()
        .zip(&lb)
        .map(|(&x, &y)| {
            if x.is_finite() {
                x.exp() * (x - y)
            } else {
                0.0
            }
        })
        .sum::<f64>()
        .max(0.0);
    Position {
        nll_a: -la.get(next).copied().unwrap_or(f64::NEG_INFINITY),
        nll_b: -lb.get(next).copied().unwrap_or(f64::NEG_INFINITY),
        kl,
        same_top: argmax(a) == argmax(b),
    }
}

/// The summary over every scored position.
#[derive(Clone, Debug, PartialEq)]
pub struct QualityReport {
    pub n_positions: usize,
    pub chunks: usize,
    pub ctx: usize,
    pub ppl_a: f64,
    /// Standard error of `ppl_a` (as llama-perplexity's `±`).
    pub ppl_a_err: f64,
    pub ppl_b: f64,
    pub ppl_b_err: f64,
    pub kl_mean: f64,
    pub kl_median: f64,
    pub kl_p99: f64,
    pub kl_max: f64,
    /// Share of positions where both models' most likely token is the same.
    pub top1_agreement: f64,
}

fn ppl_and_err(nll: &[f64]) -> (f64, f64) {
    let n = nll.len().max(1) as f64;
    let mean = nll.iter().sum::<f64>() / n;
    let var = nll.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0).max(1.0);
    let ppl = mean.exp();
    (ppl, ppl * (var / n).sqrt())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Summarises scored positions.
pub fn summarize(pos: &[Position], chunks: usize, ctx: usize) -> QualityReport {
    let nll_a: Vec<f64> = pos.iter().map(|p| p.nll_a).collect();
    let nll_b: Vec<f64> = pos.iter().map(|p| p.nll_b).collect();
    let (ppl_a, ppl_a_err) = ppl_and_err(&nll_a);
    let (ppl_b, ppl_b_err) = ppl_and_err(&nll_b);
    let mut kl: Vec<f64> = pos.iter().map(|p| p.kl).collect();
    kl.sort_by(|a, b| a.total_cmp(b));
    let n = pos.len().max(1) as f64;
    QualityReport {
        n_positions: pos.len(),
        chunks,
        ctx,
        ppl_a,
        ppl_a_err,
        ppl_b,
        ppl_b_err,
        kl_mean: kl.iter().sum::<f64>() / n,
        kl_median: percentile(&kl, 0.5),
        kl_p99: percentile(&kl, 0.99),
        kl_max: kl.last().copied().unwrap_or(0.0),
        top1_agreement: pos.iter().filter(|p| p.same_top).count() as f64 / n,
    }
}

/// Runs both models over `tokens` in chunks of `ctx` and compares them.
/// `on_chunk(i, n_chunks)` is called after each chunk.
pub fn compare(
    a: &Model,
    b: &Model,
    tokens: &[u32],
    ctx: usize,
    bos: Option<u32>,
    max_chunks: Option<usize>,
    mut on_chunk: impl FnMut(usize, usize),
) -> Result<QualityReport> {
    if a.n_vocab() != b.n_vocab() {
        return Err(QuantizeError::Invalid(format!(
            "the models' vocabularies differ ({} and {} tokens)",
            a.n_vocab(),
            b.n_vocab()
        )));
    }
    if ctx < 4 {
        return Err(QuantizeError::Invalid("--ctx must be at least 4".into()));
    }
    let mut n_chunks = tokens.len() / ctx;
    if let Some(m) = max_chunks {
        n_chunks = n_chunks.min(m);
    }
    if n_chunks == 0 {
        return Err(QuantizeError::Invalid(format!(
            "the text has {} tokens, less than one chunk of {ctx}",
            tokens.len()
        )));
    }
    let nv = a.n_vocab();
    let first = ctx / 2;
    let mut all = Vec::with_capacity(n_chunks * (ctx - 1 - first));
    for i in 0..n_chunks {
        let orig = &tokens[i * ctx..(i + 1) * ctx];
        let mut ids = orig.to_vec();
        if let Some(bos) = bos {
            ids[0] = bos;
        }
        let run = |m: &Model| -> Result<Vec<f32>> {
            let mut st = m.new_state(ctx);
            Ok(m.forward(&ids, &mut st, true)?)
        };
        let (la, lb) = (run(a)?, run(b)?);
        let scored: Vec<Position> = (first..ctx - 1)
            .into_par_iter()
            .map(|j| {
                let r = j * nv..(j + 1) * nv;
                score(&la[r.clone()], &lb[r], orig[j + 1] as usize)
            })
            .collect();
        all.extend(scored);
        on_chunk(i, n_chunks);
    }
    Ok(summarize(&all, n_chunks, ctx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_models_have_no_divergence() {
        let a = [1.0f32, 2.0, 3.0, 0.5];
        let p = score(&a, &a, 2);
        assert!(p.kl.abs() < 1e-12);
        assert!(p.same_top);
        assert!((p.nll_a - p.nll_b).abs() < 1e-12);
        assert!((log_prob(&a, 2) + p.nll_a).abs() < 1e-12);
    }

    #[test]
    fn kl_matches_a_hand_computation() {
        let a = [0.0f32, 0.0];
        let b = [(3.0f32).ln(), 0.0];
        // p = (1/2, 1/2), q = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2.
        let want = 0.5 * (2.0f64 / 3.0).ln() + 0.5 * 2.0f64.ln();
        let p = score(&a, &b, 0);
        assert!((p.kl - want).abs() < 1e-6, "{} vs {want}", p.kl);
        assert!(p.same_top); // a tie picks the first, as b's top
        let r = summarize(&[p, p], 1, 4);
        assert!((r.ppl_a - 2.0).abs() < 1e-9);
        assert!((r.kl_mean - want).abs() < 1e-6);
        assert_eq!(r.top1_agreement, 1.0);
    }
}
