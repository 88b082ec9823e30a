//! Loads a GGUF model's tokenizer, reports how long each loading step took, and
//! tokenizes the given text like `llama-tokenize --ids` (BOS as the model asks,
//! special tokens parsed).
//!
//! Usage: cargo run --release -p dwarfstar-tokenizer --example tokenize -- MODEL.gguf "text"|@FILE [--no-parse-special]

use std::time::Instant;

use dwarfstar_gguf::GgufFile;
use dwarfstar_tokenizer::{Tokenizer, TokenizerSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(path), Some(text)) = (args.first(), args.get(1)) else {
        eprintln!("usage: tokenize MODEL.gguf TEXT|@FILE [--no-parse-special]");
        std::process::exit(2);
    };
    let parse_special = !args.iter().any(|a| a == "--no-parse-special");
    let text = match text.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file)?,
        None => text.clone(),
    };

    let t0 = Instant::now();
    let file = GgufFile::open(path)?;
    let t1 = Instant::now();
    let spec = TokenizerSpec::from_gguf(&file)?;
    let t2 = Instant::now();
    let tok = Tokenizer::new(spec)?;
    let t3 = Instant::now();
    let ids = tok.encode(&text, true, parse_special)?;
    let t4 = Instant::now();
    let again = tok.encode(&text, true, parse_special)?;
    let t5 = Instant::now();
    assert_eq!(ids, again);
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
    eprintln!(
        "n_vocab {}: open GGUF {:.1} ms, read spec {:.1} ms, build tokenizer {:.1} ms, encode {:.3} ms (again {:.3} ms)",
        tok.n_vocab(),
        ms(t0, t1),
        ms(t1, t2),
        ms(t2, t3),
        ms(t3, t4),
        ms(t4, t5)
    );
    eprintln!("{} bytes -> {} tokens", text.len(), ids.len());
    println!("{ids:?}");
    Ok(())
}
