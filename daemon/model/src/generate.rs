//! The generation loop: prefill the prompt, then sample one token at a
//! time until a limit, an end-of-generation token or a stop string.

use dwarfstar_tokenizer::Tokenizer;

use crate::error::Result;
use crate::sampler::{Sampler, SamplerConfig};
use crate::{Model, SeqState};

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
    /// Stop (and cut the text) when the output contains one of these.
    pub stop: Vec<String>,
    /// Report the top-K logits of every step (0: none).
    pub top_logits: usize,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 128,
            sampler: SamplerConfig::default(),
            ignore_eos: false,
            stop: Vec::new(),
            top_logits: 0,
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_tokens` reached.
    Length,
    /// An end-of-generation token or a stop string.
    Stop,
    /// The callback asked to stop.
    Cancelled,
}

/// One generated token, as the callback sees it.
#[derive(Clone, Debug)]
pub struct Step {
    pub token: u32,
    /// Text that is now safe to show (held back while it may be the start
    /// of a stop string).
    pub text: String,
    /// The top-K `(id, logit)` of the distribution this token came from.
    pub top: Vec<(u32, f32)>,
}

/// The result of a whole generation.
#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub top_logits: Vec<Vec<(u32, f32)>>,
    pub finish: FinishReason,
    /// Seconds spent on the prompt and on the decode steps.
    pub prefill_s: f64,
    pub decode_s: f64,
    pub n_prompt: usize,
}

/// The top `k` `(id, logit)` pairs, highest first (ties by lower id).
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut v: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l))
        .collect();
    let k = k.min(v.len());
    if k == 0 {
        return Vec::new();
    }
    let cmp = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    v.select_nth_unstable_by(k - 1, cmp);
    v.truncate(k);
    v.sort_by(cmp);
    v
}

/// Holds back output that may be the beginning of a stop string.
pub struct StopScan<'a> {
    stops: &'a [String],
    text: String,
    emitted: usize,
}

impl<'a> StopScan<'a> {
    /// A scanner for `stops` (empty strings never match).
    pub fn new(stops: &'a [String]) -> Self {
        StopScan {
            stops,
            text: String::new(),
            emitted: 0,
        }
    }

    /// Appends `piece`; returns (text safe to emit, whether a stop matched).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.text.push_str(piece);
        for s in self.stops.iter().filter(|s| !s.is_empty()) {
            if let Some(at) = self.text[self.emitted.min(self.text.len())..]
                .find(s.as_str())
                .map(|i| i + self.emitted)
                .or_else(|| self.text.find(s.as_str()))
            {
                self.text.truncate(at);
                let out = self.text.get(self.emitted..).unwrap_or("").to_string();
                self.emitted = self.text.len();
                return (out, true);
            }
        }
        // Emit up to the longest suffix that is a prefix of a stop string.
        let mut hold = 0;
        for s in self.stops {
            for l in (1..s.len().min(self.text.len() + 1)).rev() {
                if self.text.is_char_boundary(self.text.len() - l)
                    && s.is_char_boundary(l)
                    && self.text.ends_with(&s[..l])
                {
                    hold = hold.max(l);
                    break;
                }
            }
        }
        let end = self.text.len() - hold;
        let out = self.text.get(self.emitted..end).unwrap_or("").to_string();
        self.emitted = self.emitted.max(end);
        (out, false)
    }

    /// Releases whatever is still held back.
    pub fn flush(&mut self) -> String {
        let out = self.text.get(self.emitted..).unwrap_or("").to_string();
        self.emitted = self.text.len();
        out
    }
}

/// One sequence's forward pass, which [`generate`] drives: a whole
/// [`Model`] here, or a model split over machines (the daemon's pipeline).
pub trait Forward {
    type State;
    /// Positions `s` holds.
    fn state_len(&self, s: &Self::State) -> usize;
    /// Forgets every position from `len` on.
    fn truncate(&self, s: &mut Self::State, len: usize);
    /// Runs `tokens` after what `s` holds: the last token's logits.
    fn forward_last(&self, tokens: &[u32], s: &mut Self::State) -> Result<Vec<f32>>;
}

impl Forward for Model {
    type State = SeqState;

    fn state_len(&self, s: &SeqState) -> usize {
        s.len()
    }

    fn truncate(&self, s: &mut SeqState, len: usize) {
        s.truncate(len)
    }

    fn forward_last(&self, tokens: &[u32], s: &mut SeqState) -> Result<Vec<f32>> {
        self.forward(tokens, s, false)
    }
}

/// Runs `prompt` then generates. `state` may already hold a prefix of the
/// prompt (its first `state.len()` tokens are skipped). `on_step` returns
/// false to cancel.
pub fn generate<F: Forward + ?Sized>(
    model: &F,
    tok: &Tokenizer,
    state: &mut F::State,
    prompt: &[u32],
    params: &GenerateParams,
    mut on_step: impl FnMut(&Step) -> bool,
) -> Result<Generation> {
    let t0 = std::time::Instant::now();
    let done = model.state_len(state).min(prompt.len().saturating_sub(1));
    model.truncate(state, done);
    let mut logits = model.forward_last(&prompt[done..], state)?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    let mut sampler = Sampler::new(params.sampler.clone());
    let mut history: Vec<u32> = prompt.to_vec();
    let mut out = Generation {
        tokens: Vec::new(),
        text: String::new(),
        top_logits: Vec::new(),
        finish: FinishReason::Length,
        prefill_s,
        decode_s: 0.0,
        n_prompt: prompt.len(),
    };
    let mut scan = StopScan {
        stops: &params.stop,
        text: String::new(),
        emitted: 0,
    };
    let mut pending: Vec<u8> = Vec::new();
    for i in 0..params.max_tokens {
        let top = if params.top_logits > 0 {
            top_k(&logits, params.top_logits)
        } else {
            Vec::new()
        };
        let token = sampler.sample(&logits, &history);
        history.push(token);
        out.tokens.push(token);
        if params.top_logits > 0 {
            out.top_logits.push(top.clone());
        }
        let eog = tok.is_eog(token);
        if eog && !params.ignore_eos {
            out.finish = FinishReason::Stop;
            break;
        }
        // Decode bytes incrementally so multi-byte characters split across
        // tokens come out whole. Control tokens are not shown, as llama.cpp
        // prints a generation.
        pending.extend_from_slice(&tok.piece(token, false));
        let valid = match std::str::from_utf8(&pending) {
            Ok(_) => pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => pending.len(),
        };
        let piece = String::from_utf8_lossy(&pending[..valid]).into_owned();
        pending.drain(..valid);
        let (text, stopped) = scan.push(&piece);
        let step = Step { token, text, top };
        if !on_step(&step) {
            out.finish = FinishReason::Cancelled;
            break;
        }
        if stopped {
            out.finish = FinishReason::Stop;
            break;
        }
        if i + 1 < params.max_tokens {
            logits = model.forward_last(&[token], state)?;
        }
    }
    if out.finish != FinishReason::Stop || scan.stops.is_empty() {
        if !pending.is_empty() {
            let piece = String::from_utf8_lossy(&pending).into_owned();
            scan.text.push_str(&piece);
        }
        let rest = scan.flush();
        if !rest.is_empty() && out.finish != FinishReason::Cancelled {
            on_step(&Step {
                token: *out.tokens.last().unwrap_or(&0),
                text: rest,
                top: Vec::new(),
            });
        }
    }
    out.text = scan.text;
    out.decode_s = t1.elapsed().as_secs_f64();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_scan_holds_back_and_cuts() {
        let stops = vec!["END".to_string()];
        let mut s = StopScan {
            stops: &stops,
            text: String::new(),
            emitted: 0,
        };
        assert_eq!(s.push("hello E"), ("hello ".to_string(), false));
        assert_eq!(s.push("N"), (String::new(), false));
        assert_eq!(s.push("Dx"), (String::new(), true));
        assert_eq!(s.text, "hello ");
    }

    #[test]
    fn stop_scan_releases_false_alarms() {
        let stops = vec!["END".to_string()];
        let mut s = StopScan {
            stops: &stops,
            text: String::new(),
            emitted: 0,
        };
        assert_eq!(s.push("a E"), ("a ".to_string(), false));
        assert_eq!(s.push("x"), ("Ex".to_string(), false));
    }

    #[test]
    fn top_k_orders() {
        assert_eq!(
            top_k(&[1.0, 3.0, 2.0, 3.0], 3),
            vec![(1, 3.0), (3, 3.0), (2, 2.0)]
        );
    }
}
