//! What the mesh tells its user: [`MeshEvent`]s on the [`MeshEvents`] stream, the
//! [`ControlResponder`] that answers a control request, and [`PeerInfo`] snapshots.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::request_response::ResponseChannel;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;

use crate::event_loop::Command;
use crate::stream::FrameStream;
use crate::wire::Capabilities;
use crate::MeshError;

/// Something happened in the mesh.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // few events; boxing would cost every user a deref
pub enum MeshEvent {
    /// A peer was seen (mDNS, or a static address answered); not yet admitted.
    PeerDiscovered(PeerId, Multiaddr),
    /// A peer passed admission (pnet + noise): it knows the join secret.
    PeerAdmitted(PeerId),
    /// The last connection to an admitted peer closed.
    PeerLost(PeerId),
    /// A peer's capabilities arrived (first exchange, or the peer updated them).
    Caps(PeerId, Capabilities),
    /// A peer sent a control request; answer it with the responder (dropping it fails the
    /// request on the peer's side).
    ControlRequest(PeerId, Vec<u8>, ControlResponder),
    /// A peer opened a frame stream to us.
    IncomingStream(PeerId, FrameStream),
    /// The data plane refused an incoming QUIC connection: its TLS handshake failed (a peer
    /// not admitted), or it did not prove the join secret. `peer` is known when the
    /// handshake got as far as a certificate.
    DataPlaneRefused {
        remote: SocketAddr,
        peer: Option<PeerId>,
        reason: String,
    },
}

/// Answers one control request.
#[derive(Debug)]
pub struct ControlResponder {
    pub(crate) channel: ResponseChannel<Vec<u8>>,
    pub(crate) commands: mpsc::Sender<Command>,
}

impl ControlResponder {
    /// Sends the response bytes back to the requesting peer.
    pub async fn respond(self, response: Vec<u8>) -> Result<(), MeshError> {
        self.commands
            .send(Command::Respond {
                channel: self.channel,
                response,
            })
            .await
            .map_err(|_| MeshError::Stopped)
    }
}

/// The stream of mesh events (also usable without `Stream` through [`MeshEvents::recv`]).
#[derive(Debug)]
pub struct MeshEvents {
    pub(crate) rx: mpsc::UnboundedReceiver<MeshEvent>,
}

impl MeshEvents {
    /// The next event; `None` once the mesh has stopped.
    pub async fn recv(&mut self) -> Option<MeshEvent> {
        self.rx.recv().await
    }
}

impl futures_util::Stream for MeshEvents {
    type Item = MeshEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<MeshEvent>> {
        self.rx.poll_recv(cx)
    }
}

/// A connected, admitted peer as the mesh sees it now.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerInfo {
    pub peer: PeerId,
    /// Remote addresses of the open libp2p connections.
    pub addrs: Vec<Multiaddr>,
    /// Its last capabilities, once exchanged.
    pub caps: Option<Capabilities>,
    /// Last libp2p ping round trip.
    pub rtt: Option<Duration>,
    /// Its identify agent string (e.g. `dwarfstar/0.1.0`).
    pub agent: Option<String>,
    /// The address its QUIC data plane is reached at.
    pub quic_addr: Option<SocketAddr>,
}

/// This node's own addresses.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalInfo {
    pub peer: PeerId,
    /// libp2p listen addresses (with the actual ports).
    pub listen_addrs: Vec<Multiaddr>,
    /// Local address of the QUIC endpoint.
    pub quic_addr: SocketAddr,
}
