//! The bookkeeping of a cache of units: which are loading, ready, in use,
//! wanted soon; how many bytes they hold; which one to evict.
//!
//! Two eviction policies:
//! - [`Policy::Lfu`] (routed experts): a decayed access count. Every use
//!   at time `t` (in tokens) sets `f = f·2^(-(t - t_last)/H) + uses`; the
//!   unit with the smallest decayed count is evicted. Comparing decayed
//!   counts at any common time is comparing `log2 f + t_last/H`, a number
//!   that only changes on use, so evictable units sit in an ordered set
//!   under that key. `H` (the half-life) trades frequency for recency:
//!   small `H` is LRU, infinite `H` is LFU. Counts are kept for every
//!   expert, cached or not, so a returning expert keeps its history. All
//!   experts of a model have the same size, so GDSF's size/cost terms
//!   drop out.
//!   A prefetch may only evict a unit whose score is below the predicted
//!   unit's own (a guess never pushes out a hotter expert).
//! - [`Policy::Cyclic`] (streamed layers): layers are used in a cycle, so
//!   the best unit to evict is the one whose next use is furthest away
//!   (Belady's rule): the largest `(layer - current) mod n_layer`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::io::Buf;
use super::Unit;

/// A unit of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Layer(u32),
    Expert(u32, u32),
}

/// An `f64` with a total order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Score(pub f64);

impl Eq for Score {}

impl PartialOrd for Score {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for Score {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

pub enum Slot {
    Loading,
    Ready(Arc<Unit>),
    Failed(String),
}

pub struct Entry {
    pub slot: Slot,
    pub bytes: u64,
    /// Guards handing out its bytes now.
    pub pins: u32,
    /// Needed by the layer computing now, not used yet.
    pub wanted: bool,
    /// Predicted for a layer not reached yet.
    pub spec: bool,
    /// Read by a prefetch (counts as a prefetch hit on first use).
    pub prefetched: bool,
    /// Its key in the evictable set, when it is there.
    in_set: Option<Score>,
}

impl Entry {
    fn evictable(&self) -> bool {
        matches!(self.slot, Slot::Ready(_) | Slot::Failed(_)) && self.pins == 0 && !self.wanted
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Policy {
    Lfu { half_life: f64 },
    Cyclic { n_layer: usize },
}

/// Decayed use count of one unit.
#[derive(Clone, Copy, Debug, Default)]
struct Freq {
    f: f64,
    t: f64,
}

/// Who asks for room, which decides what may be evicted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Need {
    /// The compute thread: anything not in use or wanted, predicted units
    /// last.
    Demand,
    /// A prediction of this score: only units less valuable than it.
    Prefetch(Score),
}

pub struct Pool {
    pub cap: u64,
    /// Bytes of entries plus spare buffers.
    pub used: u64,
    pub policy: Policy,
    pub entries: HashMap<Key, Entry>,
    set: BTreeSet<(Score, Key)>,
    freq: HashMap<Key, Freq>,
    /// Buffers of evicted units, reused by the next load of that size.
    spare: Vec<Buf>,
    pub evictions: u64,
    /// The layer computing now (for [`Policy::Cyclic`]).
    pub current: usize,
}

impl Pool {
    pub fn new(cap: u64, policy: Policy) -> Pool {
        Pool {
            cap,
            used: 0,
            policy,
            entries: HashMap::new(),
            set: BTreeSet::new(),
            freq: HashMap::new(),
            spare: Vec::new(),
            evictions: 0,
            current: 0,
        }
    }

    /// The eviction score of `key` (smaller goes first).
    pub fn score(&self, key: Key) -> Score {
        match self.policy {
            Policy::Lfu { half_life } => {
                let q = self.freq.get(&key).copied().unwrap_or_default();
                if q.f <= 0.0 {
                    Score(f64::NEG_INFINITY)
                } else {
                    Score(q.f.log2() + q.t / half_life)
                }
            }
            Policy::Cyclic { n_layer } => {
                let l = match key {
                    Key::Layer(l) => l as usize,
                    Key::Expert(l, _) => l as usize,
                };
                let d = (l + n_layer - self.current % n_layer.max(1)) % n_layer.max(1);
                Score(-(d as f64))
            }
        }
    }

