//! The one generation path every API shares: a chat rendered through the
//! model's template with its tools ([`prepare_chat`]), the prompt queued
//! for the engine as `n` sequences ([`submit`]), and each sequence's tokens
//! turned into text ([`consume`]): UTF-8 pieces, stop strings, logprobs.
//! A request that sees a stop string, or whose client goes away, drops its
//! receiver, which ends its sequence at the engine's next step.
//! [`collect`] runs one sequence to its end and parses its tool calls.

use std::sync::Arc;
use std::time::Instant;

use dwarfstar_model::generate::StopScan;
use dwarfstar_model::SamplerConfig;
use dwarfstar_tokenizer::Tokenizer;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::super::engine::Engine;
use super::super::grammar::{Constraint, Grammar};
use super::super::logprobs::TokenLogprobs;
use super::super::metrics::Metrics;
use super::super::openai::{ApiError, ChatRequest, LpToken, Sampling, Usage};
use super::super::scheduler::{Event, Finish, GenRequest, SubmitError};
use super::super::tools::{self, render, split::Splitter, Family, ToolCall};
use super::{blocking, AppState};

/// Tool calls to look for in a chat answer.
pub(super) struct ToolMode {
    pub family: Family,
    pub names: Vec<String>,
}

impl ToolMode {
    /// The calls in `text` and the content around them; None without
    /// calls (the text is then plain content).
    pub fn parse(&self, text: &str) -> Option<(String, Vec<ToolCall>)> {
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        let p = tools::parse::parse(text, self.family, &names);
        (!p.calls.is_empty()).then_some((p.content, p.calls))
    }
}

/// The end of a stream with tools: what `split` still held, as the text
/// left to send and the calls in it (nothing without tools).
pub(super) fn held_calls(
    mode: Option<&ToolMode>,
    split: Option<Splitter>,
) -> (String, Vec<ToolCall>) {
    match (mode, split) {
        (Some(m), Some(sp)) => {
            let held = sp.finish();
            m.parse(&held).unwrap_or((held, Vec::new()))
        }
        _ => (String::new(), Vec::new()),
    }
}

/// A chat ready to queue.
pub(super) struct Prepared {
    pub engine: Arc<Engine>,
    pub prompt: Vec<u32>,
    pub sampling: Sampling,
    pub mode: Option<ToolMode>,
}

/// Renders a chat through the served model's template (tools included,
/// forced calls as a grammar) and tokenizes it.
pub(super) async fn prepare_chat(st: &AppState, req: ChatRequest) -> Result<Prepared, ApiError> {
    let e = st.engine_for(req.model.as_deref())?;
    let template = e.tok.chat_template().unwrap_or_default().to_string();
    let family = Family::of(&template);
    let mut sampling = req.sampling;
    let mut msgs = req.messages;
    let mut tools_var = None;
    let mut mode = None;
    if let Some(spec) = &req.tools {
        let (m, t) = render::prepare(msgs, spec, render::template_reads_tools(&template));
        (msgs, tools_var) = (m, t);
        if spec.active() {
            let forced = render::forced_grammar(spec, family).map_err(|e| {
                ApiError::invalid_code(
                    "tools",
                    "unsupported_parameter",
                    format!("A call to these tools cannot be enforced: {e}."),
                )
            })?;
            if let Some(g) = forced {
                if sampling.grammar.is_some() {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        "A forced tool call cannot be combined with `grammar` or `response_format`.",
                    ));
                }
                sampling.grammar = Some(g);
            }
            mode = Some(ToolMode {
                family,
                names: spec.names().into_iter().map(str::to_string).collect(),
            });
        }
    }
    let tok = e.tok.clone();
    let prompt = blocking(move || {
        let text = tok.apply_chat_template_tools(&msgs, tools_var.as_ref(), true)?;
        tok.encode(&text, true, true)
    })
    .await?
    .map_err(|e| {
        ApiError::invalid(
            "messages",
            format!("The conversation could not be rendered: {e}"),
        )
    })?;
    Ok(Prepared {
        engine: e,
        prompt,
        sampling,
        mode,
    })
}

/// One sequence's side of the engine's stream.
pub(super) struct Job {
    rx: UnboundedReceiver<Event>,
    tok: Arc<Tokenizer>,
    stops: Vec<String>,
    ignore_eos: bool,
    /// Special tokens' text is output too.
    render_special: bool,
    received: Instant,
    metrics: Arc<Metrics>,
    prompt_tokens: usize,
}

/// [`submit`] for the APIs that answer with one choice: its one job.
pub(super) async fn submit_one(
    st: &AppState,
    e: &Arc<Engine>,
    prompt: Vec<u32>,
    s: &Sampling,
    tools: bool,
    received: Instant,
    request: &Arc<str>,
) -> Result<Job, ApiError> {
    submit(st, e, prompt, s, tools, received, request)
        .await?
        .pop()
        .ok_or_else(|| ApiError::internal("no sequence was queued"))
}

