//! DwarfStar mesh: node identity, admission by a join secret, discovery (mDNS + static peers),
//! the capabilities and control request-response protocols, and the QUIC data plane.
//!
//! - [`identity`]: the persistent ed25519 key (`<state>/identity.key`) = libp2p PeerId = QUIC cert key.
//! - [`secret`]: the join secret; pnet PSK and QUIC channel-binding key derive from it.
//! - [`behaviour`], [`protocol`]: libp2p transport (TCP + pnet + noise + yamux) and behaviours.
//! - [`event_loop`]: the one task owning the Swarm, fed `Command`s by [`MeshHandle`]s.
//! - [`quic`]: the quinn data plane (pinned certs, secret binding, connection reuse).
//! - [`codec`] (sans-IO) and [`stream`]: frames on QUIC streams, with limits.
//! - [`shard`]: shard transfer (manifests and BLAKE3-checked byte ranges of model files).
//! - [`probe`]: link probes, timing bytes sent to a peer to estimate bandwidth.
//! - [`sysinfo`]: RAM/cores/disk probes and a cached self-benchmark helper for capabilities.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dwarfstar_mesh::MeshError> {
//! use dwarfstar_mesh::{JoinSecret, Mesh, MeshConfig, MeshEvent};
//! let secret = JoinSecret::new(b"a long shared secret".to_vec())?;
//! let (handle, mut events) = Mesh::start(MeshConfig::new("/var/lib/dwarfstar", secret)).await?;
//! while let Some(ev) = events.recv().await {
//!     if let MeshEvent::Caps(peer, caps) = ev {
//!         println!("{peer}: {} cores", caps.cores);
//!     }
//! }
//! # drop(handle); Ok(()) }
//! ```

mod behaviour;
pub mod codec;
mod config;
mod event_loop;
mod events;
mod handle;
pub mod identity;
pub mod probe;
mod protocol;
pub mod quic;
pub mod secret;
pub mod shard;
pub mod stream;
pub mod sysinfo;
pub mod token;
pub mod wire;

pub use codec::{f32s_from_bytes, f32s_to_bytes, Frame, FrameDecoder, FrameError, FrameLimits};
pub use config::{MeshConfig, DEFAULT_QUIC_PORT, DEFAULT_TCP_PORT};
pub use events::{ControlResponder, LocalInfo, MeshEvent, MeshEvents, PeerInfo};
pub use handle::{Mesh, MeshHandle};
pub use identity::{Identity, IdentityError};
pub use libp2p::{Multiaddr, PeerId};
pub use protocol::MAX_CONTROL;
pub use quic::DataPlaneError;
pub use secret::{JoinSecret, SecretError};
pub use stream::{FrameReceiver, FrameSender, FrameStream, StreamError};
pub use token::{JoinToken, TokenError};
pub use wire::{Addresses, Capabilities, DType, FrameHeader, FrameKind, ModelInfo};

/// Errors at the mesh's boundary.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("libp2p transport: {0}")]
    Transport(String),
    #[error("listen: {0}")]
    Listen(String),
    #[error(transparent)]
    DataPlane(#[from] DataPlaneError),
    #[error("request to {peer} failed: {reason}")]
    Request { peer: PeerId, reason: String },
    #[error("the mesh node has stopped")]
    Stopped,
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}
