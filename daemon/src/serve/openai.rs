//! OpenAI's wire format: request bodies parsed and checked field by field
//! (so an error names the offending `param`), the error object, and the
//! response and stream-chunk bodies of chat and text completions.
//!
//! Accepted sampling fields: `temperature` (0–2, default 1), `top_p` (0–1,
//! default 1), `max_tokens` / `max_completion_tokens`, `stop` (string or up
//! to 16 strings), `seed`, `n` (1 only), `presence_penalty` and
//! `frequency_penalty` (−2–2, over the generated tokens), `stream`,
//! `stream_options.include_usage`; llama.cpp's extensions `top_k`, `min_p`,
//! `repeat_penalty` and `ignore_eos`; constrained output through `grammar`
//! (GBNF, both endpoints) and, for chat, `response_format` (`json_object`,
//! `json_schema`); chat's `tools`, `tool_choice` and `parallel_tool_calls`
//! (see [`super::tools`]). Unknown fields are ignored; features this server
//! lacks (`logprobs`, images) are refused.
//! A `max_tokens` larger than the room left in the context (or than
//! `[limits] max_tokens`) is clamped, not refused: the answer then ends
//! with `finish_reason: "length"`. Non-integers and values below 1 are 400.

use dwarfstar_tokenizer::ChatMessage;
use serde_json::{json, Map, Value};

use super::grammar::{schema, Grammar};
use super::tools::{self, ToolCall, ToolSpec};

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

type Res<T> = std::result::Result<T, ApiError>;

/// Sampling and stopping, common to both endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub seed: Option<u64>,
    pub max_tokens: Option<u64>,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    pub stream: bool,
    pub include_usage: bool,
    /// GBNF the output must follow (`grammar`, or chat's `response_format`),
    /// already checked to compile.
    pub grammar: Option<String>,
}

/// A `/v1/chat/completions` request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub sampling: Sampling,
    pub tools: Option<ToolSpec>,
}

/// What `/v1/completions` continues.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

/// A `/v1/completions` request.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Prompt,
    pub sampling: Sampling,
}

/// Parses a body into a JSON object.
pub fn parse_object(body: &[u8]) -> Res<Map<String, Value>> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("", format!("The body is not valid JSON: {e}")))?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::invalid("", "The body must be a JSON object.")),
    }
}

/// `o[name]`, with JSON null read as absent.
fn field<'a>(o: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    o.get(name).filter(|v| !v.is_null())
}

fn opt_f32(o: &Map<String, Value>, name: &str, lo: f32, hi: f32) -> Res<Option<f32>> {
    let Some(v) = field(o, name) else {
        return Ok(None);
    };
    let x = v
        .as_f64()
        .ok_or_else(|| ApiError::invalid(name, format!("`{name}` must be a number, got {v}.")))?;
    if !(lo as f64..=hi as f64).contains(&x) {
        return Err(ApiError::invalid(
            name,
            format!("`{name}` must be between {lo} and {hi}, got {x}."),
        ));
    }
    Ok(Some(x as f32))
}

fn opt_uint(o: &Map<String, Value>, name: &str, min: u64) -> Res<Option<u64>> {
    let Some(v) = field(o, name) else {
        return Ok(None);
    };
    let x = v.as_u64().ok_or_else(|| {
        ApiError::invalid(
            name,
            format!("`{name}` must be an integer of at least {min}, got {v}."),
        )
    })?;
    if x < min {
        return Err(ApiError::invalid(
            name,
            format!("`{name}` must be at least {min}, got {x}."),
        ));
    }
    Ok(Some(x))
}

fn opt_bool(o: &Map<String, Value>, name: &str) -> Res<Option<bool>> {
    let Some(v) = field(o, name) else {
        return Ok(None);
    };
    v.as_bool()
        .map(Some)
        .ok_or_else(|| ApiError::invalid(name, format!("`{name}` must be a boolean, got {v}.")))
}

