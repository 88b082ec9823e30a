//! Choosing a synthetic model's shape from a target file size, for every
//! architecture `synth` writes: walk a ladder of widths, take for each rung
//! the layer count whose file lands nearest the target, and keep the first
//! rung that needs no more than a realistic number of layers.

use super::SynthError;

/// How an architecture's plans grow with their layer count.
pub struct Ladder<'a, R, P> {
    /// Widths, smallest first.
    pub rungs: &'a [R],
    /// Fewest layers a file may have.
    pub min_layers: usize,
    /// Most layers the binary search tries.
    pub max_layers: usize,
    /// The deepest model a target size alone produces (the rung is widened
    /// beyond it).
    pub max_auto: usize,
    /// The plan of `layers` layers at `rung`.
    pub build: &'a dyn Fn(R, usize) -> P,
    /// Its file size.
    pub bytes: &'a dyn Fn(&P) -> u64,
    /// A layer count the architecture's readers take for something else,
    /// moved to one they do not (identity where none is).
    pub adjust: &'a dyn Fn(usize) -> usize,
    /// The architecture, for the error message.
    pub arch: &'a str,
}

impl<R: Copy, P> Ladder<'_, R, P> {
    /// The plan nearest `target` bytes; an error when even the smallest
    /// model is more than 10% larger.
    pub fn fit(&self, target: u64) -> Result<P, SynthError> {
        let first = *self
            .rungs
            .first()
            .ok_or_else(|| SynthError::Config("empty ladder".into()))?;
        let smallest = (self.bytes)(&(self.build)(first, self.min_layers));
        if target < smallest * 9 / 10 {
            let n = self.min_layers;
            return Err(SynthError::Config(format!(
                "--size {} MiB is too small: the smallest {} model ({n} layer{}) is {:.1} MiB",
                target >> 20,
                self.arch,
                if n == 1 { "" } else { "s" },
                smallest as f64 / (1u64 << 20) as f64
            )));
        }
        let mut best = None;
        for &rung in self.rungs {
            let l = (self.adjust)(self.nearest(rung, target));
            best = Some((self.build)(rung, l));
            if l <= self.max_auto {
                break;
            }
        }
        best.ok_or_else(|| SynthError::Config("empty ladder".into()))
    }

    /// The layer count at `rung` whose size is nearest `target` (sizes
    /// grow with the layer count: a doubling, then a binary search).
    fn nearest(&self, rung: R, target: u64) -> usize {
        let size = |l: usize| (self.bytes)(&(self.build)(rung, l));
        let (mut lo, mut hi) = (self.min_layers, self.min_layers);
        while size(hi) < target && hi < self.max_layers {
            lo = hi;
            hi = (hi * 2).min(self.max_layers);
        }
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if size(mid) < target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        if target.abs_diff(size(lo)) <= target.abs_diff(size(hi)) {
            lo
        } else {
            hi
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_layer_count_and_the_first_rung_that_stays_shallow() {
        // A plan is (width, layers); its size width × layers.
        let build = |w: u64, l: usize| (w, l);
        let bytes = |p: &(u64, usize)| p.0 * p.1 as u64;
        let keep = |l: usize| l;
        let ladder = Ladder {
            rungs: &[10u64, 100, 1000],
            min_layers: 2,
            max_layers: 1 << 12,
            max_auto: 8,
            build: &build,
            bytes: &bytes,
            adjust: &keep,
            arch: "test",
        };
        assert_eq!(ladder.fit(61).unwrap(), (10, 6));
        // 10 wide would need 50 layers: the next rung takes it in 5.
        assert_eq!(ladder.fit(500).unwrap(), (100, 5));
        // Beyond every rung's bound: the last rung, as deep as needed.
        assert_eq!(ladder.fit(100_000).unwrap(), (1000, 100));
        let e = ladder.fit(10).unwrap_err().to_string();
        assert!(e.contains("too small") && e.contains("(2 layers)"), "{e}");
    }
}
