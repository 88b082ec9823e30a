//! The KV compressor's running state: gated pooling of `ratio` consecutive
//! tokens into one entry, fed one token at a time so that prefill and
//! decode go through the same steps.
//!
//! Each token contributes a value row and a gate-score row (the score
//! already holds the position bias `ape[pos % ratio]`). When a block's last
//! token arrives, every channel is pooled separately: a softmax of the
//! scores over the block's slots weights the values.
//!
//! With ratio 4 the blocks overlap (DeepSeek's CSA): rows are `2·dim`
//! wide, and entry `b` pools the *first* halves of block `b-1`'s four rows
//! with the *second* halves of block `b`'s, eight slots in all (block 0
//! has only its own four). With ratio 128 (HCA) rows are `dim` wide and
//! each entry pools its own block.
//!
//! The state is the filled part of the current block plus, when
//! overlapping, the previous block's first halves: at most `2·ratio` rows
//! whatever the sequence length.
//!
//! A short pass can be taken back ([`CompState::mark`],
//! [`CompState::rewind`]): the mark logs the rows the pass pushes and, when
//! the pass may complete a block, keeps the state it started from; going
//! back to any number of the pass's rows restores that state and pushes
//! the kept rows again (pooling is a pure function of the rows, so the
//! result is the state a pass of only those rows would have left).

use dwarfstar_kernels::ops;

/// One compressor's state for one sequence.
#[derive(Clone, Debug)]
pub struct CompState {
    ratio: usize,
    dim: usize,
    overlap: bool,
    /// The current block's rows so far: values and scores, `coff·dim` each.
    kv: Vec<f32>,
    score: Vec<f32>,
    /// Overlap only: the previous block's first halves (`ratio × dim`).
    prev_kv: Vec<f32>,
    prev_score: Vec<f32>,
    /// Set by [`CompState::mark`] until the next mark or rewind.
    mark: Option<Box<Mark>>,
}

/// What going back to a mark needs.
#[derive(Clone, Debug)]
struct Mark {
    /// Rows of the current block at the mark.
    filled: usize,
    /// The whole state at the mark, kept when the pass may complete a
    /// block (which clears the current rows and replaces the halves).
    base: Option<[Vec<f32>; 4]>,
    /// Rows pushed since the mark: values and scores.
    kv: Vec<f32>,
    score: Vec<f32>,
}

impl CompState {
    /// An empty state for blocks of `ratio` tokens pooled into `dim` values
    /// (overlapping when `ratio == 4`).
    pub fn new(ratio: usize, dim: usize) -> CompState {
        CompState {
            ratio,
            dim,
            overlap: ratio == 4,
            kv: Vec::new(),
            score: Vec::new(),
            prev_kv: Vec::new(),
            prev_score: Vec::new(),
            mark: None,
        }
    }

    /// Marks the state before a pass of up to `n` rows, so that
    /// [`CompState::rewind`] can go back into it.
    pub fn mark(&mut self, n: usize) {
        let filled = self.filled();
        let base = (filled + n >= self.ratio).then(|| {
            [
                self.kv.clone(),
                self.score.clone(),
                self.prev_kv.clone(),
                self.prev_score.clone(),
            ]
        });
        let w = self.row();
        self.mark = Some(Box::new(Mark {
            filled,
            base,
            kv: Vec::with_capacity(n * w),
            score: Vec::with_capacity(n * w),
        }));
    }

    /// Forgets the mark.
    pub fn unmark(&mut self) {
        self.mark = None;
    }

    /// Goes back to the state after the first `keep` rows pushed since the
    /// mark, and drops the mark. Returns how many blocks those rows
    /// completed (entries the caller keeps of those the pass made), or
    /// `None` (state unchanged) without a mark holding `keep` rows.
    pub fn rewind(&mut self, keep: usize) -> Option<usize> {
        let w = self.row();
        let m = self.mark.take()?;
        if keep * w > m.kv.len() {
            self.mark = Some(m);
            return None;
        }
        match m.base {
            None => {
                // No block completed: the pass only appended rows.
                self.kv.truncate((m.filled + keep) * w);
                self.score.truncate((m.filled + keep) * w);
                Some(0)
            }
            Some([kv, score, prev_kv, prev_score]) => {
                (self.kv, self.score, self.prev_kv, self.prev_score) =
                    (kv, score, prev_kv, prev_score);
                let made =
                    m.kv.chunks_exact(w)
                        .zip(m.score.chunks_exact(w))
                        .take(keep)
                        .filter_map(|(k, s)| self.push(k, s))
                        .count();
                Some(made)
            }
        }
    }

    /// The running state (current block's values and scores, previous
    /// block's halves), for saving a cache.
    pub(crate) fn parts(&self) -> [&Vec<f32>; 4] {
        [&self.kv, &self.score, &self.prev_kv, &self.prev_score]
    }

    /// The running state to restore a saved cache into.
    pub(crate) fn parts_mut(&mut self) -> [&mut Vec<f32>; 4] {
        [
            &mut self.kv,
            &mut self.score,
            &mut self.prev_kv,
            &mut self.prev_score,
        ]
    }

    /// Width of the rows [`CompState::push`] takes.
    pub fn row(&self) -> usize {
        if self.overlap {
            2 * self.dim
        } else {
            self.dim
        }
    }

    /// Tokens of the current block seen so far.
    pub fn filled(&self) -> usize {
        self.kv.len() / self.row()
    }