fn opt_str<'a>(o: &'a Map<String, Value>, name: &str) -> Res<Option<&'a str>> {
    let Some(v) = field(o, name) else {
        return Ok(None);
    };
    v.as_str()
        .map(Some)
        .ok_or_else(|| ApiError::invalid(name, format!("`{name}` must be a string, got {v}.")))
}

/// Refuses a field that asks for something this server does not do.
fn refuse_if(
    o: &Map<String, Value>,
    name: &str,
    on: impl Fn(&Value) -> bool,
    what: &str,
) -> Res<()> {
    match field(o, name) {
        Some(v) if on(v) => Err(ApiError::invalid_code(
            name,
            "unsupported_parameter",
            format!("{what} is not supported by this server."),
        )),
        _ => Ok(()),
    }
}

fn sampling(o: &Map<String, Value>) -> Res<Sampling> {
    if let Some(n) = opt_uint(o, "n", 1)? {
        if n != 1 {
            return Err(ApiError::invalid_code(
                "n",
                "unsupported_parameter",
                "Only `n` = 1 is supported.",
            ));
        }
    }
    refuse_if(o, "logprobs", |v| v != &Value::Bool(false), "`logprobs`")?;
    refuse_if(o, "best_of", |v| v.as_u64() != Some(1), "`best_of` > 1")?;
    refuse_if(o, "echo", |v| v != &Value::Bool(false), "`echo`")?;
    refuse_if(o, "suffix", |_| true, "`suffix`")?;
    let stop = match field(o, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= 16 => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::invalid("stop", "`stop` must hold strings only."))
            })
            .collect::<Res<_>>()?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "`stop` must be a string or an array of at most 16 strings.",
            ))
        }
    };
    let include_usage = match field(o, "stream_options") {
        None => false,
        Some(Value::Object(so)) => opt_bool(so, "include_usage")
            .map_err(|e| ApiError {
                param: Some("stream_options.include_usage".into()),
                ..e
            })?
            .unwrap_or(false),
        Some(_) => {
            return Err(ApiError::invalid(
                "stream_options",
                "`stream_options` must be an object.",
            ))
        }
    };
    let seed = match field(o, "seed") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .or_else(|| v.as_i64().map(|i| i as u64))
                .ok_or_else(|| {
                    ApiError::invalid("seed", format!("`seed` must be an integer, got {v}."))
                })?,
        ),
    };
    let max_tokens = match opt_uint(o, "max_completion_tokens", 1)? {
        Some(n) => Some(n),
        None => opt_uint(o, "max_tokens", 1)?,
    };
    Ok(Sampling {
        temperature: opt_f32(o, "temperature", 0.0, 2.0)?.unwrap_or(1.0),
        top_p: opt_f32(o, "top_p", 0.0, 1.0)?.unwrap_or(1.0),
        top_k: opt_uint(o, "top_k", 0)?.unwrap_or(0).min(u32::MAX as u64) as usize,
        min_p: opt_f32(o, "min_p", 0.0, 1.0)?.unwrap_or(0.0),
        repeat_penalty: opt_f32(o, "repeat_penalty", 0.0, 10.0)?.unwrap_or(1.0),
        presence_penalty: opt_f32(o, "presence_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        frequency_penalty: opt_f32(o, "frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        seed,
        max_tokens,
        stop,
        ignore_eos: opt_bool(o, "ignore_eos")?.unwrap_or(false),
        stream: opt_bool(o, "stream")?.unwrap_or(false),
        include_usage,
        grammar: match opt_str(o, "grammar")? {
            None => None,
            Some(g) => Some(checked_grammar("grammar", g.to_string())?),
        },
    })
}

/// `g` if it compiles, else a 400 naming `param`.
fn checked_grammar(param: &str, g: String) -> Res<String> {
    Grammar::parse(&g)
        .map_err(|e| ApiError::invalid(param, format!("The grammar is not usable: {e}.")))?;
    Ok(g)
}

