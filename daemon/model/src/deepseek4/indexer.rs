//! The lightning indexer of CSA layers: which compressed blocks each query
//! attends to.
//!
//! Score of block `s` for the query at position `t`:
//! `Σ_h w[t,h] · ReLU(q[t,h] · K[s])`, with `q` from the attention's
//! normalised low-rank query (`indexer.attn_q_b`, RoPE at `t`), `K` the
//! indexer's own compressed keys (RMS-normed, RoPE at `4s`) and
//! `w = indexer.proj(x) · idx_dim^-½ · idx_heads^-½`. Only complete blocks
//! are candidates (`s < (t+1)/4`); a query takes the `top_k` best, or all
//! of them when there are no more; ties go to the lowest block index.
//!
//! [`IndexerRule::DeepSeek`] (the default) adds what DeepSeek's inference
//! code does before scoring, quantization-aware: the query heads and the
//! keys are rotated by the normalised Hadamard matrix and rounded to FP4
//! (e2m1, one power-of-two scale per 32 values). transformers and
//! llama.cpp skip that step ([`IndexerRule::Plain`]); the FP4 rounding
//! changes about half of the top-4 choices on the tiny reference model.

use dwarfstar_kernels::ops::{self, qat};

/// How indexer queries and keys are prepared before scoring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexerRule {
    /// DeepSeek's definition: Hadamard rotation + FP4 round trip.
    DeepSeek,
    /// Unrounded f32, as transformers and llama.cpp compute it.
    Plain,
}

/// FP4 block size of the quantization-aware step.
pub const FP4_BLOCK: usize = 32;

/// Applies the rule's preparation to one head vector (a query head or a
/// key) in place.
pub fn prepare(rule: IndexerRule, v: &mut [f32]) {
    if rule == IndexerRule::DeepSeek {
        qat::hadamard_normalized(v);
        qat::fp4_roundtrip(v, FP4_BLOCK);
    }
}

/// Indices of the `k` best `scores` (best first; ties: lower index; NaN
/// last).
pub fn top_k(scores: &[f32], k: usize) -> Vec<u32> {
    let cmp = |a: &u32, b: &u32| {
        let (x, y) = (scores[*a as usize], scores[*b as usize]);
        y.partial_cmp(&x)
            .unwrap_or_else(|| x.is_nan().cmp(&y.is_nan()))
            .then(a.cmp(b))
    };
    let mut idx: Vec<u32> = (0..scores.len() as u32).collect();
    if k < idx.len() && k > 0 {
        idx.select_nth_unstable_by(k - 1, cmp);
    }
    idx.truncate(k);
    idx.sort_by(cmp);
    idx
}

/// The blocks the query `q` (`heads × dim`, prepared) with head weights
/// `w` picks among `visible` keys, `key(s, buf)` loading key `s`:
/// ascending block ids.
pub fn select(
    q: &[f32],
    w: &[f32],
    dim: usize,
    visible: usize,
    k: usize,
    mut key: impl FnMut(usize, &mut [f32]),
) -> Vec<u32> {
    if visible <= k {
        return (0..visible as u32).collect();
    }
    let mut buf = vec![0f32; dim];
    let scores: Vec<f32> = (0..visible)
        .map(|s| {
            key(s, &mut buf);
            q.chunks_exact(dim)
                .zip(w)
                .map(|(qh, &wh)| ops::dot_f32(qh, &buf).max(0.0) * wh)
                .sum()
        })
        .collect();
    let mut sel = top_k(&scores, k);
    sel.sort_unstable();
    sel
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_go_to_the_lowest_index() {
        assert_eq!(top_k(&[0.0, 1.0, 0.0, 1.0, 0.5], 3), vec![1, 3, 4]);
        assert_eq!(top_k(&[0.0, 0.0, 0.0, 0.0], 2), vec![0, 1]);
        assert_eq!(top_k(&[f32::NAN, 1.0, -1.0], 2), vec![1, 2]);
    }

    #[test]
    fn selection_sums_relu_scores_over_heads() {
        // Two heads of dim 2; keys chosen so that head 1's negative dot is
        // cut by the ReLU.
        let q = [1.0, 0.0, 0.0, 1.0];
        let w = [1.0, 2.0];
        let keys = [[1.0, -5.0], [0.0, 1.0], [2.0, 0.0], [-1.0, 0.5]];
        // Scores: 1, 2, 2, 1 → the best two are blocks 1 and 2.
        let sel = select(&q, &w, 2, 4, 2, |s, b| b.copy_from_slice(&keys[s]));
        assert_eq!(sel, vec![1, 2]);
        // With no more visible blocks than k, all are taken without scoring.
        let all = select(&q, &w, 2, 2, 4, |_, _| panic!("not scored"));
        assert_eq!(all, vec![0, 1]);
    }
}
