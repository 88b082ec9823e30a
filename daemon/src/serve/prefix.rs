//! The prefix cache: KV states of recent sequences, keyed by the tokens they
//! hold, so a new request whose prompt starts the same way (a team's shared
//! system prompt, the earlier turns of a chat) skips that part of prefill.
//!
//! Bounded by entry count and by bytes; least recently used goes first.
//! Lookups pick the entry that saves the most prefill and hand out a clone
//! cut to the common prefix — the cached entry stays for the next request.
//!
//! What a cut saves depends on the state: rows at fixed positions cut
//! anywhere (an entry then serves every prefix of its key, and a longer
//! key replaces it), while running state (DeepSeek V4's windows and
//! compressors) survives no cut below its end: such entries serve only
//! prompts that extend their whole key, so the scheduler keeps one at
//! each prompt's end as well as at each sequence's end (a chat's next
//! turn extends the previous prompt even where the reply re-tokenizes
//! otherwise), and one key never replaces another that is its prefix.

/// One cached state.
struct Entry<S> {
    /// The tokens whose keys and values `state` holds, in order.
    key: Vec<u32>,
    state: S,
    bytes: usize,
    last_used: u64,
}

/// A small LRU of sequence states.
pub struct PrefixCache<S> {
    entries: Vec<Entry<S>>,
    max_entries: usize,
    max_bytes: usize,
    bytes: usize,
    clock: u64,
}

/// Length of the common prefix of `a` and `b`.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl<S> PrefixCache<S> {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        PrefixCache {
            entries: Vec::new(),
            max_entries,
            max_bytes,
            bytes: 0,
            clock: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes of state held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The entry sharing the longest prefix with `tokens` and that length
    /// (0 when nothing matches). Marks the entry as used.
    #[cfg(test)]
    pub fn best(&mut self, tokens: &[u32]) -> Option<(&S, usize)> {
        self.best_by(tokens, |_, n| n).map(|(s, n, _)| (s, n))
    }

    /// The entry whose `saves(state, common prefix)` is largest (ties: the
    /// longer common prefix), its common prefix with `tokens` and what it
    /// saves; None when nothing saves anything. Marks the entry as used.
    pub fn best_by(
        &mut self,
        tokens: &[u32],
        saves: impl Fn(&S, usize) -> usize,
    ) -> Option<(&S, usize, usize)> {
        let (i, n, saved) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let n = common_prefix(&e.key, tokens);
                (i, n, if n == 0 { 0 } else { saves(&e.state, n) })
            })
            .max_by_key(|&(i, n, saved)| (saved, n, std::cmp::Reverse(i)))?;
        if saved == 0 {
            return None;
        }
        self.clock += 1;
        self.entries[i].last_used = self.clock;
        Some((&self.entries[i].state, n, saved))
    }

    /// Stores `state` holding `key`. Where states cut anywhere (`cuts`),
    /// an entry whose key is a prefix of `key` is replaced (the new one
    /// serves every lookup it did), and when `key` is itself a prefix of
    /// an entry, that entry is only marked as used; otherwise only an
    /// entry of the same key is. Evicts least recently used entries to fit
    /// the bounds.
    pub fn insert(&mut self, key: Vec<u32>, state: S, bytes: usize, cuts: bool) {
        if key.is_empty() || self.max_entries == 0 || bytes > self.max_bytes {
            return;
        }
        self.clock += 1;
        let covers = |long: &[u32], short: &[u32]| {
            (cuts || long.len() == short.len())
                && long.len() >= short.len()
                && long[..short.len()] == short[..]
        };
        if let Some(e) = self.entries.iter_mut().find(|e| covers(&e.key, &key)) {
            e.last_used = self.clock;
            return;
        }
        let mut i = 0;
        while i < self.entries.len() {
            let e = &self.entries[i];
            if cuts && e.key.len() < key.len() && key[..e.key.len()] == e.key[..] {
                self.bytes -= e.bytes;
                self.entries.swap_remove(i);
            } else {
                i += 1;
            }
        }
        while !self.entries.is_empty()
            && (self.entries.len() >= self.max_entries || self.bytes + bytes > self.max_bytes)
        {
            let lru = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
                .unwrap_or(0);
            self.bytes -= self.entries[lru].bytes;
            self.entries.swap_remove(lru);
        }
        self.bytes += bytes;
        self.entries.push(Entry {
            key,
            state,
            bytes,
            last_used: self.clock,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let mut c = PrefixCache::new(4, 1000);
        c.insert(vec![1, 2, 3], "a", 10, true);
        c.insert(vec![1, 2, 9, 9], "b", 10, true);
        assert_eq!(c.best(&[1, 2, 9, 5]).map(|(s, n)| (*s, n)), Some(("b", 3)));
        assert_eq!(c.best(&[1, 2, 3, 4]).map(|(s, n)| (*s, n)), Some(("a", 3)));
        assert!(c.best(&[7]).is_none());
    }

    #[test]
    fn longer_key_replaces_its_prefix_and_prefix_is_not_stored() {
        let mut c = PrefixCache::new(4, 1000);
        c.insert(vec![1, 2], "short", 10, true);
        c.insert(vec![1, 2, 3], "long", 20, true);
        assert_eq!(c.len(), 1);
        assert_eq!(c.bytes(), 20);
        c.insert(vec![1], "shorter", 5, true);
        assert_eq!(c.len(), 1);
        assert_eq!(c.best(&[1, 2, 3]).map(|(s, _)| *s), Some("long"));
    }

    #[test]
    fn evicts_least_recently_used_by_count_and_bytes() {
        let mut c = PrefixCache::new(2, 100);
        c.insert(vec![1], "a", 10, true);
        c.insert(vec![2], "b", 10, true);
        c.best(&[1]);
        c.insert(vec![3], "c", 10, true);
        assert!(c.best(&[2]).is_none());
        assert!(c.best(&[1]).is_some());
        c.insert(vec![4], "d", 95, true);
        assert_eq!(c.len(), 1);
        assert_eq!(c.bytes(), 95);
        c.insert(vec![5], "too big", 101, true);
        assert!(c.best(&[5]).is_none());
    }

    #[test]
    fn states_that_do_not_cut_keep_every_prefix_entry_and_serve_whole_keys() {
        let mut c = PrefixCache::new(4, 1000);
        c.insert(vec![1, 2, 3], "prompt", 10, false);
        c.insert(vec![1, 2, 3, 4, 5], "sequence", 10, false);
        c.insert(vec![1, 2, 3], "again", 10, false);
        assert_eq!(c.len(), 2);
        // Saves its whole key or nothing, as such a state does.
        let whole = |k: usize| move |_: &&str, n: usize| if n == k { n } else { 0 };
        let got = c.best_by(&[1, 2, 3, 4, 9], |s, n| {
            let k = if *s == "prompt" { 3 } else { 5 };
            whole(k)(s, n)
        });
        assert_eq!(
            got.map(|(s, n, saved)| (*s, n, saved)),
            Some(("prompt", 3, 3))
        );
        let got = c.best_by(&[1, 2, 3, 4, 5, 6], |s, n| {
            let k = if *s == "prompt" { 3 } else { 5 };
            whole(k)(s, n)
        });
        assert_eq!(got.map(|(s, _, saved)| (*s, saved)), Some(("sequence", 5)));
        assert!(c.best_by(&[1, 2, 7], |_, _| 0).is_none());
    }
}
