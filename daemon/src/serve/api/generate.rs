//! OpenAI's chat and text completions over the shared generation path
//! ([`super::run`]): whole responses with every choice, or server-sent
//! events. Streamed choices carry their `index`; with tools, a choice's
//! text streams until a call could begin ([`Splitter`]); what is held from
//! there is sent at its end as content or as `tool_calls` deltas (each
//! call's id, type and name, then its arguments), as OpenAI streams them.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::future::join_all;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use super::super::engine::Engine;
use super::super::openai::{
    self, at_choice, chat_logprobs, merge_choices, text_logprobs, ApiError, Envelope, Kind,
    LpToken, Prompt, Sampling,
};
use super::super::tools::{self, split::Splitter};
use super::run::{collect, consume, prepare_chat, submit, total_usage, End, Job, Out, ToolMode};
use super::{blocking, body, client_request_id, with_request_id, AppState};

pub(super) async fn chat(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let req = openai::chat_request(&body(&st, b)?)?;
    let p = prepare_chat(&st, req).await?;
    respond(
        st,
        p.engine,
        Kind::Chat,
        p.prompt,
        p.sampling,
        p.mode,
        received,
        client_request_id(&headers),
    )
    .await
}

pub(super) async fn completions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let req = openai::completion_request(&body(&st, b)?)?;
    let e = st.engine_for(req.model.as_deref())?;
    let prompt = match req.prompt {
        Prompt::Tokens(t) => {
            if let Some(bad) = t.iter().find(|&&t| t as usize >= e.n_vocab) {
                return Err(ApiError::invalid(
                    "prompt",
                    format!("Token {bad} is outside the vocabulary of {}.", e.n_vocab),
                ));
            }
            t
        }
        Prompt::Text(s) => {
            let tok = e.tok.clone();
            blocking(move || tok.encode(&s, true, true))
                .await?
                .map_err(|e| {
                    ApiError::invalid("prompt", format!("The prompt could not be tokenized: {e}"))
                })?
        }
    };
    let rid = client_request_id(&headers);
    respond(st, e, Kind::Text, prompt, req.sampling, None, received, rid).await
}

/// `logprobs` of one choice in `kind`'s shape (text offsets from `offset`).
fn lp_json(kind: Kind, toks: &[LpToken], offset: usize) -> Value {
    match kind {
        Kind::Chat => chat_logprobs(toks),
        Kind::Text => text_logprobs(toks, offset),
    }
}

/// Queues a tokenized prompt and answers with every choice whole, or as
/// a stream. `rid`: the client's request id (else the response's).
#[allow(clippy::too_many_arguments)]
async fn respond(
    st: Arc<AppState>,
    e: Arc<Engine>,
    kind: Kind,
    prompt: Vec<u32>,
    s: Sampling,
    mode: Option<ToolMode>,
    received: Instant,
    rid: Option<Arc<str>>,
) -> Result<Response, ApiError> {
    let env = Envelope::new(kind, &e.model_name);
    let rid = rid.unwrap_or_else(|| env.id.as_str().into());
    let jobs = submit(&st, &e, prompt, &s, mode.is_some(), received, &rid).await?;
    let lp = s.logprobs.is_some();
    if s.stream {
        let (tx, rx) = unbounded_channel();
        tokio::spawn(stream(jobs, env, lp, s.include_usage, mode, tx));
        let events = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|e| (Ok::<SseEvent, Infallible>(e), rx))
        });
        let resp = Sse::new(events).keep_alive(KeepAlive::default());
        return Ok(with_request_id(resp.into_response(), &rid));
    }
    let outs = join_all(jobs.into_iter().map(|j| collect(j, mode.as_ref()))).await;
    let outs = outs.into_iter().collect::<Result<Vec<_>, _>>()?;
    let choices = outs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let w = if o.calls.is_empty() {
                env.whole(&o.text, o.reason, o.usage)
            } else {
                let ids: Vec<String> = o.calls.iter().map(|_| tools::call_id()).collect();
                env.whole_calls(&o.text, &o.calls, &ids, o.usage)
            };
            at_choice(w, i, lp.then(|| lp_json(kind, &o.logprobs, 0)))
        })
        .collect();
    let usage = total_usage(outs.iter().map(|o| o.usage));
    let resp = Json(merge_choices(choices, usage)).into_response();
    Ok(with_request_id(resp, &rid))
}

