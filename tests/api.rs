//! `dwarfstar serve` from the outside: the real binary on a free loopback
//! port with SmolLM2, spoken to over HTTP. Greedy answers must equal
//! `dwarfstar run`'s, alone or batched with 15 other streams; bad requests
//! get OpenAI-shaped errors and leave the server serving.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

/// A running `dwarfstar serve`, killed on drop.
pub(crate) struct Server {
    child: Child,
    base: String,
    agent: ureq::Agent,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into()
}

impl Server {
    /// Starts the server with SmolLM2 on port 0 and reads the address it
    /// printed.
    fn start(extra: &[&str], env_keys: Option<&str>) -> Server {
        Server::start_model(&model_path(SMOLLM2), extra, env_keys)
    }

    /// [`Server::start`] with `model`.
    pub(crate) fn start_model(
        model: &std::path::Path,
        extra: &[&str],
        env_keys: Option<&str>,
    ) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dwarfstar"));
        cmd.args([
            "serve",
            "--model",
            model.to_str().unwrap(),
            "--http-addr",
            "127.0.0.1:0",
            "--threads",
            "2",
        ])
        .args(extra)
        .env("DWARFSTAR_LOG", "warn")
        .env_remove("DWARFSTAR_API_KEYS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if let Some(k) = env_keys {
            cmd.env("DWARFSTAR_API_KEYS", k);
        }
        let mut child = cmd.spawn().expect("dwarfstar serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(at) = line.find("http://") else {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            let _ = child.kill();
            panic!("serve did not start: {line}{err}");
        };
        let base = line[at..].split_whitespace().next().unwrap().to_string();
        Server {
            child,
            base,
            agent: agent(),
        }
    }

    fn get(&self, path: &str, key: Option<&str>) -> (u16, String) {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let mut r = req.call().expect("GET answered");
        let status = r.status().as_u16();
        (status, r.body_mut().read_to_string().unwrap())
    }

    fn post_raw(&self, path: &str, body: &str, key: Option<&str>) -> (u16, String) {
        let mut req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json");
        if let Some(k) = key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let mut r = req.send(body).expect("POST answered");
        let status = r.status().as_u16();
        (status, r.body_mut().read_to_string().unwrap())
    }

    pub(crate) fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (s, text) = self.post_raw(path, &body.to_string(), None);
        (
            s,
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
        )
    }

    /// Posts with `"stream": true`; returns every `data:` payload before
    /// `[DONE]` (which must come).
    pub(crate) fn stream(&self, path: &str, body: &Value) -> Vec<Value> {
        let mut body = body.clone();
        body["stream"] = json!(true);
        let mut r = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .expect("POST answered");
        assert_eq!(r.status().as_u16(), 200);
        let ct = r
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        let mut out = Vec::new();
        for line in BufReader::new(r.body_mut().as_reader()).lines() {
            let line = line.unwrap();
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                return out;
            }
            out.push(serde_json::from_str(data).unwrap());
        }
        panic!("the stream ended without [DONE]: {out:?}");
    }

    pub(crate) fn metrics(&self) -> String {
        let (s, t) = self.get("/metrics", None);
        assert_eq!(s, 200);
        t
    }
}

/// The value of a sample line of `/metrics`.
pub(crate) fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{sample} not in /metrics"))
        .parse()
        .unwrap()
}

