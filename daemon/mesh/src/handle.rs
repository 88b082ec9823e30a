//! [`Mesh::start`] and the cloneable [`MeshHandle`]: every method sends a `Command` to the event
//! loop (or goes straight to the QUIC data plane for streams) and awaits its answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use crate::behaviour::{transport, MeshBehaviour};
use crate::config::MeshConfig;
use crate::event_loop::{Command, EventLoop};
use crate::events::{LocalInfo, MeshEvents, PeerInfo};
use crate::identity::Identity;
use crate::quic::{DataPlane, PeerBook};
use crate::stream::{FrameReceiver, FrameSender};
use crate::wire::Capabilities;
use crate::MeshError;

/// Entry point of the mesh.
#[derive(Debug)]
pub struct Mesh;

impl Mesh {
    /// Loads (or creates) the node identity, binds the libp2p listeners and the QUIC endpoint,
    /// dials the static peers and spawns the event loop. Must run inside a tokio runtime.
    /// Returns once the listeners have their addresses.
    pub async fn start(config: MeshConfig) -> Result<(MeshHandle, MeshEvents), MeshError> {
        let identity = Identity::load_or_create(&config.state_dir)?;
        tracing::info!(peer_id = %identity.peer_id(), secret = %config.secret.fingerprint(), "starting mesh node");
        let book = PeerBook::default();
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let data = DataPlane::bind(
            config.quic_listen,
            &identity,
            &config.secret,
            book.clone(),
            config.frame_limits,
            event_tx.clone(),
        )?;
        let transport = transport(&identity, &config.secret)
            .map_err(|e| MeshError::Transport(e.to_string()))?;
        let behaviour = MeshBehaviour::new(&identity, config.mdns, config.request_timeout)
            .map_err(|e| MeshError::Transport(format!("mDNS: {e}")))?;
        let swarm_cfg = libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(Duration::from_secs(365 * 24 * 3600));
        let mut swarm = libp2p::Swarm::new(transport, behaviour, identity.peer_id(), swarm_cfg);
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| MeshError::Listen(format!("{addr}: {e}")))?;
        }
        let (cmd_tx, cmd_rx) = mpsc::channel(256);
        let mut event_loop = EventLoop::new(
            swarm,
            cmd_rx,
            cmd_tx.downgrade(),
            event_tx,
            book,
            data.clone(),
            config.caps,
            config.static_peers,
            config.redial_initial,
            config.redial_max,
        );
        if let Err(e) = event_loop
            .wait_listening(config.listen.len(), Duration::from_secs(10))
            .await
        {
            data.close();
            return Err(e);
        }
        tokio::spawn(event_loop.run());
        let handle = MeshHandle {
            commands: cmd_tx,
            data,
            peer_id: identity.peer_id(),
        };
        Ok((handle, MeshEvents { rx: event_rx }))
    }
}

/// A cloneable handle to a running mesh node. The node stops when every handle (and every
/// pending `ControlResponder`) is dropped, or on [`shutdown`](MeshHandle::shutdown).
#[derive(Clone, Debug)]
pub struct MeshHandle {
    commands: mpsc::Sender<Command>,
    data: Arc<DataPlane>,
    peer_id: PeerId,
}

impl MeshHandle {
    pub fn local_peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Local address of the QUIC endpoint.
    pub fn quic_addr(&self) -> Result<SocketAddr, MeshError> {
        Ok(self.data.local_addr()?)
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, MeshError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| MeshError::Stopped)?;
        rx.await.map_err(|_| MeshError::Stopped)
    }

    /// This node's PeerId and listen addresses.
    pub async fn local_info(&self) -> Result<LocalInfo, MeshError> {
        self.ask(Command::LocalInfo).await
    }

    /// Admitted, connected peers with what is known about them.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, MeshError> {
        self.ask(Command::Peers).await
    }

    /// Asks `peer` for its current capabilities (sending ours).
    pub async fn capabilities(&self, peer: PeerId) -> Result<Capabilities, MeshError> {
        self.ask(|reply| Command::FetchCaps { peer, reply }).await?
    }

    /// Sends a control request (bytes the runtime defines) and awaits the peer's response for
    /// at most `within` (and the configured request timeout): a peer that stopped without
    /// closing its connection fails the call at its deadline.
    pub async fn send_control(
        &self,
        peer: PeerId,
        request: Vec<u8>,
        within: Duration,
    ) -> Result<Vec<u8>, MeshError> {
        let ask = self.ask(|reply| Command::SendControl {
            peer,
            request,
            reply,
        });
        match tokio::time::timeout(within, ask).await {
            Ok(r) => r?,
            Err(_) => Err(MeshError::Request {
                peer,
                reason: format!("no answer within {within:?}"),
            }),
        }
    }

    /// Replaces this node's capabilities and pushes them to every connected peer.
    pub async fn set_local_caps(&self, caps: Capabilities) -> Result<(), MeshError> {
        self.commands
            .send(Command::SetLocalCaps(caps))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Adds a static peer address (dialed now, redialed with backoff).
    pub async fn add_peer(&self, addr: Multiaddr) -> Result<(), MeshError> {
        self.commands
            .send(Command::AddStaticPeer(addr))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Opens a frame stream to an admitted peer over the (shared) QUIC connection. The peer's
    /// QUIC address comes from its capabilities, so they must have been exchanged.
    pub async fn open_stream(
        &self,
        peer: PeerId,
    ) -> Result<(FrameSender, FrameReceiver), MeshError> {
        Ok(self.data.open_stream(peer).await?)
    }

    /// Stops the event loop and closes the QUIC endpoint.
    pub async fn shutdown(&self) {
        if let Ok(()) = self.ask(Command::Shutdown).await {
            return;
        }
        self.data.close();
    }
}
