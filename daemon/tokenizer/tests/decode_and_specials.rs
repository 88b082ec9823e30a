//! Decoding back to text, special ids and end-of-generation sets, and the prompts
//! of the real-model fixtures (tokenized by llama.cpp with BOS policy and special
//! tokens parsed).

mod common;

use common::{cases, fixture, ids, tokenizer, GEMMA3, SMOLLM2};
use dwarfstar_tokenizer::TokenType;

fn check_round_trips(fixture_name: &str, model: &str) {
    let tok = tokenizer(model);
    let mut failures = Vec::new();
    for case in cases(fixture_name) {
        let s = &case.text;
        // Specials parsed and rendered back.
        let parsed = tok.encode(s, false, true).unwrap();
        let back = tok.decode_with(&parsed, true);
        if &back != s {
            failures.push(format!("case {} (special): {s:?} -> {back:?}", case.index));
        }
        // Plain text with the model's BOS: the BOS control token decodes to nothing.
        let plain = tok.encode(s, true, false).unwrap();
        let back = tok.decode(&plain);
        if &back != s {
            failures.push(format!("case {} (plain): {s:?} -> {back:?}", case.index));
        }
        // Streaming: the concatenated pieces are the same bytes.
        let streamed: Vec<u8> = parsed.iter().flat_map(|&id| tok.token_bytes(id)).collect();
        if streamed != s.as_bytes() {
            failures.push(format!("case {} (pieces): {s:?}", case.index));
        }
    }
    assert!(
        failures.is_empty(),
        "{fixture_name}: round trips failed:\n{}",
        failures.join("\n")
    );
}

#[test]
fn smollm2_round_trips_every_fixture_string() {
    check_round_trips("smollm2", SMOLLM2);
}

#[test]
fn gemma3_round_trips_every_fixture_string() {
    check_round_trips("gemma3", GEMMA3);
}

#[test]
fn smollm2_special_ids_and_eog() {
    let tok = tokenizer(SMOLLM2);
    assert_eq!(tok.n_vocab(), 49152);
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.unk_id(), tok.pad_id()),
        (Some(1), Some(2), Some(0), Some(2))
    );
    assert_eq!(tok.eot_id(), Some(2), "<|im_end|> detected as end of turn");
    assert!(!tok.add_bos() && !tok.add_eos());
    // llama.cpp: <|endoftext|>, <|im_end|>, and <reponame> (detected as FIM repo token).
    assert_eq!(tok.eog_ids(), vec![0, 2, 4]);
    assert!(tok.is_eog(2) && !tok.is_eog(1) && !tok.is_eog(49151) && !tok.is_eog(u32::MAX));
    assert_eq!(tok.token_text(1), Some("<|im_start|>"));
    assert_eq!(tok.token_id("<|im_end|>"), Some(2));
    assert_eq!(tok.token_type(1), Some(TokenType::Control));
    assert_eq!(tok.token_type(100), Some(TokenType::Normal));
    assert_eq!(tok.token_type(49152), None);
    assert_eq!(tok.model(), "gpt2");
    assert_eq!(tok.pre(), Some("smollm"));
}

#[test]
fn gemma3_special_ids_and_eog() {
    let tok = tokenizer(GEMMA3);
    assert_eq!(tok.n_vocab(), 262144);
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.unk_id(), tok.pad_id()),
        (Some(2), Some(1), Some(3), Some(0))
    );
    assert_eq!(tok.eot_id(), Some(106));
    assert!(tok.add_bos() && !tok.add_eos());
    // <eos>, <end_of_turn>, and the user-defined "</s>" that llama.cpp turns into an EOG control token.
    assert_eq!(tok.eog_ids(), vec![1, 106, 212]);
    assert_eq!(tok.token_type(212), Some(TokenType::Control));
    assert_eq!(tok.token_type(203), Some(TokenType::UserDefined));
    assert_eq!(
        tok.token_type(6),
        Some(TokenType::Control),
        "<unused0> stays control"
    );
    assert_eq!(tok.model(), "llama");
}

#[test]
fn pieces_follow_token_to_piece() {
    let smol = tokenizer(SMOLLM2);
    // " Hello" is one byte-level token "ĠHello".
    assert_eq!(smol.token_text(38699), Some("ĠHello"));
    assert_eq!(smol.piece(38699, false), b" Hello");
    assert_eq!(smol.piece(1, false), b"");
    assert_eq!(smol.piece(1, true), b"<|im_start|>");
    assert_eq!(smol.token_bytes(u32::MAX), b"");

    let gemma = tokenizer(GEMMA3);
    let hello = gemma.token_id("▁Hello").expect("▁Hello");
    assert_eq!(gemma.piece(hello, false), b" Hello");
    let byte = gemma.token_id("<0xE2>").expect("byte token");
    assert_eq!(gemma.token_bytes(byte), vec![0xE2]);
    assert_eq!(gemma.piece(2, false), b"");
    assert_eq!(gemma.piece(2, true), b"<bos>");
    // Decoding keeps the bytes of a split character, lossily.
    assert_eq!(gemma.decode(&[byte]), "\u{FFFD}");
    assert_eq!(gemma.decode_bytes(&[byte], false), vec![0xE2]);
    assert_eq!(
        gemma.decode_with(&[2, hello, 106], true),
        "<bos> Hello<end_of_turn>"
    );
    assert_eq!(gemma.decode(&[2, hello, 106]), " Hello");
}

fn check_prompt_fixture(rel: &str, model: &str) {
    let fx = fixture(rel);
    let tok = tokenizer(model);
    let text = fx["prompt_text"].as_str().expect("prompt_text");
    let want = ids(&fx["prompt_ids"]);
    assert_eq!(
        want.len() as u64,
        fx["n_prompt"].as_u64().expect("n_prompt")
    );
    assert_eq!(tok.encode(text, true, true).unwrap(), want, "{rel}");
}

#[test]
fn real_model_prompts_tokenize_as_in_llama_cpp() {
    for case in ["raw_fox", "raw_code", "chat_capital", "chat_system_haiku"] {
        check_prompt_fixture(&format!("smollm2/{case}.json"), SMOLLM2);
    }
    for case in ["raw_history", "raw_list"] {
        check_prompt_fixture(&format!("gemma3/{case}.json"), GEMMA3);
    }
}

#[test]
fn encode_edge_cases() {
    let gemma = tokenizer(GEMMA3);
    assert_eq!(gemma.encode("", true, true).unwrap(), vec![2]);
    assert_eq!(gemma.encode("", false, true).unwrap(), Vec::<u32>::new());
    let smol = tokenizer(SMOLLM2);
    assert_eq!(smol.encode("", true, true).unwrap(), Vec::<u32>::new());
    // Adjacent special tokens and text around them.
    assert_eq!(
        smol.encode("<|im_start|><|im_end|>x", false, true).unwrap()[..2],
        [1, 2]
    );
    let long = "The quick brown fox. ".repeat(2000);
    let ids = smol.encode(&long, false, false).unwrap();
    assert_eq!(smol.decode(&ids), long);
}