/// Queues `prompt` for `s.n` sequences (sequence i samples with seed + i);
/// one [`Job`] each. `tools` says whether the output is parsed for calls;
/// `request` is the API request's id (see [`super`]).
pub(super) async fn submit(
    st: &AppState,
    e: &Arc<Engine>,
    prompt: Vec<u32>,
    s: &Sampling,
    tools: bool,
    received: Instant,
    request: &Arc<str>,
) -> Result<Vec<Job>, ApiError> {
    let n = prompt.len();
    if n == 0 {
        return Err(ApiError::invalid("prompt", "The prompt has no tokens."));
    }
    if n >= e.ctx_size {
        return Err(ApiError::invalid_code(
            "messages",
            "context_length_exceeded",
            format!(
                "This server's context is {} tokens; the prompt has {n}, which leaves no room to generate.",
                e.ctx_size
            ),
        ));
    }
    // max_tokens beyond the context (or the configured cap) is clamped;
    // the answer then ends with finish_reason "length".
    let room = e.ctx_size - n;
    let asked = s
        .max_tokens
        .map(|m| usize::try_from(m).unwrap_or(usize::MAX));
    let mut max_tokens = asked.or(st.limits.default_max_tokens).unwrap_or(room);
    if let Some(cap) = st.limits.max_tokens {
        max_tokens = max_tokens.min(cap);
    }
    let max_tokens = max_tokens.min(room).max(1);
    let seed = s.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let grammar = match &s.grammar {
        None => None,
        Some(g) => {
            let g = Grammar::parse(g).map_err(|e| ApiError::invalid("grammar", e.to_string()))?;
            let trie = {
                let e = e.clone();
                blocking(move || e.token_trie()).await?
            };
            Some((Arc::new(g), trie))
        }
    };
    // Output checked by a grammar or parsed for calls is text as the
    // model wrote it, special tokens included.
    let render_special = grammar.is_some() || tools;
    let mut jobs = Vec::with_capacity(s.n.max(1));
    for i in 0..s.n.max(1) {
        let (tx, rx) = unbounded_channel();
        e.submit
            .submit(GenRequest {
                prompt: prompt.clone(),
                max_tokens,
                sampler: SamplerConfig {
                    temperature: s.temperature,
                    top_k: s.top_k,
                    top_p: s.top_p,
                    min_p: s.min_p,
                    repeat_penalty: s.repeat_penalty,
                    repeat_last_n: 64,
                    seed: seed.wrapping_add(i as u64),
                },
                presence_penalty: s.presence_penalty,
                frequency_penalty: s.frequency_penalty,
                ignore_eos: s.ignore_eos,
                constraint: grammar
                    .as_ref()
                    .map(|(g, t)| Constraint::new(g.clone(), t.clone())),
                logprobs: s.logprobs,
                events: tx,
                request_id: Some(request.clone()),
            })
            .map_err(|e| match e {
                SubmitError::Full => ApiError::queue_full(),
                SubmitError::Closed => ApiError::unavailable("The engine has stopped."),
            })?;
        jobs.push(Job {
            rx,
            tok: e.tok.clone(),
            stops: s.stop.clone(),
            ignore_eos: s.ignore_eos,
            render_special,
            received,
            metrics: st.metrics.clone(),
            prompt_tokens: n,
        });
    }
    Ok(jobs)
}

/// What [`consume`] passes on as it goes.
pub(super) enum Out {
    /// The engine admitted the request.
    Started,
    /// Text, and the logprobs of the tokens that gave it (when asked).
    Text(String, Vec<LpToken>),
}

/// How [`consume`] ended.
pub(super) enum End {
    Finished {
        /// `stop`, `length`; which stop string matched, if one did.
        reason: &'static str,
        stop_string: Option<String>,
        usage: Usage,
    },
    Failed(String),
    /// `emit` said the client is gone.
    Gone,
}

/// Splits off the longest valid UTF-8 prefix of `pending` (a character cut
/// between tokens waits for its remaining bytes; invalid bytes pass as U+FFFD).
fn take_utf8(pending: &mut Vec<u8>) -> String {
    let valid = match std::str::from_utf8(pending) {
        Ok(_) => pending.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => pending.len(),
    };
    let s = String::from_utf8_lossy(&pending[..valid]).into_owned();
    pending.drain(..valid);
    s
}

/// The stop string `text` ends with or holds, if any.
fn matched_stop(stops: &[String], text: &str) -> Option<String> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .find(|s| text.contains(s.as_str()))
        .cloned()
}

