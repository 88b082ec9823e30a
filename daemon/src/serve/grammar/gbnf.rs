//! GBNF, the grammar text llama.cpp's server accepts, parsed into a
//! [`Grammar`]: rules `name ::= alternatives`, `|`, groups `( … )`,
//! literals `"…"`, character classes `[a-z]` / `[^"\\]`, `.`, and the
//! repetitions `*`, `+`, `?`, `{m}`, `{m,}`, `{m,n}` (expanded into helper
//! rules as llama.cpp does). `#` starts a comment. The start rule is `root`.
//! Undefined rules and left recursion (which a top-down matcher cannot run)
//! are errors.

use std::collections::HashMap;

use super::{Elem, Grammar, GrammarError};

/// One symbol of a sequence before flattening.
#[derive(Clone, Debug, PartialEq)]
enum Sym {
    Class {
        ranges: Vec<(u32, u32)>,
        negated: bool,
    },
    Ref(usize),
}

type Alts = Vec<Vec<Sym>>;

/// Most rules a grammar may expand to (repetitions make helper rules).
const MAX_RULES: usize = 20_000;

struct Parser<'a> {
    src: &'a [u8],
    text: &'a str,
    pos: usize,
    names: HashMap<String, usize>,
    rules: Vec<Option<Alts>>,
    rule_names: Vec<String>,
}

