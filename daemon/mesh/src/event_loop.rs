//! The ONE task that owns the libp2p `Swarm`. It is fed [`Command`]s by `MeshHandle`s over an
//! mpsc channel, turns swarm events into `MeshEvent`s, keeps the admitted-peer book the QUIC
//! verifier reads, exchanges capabilities on every new connection (asking again when an exchange
//! fails), and redials static peers and peers mDNS found with exponential backoff: a peer whose
//! connection dropped, or whose first dial failed, is not left for the next mDNS answer.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{identify, mdns, ping, Multiaddr, PeerId, Swarm};
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::behaviour::{MeshBehaviour, MeshBehaviourEvent};
use crate::events::{ControlResponder, LocalInfo, MeshEvent, PeerInfo};
use crate::quic::{DataPlane, PeerBook};
use crate::wire::{Addresses, Capabilities, PROTOCOL_VERSION};
use crate::MeshError;

type Reply<T> = oneshot::Sender<Result<T, MeshError>>;

/// Requests from handles to the event loop.
#[derive(Debug)]
pub(crate) enum Command {
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    LocalInfo(oneshot::Sender<LocalInfo>),
    FetchCaps {
        peer: PeerId,
        reply: Reply<Capabilities>,
    },
    SendControl {
        peer: PeerId,
        request: Vec<u8>,
        reply: Reply<Vec<u8>>,
    },
    Respond {
        channel: ResponseChannel<Vec<u8>>,
        response: Vec<u8>,
    },
    SetLocalCaps(Capabilities),
    AddStaticPeer(Multiaddr),
    Shutdown(oneshot::Sender<()>),
}

#[derive(Debug, Default)]
struct PeerState {
    conns: HashMap<ConnectionId, Multiaddr>,
    caps: Option<Capabilities>,
    rtt: Option<Duration>,
    agent: Option<String>,
    /// Our capabilities push failed this many times in a row; asked again
    /// at `caps_retry` while connected (at most [`CAPS_RETRIES`] times).
    caps_failures: u32,
    caps_retry: Option<Instant>,
}

/// How many times in a row a failed capabilities exchange is tried again.
const CAPS_RETRIES: u32 = 5;

/// A peer mDNS announced: dialed until connected, and again whenever its
/// connection drops, while its announcement lives.
#[derive(Debug)]
struct FoundPeer {
    addrs: Vec<Multiaddr>,
    dialing: bool,
    next_dial: Instant,
    backoff: Duration,
}

#[derive(Debug)]
struct StaticPeer {
    addr: Multiaddr,
    peer: Option<PeerId>,
    dialing: Option<ConnectionId>,
    connected: bool,
    next_dial: Instant,
    backoff: Duration,
    /// The address is our own: never dial it again.
    dead: bool,
}

pub(crate) struct EventLoop {
    swarm: Swarm<MeshBehaviour>,
    commands: mpsc::Receiver<Command>,
    command_tx: mpsc::WeakSender<Command>,
    events: mpsc::UnboundedSender<MeshEvent>,
    book: PeerBook,
    data: Arc<DataPlane>,
    local_caps: Capabilities,
    peers: HashMap<PeerId, PeerState>,
    discovered: HashSet<PeerId>,
    statics: Vec<StaticPeer>,
    found: HashMap<PeerId, FoundPeer>,
    pending_caps: HashMap<OutboundRequestId, Option<Reply<Capabilities>>>,
    pending_ctl: HashMap<OutboundRequestId, Reply<Vec<u8>>>,
    redial_initial: Duration,
    redial_max: Duration,
}

fn ip_of(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(ip.into()),
        Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    })
}

