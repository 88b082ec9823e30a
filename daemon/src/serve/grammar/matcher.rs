//! Runs a [`Grammar`] over text: the set of pushdown stacks that the text so
//! far leaves possible (each stack's top is the character element expected
//! next; an empty stack means the grammar may end here), advanced one byte
//! at a time with a pending partial UTF-8 character.

use std::sync::Arc;

use super::{Elem, Grammar};

type Stack = Vec<u32>;

/// Where a grammar stands after some text. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Matcher {
    g: Arc<Grammar>,
    stacks: Vec<Stack>,
    /// Bytes of a character not yet complete, and how many it needs.
    partial: [u8; 4],
    have: u8,
    need: u8,
}

impl Matcher {
    /// At the start of the grammar's root rule.
    pub fn new(g: Arc<Grammar>) -> Matcher {
        let mut stacks = Vec::new();
        for &alt in &g.rules[g.root as usize] {
            let s = if g.elems[alt as usize] == Elem::End {
                Vec::new()
            } else {
                vec![alt]
            };
            advance(&g, s, &mut stacks);
        }
        Matcher {
            g,
            stacks,
            partial: [0; 4],
            have: 0,
            need: 0,
        }
    }

    /// Whether no text can continue (nothing, not even the end, matches).
    #[cfg(test)]
    pub fn is_dead(&self) -> bool {
        self.stacks.is_empty()
    }

    /// Whether the text so far is a whole sentence of the grammar.
    pub fn can_end(&self) -> bool {
        self.need == 0 && self.stacks.iter().any(Vec::is_empty)
    }

    /// Whether a character is cut (its remaining bytes are due).
    pub fn mid_char(&self) -> bool {
        self.need != 0
    }

    /// Whether more text may follow.
    pub fn can_continue(&self) -> bool {
        self.stacks.iter().any(|s| !s.is_empty())
    }

    /// Feeds bytes; false (and a dead matcher) when they leave the grammar.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.feed_byte(b))
    }

    /// Feeds one byte.
    pub fn feed_byte(&mut self, b: u8) -> bool {
        if self.need == 0 {
            let need = match b {
                0x00..=0x7F => return self.accept_char(b as u32),
                0xC2..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF4 => 4,
                _ => return self.kill(),
            };
            self.partial[0] = b;
            self.have = 1;
            self.need = need;
            return self.partial_possible();
        }
        if b & 0xC0 != 0x80 {
            return self.kill();
        }
        self.partial[self.have as usize] = b;
        self.have += 1;
        if self.have < self.need {
            return self.partial_possible();
        }
        let n = self.need as usize;
        self.need = 0;
        self.have = 0;
        match std::str::from_utf8(&self.partial[..n])
            .ok()
            .and_then(|s| s.chars().next())
        {
            Some(c) => self.accept_char(c as u32),
            None => self.kill(),
        }
    }

    fn kill(&mut self) -> bool {
        self.stacks.clear();
        false
    }

    /// With a partial character pending: whether some stack may take a
    /// character that starts with its bytes.
    fn partial_possible(&mut self) -> bool {
        let (mut lo, mut hi) = (0u32, 0u32);
        let lead_bits = match self.need {
            2 => 0x1F,
            3 => 0x0F,
            _ => 0x07,
        };
        for i in 0..self.need as usize {
            let (l, h) = if i < self.have as usize {
                let b = self.partial[i] as u32;
                let v = if i == 0 { b & lead_bits } else { b & 0x3F };
                (v, v)
            } else {
                (0, 0x3F)
            };
            let shift = if i == 0 { 0 } else { 6 };
            lo = (lo << shift) | l;
            hi = (hi << shift) | h;
        }
        let g = &self.g;
        let ok = self.stacks.iter().any(|s| {
            s.last()
                .is_some_and(|&p| g.elems[p as usize].may_match_range(lo, hi))
        });
        if !ok {
            self.stacks.clear();
        }
        ok
    }

    fn accept_char(&mut self, c: u32) -> bool {
        let g = self.g.clone();
        let mut out = Vec::new();
        for s in std::mem::take(&mut self.stacks) {
            let Some(&top) = s.last() else { continue };
            if !g.elems[top as usize].matches(c) {
                continue;
            }
            let mut next = s;
            next.pop();
            if g.elems[top as usize + 1] != Elem::End {
                next.push(top + 1);
            }
            advance(&g, next, &mut out);
        }
        self.stacks = out;
        !self.stacks.is_empty()
    }
}

/// Expands `stack` until its top is a character element (or it is empty),
/// adding each result to `out` once.
fn advance(g: &Grammar, stack: Stack, out: &mut Vec<Stack>) {
    let mut work = vec![stack];
    while let Some(s) = work.pop() {
        let Some(&top) = s.last() else {
            if !out.contains(&s) {
                out.push(s);
            }
            continue;
        };
        match &g.elems[top as usize] {
            Elem::Rule(r) => {
                let mut base = s.clone();
                base.pop();
                if g.elems[top as usize + 1] != Elem::End {
                    base.push(top + 1);
                }
                for &alt in &g.rules[*r as usize] {
                    let mut n = base.clone();
                    if g.elems[alt as usize] != Elem::End {
                        n.push(alt);
                    }
                    work.push(n);
                }
            }
            Elem::Class { .. } => {
                if !out.contains(&s) {
                    out.push(s);
                }
            }
            Elem::End => {}
        }
    }
}
