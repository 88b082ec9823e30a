//! DwarfStar mesh: node identity, admission by a join secret, discovery (mDNS + static peers),
//! the capabilities and control request-response protocols, and the QUIC data plane.

pub mod codec;
pub mod wire;

pub use codec::{Frame, FrameDecoder, FrameError, FrameLimits};
pub use wire::{Capabilities, DType, FrameHeader, FrameKind, ModelInfo};
