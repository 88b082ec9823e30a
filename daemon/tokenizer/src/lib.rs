//! dwarfstar-tokenizer: a tokenizer built from GGUF metadata that tokenizes exactly
//! like llama.cpp, plus chat templates.
//!
//! * [`TokenizerSpec`] collects the `tokenizer.*` metadata ([`TokenizerSpec::from_gguf`]).
//! * [`Tokenizer::new`] validates it and builds the engine:
//!   - `gpt2` models: byte-level BPE through the `tokenizers` crate, with the
//!     pre-tokenizer regexes llama.cpp uses for `tokenizer.ggml.pre`
//!     (unknown names are an error, a missing name means llama.cpp's "default");
//!   - `llama` models: SentencePiece merges by score with byte fallback, written
//!     here after llama.cpp's `llm_tokenizer_spm`.
//! * Special tokens written as text are split out first, longest first, as
//!   llama.cpp's `tokenizer_st_partition` does.
//! * Decoding follows llama.cpp's `token_to_piece` / `detokenize`.
//! * Chat templates render with minijinja configured like Hugging Face's; models
//!   without a template get [`TokenizerError::NoChatTemplate`] (no implicit fallback;
//!   [`CHATML_TEMPLATE`] is there to pass explicitly).
//!
//! Known differences from llama.cpp: character categories of the regex engine are
//! used, minus the code points llama.cpp's (older) tables leave unassigned, so only a
//! code point whose category changed between Unicode versions could split
//! differently; LSTRIP/RSTRIP attributes that llama.cpp sets from
//! `general.name` (phi-3, jina, modern-bert) are not applied; where a vocabulary has
//! several EOT candidates the first in llama.cpp's list wins (llama.cpp: hash order).

mod bpe;
mod chat;
mod decode;
mod error;
mod partition;
mod pre;
mod spec;
mod spm;
mod tokenizer;
mod unassigned;
mod vocab;

pub use chat::{ChatMessage, CHATML_TEMPLATE};
pub use error::TokenizerError;
pub use pre::SUPPORTED as SUPPORTED_PRE_TOKENIZERS;
pub use spec::{keys, TokenizerSpec};
pub use tokenizer::Tokenizer;
pub use vocab::TokenType;
