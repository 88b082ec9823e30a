//! Log-probabilities of sampled tokens (OpenAI's `logprobs`).
//!
//! A token's logprob is the log-softmax of the model's raw logits at its
//! position: the model's own distribution, before presence/frequency and
//! repeat penalties, temperature, top-k/top-p/min-p and grammar masks (as
//! OpenAI reports them). So a greedy token's logprob is the highest, and the
//! numbers do not depend on the sampling settings. `top` holds the `k` most
//! likely tokens of that distribution, most likely first.

/// One generated token's logprob and its position's most likely tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    pub token: u32,
    pub logprob: f32,
    /// `(token, logprob)`, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// `log(sum(exp(l)))`, computed stably.
fn log_sum_exp(l: &[f32]) -> f32 {
    let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = l.iter().map(|&x| ((x - max) as f64).exp()).sum();
    max + sum.ln() as f32
}

/// The logprob of `token` and the `k` best under the raw `logits`.
pub fn of(logits: &[f32], token: u32, k: usize) -> TokenLogprobs {
    let lse = log_sum_exp(logits);
    let lp = |t: usize| (logits[t] - lse).min(0.0);
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k);
    if k > 0 {
        // Keeps the k best seen so far, sorted best first.
        for (t, &x) in logits.iter().enumerate() {
            if top.len() == k && x <= logits[top[k - 1].0 as usize] {
                continue;
            }
            let at = top.partition_point(|&(u, _)| logits[u as usize] >= x);
            top.insert(at, (t as u32, 0.0));
            top.truncate(k);
        }
        for e in &mut top {
            e.1 = lp(e.0 as usize);
        }
    }
    TokenLogprobs {
        token,
        logprob: logits
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |_| lp(token as usize)),
        top,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_a_log_softmax_and_the_top_are_sorted() {
        let l = [1.0f32, 3.0, 2.0, -1.0];
        let r = of(&l, 2, 3);
        let z: f32 = l.iter().map(|x| x.exp()).sum();
        assert!((r.logprob - (2.0f32.exp() / z).ln()).abs() < 1e-6);
        assert_eq!(r.top.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 2, 0]);
        assert!(r.top.iter().all(|e| e.1 <= 0.0));
        let total: f32 = l
            .iter()
            .enumerate()
            .map(|(t, _)| of(&l, t as u32, 0).logprob.exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-5);
    }

    #[test]
    fn large_logits_do_not_overflow_and_k_past_the_vocabulary_is_all() {
        let l = [1000.0f32, 999.0];
        let r = of(&l, 0, 5);
        assert!(r.logprob.is_finite() && r.logprob <= 0.0);
        assert_eq!(r.top.len(), 2);
        assert!(r.top[0].1 > r.top[1].1);
        assert!(of(&l, 0, 0).top.is_empty());
    }
}
