//! OpenAI's Responses API wire format (`/v1/responses`): the request read
//! into the chat request every API shares ([`responses_request`]) and the
//! response and stream event bodies ([`body`]).
//!
//! Read: `model`, `input` (a string, or items: `message` with a role and
//! text content, `function_call`, `function_call_output`; `reasoning` items
//! are skipped), `instructions` (the system message), `tools` (function
//! tools in the flat shape `{type: function, name, description,
//! parameters}`, and those a `namespace` groups; hosted tool types such as
//! `web_search`, which only OpenAI runs, are left out; others are refused),
//! `tool_choice`, `parallel_tool_calls`, `max_output_tokens`,
//! `temperature`, `top_p`, `stream`. `store`, `reasoning`, `metadata`,
//! `include`, `text` and `user` are accepted and ignored: nothing is stored,
//! so `previous_response_id` is refused.

pub mod body;

use dwarfstar_tokenizer::ChatMessage;
use serde_json::{json, Map, Value};

use super::openai::fields::{field, opt_bool, opt_f32, opt_str, opt_uint, parse_object};
use super::openai::{ApiError, ChatRequest, Sampling};
use super::tools::{self, ToolSpec};

type Res<T> = Result<T, ApiError>;

/// A `/v1/responses` request: the shared chat request, and what the
/// response echoes.
#[derive(Debug)]
pub struct ResponsesRequest {
    pub chat: ChatRequest,
    pub instructions: Option<String>,
    /// The tools as the client sent them.
    pub tools: Vec<Value>,
    pub tool_choice: Value,
    pub parallel_tool_calls: bool,
}

/// A message item's content: a string, or `input_text` / `output_text`
/// parts.
fn text_of(v: Option<&Value>, param: &str) -> Res<String> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("input_text" | "output_text" | "text"), Some(Value::String(t))) => {
                        out.push(t.as_str())
                    }
                    (Some("refusal"), _) => {}
                    (Some(kind), _) => {
                        return Err(ApiError::invalid_code(
                            &format!("{param}[{i}]"),
                            "unsupported_parameter",
                            format!("Content of type `{kind}` is not supported."),
                        ))
                    }
                    (None, _) => {
                        return Err(ApiError::invalid(
                            &format!("{param}[{i}]"),
                            "A content part needs a `type`.",
                        ))
                    }
                }
            }
            Ok(out.join("\n"))
        }
        _ => Err(ApiError::invalid(
            param,
            "`content` must be a string or an array of text parts.",
        )),
    }
}

/// `input` as chat messages (consecutive function calls join one
/// assistant message).
fn input_messages(input: &Value, out: &mut Vec<ChatMessage>) -> Res<()> {
    let items = match input {
        Value::String(s) => {
            out.push(ChatMessage::new("user", s.clone()));
            return Ok(());
        }
        Value::Array(a) if !a.is_empty() => a,
        _ => {
            return Err(ApiError::invalid(
                "input",
                "`input` must be a string or a non-empty array of items.",
            ))
        }
    };
    for (i, it) in items.iter().enumerate() {
        let at = format!("input[{i}]");
        let Some(it) = it.as_object() else {
            return Err(ApiError::invalid(&at, "Each input item must be an object."));
        };
        let kind = opt_str(it, "type")?.unwrap_or("message");
        match kind {
            "message" => {
                let role = match opt_str(it, "role")? {
                    Some("developer") => "system",
                    Some(r @ ("system" | "user" | "assistant")) => r,
                    _ => {
                        return Err(ApiError::invalid(
                            &format!("{at}.role"),
                            "`role` must be user, assistant, system or developer.",
                        ))
                    }
                };
                let text = text_of(it.get("content"), &format!("{at}.content"))?;
                out.push(ChatMessage::new(role, text));
            }
            "function_call" => {
                let (Some(name), Some(args)) = (opt_str(it, "name")?, opt_str(it, "arguments")?)
                else {
                    return Err(ApiError::invalid(
                        &at,
                        "A `function_call` item needs `name` and `arguments` (a string).",
                    ));
                };
                let args = serde_json::from_str(args).unwrap_or(Value::String(args.into()));
                let call = json!({
                    "id": field(it, "call_id").cloned().unwrap_or(Value::Null),
                    "type": "function",
                    "function": {"name": name, "arguments": args},
                });
                match out.last_mut() {
                    Some(m) if m.role == "assistant" && m.tool_calls.is_some() => {
                        if let Some(Value::Array(c)) = m.tool_calls.as_mut() {
                            c.push(call);
                        }
                    }
                    _ => {
                        let mut m = ChatMessage::new("assistant", "");
                        m.tool_calls = Some(json!([call]));
                        out.push(m);
                    }
                }
            }
            "function_call_output" => {
                let id = opt_str(it, "call_id")?.ok_or_else(|| {
                    ApiError::invalid(&format!("{at}.call_id"), "`call_id` is required.")
                })?;
                let output = match field(it, "output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v @ Value::Array(_)) => text_of(Some(v), &format!("{at}.output"))?,
                    _ => {
                        return Err(ApiError::invalid(
                            &format!("{at}.output"),
                            "`output` must be a string.",
                        ))
                    }
                };
                let mut m = ChatMessage::new("tool", output);
                m.tool_call_id = Some(id.to_string());
                out.push(m);
            }
            "reasoning" => {}
            other => {
                return Err(ApiError::invalid_code(
                    &format!("{at}.type"),
                    "unsupported_parameter",
                    format!("Input items of type `{other}` are not supported."),
                ))
            }
        }
    }
    Ok(())
}

