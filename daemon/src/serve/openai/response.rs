//! Response bodies of chat and text completions: whole responses, stream
//! chunks, tool calls, usage, logprobs. Bodies are built for choice 0;
//! [`at_choice`] and [`merge_choices`] place them for `n` > 1.

use serde_json::{json, Map, Value};

use super::super::tools::ToolCall;

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

/// One generated token's logprobs, with its text as bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct LpToken {
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// The most likely tokens at its position: `(bytes, logprob)`.
    pub top: Vec<(Vec<u8>, f32)>,
}

fn lp_entry(bytes: &[u8], logprob: f32) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("token".into(), json!(String::from_utf8_lossy(bytes)));
    m.insert("logprob".into(), json!(logprob));
    m.insert("bytes".into(), json!(bytes));
    m
}

/// Chat's `logprobs`: `{content: [{token, logprob, bytes, top_logprobs}]}`.
pub fn chat_logprobs(toks: &[LpToken]) -> Value {
    let content: Vec<Value> = toks
        .iter()
        .map(|t| {
            let mut e = lp_entry(&t.bytes, t.logprob);
            let top: Vec<Value> = t
                .top
                .iter()
                .map(|(b, lp)| Value::Object(lp_entry(b, *lp)))
                .collect();
            e.insert("top_logprobs".into(), Value::Array(top));
            Value::Object(e)
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// Text completions' `logprobs`: parallel `tokens`, `token_logprobs`,
/// `top_logprobs` (token text to logprob) and `text_offset` arrays, offsets
/// counted from `offset`.
pub fn text_logprobs(toks: &[LpToken], offset: usize) -> Value {
    let mut at = offset;
    let mut offsets = Vec::with_capacity(toks.len());
    for t in toks {
        offsets.push(at);
        at += String::from_utf8_lossy(&t.bytes).len();
    }
    json!({
        "tokens": toks.iter().map(|t| String::from_utf8_lossy(&t.bytes)).collect::<Vec<_>>(),
        "token_logprobs": toks.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": toks.iter().map(|t| {
            t.top.iter().map(|(b, lp)| (String::from_utf8_lossy(b).into_owned(), json!(lp)))
                .collect::<Map<String, Value>>()
        }).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

/// `v` (a whole response or a chunk) as choice `index`, with `logprobs`.
pub fn at_choice(mut v: Value, index: usize, logprobs: Option<Value>) -> Value {
    if let Some(c) = v["choices"].get_mut(0) {
        c["index"] = json!(index);
        if let Some(lp) = logprobs {
            c["logprobs"] = lp;
        }
    }
    v
}

/// One whole response holding every choice of `wholes` (in order), with
/// `usage` over them all.
pub fn merge_choices(mut wholes: Vec<Value>, usage: Usage) -> Value {
    let choices: Vec<Value> = wholes
        .iter_mut()
        .filter_map(|w| w["choices"].get_mut(0).map(Value::take))
        .collect();
    let mut v = wholes.swap_remove(0);
    v["choices"] = Value::Array(choices);
    v["usage"] = usage.json();
    v
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
