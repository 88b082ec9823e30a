//! Sans-IO frame codec of the data plane (no sockets here, in the style of quinn-proto).
//!
//! A frame on a stream is `u32 LE header length | FrameHeader (prost) | payload`. [`FrameDecoder`]
//! takes bytes in a `BytesMut` and yields whole [`Frame`]s; the payload is split off the input
//! buffer and frozen, so it is never copied. Every limit is checked before memory is committed:
//! header <= [`FrameLimits::max_header`], payload <= [`FrameLimits::max_payload`], and the payload
//! length must equal `product(shape) * dtype size` (an empty shape means no payload; an unspecified kind, or an
//! unspecified dtype with a shape, is a violation).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use crate::wire::{DType, FrameHeader, FrameKind};

/// Default largest header, 64 KiB.
pub const MAX_HEADER_LEN: usize = 64 * 1024;
/// Default largest payload, 256 MiB.
pub const MAX_PAYLOAD_LEN: u64 = 256 * 1024 * 1024;

/// Size limits a decoder enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    pub max_header: usize,
    pub max_payload: u64,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            max_header: MAX_HEADER_LEN,
            max_payload: MAX_PAYLOAD_LEN,
        }
    }
}

/// A protocol violation (or a local attempt to send one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame header of {len} bytes exceeds the limit of {max}")]
    HeaderTooLarge { len: u64, max: usize },
    #[error("frame header does not decode: {0}")]
    MalformedHeader(String),
    #[error("unknown frame kind {0}")]
    UnknownKind(i32),
    #[error("unknown dtype {0}")]
    UnknownDType(i32),
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge { len: u64, max: u64 },
    #[error("tensor shape {shape:?} overflows")]
    ShapeOverflow { shape: Vec<u64> },
    #[error(
        "payload_len {declared} does not match shape {shape:?} x dtype size ({expected} bytes)"
    )]
    PayloadLengthMismatch {
        declared: u64,
        expected: u64,
        shape: Vec<u64>,
    },
    #[error("payload has {actual} bytes but the header declares {declared}")]
    PayloadSizeDiffers { declared: u64, actual: u64 },
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub header: FrameHeader,
    pub payload: Bytes,
}

/// Checks a header against the limits; returns the payload length it declares.
pub fn validate_header(header: &FrameHeader, limits: &FrameLimits) -> Result<u64, FrameError> {
    match FrameKind::try_from(header.kind) {
        Ok(FrameKind::Unspecified) | Err(_) => return Err(FrameError::UnknownKind(header.kind)),
        Ok(_) => {}
    }
    let dtype =
        DType::try_from(header.dtype).map_err(|_| FrameError::UnknownDType(header.dtype))?;
    if header.payload_len > limits.max_payload {
        return Err(FrameError::PayloadTooLarge {
            len: header.payload_len,
            max: limits.max_payload,
        });
    }
    let expected = if header.shape.is_empty() {
        0
    } else {
        let elem = dtype
            .size_bytes()
            .ok_or(FrameError::UnknownDType(header.dtype))?;
        header
            .shape
            .iter()
            .try_fold(elem, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| FrameError::ShapeOverflow {
                shape: header.shape.clone(),
            })?
    };
    if expected != header.payload_len {
        return Err(FrameError::PayloadLengthMismatch {
            declared: header.payload_len,
            expected,
            shape: header.shape.clone(),
        });
    }
    Ok(expected)
}

/// Encodes the length prefix and header of a frame whose payload is `payload_len` bytes, after
/// checking it against `limits` (the sender refuses what a receiver would reject).
pub fn encode_header(
    header: &FrameHeader,
    payload_len: usize,
    limits: &FrameLimits,
) -> Result<BytesMut, FrameError> {
    let declared = validate_header(header, limits)?;
    if declared != payload_len as u64 {
        return Err(FrameError::PayloadSizeDiffers {
            declared,
            actual: payload_len as u64,
        });
    }
    let len = header.encoded_len();
    if len > limits.max_header {
        return Err(FrameError::HeaderTooLarge {
            len: len as u64,
            max: limits.max_header,
        });
    }
    let mut buf = BytesMut::with_capacity(4 + len);
    buf.put_u32_le(len as u32);
    header
        .encode(&mut buf)
        .map_err(|e| FrameError::MalformedHeader(e.to_string()))?;
    Ok(buf)
}

