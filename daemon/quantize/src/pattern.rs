//! `--override PATTERN=TYPE`: per-tensor types by name, applied after the
//! recipe; the first override whose pattern matches a tensor wins.
//!
//! PATTERN is a glob unless it starts with `re:`:
//! * glob: `*` matches any run of characters (dots included), `?` one
//!   character; it must match the whole name, or the name without its
//!   last `.weight`/`.bias` (so `blk.*.ffn_down_exps` matches
//!   `blk.7.ffn_down_exps.weight`);
//! * `re:REGEX`: a regular expression searched anywhere in the name, as
//!   llama-quantize's `--tensor-type` does (`re:blk\.(1|2)\.attn_.*`).
//!
//! Overrides apply to matrices only: 1-D tensors (norms, biases) and the
//! router (`ffn_gate_inp`) stay F32 whatever the patterns say.
//!
//! TYPE is a ggml type name in any case (`q4_k`, `Q8_0`, `f16`). A type
//! named here is taken as given: when a tensor's rows are not whole blocks
//! of it, quantizing stops with an error naming the tensor (no fallback).

use dwarfstar_gguf::GgmlType;
use regex::Regex;

use crate::error::{QuantizeError, Result};

#[derive(Clone, Debug)]
enum Matcher {
    Glob(Vec<char>),
    Regex(Regex),
}

/// One `--override`.
#[derive(Clone, Debug)]
pub struct Override {
    /// The flag's text, for messages.
    pub text: String,
    pub ty: GgmlType,
    matcher: Matcher,
}

fn glob(p: &[char], s: &[char]) -> bool {
    // Iterative matching with one backtrack point for the last `*`.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

impl Override {
    /// Parses `PATTERN=TYPE` (split at the last `=`).
    pub fn parse(text: &str) -> Result<Override> {
        let err = |msg: String| QuantizeError::BadOverride {
            text: text.to_string(),
            msg,
        };
        let (pat, ty) = text
            .rsplit_once('=')
            .ok_or_else(|| err("expected PATTERN=TYPE".into()))?;
        let ty = GgmlType::from_name(ty.trim())
            .ok_or_else(|| err(format!("{ty:?} is not a ggml type name")))?;
        if pat.is_empty() {
            return Err(err("empty pattern".into()));
        }
        let matcher = match pat.strip_prefix("re:") {
            Some(re) => Matcher::Regex(Regex::new(re).map_err(|e| err(e.to_string()))?),
            None => Matcher::Glob(pat.chars().collect()),
        };
        Ok(Override {
            text: text.to_string(),
            ty,
            matcher,
        })
    }

    /// Whether this override applies to tensor `name`.
    pub fn matches(&self, name: &str) -> bool {
        match &self.matcher {
            Matcher::Regex(r) => r.is_match(name),
            Matcher::Glob(p) => {
                let full: Vec<char> = name.chars().collect();
                if glob(p, &full) {
                    return true;
                }
                let short = name
                    .strip_suffix(".weight")
                    .or_else(|| name.strip_suffix(".bias"));
                short.is_some_and(|s| glob(p, &s.chars().collect::<Vec<_>>()))
            }
        }
    }
}

/// The first override matching `name`.
pub fn first_match<'a>(overrides: &'a [Override], name: &str) -> Option<&'a Override> {
    overrides.iter().find(|o| o.matches(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_regexes() {
        let o = Override::parse("blk.*.ffn_down_exps=q4_k").unwrap();
        assert_eq!(o.ty, GgmlType::Q4_K);
        assert!(o.matches("blk.7.ffn_down_exps.weight"));
        assert!(!o.matches("blk.7.ffn_down_shexp.weight"));
        let o = Override::parse("blk.?.attn_*=Q8_0").unwrap();
        assert!(o.matches("blk.3.attn_q.weight"));
        assert!(!o.matches("blk.13.attn_q.weight"));
        let o = Override::parse(r"re:blk\.(1|2)\.ffn=f16").unwrap();
        assert!(o.matches("blk.1.ffn_up.weight"));
        assert!(!o.matches("blk.3.ffn_up.weight"));
        let o = Override::parse("*=q8_0").unwrap();
        assert!(o.matches("anything"));
    }

    #[test]
    fn bad_overrides() {
        assert!(Override::parse("blk.*").is_err());
        assert!(Override::parse("blk.*=q9_k").is_err());
        assert!(Override::parse("=q8_0").is_err());
        assert!(Override::parse("re:([=q8_0").is_err());
    }
}