/// Turns the engine's events into text, holding back what may start a stop
/// string, until the sequence ends; `emit` returns false when nobody listens.
/// Returning drops the receiver, which ends the sequence if it still runs.
pub(super) async fn consume(job: Job, mut emit: impl FnMut(Out) -> bool) -> End {
    let Job {
        mut rx,
        tok,
        stops,
        ignore_eos,
        render_special,
        received,
        metrics,
        prompt_tokens,
    } = job;
    let mut scan = StopScan::new(&stops);
    let mut pending = Vec::new();
    let mut seen = String::new();
    let mut lps: Vec<LpToken> = Vec::new();
    let mut next_lp: Option<TokenLogprobs> = None;
    let mut usage = Usage {
        prompt_tokens,
        completion_tokens: 0,
        cached_tokens: 0,
    };
    let piece = |t: u32| tok.piece(t, render_special);
    loop {
        let Some(ev) = rx.recv().await else {
            return End::Failed("the engine stopped".into());
        };
        match ev {
            Event::Started { cached_tokens } => {
                usage.cached_tokens = cached_tokens;
                if !emit(Out::Started) {
                    return End::Gone;
                }
            }
            Event::Logprobs(lp) => next_lp = Some(lp),
            Event::Token(id) => {
                if usage.completion_tokens == 0 {
                    metrics.ttft(received.elapsed());
                }
                usage.completion_tokens += 1;
                let lp = next_lp.take();
                if tok.is_eog(id) && !ignore_eos {
                    continue; // its Done follows
                }
                let bytes = piece(id);
                if let Some(lp) = lp {
                    lps.push(LpToken {
                        bytes: bytes.clone(),
                        logprob: lp.logprob,
                        top: lp.top.iter().map(|&(t, l)| (piece(t), l)).collect(),
                    });
                }
                pending.extend_from_slice(&bytes);
                let piece = take_utf8(&mut pending);
                seen.push_str(&piece);
                let (text, stopped) = scan.push(&piece);
                if !text.is_empty() && !emit(Out::Text(text, std::mem::take(&mut lps))) {
                    return End::Gone;
                }
                if stopped {
                    return End::Finished {
                        reason: "stop",
                        stop_string: matched_stop(&stops, &seen),
                        usage,
                    };
                }
            }
            Event::Done(f) => {
                let rest = String::from_utf8_lossy(&pending).into_owned();
                seen.push_str(&rest);
                let (mut text, stopped) = scan.push(&rest);
                if !stopped {
                    text.push_str(&scan.flush());
                }
                if (!text.is_empty() || !lps.is_empty()) && !emit(Out::Text(text, lps)) {
                    return End::Gone;
                }
                let reason = match f {
                    _ if stopped => "stop",
                    Finish::Stop => "stop",
                    Finish::Length => "length",
                };
                return End::Finished {
                    reason,
                    stop_string: stopped.then(|| matched_stop(&stops, &seen)).flatten(),
                    usage,
                };
            }
            Event::Failed(e) => return End::Failed(e),
        }
    }
}

/// One sequence run to its end.
pub(super) struct Outcome {
    /// All the text (with tools: the content around the calls).
    pub text: String,
    /// `stop`, `length` or `tool_calls`.
    pub reason: &'static str,
    pub stop_string: Option<String>,
    pub calls: Vec<ToolCall>,
    pub usage: Usage,
    pub logprobs: Vec<LpToken>,
}

/// Runs `job` to its end, its output parsed for calls under `mode`.
pub(super) async fn collect(job: Job, mode: Option<&ToolMode>) -> Result<Outcome, ApiError> {
    let mut text = String::new();
    let mut logprobs = Vec::new();
    let end = consume(job, |o| {
        if let Out::Text(t, lp) = o {
            text.push_str(&t);
            logprobs.extend(lp);
        }
        true
    })
    .await;
    match end {
        End::Finished {
            reason,
            stop_string,
            usage,
        } => {
            let mut out = Outcome {
                text,
                reason,
                stop_string,
                calls: Vec::new(),
                usage,
                logprobs,
            };
            if let Some((content, calls)) = mode.and_then(|m| m.parse(&out.text)) {
                (out.text, out.calls, out.reason) = (content, calls, "tool_calls");
            }
            Ok(out)
        }
        End::Failed(e) => Err(ApiError::internal(e)),
        End::Gone => Err(ApiError::internal("the request was dropped")),
    }
}

/// Usage over several sequences of one prompt.
pub(super) fn total_usage(us: impl IntoIterator<Item = Usage>) -> Usage {
    let mut t: Option<Usage> = None;
    for u in us {
        let t = t.get_or_insert(Usage {
            completion_tokens: 0,
            ..u
        });
        t.completion_tokens += u.completion_tokens;
    }
    t.unwrap_or(Usage {
        prompt_tokens: 0,
        completion_tokens: 0,
        cached_tokens: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_tokens_waits_for_its_bytes() {
        let mut p = "a\u{e9}".as_bytes()[..2].to_vec();
        assert_eq!(take_utf8(&mut p), "a");
        p.push(0xa9);
        assert_eq!(take_utf8(&mut p), "\u{e9}");
        assert!(p.is_empty());
        p.extend_from_slice(&[0xff, b'x']);
        assert_eq!(take_utf8(&mut p), "\u{fffd}x");
    }

    #[test]
    fn usage_adds_completions_over_choices() {
        let u = |c| Usage {
            prompt_tokens: 5,
            completion_tokens: c,
            cached_tokens: 2,
        };
        let t = total_usage([u(3), u(4)]);
        assert_eq!(
            (t.prompt_tokens, t.completion_tokens, t.cached_tokens),
            (5, 7, 2)
        );
        assert_eq!(
            matched_stop(&["x".into(), "yz".into()], "ayzb"),
            Some("yz".into())
        );
    }
}