#[derive(Debug)]
enum State {
    /// Waiting for the length prefix and the header.
    Header,
    /// Header decoded; waiting for `len` payload bytes.
    Payload {
        header: Box<FrameHeader>,
        len: usize,
    },
    /// A violation was seen; the stream is dead.
    Failed,
}

/// Incremental frame decoder: feed it the stream's bytes, take frames out.
#[derive(Debug)]
pub struct FrameDecoder {
    limits: FrameLimits,
    state: State,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(FrameLimits::default())
    }
}

impl FrameDecoder {
    pub fn new(limits: FrameLimits) -> Self {
        FrameDecoder {
            limits,
            state: State::Header,
        }
    }

    pub fn limits(&self) -> &FrameLimits {
        &self.limits
    }

    /// Decodes the next frame from the front of `src`, consuming its bytes. `Ok(None)` means more
    /// input is needed. After an error the decoder stays failed (the stream must be dropped).
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        loop {
            match &mut self.state {
                State::Failed => {
                    return Err(FrameError::MalformedHeader("decoder already failed".into()))
                }
                State::Header => {
                    if src.len() < 4 {
                        return Ok(None);
                    }
                    let hlen = u32::from_le_bytes([src[0], src[1], src[2], src[3]]) as usize;
                    if hlen > self.limits.max_header {
                        self.state = State::Failed;
                        return Err(FrameError::HeaderTooLarge {
                            len: hlen as u64,
                            max: self.limits.max_header,
                        });
                    }
                    if src.len() < 4 + hlen {
                        return Ok(None);
                    }
                    let header = match FrameHeader::decode(&src[4..4 + hlen]) {
                        Ok(h) => h,
                        Err(e) => {
                            self.state = State::Failed;
                            return Err(FrameError::MalformedHeader(e.to_string()));
                        }
                    };
                    let len = match validate_header(&header, &self.limits) {
                        Ok(len) => len as usize,
                        Err(e) => {
                            self.state = State::Failed;
                            return Err(e);
                        }
                    };
                    src.advance(4 + hlen);
                    self.state = State::Payload {
                        header: Box::new(header),
                        len,
                    };
                }
                State::Payload { len, .. } => {
                    let len = *len;
                    if src.len() < len {
                        return Ok(None);
                    }
                    let payload = src.split_to(len).freeze();
                    let State::Payload { header, .. } =
                        std::mem::replace(&mut self.state, State::Header)
                    else {
                        unreachable!("state checked above");
                    };
                    return Ok(Some(Frame {
                        header: *header,
                        payload,
                    }));
                }
            }
        }
    }

    /// Like [`decode`](Self::decode), at the end of the stream: leftover bytes are an error.
    pub fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() && matches!(self.state, State::Header) => Ok(None),
            None => {
                let buffered = src.len();
                self.state = State::Failed;
                Err(FrameError::Truncated { buffered })
            }
        }
    }

    /// How many more bytes (beyond the `buffered` ones) the decoder needs before it can make
    /// progress; a reader reserves this much so a payload lands in one contiguous buffer.
    pub fn bytes_wanted(&self, buffered: usize) -> usize {
        let need = match &self.state {
            State::Header | State::Failed => 4,
            State::Payload { len, .. } => *len,
        };
        need.saturating_sub(buffered).max(1)
    }

    /// Bytes wanted given the buffer's content (reads the header length when it is there).
    pub fn bytes_wanted_in(&self, src: &[u8]) -> usize {
        if let State::Header = self.state {
            if src.len() >= 4 {
                let hlen = u32::from_le_bytes([src[0], src[1], src[2], src[3]]) as usize;
                return (4 + hlen.min(self.limits.max_header))
                    .saturating_sub(src.len())
                    .max(1);
            }
        }
        self.bytes_wanted(src.len())
    }
}

/// Little-endian bytes of an f32 slice (the activation payload format).
pub fn f32s_to_bytes(values: &[f32]) -> Bytes {
    let mut buf = BytesMut::with_capacity(values.len() * 4);
    for v in values {
        buf.put_f32_le(*v);
    }
    buf.freeze()
}

/// f32 values of a little-endian payload; `None` when its length is not a multiple of 4.
pub fn f32s_from_bytes(bytes: &[u8]) -> Option<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests;
