//! Cutting a V4 state back into its last pass, exactly.
//!
//! The window ring and the compressors hold only the last positions, so a
//! cut below the held state cannot be read off what is left. Before a short
//! pass (at most [`MARK_MAX`] positions per sequence, and no more than the
//! window's slots) [`Ds4Cache::mark_pass`] keeps what the pass will
//! overwrite: the ring rows it replaces, each compressor's mark (see
//! [`super::CompState::mark`]), and how many compressed entries and indexer
//! keys each layer held. A truncation to any length from the pass's start
//! on then puts those rows back, rewinds the compressors to the kept
//! positions and drops the entries and keys the cut positions made: the
//! state a pass of only the kept tokens would have left. Speculative
//! decoding verifies its drafts in one such pass and cuts back to the
//! accepted ones.
//!
//! Anything else (a longer pass, a second cut, a layer that ran without a
//! mark) falls back to dropping the state and recomputing the kept tokens.

use std::ops::Range;

use super::{Ds4Cache, Rows};

/// The longest pass (positions of one sequence) that is marked. Drafts and
/// their verification run far fewer; prompt chunks, which are never cut
/// back into, are not marked.
pub const MARK_MAX: usize = 64;

/// The pass a cache's mark covers: it starts at `pos0` and runs `n`
/// positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PassMark {
    pub pos0: usize,
    pub n: usize,
}

/// One layer's part of a mark.
#[derive(Clone, Debug)]
pub(crate) struct LayerMark {
    /// The ring rows positions `pos0..pos0 + n` overwrite, in that order.
    raw_old: Vec<f32>,
    /// Compressed entries and indexer keys held at the mark.
    entries: usize,
    keys: usize,
}

impl Rows {
    /// Keeps the first `n` rows of `dim` values.
    pub(crate) fn truncate_rows(&mut self, n: usize, dim: usize) {
        match self {
            Rows::F32(v) => v.truncate(n * dim),
            Rows::F16(v) => v.truncate(n * dim),
            Rows::Q8(v) => v.truncate(n * dim / super::Q8_BLOCK * super::Q8_BYTES),
        }
    }
}

impl Ds4Cache {
    /// Marks the state of `layers` before a pass of `n` positions from the
    /// held state (see the module doc); a pass too long to mark clears any
    /// earlier mark.
    pub(crate) fn mark_pass(&mut self, layers: Range<usize>, n: usize) {
        let pos0 = self.held;
        let (hd, idim) = (self.head_dim, self.idx_dim);
        let slots = self.layers.first().map_or(0, |l| l.raw_slots);
        if n == 0 || n > MARK_MAX || (slots > 0 && n > slots) {
            self.unmark();
            return;
        }
        self.mark = Some(PassMark { pos0, n });
        for l in &mut self.layers[layers] {
            let mut raw_old = Vec::with_capacity(n * hd);
            if l.raw_slots > 0 && !l.raw.is_empty() {
                for p in pos0..pos0 + n {
                    let s = p % l.raw_slots;
                    raw_old.extend_from_slice(&l.raw[s * hd..(s + 1) * hd]);
                }
            }
            for c in [&mut l.comp, &mut l.idx].into_iter().flatten() {
                c.mark(n);
            }
            l.mark = Some(LayerMark {
                raw_old,
                entries: l.entries.len() / hd,
                keys: l.keys.len() / idim,
            });
        }
    }

    /// Forgets the mark of every layer.
    pub(crate) fn unmark(&mut self) {
        self.mark = None;
        for l in &mut self.layers {
            l.mark = None;
            for c in [&mut l.comp, &mut l.idx].into_iter().flatten() {
                c.unmark();
            }
        }
    }

    /// Whether a cut of the held state to `len` can rewind into the last
    /// pass (see the module doc).
    pub(crate) fn can_rewind(&self, len: usize) -> bool {
        let Some(m) = self.mark else {
            return false;
        };
        self.held == m.pos0 + m.n
            && len >= m.pos0
            && len <= self.held
            && self
                .layers
                .iter()
                .all(|l| l.raw.is_empty() || l.mark.is_some())
    }

    /// Rewinds the held state to `len` positions (after
    /// [`Ds4Cache::can_rewind`]); spends the mark. False if a compressor
    /// could not go back (its state is then unusable: drop it).
    pub(crate) fn rewind(&mut self, len: usize) -> bool {
        let Some(m) = self.mark.take() else {
            return false;
        };
        let (hd, idim) = (self.head_dim, self.idx_dim);
        let mut ok = true;
        let keep = len - m.pos0;
        for l in &mut self.layers {
            let Some(lm) = l.mark.take() else {
                continue;
            };
            if !lm.raw_old.is_empty() {
                for (i, old) in lm.raw_old.chunks_exact(hd).enumerate().skip(keep) {
                    let s = (m.pos0 + i) % l.raw_slots;
                    l.raw[s * hd..(s + 1) * hd].copy_from_slice(old);
                }
            }
            if let Some(c) = &mut l.comp {
                match c.rewind(keep) {
                    Some(made) => l.entries.truncate_rows(lm.entries + made, hd),
                    None => ok = false,
                }
            }
            if let Some(c) = &mut l.idx {
                match c.rewind(keep) {
                    Some(made) => l.keys.truncate_rows(lm.keys + made, idim),
                    None => ok = false,
                }
            }
        }
        self.held = len;
        ok
    }
}
