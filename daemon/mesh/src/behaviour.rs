//! The libp2p behaviour of a mesh node: identify, ping (liveness and RTT), optional mDNS, and
//! the two request-response protocols (capabilities, control). Transport: TCP, then the private
//! network (pnet, PSK from the join secret), then noise and yamux.

use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::core::Transport as _;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{identify, mdns, noise, ping, tcp, yamux, PeerId};

use crate::identity::Identity;
use crate::protocol::{
    BytesCodec, CAPS_PROTOCOL, CTL_PROTOCOL, IDENTIFY_PROTOCOL, MAX_CAPS, MAX_CONTROL,
};
use crate::secret::JoinSecret;

#[derive(NetworkBehaviour)]
pub(crate) struct MeshBehaviour {
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(crate) caps: request_response::Behaviour<BytesCodec>,
    pub(crate) ctl: request_response::Behaviour<BytesCodec>,
}

/// How often a node asks the LAN who is there (each node answers with a few
/// hundred bytes).
const MDNS_QUERY_INTERVAL: Duration = Duration::from_secs(15);

impl MeshBehaviour {
    pub(crate) fn new(
        identity: &Identity,
        mdns_on: bool,
        request_timeout: Duration,
    ) -> std::io::Result<MeshBehaviour> {
        let key = identity.keypair();
        let mdns = if mdns_on {
            // Ask the LAN again every 15 s, not every 5 min: a node stops its
            // fast start-up queries at the first answer, so one whose answer
            // was lost (or who came up between queries) would wait minutes.
            let config = mdns::Config {
                query_interval: MDNS_QUERY_INTERVAL,
                ..mdns::Config::default()
            };
            Some(mdns::tokio::Behaviour::new(config, identity.peer_id())?)
        } else {
            None
        };
        let rr = |protocol, max| {
            request_response::Behaviour::with_codec(
                BytesCodec::new(max),
                [(protocol, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(request_timeout),
            )
        };
        Ok(MeshBehaviour {
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
                    .with_agent_version(format!("dwarfstar/{}", env!("CARGO_PKG_VERSION"))),
            ),
            ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(5))),
            mdns: mdns.into(),
            caps: rr(CAPS_PROTOCOL, MAX_CAPS),
            ctl: rr(CTL_PROTOCOL, MAX_CONTROL),
        })
    }
}

/// TCP + pnet + noise + yamux. Without the secret the pnet layer turns every byte into noise, so
/// the noise handshake fails: no connection, nothing readable.
pub(crate) fn transport(
    identity: &Identity,
    secret: &JoinSecret,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error> {
    let psk = PreSharedKey::new(secret.pnet_key());
    Ok(
        tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
            .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
            .upgrade(Version::V1Lazy)
            .authenticate(noise::Config::new(identity.keypair())?)
            .multiplex(yamux::Config::default())
            .timeout(Duration::from_secs(20))
            .boxed(),
    )
}