    /// Adds one token's value and score rows; when they complete a block,
    /// returns the block's pooled entry (`dim` values, before norm/RoPE).
    pub fn push(&mut self, kv: &[f32], score: &[f32]) -> Option<Vec<f32>> {
        if let Some(m) = &mut self.mark {
            m.kv.extend_from_slice(kv);
            m.score.extend_from_slice(score);
        }
        self.kv.extend_from_slice(kv);
        self.score.extend_from_slice(score);
        if self.filled() < self.ratio {
            return None;
        }
        let out = self.pool();
        if self.overlap {
            let d = self.dim;
            self.prev_kv.clear();
            self.prev_score.clear();
            for (k, s) in self
                .kv
                .chunks_exact(2 * d)
                .zip(self.score.chunks_exact(2 * d))
            {
                self.prev_kv.extend_from_slice(&k[..d]);
                self.prev_score.extend_from_slice(&s[..d]);
            }
        }
        self.kv.clear();
        self.score.clear();
        Some(out)
    }

    /// Pools the full current block (and the overlap slots).
    fn pool(&self) -> Vec<f32> {
        let (d, w) = (self.dim, self.row());
        let off = if self.overlap { d } else { 0 };
        let n_prev = self.prev_kv.len() / d;
        let slots = n_prev + self.ratio;
        let mut out = vec![0f32; d];
        let mut p = vec![0f32; slots];
        for (c, o) in out.iter_mut().enumerate() {
            for j in 0..n_prev {
                p[j] = self.prev_score[j * d + c];
            }
            for j in 0..self.ratio {
                p[n_prev + j] = self.score[j * w + off + c];
            }
            ops::softmax(&mut p);
            let mut acc = 0f32;
            for j in 0..n_prev {
                acc += p[j] * self.prev_kv[j * d + c];
            }
            for j in 0..self.ratio {
                acc += p[n_prev + j] * self.kv[j * w + off + c];
            }
            *o = acc;
        }
        out
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * (self.kv.capacity()
            + self.score.capacity()
            + self.prev_kv.capacity()
            + self.prev_score.capacity())
    }

    /// Forgets everything (a fresh sequence).
    pub fn clear(&mut self) {
        self.mark = None;
        self.kv.clear();
        self.score.clear();
        self.prev_kv.clear();
        self.prev_score.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_overlapping_block_is_a_softmax_average() {
        let mut c = CompState::new(128, 2);
        let mut out = None;
        for i in 0..128 {
            assert!(out.is_none());
            // Channel 0: equal scores → the mean; channel 1: one dominant slot.
            let s1 = if i == 5 { 100.0 } else { 0.0 };
            out = c.push(&[i as f32, i as f32], &[0.0, s1]);
        }
        let e = out.expect("block complete");
        assert!((e[0] - 63.5).abs() < 1e-3, "{e:?}");
        assert!((e[1] - 5.0).abs() < 1e-3, "{e:?}");
        assert_eq!(c.filled(), 0);
    }

    /// Rows `i` of a test stream: distinct values and scores.
    fn row(i: usize, w: usize) -> (Vec<f32>, Vec<f32>) {
        let kv = (0..w).map(|c| (i * 7 + c) as f32 * 0.37 % 5.0).collect();
        let sc = (0..w)
            .map(|c| (i * 3 + c * 5) as f32 * 0.11 % 2.0)
            .collect();
        (kv, sc)
    }

    #[test]
    fn rewind_equals_a_state_fed_only_the_kept_rows() {
        for ratio in [4, 128] {
            let w = if ratio == 4 { 4 } else { 2 };
            // Passes that do and do not cross block boundaries.
            for (start, n) in [(2, 1), (2, 5), (3, 9), (126, 4), (127, 1), (0, 3)] {
                for keep in 0..=n {
                    let mut a = CompState::new(ratio, 2);
                    let mut b = CompState::new(ratio, 2);
                    for i in 0..start {
                        let (k, s) = row(i, w);
                        a.push(&k, &s);
                        b.push(&k, &s);
                    }
                    a.mark(n);
                    let mut made = 0;
                    for i in start..start + n {
                        let (k, s) = row(i, w);
                        if a.push(&k, &s).is_some() && i < start + keep {
                            made += 1;
                        }
                    }
                    for i in start..start + keep {
                        let (k, s) = row(i, w);
                        b.push(&k, &s);
                    }
                    assert_eq!(a.rewind(keep), Some(made), "{ratio} {start} {n} {keep}");
                    assert_eq!(a.parts(), b.parts(), "{ratio} {start} {n} {keep}");
                    assert_eq!(a.rewind(0), None, "the mark is spent");
                }
            }
        }
    }

    #[test]
    fn overlap_mixes_previous_first_halves() {
        let mut c = CompState::new(4, 1);
        // Block 0: only second halves (value 1) count.
        for _ in 0..3 {
            assert!(c.push(&[10.0, 1.0], &[0.0, 0.0]).is_none());
        }
        let e0 = c.push(&[10.0, 1.0], &[0.0, 0.0]).unwrap();
        assert!((e0[0] - 1.0).abs() < 1e-6);
        // Block 1: eight equal slots, four of 10 (block 0's first halves)
        // and four of 3.
        for _ in 0..3 {
            c.push(&[0.0, 3.0], &[0.0, 0.0]);
        }
        let e1 = c.push(&[0.0, 3.0], &[0.0, 0.0]).unwrap();
        assert!((e1[0] - 6.5).abs() < 1e-5, "{e1:?}");
    }
}
