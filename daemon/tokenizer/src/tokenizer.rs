//! `Tokenizer`: the public object. Builds the vocabulary and the engine for the
//! model type from a [`TokenizerSpec`], and offers encoding (llama.cpp's
//! `tokenize(add_special, parse_special)`), decoding (`token_to_piece` /
//! `detokenize`), the special ids and end-of-generation test, and chat templates.

use crate::bpe::BpeEngine;
use crate::chat::{self, ChatMessage};
use crate::decode;
use crate::error::TokenizerError;
use crate::partition::{Fragment, SpecialMatcher};
use crate::pre;
use crate::spec::{keys, TokenizerSpec};
use crate::spm;
use crate::vocab::{bad, Kind, TokenType, Vocab};

enum Engine {
    Bpe(Box<BpeEngine>),
    Spm,
}

/// A tokenizer that encodes and decodes exactly as llama.cpp does for the same GGUF.
/// It is `Send + Sync`: share one behind an `Arc`.
pub struct Tokenizer {
    vocab: Vocab,
    engine: Engine,
    specials: SpecialMatcher,
    model: String,
    pre: Option<String>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    clean_spaces: bool,
    chat_template: Option<String>,
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
};

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("model", &self.model)
            .field("pre", &self.pre)
            .field("n_vocab", &self.vocab.n_tokens())
            .field("bos", &self.vocab.bos)
            .field("eos", &self.vocab.eos)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Builds a tokenizer. Fails with a [`TokenizerError`] naming the metadata key
    /// for an unsupported model or pre-tokenizer, array lengths that differ from the
    /// token count, merges that are malformed or name unknown tokens, and special
    /// token ids out of range.
    pub fn new(mut spec: TokenizerSpec) -> Result<Self, TokenizerError> {
        let (kind, pre_spec) = match spec.model.as_str() {
            "gpt2" => (Kind::Bpe, Some(pre::lookup(spec.pre.as_deref())?)),
            "llama" => (Kind::Spm, None),
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        };
        if kind == Kind::Bpe && spec.merges.is_empty() {
            return Err(bad(
                keys::MERGES,
                "a BPE ('gpt2') model needs merges".into(),
            ));
        }
        let mut vocab = Vocab::build(&mut spec, kind)?;
        if pre_spec.as_ref().is_some_and(|p| p.no_default_bos) && spec.bos_id.is_none() {
            vocab.bos = None;
        }
        let (engine, clean_spaces, default_add_bos, default_space) = match &pre_spec {
            Some(p) => (
                Engine::Bpe(Box::new(BpeEngine::new(&vocab, &spec.merges, p)?)),
                p.clean_spaces,
                p.add_bos_default,
                false,
            ),
            None => (Engine::Spm, false, true, true),
        };
        let add_bos = spec.add_bos.unwrap_or(default_add_bos);
        let add_eos = spec.add_eos.unwrap_or(false);
        if add_bos && vocab.bos.is_none() {
            return Err(bad(
                keys::ADD_BOS,
                "BOS must be added but the model has no BOS token".into(),
            ));
        }
        if add_eos && vocab.eos.is_none() {
            return Err(bad(
                keys::ADD_EOS,
                "EOS must be added but the model has no EOS token".into(),
            ));
        }
        let specials = SpecialMatcher::new(&vocab)?;
        Ok(Tokenizer {
            vocab,
            engine,
            specials,
            model: spec.model,
            pre: spec.pre,
            add_bos,
            add_eos,
            add_space_prefix: spec.add_space_prefix.unwrap_or(default_space),
            clean_spaces,
            chat_template: spec.chat_template,
        })
    }

    /// Reads the spec from an open GGUF file and builds the tokenizer.
    pub fn from_gguf(file: &dwarfstar_gguf::GgufFile) -> Result<Self, TokenizerError> {
        Self::new(TokenizerSpec::from_gguf(file)?)
    }

    /// Text to token ids, as llama.cpp's `llama_tokenize(text, add_special, parse_special)`:
    /// `add_special` adds BOS/EOS where the model's metadata asks for them;
    /// `parse_special` makes control-token texts (`<|im_start|>`) single tokens
    /// (user-defined tokens are always matched).
    pub fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let frags = self.specials.partition(&self.vocab, text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.vocab.bos);
        }
        let mut prev_special = true;
        for f in frags {
            match f {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(t) => {
                    match &self.engine {
                        Engine::Bpe(bpe) => bpe.encode(t, &mut out)?,
                        Engine::Spm => {
                            let prefix = if self.add_space_prefix && prev_special {
                                " "
                            } else {
                                ""
                            };
                            let escaped = format!("{prefix}{t}").replace(' ', "▁");
                            spm::encode(&self.vocab, &escaped, &mut out)?;
                        }
                    }
                    prev_special = false;
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.vocab.eos);
        }
        Ok(out)
    }

    /// Token ids to text, skipping control tokens (lossy UTF-8).
    pub fn decode(&self, ids: &[u32]) -> String {
        self.decode_with(ids, false)
    }

    /// Token ids to text as llama.cpp's `detokenize(remove_special = false,
    /// unparse_special = render_special)`: control tokens are written as their text
    /// only when `render_special`. Out-of-range ids decode to nothing.
    pub fn decode_with(&self, ids: &[u32], render_special: bool) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids, render_special)).into_owned()
    }

    /// Like [`Self::decode_with`], as raw bytes.
    pub fn decode_bytes(&self, ids: &[u32], render_special: bool) -> Vec<u8> {
        decode::detokenize(
            &self.vocab,
            ids,
            render_special,
            self.add_space_prefix,
            self.clean_spaces,
        )
    }

    /// The bytes of one token with control tokens rendered (llama.cpp's
    /// `token_to_piece(special = true)`); may be part of a UTF-8 character.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.piece(id, true)
    }

    /// The bytes of one token for streaming; control and unknown tokens give
    /// nothing unless `render_special` (llama.cpp's `token_to_piece(special)`).
    pub fn piece(&self, id: u32, render_special: bool) -> Vec<u8> {
        let mut out = Vec::new();
        decode::piece_into(&self.vocab, id, render_special, &mut out);
        out
    }

    /// The raw vocabulary text of a token (`▁`/`Ġ` not mapped back).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.texts.get(id as usize).map(String::as_str)
    }

    /// The id of a token text, if it is in the vocabulary.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.to_id.get(text).copied()
    }

    /// The type of a token after llama.cpp's load-time adjustments.
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.vocab.token_type(id)
    }

    pub fn n_vocab(&self) -> usize {
        self.vocab.n_tokens()
    }
    pub fn bos_id(&self) -> Option<u32> {
        self.vocab.bos
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.vocab.eos
    }
    /// End of turn: from the metadata, else detected by text (`<|im_end|>`, `<end_of_turn>`, ...).
    pub fn eot_id(&self) -> Option<u32> {
        self.vocab.eot
    }
    pub fn eom_id(&self) -> Option<u32> {
        self.vocab.eom
    }
    pub fn unk_id(&self) -> Option<u32> {
        self.vocab.unk
    }
    pub fn pad_id(&self) -> Option<u32> {
        self.vocab.pad
    }
    /// Whether `encode(.., add_special = true, ..)` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }
    /// Whether `encode(.., add_special = true, ..)` appends EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Whether generation stops at `id` (llama.cpp's `llama_vocab_is_eog`).
    pub fn is_eog(&self, id: u32) -> bool {
        self.vocab.eog.contains(&id)
    }

    /// All end-of-generation ids, ascending.
    pub fn eog_ids(&self) -> Vec<u32> {
        self.vocab.eog.iter().copied().collect()
    }

    /// `tokenizer.ggml.model` ("gpt2" or "llama").
    pub fn model(&self) -> &str {
        &self.model
    }

    /// `tokenizer.ggml.pre`, if present.
    pub fn pre(&self) -> Option<&str> {
        self.pre.as_deref()
    }

    /// The model's chat template, if it has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Renders the model's chat template; [`TokenizerError::NoChatTemplate`] if it has none.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        self.apply_chat_template_tools(messages, None, add_generation_prompt)
    }

    /// Renders the model's chat template with `tools` (OpenAI's tool
    /// objects, passed to the template as its `tools` variable like Hugging
    /// Face's `apply_chat_template(tools=...)`).
    pub fn apply_chat_template_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let source = self
            .chat_template
            .as_deref()
            .ok_or(TokenizerError::NoChatTemplate)?;
        self.render(source, messages, tools, add_generation_prompt)
    }

    /// Renders `source` with this model's BOS/EOS texts.
    fn render(
        &self,
        source: &str,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let text_of = |id: Option<u32>| id.and_then(|i| self.token_text(i)).unwrap_or("");
        chat::render(
            source,
            messages,
            add_generation_prompt,
            text_of(self.vocab.bos),
            text_of(self.vocab.eos),
            tools,
        )
    }

    /// Renders the given template source (e.g. [`crate::CHATML_TEMPLATE`]) with this
    /// model's BOS/EOS texts.
    pub fn apply_chat_template_with(
        &self,
        source: &str,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        self.render(source, messages, None, add_generation_prompt)
    }
}