/// Tools only OpenAI's own servers run (a client sends them to say they
/// may be used); this server has none of them, so they are left out.
const HOSTED: &[&str] = &[
    "web_search",
    "web_search_preview",
    "file_search",
    "code_interpreter",
    "image_generation",
    "computer_use_preview",
    "mcp",
];

/// The function tools of `list` (at `param`) as chat tools: a `namespace`
/// (Codex groups tools so) gives its functions, hosted tools are left out,
/// any other kind is refused.
fn function_tools(list: &[Value], param: &str, out: &mut Vec<Value>) -> Res<()> {
    for (i, t) in list.iter().enumerate() {
        let at = format!("{param}[{i}]");
        match t.get("type").and_then(Value::as_str) {
            Some("function") => {}
            Some("namespace") => {
                let Some(inner) = t.get("tools").and_then(Value::as_array) else {
                    return Err(ApiError::invalid(
                        &format!("{at}.tools"),
                        "A `namespace` tool needs a `tools` array.",
                    ));
                };
                function_tools(inner, &format!("{at}.tools"), out)?;
                continue;
            }
            Some(kind) if HOSTED.contains(&kind) => {
                tracing::debug!("left out the hosted tool `{kind}`");
                continue;
            }
            Some(kind) => {
                return Err(ApiError::invalid_code(
                    &format!("{at}.type"),
                    "unsupported_parameter",
                    format!("Tools of type `{kind}` are not supported; give function tools."),
                ))
            }
            None => {
                return Err(ApiError::invalid(
                    &format!("{at}.type"),
                    "`type` is required.",
                ))
            }
        }
        let mut f = Map::new();
        for k in ["name", "description", "parameters", "strict"] {
            if let Some(v) = t.get(k).filter(|v| !v.is_null()) {
                f.insert(k.into(), v.clone());
            }
        }
        out.push(json!({"type": "function", "function": f}));
    }
    Ok(())
}

/// Flat function tools as chat tools, with `tool_choice` and
/// `parallel_tool_calls`, read by the shared tool reader.
fn tool_spec(o: &Map<String, Value>) -> Res<Option<ToolSpec>> {
    let Some(list) = field(o, "tools") else {
        return Ok(None);
    };
    let Some(list) = list.as_array() else {
        return Err(ApiError::invalid("tools", "`tools` must be an array."));
    };
    let mut chat_tools = Vec::with_capacity(list.len());
    function_tools(list, "tools", &mut chat_tools)?;
    let mut oai = Map::new();
    oai.insert("tools".into(), Value::Array(chat_tools));
    if let Some(tc) = field(o, "tool_choice") {
        let tc = match tc {
            Value::Object(m) if m.get("type").and_then(Value::as_str) == Some("function") => {
                match m.get("name") {
                    Some(n) => json!({"type": "function", "function": {"name": n}}),
                    None => tc.clone(),
                }
            }
            _ => tc.clone(),
        };
        oai.insert("tool_choice".into(), tc);
    }
    if let Some(p) = field(o, "parallel_tool_calls") {
        oai.insert("parallel_tool_calls".into(), p.clone());
    }
    tools::tool_spec(&oai).map_err(|e| ApiError {
        param: e.param.map(|p| p.replace(".function.", ".")),
        ..e
    })
}

/// Parses and checks a `/v1/responses` body.
pub fn responses_request(body: &[u8]) -> Res<ResponsesRequest> {
    let o = parse_object(body)?;
    if field(&o, "previous_response_id").is_some() {
        return Err(ApiError::invalid_code(
            "previous_response_id",
            "unsupported_parameter",
            "This server stores no responses; send the whole conversation in `input`.",
        ));
    }
    let mut messages = Vec::new();
    let instructions = opt_str(&o, "instructions")?.map(str::to_string);
    if let Some(i) = &instructions {
        messages.push(ChatMessage::new("system", i.clone()));
    }
    match field(&o, "input") {
        Some(v) => input_messages(v, &mut messages)?,
        None => return Err(ApiError::invalid("input", "`input` is required.")),
    }
    let sampling = Sampling {
        temperature: opt_f32(&o, "temperature", 0.0, 2.0)?.unwrap_or(1.0),
        top_p: opt_f32(&o, "top_p", 0.0, 1.0)?.unwrap_or(1.0),
        max_tokens: opt_uint(&o, "max_output_tokens", 1)?,
        stream: opt_bool(&o, "stream")?.unwrap_or(false),
        ..Sampling::default()
    };
    let tools = tool_spec(&o)?;
    Ok(ResponsesRequest {
        instructions,
        tools: field(&o, "tools")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        tool_choice: field(&o, "tool_choice").cloned().unwrap_or(json!("auto")),
        parallel_tool_calls: tools.as_ref().is_none_or(|t| t.parallel),
        chat: ChatRequest {
            model: opt_str(&o, "model")?.map(str::to_string),
            messages,
            sampling,
            tools,
        },
    })
}

#[cfg(test)]
mod tests;
