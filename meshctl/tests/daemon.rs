//! `meshctl` against a real `dwarfstar serve` (SmolLM2, loopback, free
//! ports): status and peers describe the node, `generate --json` prints
//! exactly what `dwarfstar run --json` prints, bad requests get clean errors
//! and leave the daemon serving, API keys are enforced.
//!
//! The daemon binary is the `dwarfstar` beside this package's `meshctl`
//! (`cargo test --workspace --release` builds both); the model comes from
//! `$DWARFSTAR_MODELS_DIR` (default `<repo>/models`).

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

const SMOLLM2: &str = "SmolLM2-135M-Instruct-Q4_1.gguf";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn model_path() -> PathBuf {
    models_file(SMOLLM2)
}

fn models_file(name: &str) -> PathBuf {
    let dir = std::env::var_os("DWARFSTAR_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models"));
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run deploy/fetch-models.sh (or set DWARFSTAR_MODELS_DIR)",
        p.display()
    );
    p
}

/// `target/<profile>/dwarfstar`, beside `meshctl`.
fn dwarfstar_bin() -> PathBuf {
    let meshctl = PathBuf::from(env!("CARGO_BIN_EXE_meshctl"));
    let p = meshctl.with_file_name(format!("dwarfstar{}", std::env::consts::EXE_SUFFIX));
    assert!(
        p.exists(),
        "{} is missing: build it first (`cargo build --release -p dwarfstar`; \
         `cargo test --workspace --release` builds it too)",
        p.display()
    );
    p
}

