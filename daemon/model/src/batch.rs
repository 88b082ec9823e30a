//! The bookkeeping of a multi-sequence forward pass shared by every
//! architecture: embedding lookups, the checks on a layer-range call,
//! which hidden rows go to the output head, and how the head's logits split
//! back into one vector per sequence.

use std::ops::Range;

use crate::error::{ModelError, Result};
use crate::store::WeightBytes;
use crate::weights::Weight;

/// Looks `tokens` up in the embedding table: `n × e` hidden rows.
pub(crate) fn embed_rows(
    table: &Weight,
    src: &dyn WeightBytes,
    tokens: &[u32],
    n_vocab: usize,
    e: usize,
) -> Result<Vec<f32>> {
    let mut x = vec![0f32; tokens.len() * e];
    for (t, row) in tokens.iter().zip(x.chunks_exact_mut(e)) {
        if *t as usize >= n_vocab {
            return Err(ModelError::BadToken { id: *t, n_vocab });
        }
        table.dequantize_row(src, *t as usize, row)?;
    }
    Ok(x)
}

/// Checks a layer-range call: `x` holds `n` rows of `e` (the sum of the
/// sequences' rows), and `layers` lies within the model's `n_layer`.
pub(crate) fn check_layer_call(
    x_len: usize,
    e: usize,
    n: usize,
    layers: &Range<usize>,
    n_layer: usize,
) -> Result<()> {
    if n == 0 || x_len != n * e {
        return Err(ModelError::Invalid(format!(
            "hidden state of {x_len} floats is not {n} rows of {e}"
        )));
    }
    if layers.end > n_layer {
        return Err(ModelError::Invalid(format!(
            "layers {layers:?} outside 0..{n_layer}"
        )));
    }
    Ok(())
}

/// The rows of `x` (`e` wide) whose logits are wanted: per sequence of
/// `(len, all_logits)`, every row or only its last one.
pub(crate) fn wanted_rows(
    x: &[f32],
    e: usize,
    seqs: impl Iterator<Item = (usize, bool)>,
) -> Vec<f32> {
    let mut rows = Vec::new();
    let mut row = 0;
    for (n, all) in seqs {
        let from = if all { row } else { row + n - 1 };
        rows.extend_from_slice(&x[from * e..(row + n) * e]);
        row += n;
    }
    rows
}

/// Splits the head's output (`nv` logits per wanted row) back per sequence.
pub(crate) fn split_logits(
    logits: &[f32],
    nv: usize,
    seqs: impl Iterator<Item = (usize, bool)>,
) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    let mut at = 0;
    for (n, all) in seqs {
        let m = if all { n } else { 1 };
        out.push(logits[at * nv..(at + m) * nv].to_vec());
        at += m;
    }
    out
}
