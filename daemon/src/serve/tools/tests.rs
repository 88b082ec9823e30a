use serde_json::{json, Value};

use super::parse::parse;
use super::render::{forced_grammar, prepare};
use super::*;
use crate::serve::grammar::Grammar;
use dwarfstar_tokenizer::ChatMessage;

const NAMES: &[&str] = &["get_weather", "add"];

fn call(name: &str, args: Value) -> ToolCall {
    ToolCall {
        name: name.into(),
        arguments: args.to_string(),
    }
}

#[test]
fn families_are_told_by_their_templates() {
    assert_eq!(Family::of("{{'<tool_call>\\n'}}"), Family::Hermes);
    assert_eq!(
        Family::of("<|start_header_id|>ipython<|end_header_id|>"),
        Family::Llama3
    );
    assert_eq!(
        Family::of("<｜tool▁calls▁begin｜>function<｜tool▁sep｜>```json"),
        Family::DeepSeekV3
    );
    assert_eq!(Family::of("<｜tool▁calls▁begin｜>"), Family::DeepSeekV31);
    assert_eq!(
        Family::of("set dsml_token = '｜DSML｜'"),
        Family::DeepSeekV4
    );
    assert_eq!(Family::of("<|im_start|>"), Family::Generic);
}

#[test]
fn hermes_calls_and_content() {
    let p = parse(
        "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>\n<tool_call>{\"name\": \"add\", \"arguments\": \"{\\\"a\\\": 1}\"}",
        Family::Hermes,
        NAMES,
    );
    assert_eq!(p.content, "Let me look.");
    assert_eq!(
        p.calls,
        vec![
            call("get_weather", json!({"city": "Oslo"})),
            call("add", json!({"a": 1}))
        ]
    );
}

#[test]
fn llama3_deepseek_and_generic_calls() {
    let p = parse(
        "<|python_tag|>{\"name\": \"add\", \"parameters\": {\"a\": 2}}",
        Family::Llama3,
        NAMES,
    );
    assert_eq!(p.calls, vec![call("add", json!({"a": 2}))]);
    let p = parse(
        "ok<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>add\n```json\n{\"a\": 3}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        Family::DeepSeekV3,
        NAMES,
    );
    assert_eq!(
        (p.content.as_str(), p.calls),
        ("ok", vec![call("add", json!({"a": 3}))])
    );
    let p = parse(
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>add<｜tool▁sep｜>{\"a\": 4}<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        Family::DeepSeekV31,
        NAMES,
    );
    assert_eq!(p.calls, vec![call("add", json!({"a": 4}))]);
    let p = parse(
        "<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"city\" string=\"true\">Oslo</｜DSML｜parameter>\n<｜DSML｜parameter name=\"days\" string=\"false\">3</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>",
        Family::DeepSeekV4,
        NAMES,
    );
    assert_eq!(
        p.calls,
        vec![call("get_weather", json!({"city": "Oslo", "days": 3}))]
    );
    let p = parse(
        " {\"tool_calls\": [{\"name\": \"add\", \"arguments\": {\"a\": 5}}]}\n",
        Family::Generic,
        NAMES,
    );
    assert_eq!(p.calls, vec![call("add", json!({"a": 5}))]);
    // The generic form is understood whatever the family.
    let p = parse(
        "{\"name\": \"add\", \"arguments\": {}}",
        Family::Hermes,
        NAMES,
    );
    assert_eq!(p.calls, vec![call("add", json!({}))]);
}

#[test]
fn malformed_or_unknown_calls_stay_content() {
    for (text, fam) in [
        (
            "<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": }</tool_call>",
            Family::Hermes,
        ),
        (
            "<tool_call>{\"name\": \"rm_rf\", \"arguments\": {}}</tool_call>",
            Family::Hermes,
        ),
        ("{\"name\": \"add\", \"arguments\": [1]}", Family::Generic),
        ("{\"city\": \"Oslo\"}", Family::Generic),
        (
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>add<｜tool▁sep｜>{oops<｜tool▁call▁end｜>",
            Family::DeepSeekV31,
        ),
        ("Sunny, 20 degrees.", Family::Llama3),
    ] {
        let p = parse(text, fam, NAMES);
        assert!(p.calls.is_empty(), "{text}");
        assert_eq!(p.content, text);
    }
}

fn spec(choice: Choice, parallel: bool) -> ToolSpec {
    ToolSpec {
        tools: vec![
            json!({"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"]}}}),
            json!({"type": "function", "function": {"name": "add"}}),
        ],
        choice,
        parallel,
    }
}

