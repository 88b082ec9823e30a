//! OpenAI's `/v1/embeddings`: the inputs tokenized (a text's with the
//! model's start token, as llama.cpp does), checked against the vocabulary
//! and the context, and queued for the engine, which pools each into one
//! unit vector (see [`crate::serve::scheduler::EmbedRequest`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use serde_json::Value;
use tokio::sync::oneshot;

use super::super::openai::embeddings::{embeddings_request, embeddings_response, Input};
use super::super::openai::ApiError;
use super::super::scheduler::{EmbedRequest, SubmitError};
use super::{blocking, body, AppState};

pub(super) async fn embeddings(
    State(st): State<Arc<AppState>>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let req = embeddings_request(&body(&st, b)?)?;
    let e = st.engine_for(req.model.as_deref())?;
    let tok = e.tok.clone();
    let inputs = req.inputs;
    let tokens = blocking(move || {
        inputs
            .into_iter()
            .map(|i| match i {
                Input::Text(s) => tok.encode(&s, true, false).map_err(|e| e.to_string()),
                Input::Tokens(t) => Ok(t),
            })
            .collect::<Result<Vec<Vec<u32>>, String>>()
    })
    .await?
    .map_err(|e| ApiError::invalid("input", format!("An input could not be tokenized: {e}")))?;
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return Err(ApiError::invalid(
                "input",
                format!("Input {i} has no tokens."),
            ));
        }
        if let Some(bad) = t.iter().find(|&&t| t as usize >= e.n_vocab) {
            return Err(ApiError::invalid(
                "input",
                format!("Token {bad} is outside the vocabulary of {}.", e.n_vocab),
            ));
        }
        if t.len() > e.ctx_size {
            return Err(ApiError::invalid_code(
                "input",
                "context_length_exceeded",
                format!(
                    "Input {i} has {} tokens; this server's context is {}.",
                    t.len(),
                    e.ctx_size
                ),
            ));
        }
    }
    let prompt_tokens = tokens.iter().map(Vec::len).sum();
    let (tx, rx) = oneshot::channel();
    e.submit
        .embed(EmbedRequest {
            inputs: tokens,
            reply: tx,
        })
        .map_err(|e| match e {
            SubmitError::Full => ApiError::queue_full(),
            SubmitError::Closed => ApiError::unavailable("The engine has stopped."),
        })?;
    let vectors = rx
        .await
        .map_err(|_| ApiError::internal("the engine dropped the request"))?
        .map_err(ApiError::internal)?;
    let width = vectors.first().map_or(0, Vec::len);
    if let Some(d) = req.dimensions {
        if d != width as u64 {
            return Err(ApiError::invalid(
                "dimensions",
                format!("This model's embeddings have {width} dimensions; `dimensions` can only be {width}."),
            ));
        }
    }
    Ok(Json(embeddings_response(
        &e.model_name,
        &vectors,
        req.base64,
        prompt_tokens,
    )))
}
