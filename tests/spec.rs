//! Speculative decoding through `dwarfstar serve`: a dwarf-q2 quantization
//! of the served model, made by `dwarfstar quantize`, drafts; the greedy
//! text of every SmolLM2 and Gemma fixture prompt is the text the same
//! server gives without a draft, with the prompts run one at a time and all
//! together (continuous batching, each sequence with its own draft length).
//! A draft of another vocabulary is refused at start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use serde_json::json;

use crate::api::{metric, Server};
use crate::common::*;

/// `model`'s dwarf-q2 quantization, made once per test process.
pub(crate) fn draft_of(model: &str) -> PathBuf {
    static MADE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let made = MADE.get_or_init(Default::default);
    let mut made = made.lock().unwrap_or_else(|e| e.into_inner());
    made.entry(model.to_string())
        .or_insert_with(|| {
            let dir = std::env::temp_dir().join(format!("dwarfstar-spec-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let out = dir.join(format!("draft-{model}"));
            let o = Command::new(env!("CARGO_BIN_EXE_dwarfstar"))
                .arg("quantize")
                .arg(model_path(model))
                .arg(&out)
                .args(["--recipe", "dwarf-q2", "--allow-requantize", "-t", "2"])
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "quantize: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            out
        })
        .clone()
}

/// The fixture prompts of `dir` (token ids, as llama.cpp tokenized them).
fn fixture_prompts(dir: &str) -> Vec<(String, Vec<u64>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(fixtures().join(dir)).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let j = read_json(&p);
            let ids = j["prompt_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            out.push((p.file_stem().unwrap().to_string_lossy().into_owned(), ids));
        }
    }
    out.sort();
    assert!(!out.is_empty(), "no fixture prompts in {dir}");
    out
}

const N: usize = 32;

/// The greedy completion of `ids` (N tokens, past end-of-generation).
fn complete(s: &Server, ids: &[u64]) -> String {
    let (st, v) = s.post(
        "/v1/completions",
        &json!({"prompt": ids, "max_tokens": N, "temperature": 0, "ignore_eos": true}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], json!(N), "{v}");
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

/// Every prompt's completion, one at a time, then all at once.
fn completions(s: &Server, prompts: &[(String, Vec<u64>)]) -> (Vec<String>, Vec<String>) {
    let alone = prompts.iter().map(|(_, p)| complete(s, p)).collect();
    let together = std::thread::scope(|sc| {
        let hs: Vec<_> = prompts
            .iter()
            .map(|(_, p)| sc.spawn(move || complete(s, p)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    (alone, together)
}

fn self_draft_keeps_greedy_text(model: &str, dir: &str) {
    let path = model_path(model);
    let prompts = fixture_prompts(dir);
    let plain = Server::start_model(&path, &[], None);
    let (want, want_together) = completions(&plain, &prompts);
    drop(plain);
    assert_eq!(want, want_together, "{model}: batching changed greedy text");
    let draft = draft_of(model);
    let spec = Server::start_model(
        &path,
        &[
            "--draft-model",
            draft.to_str().unwrap(),
            "--spec-tokens",
            "4",
            "--spec-always",
        ],
        None,
    );
    let (alone, together) = completions(&spec, &prompts);
    for (i, (name, _)) in prompts.iter().enumerate() {
        assert_eq!(alone[i], want[i], "{model} {name}: alone, with a draft");
        assert_eq!(
            together[i], want[i],
            "{model} {name}: batched, with a draft"
        );
    }
    let m = spec.metrics();
    let drafted = metric(&m, "dwarfstar_spec_drafted_tokens_total");
    let accepted = metric(&m, "dwarfstar_spec_accepted_tokens_total");
    eprintln!(
        "{model}: {} prompts × 2 runs; drafted {drafted}, accepted {accepted} ({:.0}%)",
        prompts.len(),
        100.0 * accepted / drafted.max(1.0)
    );
    assert!(drafted > 0.0 && accepted > 0.0, "{m}");
}

#[test]
fn smollm2_with_a_dwarf_q2_self_draft_keeps_greedy_text() {
    self_draft_keeps_greedy_text(SMOLLM2, "smollm2");
}

#[test]
fn gemma3_with_a_dwarf_q2_self_draft_keeps_greedy_text() {
    self_draft_keeps_greedy_text(GEMMA3, "gemma3");
}

#[test]
fn a_draft_with_another_vocabulary_is_refused() {
    let o = Command::new(env!("CARGO_BIN_EXE_dwarfstar"))
        .arg("serve")
        .arg("--model")
        .arg(model_path(SMOLLM2))
        .arg("--draft-model")
        .arg(model_path(GEMMA3))
        .args(["--http-addr", "127.0.0.1:0", "--grpc-listen", "off"])
        .env("DWARFSTAR_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("draft model") && err.contains("vocabulary"),
        "{err}"
    );
}

/// A missing draft file fails the start, naming it.
#[test]
fn a_missing_draft_model_is_named() {
    let missing = Path::new("/nonexistent/draft.gguf");
    let o = Command::new(env!("CARGO_BIN_EXE_dwarfstar"))
        .arg("serve")
        .arg("--model")
        .arg(model_path(SMOLLM2))
        .arg("--draft-model")
        .arg(missing)
        .args(["--http-addr", "127.0.0.1:0", "--grpc-listen", "off"])
        .env("DWARFSTAR_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("/nonexistent/draft.gguf"),
        "{err}"
    );
}

/// Verification is batch-invariant: the logits of k+1 positions run in one
/// pass (next to another sequence's prompt chunk) are, bit for bit, those
/// of decoding them one at a time, after short and long prompts; so is the
/// state a cut back to the accepted positions leaves.
fn verify_pass_equals_decode(model: &str) {
    let m = load(model);
    let m = &m.model;
    let nv = m.n_vocab();
    let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    for (plen, k) in [(20, 2), (20, 5), (150, 3), (150, 5)] {
        let prompt: Vec<u32> = (0..plen as u32).map(|i| 100 + (37 * i) % 4000).collect();
        let run: Vec<u32> = [640, 1200, 77, 3001, 15][..k].to_vec();
        let mut one = m.new_state(256);
        m.forward(&prompt, &mut one, false).unwrap();
        let alone: Vec<Vec<f32>> = run
            .iter()
            .map(|&t| m.forward(&[t], &mut one, false).unwrap())
            .collect();
        let mut a = m.new_state(256);
        m.forward(&prompt, &mut a, false).unwrap();
        let mut other = m.new_state(256);
        let other_prompt: Vec<u32> = (0..9).map(|i| 900 + 11 * i).collect();
        let out = {
            let mut items: Vec<(&[u32], &mut dwarfstar_model::SeqState, bool)> =
                vec![(&other_prompt, &mut other, false), (&run, &mut a, true)];
            m.forward_batch(&mut items).unwrap()
        };
        for (i, want) in alone.iter().enumerate() {
            assert!(
                same(&out[1][i * nv..(i + 1) * nv], want),
                "{model}: prompt {plen}, {k} positions in one pass: position {i} differs"
            );
        }
        // Cut back to the first accepted position: the next step is plain
        // decoding's.
        a.truncate(prompt.len() + 1);
        let mut b = m.new_state(256);
        m.forward(&prompt, &mut b, false).unwrap();
        m.forward(&run[..1], &mut b, false).unwrap();
        let la = m.forward(&[5], &mut a, false).unwrap();
        let lb = m.forward(&[5], &mut b, false).unwrap();
        assert!(
            same(&la, &lb),
            "{model}: prompt {plen}: the state after a cut differs"
        );
    }
}

#[test]
fn smollm2_verify_pass_equals_decode() {
    verify_pass_equals_decode(SMOLLM2);
}

#[test]
fn gemma3_verify_pass_equals_decode() {
    verify_pass_equals_decode(GEMMA3);
}

/// `dwarfstar bench --json` of a speculative decode: its counters and rates.
pub(crate) fn bench_spec(model: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "bench",
        "-m",
        model.to_str().unwrap(),
        "-n",
        "24",
        "-r",
        "1",
        "-t",
        "1",
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = ok(dwarfstar(&args), "bench with speculation");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("bench prints JSON");
    let (drafted, accepted) = (v["drafted_tokens"].as_u64(), v["accepted_tokens"].as_u64());
    assert!(drafted > Some(0), "nothing drafted: {v}");
    assert!(accepted <= drafted, "{v}");
    let rate = v["acceptance_rate"].as_f64().unwrap();
    let want = accepted.unwrap() as f64 / drafted.unwrap() as f64;
    assert!((rate - want).abs() < 1e-9, "{v}");
    for k in [
        "decode_tokens_per_s",
        "plain_decode_tokens_per_s",
        "speedup",
    ] {
        assert!(v[k].as_f64() > Some(0.0), "{k}: {v}");
    }
    v
}

/// `bench --draft-model` times speculation against plain decoding and
/// counts what was drafted and accepted (a dwarf-q2 self-draft of SmolLM2
/// agrees with it on most greedy tokens).
#[test]
fn bench_counts_drafted_and_accepted_tokens() {
    let draft = draft_of(SMOLLM2);
    let v = bench_spec(
        &model_path(SMOLLM2),
        &[
            "--draft-model",
            draft.to_str().unwrap(),
            "--spec-tokens",
            "3",
        ],
    );
    assert_eq!(v["spec_tokens"], json!(3), "{v}");
    assert!(v["accepted_tokens"].as_u64() > Some(0), "{v}");
}
