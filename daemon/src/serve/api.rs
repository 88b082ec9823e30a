//! The HTTP routes: OpenAI's `/v1/models`, `/v1/chat/completions` and
//! `/v1/completions` (whole or streamed as server-sent events), `/v1/status`
//! for the chat page, `/health`, `/metrics`, and the page itself at `/`.
//!
//! `/v1/*` needs `Authorization: Bearer KEY` when keys are configured. Each
//! generation request is tokenized off the runtime, queued for the engine
//! (429 when the queue is full), and its tokens are turned into text here:
//! UTF-8 pieces and stop strings. A request that sees a stop string, or
//! whose client goes away, drops its receiver, which ends its sequence at
//! the engine's next step.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dwarfstar_model::generate::StopScan;
use dwarfstar_model::SamplerConfig;
use dwarfstar_tokenizer::Tokenizer;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::config::LimitsConfig;
use super::engine::{Engine, Engines};
use super::grammar::{Constraint, Grammar};
use super::metrics::Metrics;
use super::openai::{self, ApiError, Envelope, Kind, Prompt, Sampling, Usage};
use super::scheduler::{Event, Finish, GenRequest, SubmitError};
use super::tools::{self, render, Family};

/// Tool calls to look for in a chat answer.
struct ToolMode {
    family: Family,
    names: Vec<String>,
}

/// What every handler shares.
pub struct AppState {
    /// The model served now (`meshctl load` may swap it).
    pub engines: Arc<Engines>,
    pub metrics: Arc<Metrics>,
    pub keys: Vec<String>,
    pub max_body_bytes: usize,
    pub limits: LimitsConfig,
    /// Unix time the server started (the model's `created`).
    pub created: u64,
    /// In a mesh: the mesh's status, shown under `mesh` in `/v1/status`.
    pub mesh: Option<Arc<crate::node::mesh_api::MeshNode>>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.body())).into_response()
    }
}

/// Every route, with auth on `/v1/*`, the body limit and request counting.
pub fn router(st: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/status", get(status))
        .route_layer(middleware::from_fn_with_state(st.clone(), auth));
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(v1)
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(st.max_body_bytes))
        .layer(middleware::from_fn_with_state(st.clone(), count))
        .with_state(st)
}

/// The label `/metrics` counts a path under (a bounded set).
fn endpoint(path: &str) -> &'static str {
    match path {
        "/" => "/",
        "/health" => "/health",
        "/metrics" => "/metrics",
        "/v1/models" => "/v1/models",
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/completions" => "/v1/completions",
        "/v1/status" => "/v1/status",
        p if p.starts_with("/v1/models/") => "/v1/models/{id}",
        _ => "other",
    }
}

async fn count(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let ep = endpoint(req.uri().path());
    let resp = next.run(req).await;
    st.metrics.request(ep, resp.status().as_u16());
    resp
}

/// Compares without stopping at the first differing byte.
fn same_key(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if st.keys.is_empty() {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(k) if st.keys.iter().any(|key| same_key(key, k)) => next.run(req).await,
        Some(_) => ApiError::unauthorized("Incorrect API key provided.").into_response(),
        None => ApiError::unauthorized(
            "You didn't provide an API key. Send it in an Authorization header: `Authorization: Bearer KEY`.",
        )
        .into_response(),
    }
}

