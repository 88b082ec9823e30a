//! The HTTP routes: OpenAI's `/v1/models`, `/v1/chat/completions` and
//! `/v1/completions` ([`generate`]), Anthropic's `/v1/messages` and
//! `/v1/messages/count_tokens` ([`messages`]), OpenAI's `/v1/responses`
//! ([`responses`]), whole or streamed as
//! server-sent events, all over one generation path ([`run`]);
//! `/v1/embeddings` ([`embeddings`]);
//! `/v1/status` for the chat page, `/health`, `/metrics`, and the page
//! itself at `/`.
//!
//! Each API request has an id: the client's `x-request-id` when given,
//! else its response's id. It is echoed in the `x-request-id` response
//! header and travels with the request's sequences, so the coordinator's
//! and every stage's log lines `request <id>: seq N ...` can be joined.
//!
//! `/v1/*` needs a key when keys are configured: `Authorization: Bearer
//! KEY` or Anthropic's `x-api-key: KEY` (the same keys). Errors under
//! `/v1/messages` come in Anthropic's shape, the rest in OpenAI's.

mod embeddings;
mod generate;
mod messages;
mod responses;
mod run;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::config::LimitsConfig;
use super::engine::{Engine, Engines};
use super::metrics::Metrics;
use super::openai::ApiError;

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
        .route("/v1/chat/completions", post(generate::chat))
        .route("/v1/completions", post(generate::completions))
        .route("/v1/responses", post(responses::responses))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/messages", post(messages::messages))
        .route("/v1/messages/count_tokens", post(messages::count_tokens))
        .route("/v1/status", get(status))
        .route_layer(middleware::from_fn(echo_request_id))
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
        "/v1/responses" => "/v1/responses",
        "/v1/embeddings" => "/v1/embeddings",
        "/v1/messages" => "/v1/messages",
        "/v1/messages/count_tokens" => "/v1/messages/count_tokens",
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

/// The client's `x-request-id`, fit for a log line; None when absent.
pub(super) fn client_request_id(h: &HeaderMap) -> Option<Arc<str>> {
    h.get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::node::frames::request_id)
}

const REQUEST_ID: &str = "x-request-id";

/// `r` with `id` in its `x-request-id` header.
pub(super) fn with_request_id(mut r: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(id) {
        r.headers_mut().insert(REQUEST_ID, v);
    }
    r
}

/// Answers carry the client's `x-request-id` back, errors included (a
/// handler that made up the id from its response id set it already).
async fn echo_request_id(req: Request, next: Next) -> Response {
    let given = client_request_id(req.headers());
    let resp = next.run(req).await;
    match given {
        Some(id) if !resp.headers().contains_key(REQUEST_ID) => with_request_id(resp, &id),
        _ => resp,
    }
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
    let h = req.headers();
    let given = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| h.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim);
    let err = match given {
        Some(k) if st.keys.iter().any(|key| same_key(key, k)) => return next.run(req).await,
        Some(_) => ApiError::unauthorized("Incorrect API key provided."),
        None => ApiError::unauthorized(
            "You didn't provide an API key. Send it in an Authorization header \
             (`Authorization: Bearer KEY`) or as `x-api-key: KEY`.",
        ),
    };
    if req.uri().path().starts_with("/v1/messages") {
        super::anthropic::AnthropicError(err).into_response()
    } else {
        err.into_response()
    }
}

async fn fallback(req: Request) -> ApiError {
    ApiError::not_found(req.uri().path())
}

async fn page() -> Html<&'static str> {
    Html(include_str!("../page.html"))
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
    pub(super) fn engine_for(&self, model: Option<&str>) -> Result<Arc<Engine>, ApiError> {
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
pub(super) fn body(st: &AppState, b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
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
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("tokenizer task failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

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
