//! Speculative decoding in the engine loop: what the scheduler keeps per
//! sequence, and how many tokens it asks a [`Drafter`] for.
//!
//! Each step, every decoding sequence may get up to `k` draft tokens
//! appended to its input; the one batched forward pass then returns the
//! logits of all `k + 1` positions, and [`dwarfstar_model::Sampler::verify`]
//! accepts drafts left to right until one is rejected (its replacement is
//! sampled from the residual distribution) or all pass (one more token is
//! sampled from the last position). The target's state is cut back to the
//! accepted positions. Greedy output is the non-speculative output; with a
//! temperature the tokens keep the target's distribution exactly.
//!
//! A sequence's `k` follows its acceptance: one more after a step whose
//! drafts all passed, the accepted count plus one otherwise, and a pause of
//! a few steps when even one draft keeps failing, so a poor drafter costs
//! little.
//!
//! Acceptance alone does not say whether drafting pays: a draft model that
//! costs nearly what the target does (on a CPU, a small model's output head
//! dominates both) makes decoding slower however often it is right. So
//! [`Payoff`] measures the seconds per generated token of steps with drafts
//! and of steps without, and drafts only while that is cheaper, trying the
//! other way a few steps in every round so both figures stay current.

use std::time::Duration;

use dwarfstar_model::draft::Drafter;

/// Steps a sequence waits before drafting again after a single draft was
/// rejected.
const PAUSE: usize = 4;

/// The engine's drafter and its bound.
pub struct Speculation {
    pub drafter: Box<dyn Drafter>,
    /// Most tokens drafted per sequence and step (at least 1).
    pub max_tokens: usize,
    /// Drafts only while they pay (None: every step drafts).
    pub payoff: Option<Payoff>,
}

impl Speculation {
    /// Drafting with `drafter`, up to `max_tokens` a step, while it pays.
    pub fn new(drafter: Box<dyn Drafter>, max_tokens: usize) -> Speculation {
        Speculation {
            drafter,
            max_tokens: max_tokens.max(1),
            payoff: Some(Payoff::default()),
        }
    }
}

/// One sequence's draft length, adapted to its acceptance. See the module
/// doc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DraftLen {
    k: usize,
    max: usize,
    pause: usize,
}

impl DraftLen {
    pub fn new(max: usize) -> DraftLen {
        let max = max.max(1);
        DraftLen {
            k: max,
            max,
            pause: 0,
        }
    }

    /// Tokens to draft this step (0 while paused).
    pub fn want(&mut self) -> usize {
        if self.pause > 0 {
            self.pause -= 1;
            0
        } else {
            self.k
        }
    }

    /// Learns from a step that drafted `drafted` tokens and accepted
    /// `accepted` of them.
    pub fn update(&mut self, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        if accepted >= drafted {
            self.k = (self.k + 1).min(self.max);
        } else if accepted == 0 && self.k == 1 {
            self.pause = PAUSE;
        } else {
            self.k = (accepted + 1).clamp(1, self.max);
        }
    }
}

/// Steps per round of [`Payoff`] at first, and at most: the arm that
/// looks worse runs the first [`PROBE`] steps of a round, and rounds
/// double while the same arm stays ahead.
const ROUND: u64 = 32;
const MAX_ROUND: u64 = 1024;
const PROBE: u64 = 3;
/// Weight of a new step in the moving averages.
const ALPHA: f64 = 0.2;

/// Whether drafting pays, measured. See the module doc.
#[derive(Clone, Debug)]
pub struct Payoff {
    /// Seconds per generated token, moving average, of steps without
    /// drafts (`[0]`) and with (`[1]`); None until measured.
    cost: [Option<f64>; 2],
    /// Step within the round, and the round's length.
    at: u64,
    round: u64,
    /// The arm ahead at the last round's start.
    ahead: Option<bool>,
    /// Whether the last step drafted.
    last: Option<bool>,
}

impl Default for Payoff {
    fn default() -> Self {
        Payoff {
            cost: [None, None],
            at: 0,
            round: ROUND,
            ahead: None,
            last: None,
        }
    }
}

impl Payoff {
    /// Whether this step drafts.
    pub fn draft_now(&mut self) -> bool {
        let [Some(plain), Some(spec)] = self.cost else {
            // Measure plain decoding first, then drafting.
            return self.cost[0].is_some();
        };
        let better = spec < plain;
        if self.at == 0 {
            self.round = match self.ahead {
                Some(a) if a == better => (self.round * 2).min(MAX_ROUND),
                _ => ROUND,
            };
            self.ahead = Some(better);
        }
        let probe = self.at < PROBE;
        self.at = (self.at + 1) % self.round;
        if probe {
            !better
        } else {
            better
        }
    }

    /// Learns from a decode step that took `took` (drafting included) and
    /// generated `tokens`, with drafts or without. A step that switched
    /// ways is not counted: the first drafting step after plain ones also
    /// runs the draft model over the tokens it missed.
    pub fn learn(&mut self, drafted: bool, took: Duration, tokens: u64) {
        let switched = self.last.is_some_and(|l| l != drafted);
        self.last = Some(drafted);
        let slot = &mut self.cost[drafted as usize];
        if tokens == 0 || switched {
            return;
        }
        let c = took.as_secs_f64() / tokens as f64;
        *slot = Some(match *slot {
            None => c,
            Some(old) => old + ALPHA * (c - old),
        });
        tracing::debug!(
            "seconds per token: plain {:?}, drafting {:?}",
            self.cost[0],
            self.cost[1]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steps that draft, out of `n`, when a drafted token costs `spec`
    /// seconds and a plain one `plain` (a switch to drafting costs `switch`
    /// more, as a draft model's catch-up does).
    fn drafting_share(plain: f64, spec: f64, switch: f64, n: u64) -> u64 {
        let mut p = Payoff::default();
        let (mut drafted, mut last) = (0, false);
        for _ in 0..n {
            let d = p.draft_now();
            drafted += d as u64;
            let c = if d { spec } else { plain } + if d && !last { switch } else { 0.0 };
            p.learn(d, Duration::from_secs_f64(c * 2.0), 2);
            last = d;
        }
        drafted
    }

    #[test]
    fn drafting_runs_while_it_pays_and_is_probed_ever_less_when_not() {
        // Both ways are measured first.
        let mut p = Payoff::default();
        assert!(!p.draft_now());
        p.learn(false, Duration::from_millis(10), 1);
        assert!(p.draft_now());
        // Drafts at half the cost per token, even with a costly switch:
        // nearly every step drafts.
        let n = 2000;
        let cheap = drafting_share(0.010, 0.005, 0.05, n);
        assert!(cheap >= n - 40, "{cheap}");
        // Drafts dearer: only probes draft, fewer and fewer (rounds of 32,
        // 64, ... 1024 steps, three probes each).
        let dear = drafting_share(0.010, 0.015, 0.05, n);
        assert!((10..=30).contains(&dear), "{dear}");
    }

    #[test]
    fn draft_length_follows_acceptance() {
        let mut d = DraftLen::new(4);
        assert_eq!(d.want(), 4);
        d.update(4, 1);
        assert_eq!(d.want(), 2);
        d.update(2, 2);
        assert_eq!(d.want(), 3);
        d.update(3, 0);
        assert_eq!(d.want(), 1);
        // A lone draft rejected: a pause, then one again.
        d.update(1, 0);
        assert_eq!((0..PAUSE).map(|_| d.want()).sum::<usize>(), 0);
        assert_eq!(d.want(), 1);
        for _ in 0..10 {
            d.update(d.k, d.k);
        }
        assert_eq!(d.want(), 4, "never past the bound");
    }
}
