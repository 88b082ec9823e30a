//! Byte-level BPE ("gpt2" models): the `tokenizers` crate does the work. Text is
//! split by the pre-tokenizer regexes of [`crate::pre`] (each one a `Split` with
//! the `Isolated` behaviour, which is what llama.cpp's `unicode_regex_split`
//! does), mapped to the GPT-2 byte alphabet (`ByteLevel`), then merged by a
//! `tokenizers` BPE model built from the GGUF vocabulary and merges. Also holds the
//! byte alphabet tables used to decode tokens back to bytes.

use std::sync::OnceLock;

use tokenizers::models::bpe::{Vocab as BpeVocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    Model, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, SplitDelimiterBehavior,
};

use crate::error::TokenizerError;
use crate::pre::PreTokenizer as PreSpec;
use crate::spec::keys;
use crate::unassigned::with_llama_categories;
use crate::vocab::{bad, Vocab};

pub(crate) struct BpeEngine {
    splits: Vec<Split>,
    byte_level: ByteLevel,
    model: BPE,
}

impl BpeEngine {
    pub fn new(vocab: &Vocab, merges: &[String], pre: &PreSpec) -> Result<Self, TokenizerError> {
        let splits = pre
            .regexes
            .iter()
            .map(|re| {
                Split::new(
                    SplitPattern::Regex(with_llama_categories(re)),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| TokenizerError::Engine(format!("pre-tokenizer regex {re:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let bpe_vocab: BpeVocab = vocab.to_id.iter().map(|(t, &id)| (t.clone(), id)).collect();
        let mut pairs = Vec::with_capacity(merges.len());
        let mut seen = std::collections::HashSet::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte, so "  x" is (" ", "x").
            let pos = m
                .bytes()
                .skip(1)
                .position(|b| b == b' ')
                .map(|p| p + 1)
                .ok_or_else(|| {
                    bad(
                        keys::MERGES,
                        format!("merge {i} ({m:?}) has no space separating two tokens"),
                    )
                })?;
            let (a, b) = (&m[..pos], &m[pos + 1..]);
            for part in [a, b, &format!("{a}{b}")] {
                if !vocab.to_id.contains_key(part) {
                    return Err(bad(
                        keys::MERGES,
                        format!("merge {i} ({m:?}) refers to {part:?}, which is not a token"),
                    ));
                }
            }
            // The first occurrence of a pair sets its rank (llama.cpp's map::emplace).
            if seen.insert((a, b)) {
                pairs.push((a.to_string(), b.to_string()));
            }
        }
        let model = BPE::builder()
            .vocab_and_merges(bpe_vocab, pairs)
            .ignore_merges(pre.ignore_merges)
            .build()?;
        Ok(BpeEngine {
            splits,
            byte_level: ByteLevel::new(false, false, false),
            model,
        })
    }

    /// Appends the tokens of one text fragment (no special tokens in it) to `out`.
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
        if text.is_empty() {
            return Ok(());
        }
        let mut pts = PreTokenizedString::from(text);
        for s in &self.splits {
            s.pre_tokenize(&mut pts)?;
        }
        self.byte_level.pre_tokenize(&mut pts)?;
        for (word, _, _) in pts.get_splits(OffsetReferential::Original, OffsetType::Byte) {
            out.extend(self.model.tokenize(word)?.into_iter().map(|t| t.id));
        }
        Ok(())
    }
}

/// GPT-2's byte → printable char table (bytes that are printable map to
/// themselves; the others to U+0100.. in order).
fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let printable = |b: u32| {
        (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    let mut next = 256u32;
    for b in 0..256u32 {
        let c = if printable(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        table[b as usize] = char::from_u32(c).unwrap_or('\u{FFFD}');
    }
    table
}

/// Maps a char of the byte alphabet back to its byte.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    static TABLE: OnceLock<std::collections::HashMap<char, u8>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        byte_to_char_table()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect()
    });
    table.get(&c).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_round_trips_and_matches_gpt2() {
        let t = byte_to_char_table();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[0xAD], 'Ń');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(t[b as usize]), Some(b));
        }
        assert_eq!(char_to_byte('€'), None);
    }
}
