//! Tool calls out of generated text, per [`Family`]. A call must name one
//! of the request's tools and carry JSON object arguments; if any part of
//! what looks like a call is malformed, the whole output stays plain
//! content (never an invalid response). The generic JSON form is tried for
//! every family when its own notation is absent.

use serde_json::{Map, Value};

use super::{Family, ToolCall};

/// What an answer holds: text, and calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub content: String,
    pub calls: Vec<ToolCall>,
}

impl Parsed {
    fn text(s: &str) -> Parsed {
        Parsed {
            content: s.to_string(),
            calls: Vec::new(),
        }
    }
}

/// Splits `text` into content and calls to the tools named `names`.
pub fn parse(text: &str, family: Family, names: &[&str]) -> Parsed {
    let own = match family {
        Family::Hermes => hermes(text, names),
        Family::Llama3 => llama3(text, names),
        Family::DeepSeekV3 | Family::DeepSeekV31 => deepseek_v3(text, names),
        Family::DeepSeekV4 => deepseek_v4(text, names),
        Family::Generic => None,
    };
    own.or_else(|| generic(text, names))
        .unwrap_or_else(|| Parsed::text(text))
}

/// A call object's name and arguments (`arguments` or `parameters`, an
/// object or a string holding one).
fn call_of(v: &Value, names: &[&str]) -> Option<ToolCall> {
    let o = v.as_object()?;
    let name = o.get("name")?.as_str()?;
    if !names.contains(&name) {
        return None;
    }
    let args = o.get("arguments").or_else(|| o.get("parameters"));
    let args = match args {
        None => Value::Object(Map::new()),
        Some(Value::String(s)) => serde_json::from_str::<Value>(s).ok()?,
        Some(v) => v.clone(),
    };
    args.is_object().then(|| ToolCall {
        name: name.to_string(),
        arguments: args.to_string(),
    })
}

/// `{"tool_calls": [...]}`, `{"tool_call": {...}}`, a call object, or an
/// array of them, as the whole (trimmed) output; `{"response": "..."}` is
/// content.
fn generic(text: &str, names: &[&str]) -> Option<Parsed> {
    let v: Value = serde_json::from_str(strip_fence(text.trim())).ok()?;
    if let Some(r) = v.get("response").and_then(Value::as_str) {
        return Some(Parsed::text(r));
    }
    let list: Vec<Value> = if let Some(a) = v.get("tool_calls").and_then(Value::as_array) {
        a.clone()
    } else if let Some(c) = v.get("tool_call") {
        vec![c.clone()]
    } else if let Some(a) = v.as_array() {
        a.clone()
    } else {
        vec![v]
    };
    let calls: Option<Vec<ToolCall>> = list
        .iter()
        .map(|c| call_of(c.get("function").unwrap_or(c), names))
        .collect();
    let calls = calls.filter(|c| !c.is_empty())?;
    Some(Parsed {
        content: String::new(),
        calls,
    })
}

fn strip_fence(s: &str) -> &str {
    s.strip_prefix("```json")
        .or_else(|| s.strip_prefix("```"))
        .and_then(|r| r.strip_suffix("```"))
        .map_or(s, str::trim)
}

/// `<tool_call>{json}</tool_call>` blocks (the last may lack its end).
fn hermes(text: &str, names: &[&str]) -> Option<Parsed> {
    const OPEN: &str = "<tool_call>";
    const CLOSE: &str = "</tool_call>";
    let first = text.find(OPEN)?;
    let mut content = text[..first].to_string();
    let mut calls = Vec::new();
    let mut rest = &text[first..];
    while let Some(at) = rest.find(OPEN) {
        content.push_str(&rest[..at]);
        let body = &rest[at + OPEN.len()..];
        let (inner, after) = match body.find(CLOSE) {
            Some(e) => (&body[..e], &body[e + CLOSE.len()..]),
            None => (body, ""),
        };
        let v: Value = serde_json::from_str(inner.trim()).ok()?;
        calls.push(call_of(&v, names)?);
        rest = after;
    }
    content.push_str(rest);
    Some(Parsed {
        content: content.trim().to_string(),
        calls,
    })
}

