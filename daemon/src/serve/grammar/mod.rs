//! Constrained sampling: a grammar that the generated text must follow.
//!
//! * [`gbnf`] parses llama.cpp's GBNF text into a [`Grammar`];
//! * [`schema`] compiles a subset of JSON Schema (and "any JSON object") to GBNF;
//! * [`matcher`] runs a grammar over characters as a set of pushdown stacks
//!   (llama.cpp's algorithm), byte by byte so tokens may split characters;
//! * [`mask`] turns a matcher into a token mask through a byte trie of the
//!   vocabulary, and [`Constraint`] is what a sequence carries into the
//!   scheduler: the sampled token is checked first and the whole vocabulary
//!   is masked only when it is refused (the same distribution as masking
//!   first, since the check conditions the draw on an allowed token).

pub mod gbnf;
pub mod mask;
pub mod matcher;
pub mod schema;

pub use mask::{Constraint, TokenTrie};
pub use matcher::Matcher;

/// A grammar or schema that cannot be used; the message says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GrammarError(pub String);

impl GrammarError {
    pub fn new(m: impl Into<String>) -> Self {
        GrammarError(m.into())
    }
}

/// One element of a flattened rule alternative.
#[derive(Clone, Debug, PartialEq)]
pub enum Elem {
    /// One character in (or, negated, outside) the inclusive ranges.
    Class {
        ranges: Vec<(u32, u32)>,
        negated: bool,
    },
    /// A reference to a rule.
    Rule(u32),
    /// The end of an alternative.
    End,
}

impl Elem {
    fn matches(&self, c: u32) -> bool {
        match self {
            Elem::Class { ranges, negated } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
            _ => false,
        }
    }

    /// Whether some character in `lo..=hi` may match.
    fn may_match_range(&self, lo: u32, hi: u32) -> bool {
        match self {
            Elem::Class {
                ranges,
                negated: false,
            } => ranges.iter().any(|&(a, b)| a <= hi && lo <= b),
            Elem::Class { ranges, .. } => !ranges.iter().any(|&(a, b)| a <= lo && hi <= b),
            _ => false,
        }
    }
}

/// A compiled grammar: every alternative's elements in one array, each
/// ending with [`Elem::End`]; `rules[r]` lists where rule `r`'s
/// alternatives start.
#[derive(Clone, Debug, PartialEq)]
pub struct Grammar {
    pub(crate) elems: Vec<Elem>,
    pub(crate) rules: Vec<Vec<u32>>,
    pub(crate) root: u32,
}

impl Grammar {
    /// Parses GBNF text.
    pub fn parse(text: &str) -> Result<Grammar, GrammarError> {
        gbnf::parse(text)
    }

    /// Whether the whole of `text` is in the grammar's language (the
    /// tests' oracle).
    #[cfg(test)]
    pub fn accepts(&self, text: &str) -> bool {
        let mut m = Matcher::new(std::sync::Arc::new(self.clone()));
        m.feed(text.as_bytes()) && m.can_end()
    }
}

#[cfg(test)]
mod tests;