    /// The score `key` would have after `uses` more uses at time `t`.
    pub fn score_if_used(&self, key: Key, t: f64, uses: f64) -> Score {
        match self.policy {
            Policy::Lfu { half_life } => {
                let q = self.freq.get(&key).copied().unwrap_or_default();
                let f = q.f * (-(t - q.t) / half_life).exp2() + uses;
                Score(f.log2() + t / half_life)
            }
            Policy::Cyclic { .. } => self.score(key),
        }
    }

    /// Records `uses` uses of `key` at time `t` (tokens).
    pub fn touch(&mut self, key: Key, t: f64, uses: f64) {
        if let Policy::Lfu { half_life } = self.policy {
            let q = self.freq.entry(key).or_default();
            q.f = q.f * (-(t - q.t) / half_life).exp2() + uses;
            q.t = t;
            self.refresh(key);
        }
    }

    /// Puts `key` in or out of the evictable set as its state says.
    pub fn refresh(&mut self, key: Key) {
        let score = self.score(key);
        let uses_set = self.policy_uses_set();
        let Some(e) = self.entries.get_mut(&key) else {
            return;
        };
        if let Some(s) = e.in_set.take() {
            self.set.remove(&(s, key));
        }
        if e.evictable() && !e.spec && uses_set {
            e.in_set = Some(score);
            self.set.insert((score, key));
        }
    }

    fn policy_uses_set(&self) -> bool {
        matches!(self.policy, Policy::Lfu { .. })
    }

    pub fn insert(&mut self, key: Key, bytes: u64, prefetch: bool) {
        self.used += bytes;
        self.entries.insert(
            key,
            Entry {
                slot: Slot::Loading,
                bytes,
                pins: 0,
                wanted: !prefetch,
                spec: prefetch,
                prefetched: prefetch,
                in_set: None,
            },
        );
    }

    /// Drops `key` (a failed or cancelled load, or an eviction); its
    /// buffer becomes a spare when nobody holds it.
    pub fn remove(&mut self, key: Key) {
        if let Some(mut e) = self.entries.remove(&key) {
            if let Some(s) = e.in_set.take() {
                self.set.remove(&(s, key));
            }
            self.used -= e.bytes;
            if let Slot::Ready(u) = e.slot {
                if let Ok(u) = Arc::try_unwrap(u) {
                    self.used += u.buf.len() as u64;
                    self.spare.push(u.buf);
                }
            }
        }
    }

    /// The unit to evict for `need`, if any may go.
    fn victim(&self, need: Need) -> Option<Key> {
        match self.policy {
            Policy::Lfu { .. } => {
                let first = self.set.iter().next().map(|&(s, k)| (s, k));
                match need {
                    Need::Prefetch(mine) => first.filter(|(s, _)| *s < mine).map(|(_, k)| k),
                    Need::Demand => first.map(|(_, k)| k).or_else(|| {
                        // Last resort: a prediction not used yet.
                        self.entries
                            .iter()
                            .filter(|(_, e)| e.evictable())
                            .min_by_key(|(k, _)| self.score(**k))
                            .map(|(k, _)| *k)
                    }),
                }
            }
            Policy::Cyclic { .. } => {
                let bound = match need {
                    Need::Prefetch(s) => s,
                    Need::Demand => Score(f64::INFINITY),
                };
                self.entries
                    .iter()
                    .filter(|(k, e)| e.evictable() && self.score(**k) < bound)
                    .min_by_key(|(k, _)| self.score(**k))
                    .map(|(k, _)| *k)
            }
        }
    }

