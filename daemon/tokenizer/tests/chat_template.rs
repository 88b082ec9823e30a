//! Chat templates: SmolLM2's own template must render the fixture conversations
//! byte for byte as llama.cpp did; a model without a template is a clear error.

mod common;

use common::{fixture, tokenizer, GEMMA3, SMOLLM2};
use dwarfstar_tokenizer::{ChatMessage, TokenizerError, CHATML_TEMPLATE};

fn messages(fx: &serde_json::Value) -> Vec<ChatMessage> {
    fx["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            ChatMessage::new(
                m["role"].as_str().expect("role"),
                m["content"].as_str().expect("content"),
            )
        })
        .collect()
}

#[test]
fn smollm2_template_renders_fixture_prompts_exactly() {
    let tok = tokenizer(SMOLLM2);
    assert!(tok.chat_template().is_some());
    for case in ["chat_capital", "chat_system_haiku"] {
        let fx = fixture(&format!("smollm2/{case}.json"));
        let rendered = tok.apply_chat_template(&messages(&fx), true).unwrap();
        assert_eq!(rendered, fx["prompt_text"].as_str().unwrap(), "{case}");
    }
}

#[test]
fn smollm2_template_without_generation_prompt() {
    let tok = tokenizer(SMOLLM2);
    let msgs = [
        ChatMessage::new("system", "S"),
        ChatMessage::new("user", "U"),
    ];
    assert_eq!(
        tok.apply_chat_template(&msgs, false).unwrap(),
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
    );
}

#[test]
fn gemma3_has_no_template_and_chatml_can_be_passed() {
    let tok = tokenizer(GEMMA3);
    assert!(tok.chat_template().is_none());
    let msgs = [ChatMessage::new("user", "Hi")];
    let err = tok.apply_chat_template(&msgs, true).unwrap_err();
    assert!(matches!(err, TokenizerError::NoChatTemplate), "{err}");
    assert!(err.to_string().contains("tokenizer.chat_template"));
    let chatml = tok
        .apply_chat_template_with(CHATML_TEMPLATE, &msgs, true)
        .unwrap();
    assert_eq!(
        chatml,
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn template_sees_bos_eos_and_reports_errors() {
    let tok = tokenizer(GEMMA3);
    let msgs = [ChatMessage::new("user", "Hi")];
    let t = "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}{{ eos_token }}";
    assert_eq!(
        tok.apply_chat_template_with(t, &msgs, false).unwrap(),
        "<bos>Hi<eos>"
    );
    // HF's whitespace control: trim_blocks and lstrip_blocks.
    let t = "  {% if true %}\nx\n  {% endif %}\n";
    assert_eq!(
        tok.apply_chat_template_with(t, &msgs, false).unwrap(),
        "x\n"
    );
    let err = tok
        .apply_chat_template_with(
            "{{ raise_exception('Roles must alternate') }}",
            &msgs,
            false,
        )
        .unwrap_err();
    assert!(
        matches!(&err, TokenizerError::ChatTemplate(m) if m.contains("Roles must alternate")),
        "{err}"
    );
    let err = tok
        .apply_chat_template_with("{% for %}", &msgs, false)
        .unwrap_err();
    assert!(matches!(err, TokenizerError::ChatTemplate(_)), "{err}");
}