/// Parses GBNF text.
pub fn parse(text: &str) -> Result<Grammar, GrammarError> {
    let mut p = Parser {
        src: text.as_bytes(),
        text,
        pos: 0,
        names: HashMap::new(),
        rules: Vec::new(),
        rule_names: Vec::new(),
    };
    loop {
        p.skip_space();
        if p.pos >= p.src.len() {
            break;
        }
        p.rule()?;
    }
    let Some(&root) = p.names.get("root") else {
        return Err(GrammarError::new("the grammar has no `root` rule"));
    };
    let mut rules = Vec::with_capacity(p.rules.len());
    for (i, r) in p.rules.into_iter().enumerate() {
        match r {
            Some(a) => rules.push(a),
            None => {
                return Err(GrammarError::new(format!(
                    "rule `{}` is used but not defined",
                    p.rule_names[i]
                )))
            }
        }
    }
    check_left_recursion(&rules, &p.rule_names)?;
    Ok(flatten(rules, root))
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

impl Parser<'_> {
    fn err(&self, what: &str) -> GrammarError {
        let line = self.text[..self.pos.min(self.text.len())]
            .matches('\n')
            .count()
            + 1;
        GrammarError::new(format!("{what} (line {line})"))
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    /// Skips spaces, newlines and comments.
    fn skip_space(&mut self) {
        while let Some(b) = self.peek() {
            if b == b'#' {
                while self.peek().is_some_and(|b| b != b'\n') {
                    self.pos += 1;
                }
            } else if b.is_ascii_whitespace() {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn name(&mut self) -> Option<String> {
        let start = self.pos;
        while self.peek().is_some_and(is_name_byte) {
            self.pos += 1;
        }
        (self.pos > start).then(|| self.text[start..self.pos].to_string())
    }

    /// Whether a `name ::=` starts here (the next rule).
    fn at_rule_start(&self) -> bool {
        let mut i = self.pos;
        while self.src.get(i).copied().is_some_and(is_name_byte) {
            i += 1;
        }
        if i == self.pos {
            return false;
        }
        while self.src.get(i).is_some_and(|b| *b == b' ' || *b == b'\t') {
            i += 1;
        }
        self.src[i..].starts_with(b"::=")
    }

    fn id(&mut self, name: &str) -> usize {
        if let Some(&i) = self.names.get(name) {
            return i;
        }
        self.rules.push(None);
        self.rule_names.push(name.to_string());
        self.names.insert(name.to_string(), self.rules.len() - 1);
        self.rules.len() - 1
    }

    fn new_rule(&mut self, base: &str, alts: Alts) -> Result<usize, GrammarError> {
        if self.rules.len() >= MAX_RULES {
            return Err(self.err("the grammar expands to too many rules"));
        }
        let n = self.rules.len();
        self.rules.push(Some(alts));
        self.rule_names.push(format!("{base}-{n}"));
        Ok(n)
    }

    fn rule(&mut self) -> Result<(), GrammarError> {
        let Some(name) = self.name() else {
            return Err(self.err("expected a rule name"));
        };
        self.skip_space();
        if !self.src[self.pos..].starts_with(b"::=") {
            return Err(self.err(&format!("expected `::=` after `{name}`")));
        }
        self.pos += 3;
        let alts = self.alternatives(false, &name)?;
        let id = self.id(&name);
        if self.rules[id].is_some() {
            return Err(self.err(&format!("rule `{name}` is defined twice")));
        }
        self.rules[id] = Some(alts);
        Ok(())
    }

    fn alternatives(&mut self, nested: bool, base: &str) -> Result<Alts, GrammarError> {
        let mut alts = vec![self.sequence(nested, base)?];
        loop {
            self.skip_space();
            if self.peek() == Some(b'|') {
                self.pos += 1;
                alts.push(self.sequence(nested, base)?);
            } else {
                return Ok(alts);
            }
        }
    }

    fn sequence(&mut self, nested: bool, base: &str) -> Result<Vec<Sym>, GrammarError> {
        let mut seq: Vec<Sym> = Vec::new();
        let mut last_start = 0;
        loop {
            self.skip_space();
            let Some(b) = self.peek() else { break };
            if b == b'|' || b == b')' || (!nested && self.at_rule_start()) {
                break;
            }
            let start = seq.len();
            match b {
                b'"' => {
                    self.pos += 1;
                    loop {
                        match self.peek() {
                            None => return Err(self.err("unterminated string literal")),
                            Some(b'"') => {
                                self.pos += 1;
                                break;
                            }
                            _ => {
                                let c = self.char_in_literal()?;
                                seq.push(Sym::Class {
                                    ranges: vec![(c, c)],
                                    negated: false,
                                });
                            }
                        }
                    }
                }
                b'[' => {
                    self.pos += 1;
                    let negated = self.peek() == Some(b'^');
                    if negated {
                        self.pos += 1;
                    }
                    let mut ranges = Vec::new();
                    loop {
                        match self.peek() {
                            None => return Err(self.err("unterminated character class")),
                            Some(b']') => {
                                self.pos += 1;
                                break;
                            }
                            _ => {
                                let lo = self.char_in_literal()?;
                                let hi = if self.peek() == Some(b'-')
                                    && self.src.get(self.pos + 1) != Some(&b']')
                                {
                                    self.pos += 1;
                                    self.char_in_literal()?
                                } else {
                                    lo
                                };
                                if hi < lo {
                                    return Err(self.err("a character range runs backwards"));
                                }
                                ranges.push((lo, hi));
                            }
                        }
                    }
                    seq.push(Sym::Class { ranges, negated });
                }
                b'.' => {
                    self.pos += 1;
                    seq.push(Sym::Class {
                        ranges: vec![(0, 0x10FFFF)],
                        negated: false,
                    });
                }
                b'(' => {
                    self.pos += 1;
                    let alts = self.alternatives(true, base)?;
                    self.skip_space();
                    if self.peek() != Some(b')') {
                        return Err(self.err("expected `)`"));
                    }
                    self.pos += 1;
                    let r = self.new_rule(base, alts)?;
                    seq.push(Sym::Ref(r));
                }
                b if is_name_byte(b) => {
                    let n = self.name().unwrap_or_default();
                    let id = self.id(&n);
                    seq.push(Sym::Ref(id));
                }
                b'*' | b'+' | b'?' | b'{' => {
                    if seq.is_empty() {
                        return Err(self.err("a repetition must follow an item"));
                    }
                    let (min, max) = self.repetition()?;
                    let item = seq.split_off(last_start);
                    let rep = self.repeat(base, item, min, max)?;
                    seq.extend(rep);
                    continue;
                }
                _ => {
                    return Err(self.err(&format!(
                        "unexpected character `{}`",
                        self.text[self.pos..].chars().next().unwrap_or('?')
                    )))
                }
            }
            last_start = start;
        }
        Ok(seq)
    }

    fn repetition(&mut self) -> Result<(usize, Option<usize>), GrammarError> {
        let b = self.peek().unwrap_or(0);
        self.pos += 1;
        Ok(match b {
            b'*' => (0, None),
            b'+' => (1, None),
            b'?' => (0, Some(1)),
            _ => {
                self.skip_space();
                let min = self.int()?;
                self.skip_space();
                let max = match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        self.skip_space();
                        if self.peek() == Some(b'}') {
                            None
                        } else {
                            Some(self.int()?)
                        }
                    }
                    _ => Some(min),
                };
                self.skip_space();
                if self.peek() != Some(b'}') {
                    return Err(self.err("expected `}`"));
                }
                self.pos += 1;
                if max.is_some_and(|m| m < min) {
                    return Err(self.err("a repetition's maximum is below its minimum"));
                }
                (min, max)
            }
        })
    }

    fn int(&mut self) -> Result<usize, GrammarError> {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        self.text[start..self.pos]
            .parse()
            .map_err(|_| self.err("expected a number"))
    }

    /// `item{min,max}`: `min` copies, then the optional rest.
    fn repeat(
        &mut self,
        base: &str,
        item: Vec<Sym>,
        min: usize,
        max: Option<usize>,
    ) -> Result<Vec<Sym>, GrammarError> {
        if min.max(max.unwrap_or(0)) > 1000 {
            return Err(self.err("repetition counts above 1000 are not supported"));
        }
        let mut out = Vec::new();
        for _ in 0..min {
            out.extend(item.iter().cloned());
        }
        match max {
            None => {
                // r ::= item r | ε
                let r = self.new_rule(base, Vec::new())?;
                let mut first = item.clone();
                first.push(Sym::Ref(r));
                self.rules[r] = Some(vec![first, Vec::new()]);
                out.push(Sym::Ref(r));
            }
            Some(max) => {
                let mut last: Option<usize> = None;
                for _ in min..max {
                    let mut first = item.clone();
                    if let Some(l) = last {
                        first.push(Sym::Ref(l));
                    }
                    last = Some(self.new_rule(base, vec![first, Vec::new()])?);
                }
                if let Some(l) = last {
                    out.push(Sym::Ref(l));
                }
            }
        }
        Ok(out)
    }

    /// One character of a literal or class, with escapes.
    fn char_in_literal(&mut self) -> Result<u32, GrammarError> {
        let rest = &self.text[self.pos..];
        let mut chars = rest.chars();
        let c = chars.next().ok_or_else(|| self.err("unexpected end"))?;
        if c != '\\' {
            self.pos += c.len_utf8();
            return Ok(c as u32);
        }
        let e = chars.next().ok_or_else(|| self.err("unexpected end"))?;
        self.pos += 1 + e.len_utf8();
        let hex = |p: &mut Self, n: usize| -> Result<u32, GrammarError> {
            let h = p
                .text
                .get(p.pos..p.pos + n)
                .ok_or_else(|| p.err("short escape"))?;
            let v = u32::from_str_radix(h, 16).map_err(|_| p.err("bad hex escape"))?;
            p.pos += n;
            Ok(v)
        };
        Ok(match e {
            'n' => '\n' as u32,
            'r' => '\r' as u32,
            't' => '\t' as u32,
            'x' => hex(self, 2)?,
            'u' => hex(self, 4)?,
            'U' => hex(self, 8)?,
            other => other as u32,
        })
    }
}

/// Which rules can match nothing.
fn nullable(rules: &[Alts]) -> Vec<bool> {
    let mut null = vec![false; rules.len()];
    loop {
        let mut changed = false;
        for (i, alts) in rules.iter().enumerate() {
            if null[i] {
                continue;
            }
            let n = alts.iter().any(|seq| {
                seq.iter().all(|s| match s {
                    Sym::Ref(r) => null[*r],
                    Sym::Class { .. } => false,
                })
            });
            if n {
                null[i] = true;
                changed = true;
            }
        }
        if !changed {
            return null;
        }
    }
}

/// Refuses rules that can reach themselves without consuming a character.
fn check_left_recursion(rules: &[Alts], names: &[String]) -> Result<(), GrammarError> {
    let null = nullable(rules);
    // left[r]: the rules r may start with.
    let left: Vec<Vec<usize>> = rules
        .iter()
        .map(|alts| {
            let mut out = Vec::new();
            for seq in alts {
                for s in seq {
                    match s {
                        Sym::Ref(r) => {
                            out.push(*r);
                            if !null[*r] {
                                break;
                            }
                        }
                        Sym::Class { .. } => break,
                    }
                }
            }
            out
        })
        .collect();
    // Colour DFS: 0 new, 1 on the path, 2 done.
    let mut colour = vec![0u8; rules.len()];
    for start in 0..rules.len() {
        if colour[start] != 0 {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        colour[start] = 1;
        while let Some(top) = stack.last_mut() {
            let (r, i) = *top;
            top.1 += 1;
            if let Some(&next) = left[r].get(i) {
                match colour[next] {
                    0 => {
                        colour[next] = 1;
                        stack.push((next, 0));
                    }
                    1 => {
                        return Err(GrammarError::new(format!(
                            "rule `{}` is left-recursive",
                            names[next]
                        )))
                    }
                    _ => {}
                }
            } else {
                colour[r] = 2;
                stack.pop();
            }
        }
    }
    Ok(())
}

fn flatten(rules: Vec<Alts>, root: usize) -> Grammar {
    let mut elems = Vec::new();
    let mut starts = Vec::with_capacity(rules.len());
    for alts in rules {
        let mut s = Vec::with_capacity(alts.len());
        for seq in alts {
            s.push(elems.len() as u32);
            for sym in seq {
                elems.push(match sym {
                    Sym::Class { ranges, negated } => Elem::Class { ranges, negated },
                    Sym::Ref(r) => Elem::Rule(r as u32),
                });
            }
            elems.push(Elem::End);
        }
        starts.push(s);
    }
    Grammar {
        elems,
        rules: starts,
        root: root as u32,
    }
}