/// `response_format`: none for text, else the grammar it asks for.
fn response_format(o: &Map<String, Value>) -> Res<Option<String>> {
    let Some(rf) = field(o, "response_format") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::invalid(
            "response_format",
            "`response_format` must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or \
             {\"type\": \"json_schema\", \"json_schema\": {\"name\": ..., \"schema\": {...}}}.",
        )
    };
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(schema::json_object())),
        Some("json_schema") => {
            let js = rf
                .get("json_schema")
                .and_then(Value::as_object)
                .ok_or_else(bad)?;
            if js.get("name").and_then(Value::as_str).is_none() {
                return Err(ApiError::invalid(
                    "response_format.json_schema.name",
                    "`json_schema.name` is required.",
                ));
            }
            let sc = js
                .get("schema")
                .cloned()
                .unwrap_or(json!({"type": "object"}));
            let g = schema::grammar(&sc).map_err(|e| {
                ApiError::invalid_code(
                    "response_format.json_schema.schema",
                    "unsupported_parameter",
                    format!("The schema cannot be enforced: {e}."),
                )
            })?;
            checked_grammar("response_format.json_schema.schema", g).map(Some)
        }
        _ => Err(bad()),
    }
}

fn model(o: &Map<String, Value>) -> Res<Option<String>> {
    Ok(opt_str(o, "model")?.map(str::to_string))
}

/// The text of a message's `content`: a string, or an array of text parts.
fn content(v: Option<&Value>, role: &str, at: usize) -> Res<String> {
    let param = format!("messages[{at}].content");
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) if role == "assistant" => Ok(String::new()),
        Some(Value::Array(parts)) => {
            let mut text = Vec::new();
            for p in parts {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => text.push(t),
                    (Some(kind), _) if kind != "text" => {
                        return Err(ApiError::invalid_code(
                            &param,
                            "unsupported_parameter",
                            format!("Content parts of type `{kind}` are not supported."),
                        ))
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            &param,
                            "A content part must be {\"type\": \"text\", \"text\": ...}.",
                        ))
                    }
                }
            }
            Ok(text.join("\n"))
        }
        _ => Err(ApiError::invalid(
            &param,
            "`content` must be a string or an array of text parts.",
        )),
    }
}

/// Parses and checks a chat completion request.
pub fn chat_request(body: &[u8]) -> Res<ChatRequest> {
    let o = parse_object(body)?;
    let model = model(&o)?;
    refuse_if(
        &o,
        "functions",
        |v| v.as_array().is_none_or(|a| !a.is_empty()),
        "The legacy `functions` field (use `tools`)",
    )?;
    let tools = tools::tool_spec(&o)?;
    let mut sampling = sampling(&o)?;
    if let Some(g) = response_format(&o)? {
        if sampling.grammar.is_some() {
            return Err(ApiError::invalid(
                "grammar",
                "`grammar` and `response_format` cannot both be given.",
            ));
        }
        sampling.grammar = Some(g);
    }
    let msgs = match o.get("messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must not be empty.",
            ))
        }
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("messages", "`messages` is required."))
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must be an array.",
            ))
        }
    };
    let mut messages = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let Some(m) = m.as_object() else {
            return Err(ApiError::invalid(
                &format!("messages[{i}]"),
                "Each message must be an object.",
            ));
        };
        let role = match m.get("role").and_then(Value::as_str) {
            Some("developer") => "system",
            Some(r @ ("system" | "user" | "assistant" | "tool")) => r,
            Some(r) => {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].role"),
                    format!(
                        "Role `{r}` is not supported (system, developer, user, assistant, tool)."
                    ),
                ))
            }
            None => {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].role"),
                    "`role` must be a string.",
                ))
            }
        };
        let mut msg = ChatMessage::new(role, content(m.get("content"), role, i)?);
        if role == "assistant" {
            if let Some(tc) = field(m, "tool_calls") {
                msg.tool_calls = Some(tools::message_tool_calls(tc, &format!("messages[{i}]"))?);
            }
        }
        if role == "tool" {
            msg.tool_call_id = opt_str(m, "tool_call_id")
                .map_err(|e| ApiError {
                    param: Some(format!("messages[{i}].tool_call_id")),
                    ..e
                })?
                .map(str::to_string);
        }
        if let Some(n) = field(m, "name").and_then(Value::as_str) {
            msg.name = Some(n.to_string());
        }
        messages.push(msg);
    }
    Ok(ChatRequest {
        model,
        messages,
        sampling,
        tools,
    })
}

