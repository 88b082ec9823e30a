//! Data-plane traffic counters: how many frames (and bytes, as the wire
//! carries them) this process sent to and answered for its peers. The
//! transport counts; status answers ([`snapshot`]) show them, so the cost
//! of a pipeline hop per token can be read off a running mesh.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use dwarfstar_proto::v1::{FrameHeader, Traffic};
use dwarfstar_proto::Message;

static FRAMES_SENT: AtomicU64 = AtomicU64::new(0);
static BYTES_SENT: AtomicU64 = AtomicU64::new(0);
static ANSWERS_RECEIVED: AtomicU64 = AtomicU64::new(0);
static ANSWER_BYTES_RECEIVED: AtomicU64 = AtomicU64::new(0);
static FRAMES_SERVED: AtomicU64 = AtomicU64::new(0);
static BYTES_SERVED_IN: AtomicU64 = AtomicU64::new(0);
static BYTES_SERVED_OUT: AtomicU64 = AtomicU64::new(0);

/// Bytes a frame takes on a stream: the u32 header length, the header,
/// the payload.
pub fn wire_bytes(h: &FrameHeader, payload_len: usize) -> u64 {
    (4 + h.encoded_len() + payload_len) as u64
}

/// This node sent a request frame to a peer.
pub fn sent(h: &FrameHeader, payload_len: usize) {
    FRAMES_SENT.fetch_add(1, Relaxed);
    BYTES_SENT.fetch_add(wire_bytes(h, payload_len), Relaxed);
}

/// A peer answered one of this node's requests.
pub fn answered(h: &FrameHeader, payload_len: usize) {
    ANSWERS_RECEIVED.fetch_add(1, Relaxed);
    ANSWER_BYTES_RECEIVED.fetch_add(wire_bytes(h, payload_len), Relaxed);
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
        sent(&h, 2304);
        answered(&h, 2304);
        let after = snapshot();
        // Other tests may send frames at the same time: at least ours.
        assert!(after.frames_sent > before.frames_sent);
        assert!(after.bytes_sent >= before.bytes_sent + n);
        assert!(after.answer_bytes_received >= before.answer_bytes_received + n);
    }
}
