//! Request bodies of `/v1/chat/completions` and `/v1/completions`, read
//! field by field (with [`super::fields`]) into [`ChatRequest`] and
//! [`CompletionRequest`].

use dwarfstar_tokenizer::ChatMessage;
use serde_json::{json, Map, Value};

use super::super::grammar::{schema, Grammar};
use super::super::tools::{self, ToolSpec};
use super::fields::*;
use super::ApiError;

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
    /// Choices to generate (1–[`MAX_N`]); choice i samples with seed + i.
    pub n: usize,
    /// Each token's logprob and this many alternatives (None: off).
    pub logprobs: Option<usize>,
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

/// The most choices one request may ask for.
pub const MAX_N: usize = 8;

impl Default for Sampling {
    /// OpenAI's defaults.
    fn default() -> Self {
        Sampling {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            max_tokens: None,
            stop: Vec::new(),
            ignore_eos: false,
            stream: false,
            include_usage: false,
            n: 1,
            logprobs: None,
            grammar: None,
        }
    }
}

/// `logprobs` / `top_logprobs` of a chat request.
fn chat_logprobs(o: &Map<String, Value>) -> Res<Option<usize>> {
    let on = opt_bool(o, "logprobs")?.unwrap_or(false);
    let top = match field(o, "top_logprobs") {
        None => None,
        Some(v) => match v.as_u64().filter(|&k| k <= 20) {
            Some(k) => Some(k as usize),
            None => {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    format!("`top_logprobs` must be an integer from 0 to 20, got {v}."),
                ))
            }
        },
    };
    match (on, top) {
        (false, Some(k)) if k > 0 => Err(ApiError::invalid(
            "top_logprobs",
            "`top_logprobs` needs `logprobs: true`.",
        )),
        (false, _) => Ok(None),
        (true, k) => Ok(Some(k.unwrap_or(0))),
    }
}

/// `logprobs` of a text completion request: how many alternatives (0–5).
fn text_logprobs(o: &Map<String, Value>) -> Res<Option<usize>> {
    match field(o, "logprobs") {
        None => Ok(None),
        Some(v) => match v.as_u64().filter(|&k| k <= 5) {
            Some(k) => Ok(Some(k as usize)),
            None => Err(ApiError::invalid(
                "logprobs",
                format!("`logprobs` must be an integer from 0 to 5, got {v}."),
            )),
        },
    }
}

fn sampling(o: &Map<String, Value>) -> Res<Sampling> {
    let n = match opt_uint(o, "n", 1)? {
        None => 1,
        Some(n) if n as usize <= MAX_N => n as usize,
        Some(n) => {
            return Err(ApiError::invalid(
                "n",
                format!("`n` must be at most {MAX_N}, got {n}."),
            ))
        }
    };
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
        n,
        logprobs: None,
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
    sampling.logprobs = chat_logprobs(&o)?;
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
        sampling: Sampling {
            logprobs: text_logprobs(&o)?,
            ..sampling(&o)?
        },
    })
}