async fn fallback(req: Request) -> ApiError {
    ApiError::not_found(req.uri().path())
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let mut text = st.metrics.render();
    // The weights: this node's share in a mesh, else the served model's.
    let store = match &st.mesh {
        Some(node) => node.store_stats(),
        None => st.engines.get().map(|e| e.node.store_stats()),
    };
    if let Some(s) = store {
        text.push_str(&super::metrics::render_store(&s));
    }
    if st.mesh.is_some() {
        text.push_str(&super::metrics::render_peers(
            &crate::node::traffic::per_peer(),
        ));
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

impl AppState {
    fn model_object(&self, e: &Engine) -> Value {
        json!({
            "id": e.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "dwarfstar",
            "meta": {"arch": e.arch, "n_ctx": e.ctx_size, "n_vocab": e.n_vocab},
        })
    }

    /// The engine in force, for a request naming `model`: 404 when it
    /// names another (naming none is allowed), 503 when none is served.
    fn engine_for(&self, model: Option<&str>) -> Result<Arc<Engine>, ApiError> {
        let Some(e) = self.engines.get() else {
            return Err(ApiError::unavailable(
                "This node serves no model now. Load one with `meshctl load MODEL`, or send \
                 requests to the mesh's coordinator (its address is in /v1/status).",
            ));
        };
        match model {
            Some(m) if m != e.model_name => Err(ApiError::model_not_found(m)),
            _ => Ok(e),
        }
    }
}

async fn models(State(st): State<Arc<AppState>>) -> Json<Value> {
    let data: Vec<Value> = st
        .engines
        .get()
        .map(|e| st.model_object(&e))
        .into_iter()
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn model(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let e = match st.engine_for(Some(&id)) {
        Err(e) if e.status == 503 => return Err(ApiError::model_not_found(&id)),
        r => r?,
    };
    Ok(Json(st.model_object(&e)))
}

async fn status(State(st): State<Arc<AppState>>) -> Json<Value> {
    use crate::node::grpc::NodeApi;
    use std::sync::atomic::Ordering::Relaxed;
    let mesh = match &st.mesh {
        Some(node) => match node.status().await {
            Ok(r) => crate::node::mesh_api::status_json(&r),
            Err(e) => json!({ "error": e.to_string() }),
        },
        None => Value::Null,
    };
    let m = &st.metrics;
    let e = st.engines.get();
    Json(json!({
        "mesh": mesh,
        "model": e.as_ref().map(|e| e.model_name.clone()),
        "arch": e.as_ref().map(|e| e.arch.clone()),
        "ctx_size": e.as_ref().map(|e| e.ctx_size),
        "max_batch": st.limits.max_batch,
        "queue_capacity": st.limits.queue,
        "uptime_s": m.uptime().as_secs_f64(),
        "active_sequences": m.active.load(Relaxed),
        "queue_depth": m.queue_depth.load(Relaxed),
        "tokens_per_second": m.tokens_per_second(),
        "generated_tokens": m.generated_tokens.load(Relaxed),
        "requests": m.requests_total(),
        "prefix_cache": {
            "hits": m.prefix_hits.load(Relaxed),
            "misses": m.prefix_misses.load(Relaxed),
            "entries": m.prefix_entries.load(Relaxed),
            "bytes": m.prefix_bytes.load(Relaxed),
        },
        "speculation": {
            "drafted": m.spec_drafted.load(Relaxed),
            "accepted": m.spec_accepted.load(Relaxed),
            "acceptance_rate": m.acceptance_rate(),
        },
    }))
}

/// The body, or the error its reading gave (413 past the limit).
fn body(st: &AppState, b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!(
                "The body is larger than this server's limit of {} bytes.",
                st.max_body_bytes
            ))
        } else {
            ApiError {
                status: r.status().as_u16(),
                ..ApiError::invalid("", r.body_text())
            }
        }
    })
}

/// Runs tokenizer work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("tokenizer task failed: {e}")))
}

async fn chat(
    State(st): State<Arc<AppState>>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let req = openai::chat_request(&body(&st, b)?)?;
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
    generate(st, e, Kind::Chat, prompt, sampling, received, mode).await
}

async fn completions(
    State(st): State<Arc<AppState>>,
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
    generate(st, e, Kind::Text, prompt, req.sampling, received, None).await
}

