//! Request parsing: defaults, every refusal names its `param`.

use super::fields::*;
use super::params::*;
use super::*;
use dwarfstar_tokenizer::ChatMessage;

fn chat(body: &str) -> Res<ChatRequest> {
    chat_request(body.as_bytes())
}

#[test]
fn a_minimal_chat_gets_openai_defaults() {
    let r = chat(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).unwrap();
    assert_eq!(r.model.as_deref(), Some("m"));
    assert_eq!(r.messages, vec![ChatMessage::new("user", "hi")]);
    let s = &r.sampling;
    assert_eq!(
        (s.temperature, s.top_p, s.top_k, s.min_p),
        (1.0, 1.0, 0, 0.0)
    );
    assert_eq!(
        (s.max_tokens, s.seed, s.stream, s.include_usage),
        (None, None, false, false)
    );
}

#[test]
fn every_field_is_read() {
    let r = chat(
        r#"{"messages":[{"role":"developer","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
            {"role":"assistant","content":null},{"role":"user","content":"q"}],
            "temperature":0,"top_p":0.5,"top_k":3,"min_p":0.1,"seed":-1,"max_tokens":9,
            "max_completion_tokens":7,"stop":["x","y"],"stream":true,"stream_options":{"include_usage":true},
            "n":1,"logprobs":false,"presence_penalty":0.5,"frequency_penalty":-0.5,"ignore_eos":true,
            "user":"someone","tools":[]}"#,
    )
    .unwrap();
    assert_eq!(r.model, None);
    assert_eq!(r.messages[0], ChatMessage::new("system", "a\nb"));
    assert_eq!(r.messages[1], ChatMessage::new("assistant", ""));
    let s = &r.sampling;
    assert_eq!(
        (s.temperature, s.top_p, s.top_k, s.min_p),
        (0.0, 0.5, 3, 0.1)
    );
    assert_eq!((s.max_tokens, s.seed), (Some(7), Some(u64::MAX)));
    assert_eq!(s.stop, vec!["x", "y"]);
    assert!(s.stream && s.include_usage && s.ignore_eos);
    assert_eq!((s.presence_penalty, s.frequency_penalty), (0.5, -0.5));
    assert_eq!(
        chat(r#"{"messages":[{"role":"user","content":"q"}],"stop":"z"}"#)
            .unwrap()
            .sampling
            .stop,
        vec!["z"]
    );
}

#[test]
fn bad_chat_requests_name_the_param() {
    let cases = [
        ("{", ""),
        ("[1]", ""),
        (r#"{"messages":[]}"#, "messages"),
        (r#"{"model":"m"}"#, "messages"),
        (r#"{"messages":"hi"}"#, "messages"),
        (r#"{"messages":[1]}"#, "messages[0]"),
        (
            r#"{"messages":[{"role":"function","content":"x"}]}"#,
            "messages[0].role",
        ),
        (r#"{"messages":[{"content":"x"}]}"#, "messages[0].role"),
        (r#"{"messages":[{"role":"user"}]}"#, "messages[0].content"),
        (
            r#"{"messages":[{"role":"user","content":5}]}"#,
            "messages[0].content",
        ),
        (
            r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
            "messages[0].content",
        ),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
            "temperature",
        ),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"temperature":3}"#,
            "temperature",
        ),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"top_p":1.5}"#,
            "top_p",
        ),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
            "max_tokens",
        ),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":-5}"#,
            "max_tokens",
        ),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":1.5}"#,
            "max_tokens",
        ),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":"10"}"#,
            "max_tokens",
        ),
        (r#"{"messages":[{"role":"user","content":"x"}],"n":9}"#, "n"),
        (r#"{"messages":[{"role":"user","content":"x"}],"n":0}"#, "n"),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"stop":[1]}"#,
            "stop",
        ),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"stop":{}}"#,
            "stop",
        ),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
            "stream",
        ),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":1}}"#,
            "stream_options.include_usage",
        ),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"seed":"s"}"#,
            "seed",
        ),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"model":7}"#,
            "model",
        ),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"logprobs":1}"#,
            "logprobs",
        ),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"top_logprobs":3}"#,
            "top_logprobs",
        ),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":21}"#,
            "top_logprobs",
        ),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}"#,
            "tools[0].function.name",
        ),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"xml"}}"#,
            "response_format",
        ),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"n","schema":{"type":"string","pattern":"a"}}}}"#,
            "response_format.json_schema.schema",
        ),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"grammar":"root ::= ["}"#,
            "grammar",
        ),
        (
            r#"{"messages":[{"role":"assistant","tool_calls":[{"function":{}}]}]}"#,
            "messages[0].tool_calls",
        ),
    ];
    for (body, param) in cases {
        let e = chat(body).expect_err(body);
        assert_eq!(e.status, 400, "{body}");
        assert_eq!(e.kind, "invalid_request_error");
        assert_eq!(
            e.param.as_deref().unwrap_or(""),
            param,
            "{body}: {}",
            e.message
        );
        let b = e.body();
        assert!(b["error"]["message"].is_string());
        assert!(b["error"].as_object().unwrap().contains_key("code"));
    }
}

