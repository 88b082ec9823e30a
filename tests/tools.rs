//! Tool calls and constrained output through `dwarfstar serve` on SmolLM2
//! (whose template has no tools: the generic JSON form): forced calls come
//! back as `tool_calls` and their results go back in; JSON-schema output at
//! temperature 1 always parses and fits the schema; `grammar` is obeyed;
//! a call to an unknown tool stays content; bad schemas are 400s.

use serde_json::{json, Value};

use crate::api::Server;
use crate::common::*;

fn weather() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "days": {"type": "integer"}},
        "required": ["city"]}}})
}

fn ask() -> Value {
    json!([{"role": "user", "content": "What is the weather in Paris?"}])
}

#[test]
fn forced_tool_calls_whole_streamed_and_fed_back() {
    let srv = Server::start_model(&model_path(SMOLLM2), &[], None);
    let (s, r) = srv.post(
        "/v1/chat/completions",
        &json!({"messages": ask(), "tools": [weather()], "tool_choice": "required",
                "parallel_tool_calls": false, "temperature": 0, "max_tokens": 80}),
    );
    assert_eq!(s, 200, "{r}");
    let c = &r["choices"][0];
    assert_eq!(c["finish_reason"], "tool_calls", "{r}");
    assert!(c["message"]["content"].is_null(), "{r}");
    let calls = c["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["type"], "function");
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string(), "{args}");

    // The same, streamed: a role chunk, the call's id/name, its arguments.
    let chunks = srv.stream(
        "/v1/chat/completions",
        &json!({"messages": ask(), "tools": [weather()], "tool_choice": "required",
                "parallel_tool_calls": false, "temperature": 0, "max_tokens": 80}),
    );
    let deltas: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(deltas.len(), 2, "{chunks:?}");
    assert_eq!(deltas[0]["index"], 0);
    assert_eq!(deltas[0]["function"]["name"], "get_weather");
    assert_eq!(
        deltas[1]["function"]["arguments"],
        calls[0]["function"]["arguments"]
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );

    // The call and its result go back in.
    let mut msgs = ask().as_array().unwrap().clone();
    msgs.push(json!({"role": "assistant", "content": null, "tool_calls": calls}));
    msgs.push(
        json!({"role": "tool", "tool_call_id": calls[0]["id"], "content": "{\"sky\": \"sunny\"}"}),
    );
    let (s, r) = srv.post(
        "/v1/chat/completions",
        &json!({"messages": msgs, "tools": [weather()], "tool_choice": "none",
                "temperature": 0, "max_tokens": 20}),
    );
    assert_eq!(s, 200, "{r}");
    assert!(r["choices"][0]["message"]["content"].is_string(), "{r}");
}

#[test]
fn constrained_output_parses_and_validates() {
    let srv = Server::start_model(&model_path(SMOLLM2), &[], None);
    let schema = json!({"type": "object", "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 24},
        "age": {"type": "integer"},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}},
        "required": ["name", "age", "role"], "additionalProperties": false});
    for seed in 0..20 {
        let (s, r) = srv.post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "Describe a user as JSON."}],
                    "temperature": 1, "seed": seed, "max_tokens": 200,
                    "response_format": {"type": "json_schema",
                        "json_schema": {"name": "person", "schema": schema, "strict": true}}}),
        );
        assert_eq!(s, 200, "{r}");
        assert_eq!(r["choices"][0]["finish_reason"], "stop", "{r}");
        let text = r["choices"][0]["message"]["content"].as_str().unwrap();
        let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let o = v.as_object().unwrap();
        assert!(
            o.keys()
                .all(|k| ["name", "age", "role", "tags"].contains(&k.as_str())),
            "{v}"
        );
        let name = v["name"].as_str().unwrap();
        assert!((1..=24).contains(&name.chars().count()), "{v}");
        assert!(v["age"].is_i64() || v["age"].is_u64(), "{v}");
        assert!(
            ["admin", "user", "guest"].contains(&v["role"].as_str().unwrap()),
            "{v}"
        );
        if let Some(t) = v.get("tags") {
            let t = t.as_array().unwrap();
            assert!(
                t.len() <= 3
                    && t.iter()
                        .all(|x| x.as_str().is_some_and(|s| s.chars().count() <= 12)),
                "{v}"
            );
        }
    }
    // GBNF on the completions endpoint.
    let (s, r) = srv.post(
        "/v1/completions",
        &json!({"prompt": "Is the sky blue? Answer:", "temperature": 1, "seed": 3, "max_tokens": 20,
                "grammar": "root ::= \" \" (\"yes\" | \"no\") \", because \" [a-z ]{1,30} \".\""}),
    );
    assert_eq!(s, 200, "{r}");
    let text = r["choices"][0]["text"].as_str().unwrap();
    assert!(
        text.starts_with(" yes, because ") || text.starts_with(" no, because "),
        "{text:?}"
    );
    // A call to a tool the request did not declare stays content.
    let odd = "{\"tool_calls\": [{\"name\": \"format_disk\", \"arguments\": {}}]}";
    let (s, r) = srv.post(
        "/v1/chat/completions",
        &json!({"messages": ask(), "tools": [weather()], "temperature": 0, "max_tokens": 40,
                "grammar": format!("root ::= {}", serde_json::to_string(odd).unwrap())}),
    );
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["choices"][0]["finish_reason"], "stop", "{r}");
    assert_eq!(r["choices"][0]["message"]["content"], odd);
    assert!(r["choices"][0]["message"].get("tool_calls").is_none());
    // What cannot be enforced is refused.
    for (body, param) in [
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
            "schema": {"type": "string", "format": "email"}}}}),
            "response_format.json_schema.schema",
        ),
        (json!({"grammar": "root ::= undefined-rule"}), "grammar"),
        (
            json!({"tools": [weather()], "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice",
        ),
    ] {
        let mut b = body.clone();
        b["messages"] = ask();
        let (s, r) = srv.post("/v1/chat/completions", &b);
        assert_eq!((s, r["error"]["param"].as_str()), (400, Some(param)), "{r}");
    }
}
