//! The QUIC data plane: one quinn endpoint per node (UDP), one connection per pair of neighbours
//! (reused, whichever side opened it), one bidirectional stream per request. A connection is used
//! only after (1) TLS with pinned identity certificates (see [`tls`]) and (2) a channel binding:
//! each side sends a blake3 MAC, keyed from the join secret, of the TLS exporter secret, so a
//! node that knows PeerIds but not the secret gets nowhere.

pub(crate) mod tls;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::mpsc;

use crate::codec::FrameLimits;
use crate::events::MeshEvent;
use crate::identity::Identity;
use crate::secret::JoinSecret;
use crate::stream::{FrameReceiver, FrameSender, FrameStream};
use tls::{NodeCert, TlsSetupError};

/// Application close code: the peer failed the secret channel binding.
pub const CLOSE_ADMISSION: u32 = 0x10;
/// Application close code: the peer violated the frame protocol.
pub const CLOSE_PROTOCOL_VIOLATION: u32 = 0x11;
/// Application close code: the peer left the mesh (libp2p connection lost) or we shut down.
pub const CLOSE_LEFT: u32 = 0x12;

const BINDING_LABEL: &[u8] = b"EXPERIMENTAL-dwarfstar-join-binding-v1";
const BINDING_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("no QUIC address known for peer {0} (no capabilities received yet)")]
    NoAddress(PeerId),
    #[error("peer {0} is not admitted")]
    NotAdmitted(PeerId),
    #[error("QUIC connect to {peer}: {reason}")]
    Connect { peer: PeerId, reason: String },
    #[error("QUIC connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("secret channel binding with {peer} failed: {reason}")]
    Binding { peer: PeerId, reason: String },
    #[error("TLS setup: {0}")]
    Tls(#[from] TlsSetupError),
    #[error("QUIC endpoint: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Clone, Debug, Default)]
struct PeerEntry {
    /// IP the libp2p connection came from (to complete a `0.0.0.0:port` QUIC address).
    remote_ip: Option<IpAddr>,
    /// The peer's QUIC address, from its capabilities.
    quic: Option<SocketAddr>,
}

/// Peers admitted through libp2p (they passed pnet + noise), shared by the swarm task (writer)
/// and the data plane (reader, including the TLS verifiers).
#[derive(Clone, Debug, Default)]
pub(crate) struct PeerBook(Arc<RwLock<HashMap<PeerId, PeerEntry>>>);

impl PeerBook {
    pub(crate) fn admit(&self, peer: PeerId, remote_ip: Option<IpAddr>) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(peer).or_default();
        if remote_ip.is_some() {
            entry.remote_ip = remote_ip;
        }
    }

    pub(crate) fn remove(&self, peer: &PeerId) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(peer);
    }

    pub(crate) fn is_admitted(&self, peer: &PeerId) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(peer)
    }

    /// Records the QUIC address a peer advertised; an unspecified IP is replaced by the IP its
    /// libp2p connection came from.
    pub(crate) fn set_quic(&self, peer: &PeerId, advertised: &str) {
        let Ok(mut addr) = advertised.parse::<SocketAddr>() else {
            if !advertised.is_empty() {
                tracing::warn!(%peer, advertised, "peer advertised an unparsable QUIC address");
            }
            return;
        };
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get_mut(peer) {
            if addr.ip().is_unspecified() {
                if let Some(ip) = entry.remote_ip {
                    addr.set_ip(ip);
                }
            }
            entry.quic = Some(addr);
        }
    }

    pub(crate) fn quic_addr(&self, peer: &PeerId) -> Option<SocketAddr> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .and_then(|e| e.quic)
    }
}

/// The node's QUIC endpoint and its connections.
pub(crate) struct DataPlane {
    endpoint: quinn::Endpoint,
    cert: NodeCert,
    book: PeerBook,
    quic_key: [u8; 32],
    limits: FrameLimits,
    events: mpsc::UnboundedSender<MeshEvent>,
    conns: Mutex<HashMap<PeerId, quinn::Connection>>,
    /// Serialises dials per peer, so concurrent `open_stream` calls share one connection.
    dial_locks: Mutex<HashMap<PeerId, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane")
            .field("local_addr", &self.endpoint.local_addr())
            .finish()
    }
}

