//! Bad metadata never panics: each problem is a typed error naming the GGUF key.
//! Uses small hand-built specs, and GGUF metadata built in memory.

use dwarfstar_gguf::{Array, Metadata, Value};
use dwarfstar_tokenizer::{Tokenizer, TokenizerError, TokenizerSpec};

fn bpe_spec() -> TokenizerSpec {
    let tokens: Vec<String> = ["a", "b", "ab", "Ġ", "Ġa", "<|end|>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    TokenizerSpec {
        model: "gpt2".into(),
        pre: Some("gpt-2".into()),
        token_types: vec![1, 1, 1, 1, 1, 3],
        tokens,
        merges: vec!["a b".into(), "Ġ a".into()],
        bos_id: Some(5),
        eos_id: Some(5),
        ..Default::default()
    }
}

fn spm_spec() -> TokenizerSpec {
    TokenizerSpec {
        model: "llama".into(),
        tokens: ["<unk>", "<s>", "</s>", "▁", "h", "i", "▁hi", "<0x21>", "hi"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        token_types: vec![2, 3, 3, 1, 1, 1, 1, 6, 1],
        scores: vec![0.0, 0.0, 0.0, -1.0, -2.0, -2.0, -0.5, 0.0, -1.5],
        ..Default::default()
    }
}

fn bad_key(r: Result<Tokenizer, TokenizerError>) -> &'static str {
    match r {
        Err(TokenizerError::BadMetadata { key, reason }) => {
            assert!(!reason.is_empty());
            key
        }
        Err(e) => panic!("expected BadMetadata, got {e}"),
        Ok(_) => panic!("expected an error"),
    }
}

#[test]
fn small_hand_built_tokenizers_work() {
    let bpe = Tokenizer::new(bpe_spec()).unwrap();
    assert_eq!(bpe.encode("ab a", false, false).unwrap(), vec![2, 4]);
    assert_eq!(bpe.encode("ab<|end|>", false, true).unwrap(), vec![2, 5]);
    assert_eq!(bpe.decode(&[2, 4]), "ab a");
    let spm = Tokenizer::new(spm_spec()).unwrap();
    // Llama defaults: BOS 1 added, space prefix added, missing '!' -> byte token <0x21>.
    assert_eq!(spm.encode("hi!", true, false).unwrap(), vec![1, 6, 7]);
    assert_eq!(
        spm.decode(&[1, 6, 7]),
        " hi!",
        "with BOS first the space prefix is kept, as in llama.cpp"
    );
    assert_eq!(spm.decode(&[6, 7]), "hi!");
    // A byte with no <0xXX> token falls back to <unk>.
    assert_eq!(spm.encode("?", false, false).unwrap(), vec![3, 0]);
}

#[test]
fn mismatched_array_lengths_are_errors() {
    let mut s = bpe_spec();
    s.token_types.pop();
    assert_eq!(bad_key(Tokenizer::new(s)), "tokenizer.ggml.token_type");
    let mut s = spm_spec();
    s.scores.push(1.0);
    assert_eq!(bad_key(Tokenizer::new(s)), "tokenizer.ggml.scores");
    let mut s = spm_spec();
    s.tokens.clear();
    s.token_types.clear();
    s.scores.clear();
    assert_eq!(bad_key(Tokenizer::new(s)), "tokenizer.ggml.tokens");
}

#[test]
fn bad_merges_are_errors() {
    for merges in [
        vec!["a c".to_string()],
        vec!["ab".to_string()],
        vec!["b a".to_string()],
        vec![String::new()],
    ] {
        let mut s = bpe_spec();
        s.merges = merges.clone();
        assert_eq!(
            bad_key(Tokenizer::new(s)),
            "tokenizer.ggml.merges",
            "{merges:?}"
        );
    }
    let mut s = bpe_spec();
    s.merges.clear();
    assert_eq!(bad_key(Tokenizer::new(s)), "tokenizer.ggml.merges");
}

