//! `Vocab`: token texts, llama.cpp token attributes, the text→id map, the special
//! token ids (with llama.cpp's defaults and its detection of EOT/EOM/FIM tokens by
//! text), the end-of-generation set and the special-token cache used to split text
//! on special tokens. Mirrors the vocabulary part of llama.cpp's `llama_vocab::load`.

use std::collections::{BTreeSet, HashMap};

use crate::error::TokenizerError;
use crate::spec::{keys, TokenizerSpec};

/// llama.cpp token attribute bits (`llama_token_attr`).
pub(crate) mod attr {
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;
}

/// Which algorithm turns text into tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// "gpt2": byte-level BPE with regex pre-tokenization.
    Bpe,
    /// "llama": SentencePiece-style merges by score with byte fallback.
    Spm,
}

/// The token type (GGUF `token_type` value) of a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    Undefined,
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

fn attr_of_type(t: i32) -> u16 {
    match t {
        1 => attr::NORMAL,
        2 => attr::UNKNOWN,
        3 => attr::CONTROL,
        4 => attr::USER_DEFINED,
        5 => attr::UNUSED,
        6 => attr::BYTE,
        _ => 0, // undefined
    }
}

// Texts llama.cpp recognises when the metadata does not name these tokens.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];
const ALWAYS_RENDERED: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

pub(crate) struct Vocab {
    pub kind: Kind,
    pub texts: Vec<String>,
    pub attrs: Vec<u16>,
    pub scores: Vec<f32>,
    pub to_id: HashMap<String, u32>,
    /// CONTROL / USER_DEFINED / UNKNOWN tokens, longest text first (ties: lower id first).
    pub special_cache: Vec<u32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub eog: BTreeSet<u32>,
}

