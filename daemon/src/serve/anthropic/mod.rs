//! Anthropic's Messages API wire format (`/v1/messages`): the request read
//! into the chat request every API shares ([`messages_request`]), errors in
//! Anthropic's shape ([`AnthropicError`]), and the response and stream
//! event bodies ([`body`]).
//!
//! Read: `model` (any name: the served model answers, so a client set up
//! for another model name works), `max_tokens` (required), `system` (a
//! string or text blocks), `messages` (content a string or blocks: `text`,
//! `tool_use` from the assistant, `tool_result` from the user; `thinking`
//! blocks are skipped; images and documents are refused), `stop_sequences`,
//! `temperature` (0–1), `top_p`, `top_k`, `tools` (`name`, `description`,
//! `input_schema`), `tool_choice` (`auto`, `any`, `tool`, `none`, and
//! `disable_parallel_tool_use`), `stream`. `metadata`, `thinking` and
//! `service_tier` are accepted and ignored.

pub mod body;

use dwarfstar_tokenizer::ChatMessage;
use serde_json::{json, Map, Value};

use super::openai::fields::{field, opt_bool, opt_f32, opt_str, opt_uint, parse_object};
use super::openai::{ApiError, ChatRequest, Sampling};
use super::tools::{self, ToolSpec};

type Res<T> = Result<T, ApiError>;

/// An [`ApiError`] answered in Anthropic's shape:
/// `{"type": "error", "error": {"type", "message"}}`.
#[derive(Debug)]
pub struct AnthropicError(pub ApiError);

impl From<ApiError> for AnthropicError {
    fn from(e: ApiError) -> Self {
        AnthropicError(e)
    }
}

impl AnthropicError {
    /// Anthropic's error type for an HTTP status.
    pub fn kind(&self) -> &'static str {
        match self.0.status {
            400 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 => "overloaded_error",
            _ => "api_error",
        }
    }

    pub fn body(&self) -> Value {
        let msg = match &self.0.param {
            Some(p) => format!("{p}: {}", self.0.message),
            None => self.0.message.clone(),
        };
        json!({"type": "error", "error": {"type": self.kind(), "message": msg}})
    }
}

/// A `/v1/messages` request: the shared chat request and what only this
/// API needs.
#[derive(Debug)]
pub struct MessagesRequest {
    pub chat: ChatRequest,
    /// The model name as the client sent it (echoed back).
    pub model: String,
}

/// A content block list or string as text blocks only.
fn text_of(v: &Value, param: &str) -> Res<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut out = Vec::new();
            for (i, b) in blocks.iter().enumerate() {
                match (b.get("type").and_then(Value::as_str), b.get("text")) {
                    (Some("text"), Some(Value::String(t))) => out.push(t.as_str()),
                    _ => {
                        return Err(ApiError::invalid(
                            &format!("{param}[{i}]"),
                            "Expected a text block {\"type\": \"text\", \"text\": ...}.",
                        ))
                    }
                }
            }
            Ok(out.join("\n"))
        }
        _ => Err(ApiError::invalid(
            param,
            "Expected a string or an array of text blocks.",
        )),
    }
}

/// One message's content blocks into chat messages: `tool_result` blocks
/// become `tool` messages, `tool_use` blocks the assistant's tool calls.
fn message(role: &str, content: &Value, at: &str, out: &mut Vec<ChatMessage>) -> Res<()> {
    let blocks = match content {
        Value::String(s) => {
            out.push(ChatMessage::new(role, s.clone()));
            return Ok(());
        }
        Value::Array(b) => b,
        _ => {
            return Err(ApiError::invalid(
                &format!("{at}.content"),
                "`content` must be a string or an array of content blocks.",
            ))
        }
    };
    let mut text = Vec::new();
    let mut calls = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        let p = format!("{at}.content[{i}]");
        let Some(b) = b.as_object() else {
            return Err(ApiError::invalid(&p, "A content block must be an object."));
        };
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push(opt_str(b, "text")?.unwrap_or_default().to_string()),
            Some("thinking" | "redacted_thinking") => {}
            Some("tool_use") if role == "assistant" => {
                let name = opt_str(b, "name")?.ok_or_else(|| {
                    ApiError::invalid(&format!("{p}.name"), "`name` is required.")
                })?;
                let input = field(b, "input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": field(b, "id").cloned().unwrap_or(Value::Null),
                    "type": "function",
                    "function": {"name": name, "arguments": input},
                }));
            }
            Some("tool_result") if role == "user" => {
                let id = opt_str(b, "tool_use_id")?.ok_or_else(|| {
                    ApiError::invalid(&format!("{p}.tool_use_id"), "`tool_use_id` is required.")
                })?;
                let mut result = match field(b, "content") {
                    None => String::new(),
                    Some(c) => text_of(c, &format!("{p}.content"))?,
                };
                if opt_bool(b, "is_error")? == Some(true) {
                    result = format!("Error: {result}");
                }
                let mut m = ChatMessage::new("tool", result);
                m.tool_call_id = Some(id.to_string());
                out.push(m);
            }
            Some(kind @ ("tool_use" | "tool_result")) => {
                return Err(ApiError::invalid(
                    &p,
                    format!("A `{kind}` block cannot come from the {role}."),
                ))
            }
            Some(kind) => {
                return Err(ApiError::invalid_code(
                    &p,
                    "unsupported_parameter",
                    format!("Content blocks of type `{kind}` are not supported."),
                ))
            }
            None => return Err(ApiError::invalid(&p, "A content block needs a `type`.")),
        }
    }
    if !text.is_empty() || !calls.is_empty() {
        let mut m = ChatMessage::new(role, text.join("\n"));
        if !calls.is_empty() {
            m.tool_calls = Some(Value::Array(calls));
        }
        out.push(m);
    }
    Ok(())
}

