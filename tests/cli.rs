//! The `dwarfstar` binary's interface, as scripts and other engines use it.

use crate::common::*;

fn ok_json(args: &[&str]) -> serde_json::Value {
    let out = dwarfstar(args);
    assert!(
        out.status.success(),
        "dwarfstar {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
    })
}

#[test]
fn run_json_matches_the_reference_greedy_continuation() {
    let model = model_path(SMOLLM2);
    let j = read_json(&fixtures().join("smollm2/raw_fox.json"));
    let prompt = j["prompt_text"].as_str().unwrap();
    let v = ok_json(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        prompt,
        "-n",
        "8",
        "--temp",
        "0",
        "--ignore-eos",
        "--json",
        "--logits",
        "3",
        "--threads",
        "2",
    ]);
    assert_eq!(v["prompt_tokens"], j["prompt_ids"]);
    let want: Vec<_> = j["generated_ids"].as_array().unwrap()[..8].to_vec();
    assert_eq!(v["tokens"].as_array().unwrap(), &want);
    let tl = v["top_logits"].as_array().unwrap();
    assert_eq!(tl.len(), 8);
    assert_eq!(tl[0].as_array().unwrap().len(), 3);
    assert_eq!(tl[0][0][0], j["steps"][0]["top"][0][0]);
    assert!(v["text"].as_str().unwrap().starts_with(" is a lazy dog."));
}

#[test]
fn run_text_is_llama_cpps_text_with_control_tokens_hidden() {
    // The raw_fox continuation runs through <|endoftext|> and <|im_start|>;
    // llama.cpp's text leaves both out.
    let model = model_path(SMOLLM2);
    let j = read_json(&fixtures().join("smollm2/raw_fox.json"));
    let v = ok_json(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        j["prompt_text"].as_str().unwrap(),
        "-n",
        "32",
        "--temp",
        "0",
        "--ignore-eos",
        "--json",
    ]);
    assert_eq!(v["tokens"], j["generated_ids"]);
    assert_eq!(v["text"], j["generated_text"]);
}

#[test]
fn run_prompt_ids_and_dump_logits() {
    let model = model_path(SMOLLM2);
    let dir = std::env::temp_dir().join(format!("dwarfstar-dump-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dump = dir.join("logits.bin");
    let j = read_json(&fixtures().join("smollm2/raw_fox.json"));
    let ids: Vec<String> = j["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let v = ok_json(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--prompt-ids",
        &ids.join(","),
        "-n",
        "2",
        "--temp",
        "0",
        "--json",
        "--dump-logits",
        dump.to_str().unwrap(),
    ]);
    assert_eq!(v["tokens"][0], j["generated_ids"][0]);
    let logits = read_f32(&dump);
    assert_eq!(logits.len(), ids.len() * 49152);
    let last = read_f32(&fixtures().join("smollm2/raw_fox.last_logits.f32.bin"));
    assert!(max_abs_diff(&logits[(ids.len() - 1) * 49152..], &last) < 1e-2);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn tokenize_prints_ids() {
    let model = model_path(SMOLLM2);
    let v = ok_json(&[
        "tokenize",
        "--model",
        model.to_str().unwrap(),
        "Hello, world!",
    ]);
    assert_eq!(v, serde_json::json!([19556, 28, 905, 17]));
}

#[test]
fn inspect_reports_architecture_and_bytes() {
    let model = model_path(SMOLLM2);
    let v = ok_json(&["inspect", "--model", model.to_str().unwrap(), "--json"]);
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["tensor_count"], 272);
    assert!(v["weight_bytes_per_token"].as_u64().unwrap() > 50_000_000);
    // 30 layers × (192 + 192) floats × 4 bytes.
    assert_eq!(v["kv_bytes_per_token"], 30 * 384 * 4);
    let c = &v["classes"];
    assert!(c["attention"]["bytes"].as_u64().unwrap() > 0);
    assert!(c["embeddings"]["bits_per_weight"].as_f64().unwrap() > 8.0);
}

#[test]
fn bench_json_has_both_rates() {
    let model = model_path(SMOLLM2);
    let v = ok_json(&[
        "bench",
        "--model",
        model.to_str().unwrap(),
        "-p",
        "8",
        "-n",
        "4",
        "-r",
        "1",
        "--json",
    ]);
    assert!(v["prompt_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_inputs_fail_with_a_message_not_a_panic() {
    let dir = std::env::temp_dir().join(format!("dwarfstar-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.gguf");
    std::fs::write(
        &bad,
        b"GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff",
    )
    .unwrap();
    for args in [
        vec!["run", "--model", "/nonexistent.gguf", "--prompt", "x"],
        vec!["run", "--model", bad.to_str().unwrap(), "--prompt", "x"],
        vec!["inspect", "--model", bad.to_str().unwrap()],
    ] {
        let out = dwarfstar(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Error"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
    let model = model_path(SMOLLM2);
    let out = dwarfstar(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--prompt-ids",
        "99999999",
        "-n",
        "1",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside the vocabulary"));
    std::fs::remove_dir_all(&dir).ok();
}