impl DataPlane {
    /// Binds the endpoint and starts accepting connections.
    pub(crate) fn bind(
        addr: SocketAddr,
        identity: &Identity,
        secret: &JoinSecret,
        book: PeerBook,
        limits: FrameLimits,
        events: mpsc::UnboundedSender<MeshEvent>,
    ) -> Result<Arc<DataPlane>, DataPlaneError> {
        let cert = NodeCert::new(identity)?;
        let server = tls::server_config(&cert, book.clone())?;
        let endpoint = quinn::Endpoint::server(server, addr)?;
        let dp = Arc::new(DataPlane {
            endpoint,
            cert,
            book,
            quic_key: secret.quic_key(),
            limits,
            events,
            conns: Mutex::new(HashMap::new()),
            dial_locks: Mutex::new(HashMap::new()),
        });
        tokio::spawn(accept_loop(Arc::downgrade(&dp), dp.endpoint.clone()));
        Ok(dp)
    }

    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Opens a bidirectional frame stream to `peer`, connecting first if needed.
    pub(crate) async fn open_stream(
        self: &Arc<Self>,
        peer: PeerId,
    ) -> Result<(FrameSender, FrameReceiver), DataPlaneError> {
        let conn = self.connection(peer).await?;
        let (send, recv) = conn.open_bi().await?;
        Ok((
            FrameSender::new(send, self.limits),
            FrameReceiver::new(recv, conn, peer, self.limits),
        ))
    }

    fn live_connection(&self, peer: &PeerId) -> Option<quinn::Connection> {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns
            .get(peer)
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    /// The live connection to `peer`, dialing it when there is none.
    async fn connection(
        self: &Arc<Self>,
        peer: PeerId,
    ) -> Result<quinn::Connection, DataPlaneError> {
        if let Some(c) = self.live_connection(&peer) {
            return Ok(c);
        }
        let lock = {
            let mut locks = self.dial_locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(peer).or_default().clone()
        };
        let _guard = lock.lock().await;
        if let Some(c) = self.live_connection(&peer) {
            return Ok(c);
        }
        // The remote may not have recorded our libp2p admission yet when we race it right
        // after connecting: retry a refused handshake a few times.
        let mut last = None;
        for attempt in 0..4u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(150 * u64::from(attempt))).await;
            }
            match self.dial(peer).await {
                Ok(c) => return Ok(c),
                Err(e @ (DataPlaneError::Connect { .. } | DataPlaneError::Connection(_))) => {
                    tracing::debug!(%peer, attempt, error = %e, "QUIC dial failed");
                    last = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(DataPlaneError::NotAdmitted(peer)))
    }

    async fn dial(self: &Arc<Self>, peer: PeerId) -> Result<quinn::Connection, DataPlaneError> {
        if !self.book.is_admitted(&peer) {
            return Err(DataPlaneError::NotAdmitted(peer));
        }
        let addr = self
            .book
            .quic_addr(&peer)
            .ok_or(DataPlaneError::NoAddress(peer))?;
        let cfg = tls::client_config(&self.cert, self.book.clone(), peer)?;
        let connecting = self
            .endpoint
            .connect_with(cfg, addr, tls::SERVER_NAME)
            .map_err(|e| DataPlaneError::Connect {
                peer,
                reason: e.to_string(),
            })?;
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(DataPlaneError::Connect {
                    peer,
                    reason: "handshake timed out".into(),
                })
            }
        };
        bind_channel(&conn, &self.quic_key, true, peer).await?;
        self.adopt(peer, conn.clone());
        Ok(conn)
    }

    /// Keeps `conn` as the connection to `peer` (unless a live one is already kept) and serves
    /// the streams the peer opens on it.
    fn adopt(self: &Arc<Self>, peer: PeerId, conn: quinn::Connection) {
        {
            let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
            let keep = conns.get(&peer).is_none_or(|c| c.close_reason().is_some());
            if keep {
                conns.insert(peer, conn.clone());
            }
        }
        tokio::spawn(serve_connection(Arc::downgrade(self), peer, conn));
    }

    /// Closes the connection to a peer that left the mesh.
    pub(crate) fn disconnect(&self, peer: &PeerId) {
        let conn = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(peer);
        if let Some(c) = conn {
            c.close(CLOSE_LEFT.into(), b"peer left the mesh");
        }
        self.dial_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(peer);
    }

    pub(crate) fn close(&self) {
        self.endpoint
            .close(CLOSE_LEFT.into(), b"node shutting down");
    }

    /// Closes every connection and waits (up to a second) until the peers were told.
    pub(crate) async fn close_gracefully(&self) {
        self.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// Accepts incoming connections until the endpoint closes.
async fn accept_loop(dp: std::sync::Weak<DataPlane>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let dp = dp.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let refused = |peer: Option<PeerId>, reason: String| {
                if let Some(plane) = dp.upgrade() {
                    let _ = plane.events.send(MeshEvent::DataPlaneRefused {
                        remote,
                        peer,
                        reason,
                    });
                }
            };
            let conn = match tokio::time::timeout(CONNECT_TIMEOUT, incoming).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::warn!(%remote, error = %e, "QUIC handshake refused");
                    return refused(None, format!("handshake: {e}"));
                }
                Err(_) => {
                    tracing::warn!(%remote, "QUIC handshake timed out");
                    return refused(None, "handshake timed out".into());
                }
            };
            let Some(peer) = peer_of(&conn) else {
                conn.close(CLOSE_ADMISSION.into(), b"no identity");
                return refused(None, "no identity".into());
            };
            let Some(plane) = dp.upgrade() else { return };
            if let Err(e) = bind_channel(&conn, &plane.quic_key, false, peer).await {
                tracing::warn!(%remote, %peer, error = %e, "QUIC peer refused");
                return refused(Some(peer), e.to_string());
            }
            plane.adopt(peer, conn);
        });
    }
}

