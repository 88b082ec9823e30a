//! Anthropic's response bodies: the whole `message`, and the events of a
//! streamed one (`message_start`, `content_block_start` / `_delta` /
//! `_stop`, `message_delta`, `message_stop`).

use serde_json::{json, Value};

use super::super::openai::Usage;
use super::super::tools::ToolCall;

/// `msg_` and 24 hex digits.
pub fn message_id() -> String {
    format!("msg_{}", &super::super::tools::call_id()[5..])
}

/// `toolu_` and 24 hex digits.
pub fn tool_use_id() -> String {
    format!("toolu_{}", &super::super::tools::call_id()[5..])
}

/// Anthropic's `stop_reason` for how a generation ended.
pub fn stop_reason(reason: &str, stop_string: Option<&str>) -> &'static str {
    match (reason, stop_string) {
        ("tool_calls", _) => "tool_use",
        ("length", _) => "max_tokens",
        (_, Some(_)) => "stop_sequence",
        _ => "end_turn",
    }
}

pub fn usage(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "output_tokens": u.completion_tokens,
        "cache_read_input_tokens": u.cached_tokens,
        "cache_creation_input_tokens": 0,
    })
}

/// A `tool_use` block (its `input` the call's arguments as an object;
/// arguments that are not one become `{}`).
pub fn tool_use(c: &ToolCall, id: &str) -> Value {
    let input = serde_json::from_str::<Value>(&c.arguments)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    json!({"type": "tool_use", "id": id, "name": c.name, "input": input})
}

/// The message object, content blocks given.
pub fn message(
    id: &str,
    model: &str,
    content: Vec<Value>,
    stop: Option<(&str, Option<&str>)>,
    u: &Usage,
) -> Value {
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop.map(|s| s.0),
        "stop_sequence": stop.and_then(|s| s.1),
        "usage": usage(u),
    })
}

/// The whole message for text and calls.
pub fn whole(
    model: &str,
    text: &str,
    calls: &[ToolCall],
    stop: (&str, Option<&str>),
    u: &Usage,
) -> Value {
    let mut content = Vec::new();
    if !text.is_empty() || calls.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    content.extend(calls.iter().map(|c| tool_use(c, &tool_use_id())));
    message(&message_id(), model, content, Some(stop), u)
}

pub fn block_start(index: usize, block: Value) -> Value {
    json!({"type": "content_block_start", "index": index, "content_block": block})
}

pub fn text_delta(index: usize, text: &str) -> Value {
    json!({"type": "content_block_delta", "index": index,
           "delta": {"type": "text_delta", "text": text}})
}

pub fn json_delta(index: usize, partial: &str) -> Value {
    json!({"type": "content_block_delta", "index": index,
           "delta": {"type": "input_json_delta", "partial_json": partial}})
}

pub fn block_stop(index: usize) -> Value {
    json!({"type": "content_block_stop", "index": index})
}

pub fn message_delta(stop: (&str, Option<&str>), u: &Usage) -> Value {
    json!({"type": "message_delta",
           "delta": {"stop_reason": stop.0, "stop_sequence": stop.1},
           "usage": {"output_tokens": u.completion_tokens}})
}
