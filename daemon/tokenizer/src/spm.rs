//! SentencePiece-style tokenization ("llama" models, e.g. Gemma 3), as llama.cpp's
//! `llm_tokenizer_spm` does it: start from single UTF-8 characters, repeatedly
//! merge the adjacent pair whose concatenation is the vocabulary token with the
//! highest score (ties: leftmost pair), and emit symbols that are not tokens as
//! byte tokens `<0xXX>`. The caller has already replaced spaces with `▁`.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::error::TokenizerError;
use crate::vocab::Vocab;

const NONE: usize = usize::MAX;

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: usize,
    next: usize,
}

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    /// Byte length of the pair when queued; a mismatch later means it is stale.
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

struct Session<'a> {
    vocab: &'a Vocab,
    text: &'a str,
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Bigram>,
}

impl Session<'_> {
    fn try_add(&mut self, left: usize, right: usize) {
        if left == NONE || right == NONE {
            return;
        }
        let (l, r) = (self.symbols[left], self.symbols[right]);
        let size = l.len + r.len;
        let Some(&id) = self.vocab.to_id.get(&self.text[l.start..l.start + size]) else {
            return;
        };
        self.queue.push(Bigram {
            score: self.vocab.scores[id as usize],
            left,
            right,
            size,
        });
    }
}

/// Appends the tokens of `text` (spaces already escaped as `▁`) to `out`.
pub(crate) fn encode(vocab: &Vocab, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        let i = symbols.len();
        symbols.push(Symbol {
            start,
            len: c.len_utf8(),
            prev: if i == 0 { NONE } else { i - 1 },
            next: if chars.peek().is_some() { i + 1 } else { NONE },
        });
    }
    if symbols.is_empty() {
        return Ok(());
    }
    let mut s = Session {
        vocab,
        text,
        symbols,
        queue: BinaryHeap::new(),
    };
    for i in 1..s.symbols.len() {
        s.try_add(i - 1, i);
    }
    while let Some(b) = s.queue.pop() {
        let (l, r) = (s.symbols[b.left], s.symbols[b.right]);
        if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
            continue;
        }
        s.symbols[b.left].len += r.len;
        s.symbols[b.right].len = 0;
        s.symbols[b.left].next = r.next;
        if r.next != NONE {
            s.symbols[r.next].prev = b.left;
        }
        s.try_add(l.prev, b.left);
        s.try_add(b.left, r.next);
    }

    let mut i = 0;
    while i != NONE {
        let sym = s.symbols[i];
        let piece = &text[sym.start..sym.start + sym.len];
        match vocab.to_id.get(piece) {
            Some(&id) => out.push(id),
            None => {
                for &byte in piece.as_bytes() {
                    out.push(byte_token(vocab, byte)?);
                }
            }
        }
        i = sym.next;
    }
    Ok(())
}

/// The token of one byte: `<0xXX>`, else the one-byte text, else UNK.
fn byte_token(vocab: &Vocab, byte: u8) -> Result<u32, TokenizerError> {
    let hex = format!("<0x{byte:02X}>");
    if let Some(&id) = vocab.to_id.get(hex.as_str()) {
        return Ok(id);
    }
    if byte.is_ascii() {
        if let Some(&id) = vocab
            .to_id
            .get(char::from(byte).encode_utf8(&mut [0; 4]) as &str)
        {
            return Ok(id);
        }
    }
    vocab.unk.ok_or_else(|| {
        TokenizerError::Encode(format!(
            "the vocabulary has no byte token {hex} and no unknown token"
        ))
    })
}
