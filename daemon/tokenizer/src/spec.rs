//! `TokenizerSpec`: the tokenizer-related GGUF metadata as a plain struct, read
//! from a [`dwarfstar_gguf::Metadata`] / [`dwarfstar_gguf::GgufFile`] or built by
//! hand (tests, other formats). Reading only collects values; all validation
//! happens in [`crate::Tokenizer::new`], so hand-built specs are checked too.

use dwarfstar_gguf::{GgufFile, Metadata};

use crate::error::TokenizerError;

/// GGUF keys read by [`TokenizerSpec::from_metadata`].
pub mod keys {
    pub const MODEL: &str = "tokenizer.ggml.model";
    pub const PRE: &str = "tokenizer.ggml.pre";
    pub const TOKENS: &str = "tokenizer.ggml.tokens";
    pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
    pub const SCORES: &str = "tokenizer.ggml.scores";
    pub const MERGES: &str = "tokenizer.ggml.merges";
    pub const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
    pub const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
    pub const EOT_ID: &str = "tokenizer.ggml.eot_token_id";
    pub const EOM_ID: &str = "tokenizer.ggml.eom_token_id";
    pub const UNK_ID: &str = "tokenizer.ggml.unknown_token_id";
    pub const PAD_ID: &str = "tokenizer.ggml.padding_token_id";
    pub const FIM_PAD_ID: &str = "tokenizer.ggml.fim_pad_token_id";
    pub const FIM_REP_ID: &str = "tokenizer.ggml.fim_rep_token_id";
    pub const FIM_SEP_ID: &str = "tokenizer.ggml.fim_sep_token_id";
    pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    pub const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
    pub const ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
    pub const CHAT_TEMPLATE: &str = "tokenizer.chat_template";
}

/// Tokenizer metadata of a model. `None` / empty means "absent from the file":
/// the tokenizer then applies llama.cpp's defaults for the model type (e.g.
/// SentencePiece: BOS 1, EOS 2, UNK 0, add BOS, add a space prefix; BPE: no
/// space prefix, no BOS unless `add_bos` says so).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE) or "llama" (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer name of BPE models ("smollm", "llama-bpe", ...).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: token texts, indexed by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined,
    /// 5 unused, 6 byte. Empty: every token is normal.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.scores`: SentencePiece merge scores. Empty: all 0.
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.merges`: BPE merges "left right", highest priority first.
    pub merges: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub eot_id: Option<u32>,
    pub eom_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub fim_pad_id: Option<u32>,
    pub fim_rep_id: Option<u32>,
    pub fim_sep_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`.
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.chat_template` (Jinja source).
    pub chat_template: Option<String>,
}

impl TokenizerSpec {
    /// Reads the tokenizer keys of an open GGUF file.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        Self::from_metadata(file.metadata())
    }

    /// Reads the tokenizer keys from GGUF metadata. Fails when `tokenizer.ggml.model`
    /// or `tokenizer.ggml.tokens` is missing, or when a key has the wrong type.
    pub fn from_metadata(md: &Metadata) -> Result<Self, TokenizerError> {
        Ok(TokenizerSpec {
            model: md.get_str(keys::MODEL)?.to_string(),
            pre: md.opt_str(keys::PRE)?.map(str::to_string),
            tokens: md.get_str_array(keys::TOKENS)?.to_vec(),
            token_types: md
                .opt_i32_array(keys::TOKEN_TYPE)?
                .map(|v| v.into_owned())
                .unwrap_or_default(),
            scores: md
                .opt_f32_array(keys::SCORES)?
                .map(|v| v.into_owned())
                .unwrap_or_default(),
            merges: md
                .opt_str_array(keys::MERGES)?
                .map(<[String]>::to_vec)
                .unwrap_or_default(),
            bos_id: md.opt_u32(keys::BOS_ID)?,
            eos_id: md.opt_u32(keys::EOS_ID)?,
            eot_id: md.opt_u32(keys::EOT_ID)?,
            eom_id: md.opt_u32(keys::EOM_ID)?,
            unk_id: md.opt_u32(keys::UNK_ID)?,
            pad_id: md.opt_u32(keys::PAD_ID)?,
            fim_pad_id: md.opt_u32(keys::FIM_PAD_ID)?,
            fim_rep_id: md.opt_u32(keys::FIM_REP_ID)?,
            fim_sep_id: md.opt_u32(keys::FIM_SEP_ID)?,
            add_bos: md.opt_bool(keys::ADD_BOS)?,
            add_eos: md.opt_bool(keys::ADD_EOS)?,
            add_space_prefix: md.opt_bool(keys::ADD_SPACE_PREFIX)?,
            chat_template: md.opt_str(keys::CHAT_TEMPLATE)?.map(str::to_string),
        })
    }
}
