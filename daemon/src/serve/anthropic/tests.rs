//! Messages API parsing: blocks into chat messages, tools, refusals.

use super::*;
use crate::serve::openai::Usage;
use crate::serve::tools::{Choice, ToolCall};

fn req(body: &str) -> Res<MessagesRequest> {
    messages_request(body.as_bytes(), false)
}

#[test]
fn blocks_become_chat_messages_with_calls_and_results() {
    let r = req(r#"{"model":"claude-x","max_tokens":50,"system":[{"type":"text","text":"Be brief."}],
        "messages":[
          {"role":"user","content":"Weather in Paris?"},
          {"role":"assistant","content":[{"type":"thinking","thinking":"hm"},{"type":"text","text":"Checking."},
             {"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}}]},
          {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":[{"type":"text","text":"sunny"}]},
             {"type":"text","text":"Thanks"}]}],
        "stop_sequences":["END"],"temperature":0.2,"top_k":5,
        "tools":[{"name":"get_weather","description":"d","input_schema":{"type":"object"}}],
        "tool_choice":{"type":"any","disable_parallel_tool_use":true}}"#)
    .unwrap();
    assert_eq!(r.model, "claude-x");
    let m = &r.chat.messages;
    assert_eq!(m.len(), 5, "{m:?}");
    assert_eq!(
        (m[0].role.as_str(), m[0].content.as_str()),
        ("system", "Be brief.")
    );
    assert_eq!(m[2].content, "Checking.");
    let calls = m[2].tool_calls.as_ref().unwrap();
    assert_eq!(calls[0]["function"]["arguments"]["city"], "Paris");
    assert_eq!(calls[0]["id"], "toolu_1");
    assert_eq!(
        (m[3].role.as_str(), m[3].content.as_str()),
        ("tool", "sunny")
    );
    assert_eq!(m[3].tool_call_id.as_deref(), Some("toolu_1"));
    assert_eq!(
        (m[4].role.as_str(), m[4].content.as_str()),
        ("user", "Thanks")
    );
    let s = &r.chat.sampling;
    assert_eq!(
        (s.max_tokens, s.top_k, s.stop.clone()),
        (Some(50), 5, vec!["END".to_string()])
    );
    let t = r.chat.tools.unwrap();
    assert_eq!(t.choice, Choice::Required);
    assert!(!t.parallel);
    assert_eq!(t.names(), vec!["get_weather"]);
}

/// Claude Code sends system notes among the turns: they join the system
/// prompt (templates take one, first).
#[test]
fn system_turns_join_the_system_prompt() {
    let r = req(r#"{"max_tokens":5,"system":"Be brief.","messages":[
        {"role":"user","content":"hi"},
        {"role":"system","content":[{"type":"text","text":"Agents: none."}]},
        {"role":"user","content":"again"}]}"#)
    .unwrap();
    let m: Vec<(&str, &str)> = r
        .chat
        .messages
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str()))
        .collect();
    assert_eq!(
        m,
        [
            ("system", "Be brief.\n\nAgents: none."),
            ("user", "hi"),
            ("user", "again")
        ]
    );
    let r = req(
        r#"{"max_tokens":5,"messages":[{"role":"user","content":"hi"},
        {"role":"system","content":"note"}]}"#,
    )
    .unwrap();
    assert_eq!(r.chat.messages[0].role, "system");
    assert_eq!(r.chat.messages[0].content, "note");
}

#[test]
fn bad_requests_name_their_field() {
    let cases = [
        (
            r#"{"messages":[{"role":"user","content":"x"}]}"#,
            "max_tokens",
        ),
        (
            r#"{"max_tokens":0,"messages":[{"role":"user","content":"x"}]}"#,
            "max_tokens",
        ),
        (r#"{"max_tokens":5,"messages":[]}"#, "messages"),
        (
            r#"{"max_tokens":5,"messages":[{"role":"tool","content":"x"}]}"#,
            "messages[0].role",
        ),
        (
            r#"{"max_tokens":5,"messages":[{"role":"user","content":[{"type":"image"}]}]}"#,
            "messages[0].content[0]",
        ),
        (
            r#"{"max_tokens":5,"messages":[{"role":"user","content":[{"type":"tool_use","name":"f"}]}]}"#,
            "messages[0].content[0]",
        ),
        (
            r#"{"max_tokens":5,"temperature":1.5,"messages":[{"role":"user","content":"x"}]}"#,
            "temperature",
        ),
        (
            r#"{"max_tokens":5,"stop_sequences":"x","messages":[{"role":"user","content":"x"}]}"#,
            "stop_sequences",
        ),
        (
            r#"{"max_tokens":5,"tools":[{"name":"f"}],"messages":[{"role":"user","content":"x"}]}"#,
            "tools[0].input_schema",
        ),
        (
            r#"{"max_tokens":5,"tools":[{"name":"f g","input_schema":{}}],"messages":[{"role":"user","content":"x"}]}"#,
            "tools[0].name",
        ),
        (
            r#"{"max_tokens":5,"tools":[{"type":"bash_20250124","name":"bash"}],"messages":[{"role":"user","content":"x"}]}"#,
            "tools[0].type",
        ),
        (
            r#"{"max_tokens":5,"tool_choice":{"type":"tool"},"tools":[],"messages":[{"role":"user","content":"x"}]}"#,
            "tool_choice",
        ),
        (
            r#"{"max_tokens":5,"system":7,"messages":[{"role":"user","content":"x"}]}"#,
            "system",
        ),
    ];
    for (body, param) in cases {
        let e = req(body).expect_err(body);
        assert_eq!(
            (e.status, e.param.as_deref()),
            (400, Some(param)),
            "{body}: {e:?}"
        );
        let b = AnthropicError(e).body();
        assert_eq!(b["type"], "error");
        assert_eq!(b["error"]["type"], "invalid_request_error");
    }
    // count_tokens needs no max_tokens.
    assert!(messages_request(br#"{"messages":[{"role":"user","content":"x"}]}"#, true).is_ok());
}

#[test]
fn bodies_have_anthropics_shape() {
    let u = Usage {
        prompt_tokens: 4,
        completion_tokens: 3,
        cached_tokens: 0,
    };
    let calls = [ToolCall {
        name: "f".into(),
        arguments: r#"{"a":1}"#.into(),
    }];
    let w = body::whole("m", "", &calls, ("tool_use", None), &u);
    assert_eq!(w["type"], "message");
    assert_eq!(w["content"][0]["type"], "tool_use");
    assert_eq!(w["content"][0]["input"]["a"], 1);
    assert!(w["content"][0]["id"]
        .as_str()
        .unwrap()
        .starts_with("toolu_"));
    assert_eq!(w["usage"]["output_tokens"], 3);
    let t = body::whole("m", "hi", &[], ("end_turn", None), &u);
    assert_eq!(t["content"], json!([{"type": "text", "text": "hi"}]));
    assert_eq!(body::stop_reason("stop", Some("X")), "stop_sequence");
    assert_eq!(body::stop_reason("length", None), "max_tokens");
    assert_eq!(body::stop_reason("stop", None), "end_turn");
    assert_eq!(body::stop_reason("tool_calls", None), "tool_use");
    assert_eq!(
        AnthropicError(ApiError::unauthorized("no")).kind(),
        "authentication_error"
    );
    assert_eq!(
        AnthropicError(ApiError::queue_full()).kind(),
        "rate_limit_error"
    );
}
