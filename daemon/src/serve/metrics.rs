//! The server's counters and gauges, shared by the HTTP side and the engine
//! thread, and their Prometheus text rendering (`GET /metrics`).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upper bounds (seconds) of the time-to-first-token histogram buckets.
const TTFT_BUCKETS: [f64; 11] = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// How far back the tokens-per-second gauge looks.
const RATE_WINDOW: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Histogram {
    counts: [u64; TTFT_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Every metric the server exports.
pub struct Metrics {
    started: Instant,
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Tokens sampled, all requests together.
    pub generated_tokens: AtomicU64,
    /// Prompt tokens run through the model (prefix-cache hits excluded).
    pub prefill_tokens: AtomicU64,
    /// Requests waiting for a slot.
    pub queue_depth: AtomicUsize,
    /// Sequences the engine is running.
    pub active: AtomicUsize,
    pub prefix_hits: AtomicU64,
    pub prefix_misses: AtomicU64,
    /// Prompt tokens served from the prefix cache.
    pub prefix_tokens: AtomicU64,
    pub prefix_entries: AtomicUsize,
    pub prefix_bytes: AtomicUsize,
    /// Forward passes the engine ran.
    pub steps: AtomicU64,
    /// Forward passes that ran two or more sequences together.
    pub batched_steps: AtomicU64,
    /// Draft tokens run for verification (speculative decoding).
    pub spec_drafted: AtomicU64,
    /// Draft tokens the target accepted.
    pub spec_accepted: AtomicU64,
    /// Times running sequences were carried over a broken pipeline (see
    /// `scheduler::recover`), the milliseconds it took until they ran
    /// again, and the tokens their caches were rebuilt from.
    pub recoveries: AtomicU64,
    pub recovery_ms: AtomicU64,
    pub replayed_tokens: AtomicU64,
    ttft: Mutex<Histogram>,
    decoded: Mutex<VecDeque<(Instant, u64)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            started: Instant::now(),
            requests: Mutex::default(),
            generated_tokens: AtomicU64::new(0),
            prefill_tokens: AtomicU64::new(0),
            queue_depth: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            prefix_hits: AtomicU64::new(0),
            prefix_misses: AtomicU64::new(0),
            prefix_tokens: AtomicU64::new(0),
            prefix_entries: AtomicUsize::new(0),
            prefix_bytes: AtomicUsize::new(0),
            steps: AtomicU64::new(0),
            batched_steps: AtomicU64::new(0),
            spec_drafted: AtomicU64::new(0),
            spec_accepted: AtomicU64::new(0),
            recoveries: AtomicU64::new(0),
            recovery_ms: AtomicU64::new(0),
            replayed_tokens: AtomicU64::new(0),
            ttft: Mutex::default(),
            decoded: Mutex::default(),
        }
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Counts one answered request.
    pub fn request(&self, endpoint: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((endpoint.to_string(), status)).or_insert(0) += 1;
    }

    /// Requests answered so far, all endpoints and statuses together.
    pub fn requests_total(&self) -> u64 {
        let m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        m.values().sum()
    }

    /// Records a time to first token.
    pub fn ttft(&self, d: Duration) {
        let s = d.as_secs_f64();
        let mut h = self.ttft.lock().unwrap_or_else(|e| e.into_inner());
        for (i, &b) in TTFT_BUCKETS.iter().enumerate() {
            if s <= b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += s;
    }

    /// Records `n` tokens sampled in one engine step.
    pub fn decoded(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.generated_tokens.fetch_add(n, Relaxed);
        let now = Instant::now();
        let mut q = self.decoded.lock().unwrap_or_else(|e| e.into_inner());
        q.push_back((now, n));
        while q
            .front()
            .is_some_and(|&(t, _)| now.duration_since(t) > RATE_WINDOW)
        {
            q.pop_front();
        }
    }

    /// The draft counters, as Control's status carries them.
    pub fn speculation(&self) -> dwarfstar_proto::v1::Speculation {
        dwarfstar_proto::v1::Speculation {
            drafted: self.spec_drafted.load(Relaxed),
            accepted: self.spec_accepted.load(Relaxed),
        }
    }

    /// Accepted over drafted tokens since start (0 before any draft).
    pub fn acceptance_rate(&self) -> f64 {
        let d = self.spec_drafted.load(Relaxed);
        if d == 0 {
            0.0
        } else {
            self.spec_accepted.load(Relaxed) as f64 / d as f64
        }
    }

    /// Tokens sampled per second over the last ten seconds (or since start).
    pub fn tokens_per_second(&self) -> f64 {
        let now = Instant::now();
        let q = self.decoded.lock().unwrap_or_else(|e| e.into_inner());
        let n: u64 = q
            .iter()
            .filter(|&&(t, _)| now.duration_since(t) <= RATE_WINDOW)
            .map(|&(_, n)| n)
            .sum();
        let span = self
            .started
            .elapsed()
            .min(RATE_WINDOW)
            .as_secs_f64()
            .max(1e-3);
        n as f64 / span
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let family = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            &mut o,
            "dwarfstar_requests_total",
            "counter",
            "HTTP requests answered, by endpoint and status.",
        );
        {
            let m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            for ((ep, st), n) in m.iter() {
                let _ = writeln!(
                    o,
                    "dwarfstar_requests_total{{endpoint=\"{ep}\",status=\"{st}\"}} {n}"
                );
            }
        }
        let counters: [(&str, &str, u64); 11] = [
            (
                "dwarfstar_generated_tokens_total",
                "Tokens sampled.",
                self.generated_tokens.load(Relaxed),
            ),
            (
                "dwarfstar_prefill_tokens_total",
                "Prompt tokens run through the model.",
                self.prefill_tokens.load(Relaxed),
            ),
            (
                "dwarfstar_prefix_cache_hits_total",
                "Requests started from a cached prefix.",
                self.prefix_hits.load(Relaxed),
            ),
            (
                "dwarfstar_prefix_cache_misses_total",
                "Requests with no usable cached prefix.",
                self.prefix_misses.load(Relaxed),
            ),
            (
                "dwarfstar_prefix_cache_tokens_total",
                "Prompt tokens taken from the prefix cache.",
                self.prefix_tokens.load(Relaxed),
            ),
            (
                "dwarfstar_engine_steps_total",
                "Batched forward passes run.",
                self.steps.load(Relaxed),
            ),
            (
                "dwarfstar_engine_batched_steps_total",
                "Forward passes that ran two or more sequences together.",
                self.batched_steps.load(Relaxed),
            ),
            (
                "dwarfstar_spec_drafted_tokens_total",
                "Draft tokens verified (speculative decoding).",
                self.spec_drafted.load(Relaxed),
            ),
            (
                "dwarfstar_spec_accepted_tokens_total",
                "Draft tokens accepted.",
                self.spec_accepted.load(Relaxed),
            ),
            (
                "dwarfstar_recoveries_total",
                "Times running requests were carried over a lost mesh node.",
                self.recoveries.load(Relaxed),
            ),
            (
                "dwarfstar_replayed_tokens_total",
                "Tokens replayed to rebuild caches after a lost mesh node.",
                self.replayed_tokens.load(Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            family(&mut o, name, "counter", help);
            let _ = writeln!(o, "{name} {v}");
        }
        let gauges: [(&str, &str, f64); 7] = [
            (
                "dwarfstar_spec_acceptance_rate",
                "Accepted over drafted tokens since start (0 without drafts).",
                self.acceptance_rate(),
            ),
            (
                "dwarfstar_tokens_per_second",
                "Tokens sampled per second, last 10 s.",
                self.tokens_per_second(),
            ),
            (
                "dwarfstar_queue_depth",
                "Requests waiting for a slot.",
                self.queue_depth.load(Relaxed) as f64,
            ),
            (
                "dwarfstar_active_sequences",
                "Sequences being run.",
                self.active.load(Relaxed) as f64,
            ),
            (
                "dwarfstar_prefix_cache_entries",
                "States in the prefix cache.",
                self.prefix_entries.load(Relaxed) as f64,
            ),
            (
                "dwarfstar_prefix_cache_bytes",
                "Bytes of state in the prefix cache.",
                self.prefix_bytes.load(Relaxed) as f64,
            ),
            (
                "dwarfstar_uptime_seconds",
                "Seconds since the server started.",
                self.uptime().as_secs_f64(),
            ),
        ];
        for (name, help, v) in gauges {
            family(&mut o, name, "gauge", help);
            let _ = writeln!(o, "{name} {v}");
        }
        let name = "dwarfstar_recovery_seconds_total";
        family(
            &mut o,
            name,
            "counter",
            "Seconds running requests waited for a new plan after a lost mesh node.",
        );
        let recovery = self.recovery_ms.load(Relaxed) as f64 / 1000.0;
        let _ = writeln!(o, "{name} {recovery}");
        let name = "dwarfstar_time_to_first_token_seconds";
        family(
            &mut o,
            name,
            "histogram",
            "From request received to first token sampled.",
        );
        let h = self.ttft.lock().unwrap_or_else(|e| e.into_inner());
        for (b, c) in TTFT_BUCKETS.iter().zip(h.counts) {
            let _ = writeln!(o, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(o, "{name}_sum {}", h.sum);
        let _ = writeln!(o, "{name}_count {}", h.count);
        o
    }
}

/// Per-peer data-plane traffic (this node's calls to each peer) in the
/// Prometheus text exposition: frames and bytes each way, round trips and
/// their summed time (a hop's mean latency is the ratio of the last two).
pub fn render_peers(peers: &[(String, crate::node::traffic::PeerTraffic)]) -> String {
    let mut o = String::new();
    if peers.is_empty() {
        return o;
    }
    type Get = fn(&crate::node::traffic::PeerTraffic) -> f64;
    let series: [(&str, &str, Get); 5] = [
        (
            "dwarfstar_peer_frames_sent_total",
            "Request frames this node sent to the peer.",
            |t| t.frames_sent as f64,
        ),
        (
            "dwarfstar_peer_bytes_sent_total",
            "Bytes of request frames sent to the peer.",
            |t| t.bytes_sent as f64,
        ),
        (
            "dwarfstar_peer_bytes_received_total",
            "Bytes of the peer's answers.",
            |t| t.answer_bytes as f64,
        ),
        (
            "dwarfstar_peer_round_trips_total",
            "Requests the peer answered.",
            |t| t.answers as f64,
        ),
        (
            "dwarfstar_peer_round_trip_seconds_total",
            "Summed time from sending a request to the peer to reading its answer.",
            |t| t.round_trip_s,
        ),
    ];
    for (name, help, get) in series {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
        for (peer, t) in peers {
            let _ = writeln!(o, "{name}{{peer=\"{peer}\"}} {}", get(t));
        }
    }
    o
}

/// The weight store's figures (resident bytes, expert hit rate, bytes
/// read) in the Prometheus text exposition.
pub fn render_store(s: &dwarfstar_model::store::StoreStats) -> String {
    let mut o = String::new();
    let rows: [(&str, &str, &str, f64); 7] = [
        (
            "dwarfstar_weights_paged",
            "gauge",
            "1 when the weights are paged from disk within the budget.",
            f64::from(u8::from(s.paged)),
        ),
        (
            "dwarfstar_weights_budget_bytes",
            "gauge",
            "Bytes of weights this node may hold.",
            s.budget_bytes as f64,
        ),
        (
            "dwarfstar_weights_resident_bytes",
            "gauge",
            "Bytes of weights held in memory now.",
            s.resident_bytes as f64,
        ),
        (
            "dwarfstar_expert_hit_rate",
            "gauge",
            "Routed-expert uses served from memory (1 when nothing is paged).",
            s.expert_hit_rate(),
        ),
        (
            "dwarfstar_weights_read_bytes_total",
            "counter",
            "Bytes of weights read from disk since loading.",
            s.bytes_read as f64,
        ),
        (
            "dwarfstar_weights_io_stall_seconds_total",
            "counter",
            "Seconds the compute waited for weight reads from disk.",
            s.io_stall_s,
        ),
        (
            "dwarfstar_weights_tokens_total",
            "counter",
            "Tokens run through this node's layers (the store's clock).",
            s.tokens as f64,
        ),
    ];
    for (name, kind, help, v) in rows {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.request("/v1/models", 200);
        m.request("/v1/models", 200);
        m.request("/v1/chat/completions", 400);
        m.ttft(Duration::from_millis(70));
        m.ttft(Duration::from_secs(3));
        m.decoded(5);
        let t = m.render();
        assert!(t.contains("dwarfstar_requests_total{endpoint=\"/v1/models\",status=\"200\"} 2\n"));
        assert!(t.contains(
            "dwarfstar_requests_total{endpoint=\"/v1/chat/completions\",status=\"400\"} 1\n"
        ));
        assert!(t.contains("dwarfstar_time_to_first_token_seconds_bucket{le=\"0.05\"} 0\n"));
        assert!(t.contains("dwarfstar_time_to_first_token_seconds_bucket{le=\"0.1\"} 1\n"));
        assert!(t.contains("dwarfstar_time_to_first_token_seconds_bucket{le=\"5\"} 2\n"));
        assert!(t.contains("dwarfstar_time_to_first_token_seconds_count 2\n"));
        assert!(t.contains("dwarfstar_generated_tokens_total 5\n"));
        assert!(m.tokens_per_second() > 0.0);
        assert_eq!(m.requests_total(), 3);
        // Every sample line belongs to a declared family.
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or("");
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(t.contains(&format!("# TYPE {base} ")), "{line}");
        }
    }
}
