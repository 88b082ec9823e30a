//! Chat templates: renders a model's `tokenizer.chat_template` (Jinja) with
//! minijinja, configured like Hugging Face's `apply_chat_template` (which llama.cpp
//! mirrors): `trim_blocks` and `lstrip_blocks` on, Python string/dict methods
//! (`.strip()`, `.startswith()`, `.items()`, ... via minijinja-contrib's pycompat),
//! `raise_exception(msg)`, `strftime_now(fmt)` (UTC), Jinja2's `iterable` test (none
//! is not iterable), and a `tojson` that writes
//! JSON as Python's `json.dumps` does (`", "` / `": "` separators, no HTML escaping).
//! `{% break %}` / `{% continue %}`, and HF's `{% generation %}` block (rendered as
//! its body). The context has `messages`, `add_generation_prompt`, `bos_token`,
//! `eos_token`, `tools` (the request's, or none) and `documents` (none).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Enumerator, Kwargs, Object, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Value};

use crate::error::TokenizerError;

/// One message of a conversation. `tool_calls` (an assistant's, as OpenAI
/// shapes them, with `function.arguments` parsed into an object where it
/// is JSON, as Hugging Face templates expect), `tool_call_id` (a tool
/// result's) and `name` are shown to the template only when set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    pub tool_calls: Option<serde_json::Value>,
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            tool_calls: None,
            tool_call_id: None,
            name: None,
        }
    }
}

/// A message as a template sees it: a mapping with `role` then `content` (in that
/// order, as a Python dict built by a client would iterate), then the tool fields
/// that are set.
#[derive(Debug)]
struct MessageObject(ChatMessage);

impl Object for MessageObject {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "role" => Some(Value::from(self.0.role.as_str())),
            "content" => Some(Value::from(self.0.content.as_str())),
            "tool_calls" => self.0.tool_calls.as_ref().map(Value::from_serialize),
            "tool_call_id" => self.0.tool_call_id.as_deref().map(Value::from),
            "name" => self.0.name.as_deref().map(Value::from),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let m = &self.0;
        let keys: Vec<Value> = ["role", "content"]
            .into_iter()
            .chain(m.tool_calls.as_ref().map(|_| "tool_calls"))
            .chain(m.tool_call_id.as_ref().map(|_| "tool_call_id"))
            .chain(m.name.as_ref().map(|_| "name"))
            .map(Value::from)
            .collect();
        Enumerator::Values(keys)
    }
}

/// The ChatML template llama.cpp falls back to for models without one. Not applied
/// implicitly: pass it to [`crate::Tokenizer::apply_chat_template_with`] if wanted.
pub const CHATML_TEMPLATE: &str = "{%- for message in messages -%}\n  {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n  {{- '<|im_start|>assistant\\n' -}}\n{%- endif -%}\n";

/// Renders `source` for `messages`.
pub(crate) fn render(
    source: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
    tools: Option<&serde_json::Value>,
) -> Result<String, TokenizerError> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |fmt: String| strftime_utc(&fmt, now_unix()));
    env.add_filter("tojson", tojson);
    // Jinja2: none is not iterable (minijinja iterates it as empty); undefined is.
    env.add_test("iterable", |v: &Value| {
        matches!(
            v.kind(),
            ValueKind::Undefined
                | ValueKind::String
                | ValueKind::Bytes
                | ValueKind::Seq
                | ValueKind::Map
                | ValueKind::Iterable
        )
    });
    let source = rewrite_generation_tags(source);
    let tmpl = env.template_from_str(&source)?;
    let msgs: Vec<Value> = messages
        .iter()
        .map(|m| Value::from_object(MessageObject(m.clone())))
        .collect();
    let ctx = minijinja::context! {
        messages => msgs,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
        tools => tools.map_or(Value::from(()), Value::from_serialize),
        documents => Value::from(()),
    };
    Ok(tmpl.render(ctx)?)
}

