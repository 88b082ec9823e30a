//! The bookkeeping of a multi-sequence forward pass shared by every
//! architecture: which hidden rows go to the output head, and how the
//! head's logits split back into one vector per sequence.

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
