//! Data-plane traffic counters: how many frames (and bytes, as the wire
//! carries them) this process sent to and answered for its peers, in all
//! and per peer with the round trips' time. The transport counts; status
//! answers ([`snapshot`]) and `/metrics` ([`per_peer`]) show them, so the
//! cost of a pipeline hop per token can be read off a running mesh.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use dwarfstar_proto::v1::{FrameHeader, Traffic};
use dwarfstar_proto::Message;

static FRAMES_SENT: AtomicU64 = AtomicU64::new(0);
static BYTES_SENT: AtomicU64 = AtomicU64::new(0);
static ANSWERS_RECEIVED: AtomicU64 = AtomicU64::new(0);
static ANSWER_BYTES_RECEIVED: AtomicU64 = AtomicU64::new(0);
static FRAMES_SERVED: AtomicU64 = AtomicU64::new(0);
static BYTES_SERVED_IN: AtomicU64 = AtomicU64::new(0);
static BYTES_SERVED_OUT: AtomicU64 = AtomicU64::new(0);

/// One peer's share of this node's calls.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerTraffic {
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub answers: u64,
    pub answer_bytes: u64,
    /// Summed time from sending a request to reading its answer.
    pub round_trip_s: f64,
}

static PEERS: Mutex<BTreeMap<String, PeerTraffic>> = Mutex::new(BTreeMap::new());

fn with_peer(peer: &str, f: impl FnOnce(&mut PeerTraffic)) {
    let mut m = PEERS.lock().unwrap_or_else(|e| e.into_inner());
    match m.get_mut(peer) {
        Some(t) => f(t),
        None => f(m.entry(peer.to_string()).or_default()),
    }
}

/// Every peer this node has called, by peer id.
pub fn per_peer() -> Vec<(String, PeerTraffic)> {
    let m = PEERS.lock().unwrap_or_else(|e| e.into_inner());
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Bytes a frame takes on a stream: the u32 header length, the header,
/// the payload.
pub fn wire_bytes(h: &FrameHeader, payload_len: usize) -> u64 {
    (4 + h.encoded_len() + payload_len) as u64
}

/// This node sent a request frame to `peer`.
pub fn sent(peer: &str, h: &FrameHeader, payload_len: usize) {
    let n = wire_bytes(h, payload_len);
    FRAMES_SENT.fetch_add(1, Relaxed);
    BYTES_SENT.fetch_add(n, Relaxed);
    with_peer(peer, |t| {
        t.frames_sent += 1;
        t.bytes_sent += n;
    });
}

/// `peer` answered one of this node's requests, `rtt` after it was sent.
pub fn answered(peer: &str, h: &FrameHeader, payload_len: usize, rtt: Duration) {
    let n = wire_bytes(h, payload_len);
    ANSWERS_RECEIVED.fetch_add(1, Relaxed);
    ANSWER_BYTES_RECEIVED.fetch_add(n, Relaxed);
    with_peer(peer, |t| {
        t.answers += 1;
        t.answer_bytes += n;
        t.round_trip_s += rtt.as_secs_f64();
    });
}

/// A peer's request frame arrived here.
pub fn served_in(h: &FrameHeader, payload_len: usize) {
    FRAMES_SERVED.fetch_add(1, Relaxed);
    BYTES_SERVED_IN.fetch_add(wire_bytes(h, payload_len), Relaxed);
}

/// This node answered a peer's request.
pub fn served_out(h: &FrameHeader, payload_len: usize) {
    BYTES_SERVED_OUT.fetch_add(wire_bytes(h, payload_len), Relaxed);
}

/// The counters now.
pub fn snapshot() -> Traffic {
    Traffic {
        frames_sent: FRAMES_SENT.load(Relaxed),
        bytes_sent: BYTES_SENT.load(Relaxed),
        answers_received: ANSWERS_RECEIVED.load(Relaxed),
        answer_bytes_received: ANSWER_BYTES_RECEIVED.load(Relaxed),
        frames_served: FRAMES_SERVED.load(Relaxed),
        bytes_served_in: BYTES_SERVED_IN.load(Relaxed),
        bytes_served_out: BYTES_SERVED_OUT.load(Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_counts_its_length_prefix_header_and_payload() {
        let h = FrameHeader {
            request_id: 7,
            shape: vec![1, 576],
            payload_len: 576 * 4,
            ..Default::default()
        };
        let n = wire_bytes(&h, 576 * 4);
        assert_eq!(n, 4 + h.encode_to_vec().len() as u64 + 2304);
        let before = snapshot();
        sent("test-peer", &h, 2304);
        answered("test-peer", &h, 2304, Duration::from_millis(3));
        let after = snapshot();
        let (_, mine) = per_peer()
            .into_iter()
            .find(|(p, _)| p == "test-peer")
            .unwrap();
        assert_eq!((mine.frames_sent, mine.answers, mine.bytes_sent), (1, 1, n));
        assert!((mine.round_trip_s - 0.003).abs() < 1e-9);
        // Other tests may send frames at the same time: at least ours.
        assert!(after.frames_sent > before.frames_sent);
        assert!(after.bytes_sent >= before.bytes_sent + n);
        assert!(after.answer_bytes_received >= before.answer_bytes_received + n);
    }
}
