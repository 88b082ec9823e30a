//! `dwarfstar tokenize`: the ids of a text as a JSON array, tokenized the
//! way llama.cpp does (special tokens parsed, BOS as the model says).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use dwarfstar_gguf::GgufFile;

use super::load_tokenizer;

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// Path to a GGUF model file.
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// Do not add BOS even where the model asks for it.
    #[arg(long)]
    pub no_bos: bool,
    /// Treat special-token texts as plain text.
    #[arg(long)]
    pub no_parse_special: bool,
    /// The text to tokenize.
    pub text: String,
}

pub fn run(a: TokenizeArgs) -> Result<()> {
    let file =
        GgufFile::open(&a.model).with_context(|| format!("opening {}", a.model.display()))?;
    let tok = load_tokenizer(&file, &a.model)?;
    let ids = tok.encode(&a.text, !a.no_bos, !a.no_parse_special)?;
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}
