//! Anthropic's `/v1/messages` and `/v1/messages/count_tokens` over the
//! shared generation path ([`super::run`]): the request becomes the same
//! chat (template, tools, grammar) as OpenAI's, the answer a `message` or
//! its event stream. With tools, text streams into its block until a call
//! could begin ([`Splitter`]); what is held from there is parsed at the end
//! and sent as more text and `tool_use` blocks (their input as one
//! `input_json_delta`).
//! Errors come in Anthropic's shape.

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
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use super::super::anthropic::{self, body as ab, AnthropicError};
use super::super::openai::ApiError;
use super::super::tools::split::Splitter;
use super::run::{self, collect, consume, prepare_chat, submit_one, End, Job, Out, ToolMode};
use super::{body, client_request_id, with_request_id, AppState};

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        let status = axum::http::StatusCode::from_u16(self.0.status)
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.body())).into_response()
    }
}

pub(super) async fn messages(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, AnthropicError> {
    let received = Instant::now();
    let req = anthropic::messages_request(&body(&st, b)?, false)?;
    let p = prepare_chat(&st, req.chat).await?;
    let model = if req.model.is_empty() {
        p.engine.model_name.clone()
    } else {
        req.model
    };
    let input_tokens = p.prompt.len();
    let stream = p.sampling.stream;
    let id = ab::message_id();
    let rid = client_request_id(&headers).unwrap_or_else(|| id.as_str().into());
    let job = submit_one(
        &st,
        &p.engine,
        p.prompt,
        &p.sampling,
        p.mode.is_some(),
        received,
        &rid,
    )
    .await?;
    if !stream {
        let o = collect(job, p.mode.as_ref()).await?;
        let stop = o.stop_string.as_deref();
        let reason = ab::stop_reason(o.reason, stop);
        let mut m = ab::whole(&model, &o.text, &o.calls, (reason, stop), &o.usage);
        m["id"] = json!(id);
        return Ok(with_request_id(Json(m).into_response(), &rid));
    }
    let (tx, rx) = unbounded_channel();
    tokio::spawn(stream_message(job, p.mode, (id, model), input_tokens, tx));
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<SseEvent, Infallible>(e), rx))
    });
    let resp = Sse::new(events).keep_alive(KeepAlive::default());
    Ok(with_request_id(resp.into_response(), &rid))
}

pub(super) async fn count_tokens(
    State(st): State<Arc<AppState>>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, AnthropicError> {
    let req = anthropic::messages_request(&body(&st, b)?, true)?;
    let p = prepare_chat(&st, req.chat).await?;
    Ok(Json(json!({"input_tokens": p.prompt.len()})))
}

/// Sends one streamed message's events (see the module doc).
async fn stream_message(
    job: Job,
    mode: Option<ToolMode>,
    (id, model): (String, String),
    input_tokens: usize,
    tx: UnboundedSender<SseEvent>,
) {
    let send = |v: Value| {
        let name = v["type"].as_str().unwrap_or("message").to_string();
        tx.send(SseEvent::default().event(name).data(v.to_string()))
            .is_ok()
    };
    let mut open = false;
    let mut split = mode.as_ref().map(|m| Splitter::new(m.family));
    let text = |send: &dyn Fn(Value) -> bool, open: &mut bool, t: &str| {
        if !*open {
            *open = true;
            send(ab::block_start(0, json!({"type": "text", "text": ""})));
        }
        send(ab::text_delta(0, t))
    };
    let end = consume(job, |o| match o {
        Out::Started => {
            let u = super::super::openai::Usage {
                prompt_tokens: input_tokens,
                completion_tokens: 0,
                cached_tokens: 0,
            };
            let start = json!({"type": "message_start",
                               "message": ab::message(&id, &model, Vec::new(), None, &u)});
            send(start) && send(json!({"type": "ping"}))
        }
        Out::Text(t, _) => {
            let t = match split.as_mut() {
                Some(sp) => sp.push(&t),
                None => t,
            };
            if t.is_empty() {
                return !tx.is_closed();
            }
            text(&send, &mut open, &t)
        }
    })
    .await;
    match end {
        End::Finished {
            reason,
            stop_string,
            usage,
        } => {
            let mut reason = reason;
            let (tail, calls) = run::held_calls(mode.as_ref(), split);
            if !tail.is_empty() {
                text(&send, &mut open, &tail);
            }
            let mut next = 0;
            if open {
                send(ab::block_stop(0));
                next = 1;
            }
            for c in &calls {
                let block = ab::tool_use(c, &ab::tool_use_id());
                let input = block["input"].to_string();
                let mut empty = block.clone();
                empty["input"] = json!({});
                send(ab::block_start(next, empty));
                send(ab::json_delta(next, &input));
                send(ab::block_stop(next));
                next += 1;
            }
            if !calls.is_empty() {
                reason = "tool_calls";
            }
            if next == 0 {
                send(ab::block_start(0, json!({"type": "text", "text": ""})));
                send(ab::block_stop(0));
            }
            let stop = stop_string.as_deref();
            send(ab::message_delta(
                (ab::stop_reason(reason, stop), stop),
                &usage,
            ));
            send(json!({"type": "message_stop"}));
        }
        End::Failed(e) => {
            send(AnthropicError(ApiError::internal(e)).body());
        }
        End::Gone => {}
    }
}
