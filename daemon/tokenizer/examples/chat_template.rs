//! Renders a chat template for a conversation, with a model's BOS/EOS texts.
//!
//! Usage: chat_template MODEL.gguf TEMPLATE.jinja|- MESSAGES.json [--no-generation-prompt]
//! (`-` uses the model's own template; MESSAGES.json is `[{"role": .., "content": ..}, ..]`).

use dwarfstar_gguf::GgufFile;
use dwarfstar_tokenizer::{ChatMessage, Tokenizer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(model), Some(template), Some(messages)) = (args.first(), args.get(1), args.get(2))
    else {
        eprintln!("usage: chat_template MODEL.gguf TEMPLATE.jinja|- MESSAGES.json [--no-generation-prompt]");
        std::process::exit(2);
    };
    let add_generation_prompt = !args.iter().any(|a| a == "--no-generation-prompt");
    let tok = Tokenizer::from_gguf(&GgufFile::open(model)?)?;
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(messages)?)?;
    let msgs: Vec<ChatMessage> = json
        .as_array()
        .ok_or("messages must be a JSON array")?
        .iter()
        .map(|m| {
            ChatMessage::new(
                m["role"].as_str().unwrap_or_default(),
                m["content"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let rendered = if template == "-" {
        tok.apply_chat_template(&msgs, add_generation_prompt)?
    } else {
        let source = std::fs::read_to_string(template)?;
        tok.apply_chat_template_with(&source, &msgs, add_generation_prompt)?
    };
    print!("{rendered}");
    Ok(())
}