    /// Makes room for a unit of `bytes` and returns its buffer (a spare
    /// of that size, or a new one), or None when nothing `need` may evict
    /// frees enough. Evictions are counted.
    pub fn reserve(&mut self, bytes: u64, need: Need) -> std::io::Result<Option<Buf>> {
        loop {
            if let Some(i) = self.spare.iter().position(|b| b.len() as u64 == bytes) {
                let b = self.spare.swap_remove(i);
                self.used -= b.len() as u64;
                return Ok(Some(b));
            }
            if self.used + bytes <= self.cap {
                return Buf::new(bytes as usize).map(Some);
            }
            if let Some(b) = self.spare.pop() {
                self.used -= b.len() as u64;
                continue;
            }
            let Some(v) = self.victim(need) else {
                return Ok(None);
            };
            self.remove(v);
            self.evictions += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::plan::Layout;

    fn ready(p: &mut Pool, k: Key, bytes: u64) {
        let buf = p.reserve(bytes, Need::Demand).unwrap().expect("room");
        p.insert(k, bytes, false);
        let e = p.entries.get_mut(&k).unwrap();
        e.slot = Slot::Ready(Arc::new(Unit {
            buf,
            layout: Layout::default(),
        }));
        e.wanted = false;
        p.refresh(k);
    }

    #[test]
    fn lfu_evicts_the_least_used_and_decays_old_counts() {
        let mut p = Pool::new(3 * 4096, Policy::Lfu { half_life: 10.0 });
        let (a, b, c, d) = (
            Key::Expert(0, 0),
            Key::Expert(0, 1),
            Key::Expert(0, 2),
            Key::Expert(0, 3),
        );
        for k in [a, b, c] {
            ready(&mut p, k, 4096);
        }
        p.touch(a, 0.0, 5.0);
        p.touch(b, 0.0, 1.0);
        p.touch(c, 0.0, 3.0);
        ready(&mut p, d, 4096);
        assert!(!p.entries.contains_key(&b), "b was the least used");
        assert_eq!(p.evictions, 1);
        // 40 tokens later a's 5 uses are worth 5/16 < 1: one fresh use of d wins.
        p.touch(d, 40.0, 1.0);
        assert!(p.score(a) < p.score(d));
        assert!(p.score(c) < p.score(a));
        // A prediction may not push out a hotter unit.
        // A prediction (worth one use now) may evict what has gone cold ...
        let guess = p.score_if_used(b, 40.0, 1.0);
        assert!(p.score(c) < guess);
        // ... but not units busier than that.
        p.touch(a, 40.0, 2.0);
        p.touch(c, 40.0, 2.0);
        p.touch(d, 40.0, 1.0);
        assert!(p.reserve(4096, Need::Prefetch(guess)).unwrap().is_none());
        p.touch(b, 41.0, 3.0);
        let guess = p.score_if_used(b, 41.0, 1.0);
        assert!(p.reserve(4096, Need::Prefetch(guess)).unwrap().is_some());
        assert!(!p.entries.contains_key(&d));
        assert_eq!(p.evictions, 2);
    }

    #[test]
    fn units_in_use_or_wanted_are_never_evicted() {
        let mut p = Pool::new(2 * 4096, Policy::Lfu { half_life: 10.0 });
        let (a, b) = (Key::Expert(0, 0), Key::Expert(0, 1));
        ready(&mut p, a, 4096);
        ready(&mut p, b, 4096);
        p.entries.get_mut(&a).unwrap().pins = 1;
        p.refresh(a);
        p.entries.get_mut(&b).unwrap().wanted = true;
        p.refresh(b);
        assert!(p.reserve(4096, Need::Demand).unwrap().is_none());
        p.entries.get_mut(&b).unwrap().wanted = false;
        p.refresh(b);
        assert!(p.reserve(4096, Need::Demand).unwrap().is_some());
        assert!(p.entries.contains_key(&a));
        assert!(p.used <= p.cap);
    }

    #[test]
    fn cyclic_evicts_the_layer_used_furthest_ahead() {
        let mut p = Pool::new(2 * 4096, Policy::Cyclic { n_layer: 6 });
        ready(&mut p, Key::Layer(2), 4096);
        ready(&mut p, Key::Layer(3), 4096);
        p.current = 3;
        // Layer 2 is next used after 5 more layers, layer 4 after one:
        // prefetching 4 may evict 2.
        let s4 = p.score(Key::Layer(4));
        assert!(p.reserve(4096, Need::Prefetch(s4)).unwrap().is_some());
        assert!(!p.entries.contains_key(&Key::Layer(2)));
        p.insert(Key::Layer(4), 4096, true);
        // Layer 5 is not worth evicting layer 4 (needed sooner) for; layer 3 is current.
        p.entries.get_mut(&Key::Layer(4)).unwrap().slot = Slot::Failed(String::new());
        p.entries.get_mut(&Key::Layer(3)).unwrap().pins = 1;
        let s5 = p.score(Key::Layer(5));
        assert!(p.reserve(4096, Need::Prefetch(s5)).unwrap().is_none());
    }
}
