//! Frame streams over QUIC: [`FrameSender`] writes `length | header | payload` (the payload as
//! its own `Bytes` chunk, not copied), [`FrameReceiver`] reads into one `BytesMut` sized by the
//! decoder and hands payloads out frozen. A protocol violation by the peer closes the whole
//! connection (logged with `tracing::warn`); other peers are not affected.

use bytes::{Bytes, BytesMut};
use libp2p::PeerId;

use crate::codec::{encode_header, Frame, FrameDecoder, FrameError, FrameLimits};
use crate::quic::CLOSE_PROTOCOL_VIOLATION;
use crate::wire::FrameHeader;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The frame breaks the protocol: from the peer (the connection is now closed) or, when
    /// sending, our own header/payload disagree (nothing was sent).
    #[error("frame protocol violation: {0}")]
    Frame(#[from] FrameError),
    /// The connection is gone (closed by either side, or timed out).
    #[error("QUIC connection closed: {0}")]
    ConnectionClosed(quinn::ConnectionError),
    #[error("QUIC write: {0}")]
    Write(quinn::WriteError),
    #[error("QUIC read: {0}")]
    Read(std::io::Error),
    #[error("stream already closed")]
    Closed,
}

impl From<quinn::WriteError> for StreamError {
    fn from(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::ConnectionLost(c) => StreamError::ConnectionClosed(c),
            other => StreamError::Write(other),
        }
    }
}

impl From<std::io::Error> for StreamError {
    fn from(e: std::io::Error) -> Self {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<quinn::ReadError>())
        {
            Some(quinn::ReadError::ConnectionLost(c)) => StreamError::ConnectionClosed(c.clone()),
            _ => StreamError::Read(e),
        }
    }
}

impl StreamError {
    /// The application close code when the connection was closed by the peer (see the
    /// `CLOSE_*` constants in [`crate::quic`]).
    pub fn peer_close_code(&self) -> Option<u64> {
        match self {
            StreamError::ConnectionClosed(quinn::ConnectionError::ApplicationClosed(c)) => {
                Some(c.error_code.into_inner())
            }
            _ => None,
        }
    }
}

/// The sending half of a frame stream.
#[derive(Debug)]
pub struct FrameSender {
    inner: quinn::SendStream,
    limits: FrameLimits,
}

impl FrameSender {
    pub(crate) fn new(inner: quinn::SendStream, limits: FrameLimits) -> Self {
        FrameSender { inner, limits }
    }

    /// Sends one frame; `header.payload_len` must equal `payload.len()` and match the shape.
    pub async fn send_frame(
        &mut self,
        header: &FrameHeader,
        payload: Bytes,
    ) -> Result<(), StreamError> {
        let head = encode_header(header, payload.len(), &self.limits)?.freeze();
        if payload.is_empty() {
            self.inner.write_chunk(head).await?;
        } else {
            self.inner.write_all_chunks(&mut [head, payload]).await?;
        }
        Ok(())
    }

    /// Ends the stream cleanly (the peer's `recv_frame` then returns `Ok(None)`).
    pub fn finish(&mut self) -> Result<(), StreamError> {
        self.inner.finish().map_err(|_| StreamError::Closed)
    }

    /// The underlying QUIC stream (for priorities, resets, or raw writes).
    pub fn raw(&mut self) -> &mut quinn::SendStream {
        &mut self.inner
    }
}

/// The receiving half of a frame stream.
#[derive(Debug)]
pub struct FrameReceiver {
    inner: quinn::RecvStream,
    conn: quinn::Connection,
    peer: PeerId,
    decoder: FrameDecoder,
    buf: BytesMut,
}

impl FrameReceiver {
    pub(crate) fn new(
        inner: quinn::RecvStream,
        conn: quinn::Connection,
        peer: PeerId,
        limits: FrameLimits,
    ) -> Self {
        FrameReceiver {
            inner,
            conn,
            peer,
            decoder: FrameDecoder::new(limits),
            buf: BytesMut::new(),
        }
    }

    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// The next frame; `Ok(None)` when the peer finished the stream between frames.
    pub async fn recv_frame(&mut self) -> Result<Option<Frame>, StreamError> {
        use tokio::io::AsyncReadExt;
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(e) => return Err(self.violation(e)),
            }
            let want = self.decoder.bytes_wanted_in(&self.buf);
            self.buf.reserve(want);
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                return match self.decoder.decode_eof(&mut self.buf) {
                    Ok(frame) => Ok(frame),
                    Err(e) => Err(self.violation(e)),
                };
            }
        }
    }

    fn violation(&mut self, e: FrameError) -> StreamError {
        tracing::warn!(peer = %self.peer, error = %e, "frame protocol violation; disconnecting peer");
        let reason = e.to_string();
        self.conn.close(
            CLOSE_PROTOCOL_VIOLATION.into(),
            &reason.as_bytes()[..reason.len().min(200)],
        );
        StreamError::Frame(e)
    }

    /// The underlying QUIC stream.
    pub fn raw(&mut self) -> &mut quinn::RecvStream {
        &mut self.inner
    }
}

/// A stream a peer opened to us (see `MeshEvent::IncomingStream`).
#[derive(Debug)]
pub struct FrameStream {
    pub peer: PeerId,
    pub send: FrameSender,
    pub recv: FrameReceiver,
}
