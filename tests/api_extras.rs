//! OpenAI's `logprobs` and `n` against a served SmolLM2: logprobs are the
//! model's own distribution (checked against an in-process forward pass),
//! whole and streamed; `n` choices carry their index and seed + i.

use serde_json::{json, Value};

use crate::api::Server;
use crate::common::*;

fn log_softmax(l: &[f32]) -> Vec<f32> {
    let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max
        + l.iter()
            .map(|&x| ((x - max) as f64).exp())
            .sum::<f64>()
            .ln() as f32;
    l.iter().map(|&x| x - lse).collect()
}

fn f(v: &Value) -> f32 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}")) as f32
}

#[test]
fn logprobs_are_the_models_distribution_whole_and_streamed() {
    let l = load(SMOLLM2);
    let prompt = l
        .tokenizer
        .encode("The capital of France is", true, true)
        .unwrap();
    let mut state = l.model.new_state(64);
    let want = log_softmax(&l.model.forward(&prompt, &mut state, false).unwrap());
    let mut best: Vec<(usize, f32)> = want.iter().copied().enumerate().collect();
    best.sort_by(|a, b| b.1.total_cmp(&a.1));

    let srv = Server::start_model(&model_path(SMOLLM2), &[], None);
    // Text completions: parallel arrays; the first position against the
    // forward pass, every greedy token the most likely of its position.
    let (s, v) = srv.post(
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 6, "temperature": 0, "logprobs": 5}),
    );
    assert_eq!(s, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    let toks = lp["token_logprobs"].as_array().unwrap();
    assert_eq!(toks.len(), 6, "{lp}");
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 6);
    let first_top = lp["top_logprobs"][0].as_object().unwrap();
    assert_eq!(first_top.len(), 5);
    assert!((f(&toks[0]) - best[0].1).abs() < 2e-2, "{lp} vs {best:?}");
    let mut tops: Vec<f32> = first_top.values().map(f).collect();
    tops.sort_by(|a, b| b.total_cmp(a));
    for (got, (_, w)) in tops.iter().zip(&best) {
        assert!((got - w).abs() < 2e-2, "{tops:?} vs {:?}", &best[..5]);
    }
    for (i, t) in toks.iter().enumerate() {
        let max = lp["top_logprobs"][i]
            .as_object()
            .unwrap()
            .values()
            .map(f)
            .fold(f32::NEG_INFINITY, f32::max);
        assert!(f(t) <= 0.0 && (f(t) - max).abs() < 1e-6, "{lp}");
    }
    let text: String = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(text, v["choices"][0]["text"].as_str().unwrap());
    assert_eq!(lp["text_offset"][0], 0);

    // Chat: content entries with bytes and top_logprobs, best first.
    let req = json!({
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 8, "temperature": 0, "logprobs": true, "top_logprobs": 3,
    });
    let (s, v) = srv.post("/v1/chat/completions", &req);
    assert_eq!(s, 200, "{v}");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(!content.is_empty());
    let mut joined = Vec::new();
    for e in content {
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert!(f(&e["logprob"]) <= 0.0);
        assert!(
            (f(&e["logprob"]) - f(&top[0]["logprob"])).abs() < 1e-6,
            "{e}"
        );
        assert!(f(&top[0]["logprob"]) >= f(&top[1]["logprob"]));
        let bytes: Vec<u8> = e["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        joined.extend(bytes);
    }
    let whole_text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(String::from_utf8_lossy(&joined), whole_text);

    // Streamed: the same entries, spread over the chunks.
    let chunks = srv.stream("/v1/chat/completions", &req);
    let streamed: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array())
        .flatten()
        .collect();
    assert_eq!(streamed.len(), content.len());
    for (a, b) in streamed.iter().zip(content) {
        assert_eq!(a["token"], b["token"]);
        assert!((f(&a["logprob"]) - f(&b["logprob"])).abs() < 1e-4);
    }
}

#[test]
fn n_choices_carry_their_index_and_seed_plus_i() {
    let srv = Server::start_model(&model_path(SMOLLM2), &[], None);
    let req = json!({
        "messages": [{"role": "user", "content": "Tell me a word."}],
        "max_tokens": 6, "temperature": 1.0, "seed": 7, "n": 3,
    });
    let (s, v) = srv.post("/v1/chat/completions", &req);
    assert_eq!(s, 200, "{v}");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert!(c["message"]["content"].is_string());
    }
    let used = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((3..=18).contains(&used), "{v}");
    // Choice 1 is what one request seeded 8 gives.
    let mut one = req.clone();
    one["n"] = json!(1);
    one["seed"] = json!(8);
    let (_, w) = srv.post("/v1/chat/completions", &one);
    assert_eq!(
        w["choices"][0]["message"]["content"],
        choices[1]["message"]["content"]
    );
    // Streamed: every choice's chunks carry its index and each ends.
    let mut sreq = req.clone();
    sreq["stream_options"] = json!({"include_usage": true});
    let chunks = srv.stream("/v1/chat/completions", &sreq);
    for (i, choice) in choices.iter().enumerate() {
        let text: String = chunks
            .iter()
            .filter(|c| c["choices"][0]["index"] == i)
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, choice["message"]["content"].as_str().unwrap());
        assert!(
            chunks
                .iter()
                .any(|c| c["choices"][0]["index"] == i
                    && c["choices"][0]["finish_reason"].is_string())
        );
    }
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], used);
    // Too many choices is a 400 naming `n`.
    let mut bad = req.clone();
    bad["n"] = json!(9);
    let (s, e) = srv.post("/v1/chat/completions", &bad);
    assert_eq!((s, e["error"]["param"].as_str()), (400, Some("n")));
}