impl Vocab {
    /// Builds the vocabulary, taking `spec.tokens` and `spec.scores` (left empty).
    pub fn build(spec: &mut TokenizerSpec, kind: Kind) -> Result<Self, TokenizerError> {
        let n = spec.tokens.len();
        if n == 0 {
            return Err(bad(keys::TOKENS, "the vocabulary is empty".into()));
        }
        if n > i32::MAX as usize {
            return Err(bad(
                keys::TOKENS,
                format!("{n} tokens is more than llama.cpp's i32 ids allow"),
            ));
        }
        if !spec.token_types.is_empty() && spec.token_types.len() != n {
            return Err(bad(
                keys::TOKEN_TYPE,
                format!("{} entries for {n} tokens", spec.token_types.len()),
            ));
        }
        if !spec.scores.is_empty() && spec.scores.len() != n {
            return Err(bad(
                keys::SCORES,
                format!("{} entries for {n} tokens", spec.scores.len()),
            ));
        }

        let mut texts = std::mem::take(&mut spec.tokens);
        let mut to_id = HashMap::with_capacity(n);
        for (i, text) in texts.iter_mut().enumerate() {
            // llama.cpp renames empty tokens so that every text is unique and non-empty.
            if text.is_empty() {
                *text = format!("[EMPTY_{i}]");
            }
            to_id.insert(text.clone(), i as u32); // a duplicate text maps to its last id, as in llama.cpp
        }
        let attrs: Vec<u16> = if spec.token_types.is_empty() {
            vec![attr::NORMAL; n]
        } else {
            spec.token_types.iter().map(|&t| attr_of_type(t)).collect()
        };
        let scores = if spec.scores.is_empty() {
            vec![0.0; n]
        } else {
            std::mem::take(&mut spec.scores)
        };

        let mut v = Vocab {
            kind,
            texts,
            attrs,
            scores,
            to_id,
            special_cache: Vec::new(),
            bos: None,
            eos: None,
            eot: None,
            eom: None,
            unk: None,
            pad: None,
            eog: BTreeSet::new(),
        };
        v.resolve_special_ids(spec)?;
        v.special_cache = (0..n as u32)
            .filter(|&id| {
                v.attrs[id as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
            })
            .collect();
        // Stable sort: equal lengths keep id order (llama.cpp's std::sort leaves ties unspecified).
        v.special_cache
            .sort_by_key(|&id| std::cmp::Reverse(v.texts[id as usize].len()));
        Ok(v)
    }

    pub fn n_tokens(&self) -> usize {
        self.texts.len()
    }

    pub fn attr(&self, id: u32) -> u16 {
        self.attrs.get(id as usize).copied().unwrap_or(0)
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        let a = *self.attrs.get(id as usize)?;
        Some(if a & attr::CONTROL != 0 {
            TokenType::Control
        } else if a & attr::USER_DEFINED != 0 {
            TokenType::UserDefined
        } else if a & attr::UNKNOWN != 0 {
            TokenType::Unknown
        } else if a & attr::BYTE != 0 {
            TokenType::Byte
        } else if a & attr::UNUSED != 0 {
            TokenType::Unused
        } else if a & attr::NORMAL != 0 {
            TokenType::Normal
        } else {
            TokenType::Undefined
        })
    }

    fn find_text(&self, candidates: &[&str]) -> Option<u32> {
        candidates.iter().find_map(|t| self.to_id.get(*t).copied())
    }

    fn mark_control(&mut self, id: u32) {
        self.attrs[id as usize] |= attr::CONTROL;
    }

    /// Special ids: llama.cpp's per-model defaults, overridden by the metadata, then
    /// EOT/EOM/FIM tokens detected by text, the unused marks and the EOG set.
    fn resolve_special_ids(&mut self, spec: &TokenizerSpec) -> Result<(), TokenizerError> {
        let n = self.n_tokens() as u32;
        let (d_bos, d_eos, d_unk) = match self.kind {
            Kind::Spm => (Some(1), Some(2), Some(0)),
            Kind::Bpe => (Some(11), Some(11), None),
        };
        let in_range = |d: Option<u32>| d.filter(|&id| id < n);
        let from_md = |key: &'static str, v: Option<u32>, d: Option<u32>| match v {
            Some(id) if id >= n => Err(bad(
                key,
                format!("token id {id} is out of range (vocabulary has {n} tokens)"),
            )),
            Some(id) => Ok(Some(id)),
            None => Ok(in_range(d)),
        };
        self.bos = from_md(keys::BOS_ID, spec.bos_id, d_bos)?;
        self.eos = from_md(keys::EOS_ID, spec.eos_id, d_eos)?;
        self.unk = from_md(keys::UNK_ID, spec.unk_id, d_unk)?;
        self.pad = from_md(keys::PAD_ID, spec.pad_id, None)?;
        self.eot = from_md(keys::EOT_ID, spec.eot_id, None)?;
        self.eom = from_md(keys::EOM_ID, spec.eom_id, None)?;
        let mut fim_pad = from_md(keys::FIM_PAD_ID, spec.fim_pad_id, None)?;
        let mut fim_rep = from_md(keys::FIM_REP_ID, spec.fim_rep_id, None)?;
        let mut fim_sep = from_md(keys::FIM_SEP_ID, spec.fim_sep_id, None)?;

        // Detection by text; a detected token is forced to CONTROL as llama.cpp does.
        // Where several candidates exist, the earliest in llama.cpp's list wins
        // (llama.cpp itself takes whichever its hash map yields first).
        for (slot, texts) in [
            (&mut self.eot, EOT_TEXTS),
            (&mut self.eom, EOM_TEXTS),
            (&mut fim_pad, FIM_PAD_TEXTS),
            (&mut fim_rep, FIM_REP_TEXTS),
            (&mut fim_sep, FIM_SEP_TEXTS),
        ] {
            if slot.is_none() {
                *slot = texts.iter().find_map(|t| self.to_id.get(*t).copied());
                if let Some(id) = *slot {
                    self.attrs[id as usize] |= attr::CONTROL;
                }
            }
        }

        // Control tokens named "...unused..." are unused.
        for (text, a) in self.texts.iter().zip(self.attrs.iter_mut()) {
            if *a & attr::CONTROL != 0 && text.contains("unused") {
                *a |= attr::UNUSED;
            }
        }

        let mut eog: BTreeSet<u32> = [fim_pad, fim_rep, fim_sep].into_iter().flatten().collect();
        for t in EOG_TEXTS {
            if let Some(&id) = self.to_id.get(*t) {
                eog.insert(id);
                self.mark_control(id);
            }
        }
        for t in ALWAYS_RENDERED {
            if let Some(&id) = self.to_id.get(*t) {
                self.attrs[id as usize] = attr::USER_DEFINED;
            }
        }
        eog.extend([self.eos, self.eot, self.eom].into_iter().flatten());

        let in_eog = |t: &str| self.to_id.get(t).is_some_and(|id| eog.contains(id));
        let drop_end = (in_eog("<|return|>") && in_eog("<|call|>")
            || in_eog("<|calls|>") && in_eog("<|flush|>"))
            && in_eog("<|end|>");
        let drop_s = (in_eog("<|tool_response>") || in_eog("<|plamo:eos|>")) && in_eog("</s>");
        // o200k_harmony / solar-open: "<|end|>" is not an end of generation there.
        if let Some(id) = self.find_text(&["<|end|>"]).filter(|_| drop_end) {
            eog.remove(&id);
            self.attrs[id as usize] = attr::USER_DEFINED;
        }
        // gemma4 / plamo: "</s>" is a normal token there.
        if let Some(id) = self.find_text(&["</s>"]).filter(|_| drop_s) {
            eog.remove(&id);
            self.attrs[id as usize] = attr::NORMAL;
        }
        self.eog = eog;
        Ok(())
    }
}

pub(crate) fn bad(key: &'static str, reason: String) -> TokenizerError {
    TokenizerError::BadMetadata { key, reason }
}