#[test]
fn completion_prompts() {
    let p = |b: &str| completion_request(b.as_bytes()).map(|r| r.prompt);
    assert_eq!(p(r#"{"prompt":"a"}"#), Ok(Prompt::Text("a".into())));
    assert_eq!(p(r#"{"prompt":["a"]}"#), Ok(Prompt::Text("a".into())));
    assert_eq!(p(r#"{"prompt":[1,2]}"#), Ok(Prompt::Tokens(vec![1, 2])));
    assert_eq!(p(r#"{"prompt":[[3]]}"#), Ok(Prompt::Tokens(vec![3])));
    for bad in [
        r#"{}"#,
        r#"{"prompt":5}"#,
        r#"{"prompt":[]}"#,
        r#"{"prompt":["a","b"]}"#,
        r#"{"prompt":[-1]}"#,
        r#"{"prompt":[1,"a"]}"#,
    ] {
        let e = p(bad).expect_err(bad);
        assert_eq!(
            (e.status, e.param.as_deref()),
            (400, Some("prompt")),
            "{bad}"
        );
    }
}

#[test]
fn response_bodies_have_openais_shape() {
    let env = Envelope::new(Kind::Chat, "m");
    assert!(env.id.starts_with("chatcmpl-"));
    let u = Usage {
        prompt_tokens: 3,
        completion_tokens: 2,
        cached_tokens: 1,
    };
    let w = env.whole("hi", "stop", u);
    assert_eq!(w["object"], "chat.completion");
    assert_eq!(w["choices"][0]["message"]["content"], "hi");
    assert_eq!(w["usage"]["total_tokens"], 5);
    let c = env.chunk(Some("x"), true, None);
    assert_eq!(c["object"], "chat.completion.chunk");
    assert_eq!(c["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
    let end = env.chunk(None, false, Some("length"));
    assert_eq!(end["choices"][0]["delta"], json!({}));
    assert_eq!(env.usage_chunk(u)["choices"], json!([]));
    let t = Envelope::new(Kind::Text, "m");
    assert_eq!(t.whole("a", "length", u)["choices"][0]["text"], "a");
    assert_eq!(t.chunk(Some("b"), true, None)["object"], "text_completion");
    for e in [
        ApiError::unauthorized("no"),
        ApiError::model_not_found("x"),
        ApiError::too_large("big"),
        ApiError::queue_full(),
        ApiError::unavailable("down"),
        ApiError::internal("oops"),
    ] {
        let b = e.body();
        for k in ["message", "type", "param", "code"] {
            assert!(b["error"].as_object().unwrap().contains_key(k));
        }
    }
    assert_eq!(ApiError::unauthorized("x").code, Some("invalid_api_key"));
    assert_eq!(ApiError::model_not_found("x").status, 404);
}

#[test]
fn logprobs_and_n_are_read_per_endpoint() {
    let r = chat(
        r#"{"messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":4,"n":3}"#,
    )
    .unwrap();
    assert_eq!((r.sampling.logprobs, r.sampling.n), (Some(4), 3));
    let r = chat(r#"{"messages":[{"role":"user","content":"x"}],"logprobs":true}"#).unwrap();
    assert_eq!(r.sampling.logprobs, Some(0));
    let r =
        chat(r#"{"messages":[{"role":"user","content":"x"}],"logprobs":false,"top_logprobs":0}"#)
            .unwrap();
    assert_eq!((r.sampling.logprobs, r.sampling.n), (None, 1));
    let t = completion_request(br#"{"prompt":"a","logprobs":2}"#).unwrap();
    assert_eq!(t.sampling.logprobs, Some(2));
    let e = completion_request(br#"{"prompt":"a","logprobs":6}"#).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("logprobs"));
    let e = completion_request(br#"{"prompt":"a","logprobs":true}"#).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("logprobs"));
}

#[test]
fn logprobs_and_choices_have_openais_shape() {
    let toks = [
        LpToken {
            bytes: b"Hi".to_vec(),
            logprob: -0.5,
            top: vec![(b"Hi".to_vec(), -0.5), (b"Yo".to_vec(), -1.5)],
        },
        LpToken {
            bytes: vec![0xe2],
            logprob: -2.0,
            top: vec![],
        },
    ];
    let c = chat_logprobs(&toks);
    assert_eq!(c["content"][0]["token"], "Hi");
    assert_eq!(c["content"][0]["bytes"], json!([72, 105]));
    assert_eq!(c["content"][0]["top_logprobs"][1]["token"], "Yo");
    assert_eq!(c["content"][1]["bytes"], json!([0xe2]));
    let t = text_logprobs(&toks, 4);
    assert_eq!(t["tokens"][0], "Hi");
    assert_eq!(t["text_offset"], json!([4, 6]));
    assert_eq!(t["top_logprobs"][0]["Yo"], json!(-1.5));
    let env = Envelope::new(Kind::Chat, "m");
    let u = Usage {
        prompt_tokens: 1,
        completion_tokens: 4,
        cached_tokens: 0,
    };
    let a = at_choice(env.whole("a", "stop", u), 0, Some(c.clone()));
    let b = at_choice(env.whole("b", "length", u), 1, None);
    let m = merge_choices(vec![a, b], u);
    assert_eq!(m["choices"][1]["index"], 1);
    assert_eq!(m["choices"][1]["message"]["content"], "b");
    assert_eq!(m["choices"][0]["logprobs"], c);
    let chunk = at_choice(env.chunk(Some("x"), false, None), 3, None);
    assert_eq!(chunk["choices"][0]["index"], 3);
}