/// Parses and checks a text completion request.
pub fn completion_request(body: &[u8]) -> Res<CompletionRequest> {
    let o = parse_object(body)?;
    let bad = || {
        ApiError::invalid(
            "prompt",
            "`prompt` must be a string, an array of one string, or an array of token ids.",
        )
    };
    let ids = |a: &[Value]| -> Res<Vec<u32>> {
        a.iter()
            .map(|t| {
                t.as_u64()
                    .filter(|&t| t <= u32::MAX as u64)
                    .map(|t| t as u32)
                    .ok_or_else(bad)
            })
            .collect()
    };
    let prompt = match o.get("prompt") {
        Some(Value::String(s)) => Prompt::Text(s.clone()),
        Some(Value::Array(a)) => match &a[..] {
            [Value::String(s)] => Prompt::Text(s.clone()),
            [Value::Array(t)] => Prompt::Tokens(ids(t)?),
            [] => return Err(ApiError::invalid("prompt", "`prompt` must not be empty.")),
            a if a.iter().all(Value::is_number) => Prompt::Tokens(ids(a)?),
            [_, _, ..] if a.iter().all(|v| v.is_string() || v.is_array()) => {
                return Err(ApiError::invalid_code(
                    "prompt",
                    "unsupported_parameter",
                    "Only one prompt per request is supported.",
                ))
            }
            _ => return Err(bad()),
        },
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("prompt", "`prompt` is required."))
        }
        Some(_) => return Err(bad()),
    };
    Ok(CompletionRequest {
        model: model(&o)?,
        prompt,
        sampling: sampling(&o)?,
    })
}

/// Which endpoint a response belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Text,
}

/// Token counts of a finished request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
}

impl Usage {
    pub fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }
}

/// What identifies every body of one response.
#[derive(Clone, Debug)]
pub struct Envelope {
    pub kind: Kind,
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Envelope {
    pub fn new(kind: Kind, model: &str) -> Envelope {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let prefix = match kind {
            Kind::Chat => "chatcmpl",
            Kind::Text => "cmpl",
        };
        Envelope {
            kind,
            id: format!("{prefix}-{:x}{:04x}", now.as_micros(), n & 0xffff),
            created: now.as_secs(),
            model: model.to_string(),
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        }
    }

    /// A whole (non-streamed) response.
    pub fn whole(&self, text: &str, finish: &str, usage: Usage) -> Value {
        let choice = match self.kind {
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish,
            }),
            Kind::Text => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
            }
        };
        json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage.json(),
            "system_fingerprint": null,
        })
    }

    /// A stream chunk carrying `text` (chat: `role` too in the first one)
    /// and, in the last one, a finish reason.
    pub fn chunk(&self, text: Option<&str>, first: bool, finish: Option<&str>) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                let mut delta = Map::new();
                if first {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Kind::Text => {
                json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish})
            }
        };
        json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "system_fingerprint": null,
        })
    }

    /// A whole chat response whose message carries `calls` (ids `ids`).
    pub fn whole_calls(
        &self,
        content: &str,
        calls: &[ToolCall],
        ids: &[String],
        usage: Usage,
    ) -> Value {
        let mut v = self.whole(content, "tool_calls", usage);
        let msg = &mut v["choices"][0]["message"];
        if content.is_empty() {
            msg["content"] = Value::Null;
        }
        msg["tool_calls"] = calls
            .iter()
            .zip(ids)
            .map(|(c, id)| {
                json!({"id": id, "type": "function",
                       "function": {"name": c.name, "arguments": c.arguments}})
            })
            .collect();
        v
    }

    /// A chat stream chunk with the given `delta`.
    pub fn delta_chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        let mut v = self.chunk(None, false, finish);
        v["choices"][0]["delta"] = delta;
        v
    }

    /// The closing chunk of `stream_options.include_usage`.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage.json(),
        })
    }
}

#[cfg(test)]
#[path = "openai_tests.rs"]
mod tests;