/// Turns HF's `{% generation %}` ... `{% endgeneration %}` (which marks assistant
/// text and renders its body unchanged) into `{% if true %}` ... `{% endif %}`,
/// keeping whitespace-control markers.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(pos) = rest.find("{%") {
        out.push_str(&rest[..pos]);
        let tag = &rest[pos..];
        let Some(end) = tag.find("%}") else {
            break;
        };
        let inner = &tag[2..end];
        let body = inner
            .trim_start_matches(['-', '+'])
            .trim_end_matches(['-', '+'])
            .trim();
        let replacement = match body {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => {
                out.push_str("{%");
                out.push_str(&inner.replacen(body, r, 1));
                out.push_str("%}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=sort_keys)`.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let opts = JsonOpts {
        indent,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(value, &opts, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

struct JsonOpts {
    indent: Option<usize>,
    sort_keys: bool,
    ensure_ascii: bool,
}

fn write_json(v: &Value, o: &JsonOpts, level: usize, out: &mut String) -> Result<(), Error> {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&v.to_string()),
        ValueKind::String => write_json_str(v.as_str().unwrap_or_default(), o.ensure_ascii, out),
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if o.sort_keys {
                keys.sort();
            }
            let items = keys
                .into_iter()
                .map(|k| {
                    let val = v.get_item(&k)?;
                    Ok((k, val))
                })
                .collect::<Result<Vec<_>, Error>>()?;
            write_container(out, o, level, '{', '}', &items, |(k, val), out| {
                match k.as_str() {
                    Some(s) => write_json_str(s, o.ensure_ascii, out),
                    None => write_json_str(&k.to_string(), o.ensure_ascii, out),
                }
                out.push_str(": ");
                write_json(val, o, level + 1, out)
            })?;
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_container(out, o, level, '[', ']', &items, |val, out| {
                write_json(val, o, level + 1, out)
            })?;
        }
        _ => write_json_str(&v.to_string(), o.ensure_ascii, out),
    }
    Ok(())
}

fn write_container<T>(
    out: &mut String,
    o: &JsonOpts,
    level: usize,
    open: char,
    close: char,
    items: &[T],
    mut item: impl FnMut(&T, &mut String) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(if o.indent.is_some() { "," } else { ", " });
        }
        if let Some(n) = o.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * (level + 1)));
        }
        item(it, out)?;
    }
    if let Some(n) = o.indent {
        out.push('\n');
        out.push_str(&" ".repeat(n * level));
    }
    out.push(close);
    Ok(())
}

