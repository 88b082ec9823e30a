//! Turning logits into the next token: greedy, or temperature sampling
//! after repetition penalty, top-k, top-p and min-p, from a seeded RNG.
//!
//! The chain runs in llama.cpp's default order: penalties, top-k, top-p,
//! min-p, temperature, then a draw. [`Sampler::verify`] is speculative
//! decoding's acceptance test over the same chain.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sampling settings. `temperature <= 0` means greedy.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0.0 disables.
    pub min_p: f32,
    /// 1.0 disables.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    /// Plain argmax, nothing else.
    pub fn greedy() -> Self {
        SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            ..Default::default()
        }
    }
}

/// A sampler with its RNG state.
pub struct Sampler {
    cfg: SamplerConfig,
    rng: StdRng,
    cand: Vec<(u32, f32)>,
}

/// Index of the largest logit (the first on ties, as llama.cpp).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Sampler {
        let rng = StdRng::seed_from_u64(cfg.seed);
        Sampler {
            cfg,
            rng,
            cand: Vec::new(),
        }
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Picks the next token from `logits`, given the tokens so far.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        if let Some(t) = self.prepare(logits, history) {
            return t;
        }
        let r: f32 = self.rng.gen();
        self.draw(r)
    }

    /// Speculative decoding's acceptance test for `draft`, proposed by a
    /// drafter that picks its most likely token (a one-point distribution
    /// q): accepted with probability min(1, p/q) = p(draft) under this
    /// sampler's distribution p; on rejection the token is drawn from the
    /// residual max(0, p − q), renormalised, i.e. p without `draft`. The
    /// tokens produced are then distributed exactly as [`Sampler::sample`]'s
    /// (Leviathan et al., 2023); greedy accepts exactly the argmax.
    pub fn verify(&mut self, logits: &[f32], history: &[u32], draft: u32) -> Verdict {
        if let Some(t) = self.prepare(logits, history) {
            return if t == draft {
                Verdict::Accept
            } else {
                Verdict::Reject(t)
            };
        }
        let p = self.cand.iter().find(|c| c.0 == draft).map_or(0.0, |c| c.1);
        let r: f32 = self.rng.gen();
        if r < p {
            return Verdict::Accept;
        }
        self.cand.retain(|c| c.0 != draft);
        let rest: f32 = self.cand.iter().map(|c| c.1).sum();
        if self.cand.is_empty() || rest <= 0.0 {
            // Rounding left nothing else: the draft is all there is.
            return Verdict::Accept;
        }
        let r: f32 = self.rng.gen::<f32>() * rest;
        Verdict::Reject(self.draw(r))
    }

    /// Runs the chain up to the draw: `Some(token)` when it is decided
    /// (greedy), else leaves the candidates in `self.cand` with their
    /// probabilities, best first.
    fn prepare(&mut self, logits: &[f32], history: &[u32]) -> Option<u32> {
        let c = &self.cfg;
        let penalize = c.repeat_penalty != 1.0 && c.repeat_last_n > 0;
        if c.temperature <= 0.0 && !penalize {
            return Some(argmax(logits));
        }
        self.cand.clear();
        self.cand
            .extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        if penalize {
            let start = history.len().saturating_sub(c.repeat_last_n);
            let mut seen = std::collections::HashSet::new();
            for &t in &history[start..] {
                if seen.insert(t) {
                    if let Some(e) = self.cand.get_mut(t as usize) {
                        e.1 = if e.1 > 0.0 {
                            e.1 / c.repeat_penalty
                        } else {
                            e.1 * c.repeat_penalty
                        };
                    }
                }
            }
        }
        if c.temperature <= 0.0 {
            let mut best = 0;
            for i in 0..self.cand.len() {
                if self.cand[i].1 > self.cand[best].1 {
                    best = i;
                }
            }
            return Some(self.cand[best].0);
        }
        // Sort descending once; every filter below keeps a prefix.
        let k = if c.top_k > 0 {
            c.top_k.min(self.cand.len())
        } else {
            self.cand.len()
        };
        if k < self.cand.len() {
            self.cand
                .select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            self.cand.truncate(k);
        }
        self.cand.sort_by(|a, b| b.1.total_cmp(&a.1));
        let probs = |cand: &[(u32, f32)], t: f32| -> Vec<f32> {
            let max = cand[0].1;
            let e: Vec<f32> = cand.iter().map(|&(_, l)| ((l - max) / t).exp()).collect();
            let s: f32 = e.iter().sum();
            e.into_iter().map(|v| v / s).collect()
        };
        if c.top_p < 1.0 {
            let p = probs(&self.cand, 1.0);
            let mut acc = 0.0;
            let mut keep = p.len();
            for (i, v) in p.iter().enumerate() {
                acc += v;
                if acc >= c.top_p {
                    keep = i + 1;
                    break;
                }
            }
            self.cand.truncate(keep.max(1));
        }
        if c.min_p > 0.0 {
            let p = probs(&self.cand, 1.0);
            let floor = p[0] * c.min_p;
            let keep = p.iter().take_while(|&&v| v >= floor).count();
            self.cand.truncate(keep.max(1));
        }
        let p = probs(&self.cand, c.temperature);
        for (c, p) in self.cand.iter_mut().zip(p) {
            c.1 = p;
        }
        None
    }

    /// The candidate where the running sum of probabilities first passes
    /// `r` (the last one if rounding never gets there).
    fn draw(&self, r: f32) -> u32 {
        let mut acc = 0.0;
        for &(id, p) in &self.cand {
            acc += p;
            if r < acc {
                return id;
            }
        }
        self.cand[self.cand.len() - 1].0
    }
}

/// [`Sampler::verify`]'s answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The draft token is the next token.
    Accept,
    /// It is not; this one is.
    Reject(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplerConfig::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, 2.0], &[]), 1);
    }

    #[test]
    fn repetition_penalty_moves_argmax() {
        let mut s = Sampler::new(SamplerConfig {
            repeat_penalty: 2.0,
            ..SamplerConfig::greedy()
        });
        assert_eq!(s.sample(&[0.1, 3.0, 2.0], &[1]), 2);
    }

    #[test]
    fn same_seed_same_draws_and_top_k_one_is_greedy() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 17) as f32 * 0.3).collect();
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 42,
            ..Default::default()
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(cfg.clone());
            (0..20).map(|_| s.sample(&logits, &[])).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(cfg.clone());
            (0..20).map(|_| s.sample(&logits, &[])).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().collect::<std::collections::HashSet<_>>().len() > 1);
        let mut s = Sampler::new(SamplerConfig { top_k: 1, ..cfg });
        assert_eq!(s.sample(&logits, &[]), argmax(&logits));
    }

    #[test]
    fn min_p_and_top_p_cut_the_tail() {
        let logits = [10.0, 9.9, -10.0, -10.0];
        for cfg in [
            SamplerConfig {
                temperature: 1.0,
                top_k: 0,
                top_p: 0.9,
                min_p: 0.0,
                ..Default::default()
            },
            SamplerConfig {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.5,
                ..Default::default()
            },
        ] {
            let mut s = Sampler::new(cfg);
            for _ in 0..50 {
                assert!(s.sample(&logits, &[]) < 2);
            }
        }
    }
}
