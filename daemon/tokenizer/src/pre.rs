//! Pre-tokenizer table for byte-level BPE: maps a `tokenizer.ggml.pre` name to the
//! list of regexes llama.cpp splits text with (each regex splits every piece the
//! previous one produced, keeping matches and the text between them), plus the
//! per-name flags llama.cpp sets (`ignore_merges`, `clean_spaces`). The regexes are
//! the ones in llama.cpp's `llm_tokenizer_bpe`; names needing llama.cpp's hand-coded
//! splitters (kimi-k2, afmoe, tiny_aya, gemma4, ...) are not supported.

use crate::error::TokenizerError;

/// How one pre-tokenizer name behaves.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PreTokenizer {
    pub regexes: Vec<&'static str>,
    /// A whole pre-tokenized word that is a token is emitted without merging.
    pub ignore_merges: bool,
    /// Detokenization removes spaces before punctuation (" ," → ",") etc.
    pub clean_spaces: bool,
    /// Add BOS when the metadata has no `tokenizer.ggml.add_bos_token`.
    pub add_bos_default: bool,
    /// No default BOS id (llama.cpp's BPE default is 11).
    pub no_default_bos: bool,
}

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const DEEPSEEK3: &str = r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##;
// GPT-4o and Tekken: llama.cpp's adaptation of the tokenizer.json regex ("upper" =
// a letter other than a-z, "lower" = a letter other than A-Z), kept as is so that
// non-ASCII letters split exactly as in llama.cpp.
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const SEED_CODER: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+";
const BAILING: &str = r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";
const MINICPM5: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const BLOOM: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";

/// The pre-tokenizer for `name` (`None`: llama.cpp's "default", used with a warning
/// when the metadata has no `tokenizer.ggml.pre`).
pub(crate) fn lookup(name: Option<&str>) -> Result<PreTokenizer, TokenizerError> {
    let p = |regexes: &[&'static str], ignore_merges: bool, clean_spaces: bool| PreTokenizer {
        regexes: regexes.to_vec(),
        ignore_merges,
        clean_spaces,
        add_bos_default: false,
        no_default_bos: false,
    };
    let Some(name) = name else {
        tracing::warn!("GGUF has no tokenizer.ggml.pre: using llama.cpp's 'default' pre-tokenizer (quality may suffer)");
        return lookup(Some("default"));
    };
    Ok(match name {
        "default" => p(
            &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
            false,
            true,
        ),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => PreTokenizer {
            add_bos_default: true,
            ..p(&[LLAMA3], true, true)
        },
        "dbrx" | "smaug-bpe" => p(&[LLAMA3], false, true),
        "chatglm-bpe" => PreTokenizer {
            no_default_bos: true,
            ..p(&[LLAMA3], false, true)
        },
        "glm4" | "glm5" => PreTokenizer {
            no_default_bos: true,
            ..p(&[LLAMA3], true, true)
        },
        "minicpm5" => p(&[r"\p{N}{1,3}", MINICPM5], true, true),
        "deepseek-llm" => p(
            &[
                r"[\r\n]",
                r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
                r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
                r"\s+$",
                r"[一-龥ࠀ-一가-퟿]+",
                r"\p{N}+",
            ],
            false,
            false,
        ),
        "deepseek-coder" => p(
            &[
                r"[\r\n]",
                r"\s?\p{L}+",
                r"\s?\p{P}+",
                r"[一-龥ࠀ-一가-퟿]+",
                r"\p{N}",
            ],
            false,
            false,
        ),
        "deepseek-v3" | "hunyuan-dense" | "joyai-llm" | "hy_v4" => p(
            &[r"\p{N}{1,3}", r"[一-龥぀-ゟ゠-ヿ]+", DEEPSEEK3],
            false,
            false,
        ),
        "falcon" => p(
            &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"],
            false,
            true,
        ),
        "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
            p(&[r"\p{N}", GPT2], false, true)
        }
        "smollm" | "command-r" => p(&[r"\p{N}", GPT2], false, false),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "a.x-4.0" | "mellum" | "modern-bert" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe"
        | "exaone4" | "mpt" | "olmo" | "jais" => p(&[GPT2], false, true),
        "trillion" | "granite-docling" => p(&[GPT2], false, false),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" => p(&[QWEN2], false, false),
        "stablelm2" | "megrez" => p(&[QWEN2], false, true),
        "hunyuan" | "solar-open" => p(&[QWEN2], false, false),
        "qwen35" => p(&[QWEN35], false, false),
        "grok-2" => p(&[QWEN2], false, false),
        "poro-chat" => p(&[BLOOM], false, false),
        "bloom" | "gpt3-finnish" => p(&[BLOOM], false, true),
        "viking" => p(&[BLOOM, r"\p{N}"], false, false),
        "tekken" => PreTokenizer {
            add_bos_default: true,
            ..p(&[TEKKEN], true, false)
        },
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => p(&[GPT4O], false, false),
        "seed-coder" => p(&[SEED_CODER], false, false),
        "bailingmoe" | "bailingmoe2" | "llada-moe" => p(&[BAILING], false, false),
        other => return Err(TokenizerError::UnsupportedPreTokenizer(other.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_resolve_and_unknown_fail() {
        assert_eq!(
            lookup(Some("smollm")).unwrap().regexes,
            vec![r"\p{N}", GPT2]
        );
        assert!(lookup(Some("llama-bpe")).unwrap().ignore_merges);
        assert_eq!(lookup(None).unwrap(), lookup(Some("default")).unwrap());
        assert!(matches!(
            lookup(Some("no-such-pre")),
            Err(TokenizerError::UnsupportedPreTokenizer(n)) if n == "no-such-pre"
        ));
    }
}