/// Emits an `IncomingStream` event for each stream the peer opens on `conn`.
async fn serve_connection(dp: std::sync::Weak<DataPlane>, peer: PeerId, conn: quinn::Connection) {
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%peer, reason = %e, "QUIC connection ended");
                break;
            }
        };
        let Some(plane) = dp.upgrade() else { break };
        let stream = FrameStream {
            peer,
            send: FrameSender::new(send, plane.limits),
            recv: FrameReceiver::new(recv, conn.clone(), peer, plane.limits),
        };
        if plane
            .events
            .send(MeshEvent::IncomingStream(peer, stream))
            .is_err()
        {
            break;
        }
    }
    if let Some(plane) = dp.upgrade() {
        let mut conns = plane.conns.lock().unwrap_or_else(|e| e.into_inner());
        if conns
            .get(&peer)
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            conns.remove(&peer);
        }
    }
}

/// PeerId of the certificate the peer presented (already checked by the verifier).
fn peer_of(conn: &quinn::Connection) -> Option<PeerId> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    tls::peer_id_of_cert(certs.first()?).ok()
}

/// Proves to the peer, and checks that the peer proves, knowledge of the join secret, bound to
/// this TLS session (the exporter secret differs per connection, so tags cannot be replayed).
async fn bind_channel(
    conn: &quinn::Connection,
    key: &[u8; 32],
    we_dialed: bool,
    peer: PeerId,
) -> Result<(), DataPlaneError> {
    let fail = |reason: String| {
        conn.close(CLOSE_ADMISSION.into(), b"secret binding failed");
        DataPlaneError::Binding { peer, reason }
    };
    let mut ekm = [0u8; 32];
    conn.export_keying_material(&mut ekm, BINDING_LABEL, b"")
        .map_err(|_| fail("keying material export failed".into()))?;
    let tag = |role: u8| {
        let mut h = blake3::Hasher::new_keyed(key);
        h.update(&ekm);
        h.update(&[role]);
        h.finalize()
    };
    let (mine, theirs) = if we_dialed {
        (b'C', b'S')
    } else {
        (b'S', b'C')
    };
    let send = async {
        let mut s = conn.open_uni().await.map_err(|e| e.to_string())?;
        s.write_all(tag(mine).as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        s.finish().map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    };
    let recv = async {
        let mut r = conn.accept_uni().await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 32];
        r.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(blake3::Hash::from_bytes(buf))
    };
    let (sent, got) = tokio::time::timeout(BINDING_TIMEOUT, async { tokio::join!(send, recv) })
        .await
        .map_err(|_| fail("timed out".into()))?;
    // A connection the peer closed (e.g. its TLS verifier refused us after the client-side
    // handshake completed) is reported as such, so callers may retry.
    let lost = |reason: String| match conn.close_reason() {
        Some(e) => DataPlaneError::Connection(e),
        None => fail(reason),
    };
    sent.map_err(lost)?;
    // blake3::Hash equality is constant-time.
    if got.map_err(lost)? != tag(theirs) {
        return Err(fail("wrong secret".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
