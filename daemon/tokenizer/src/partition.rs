//! Splitting text on special tokens before the model's tokenizer runs, with
//! llama.cpp's semantics (`tokenizer_st_partition`): special tokens (CONTROL,
//! USER_DEFINED and UNKNOWN types) are taken longest first; each one splits every
//! remaining text fragment at its leftmost non-overlapping occurrences. Without
//! `parse_special` only USER_DEFINED tokens split text. An Aho-Corasick pass first
//! finds which special tokens occur at all, so a vocabulary with thousands of them
//! (Gemma: 6670) costs one scan of the text.

use aho_corasick::{AhoCorasick, MatchKind};

use crate::error::TokenizerError;
use crate::vocab::{attr, Vocab};

/// A piece of input: raw text for the model's tokenizer, or one special token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

pub(crate) struct SpecialMatcher {
    /// Pattern i is the text of `vocab.special_cache[i]`.
    automaton: Option<AhoCorasick>,
}

impl SpecialMatcher {
    pub fn new(vocab: &Vocab) -> Result<Self, TokenizerError> {
        if vocab.special_cache.is_empty() {
            return Ok(SpecialMatcher { automaton: None });
        }
        let patterns = vocab
            .special_cache
            .iter()
            .map(|&id| vocab.texts[id as usize].as_bytes());
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(patterns)
            .map_err(|e| TokenizerError::Engine(format!("special-token matcher: {e}")))?;
        Ok(SpecialMatcher {
            automaton: Some(automaton),
        })
    }

    /// Splits `text` into fragments. Empty text gives no fragments.
    pub fn partition<'a>(
        &self,
        vocab: &Vocab,
        text: &'a str,
        parse_special: bool,
    ) -> Vec<Fragment<'a>> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut frags = vec![Fragment::Text(text)];
        let Some(ac) = &self.automaton else {
            return frags;
        };
        let mut present = vec![false; vocab.special_cache.len()];
        for m in ac.find_overlapping_iter(text) {
            present[m.pattern().as_usize()] = true;
        }
        for (rank, &id) in vocab.special_cache.iter().enumerate() {
            if !present[rank] {
                continue;
            }
            if !parse_special && vocab.attr(id) & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            let needle = vocab.texts[id as usize].as_str();
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Fragment::Text(t) = f else {
                    next.push(f);
                    continue;
                };
                let mut rest = 0;
                for (pos, _) in t.match_indices(needle) {
                    if pos > rest {
                        next.push(Fragment::Text(&t[rest..pos]));
                    }
                    next.push(Fragment::Token(id));
                    rest = pos + needle.len();
                }
                if rest < t.len() {
                    next.push(Fragment::Text(&t[rest..]));
                }
            }
            frags = next;
        }
        frags
    }
}
