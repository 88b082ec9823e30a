//! Every string of tests/fixtures/tokenizer/{smollm2,gemma3}.json, in all four
//! variants (BOS requested or not × special tokens parsed or not), must tokenize to
//! exactly the ids llama.cpp's `llama-tokenize` produced.

mod common;

use common::{cases, tokenizer, GEMMA3, SMOLLM2};

fn check_all(fixture: &str, model: &str) {
    let tok = tokenizer(model);
    let cases = cases(fixture);
    assert_eq!(cases.len(), 63, "{fixture}: expected 63 cases");
    let mut failures = Vec::new();
    let mut total = 0;
    for case in &cases {
        for (name, add_special, parse_special, want) in &case.variants {
            total += 1;
            let got = tok
                .encode(&case.text, *add_special, *parse_special)
                .expect("encode");
            if &got != want {
                failures.push(format!(
                    "case {} {name} {:?}\n   want {want:?}\n    got {got:?}",
                    case.index, case.text
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{fixture}: {} of {total} tokenizations differ from llama.cpp:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn smollm2_matches_llama_cpp_on_all_cases() {
    check_all("smollm2", SMOLLM2);
}

#[test]
fn gemma3_matches_llama_cpp_on_all_cases() {
    check_all("gemma3", GEMMA3);
}
