//! OpenAI's `/v1/responses` over the shared generation path
//! ([`super::run`]): the request becomes the same chat (template, tools,
//! grammar) as chat completions; the answer a `response` with `message`
//! and `function_call` output items, or its event stream
//! (`response.created`, `response.output_item.added`,
//! `response.content_part.added`, `response.output_text.delta` / `.done`,
//! `response.function_call_arguments.delta` / `.done`,
//! `response.output_item.done`, `response.completed`). With tools, text
//! streams until a call could begin ([`Splitter`]); what is held from
//! there is parsed at the end and sent as more text and call items.

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

use super::super::openai::ApiError;
use super::super::responses::body::{self as rb, Events, Meta};
use super::super::responses::responses_request;
use super::super::tools::{self, split::Splitter, ToolCall};
use super::run::{self, collect, consume, prepare_chat, submit_one, End, Job, Out, ToolMode};
use super::{body, client_request_id, with_request_id, AppState};

pub(super) async fn responses(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let req = responses_request(&body(&st, b)?)?;
    let p = prepare_chat(&st, req.chat.clone()).await?;
    let meta = Meta::new(&req, &p.engine.model_name);
    let rid = client_request_id(&headers).unwrap_or_else(|| meta.id.as_str().into());
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
    if !p.sampling.stream {
        let o = collect(job, p.mode.as_ref()).await?;
        let mut output = Vec::new();
        if !o.text.is_empty() || o.calls.is_empty() {
            output.push(rb::message_item(
                &rb::new_id("msg"),
                Some(&o.text),
                "completed",
            ));
        }
        output.extend(o.calls.iter().map(call_done));
        let (status, why) = status_of(o.reason);
        let resp = Json(meta.response(status, output, Some(&o.usage), why)).into_response();
        return Ok(with_request_id(resp, &rid));
    }
    let (tx, rx) = unbounded_channel();
    tokio::spawn(stream_response(job, p.mode, meta, tx));
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<SseEvent, Infallible>(e), rx))
    });
    let resp = Sse::new(events).keep_alive(KeepAlive::default());
    Ok(with_request_id(resp.into_response(), &rid))
}

/// A response's status, and why it is incomplete if it is.
fn status_of(reason: &str) -> (&'static str, Option<&'static str>) {
    match reason {
        "length" => ("incomplete", Some("max_output_tokens")),
        _ => ("completed", None),
    }
}

fn call_done(c: &ToolCall) -> Value {
    rb::call_item(
        &rb::new_id("fc"),
        &tools::call_id(),
        &c.name,
        &c.arguments,
        "completed",
    )
}

/// Sends one streamed response's events (see the module doc).
async fn stream_response(
    job: Job,
    mode: Option<ToolMode>,
    meta: Meta,
    tx: UnboundedSender<SseEvent>,
) {
    let mut ev = Events::default();
    let mut send = |kind: &str, fields: Value| {
        let v = ev.event(kind, fields);
        tx.send(SseEvent::default().event(kind).data(v.to_string()))
            .is_ok()
    };
    let msg_id = rb::new_id("msg");
    let mut output: Vec<Value> = Vec::new();
    // All the content sent so far, and with tools what may be a call.
    let mut text = String::new();
    let mut split = mode.as_ref().map(|m| Splitter::new(m.family));
    // The message item's output index once it is open.
    let mut open: Option<usize> = None;
    let delta = |send: &mut dyn FnMut(&str, Value) -> bool, open: &mut Option<usize>, t: &str| {
        if open.is_none() {
            *open = Some(0);
            open_message(send, &msg_id, 0);
        }
        send(
            "response.output_text.delta",
            json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "delta": t}),
        )
    };
    let end = consume(job, |o| match o {
        Out::Started => {
            let r = meta.response("in_progress", Vec::new(), None, None);
            send("response.created", json!({"response": r}))
                && send("response.in_progress", json!({"response": r}))
        }
        Out::Text(t, _) => {
            let t = match split.as_mut() {
                Some(sp) => sp.push(&t),
                None => t,
            };
            if t.is_empty() {
                return !tx.is_closed();
            }
            text.push_str(&t);
            delta(&mut send, &mut open, &t)
        }
    })
    .await;
    let (reason, usage) = match end {
        End::Finished { reason, usage, .. } => (reason, usage),
        End::Failed(e) => {
            let r = meta.response("failed", output, None, None);
            let mut r = r;
            r["error"] = json!({"code": "server_error", "message": e});
            send("response.failed", json!({"response": r}));
            return;
        }
        End::Gone => return,
    };
    let (tail, calls) = run::held_calls(mode.as_ref(), split);
    if !tail.is_empty() {
        text.push_str(&tail);
        delta(&mut send, &mut open, &tail);
    }
    let content = text;
    if open.is_none() && calls.is_empty() {
        open = Some(0);
        open_message(&mut send, &msg_id, 0);
    }
    if let Some(at) = open {
        let ids = json!({"item_id": msg_id, "output_index": at, "content_index": 0});
        let mut done = ids.clone();
        done["text"] = json!(content);
        send("response.output_text.done", done);
        let mut part = ids;
        part["part"] = rb::text_part(&content);
        send("response.content_part.done", part);
        let item = rb::message_item(&msg_id, Some(&content), "completed");
        send(
            "response.output_item.done",
            json!({"output_index": at, "item": item}),
        );
        output.push(item);
    }
    for c in &calls {
        let at = output.len();
        let done = call_done(c);
        let id = done["id"].clone();
        let mut added = done.clone();
        added["arguments"] = json!("");
        added["status"] = json!("in_progress");
        send(
            "response.output_item.added",
            json!({"output_index": at, "item": added}),
        );
        send(
            "response.function_call_arguments.delta",
            json!({"item_id": id, "output_index": at, "delta": c.arguments}),
        );
        send(
            "response.function_call_arguments.done",
            json!({"item_id": id, "output_index": at, "arguments": c.arguments}),
        );
        send(
            "response.output_item.done",
            json!({"output_index": at, "item": done}),
        );
        output.push(done);
    }
    let reason = if calls.is_empty() {
        reason
    } else {
        "tool_calls"
    };
    let (status, why) = status_of(reason);
    let r = meta.response(status, output, Some(&usage), why);
    let kind = if status == "completed" {
        "response.completed"
    } else {
        "response.incomplete"
    };
    send(kind, json!({"response": r}));
}

/// Opens the message item at `at` with its empty text part.
fn open_message(send: &mut dyn FnMut(&str, Value) -> bool, id: &str, at: usize) {
    send(
        "response.output_item.added",
        json!({"output_index": at, "item": rb::message_item(id, None, "in_progress")}),
    );
    send(
        "response.content_part.added",
        json!({"item_id": id, "output_index": at, "content_index": 0,
               "part": rb::text_part("")}),
    );
}