/// Queues a tokenized prompt and answers with the whole result or a stream.
async fn generate(
    st: Arc<AppState>,
    e: Arc<Engine>,
    kind: Kind,
    prompt: Vec<u32>,
    s: Sampling,
    received: Instant,
    mode: Option<ToolMode>,
) -> Result<Response, ApiError> {
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
    let constraint = match &s.grammar {
        None => None,
        Some(g) => {
            let g = Grammar::parse(g).map_err(|e| ApiError::invalid("grammar", e.to_string()))?;
            let trie = {
                let e = e.clone();
                blocking(move || e.token_trie()).await?
            };
            Some(Constraint::new(Arc::new(g), trie))
        }
    };
    // Output checked by a grammar or parsed for calls is text as the
    // model wrote it, special tokens included.
    let render_special = constraint.is_some() || mode.is_some();
    let (tx, rx) = unbounded_channel();
    e.submit
        .submit(GenRequest {
            prompt,
            max_tokens,
            sampler: SamplerConfig {
                temperature: s.temperature,
                top_k: s.top_k,
                top_p: s.top_p,
                min_p: s.min_p,
                repeat_penalty: s.repeat_penalty,
                repeat_last_n: 64,
                seed,
            },
            presence_penalty: s.presence_penalty,
            frequency_penalty: s.frequency_penalty,
            ignore_eos: s.ignore_eos,
            constraint,
            events: tx,
        })
        .map_err(|e| match e {
            SubmitError::Full => ApiError::queue_full(),
            SubmitError::Closed => ApiError::unavailable("The engine has stopped."),
        })?;
    let env = Envelope::new(kind, &e.model_name);
    let job = Job {
        rx,
        tok: e.tok.clone(),
        stops: s.stop,
        ignore_eos: s.ignore_eos,
        render_special,
        received,
        metrics: st.metrics.clone(),
        prompt_tokens: n,
    };
    if s.stream {
        let (sse_tx, sse_rx) = unbounded_channel();
        tokio::spawn(stream(job, env, s.include_usage, mode, sse_tx));
        let events = futures_util::stream::unfold(sse_rx, |mut rx| async move {
            rx.recv().await.map(|e| (Ok::<SseEvent, Infallible>(e), rx))
        });
        return Ok(Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let mut text = String::new();
    match consume(job, |o| {
        if let Out::Text(t) = o {
            text.push_str(&t);
        }
        true
    })
    .await
    {
        End::Finished { reason, usage } => {
            if let Some(m) = &mode {
                let names: Vec<&str> = m.names.iter().map(String::as_str).collect();
                let p = tools::parse::parse(&text, m.family, &names);
                if !p.calls.is_empty() {
                    let ids: Vec<String> = p.calls.iter().map(|_| tools::call_id()).collect();
                    return Ok(
                        Json(env.whole_calls(&p.content, &p.calls, &ids, usage)).into_response()
                    );
                }
            }
            Ok(Json(env.whole(&text, reason, usage)).into_response())
        }
        End::Failed(e) => Err(ApiError::internal(e)),
        End::Gone => Err(ApiError::internal("the request was dropped")),
    }
}

/// One request's side of the engine's stream.
struct Job {
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

/// What [`consume`] passes on as it goes.
enum Out {
    /// The engine admitted the request.
    Started,
    Text(String),
}

/// How [`consume`] ended.
enum End {
    Finished {
        reason: &'static str,
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

/// Turns the engine's events into text, holding back what may start a stop
/// string, until the sequence ends; `emit` returns false when nobody listens.
/// Returning drops the receiver, which ends the sequence if it still runs.
async fn consume(job: Job, mut emit: impl FnMut(Out) -> bool) -> End {
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
    let mut usage = Usage {
        prompt_tokens,
        completion_tokens: 0,
        cached_tokens: 0,
    };
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
            Event::Token(id) => {
                if usage.completion_tokens == 0 {
                    metrics.ttft(received.elapsed());
                }
                usage.completion_tokens += 1;
                if tok.is_eog(id) && !ignore_eos {
                    continue; // its Done follows
                }
                pending.extend_from_slice(&tok.piece(id, render_special));
                let (text, stopped) = scan.push(&take_utf8(&mut pending));
                if !text.is_empty() && !emit(Out::Text(text)) {
                    return End::Gone;
                }
                if stopped {
                    return End::Finished {
                        reason: "stop",
                        usage,
                    };
                }
            }
            Event::Done(f) => {
                let rest = String::from_utf8_lossy(&pending).into_owned();
                let (mut text, stopped) = scan.push(&rest);
                if !stopped {
                    text.push_str(&scan.flush());
                }
                if !text.is_empty() && !emit(Out::Text(text)) {
                    return End::Gone;
                }
                let reason = match f {
                    _ if stopped => "stop",
                    Finish::Stop => "stop",
                    Finish::Length => "length",
                };
                return End::Finished { reason, usage };
            }
            Event::Failed(e) => return End::Failed(e),
        }
    }
}

/// Feeds one streamed response: chunks as text comes, then the finish
/// chunk, the usage chunk if asked, and `[DONE]`. With tools, the text is
/// held to the end and sent as content or as `tool_calls` deltas (each
/// call's id, type and name, then its arguments), as OpenAI streams them.
async fn stream(
    job: Job,
    env: Envelope,
    include_usage: bool,
    mode: Option<ToolMode>,
    tx: UnboundedSender<SseEvent>,
) {
    let send = |v: Value| tx.send(SseEvent::default().data(v.to_string())).is_ok();
    let mut first = true;
    let mut held = String::new();
    let hold = mode.is_some();
    let end = consume(job, |o| match o {
        Out::Started if env.kind == Kind::Chat => {
            first = false;
            send(env.chunk(Some(""), true, None))
        }
        Out::Started => true,
        Out::Text(t) if hold => {
            held.push_str(&t);
            !tx.is_closed()
        }
        Out::Text(t) => {
            let c = env.chunk(Some(&t), first, None);
            first = false;
            send(c)
        }
    })
    .await;
    match end {
        End::Finished { mut reason, usage } => {
            if let Some(m) = &mode {
                let names: Vec<&str> = m.names.iter().map(String::as_str).collect();
                let p = tools::parse::parse(&held, m.family, &names);
                if p.calls.is_empty() {
                    if !held.is_empty() {
                        send(env.chunk(Some(&held), false, None));
                    }
                } else {
                    if !p.content.is_empty() {
                        send(env.chunk(Some(&p.content), false, None));
                    }
                    for (i, c) in p.calls.iter().enumerate() {
                        send(env.delta_chunk(
                            json!({"tool_calls": [{"index": i, "id": tools::call_id(),
                                "type": "function",
                                "function": {"name": c.name, "arguments": ""}}]}),
                            None,
                        ));
                        send(env.delta_chunk(
                            json!({"tool_calls": [{"index": i,
                                "function": {"arguments": c.arguments}}]}),
                            None,
                        ));
                    }
                    reason = "tool_calls";
                }
            }
            send(env.chunk(None, false, Some(reason)));
            if include_usage {
                send(env.usage_chunk(usage));
            }
        }
        End::Failed(e) => {
            send(ApiError::internal(e).body());
        }
        End::Gone => return,
    }
    let _ = tx.send(SseEvent::default().data("[DONE]"));
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
    fn endpoint_labels_are_bounded() {
        assert_eq!(endpoint("/v1/models/abc"), "/v1/models/{id}");
        assert_eq!(endpoint("/v1/chat/completions"), "/v1/chat/completions");
        assert_eq!(endpoint("/random/path"), "other");
    }

    #[test]
    fn keys_compare_exactly() {
        assert!(same_key("abc", "abc"));
        assert!(!same_key("abc", "abd"));
        assert!(!same_key("abc", "ab"));
    }
}
