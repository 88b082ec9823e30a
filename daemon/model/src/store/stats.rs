//! [`StoreStats`]: what the weight store did, as counters since load and
//! gauges of now — for `dwarfstar bench`, the metrics endpoint and the
//! mesh.

use serde::{Deserialize, Serialize};

/// A snapshot of the weight store. Counters (hits, bytes, seconds) count
/// from load; [`StoreStats::since`] turns two snapshots into a window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreStats {
    /// Whether weights are paged under a budget (false: the file is
    /// mapped whole and the kernel pages it).
    pub paged: bool,
    /// "direct", "buffered" or "mapped".
    pub io_mode: String,
    pub budget_bytes: u64,
    /// Bytes of weights the store holds now (pinned + cached + loading).
    pub resident_bytes: u64,
    /// Loaded at start and kept: embeddings, head, routers, pinned layers.
    pub pinned_bytes: u64,
    /// Capacity of the routed-expert cache.
    pub expert_cache_bytes: u64,
    /// Capacity of the window streamed layers pass through.
    pub layer_window_bytes: u64,
    pub streamed_layers: usize,
    /// Tokens run through the model.
    pub tokens: u64,
    /// Expert uses served from the cache.
    pub expert_hits: u64,
    /// Expert uses served by a prefetch (read before it was needed).
    pub expert_prefetch_hits: u64,
    /// Expert uses that had to be read on demand.
    pub expert_misses: u64,
    pub layer_hits: u64,
    pub layer_prefetch_hits: u64,
    pub layer_misses: u64,
    /// Predicted reads issued, and those whose unit was never used.
    pub prefetches: u64,
    pub prefetches_unused: u64,
    pub evictions: u64,
    /// Bytes read from the file while running (after load).
    pub bytes_read: u64,
    pub reads: u64,
    /// Seconds the compute thread waited for reads.
    pub io_stall_s: f64,
    /// Seconds the I/O threads spent reading.
    pub io_read_s: f64,
    /// What loading the pinned part took.
    pub load_bytes: u64,
    pub load_s: f64,
}

impl StoreStats {
    /// Expert uses served without a demand read (cache or prefetch);
    /// 1 when there were none or nothing is paged.
    pub fn expert_hit_rate(&self) -> f64 {
        let served = self.expert_hits + self.expert_prefetch_hits;
        let all = served + self.expert_misses;
        if all == 0 {
            1.0
        } else {
            served as f64 / all as f64
        }
    }

    /// Expert uses served from the cache alone (no prefetch).
    pub fn expert_cache_hit_rate(&self) -> f64 {
        let all = self.expert_hits + self.expert_prefetch_hits + self.expert_misses;
        if all == 0 {
            1.0
        } else {
            self.expert_hits as f64 / all as f64
        }
    }

    pub fn bytes_read_per_token(&self) -> f64 {
        if self.tokens == 0 {
            0.0
        } else {
            self.bytes_read as f64 / self.tokens as f64
        }
    }

    /// The counters accumulated since `earlier`; the gauges of `self`.
    pub fn since(&self, earlier: &StoreStats) -> StoreStats {
        StoreStats {
            tokens: self.tokens.saturating_sub(earlier.tokens),
            expert_hits: self.expert_hits.saturating_sub(earlier.expert_hits),
            expert_prefetch_hits: self
                .expert_prefetch_hits
                .saturating_sub(earlier.expert_prefetch_hits),
            expert_misses: self.expert_misses.saturating_sub(earlier.expert_misses),
            layer_hits: self.layer_hits.saturating_sub(earlier.layer_hits),
            layer_prefetch_hits: self
                .layer_prefetch_hits
                .saturating_sub(earlier.layer_prefetch_hits),
            layer_misses: self.layer_misses.saturating_sub(earlier.layer_misses),
            prefetches: self.prefetches.saturating_sub(earlier.prefetches),
            prefetches_unused: self
                .prefetches_unused
                .saturating_sub(earlier.prefetches_unused),
            evictions: self.evictions.saturating_sub(earlier.evictions),
            bytes_read: self.bytes_read.saturating_sub(earlier.bytes_read),
            reads: self.reads.saturating_sub(earlier.reads),
            io_stall_s: (self.io_stall_s - earlier.io_stall_s).max(0.0),
            io_read_s: (self.io_read_s - earlier.io_read_s).max(0.0),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_windows() {
        let a = StoreStats {
            tokens: 10,
            expert_hits: 6,
            expert_prefetch_hits: 2,
            expert_misses: 2,
            bytes_read: 1000,
            io_stall_s: 0.5,
            resident_bytes: 7,
            ..Default::default()
        };
        assert_eq!(a.expert_hit_rate(), 0.8);
        assert_eq!(a.expert_cache_hit_rate(), 0.6);
        assert_eq!(a.bytes_read_per_token(), 100.0);
        let b = StoreStats {
            tokens: 14,
            expert_hits: 9,
            expert_misses: 3,
            expert_prefetch_hits: 2,
            bytes_read: 1400,
            io_stall_s: 0.75,
            resident_bytes: 9,
            ..Default::default()
        };
        let d = b.since(&a);
        assert_eq!(
            (d.tokens, d.expert_hits, d.expert_misses, d.bytes_read),
            (4, 3, 1, 400)
        );
        assert_eq!(d.io_stall_s, 0.25);
        assert_eq!(d.resident_bytes, 9);
        assert_eq!(StoreStats::default().expert_hit_rate(), 1.0);
        let j = serde_json::to_value(&d).expect("json");
        assert_eq!(j["bytes_read"], 400);
    }
}