/// One or more `{"name": …, "parameters": …}` objects (after an optional
/// `<|python_tag|>`), separated by `;` or newlines.
fn llama3(text: &str, names: &[&str]) -> Option<Parsed> {
    let t = text.trim();
    let t = t.strip_prefix("<|python_tag|>").unwrap_or(t).trim();
    if !t.starts_with('{') {
        return None;
    }
    let mut calls = Vec::new();
    for part in t.split(';') {
        let stream = serde_json::Deserializer::from_str(part.trim()).into_iter::<Value>();
        for v in stream {
            calls.push(call_of(&v.ok()?, names)?);
        }
    }
    (!calls.is_empty()).then(|| Parsed {
        content: String::new(),
        calls,
    })
}

/// `<｜tool▁calls▁begin｜>` then `<｜tool▁call▁begin｜>…<｜tool▁call▁end｜>`
/// calls: V3's `function<｜tool▁sep｜>NAME\n```json\nARGS\n```` or V3.1's
/// `NAME<｜tool▁sep｜>ARGS`.
fn deepseek_v3(text: &str, names: &[&str]) -> Option<Parsed> {
    const BEGIN: &str = "<｜tool▁calls▁begin｜>";
    const CALL: &str = "<｜tool▁call▁begin｜>";
    const CALL_END: &str = "<｜tool▁call▁end｜>";
    const SEP: &str = "<｜tool▁sep｜>";
    let at = text.find(BEGIN)?;
    let content = text[..at].trim().to_string();
    let mut rest = &text[at + BEGIN.len()..];
    let mut calls = Vec::new();
    while let Some(c) = rest.find(CALL) {
        let body = &rest[c + CALL.len()..];
        let (inner, after) = match body.find(CALL_END) {
            Some(e) => (&body[..e], &body[e + CALL_END.len()..]),
            None => (body, ""),
        };
        let (left, right) = inner.split_once(SEP)?;
        let (name, args) = if left.trim() == "function" {
            let (n, a) = right.split_once('\n')?;
            (n.trim(), strip_fence(a.trim()))
        } else {
            (left.trim(), right.trim())
        };
        let v = serde_json::json!({"name": name, "arguments": serde_json::from_str::<Value>(args).ok()?});
        calls.push(call_of(&v, names)?);
        rest = after;
    }
    (!calls.is_empty()).then_some(Parsed { content, calls })
}

/// DeepSeek V4's `<｜DSML｜tool_calls>` block of `invoke`s, each parameter a
/// string (`string="true"`) or JSON.
fn deepseek_v4(text: &str, names: &[&str]) -> Option<Parsed> {
    const BEGIN: &str = "<｜DSML｜tool_calls>";
    const INVOKE: &str = "<｜DSML｜invoke name=\"";
    const INVOKE_END: &str = "</｜DSML｜invoke>";
    const PARAM: &str = "<｜DSML｜parameter name=\"";
    const PARAM_END: &str = "</｜DSML｜parameter>";
    let at = text.find(BEGIN)?;
    let content = text[..at].trim().to_string();
    let mut rest = &text[at + BEGIN.len()..];
    let mut calls = Vec::new();
    while let Some(i) = rest.find(INVOKE) {
        let body = &rest[i + INVOKE.len()..];
        let (name, body) = body.split_once("\">")?;
        let (mut inner, after) = match body.find(INVOKE_END) {
            Some(e) => (&body[..e], &body[e + INVOKE_END.len()..]),
            None => (body, ""),
        };
        let mut args = Map::new();
        while let Some(p) = inner.find(PARAM) {
            let b = &inner[p + PARAM.len()..];
            let (key, b) = b.split_once('"')?;
            let (attrs, b) = b.split_once('>')?;
            let (val, b) = b.split_once(PARAM_END)?;
            let v = if attrs.contains("string=\"true\"") {
                Value::String(val.to_string())
            } else {
                serde_json::from_str(val.trim()).ok()?
            };
            args.insert(key.to_string(), v);
            inner = b;
        }
        let v = serde_json::json!({"name": name, "arguments": args});
        calls.push(call_of(&v, names)?);
        rest = after;
    }
    (!calls.is_empty()).then_some(Parsed { content, calls })
}