/// A running `dwarfstar serve`, killed on drop.
struct Daemon {
    child: Child,
    /// `http://HOST:PORT` of its gRPC Control service.
    grpc: String,
    /// HOST:PORT of its HTTP API.
    http: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start(extra: &[&str]) -> Daemon {
        let model = model_path();
        let mut child = Command::new(dwarfstar_bin())
            .args(["serve", "--model", model.to_str().unwrap()])
            .args(["--http-addr", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"])
            .args(["--threads", "2"])
            .args(extra)
            .env("DWARFSTAR_LOG", "warn")
            .env_remove("DWARFSTAR_API_KEYS")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dwarfstar serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(at) = line.find("gRPC control on ") else {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            let _ = child.kill();
            panic!("serve did not start gRPC: {line}{err}");
        };
        let addr = line[at + "gRPC control on ".len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        let http = line
            .split("http://")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_default()
            .to_string();
        Daemon {
            child,
            grpc: format!("http://{addr}"),
            http,
        }
    }

    fn meshctl(&self, args: &[&str]) -> Output {
        meshctl_at(&self.grpc, args)
    }

    /// Runs meshctl, which must succeed; its stdout as JSON.
    fn json(&self, args: &[&str]) -> Value {
        let out = self.meshctl(args);
        assert!(
            out.status.success(),
            "meshctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// Runs meshctl, which must fail; its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.meshctl(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "meshctl {args:?} succeeded: {err}");
        assert!(err.starts_with("meshctl: "), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        err
    }
}

fn meshctl_at(addr: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["--addr", addr])
        .args(args)
        .env_remove("MESHCTL_ADDR")
        .env_remove("MESHCTL_API_KEY")
        .output()
        .expect("meshctl runs")
}

/// What `dwarfstar run --json` prints for `args`.
fn run_json(args: &[&str]) -> Value {
    run_json_with(&model_path(), args)
}

fn run_json_with(model: &std::path::Path, args: &[&str]) -> Value {
    let out = Command::new(dwarfstar_bin())
        .args(["run", "--model", model.to_str().unwrap(), "--json"])
        .args(["--threads", "2"])
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

#[test]
fn meshctl_drives_a_single_daemon() {
    let d = Daemon::start(&[]);

    // status: the node, where it is, what it holds.
    let s = d.json(&["status", "--json"]);
    assert_eq!(s["model"], SMOLLM2, "{s}");
    let nodes = s["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{s}");
    let n = &nodes[0];
    assert!(!n["id"].as_str().unwrap().is_empty());
    assert_eq!(n["id"], s["node_id"]);
    assert_eq!(n["local"], true);
    assert_eq!(
        format!("http://{}", n["addresses"]["grpc"].as_str().unwrap()),
        d.grpc
    );
    assert!(n["addresses"]["http"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(n["state"], "ready");
    assert_eq!(n["roles"], serde_json::json!(["coordinator", "stage"]));
    let stage = &n["assignment"]["stages"][0];
    assert_eq!(
        (stage["layer_start"].as_u64(), stage["layer_end"].as_u64()),
        (Some(0), Some(30)),
        "SmolLM2 has 30 layers: {s}"
    );
    assert_eq!(
        (
            stage["holds_embed"].as_bool(),
            stage["holds_output"].as_bool()
        ),
        (Some(true), Some(true))
    );
    assert!(n["mem_used"].as_u64().unwrap() > 50 << 20, "{s}");
    assert!(n["mem_budget"].as_u64().unwrap() >= n["mem_used"].as_u64().unwrap());

    // The table says the same.
    let out = d.meshctl(&["status"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for want in ["NODE", "0-29 +embed +output", "ready", "coordinator,stage"] {
        assert!(text.contains(want), "{want} not in:\n{text}");
    }

    // peers, plan, load of the model already served.
    let p = d.json(&["peers", "--json"]);
    assert_eq!(p["peers"][0]["local"], true);
    assert_eq!(p["peers"][0]["capabilities"]["models"][0]["name"], SMOLLM2);
    assert_eq!(p["peers"][0]["capabilities"]["models"][0]["arch"], "llama");
    let plan = d.json(&["plan", "--json"]);
    assert_eq!(plan["applied"], true);
    assert_eq!(plan["plan"]["n_layer"], 30);
    assert_eq!(plan["plan"]["stages"].as_array().unwrap().len(), 1);
    assert_eq!(plan["plan"]["coordinator"], n["id"]);
    assert_eq!(plan["plan"]["activation_dtype"], "f32");
    let preview = d.json(&["plan", "--preview", "--model", SMOLLM2, "--json"]);
    assert_eq!(preview["applied"], false);
    assert_eq!(preview["plan"]["stages"], plan["plan"]["stages"]);
    let load = d.json(&["load", "--model", SMOLLM2, "--json"]);
    assert_eq!(load["unchanged"], true);
    assert_eq!(load["plan"], plan["plan"]);

    // generate --json prints exactly what `dwarfstar run --json` prints.
    let prompt = "The capital of France is";
    let flags = ["-n", "8", "--temp", "0"];
    let mut args = vec!["generate", "--prompt", prompt, "--json"];
    args.extend(flags);
    let got = d.json(&args);
    let mut run_args = vec!["--prompt", prompt];
    run_args.extend(flags);
    let want = run_json(&run_args);
    assert_eq!(got, want);
    assert_eq!(got["tokens"].as_array().unwrap().len(), 8);

    // Token ids, --ignore-eos, a seed and top logits too.
    let flags = [
        "--prompt-ids",
        "1,504,3458,282",
        "-n",
        "6",
        "--temp",
        "0",
        "--seed",
        "3",
        "--ignore-eos",
        "--logits",
        "3",
    ];
    let mut args = vec!["generate", "--json"];
    args.extend(flags);
    let got = d.json(&args);
    let want = run_json(&flags);
    assert_eq!(got["prompt_tokens"], want["prompt_tokens"]);
    assert_eq!(got["tokens"], want["tokens"]);
    assert_eq!(got["text"], want["text"]);
    let (g, w) = (
        got["top_logits"].as_array().unwrap(),
        want["top_logits"].as_array().unwrap(),
    );
    assert_eq!(g.len(), 6);
    for (gs, ws) in g.iter().zip(w) {
        for (gp, wp) in gs.as_array().unwrap().iter().zip(ws.as_array().unwrap()) {
            assert_eq!(gp[0], wp[0], "{got}\n{want}");
            let (a, b) = (gp[1].as_f64().unwrap(), wp[1].as_f64().unwrap());
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    // Streaming text: what the tokens say, then the stats on stderr.
    let out = d.meshctl(&["generate", "--prompt", prompt, "-n", "8", "--temp", "0"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let first = run_json(&["--prompt", prompt, "-n", "8", "--temp", "0"]);
    assert_eq!(text.trim_end_matches('\n'), first["text"].as_str().unwrap());
    assert!(String::from_utf8_lossy(&out.stderr).contains("generated 8 tokens"));

    // Bad requests: clean errors with the reason, and the daemon keeps serving.
    let e = d.fails(&["generate", "--prompt-ids", "999999", "-n", "2"]);
    assert!(
        e.contains("bad request") && e.contains("out of range"),
        "{e}"
    );
    let e = d.fails(&["generate", "--prompt", "hi", "--top-p", "2"]);
    assert!(e.contains("bad request") && e.contains("top_p"), "{e}");
    let e = d.fails(&["generate", "--prompt", "hi", "--temp=-1"]);
    assert!(e.contains("bad request") && e.contains("temp"), "{e}");
    let e = d.fails(&["generate", "--prompt", "hi", "-n", "100000000"]);
    assert!(e.contains("too large") && e.contains("context"), "{e}");
    let e = d.fails(&["generate"]);
    assert!(e.contains("give --prompt or --prompt-ids"), "{e}");
    let e = d.fails(&["load", "--model", "no-such-model.gguf"]);
    assert!(
        e.contains("not found") && e.contains("no-such-model"),
        "{e}"
    );
    let e = d.fails(&["plan", "--preview", "--stages", "2"]);
    assert!(
        e.contains("not possible now") && e.contains("1 stage"),
        "{e}"
    );
    let e = d.fails(&["load", "--model", SMOLLM2, "--stages", "0"]);
    assert!(e.contains("bad request"), "{e}");
    let s2 = d.json(&["status", "--json"]);
    assert_eq!(s2["nodes"][0]["state"], "ready");

    // MESHCTL_ADDR picks the daemon when --addr is not given.
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["status", "--json"])
        .env("MESHCTL_ADDR", d.grpc.trim_start_matches("http://"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn nothing_listening_is_a_clean_error() {
    // Bind and drop: a loopback port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = meshctl_at(&format!("127.0.0.1:{port}"), &["status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach a DwarfStar daemon"), "{err}");
    let out = meshctl_at("not a url", &["status"]);
    assert!(!out.status.success());
}

#[test]
fn api_keys_guard_the_control_service() {
    let d = Daemon::start(&["--api-key", "k1"]);
    let e = d.fails(&["status"]);
    assert!(e.contains("not authorized"), "{e}");
    let e = d.fails(&["status", "--api-key", "wrong"]);
    assert!(e.contains("not authorized"), "{e}");
    let s = d.json(&["status", "--json", "--api-key", "k1"]);
    assert_eq!(s["nodes"][0]["state"], "ready");
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["--addr", &d.grpc, "status", "--json"])
        .env("MESHCTL_API_KEY", "k1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The body of `GET path` on the daemon's HTTP API.
fn http_get(d: &Daemon, path: &str) -> String {
    use std::io::Write;
    let mut c = std::net::TcpStream::connect(&d.http).expect("HTTP API reachable");
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    text
}

/// `meshctl load` of another model on a lone daemon serves that model from
/// then on: Generate prints what `dwarfstar run` of it prints, the HTTP API
/// names it, and the first model can be loaded back.
#[test]
fn a_lone_daemon_loads_another_model_at_run_time() {
    const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";
    let d = Daemon::start(&[]);
    assert!(http_get(&d, "/v1/models").contains("SmolLM2-135M-Instruct-Q4_1"));
    let load = d.json(&["load", "--model", GEMMA3, "--json"]);
    assert_eq!(load["unchanged"], false, "{load}");
    assert_eq!(load["model"], GEMMA3, "{load}");
    assert_eq!(
        load["plan"]["n_layer"], 18,
        "Gemma-3-270M has 18 layers: {load}"
    );
    let s = d.json(&["status", "--json"]);
    assert_eq!(s["model"], GEMMA3, "{s}");
    let models = http_get(&d, "/v1/models");
    assert!(models.contains("\"gemma-3-270m-q4_k_m\""), "{models}");
    assert!(!models.contains("SmolLM2"), "{models}");
    let args = [
        "--prompt",
        "The capital of France is",
        "-n",
        "6",
        "--temp",
        "0",
    ];
    let mut g = vec!["generate", "--json"];
    g.extend(args);
    assert_eq!(d.json(&g), run_json_with(&models_file(GEMMA3), &args));
    // And back.
    let back = d.json(&["load", "--model", SMOLLM2, "--json"]);
    assert_eq!(back["unchanged"], false, "{back}");
    assert_eq!(d.json(&g), run_json(&args));
    assert_eq!(
        d.json(&["load", "--model", SMOLLM2, "--json"])["unchanged"],
        true
    );
}
