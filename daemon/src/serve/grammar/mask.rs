//! From a [`Matcher`] to the tokens that may come next: a byte trie of the
//! vocabulary (built once per served model) walked with the matcher, so
//! tokens that share a prefix share its work and a refused prefix prunes
//! every token under it. [`Constraint`] is a sequence's grammar state in
//! the scheduler.

use std::sync::Arc;

use super::{Grammar, Matcher};

#[derive(Debug, Default)]
struct Node {
    children: Vec<(u8, u32)>,
    tokens: Vec<u32>,
}

/// Every token's text as bytes, in a trie; and which tokens end generation.
#[derive(Debug)]
pub struct TokenTrie {
    nodes: Vec<Node>,
    /// Each token's bytes (empty for control tokens, which a grammar never
    /// produces).
    bytes: Vec<Vec<u8>>,
    eog: Vec<bool>,
}

impl TokenTrie {
    /// `bytes[id]` is the text token `id` adds to the output; `eog[id]`
    /// whether it ends generation.
    pub fn new(bytes: Vec<Vec<u8>>, eog: Vec<bool>) -> TokenTrie {
        let mut nodes = vec![Node::default()];
        for (id, b) in bytes.iter().enumerate() {
            if b.is_empty() {
                continue;
            }
            let mut at = 0usize;
            for &c in b {
                at = match nodes[at].children.iter().find(|x| x.0 == c) {
                    Some(&(_, n)) => n as usize,
                    None => {
                        nodes.push(Node::default());
                        let n = nodes.len() - 1;
                        nodes[at].children.push((c, n as u32));
                        n
                    }
                };
            }
            nodes[at].tokens.push(id as u32);
        }
        TokenTrie { nodes, bytes, eog }
    }

    fn is_eog(&self, t: u32) -> bool {
        self.eog.get(t as usize).copied().unwrap_or(false)
    }

    /// Marks in `allowed` every token that `m` accepts next.
    pub fn allowed(&self, m: &Matcher, allowed: &mut [bool]) {
        if m.can_end() {
            for (i, &e) in self.eog.iter().enumerate() {
                if e {
                    allowed[i] = true;
                }
            }
        }
        if m.can_continue() {
            self.walk(0, m, allowed);
        }
    }

    fn walk(&self, node: usize, m: &Matcher, allowed: &mut [bool]) {
        for &(b, child) in &self.nodes[node].children {
            let mut next = m.clone();
            if next.feed_byte(b) {
                // Tokens that end inside a character are not offered.
                let tokens: &[u32] = if next.mid_char() {
                    &[]
                } else {
                    &self.nodes[child as usize].tokens
                };
                for &t in tokens {
                    if let Some(a) = allowed.get_mut(t as usize) {
                        *a = true;
                    }
                }
                self.walk(child as usize, &next, allowed);
            }
        }
    }
}

/// A sequence's grammar: where it stands, and the vocabulary it masks.
#[derive(Clone, Debug)]
pub struct Constraint {
    matcher: Matcher,
    trie: Arc<TokenTrie>,
}

impl Constraint {
    pub fn new(grammar: Arc<Grammar>, trie: Arc<TokenTrie>) -> Constraint {
        Constraint {
            matcher: Matcher::new(grammar),
            trie,
        }
    }

    /// Whether `t` may come next.
    pub fn allows(&self, t: u32) -> bool {
        if self.trie.is_eog(t) {
            return self.matcher.can_end();
        }
        match self.trie.bytes.get(t as usize) {
            Some(b) if !b.is_empty() => {
                let mut m = self.matcher.clone();
                m.feed(b) && !m.mid_char()
            }
            _ => false,
        }
    }

    /// Sets the logits of every token that may not come next to −∞; false
    /// when none may.
    pub fn mask(&self, logits: &mut [f32]) -> bool {
        let mut allowed = vec![false; logits.len()];
        self.trie.allowed(&self.matcher, &mut allowed);
        let mut any = false;
        for (l, &a) in logits.iter_mut().zip(&allowed) {
            if a {
                any = true;
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
        any
    }

    /// Moves past `t` (which [`Constraint::allows`]).
    pub fn accept(&mut self, t: u32) {
        if !self.trie.is_eog(t) {
            if let Some(b) = self.trie.bytes.get(t as usize) {
                self.matcher.feed(b);
            }
        }
    }

    /// Whether the text so far is complete.
    #[cfg(test)]
    pub fn can_end(&self) -> bool {
        self.matcher.can_end()
    }

    /// Some end-of-generation token.
    pub fn an_eog(&self) -> Option<u32> {
        self.trie.eog.iter().position(|&e| e).map(|i| i as u32)
    }
}
