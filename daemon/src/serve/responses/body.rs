//! Response API bodies: the `response` object, its output items (`message`
//! with `output_text`, `function_call`), and stream events.

use serde_json::{json, Map, Value};

use super::super::openai::Usage;
use super::ResponsesRequest;

/// What every body of one response repeats.
#[derive(Clone, Debug)]
pub struct Meta {
    pub id: String,
    pub created_at: u64,
    pub model: String,
    pub instructions: Option<String>,
    pub tools: Vec<Value>,
    pub tool_choice: Value,
    pub parallel_tool_calls: bool,
    pub temperature: f32,
    pub top_p: f32,
    pub max_output_tokens: Option<u64>,
}

/// A fresh id with `prefix` (`resp`, `msg`, `fc`).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", &super::super::tools::call_id()[5..])
}

impl Meta {
    pub fn new(r: &ResponsesRequest, model: &str) -> Meta {
        let s = &r.chat.sampling;
        Meta {
            id: new_id("resp"),
            created_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: model.to_string(),
            instructions: r.instructions.clone(),
            tools: r.tools.clone(),
            tool_choice: r.tool_choice.clone(),
            parallel_tool_calls: r.parallel_tool_calls,
            temperature: s.temperature,
            top_p: s.top_p,
            max_output_tokens: s.max_tokens,
        }
    }

    /// The `response` object. `incomplete` is the reason when it is.
    pub fn response(
        &self,
        status: &str,
        output: Vec<Value>,
        usage: Option<&Usage>,
        incomplete: Option<&str>,
    ) -> Value {
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": null,
            "incomplete_details": incomplete.map(|r| json!({"reason": r})),
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": self.parallel_tool_calls,
            "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null},
            "store": false,
            "temperature": self.temperature,
            "text": {"format": {"type": "text"}},
            "tool_choice": self.tool_choice,
            "tools": self.tools,
            "top_p": self.top_p,
            "truncation": "disabled",
            "usage": usage.map(usage_json),
            "metadata": {},
        })
    }
}

pub fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

pub fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": []})
}

/// An assistant `message` item; `text` None while it is empty and open.
pub fn message_item(id: &str, text: Option<&str>, status: &str) -> Value {
    json!({
        "type": "message",
        "id": id,
        "status": status,
        "role": "assistant",
        "content": text.map(|t| vec![text_part(t)]).unwrap_or_default(),
    })
}

pub fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({
        "type": "function_call",
        "id": id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    })
}

/// Numbers stream events in order.
#[derive(Default)]
pub struct Events {
    next: u64,
}

impl Events {
    /// Event `kind` with `fields` (an object) and its sequence number.
    pub fn event(&mut self, kind: &str, fields: Value) -> Value {
        let mut m = match fields {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        m.insert("type".into(), json!(kind));
        m.insert("sequence_number".into(), json!(self.next));
        self.next += 1;
        Value::Object(m)
    }
}
