//! Configuration of a mesh node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use libp2p::Multiaddr;

use crate::codec::FrameLimits;
use crate::secret::JoinSecret;
use crate::wire::Capabilities;

/// Default libp2p TCP port.
pub const DEFAULT_TCP_PORT: u16 = 7000;
/// Default QUIC data-plane UDP port.
pub const DEFAULT_QUIC_PORT: u16 = 7001;

#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// Where `identity.key` lives.
    pub state_dir: PathBuf,
    pub secret: JoinSecret,
    /// libp2p listen addresses (TCP), e.g. `/ip4/0.0.0.0/tcp/7000`; port 0 picks one.
    pub listen: Vec<Multiaddr>,
    /// QUIC data-plane socket; port 0 picks one.
    pub quic_listen: SocketAddr,
    /// Peers dialed at start and redialed with backoff while unreachable.
    pub static_peers: Vec<Multiaddr>,
    /// mDNS discovery on the LAN.
    pub mdns: bool,
    /// Initial capabilities (the mesh fills in `id`, `addresses.quic`, `addresses.libp2p` and
    /// `protocol_version`).
    pub caps: Capabilities,
    /// Timeout of a capabilities or control request.
    pub request_timeout: Duration,
    /// First and largest delay between redials of an unreachable static peer.
    pub redial_initial: Duration,
    pub redial_max: Duration,
    pub frame_limits: FrameLimits,
}

impl MeshConfig {
    /// Defaults: libp2p on 0.0.0.0:7000, QUIC on 0.0.0.0:7001, mDNS on, 30 s requests,
    /// redial from 0.5 s doubling to 30 s.
    pub fn new(state_dir: impl Into<PathBuf>, secret: JoinSecret) -> MeshConfig {
        MeshConfig {
            state_dir: state_dir.into(),
            secret,
            listen: vec![format!("/ip4/0.0.0.0/tcp/{DEFAULT_TCP_PORT}")
                .parse()
                .expect("static multiaddr")],
            quic_listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_QUIC_PORT)),
            static_peers: Vec::new(),
            mdns: true,
            caps: Capabilities::default(),
            request_timeout: Duration::from_secs(30),
            redial_initial: Duration::from_millis(500),
            redial_max: Duration::from_secs(30),
            frame_limits: FrameLimits::default(),
        }
    }

    /// Loopback on ephemeral ports, no mDNS: for tests and several nodes on one machine.
    pub fn loopback(state_dir: impl Into<PathBuf>, secret: JoinSecret) -> MeshConfig {
        let mut cfg = MeshConfig::new(state_dir, secret);
        cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("static multiaddr")];
        cfg.quic_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        cfg.mdns = false;
        cfg
    }
}
