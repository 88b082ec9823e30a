//! Tokens back to bytes, as llama.cpp's `token_to_piece` and `detokenize` do it:
//! byte-level BPE tokens map their GPT-2 alphabet back to bytes, SentencePiece
//! tokens turn `▁` into a space, byte tokens `<0xXX>` give their byte, control and
//! unknown tokens give their text only when special tokens are rendered. Decoding a
//! sequence also drops the space prefix of the first token (models that add one) and
//! applies llama.cpp's `clean_spaces` rules for the BPE pre-tokenizers that use them.

use crate::bpe::char_to_byte;
use crate::vocab::{attr, Kind, Vocab};

/// Appends the bytes of token `id` to `out`; out-of-range ids add nothing.
pub(crate) fn piece_into(vocab: &Vocab, id: u32, render_special: bool, out: &mut Vec<u8>) {
    let Some(text) = vocab.texts.get(id as usize) else {
        return;
    };
    let a = vocab.attr(id);
    if !render_special && a & (attr::UNKNOWN | attr::CONTROL) != 0 {
        return;
    }
    if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
        out.extend_from_slice(text.as_bytes());
    } else if a & attr::NORMAL != 0 {
        match vocab.kind {
            Kind::Spm => out.extend_from_slice(text.replace('▁', " ").as_bytes()),
            Kind::Bpe => byte_level_decode(text, out),
        }
    } else if a & attr::BYTE != 0 {
        if let Some(b) = text.get(3..5).and_then(|h| u8::from_str_radix(h, 16).ok()) {
            out.push(b);
        }
    }
    // UNUSED and UNDEFINED tokens render as nothing, as in llama.cpp.
}

fn byte_level_decode(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                // llama.cpp's marker for a char outside the byte alphabet.
                out.extend_from_slice(b"[UNK_BYTE_0x");
                for b in c.encode_utf8(&mut [0; 4]).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
}

/// llama.cpp's `detokenize(remove_special = false)`.
pub(crate) fn detokenize(
    vocab: &Vocab,
    ids: &[u32],
    render_special: bool,
    remove_space_prefix: bool,
    clean_spaces: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut piece = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        piece.clear();
        piece_into(vocab, id, render_special, &mut piece);
        let skip = usize::from(i == 0 && remove_space_prefix && piece.first() == Some(&b' '));
        out.extend_from_slice(&piece[skip..]);
    }
    if clean_spaces {
        clean_up_spaces(&mut out);
    }
    out
}

/// The three in-place passes of llama.cpp's `clean_spaces`.
fn clean_up_spaces(text: &mut Vec<u8>) {
    // 1: " ?", " !", " .", " ," lose their space.
    let src = std::mem::take(text);
    for (i, &x) in src.iter().enumerate() {
        if i > 0 && src[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            text.pop();
        }
        text.push(x);
    }

    // 2: " ' " becomes "'". The space after the apostrophe is zeroed in the source
    // buffer (llama.cpp writes a NUL there), so the next char does not see a space.
    let mut src = std::mem::take(text);
    let mut i = 0;
    while i < src.len() {
        let x = src[i];
        if i > 0 && x == b'\'' && i + 1 < src.len() && src[i - 1] == b' ' && src[i + 1] == b' ' {
            text.pop();
            src[i + 1] = 0;
            text.push(x);
            i += 2;
            continue;
        }
        text.push(x);
        i += 1;
    }

    // 3: " 's", " 'm", " 're", " 've" lose their space (" 't", " 'd", " 'll" keep it).
    let src = std::mem::take(text);
    for (i, &x) in src.iter().enumerate() {
        if i > 0 && src[i - 1] == b' ' && x == b'\'' && i + 1 < src.len() {
            let x1 = src[i + 1];
            let x2 = src.get(i + 2).copied();
            if matches!(x1, b's' | b'm')
                || matches!((x1, x2), (b'r', Some(b'e')) | (b'v', Some(b'e')))
            {
                text.pop();
            }
        }
        text.push(x);
    }
}

#[cfg(test)]
mod tests {
    use super::clean_up_spaces;

    fn clean(s: &str) -> String {
        let mut v = s.as_bytes().to_vec();
        clean_up_spaces(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn clean_spaces_follows_llama_cpp_rules() {
        assert_eq!(clean("Hello , world !"), "Hello, world!");
        assert_eq!(clean("it 's a dog 've"), "it's a dog've");
        assert_eq!(clean("don 't , we 'll"), "don 't, we 'll");
        assert_eq!(clean("a ' b"), "a'b");
        assert_eq!(clean(" ."), ".");
    }
}
