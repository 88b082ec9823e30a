//! Link probes: how fast the data plane moves bytes to a peer.
//!
//! The prober opens a stream and sends one `PROBE` frame of `n` bytes; the
//! peer reads it whole and answers with an empty `PROBE` frame. The
//! exchange takes one round trip plus the transfer of the `n` bytes, so
//! [`bandwidth_bps`] subtracts a round trip measured the same way with an
//! empty probe.

use std::time::{Duration, Instant};

use bytes::Bytes;
use libp2p::PeerId;

use crate::codec::Frame;
use crate::handle::MeshHandle;
use crate::stream::{FrameStream, StreamError};
use crate::wire::{DType, FrameHeader, FrameKind};
use crate::MeshError;

/// The largest probe a node answers.
pub const MAX_PROBE: u64 = 4 << 20;

/// What goes wrong with a probe.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Mesh(#[from] MeshError),
    #[error("{peer} answered the probe badly: {reason}")]
    BadReply { peer: PeerId, reason: String },
    #[error("a probe of {0} bytes exceeds the {MAX_PROBE}-byte limit")]
    TooLarge(u64),
}

/// Whether a frame is a probe (to route it to [`answer`]).
pub fn is_probe(h: &FrameHeader) -> bool {
    h.kind == FrameKind::Probe as i32
}

fn frame(n: usize) -> (FrameHeader, Bytes) {
    let h = FrameHeader {
        kind: FrameKind::Probe as i32,
        dtype: DType::U8 as i32,
        shape: if n == 0 { Vec::new() } else { vec![n as u64] },
        payload_len: n as u64,
        ..Default::default()
    };
    (h, Bytes::from(vec![0u8; n]))
}

/// Answers one probe, `first` being the stream's first frame (read whole
/// already). A probe over the limit is not answered.
pub async fn answer(mut s: FrameStream, first: Frame) {
    let peer = s.peer;
    if first.header.payload_len > MAX_PROBE {
        tracing::warn!(%peer, "probe of {} bytes refused", first.header.payload_len);
        let _ = s.send.finish();
        return;
    }
    let (h, p) = frame(0);
    if let Err(e) = s.send.send_frame(&h, p).await {
        tracing::debug!(%peer, "answering a probe: {e}");
        return;
    }
    let _ = s.send.finish();
}

/// Sends `n` bytes to `peer` and waits for its answer; the time it took.
pub async fn exchange(mesh: &MeshHandle, peer: PeerId, n: u64) -> Result<Duration, ProbeError> {
    if n > MAX_PROBE {
        return Err(ProbeError::TooLarge(n));
    }
    let (h, p) = frame(n as usize);
    let t0 = Instant::now();
    let (mut tx, mut rx) = mesh.open_stream(peer).await?;
    tx.send_frame(&h, p).await?;
    tx.finish()?;
    let bad = |reason: String| ProbeError::BadReply { peer, reason };
    match rx.recv_frame().await? {
        Some(f) if is_probe(&f.header) && f.payload.is_empty() => Ok(t0.elapsed()),
        Some(f) => Err(bad(format!("frame kind {}", f.header.kind))),
        None => Err(bad("stream closed without an answer".into())),
    }
}

/// Bits per second moved by a probe of `bytes` that took `loaded`, when an
/// empty one took `empty`; None when the difference is too small to tell.
pub fn bandwidth_bps(bytes: u64, loaded: Duration, empty: Duration) -> Option<f64> {
    let transfer = loaded.checked_sub(empty)?.as_secs_f64();
    (transfer > 1e-6).then(|| bytes as f64 * 8.0 / transfer)
}

/// The bandwidth to `peer`: the best of `rounds` exchanges of `bytes`,
/// less the best empty exchange.
pub async fn measure(
    mesh: &MeshHandle,
    peer: PeerId,
    bytes: u64,
    rounds: usize,
) -> Result<Option<f64>, ProbeError> {
    let mut empty = Duration::MAX;
    let mut loaded = Duration::MAX;
    for _ in 0..rounds.max(1) {
        empty = empty.min(exchange(mesh, peer, 0).await?);
        loaded = loaded.min(exchange(mesh, peer, bytes).await?);
    }
    Ok(bandwidth_bps(bytes, loaded, empty))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth_is_the_bytes_over_the_extra_time() {
        let ms = Duration::from_millis;
        // 1 MB in 8 ms more than an empty probe: 1 Gbit/s.
        let b = bandwidth_bps(1_000_000, ms(9), ms(1)).unwrap();
        assert!((b - 1e9).abs() < 1.0, "{b}");
        assert_eq!(bandwidth_bps(1_000_000, ms(1), ms(2)), None);
        assert_eq!(bandwidth_bps(1_000_000, ms(1), ms(1)), None);
        let (h, p) = frame(5);
        assert!(is_probe(&h));
        assert_eq!((h.payload_len, p.len(), h.shape), (5, 5, vec![5]));
        assert!(crate::codec::validate_header(&frame(0).0, &Default::default()).is_ok());
    }
}