/// What `dwarfstar run --temp 0 --json` generates.
fn run_greedy(args: &[&str], n: usize) -> Value {
    let model = model_path(SMOLLM2);
    let out = Command::new(env!("CARGO_BIN_EXE_dwarfstar"))
        .args([
            "run",
            "--model",
            model.to_str().unwrap(),
            "--temp",
            "0",
            "--json",
            "--threads",
            "2",
        ])
        .args(["-n", &n.to_string()])
        .args(args)
        .env("DWARFSTAR_LOG", "error")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn error_of(status: u16, body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{status}: {e}: {body}"));
    let e = v["error"].clone();
    for k in ["message", "type", "param", "code"] {
        assert!(e.get(k).is_some(), "{k} missing in {body}");
    }
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    e
}

fn chat_text(v: &Value) -> String {
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

fn streamed_text(chunks: &[Value], chat: bool) -> String {
    chunks
        .iter()
        .filter_map(|c| {
            let ch = c["choices"].get(0)?;
            if chat {
                ch["delta"]["content"].as_str().map(str::to_string)
            } else {
                ch["text"].as_str().map(str::to_string)
            }
        })
        .collect()
}

const SYSTEM: &str = "You are a concise assistant.";
const QUESTION: &str = "What is the capital of France?";

#[test]
fn serve_answers_like_run_whole_and_streamed() {
    let n = 24;
    let want = run_greedy(&["--chat", "--system", SYSTEM, "--prompt", QUESTION], n);
    let want_text = want["text"].as_str().unwrap();
    let want_finish = if want["tokens"].as_array().unwrap().len() < n {
        "stop"
    } else {
        "length"
    };
    let srv = Server::start(&[], None);

    assert_eq!(srv.get("/health", None).0, 200);
    let (s, page) = srv.get("/", None);
    assert_eq!(s, 200);
    assert!(page.contains("<title>DwarfStar</title>"));
    let (s, models) = srv.get("/v1/models", None);
    assert_eq!(s, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["object"], "list");
    let id = models["data"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(id, "SmolLM2-135M-Instruct-Q4_1");
    assert_eq!(srv.get(&format!("/v1/models/{id}"), None).0, 200);

    let req = json!({
        "model": id,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        "temperature": 0,
        "max_tokens": n,
    });
    let (s, v) = srv.post("/v1/chat/completions", &req);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], id.as_str());
    assert_eq!(chat_text(&v), want_text);
    assert_eq!(v["choices"][0]["finish_reason"], want_finish);
    let u = &v["usage"];
    assert_eq!(
        u["prompt_tokens"],
        want["prompt_tokens"].as_array().unwrap().len()
    );
    assert_eq!(
        u["completion_tokens"],
        want["tokens"].as_array().unwrap().len()
    );
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );

    // Streamed, with the usage chunk; its prompt comes from the prefix cache.
    let mut sreq = req.clone();
    sreq["stream_options"] = json!({"include_usage": true});
    let chunks = srv.stream("/v1/chat/completions", &sreq);
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(streamed_text(&chunks, true), want_text);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], u["completion_tokens"]);
    assert!(
        last["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        want_finish
    );

    // Text completions against `run --prompt`.
    let prompt = "The quick brown fox";
    let want = run_greedy(&["--prompt", prompt], 12);
    let creq = json!({"model": id, "prompt": prompt, "temperature": 0, "max_tokens": 12});
    let (s, v) = srv.post("/v1/completions", &creq);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], want["text"]);
    let chunks = srv.stream("/v1/completions", &creq);
    assert_eq!(
        streamed_text(&chunks, false),
        want["text"].as_str().unwrap()
    );
    // A stop string cuts the text and ends the sequence.
    let text = want["text"].as_str().unwrap();
    let cut = text
        .char_indices()
        .nth(text.chars().count() / 2)
        .map_or(0, |(i, _)| i);
    let stop: String = text[cut..].chars().take(3).collect();
    let mut sreq = creq.clone();
    sreq["stop"] = json!([stop]);
    let (_, v) = srv.post("/v1/completions", &sreq);
    assert_eq!(
        v["choices"][0]["text"].as_str().unwrap(),
        &text[..text.find(&stop).unwrap()]
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    let (s, st) = srv.get("/v1/status", None);
    assert_eq!(s, 200);
    let st: Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st["model"], id.as_str());
    assert!(st["generated_tokens"].as_u64().unwrap() > 0);
    let m = srv.metrics();
    assert_eq!(
        metric(
            &m,
            "dwarfstar_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"}"
        ),
        2.0
    );
    assert!(metric(&m, "dwarfstar_prefix_cache_hits_total") >= 1.0);
    assert!(metric(&m, "dwarfstar_time_to_first_token_seconds_count") >= 5.0);
    assert!(metric(&m, "dwarfstar_generated_tokens_total") > 0.0);
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let dir = std::env::temp_dir().join(format!("dwarfstar-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("serve.toml");
    std::fs::write(
        &cfg,
        "[http]\nmax_body_bytes = 65536\n[model]\nctx_size = 128\n",
    )
    .unwrap();
    let srv = Server::start(&["--config", cfg.to_str().unwrap()], None);
    let chat = "/v1/chat/completions";
    let user = json!([{"role": "user", "content": "Hi"}]);
    let cases: Vec<(String, u16, &str)> = vec![
        ("{\"messages\": [".into(), 400, ""),
        ("[]".into(), 400, ""),
        (json!({"messages": []}).to_string(), 400, "messages"),
        (json!({"messages": "Hi"}).to_string(), 400, "messages"),
        (
            json!({"messages": user, "temperature": "hot"}).to_string(),
            400,
            "temperature",
        ),
        (
            json!({"messages": user, "max_tokens": "ten"}).to_string(),
            400,
            "max_tokens",
        ),
        (
            json!({"messages": user, "max_tokens": -1}).to_string(),
            400,
            "max_tokens",
        ),
        (json!({"messages": user, "n": 9}).to_string(), 400, "n"),
        (
            json!({"messages": user, "stop": 7}).to_string(),
            400,
            "stop",
        ),
        (
            json!({"messages": [{"role": "wizard", "content": "x"}]}).to_string(),
            400,
            "messages[0].role",
        ),
        (
            json!({"messages": user, "model": "gpt-9"}).to_string(),
            404,
            "model",
        ),
        (
            json!({"messages": [{"role": "user", "content": "word ".repeat(300)}]}).to_string(),
            400,
            "messages",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x".repeat(70_000)}]}).to_string(),
            413,
            "",
        ),
    ];
    for (body, status, param) in &cases {
        let (s, text) = srv.post_raw(chat, body, None);
        assert_eq!(s, *status, "{body:.80}: {text}");
        let e = error_of(s, &text);
        assert_eq!(e["param"].as_str().unwrap_or(""), *param, "{text}");
        assert_eq!(e["type"], "invalid_request_error", "{text}");
    }
    let (_, text) = srv.post_raw(
        chat,
        &json!({"messages": user, "model": "gpt-9"}).to_string(),
        None,
    );
    assert_eq!(error_of(404, &text)["code"], "model_not_found");
    let (_, text) = srv.post_raw(
        chat,
        &json!({"messages": [{"role": "user", "content": "word ".repeat(300)}]}).to_string(),
        None,
    );
    assert_eq!(error_of(400, &text)["code"], "context_length_exceeded");
    let (s, text) = srv.post_raw(
        "/v1/completions",
        &json!({"prompt": [1, 999999]}).to_string(),
        None,
    );
    assert_eq!(
        (s, error_of(s, &text)["param"].as_str()),
        (400, Some("prompt"))
    );
    let (s, text) = srv.get("/v1/nothing", None);
    assert_eq!(s, 404);
    error_of(s, &text);

    // An enormous max_tokens is clamped to the context: the answer runs to
    // the end of the context and says "length".
    let (s, v) = srv.post(
        "/v1/completions",
        &json!({"prompt": "Once upon a time", "max_tokens": 1_000_000_000_000u64, "temperature": 0, "ignore_eos": true}),
    );
    assert_eq!(s, 200, "{v}");
    let u = &v["usage"];
    assert_eq!(u["total_tokens"], 128);
    assert_eq!(v["choices"][0]["finish_reason"], "length");

    // Still serving.
    let (s, v) = srv.post(
        chat,
        &json!({"messages": user, "max_tokens": 4, "temperature": 0}),
    );
    assert_eq!(s, 200, "{v}");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    let m = srv.metrics();
    assert!(
        metric(
            &m,
            "dwarfstar_requests_total{endpoint=\"/v1/chat/completions\",status=\"400\"}"
        ) >= 9.0
    );
    assert_eq!(
        metric(
            &m,
            "dwarfstar_requests_total{endpoint=\"/v1/chat/completions\",status=\"413\"}"
        ),
        1.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn api_keys_are_checked_and_remote_listening_needs_them() {
    let srv = Server::start(&["--api-key", "sk-one"], Some("sk-two, sk-three"));
    for (key, status) in [
        (None, 401),
        (Some("sk-wrong"), 401),
        (Some("sk-one"), 200),
        (Some("sk-three"), 200),
    ] {
        let (s, text) = srv.get("/v1/models", key);
        assert_eq!(s, status, "{key:?}: {text}");
        if status == 401 {
            assert_eq!(error_of(s, &text)["code"], "invalid_api_key");
        }
        let (s, _) = srv.post_raw("/v1/chat/completions", "{}", key);
        assert_eq!(s, if status == 401 { 401 } else { 400 });
    }
    assert_eq!(srv.get("/health", None).0, 200);

    let out = Command::new(env!("CARGO_BIN_EXE_dwarfstar"))
        .args([
            "serve",
            "--model",
            "/nonexistent.gguf",
            "--http-addr",
            "0.0.0.0:0",
        ])
        .env_remove("DWARFSTAR_API_KEYS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without API keys"), "{err}");
}

#[test]
fn sixteen_concurrent_streams_match_their_solo_runs() {
    // 16 streams and a long-running "anchor" sequence: every request is
    // admitted while the anchor runs (17 slots), so each of its steps is
    // shared with the anchor whatever the timing. Batching is observed
    // in the engine's own count of shared steps, not inferred from speed.
    let srv = Server::start(&["--max-batch", "17"], None);
    let topics = [
        "the sea",
        "a cat",
        "rain",
        "bread",
        "mountains",
        "a clock",
        "winter",
        "music",
        "a river",
        "the moon",
        "coffee",
        "a garden",
        "trains",
        "books",
        "the wind",
        "fire",
    ];
    let body = |t: &str| {
        json!({
            "messages": [{"role": "user", "content": format!("Write one sentence about {t}.")}],
            "temperature": 0,
            "max_tokens": 32,
        })
    };
    let mut longest = 0.0f64;
    let solo: Vec<String> = topics
        .iter()
        .map(|t| {
            let (s, v) = srv.post("/v1/chat/completions", &body(t));
            assert_eq!(s, 200, "{v}");
            longest = longest.max(v["usage"]["completion_tokens"].as_f64().unwrap_or(0.0));
            chat_text(&v)
        })
        .collect();
    let anchor_body = json!({"prompt": "Once upon a time", "max_tokens": 3000, "ignore_eos": true, "stream": true});
    let mut anchor = agent()
        .post(format!("{}/v1/completions", srv.base))
        .header("Content-Type", "application/json")
        .send(anchor_body.to_string())
        .unwrap();
    assert_eq!(anchor.status().as_u16(), 200);
    let mut anchor_lines = BufReader::new(anchor.body_mut().as_reader());
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        anchor_lines.read_line(&mut line).unwrap();
    }
    // The anchor has produced a token: it runs.
    let before = srv.metrics();
    let t0 = Instant::now();
    let got: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = topics
            .iter()
            .map(|t| {
                let srv = &srv;
                let b = body(t);
                sc.spawn(move || streamed_text(&srv.stream("/v1/chat/completions", &b), true))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall = t0.elapsed();
    let after = srv.metrics();
    // The anchor still runs: it ran through every step the 16 took.
    assert!(
        metric(&after, "dwarfstar_active_sequences") >= 1.0,
        "the anchor sequence ended before the 16 streams did"
    );
    drop(anchor_lines);
    drop(anchor);
    for (i, (g, s)) in got.iter().zip(&solo).enumerate() {
        assert_eq!(g, s, "stream {i} ({}) differs from its solo run", topics[i]);
    }
    let d = |k: &str| metric(&after, k) - metric(&before, k);
    let tokens = d("dwarfstar_generated_tokens_total");
    let steps = d("dwarfstar_engine_steps_total");
    let shared = d("dwarfstar_engine_batched_steps_total");
    eprintln!(
        "16 streams and an anchor: {tokens} tokens in {steps} steps ({shared} shared), {:.2}s",
        wall.as_secs_f64()
    );
    // Every step a stream ran was shared with the anchor: at least as
    // many as the longest stream's generated tokens (one step each).
    assert!(longest > 0.0, "the solo runs generated nothing");
    assert!(
        shared >= longest,
        "{shared} shared steps for streams of up to {longest} tokens"
    );
}

#[test]
fn a_full_queue_answers_429_and_cancelled_streams_free_their_slot() {
    let srv = Server::start(&["--max-batch", "1", "--queue", "1"], None);
    let long = json!({"prompt": "Once upon a time", "max_tokens": 4000, "ignore_eos": true, "stream": true});
    let open = |body: &Value| {
        agent()
            .post(format!("{}/v1/completions", srv.base))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .unwrap()
    };
    // A runs (its first token has come), B waits in the queue, C is refused.
    let mut a = open(&long);
    assert_eq!(a.status().as_u16(), 200);
    let mut a_lines = BufReader::new(a.body_mut().as_reader());
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        a_lines.read_line(&mut line).unwrap();
    }
    let b = open(&long);
    assert_eq!(b.status().as_u16(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&srv.metrics(), "dwarfstar_queue_depth") < 1.0 {
        assert!(Instant::now() < deadline, "B never queued");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (s, text) = srv.post_raw(
        "/v1/completions",
        &json!({"prompt": "Hi", "max_tokens": 2}).to_string(),
        None,
    );
    assert_eq!(s, 429, "{text}");
    let e = error_of(s, &text);
    assert_eq!(e["code"], "rate_limit_exceeded");

    // Hanging up on A and B frees the slot; the server serves again.
    drop(a_lines);
    drop(a);
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, text) = srv.post_raw(
            "/v1/completions",
            &json!({"prompt": "Hi", "max_tokens": 2}).to_string(),
            None,
        );
        if s == 200 {
            break;
        }
        assert_eq!(s, 429, "{text}");
        assert!(
            Instant::now() < deadline,
            "the cancelled streams kept their slot"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The engine frees the last sequence right after its final token is
    // sent, so the gauge may lag the response by a step.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&srv.metrics(), "dwarfstar_active_sequences") != 0.0 {
        assert!(
            Instant::now() < deadline,
            "a finished sequence stayed active"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
