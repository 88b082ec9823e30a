//! The prefix cache: KV states of recent sequences, keyed by the tokens they
//! hold, so a new request whose prompt starts the same way (a team's shared
//! system prompt, the earlier turns of a chat) skips that part of prefill.
//!
//! Bounded by entry count and by bytes; least recently used goes first.
//! Lookups pick the entry with the longest common prefix and hand out a
//! clone cut to that length — the cached entry stays for the next request.

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
    pub fn best(&mut self, tokens: &[u32]) -> Option<(&S, usize)> {
        let (i, n) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.key, tokens)))
            .max_by_key(|&(i, n)| (n, std::cmp::Reverse(i)))?;
        if n == 0 {
            return None;
        }
        self.clock += 1;
        self.entries[i].last_used = self.clock;
        Some((&self.entries[i].state, n))
    }

    /// Stores `state` holding `key`. An entry whose key is a prefix of
    /// `key` is replaced (the new one serves every lookup it did); when
    /// `key` is itself a prefix of an entry, that entry is only marked as
    /// used. Evicts least recently used entries to fit the bounds.
    pub fn insert(&mut self, key: Vec<u32>, state: S, bytes: usize) {
        if key.is_empty() || self.max_entries == 0 || bytes > self.max_bytes {
            return;
        }
        self.clock += 1;
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.key.len() >= key.len() && e.key[..key.len()] == key[..])
        {
            e.last_used = self.clock;
            return;
        }
        let mut i = 0;
        while i < self.entries.len() {
            let e = &self.entries[i];
            if e.key.len() < key.len() && key[..e.key.len()] == e.key[..] {
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
        c.insert(vec![1, 2, 3], "a", 10);
        c.insert(vec![1, 2, 9, 9], "b", 10);
        assert_eq!(c.best(&[1, 2, 9, 5]).map(|(s, n)| (*s, n)), Some(("b", 3)));
        assert_eq!(c.best(&[1, 2, 3, 4]).map(|(s, n)| (*s, n)), Some(("a", 3)));
        assert!(c.best(&[7]).is_none());
    }

    #[test]
    fn longer_key_replaces_its_prefix_and_prefix_is_not_stored() {
        let mut c = PrefixCache::new(4, 1000);
        c.insert(vec![1, 2], "short", 10);
        c.insert(vec![1, 2, 3], "long", 20);
        assert_eq!(c.len(), 1);
        assert_eq!(c.bytes(), 20);
        c.insert(vec![1], "shorter", 5);
        assert_eq!(c.len(), 1);
        assert_eq!(c.best(&[1, 2, 3]).map(|(s, _)| *s), Some("long"));
    }

    #[test]
    fn evicts_least_recently_used_by_count_and_bytes() {
        let mut c = PrefixCache::new(2, 100);
        c.insert(vec![1], "a", 10);
        c.insert(vec![2], "b", 10);
        c.best(&[1]);
        c.insert(vec![3], "c", 10);
        assert!(c.best(&[2]).is_none());
        assert!(c.best(&[1]).is_some());
        c.insert(vec![4], "d", 95);
        assert_eq!(c.len(), 1);
        assert_eq!(c.bytes(), 95);
        c.insert(vec![5], "too big", 101);
        assert!(c.best(&[5]).is_none());
    }
}
