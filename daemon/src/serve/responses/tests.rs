//! Responses API parsing: items into chat messages, flat tools, refusals.

use super::*;
use crate::serve::openai::Usage;
use crate::serve::tools::Choice;

#[test]
fn items_become_chat_messages() {
    let r = responses_request(
        br#"{"model":"m","instructions":"Be brief.","input":[
          {"role":"user","content":"Weather?"},
          {"type":"reasoning","summary":[]},
          {"type":"function_call","call_id":"c1","name":"get_weather","arguments":"{\"city\":\"Paris\"}"},
          {"type":"function_call","call_id":"c2","name":"get_weather","arguments":"{\"city\":\"Rome\"}"},
          {"type":"function_call_output","call_id":"c1","output":"sunny"},
          {"type":"message","role":"developer","content":[{"type":"input_text","text":"ok"}]}],
          "tools":[{"type":"function","name":"get_weather","parameters":{"type":"object"}}],
          "tool_choice":{"type":"function","name":"get_weather"},"max_output_tokens":20,"temperature":0.5,
          "store":false,"parallel_tool_calls":false}"#,
    )
    .unwrap();
    let m = &r.chat.messages;
    assert_eq!(m.len(), 5, "{m:?}");
    assert_eq!(
        (m[0].role.as_str(), m[0].content.as_str()),
        ("system", "Be brief.")
    );
    assert_eq!(m[1].content, "Weather?");
    let calls = m[2].tool_calls.as_ref().unwrap().as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1]["function"]["arguments"]["city"], "Rome");
    assert_eq!(m[3].tool_call_id.as_deref(), Some("c1"));
    assert_eq!(m[4].role, "system");
    let t = r.chat.tools.as_ref().unwrap();
    assert_eq!(t.choice, Choice::Named("get_weather".into()));
    assert!(!t.parallel && !r.parallel_tool_calls);
    assert_eq!(r.chat.sampling.max_tokens, Some(20));
    assert_eq!(r.instructions.as_deref(), Some("Be brief."));
    let s = responses_request(br#"{"input":"hi","stream":true}"#).unwrap();
    assert_eq!(s.chat.messages[0].content, "hi");
    assert!(s.chat.sampling.stream && s.chat.tools.is_none());
}

/// What Codex sends: functions grouped in a `namespace` are offered as
/// functions; hosted tools (run only by OpenAI) are left out.
#[test]
fn namespaces_flatten_and_hosted_tools_are_left_out() {
    let r = responses_request(
        br#"{"input":"x","tools":[
          {"type":"function","name":"exec_command","parameters":{"type":"object"}},
          {"type":"namespace","name":"agents","tools":[
            {"type":"function","name":"close_agent","parameters":{"type":"object"}}]},
          {"type":"web_search","external_web_access":false}]}"#,
    )
    .unwrap();
    let t = r.chat.tools.unwrap();
    assert_eq!(t.names(), vec!["exec_command", "close_agent"]);
    let e = responses_request(br#"{"input":"x","tools":[{"type":"namespace","name":"n"}]}"#)
        .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("tools[0].tools"));
}

#[test]
fn bad_requests_name_their_field() {
    let cases = [
        (r#"{}"#, "input"),
        (r#"{"input":[]}"#, "input"),
        (
            r#"{"input":[{"role":"tool","content":"x"}]}"#,
            "input[0].role",
        ),
        (
            r#"{"input":[{"type":"image_generation_call"}]}"#,
            "input[0].type",
        ),
        (
            r#"{"input":[{"type":"function_call","name":"f"}]}"#,
            "input[0]",
        ),
        (
            r#"{"input":[{"type":"function_call_output","output":"x"}]}"#,
            "input[0].call_id",
        ),
        (
            r#"{"input":[{"role":"user","content":[{"type":"input_image"}]}]}"#,
            "input[0].content[0]",
        ),
        (
            r#"{"input":"x","tools":[{"type":"custom","name":"f"}]}"#,
            "tools[0].type",
        ),
        (
            r#"{"input":"x","tools":[{"type":"function","name":"a b"}]}"#,
            "tools[0].name",
        ),
        (
            r#"{"input":"x","tool_choice":"sometimes","tools":[]}"#,
            "tool_choice",
        ),
        (
            r#"{"input":"x","max_output_tokens":0}"#,
            "max_output_tokens",
        ),
        (r#"{"input":"x","temperature":3}"#, "temperature"),
        (
            r#"{"input":"x","previous_response_id":"resp_1"}"#,
            "previous_response_id",
        ),
    ];
    for (body, param) in cases {
        let e = responses_request(body.as_bytes()).expect_err(body);
        assert_eq!(
            (e.status, e.param.as_deref()),
            (400, Some(param)),
            "{body}: {e:?}"
        );
    }
}

#[test]
fn bodies_have_the_responses_shape() {
    let r = responses_request(br#"{"input":"hi","max_output_tokens":5}"#).unwrap();
    let meta = body::Meta::new(&r, "m");
    assert!(meta.id.starts_with("resp_"));
    let u = Usage {
        prompt_tokens: 2,
        completion_tokens: 5,
        cached_tokens: 0,
    };
    let item = body::message_item("msg_1", Some("hey"), "completed");
    let v = meta.response(
        "incomplete",
        vec![item],
        Some(&u),
        Some("max_output_tokens"),
    );
    assert_eq!(v["object"], "response");
    assert_eq!(v["output"][0]["content"][0]["type"], "output_text");
    assert_eq!(v["usage"]["total_tokens"], 7);
    assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
    let c = body::call_item("fc_1", "call_1", "f", "{}", "completed");
    assert_eq!(
        (c["type"].as_str(), c["call_id"].as_str()),
        (Some("function_call"), Some("call_1"))
    );
    let mut ev = body::Events::default();
    assert_eq!(ev.event("a", json!({}))["sequence_number"], 0);
    assert_eq!(ev.event("b", json!({"x": 1}))["sequence_number"], 1);
}