#[test]
fn out_of_range_ids_are_errors() {
    for (field, key) in [
        (0, "tokenizer.ggml.bos_token_id"),
        (1, "tokenizer.ggml.eos_token_id"),
        (2, "tokenizer.ggml.eot_token_id"),
        (3, "tokenizer.ggml.unknown_token_id"),
        (4, "tokenizer.ggml.padding_token_id"),
    ] {
        let mut s = bpe_spec();
        let slot = match field {
            0 => &mut s.bos_id,
            1 => &mut s.eos_id,
            2 => &mut s.eot_id,
            3 => &mut s.unk_id,
            _ => &mut s.pad_id,
        };
        *slot = Some(6);
        assert_eq!(bad_key(Tokenizer::new(s)), key);
    }
}

#[test]
fn unsupported_model_and_pre_tokenizer() {
    let mut s = bpe_spec();
    s.model = "t5".into();
    assert!(matches!(Tokenizer::new(s), Err(TokenizerError::UnsupportedModel(m)) if m == "t5"));
    let mut s = bpe_spec();
    s.pre = Some("kimi-k2".into());
    let err = Tokenizer::new(s).unwrap_err();
    assert!(matches!(&err, TokenizerError::UnsupportedPreTokenizer(p) if p == "kimi-k2"));
    assert!(err.to_string().contains("tokenizer.ggml.pre"));
    // No pre-tokenizer name: llama.cpp's "default" regexes.
    let mut s = bpe_spec();
    s.pre = None;
    assert_eq!(
        Tokenizer::new(s)
            .unwrap()
            .encode("ab a", false, false)
            .unwrap(),
        vec![2, 4]
    );
}

#[test]
fn add_bos_without_bos_token_is_an_error() {
    let mut s = bpe_spec();
    s.pre = Some("chatglm-bpe".into()); // no default BOS id
    s.bos_id = None;
    s.add_bos = Some(true);
    assert_eq!(bad_key(Tokenizer::new(s)), "tokenizer.ggml.add_bos_token");
}

fn metadata(spec: &TokenizerSpec) -> Metadata {
    let mut md = Metadata::new();
    md.set("tokenizer.ggml.model", Value::String(spec.model.clone()));
    md.set(
        "tokenizer.ggml.tokens",
        Value::Array(Array::String(spec.tokens.clone())),
    );
    md.set(
        "tokenizer.ggml.token_type",
        Value::Array(Array::I32(spec.token_types.clone())),
    );
    md.set(
        "tokenizer.ggml.merges",
        Value::Array(Array::String(spec.merges.clone())),
    );
    md.set("tokenizer.ggml.pre", Value::String("gpt-2".into()));
    md.set("tokenizer.ggml.bos_token_id", Value::U32(5));
    md.set("tokenizer.ggml.add_bos_token", Value::Bool(true));
    md
}

#[test]
fn spec_reads_gguf_metadata_and_reports_wrong_types() {
    let md = metadata(&bpe_spec());
    let spec = TokenizerSpec::from_metadata(&md).unwrap();
    assert_eq!(spec.tokens.len(), 6);
    assert_eq!(
        (spec.bos_id, spec.add_bos, spec.eos_id),
        (Some(5), Some(true), None)
    );
    let tok = Tokenizer::new(spec).unwrap();
    assert_eq!(tok.encode("ab", true, false).unwrap(), vec![5, 2]);

    let mut md2 = md.clone();
    md2.set("tokenizer.ggml.bos_token_id", Value::String("five".into()));
    let err = TokenizerSpec::from_metadata(&md2).unwrap_err();
    assert!(matches!(err, TokenizerError::Gguf(_)));
    assert!(
        err.to_string().contains("tokenizer.ggml.bos_token_id"),
        "{err}"
    );

    let mut md3 = md.clone();
    md3.remove("tokenizer.ggml.tokens");
    let err = TokenizerSpec::from_metadata(&md3).unwrap_err();
    assert!(err.to_string().contains("tokenizer.ggml.tokens"), "{err}");

    let mut md4 = md;
    md4.set(
        "tokenizer.ggml.token_type",
        Value::Array(Array::String(vec!["x".into()])),
    );
    let err = TokenizerSpec::from_metadata(&md4).unwrap_err();
    assert!(
        err.to_string().contains("tokenizer.ggml.token_type"),
        "{err}"
    );
}
