//! Shared helpers of the integration tests: locating the model files and the
//! llama.cpp reference fixtures, and loading each model's tokenizer once.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use dwarfstar_gguf::GgufFile;
use dwarfstar_tokenizer::{Tokenizer, TokenizerSpec};

pub const SMOLLM2: &str = "SmolLM2-135M-Instruct-Q4_1.gguf";
pub const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `$DWARFSTAR_MODELS_DIR/<file>` (default `<repo>/models`); panics with the fix
/// when the file is missing.
pub fn model_path(file: &str) -> PathBuf {
    let dir = std::env::var_os("DWARFSTAR_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models"));
    let path = dir.join(file);
    assert!(
        path.is_file(),
        "model file {} not found: run deploy/fetch-models.sh (or set DWARFSTAR_MODELS_DIR to the folder holding {file})",
        path.display()
    );
    path
}

pub fn spec(file: &str) -> TokenizerSpec {
    let gguf = GgufFile::open(model_path(file)).expect("open GGUF");
    TokenizerSpec::from_gguf(&gguf).expect("read tokenizer metadata")
}

pub fn tokenizer(file: &str) -> &'static Tokenizer {
    static SMOL: OnceLock<Tokenizer> = OnceLock::new();
    static GEMMA: OnceLock<Tokenizer> = OnceLock::new();
    let cell = match file {
        SMOLLM2 => &SMOL,
        GEMMA3 => &GEMMA,
        other => panic!("no cached tokenizer for {other}"),
    };
    cell.get_or_init(|| Tokenizer::new(spec(file)).expect("build tokenizer"))
}

pub fn fixture(rel: &str) -> serde_json::Value {
    let path = repo_root().join("tests/fixtures").join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// One tokenizer fixture case: the text and its four reference tokenizations.
pub struct Case {
    pub index: u64,
    pub text: String,
    pub variants: Vec<(&'static str, bool, bool, Vec<u32>)>,
}

pub fn cases(fixture_name: &str) -> Vec<Case> {
    let fx = fixture(&format!("tokenizer/{fixture_name}.json"));
    fx["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let hex = c["utf8_hex"].as_str().expect("utf8_hex");
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            let text = String::from_utf8(bytes).expect("fixture text is UTF-8");
            assert_eq!(c["text"].as_str(), Some(text.as_str()));
            let variants = [
                ("bos_special", true, true),
                ("bos_nospecial", true, false),
                ("nobos_special", false, true),
                ("nobos_nospecial", false, false),
            ]
            .into_iter()
            .map(|(name, add, parse)| (name, add, parse, ids(&c[name])))
            .collect();
            Case {
                index: c["index"].as_u64().expect("index"),
                text,
                variants,
            }
        })
        .collect()
}