/// `tools` and `tool_choice` as the shared tool spec.
fn tool_spec(o: &Map<String, Value>) -> Res<Option<ToolSpec>> {
    let Some(list) = field(o, "tools") else {
        return Ok(None);
    };
    let Some(list) = list.as_array() else {
        return Err(ApiError::invalid("tools", "`tools` must be an array."));
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let at = format!("tools[{i}]");
        let Some(t) = t.as_object() else {
            return Err(ApiError::invalid(&at, "A tool must be an object."));
        };
        match opt_str(t, "type")? {
            None | Some("custom") => {}
            Some(kind) => {
                return Err(ApiError::invalid_code(
                    &format!("{at}.type"),
                    "unsupported_parameter",
                    format!("Tools of type `{kind}` are not supported; give custom tools."),
                ))
            }
        }
        let schema = match field(t, "input_schema") {
            Some(s @ Value::Object(_)) => s.clone(),
            _ => {
                return Err(ApiError::invalid(
                    &format!("{at}.input_schema"),
                    "`input_schema` (a JSON Schema object) is required.",
                ))
            }
        };
        let mut f = json!({"name": field(t, "name").cloned().unwrap_or(Value::Null),
                           "parameters": schema});
        if let Some(d) = opt_str(t, "description")? {
            f["description"] = json!(d);
        }
        out.push(json!({"type": "function", "function": f}));
    }
    let mut oai = Map::new();
    oai.insert("tools".into(), Value::Array(out));
    if let Some(tc) = field(o, "tool_choice") {
        let bad = || {
            ApiError::invalid(
                "tool_choice",
                "`tool_choice` must be {\"type\": \"auto\" | \"any\" | \"none\"} or \
                 {\"type\": \"tool\", \"name\": ...}.",
            )
        };
        let tc = tc.as_object().ok_or_else(bad)?;
        let choice = match tc.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => match tc.get("name").and_then(Value::as_str) {
                Some(n) => json!({"type": "function", "function": {"name": n}}),
                None => return Err(bad()),
            },
            _ => return Err(bad()),
        };
        oai.insert("tool_choice".into(), choice);
        if let Some(d) = opt_bool(tc, "disable_parallel_tool_use").map_err(|_| {
            ApiError::invalid("tool_choice.disable_parallel_tool_use", "must be a boolean")
        })? {
            oai.insert("parallel_tool_calls".into(), json!(!d));
        }
    }
    let spec = tools::tool_spec(&oai).map_err(|e| ApiError {
        // The shared reader names OpenAI's fields; name ours.
        param: e.param.map(|p| p.replace(".function.name", ".name")),
        ..e
    })?;
    Ok(spec)
}

/// Parses and checks a `/v1/messages` (or, without `max_tokens`, a
/// `count_tokens`) body.
pub fn messages_request(body: &[u8], count_only: bool) -> Res<MessagesRequest> {
    let o = parse_object(body)?;
    let model = opt_str(&o, "model")?.unwrap_or_default().to_string();
    let max_tokens = opt_uint(&o, "max_tokens", 1)?;
    if max_tokens.is_none() && !count_only {
        return Err(ApiError::invalid("max_tokens", "`max_tokens` is required."));
    }
    let stop = match field(&o, "stop_sequences") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::invalid("stop_sequences", "`stop_sequences` must hold strings.")
                })
            })
            .collect::<Res<_>>()?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stop_sequences",
                "`stop_sequences` must be an array of strings.",
            ))
        }
    };
    let sampling = Sampling {
        temperature: opt_f32(&o, "temperature", 0.0, 1.0)?.unwrap_or(1.0),
        top_p: opt_f32(&o, "top_p", 0.0, 1.0)?.unwrap_or(1.0),
        top_k: opt_uint(&o, "top_k", 0)?.unwrap_or(0).min(u32::MAX as u64) as usize,
        max_tokens,
        stop,
        stream: opt_bool(&o, "stream")?.unwrap_or(false),
        ..Sampling::default()
    };
    let mut messages = Vec::new();
    if let Some(s) = field(&o, "system") {
        messages.push(ChatMessage::new("system", text_of(s, "system")?));
    }
    let msgs = match field(&o, "messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must not be empty.",
            ))
        }
        None => return Err(ApiError::invalid("messages", "`messages` is required.")),
        Some(_) => {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must be an array.",
            ))
        }
    };
    for (i, m) in msgs.iter().enumerate() {
        let at = format!("messages[{i}]");
        let Some(m) = m.as_object() else {
            return Err(ApiError::invalid(&at, "Each message must be an object."));
        };
        let role = match m.get("role").and_then(Value::as_str) {
            Some(r @ ("user" | "assistant")) => r,
            // Claude Code sends system notes among the turns; templates
            // take one system prompt at the start, so they join it.
            Some("system") => {
                let text = text_of(m.get("content").unwrap_or(&Value::Null), &at)?;
                match messages.first_mut() {
                    Some(s) if s.role == "system" => {
                        s.content.push_str("\n\n");
                        s.content.push_str(&text);
                    }
                    _ => messages.insert(0, ChatMessage::new("system", text)),
                }
                continue;
            }
            _ => {
                return Err(ApiError::invalid(
                    &format!("{at}.role"),
                    "`role` must be `user`, `assistant` or `system`.",
                ))
            }
        };
        let content = m.get("content").unwrap_or(&Value::Null);
        message(role, content, &at, &mut messages)?;
    }
    Ok(MessagesRequest {
        chat: ChatRequest {
            model: None,
            messages,
            sampling,
            tools: tool_spec(&o)?,
        },
        model,
    })
}

#[cfg(test)]
mod tests;
