//! OpenAI's wire format: the error object ([`ApiError`], which every
//! route answers with), request bodies parsed and checked field by field
//! ([`params`]: an error names the offending `param`), and the response and
//! stream-chunk bodies of chat and text completions ([`response`]);
//! `/v1/embeddings`' bodies ([`embeddings`]).
//!
//! Accepted sampling fields: `temperature` (0–2, default 1), `top_p` (0–1,
//! default 1), `max_tokens` / `max_completion_tokens`, `stop` (string or up
//! to 16 strings), `seed`, `n` (1–8; choice i samples with seed + i),
//! `presence_penalty` and `frequency_penalty` (−2–2, over the generated
//! tokens), `logprobs` / `top_logprobs` (chat: a boolean and 0–20;
//! completions: an integer 0–5), `stream`, `stream_options.include_usage`;
//! llama.cpp's extensions `top_k`, `min_p`, `repeat_penalty` and
//! `ignore_eos`; constrained output through `grammar` (GBNF, both
//! endpoints) and, for chat, `response_format` (`json_object`,
//! `json_schema`); chat's `tools`, `tool_choice` and `parallel_tool_calls`
//! (see [`super::tools`]). Unknown fields are ignored; features this server
//! lacks (images, `echo`, `suffix`, `best_of`) are refused.
//! A `max_tokens` larger than the room left in the context (or than
//! `[limits] max_tokens`) is clamped, not refused: the answer then ends
//! with `finish_reason: "length"`. Non-integers and values below 1 are 400.

pub mod embeddings;
pub mod fields;
pub mod params;
pub mod response;

use serde_json::{json, Value};

pub use params::{chat_request, completion_request, ChatRequest, Prompt, Sampling};
pub use response::{
    at_choice, chat_logprobs, merge_choices, text_logprobs, Envelope, Kind, LpToken, Usage,
};

/// An error as OpenAI shapes it: `{"error": {message, type, param, code}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    fn new(
        status: u16,
        kind: &'static str,
        code: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code,
        }
    }

    /// 400: the request is wrong; `param` names the field.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        let mut e = ApiError::new(400, "invalid_request_error", None, message);
        if !param.is_empty() {
            e.param = Some(param.to_string());
        }
        e
    }

    /// 400 with a code.
    pub fn invalid_code(param: &str, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code: Some(code),
            ..ApiError::invalid(param, message)
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(
            401,
            "invalid_request_error",
            Some("invalid_api_key"),
            message,
        )
    }

    pub fn model_not_found(model: &str) -> Self {
        ApiError {
            param: Some("model".into()),
            ..ApiError::new(
                404,
                "invalid_request_error",
                Some("model_not_found"),
                format!("The model `{model}` does not exist."),
            )
        }
    }

    pub fn not_found(path: &str) -> Self {
        ApiError::new(
            404,
            "invalid_request_error",
            Some("not_found"),
            format!("No route for {path}."),
        )
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        ApiError::new(
            413,
            "invalid_request_error",
            Some("request_too_large"),
            message,
        )
    }

    pub fn queue_full() -> Self {
        ApiError::new(
            429,
            "rate_limit_error",
            Some("rate_limit_exceeded"),
            "The server's request queue is full; retry later.",
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(503, "server_error", Some("service_unavailable"), message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(500, "server_error", None, message)
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

#[cfg(test)]
mod tests;
