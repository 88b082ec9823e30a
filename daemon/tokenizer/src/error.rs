//! `TokenizerError`: every way building a tokenizer from GGUF metadata, encoding
//! text or rendering a chat template can fail. Metadata errors name the GGUF key.

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// Reading a metadata key failed (absent when required, or of the wrong type).
    #[error("tokenizer metadata: {0}")]
    Gguf(#[from] dwarfstar_gguf::GgufError),

    /// A metadata key is present but its value cannot be used.
    #[error("tokenizer metadata key '{key}': {reason}")]
    BadMetadata { key: &'static str, reason: String },

    /// `tokenizer.ggml.model` names a tokenizer this crate does not implement.
    #[error("tokenizer.ggml.model '{0}' is not supported (supported: 'gpt2' byte-level BPE, 'llama' SentencePiece)")]
    UnsupportedModel(String),

    /// `tokenizer.ggml.pre` names a pre-tokenizer this crate has no regexes for.
    #[error("tokenizer.ggml.pre '{0}' is not supported by this tokenizer (llama.cpp would need its own code for it, or it is unknown)")]
    UnsupportedPreTokenizer(String),

    /// The BPE engine (the `tokenizers` crate) rejected its input.
    #[error("BPE engine: {0}")]
    Engine(String),

    /// Encoding needs a token the vocabulary does not have (e.g. BOS requested
    /// but no BOS id, or a byte-fallback token `<0xXX>` missing).
    #[error("cannot encode: {0}")]
    Encode(String),

    /// The model has no `tokenizer.chat_template`.
    #[error("the model has no chat template (tokenizer.chat_template is absent); pass one explicitly, e.g. dwarfstar_tokenizer::CHATML_TEMPLATE")]
    NoChatTemplate,

    /// The chat template failed to compile or to render (includes `raise_exception`).
    #[error("chat template: {0}")]
    ChatTemplate(String),
}

impl From<tokenizers::Error> for TokenizerError {
    fn from(e: tokenizers::Error) -> Self {
        TokenizerError::Engine(e.to_string())
    }
}

impl From<minijinja::Error> for TokenizerError {
    fn from(e: minijinja::Error) -> Self {
        // `{:#}` includes the template source location and the cause chain.
        TokenizerError::ChatTemplate(format!("{e:#}"))
    }
}