#[test]
fn forced_grammars_accept_what_the_parsers_read() {
    let cases = [
        (Family::Hermes, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"days\": 2}}\n</tool_call>\n<tool_call>\n{\"name\": \"add\", \"arguments\": {}}\n</tool_call>"),
        (Family::Generic, "{\"tool_calls\": [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"days\": 2}}, {\"name\": \"add\", \"arguments\": {}}]}"),
        (Family::DeepSeekV3, "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Oslo\", \"days\": 2}\n```<｜tool▁call▁end｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>add\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>"),
        (Family::DeepSeekV31, "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Oslo\", \"days\": 2}<｜tool▁call▁end｜><｜tool▁call▁begin｜>add<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜>"),
        (Family::DeepSeekV4, "<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"city\" string=\"false\">\"Oslo\"</｜DSML｜parameter>\n<｜DSML｜parameter name=\"days\" string=\"false\">2</｜DSML｜parameter>\n</｜DSML｜invoke>\n<｜DSML｜invoke name=\"add\">\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>"),
    ];
    for (fam, text) in cases {
        let g = forced_grammar(&spec(Choice::Required, true), fam)
            .unwrap()
            .unwrap();
        let g = Grammar::parse(&g).unwrap_or_else(|e| panic!("{fam:?}: {e}\n{g}"));
        assert!(g.accepts(text), "{fam:?} refuses {text}");
        let p = parse(text, fam, NAMES);
        assert_eq!(
            p.calls,
            vec![
                call("get_weather", json!({"city": "Oslo", "days": 2})),
                call("add", json!({}))
            ],
            "{fam:?}"
        );
    }
    // Llama 3: one call; a named choice allows only that tool.
    let g = forced_grammar(&spec(Choice::Named("add".into()), false), Family::Llama3)
        .unwrap()
        .unwrap();
    let g = Grammar::parse(&g).unwrap();
    assert!(g.accepts("{\"name\": \"add\", \"parameters\": {}}"));
    assert!(!g.accepts("{\"name\": \"get_weather\", \"parameters\": {\"city\": \"x\"}}"));
    // Without parallel calls, one only; a missing required argument is refused.
    let g = forced_grammar(&spec(Choice::Required, false), Family::Generic)
        .unwrap()
        .unwrap();
    let g = Grammar::parse(&g).unwrap();
    assert!(!g.accepts("{\"tool_calls\": [{\"name\": \"add\", \"arguments\": {}}, {\"name\": \"add\", \"arguments\": {}}]}"));
    assert!(!g.accepts("{\"tool_calls\": [{\"name\": \"get_weather\", \"arguments\": {}}]}"));
    // Parallel calls: at most one per tool (two here), and a named choice
    // one call, so a model repeating itself cannot run into max_tokens.
    let g = forced_grammar(&spec(Choice::Required, true), Family::Generic)
        .unwrap()
        .unwrap();
    let g = Grammar::parse(&g).unwrap();
    let add = "{\"name\": \"add\", \"arguments\": {}}";
    assert!(g.accepts(&format!("{{\"tool_calls\": [{add}, {add}]}}")));
    assert!(!g.accepts(&format!("{{\"tool_calls\": [{add}, {add}, {add}]}}")));
    let g = forced_grammar(&spec(Choice::Named("add".into()), true), Family::Hermes)
        .unwrap()
        .unwrap();
    let g = Grammar::parse(&g).unwrap();
    let one = format!("<tool_call>\n{add}\n</tool_call>");
    assert!(g.accepts(&one));
    assert!(!g.accepts(&format!("{one}\n{one}")));
    assert!(forced_grammar(&spec(Choice::Auto, true), Family::Generic)
        .unwrap()
        .is_none());
}

#[test]
fn templates_without_tools_get_a_note_and_polyfilled_turns() {
    let mut asst = ChatMessage::new("assistant", "");
    asst.tool_calls = Some(json!([{"id": "c1", "type": "function",
        "function": {"name": "add", "arguments": {"a": 1}}}]));
    let mut res = ChatMessage::new("tool", "2");
    res.tool_call_id = Some("c1".into());
    let msgs = vec![ChatMessage::new("user", "hi"), asst, res];
    let (out, tools) = prepare(msgs.clone(), &spec(Choice::Auto, true), false);
    assert!(tools.is_none());
    assert_eq!(out[0].role, "system");
    assert!(out[0].content.contains("get_weather") && out[0].content.contains("tool_calls"));
    // Keys as written (name, then arguments), as the note asks the model to.
    assert_eq!(
        out[2].content,
        "{\"tool_calls\":[{\"name\":\"add\",\"arguments\":{\"a\":1}}]}"
    );
    assert_eq!(
        (out[3].role.as_str(), out[3].content.as_str()),
        (
            "user",
            "{\"tool_response\":{\"tool_call_id\":\"c1\",\"content\":\"2\"}}"
        )
    );
    // A template that reads tools gets them and the messages unchanged.
    let (out, tools) = prepare(msgs.clone(), &spec(Choice::Auto, true), true);
    assert_eq!(out, msgs);
    assert_eq!(tools.unwrap().as_array().unwrap().len(), 2);
}

#[test]
fn tool_requests_are_checked() {
    let o = |v: Value| v.as_object().unwrap().clone();
    let ok = tool_spec(&o(json!({"tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}}, "parallel_tool_calls": false})))
        .unwrap()
        .unwrap();
    assert_eq!((ok.choice, ok.parallel), (Choice::Named("f".into()), false));
    for (body, param) in [
        (json!({"tools": {}}), "tools"),
        (json!({"tools": [{"type": "retrieval"}]}), "tools[0]"),
        (
            json!({"tools": [{"type": "function", "function": {"name": "a b"}}]}),
            "tools[0].function.name",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "maybe"}),
            "tool_choice",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}}}),
            "tool_choice",
        ),
    ] {
        let e = tool_spec(&o(body.clone())).unwrap_err();
        assert_eq!(e.param.as_deref(), Some(param), "{body}");
    }
}