/// Feeds one streamed response: each choice's chunks as its text comes
/// (see the module doc), then the usage chunk if asked, and `[DONE]`.
async fn stream(
    jobs: Vec<Job>,
    env: Envelope,
    lp: bool,
    include_usage: bool,
    mode: Option<ToolMode>,
    tx: UnboundedSender<SseEvent>,
) {
    let ends = join_all(
        jobs.into_iter()
            .enumerate()
            .map(|(i, job)| stream_choice(job, i, &env, lp, mode.as_ref(), &tx)),
    )
    .await;
    let send = |v: Value| tx.send(SseEvent::default().data(v.to_string())).is_ok();
    let mut usages = Vec::new();
    for end in ends {
        match end {
            End::Finished { usage, .. } => usages.push(usage),
            End::Failed(e) => {
                send(ApiError::internal(e).body());
                break;
            }
            End::Gone => return,
        }
    }
    if include_usage {
        send(env.usage_chunk(total_usage(usages)));
    }
    let _ = tx.send(SseEvent::default().data("[DONE]"));
}

/// Streams choice `i`: its chunks, then its finish chunk.
async fn stream_choice(
    job: Job,
    i: usize,
    env: &Envelope,
    lp: bool,
    mode: Option<&ToolMode>,
    tx: &UnboundedSender<SseEvent>,
) -> End {
    let send = |v: Value, lps: Option<&[LpToken]>, offset: usize| {
        let lps = lps.filter(|_| lp).map(|l| lp_json(env.kind, l, offset));
        tx.send(SseEvent::default().data(at_choice(v, i, lps).to_string()))
            .is_ok()
    };
    let mut first = true;
    let mut offset = 0;
    // With tools: the splitter, and the logprobs of text it still holds
    // (each piece's with the output length at the piece's end).
    let mut split = mode.map(|m| Splitter::new(m.family));
    let mut pending: Vec<(usize, Vec<LpToken>)> = Vec::new();
    let (mut fed, mut sent) = (0, 0);
    let end = consume(job, |o| match o {
        Out::Started if env.kind == Kind::Chat => {
            first = false;
            send(env.chunk(Some(""), true, None), None, 0)
        }
        Out::Started => true,
        Out::Text(t, l) => {
            let (t, l) = match split.as_mut() {
                Some(sp) => {
                    fed += t.len();
                    pending.push((fed, l));
                    let now = sp.push(&t);
                    sent += now.len();
                    let done = pending.iter().take_while(|(e, _)| *e <= sent).count();
                    let l = pending.drain(..done).flat_map(|(_, l)| l).collect();
                    (now, l)
                }
                None => (t, l),
            };
            if t.is_empty() {
                return !tx.is_closed();
            }
            let c = env.chunk(Some(&t), first, None);
            first = false;
            let ok = send(c, Some(&l), offset);
            offset += t.len();
            ok
        }
    })
    .await;
    let End::Finished { reason, .. } = &end else {
        return end;
    };
    let mut reason = *reason;
    if let (Some(m), Some(sp)) = (mode, split) {
        let held = sp.finish();
        let lps: Vec<LpToken> = pending.into_iter().flat_map(|(_, l)| l).collect();
        let (content, calls) = m.parse(&held).unwrap_or((held, Vec::new()));
        if !content.is_empty() || !lps.is_empty() {
            send(env.chunk(Some(&content), false, None), Some(&lps), 0);
        }
        for (k, c) in calls.iter().enumerate() {
            send(
                env.delta_chunk(
                    json!({"tool_calls": [{"index": k, "id": tools::call_id(),
                        "type": "function",
                        "function": {"name": c.name, "arguments": ""}}]}),
                    None,
                ),
                None,
                0,
            );
            send(
                env.delta_chunk(
                    json!({"tool_calls": [{"index": k,
                        "function": {"arguments": c.arguments}}]}),
                    None,
                ),
                None,
                0,
            );
        }
        if !calls.is_empty() {
            reason = "tool_calls";
        }
    }
    send(env.chunk(None, false, Some(reason)), None, 0);
    end
}
