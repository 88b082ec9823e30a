//! Tool calls: the request's `tools` / `tool_choice` /
//! `parallel_tool_calls`, the template family that decides how calls are
//! written ([`Family::of`] reads the chat template's text), the prompt side
//! ([`render`]: tools into the template, or a system note for templates
//! without tools; forced calls as a grammar) and the output side
//! ([`parse`]: calls out of the generated text; anything malformed stays
//! plain content; [`split`]: what of a streamed answer can be sent before
//! it is known not to be a call).

pub mod parse;
pub mod render;
pub mod split;

use serde_json::{json, Map, Value};

use super::openai::ApiError;

/// How a template family writes tool calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Hermes / Qwen: `<tool_call>{"name": …, "arguments": …}</tool_call>`.
    Hermes,
    /// Llama 3.x: a JSON object `{"name": …, "parameters": …}`.
    Llama3,
    /// DeepSeek V3 (`function<｜tool▁sep｜>NAME` and a fenced JSON block).
    DeepSeekV3,
    /// DeepSeek V3.1 (`NAME<｜tool▁sep｜>ARGS`).
    DeepSeekV31,
    /// DeepSeek V4's DSML `invoke` / `parameter` blocks.
    DeepSeekV4,
    /// `{"tool_calls": [{"name": …, "arguments": …}]}` (any other template).
    Generic,
}

impl Family {
    /// The family a chat template's text belongs to.
    pub fn of(template: &str) -> Family {
        if template.contains("｜DSML｜") {
            Family::DeepSeekV4
        } else if template.contains("tool▁calls▁begin") {
            if template.contains("```json") {
                Family::DeepSeekV3
            } else {
                Family::DeepSeekV31
            }
        } else if template.contains("<tool_call>") {
            Family::Hermes
        } else if template.contains("<|start_header_id|>") && template.contains("ipython") {
            Family::Llama3
        } else {
            Family::Generic
        }
    }
}

/// `tool_choice`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    Auto,
    None,
    Required,
    Named(String),
}

/// A request's tools.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    /// OpenAI's tool objects, as sent (`{"type": "function", "function": …}`).
    pub tools: Vec<Value>,
    pub choice: Choice,
    pub parallel: bool,
}

impl ToolSpec {
    /// Whether calls may be produced at all.
    pub fn active(&self) -> bool {
        !self.tools.is_empty() && self.choice != Choice::None
    }

    pub fn names(&self) -> Vec<&str> {
        self.tools.iter().filter_map(tool_name).collect()
    }

    /// The tools a forced call picks from.
    pub fn forced(&self) -> Option<Vec<&Value>> {
        match &self.choice {
            Choice::Required => Some(self.tools.iter().collect()),
            Choice::Named(n) => Some(
                self.tools
                    .iter()
                    .filter(|t| tool_name(t) == Some(n.as_str()))
                    .collect(),
            ),
            _ => None,
        }
    }
}

fn tool_name(t: &Value) -> Option<&str> {
    t.get("function")?.get("name")?.as_str()
}

/// A tool's parameter schema (an empty object schema when absent).
pub fn tool_params(t: &Value) -> Value {
    t.get("function")
        .and_then(|f| f.get("parameters"))
        .cloned()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}))
}

/// One call the model made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

/// Reads `tools`, `tool_choice` and `parallel_tool_calls`; None without tools.
pub fn tool_spec(o: &Map<String, Value>) -> Result<Option<ToolSpec>, ApiError> {
    let tools = match o.get("tools") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::invalid("tools", "`tools` must be an array.")),
    };
    for (i, t) in tools.iter().enumerate() {
        let at = format!("tools[{i}]");
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ApiError::invalid(
                &at,
                "Each tool must be {\"type\": \"function\", \"function\": {...}}.",
            ));
        }
        let name = tool_name(t).unwrap_or_default();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ApiError::invalid(
                &format!("{at}.function.name"),
                "A function's `name` must be a non-empty string of a-z, A-Z, 0-9, _ and -.",
            ));
        }
        match t["function"].get("parameters") {
            None | Some(Value::Object(_)) => {}
            Some(_) => {
                return Err(ApiError::invalid(
                    &format!("{at}.function.parameters"),
                    "`parameters` must be a JSON Schema object.",
                ))
            }
        }
    }
    let choice = match o.get("tool_choice") {
        None | Some(Value::Null) => Choice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Choice::Auto,
            "none" => Choice::None,
            "required" => Choice::Required,
            _ => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    "`tool_choice` must be auto, none, required, or {\"type\": \"function\", \"function\": {\"name\": ...}}.",
                ))
            }
        },
        Some(v) => match v.get("function").and_then(|f| f.get("name")).and_then(Value::as_str) {
            Some(n) => Choice::Named(n.to_string()),
            None => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    "A named `tool_choice` is {\"type\": \"function\", \"function\": {\"name\": ...}}.",
                ))
            }
        },
    };
    let spec = ToolSpec {
        tools: tools.clone(),
        choice,
        parallel: match o.get("parallel_tool_calls") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::invalid(
                    "parallel_tool_calls",
                    "`parallel_tool_calls` must be a boolean.",
                ))
            }
        },
    };
    if let Choice::Named(n) = &spec.choice {
        if !spec.names().contains(&n.as_str()) {
            return Err(ApiError::invalid(
                "tool_choice",
                format!("`tool_choice` names `{n}`, which is not in `tools`."),
            ));
        }
    }
    if spec.choice == Choice::Required && spec.tools.is_empty() {
        return Err(ApiError::invalid(
            "tool_choice",
            "`tool_choice` is required but `tools` is empty.",
        ));
    }
    Ok(Some(spec))
}

/// An assistant message's `tool_calls` checked, with each call's
/// `arguments` parsed into an object where it is JSON (templates expect a
/// mapping).
pub fn message_tool_calls(v: &Value, at: &str) -> Result<Value, ApiError> {
    let param = format!("{at}.tool_calls");
    let Some(calls) = v.as_array() else {
        return Err(ApiError::invalid(&param, "`tool_calls` must be an array."));
    };
    let mut out = Vec::with_capacity(calls.len());
    for c in calls {
        let f = c.get("function");
        let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
        let Some(name) = name else {
            return Err(ApiError::invalid(
                &param,
                "Each tool call needs `function.name`.",
            ));
        };
        let args = match f.and_then(|f| f.get("arguments")) {
            Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
            Some(v) => v.clone(),
            None => json!({}),
        };
        out.push(json!({
            "id": c.get("id").cloned().unwrap_or(Value::Null),
            "type": "function",
            "function": {"name": name, "arguments": args},
        }));
    }
    Ok(Value::Array(out))
}

/// A fresh call id, `call_` and 24 hex digits.
pub fn call_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("call_{now:016x}{:08x}", n as u32)
}

#[cfg(test)]
mod tests;