impl EventLoop {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        swarm: Swarm<MeshBehaviour>,
        commands: mpsc::Receiver<Command>,
        command_tx: mpsc::WeakSender<Command>,
        events: mpsc::UnboundedSender<MeshEvent>,
        book: PeerBook,
        data: Arc<DataPlane>,
        local_caps: Capabilities,
        static_peers: Vec<Multiaddr>,
        redial_initial: Duration,
        redial_max: Duration,
    ) -> EventLoop {
        let now = Instant::now();
        let statics = static_peers
            .into_iter()
            .map(|addr| StaticPeer {
                addr,
                peer: None,
                dialing: None,
                connected: false,
                next_dial: now,
                backoff: redial_initial,
                dead: false,
            })
            .collect();
        let mut el = EventLoop {
            swarm,
            commands,
            command_tx,
            events,
            book,
            data,
            local_caps: Capabilities::default(),
            peers: HashMap::new(),
            discovered: HashSet::new(),
            statics,
            found: HashMap::new(),
            pending_caps: HashMap::new(),
            pending_ctl: HashMap::new(),
            redial_initial,
            redial_max,
        };
        el.set_local_caps(local_caps);
        el
    }

    /// Drives the swarm until it reports a listen address for each listener (so callers can
    /// read the actual ports), or the timeout passes.
    pub(crate) async fn wait_listening(
        &mut self,
        listeners: usize,
        timeout: Duration,
    ) -> Result<(), MeshError> {
        let deadline = Instant::now() + timeout;
        let mut seen = HashSet::new();
        while seen.len() < listeners {
            let ev = tokio::time::timeout_at(deadline, self.swarm.select_next_some())
                .await
                .map_err(|_| MeshError::Listen("no listen address reported in time".into()))?;
            match ev {
                SwarmEvent::NewListenAddr { listener_id, .. } => {
                    seen.insert(listener_id);
                }
                SwarmEvent::ListenerError { error, .. }
                | SwarmEvent::ListenerClosed {
                    reason: Err(error), ..
                } => return Err(MeshError::Listen(error.to_string())),
                other => self.on_swarm_event(other),
            }
        }
        self.refresh_local_addrs();
        Ok(())
    }

    pub(crate) async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut done = None;
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Shutdown(reply)) => {
                        done = Some(reply);
                        break;
                    }
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                _ = tick.tick() => {
                    self.redial_due();
                    self.redial_found();
                    self.retry_caps();
                }
            }
        }
        // Tell QUIC peers we leave (so their streams fail now, not at the idle timeout), then
        // drop the swarm (closing the libp2p connections) before confirming the shutdown.
        self.data.close_gracefully().await;
        drop(self.swarm);
        tracing::debug!("mesh event loop stopped");
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    fn emit(&self, ev: MeshEvent) {
        let _ = self.events.send(ev);
    }

    fn set_local_caps(&mut self, mut caps: Capabilities) {
        caps.id = self.swarm.local_peer_id().to_string();
        caps.protocol_version = PROTOCOL_VERSION;
        if caps.version.is_empty() {
            caps.version = env!("CARGO_PKG_VERSION").to_string();
        }
        let addrs = caps.addresses.get_or_insert_with(Addresses::default);
        if let Ok(q) = self.data.local_addr() {
            addrs.quic = q.to_string();
        }
        addrs.libp2p = self.swarm.listeners().map(|a| a.to_string()).collect();
        self.local_caps = caps;
    }

    fn refresh_local_addrs(&mut self) {
        let caps = self.local_caps.clone();
        self.set_local_caps(caps);
    }

    fn push_caps(&mut self, peer: PeerId, reply: Option<Reply<Capabilities>>) {
        let id = self
            .swarm
            .behaviour_mut()
            .caps
            .send_request(&peer, self.local_caps.encode_to_vec());
        self.pending_caps.insert(id, reply);
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Peers(reply) => {
                let list = self
                    .peers
                    .iter()
                    .map(|(peer, st)| PeerInfo {
                        peer: *peer,
                        addrs: st.conns.values().cloned().collect(),
                        caps: st.caps.clone(),
                        rtt: st.rtt,
                        agent: st.agent.clone(),
                        quic_addr: self.book.quic_addr(peer),
                    })
                    .collect();
                let _ = reply.send(list);
            }
            Command::LocalInfo(reply) => {
                let _ = reply.send(LocalInfo {
                    peer: *self.swarm.local_peer_id(),
                    listen_addrs: self.swarm.listeners().cloned().collect(),
                    quic_addr: self
                        .data
                        .local_addr()
                        .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
                });
            }
            Command::FetchCaps { peer, reply } => self.push_caps(peer, Some(reply)),
            Command::SendControl {
                peer,
                request,
                reply,
            } => {
                let id = self.swarm.behaviour_mut().ctl.send_request(&peer, request);
                self.pending_ctl.insert(id, reply);
            }
            Command::Respond { channel, response } => {
                if self
                    .swarm
                    .behaviour_mut()
                    .ctl
                    .send_response(channel, response)
                    .is_err()
                {
                    tracing::debug!("control response dropped: the requester is gone");
                }
            }
            Command::SetLocalCaps(caps) => {
                self.set_local_caps(caps);
                let peers: Vec<PeerId> = self.peers.keys().copied().collect();
                for peer in peers {
                    self.push_caps(peer, None);
                }
            }
            Command::AddStaticPeer(addr) => {
                if !self.statics.iter().any(|s| s.addr == addr) {
                    self.statics.push(StaticPeer {
                        addr,
                        peer: None,
                        dialing: None,
                        connected: false,
                        next_dial: Instant::now(),
                        backoff: self.redial_initial,
                        dead: false,
                    });
                    self.redial_due();
                }
            }
            Command::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    fn redial_due(&mut self) {
        let now = Instant::now();
        for i in 0..self.statics.len() {
            let s = &self.statics[i];
            if s.dead || s.connected || s.dialing.is_some() || s.next_dial > now {
                continue;
            }
            if let Some(p) = s.peer {
                if self.swarm.is_connected(&p) {
                    self.statics[i].connected = true;
                    continue;
                }
            }
            let opts = DialOpts::unknown_peer_id().address(s.addr.clone()).build();
            let id = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => self.statics[i].dialing = Some(id),
                Err(e) => {
                    tracing::debug!(addr = %self.statics[i].addr, error = %e, "static peer dial refused");
                    self.backoff_static(i);
                }
            }
        }
    }

    /// Dials each peer mDNS announced that is neither connected nor being
    /// dialed, once its backoff passed.
    fn redial_found(&mut self) {
        let now = Instant::now();
        let due: Vec<PeerId> = self
            .found
            .iter()
            .filter(|(_, f)| !f.dialing && f.next_dial <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            if self.swarm.is_connected(&peer) {
                continue;
            }
            self.dial_found(peer);
        }
    }

    fn dial_found(&mut self, peer: PeerId) {
        let Some(f) = self.found.get_mut(&peer) else {
            return;
        };
        let opts = DialOpts::peer_id(peer)
            .addresses(f.addrs.clone())
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        match self.swarm.dial(opts) {
            Ok(()) => f.dialing = true,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "mDNS peer dial refused");
                f.next_dial = Instant::now() + f.backoff;
                f.backoff = (f.backoff * 2).min(self.redial_max);
            }
        }
    }

    /// Asks again for capabilities whose exchange failed, while the peer is connected.
    fn retry_caps(&mut self) {
        let now = Instant::now();
        let due: Vec<PeerId> = self
            .peers
            .iter_mut()
            .filter(|(_, st)| st.caps_retry.is_some_and(|t| t <= now))
            .map(|(p, st)| {
                st.caps_retry = None;
                *p
            })
            .collect();
        for peer in due {
            tracing::debug!(%peer, "asking again for capabilities");
            self.push_caps(peer, None);
        }
    }

    fn backoff_static(&mut self, i: usize) {
        let s = &mut self.statics[i];
        s.dialing = None;
        s.next_dial = Instant::now() + s.backoff;
        s.backoff = (s.backoff * 2).min(self.redial_max);
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<MeshBehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "mesh listening");
                self.refresh_local_addrs();
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => self.on_connected(peer_id, connection_id, endpoint, num_established.get()),
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => self.on_closed(
                peer_id,
                connection_id,
                num_established,
                cause.map(|c| c.to_string()),
            ),
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                if let Some(i) = self
                    .statics
                    .iter()
                    .position(|s| s.dialing == Some(connection_id))
                {
                    if matches!(error, DialError::LocalPeerId { .. }) {
                        tracing::info!(addr = %self.statics[i].addr, "static peer is this node; not dialing it");
                        self.statics[i].dead = true;
                        self.statics[i].dialing = None;
                    } else {
                        tracing::debug!(addr = %self.statics[i].addr, %error, "static peer unreachable; will redial");
                        self.backoff_static(i);
                    }
                } else if let Some(f) = peer_id.and_then(|p| self.found.get_mut(&p)) {
                    tracing::info!(peer = ?peer_id, %error, backoff = ?f.backoff, "dial of a peer mDNS found failed; will redial");
                    f.dialing = false;
                    f.next_dial = Instant::now() + f.backoff;
                    f.backoff = (f.backoff * 2).min(self.redial_max);
                } else {
                    tracing::debug!(?peer_id, %error, "dial failed");
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                tracing::warn!(remote = %send_back_addr, %error, "refused an incoming connection (wrong join secret?)");
            }
            SwarmEvent::Behaviour(ev) => self.on_behaviour_event(ev),
            _ => {}
        }
    }

    fn on_connected(&mut self, peer: PeerId, conn: ConnectionId, endpoint: ConnectedPoint, n: u32) {
        let remote = endpoint.get_remote_address().clone();
        self.book.admit(peer, ip_of(&remote));
        let mut from_static = false;
        for s in &mut self.statics {
            if s.dialing == Some(conn) || s.peer == Some(peer) {
                from_static |= s.dialing == Some(conn);
                s.peer = Some(peer);
                s.connected = true;
                s.dialing = None;
                s.backoff = self.redial_initial;
            }
        }
        if from_static && self.discovered.insert(peer) {
            self.emit(MeshEvent::PeerDiscovered(peer, remote.clone()));
        }
        if let Some(f) = self.found.get_mut(&peer) {
            f.dialing = false;
            f.backoff = self.redial_initial;
        }
        let state = self.peers.entry(peer).or_default();
        state.conns.insert(conn, remote.clone());
        if n == 1 {
            tracing::info!(%peer, %remote, "peer admitted");
            self.emit(MeshEvent::PeerAdmitted(peer));
            self.push_caps(peer, None);
        }
    }

    fn on_closed(
        &mut self,
        peer: PeerId,
        conn: ConnectionId,
        remaining: u32,
        cause: Option<String>,
    ) {
        if let Some(st) = self.peers.get_mut(&peer) {
            st.conns.remove(&conn);
        }
        if remaining > 0 {
            return;
        }
        tracing::info!(%peer, cause = cause.as_deref().unwrap_or("closed"), "peer lost");
        self.peers.remove(&peer);
        self.book.remove(&peer);
        self.data.disconnect(&peer);
        self.discovered.remove(&peer);
        let now = Instant::now();
        for s in &mut self.statics {
            if s.peer == Some(peer) {
                s.connected = false;
                s.next_dial = now + s.backoff;
            }
        }
        if let Some(f) = self.found.get_mut(&peer) {
            f.dialing = false;
            f.next_dial = now + f.backoff;
        }
        self.emit(MeshEvent::PeerLost(peer));
    }

    /// Records capabilities a peer sent; the id is forced to the authenticated PeerId.
    fn on_caps(&mut self, peer: PeerId, bytes: &[u8]) -> Option<Capabilities> {
        let mut caps = match Capabilities::decode(bytes) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "undecodable capabilities");
                return None;
            }
        };
        if caps.id != peer.to_string() {
            if !caps.id.is_empty() {
                tracing::warn!(%peer, claimed = %caps.id, "capabilities claim another id; using the authenticated one");
            }
            caps.id = peer.to_string();
        }
        if let Some(a) = &caps.addresses {
            self.book.set_quic(&peer, &a.quic);
        }
        // Both sides ask on connect, so the same caps usually arrive twice: emit changes only.
        let changed = match self.peers.get_mut(&peer) {
            Some(st) if st.caps.as_ref() == Some(&caps) => false,
            Some(st) => {
                st.caps = Some(caps.clone());
                true
            }
            None => true,
        };
        if changed {
            self.emit(MeshEvent::Caps(peer, caps.clone()));
        }
        Some(caps)
    }

    fn on_behaviour_event(&mut self, ev: MeshBehaviourEvent) {
        use request_response::{Event as RrEvent, Message as RrMessage};
        match ev {
            MeshBehaviourEvent::Caps(RrEvent::Message { peer, message, .. }) => match message {
                RrMessage::Request {
                    request, channel, ..
                } => {
                    self.on_caps(peer, &request);
                    let ours = self.local_caps.encode_to_vec();
                    let _ = self.swarm.behaviour_mut().caps.send_response(channel, ours);
                }
                RrMessage::Response {
                    request_id,
                    response,
                } => {
                    let caps = self.on_caps(peer, &response);
                    if let Some(st) = self.peers.get_mut(&peer) {
                        st.caps_failures = 0;
                    }
                    if let Some(Some(reply)) = self.pending_caps.remove(&request_id) {
                        let _ = reply.send(caps.ok_or_else(|| MeshError::Request {
                            peer,
                            reason: "undecodable capabilities".into(),
                        }));
                    }
                }
            },
            MeshBehaviourEvent::Caps(RrEvent::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            }) => {
                let connected = self.swarm.is_connected(&peer);
                if let Some(st) = self.peers.get_mut(&peer).filter(|_| connected) {
                    st.caps_failures += 1;
                    if st.caps_failures <= CAPS_RETRIES {
                        tracing::info!(%peer, %error, attempt = st.caps_failures, "capabilities exchange failed; asking again");
                        st.caps_retry = Some(Instant::now() + self.redial_initial);
                    } else {
                        tracing::warn!(%peer, %error, "capabilities exchange failed {CAPS_RETRIES} times; the peer stays out of plans until it reconnects");
                    }
                } else {
                    tracing::debug!(%peer, %error, "capabilities request failed");
                }
                if let Some(Some(reply)) = self.pending_caps.remove(&request_id) {
                    let _ = reply.send(Err(MeshError::Request {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            MeshBehaviourEvent::Ctl(RrEvent::Message { peer, message, .. }) => match message {
                RrMessage::Request {
                    request, channel, ..
                } => {
                    let Some(commands) = self.command_tx.upgrade() else {
                        return;
                    };
                    self.emit(MeshEvent::ControlRequest(
                        peer,
                        request,
                        ControlResponder { channel, commands },
                    ));
                }
                RrMessage::Response {
                    request_id,
                    response,
                } => {
                    if let Some(reply) = self.pending_ctl.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            MeshBehaviourEvent::Ctl(RrEvent::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            }) => {
                if let Some(reply) = self.pending_ctl.remove(&request_id) {
                    let _ = reply.send(Err(MeshError::Request {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            MeshBehaviourEvent::Caps(RrEvent::InboundFailure { peer, error, .. })
            | MeshBehaviourEvent::Ctl(RrEvent::InboundFailure { peer, error, .. }) => {
                tracing::debug!(%peer, %error, "inbound request failed");
            }
            MeshBehaviourEvent::Caps(RrEvent::ResponseSent { .. })
            | MeshBehaviourEvent::Ctl(RrEvent::ResponseSent { .. }) => {}
            MeshBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                for addr in &info.listen_addrs {
                    self.swarm.add_peer_address(peer_id, addr.clone());
                }
                if let Some(st) = self.peers.get_mut(&peer_id) {
                    st.agent = Some(info.agent_version);
                }
            }
            MeshBehaviourEvent::Identify(_) => {}
            MeshBehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result,
            }) => match result {
                Ok(rtt) => {
                    if let Some(st) = self.peers.get_mut(&peer) {
                        st.rtt = Some(rtt);
                    }
                }
                Err(e) => {
                    tracing::info!(%peer, error = %e, "ping failed; closing the connection");
                    self.swarm.close_connection(connection);
                }
            },
            MeshBehaviourEvent::Mdns(mdns::Event::Discovered(list)) => {
                let me = *self.swarm.local_peer_id();
                // One dial per peer with every address it announced: a
                // dial of one address at a time would be refused while the
                // first is in flight, and the first may be a loopback
                // address, which on another machine (or in another network
                // namespace) leads to this node's own listener.
                let mut by_peer: Vec<(PeerId, Vec<Multiaddr>)> = Vec::new();
                for (peer, addr) in list {
                    match by_peer.iter_mut().find(|(p, _)| *p == peer) {
                        Some((_, addrs)) => addrs.push(addr),
                        None => by_peer.push((peer, vec![addr])),
                    }
                }
                for (peer, addrs) in by_peer {
                    if peer == me {
                        continue;
                    }
                    let now = Instant::now();
                    let f = self.found.entry(peer).or_insert_with(|| FoundPeer {
                        addrs: Vec::new(),
                        dialing: false,
                        next_dial: now,
                        backoff: self.redial_initial,
                    });
                    for a in addrs {
                        if !f.addrs.contains(&a) {
                            f.addrs.push(a);
                        }
                    }
                    let (dialing, first) = (f.dialing, f.addrs[0].clone());
                    if self.swarm.is_connected(&peer) {
                        continue;
                    }
                    if self.discovered.insert(peer) {
                        tracing::info!(%peer, addr = %first, "discovered by mDNS");
                        self.emit(MeshEvent::PeerDiscovered(peer, first));
                    }
                    // A fresh announcement is worth a dial now, whatever the backoff.
                    if !dialing {
                        self.dial_found(peer);
                    }
                }
            }
            MeshBehaviourEvent::Mdns(mdns::Event::Expired(list)) => {
                for (peer, addr) in list {
                    if let Some(f) = self.found.get_mut(&peer) {
                        f.addrs.retain(|a| *a != addr);
                        if f.addrs.is_empty() {
                            tracing::debug!(%peer, "mDNS announcement expired");
                            self.found.remove(&peer);
                        }
                    }
                }
            }
        }
    }
}
