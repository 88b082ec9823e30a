//! Shared helpers: fixture and model paths, cached model loading, reading
//! reference files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use dwarfstar_gguf::{GgufFile, Value};
use dwarfstar_model::Model;
use dwarfstar_tokenizer::{Tokenizer, TokenizerSpec};

pub const SMOLLM2: &str = "SmolLM2-135M-Instruct-Q4_1.gguf";
pub const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures")
}

/// The path of a real model; panics with the fix when it is missing.
pub fn model_path(name: &str) -> PathBuf {
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

pub struct Loaded {
    pub model: Model,
    pub tokenizer: Tokenizer,
}

/// Loads a real model once per test process.
pub fn load(name: &str) -> Arc<Loaded> {
    load_with(name, false)
}

/// Loads a real model in llama.cpp-exact arithmetic, once per process.
pub fn load_exact(name: &str) -> Arc<Loaded> {
    load_with(name, true)
}

/// Loaded models by (file name, llama-exact).
type ModelCache = Mutex<HashMap<(String, bool), Arc<Loaded>>>;

fn load_with(name: &str, exact: bool) -> Arc<Loaded> {
    static CACHE: OnceLock<ModelCache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
    c.entry((name.to_string(), exact))
        .or_insert_with(|| {
            let (mut model, file) = Model::open(&model_path(name), &[]).expect("model loads");
            model.set_llama_exact(exact);
            let tokenizer =
                Tokenizer::new(TokenizerSpec::from_gguf(&file).expect("tokenizer spec"))
                    .expect("tokenizer");
            Arc::new(Loaded { model, tokenizer })
        })
        .clone()
}

/// Reads a raw little-endian f32 file.
pub fn read_f32(path: &std::path::Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    let s = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&s).expect("valid JSON")
}

/// Largest absolute difference of two equal-length slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Loads `file` once per case with that metadata key set to the value (or
/// removed, for `None`) and asserts the load fails with an error naming the
/// key; the untouched file must load.
pub fn assert_each_bad_key_is_named(file: &Path, cases: &[(&str, Option<Value>)]) {
    for (key, value) in cases {
        let mut f = GgufFile::open(file).unwrap();
        match value {
            Some(v) => {
                f.set(*key, v.clone());
            }
            None => {
                f.metadata_mut().remove(key);
            }
        }
        let err = match Model::load(Arc::new(f)) {
            Ok(_) => panic!("{key} = {value:?} was accepted"),
            Err(e) => e,
        };
        let msg = err.to_string();
        assert!(
            msg.contains(key),
            "{key} = {value:?}: error does not name the key: {msg}"
        );
    }
    // The untouched file loads.
    assert!(Model::load(Arc::new(GgufFile::open(file).unwrap())).is_ok());
}

/// A JSON array of token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|t| t.as_u64().expect("id") as u32)
        .collect()
}

/// Runs the `dwarfstar` binary with `args`, quietly.
pub fn dwarfstar(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_dwarfstar"))
        .args(args)
        .env("DWARFSTAR_LOG", "error")
        .output()
        .expect("dwarfstar runs")
}

/// `out`, after asserting that it succeeded (else its stderr is shown).
pub fn ok(out: std::process::Output, what: &str) -> std::process::Output {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The tiny DeepSeek V4 fixture (Q8_0).
pub fn tiny_v4() -> dwarfstar_model::Model {
    let p = fixtures().join("tiny-deepseek-v4/tiny-dsv4-Q8_0.gguf");
    dwarfstar_model::Model::open(&p, &[])
        .expect("model loads")
        .0
}

/// The tiny V4 fixture's reference prompt.
pub fn tiny_v4_prompt() -> Vec<u32> {
    let j = read_json(&fixtures().join("tiny-deepseek-v4/tiny-dsv4.topk_all.summary.json"));
    ids(&j["tokens"])
}