fn write_json_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A subset of C `strftime` for UTC time `unix`: %Y %y %m %d %e %j %H %I %M %S %p
/// %B %b %h %A %a %%. Other conversions are an error.
fn strftime_utc(fmt: &str, unix: i64) -> Result<String, Error> {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let wd = (days + 4).rem_euclid(7) as usize;
    let yday = days - days_from_civil(y, 1, 1) + 1;
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let spec = chars.next().unwrap_or('%');
        let month = MONTHS[(mo - 1) as usize];
        let piece = match spec {
            'Y' => y.to_string(),
            'y' => format!("{:02}", y.rem_euclid(100)),
            'm' => format!("{mo:02}"),
            'd' => format!("{d:02}"),
            'e' => format!("{d:>2}"),
            'j' => format!("{yday:03}"),
            'H' => format!("{h:02}"),
            'I' => format!("{:02}", if h % 12 == 0 { 12 } else { h % 12 }),
            'M' => format!("{mi:02}"),
            'S' => format!("{s:02}"),
            'p' => (if h < 12 { "AM" } else { "PM" }).to_string(),
            'B' => month.to_string(),
            'b' | 'h' => month[..3].to_string(),
            'A' => WEEKDAYS[wd].to_string(),
            'a' => WEEKDAYS[wd][..3].to_string(),
            '%' => "%".to_string(),
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("strftime_now: unsupported conversion %{other}"),
                ))
            }
        };
        out.push_str(&piece);
    }
    Ok(out)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(
            strftime_utc("%Y-%m-%d %H:%M:%S", t).unwrap(),
            "2024-02-29 13:05:09"
        );
        assert_eq!(
            strftime_utc("%d %b %Y, %A %I%p %j", t).unwrap(),
            "29 Feb 2024, Thursday 01PM 060"
        );
        assert_eq!(strftime_utc("%B %e", 0).unwrap(), "January  1");
        assert!(strftime_utc("%Q", 0).is_err());
    }

    #[test]
    fn tojson_writes_python_style_json() {
        let msgs = [ChatMessage::new("user", "a \"<b>\"\n é")];
        let out = render(
            "{{ messages | tojson }}|{{ {'k': [1, 2.5, none, true]} | tojson(indent=2) }}",
            &msgs,
            false,
            "",
            "",
            None,
        )
        .unwrap();
        assert_eq!(
            out,
            "[{\"role\": \"user\", \"content\": \"a \\\"<b>\\\"\\n é\"}]|{\n  \"k\": [\n    1,\n    2.5,\n    null,\n    true\n  ]\n}"
        );
    }

    #[test]
    fn python_methods_and_raise_exception() {
        let msgs = [ChatMessage::new("system", "  hi  ")];
        let t = "{{ messages[0]['content'].strip() }}{% if messages[0].role.startswith('sys') %}!{% endif %}";
        assert_eq!(render(t, &msgs, false, "", "", None).unwrap(), "hi!");
        let t = "{% for k, v in messages[0].items() %}{{ k }}={{ v | trim }};{% endfor %}{{ messages[0].get('x', 'd') }}\
                 {{ 'content' in messages[0] }}{{ messages[0] is mapping }}{{ messages[0].tool_calls is defined }}";
        assert_eq!(
            render(t, &msgs, false, "", "", None).unwrap(),
            "role=system;content=hi;dTrueTrueFalse"
        );
        let err = render("{{ raise_exception('nope') }}", &msgs, false, "", "", None).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn generation_blocks_loop_controls_and_none_tools() {
        let msgs = [
            ChatMessage::new("assistant", "A"),
            ChatMessage::new("user", "U"),
        ];
        let t = "{% for m in messages %}{%- if m.role == 'user' %}{% break %}{% endif %}\
                 {%- generation -%} [{{ m.content }}] {%- endgeneration %}{% endfor %}\
                 {% if tools is not none and tools|length > 0 %}T{% endif %}{{ documents is none }}\
                 {% if tools is iterable and tools|length > 0 %}T{% endif %}\
                 {{ messages is iterable }}{{ 'x' is iterable }}{{ 3 is iterable }}{{ nothing is iterable }}";
        assert_eq!(
            render(t, &msgs, false, "", "", None).unwrap(),
            "[A]TrueTrueTrueFalseTrue"
        );
        assert_eq!(
            rewrite_generation_tags("a {%- generation +%}b{% endgeneration%}"),
            "a {%- if true +%}b{% endif%}"
        );
    }

    #[test]
    fn chatml_fallback_renders() {
        let msgs = [ChatMessage::new("user", "Hi")];
        assert_eq!(
            render(CHATML_TEMPLATE, &msgs, true, "", "", None).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn tools_and_tool_messages_reach_the_template() {
        let t = "{% for t in tools %}[{{ t.function.name }}]{% endfor %}\
{% for m in messages %}{{ m.role }}:{{ m.content }}\
{% if m.tool_calls %}{% for c in m.tool_calls %}<{{ c.function.name }} {{ c.function.arguments | tojson }}>{% endfor %}{% endif %}\
{% if m.tool_call_id %}#{{ m.tool_call_id }}{% endif %};{% endfor %}";
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = Some(serde_json::json!([
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
        ]));
        let mut result = ChatMessage::new("tool", "42");
        result.tool_call_id = Some("c1".into());
        let tools = serde_json::json!([{"type": "function", "function": {"name": "f"}}]);
        let out = render(t, &[call, result], false, "", "", Some(&tools)).unwrap();
        assert_eq!(out, "[f]assistant:<f {\"x\": 1}>;tool:42#c1;");
        // Without tools the variable is none, and `tools` is iterated as empty.
        let out = render("{{ tools is none }}", &[], false, "", "", None).unwrap();
        assert_eq!(out, "True");
    }
}
