//! The links the planner is given: from this node to each peer, the
//! latency of its last libp2p ping and the bandwidth of a data-plane probe
//! ([`dwarfstar_mesh::probe`]), measured just before planning.

use std::collections::HashMap;
use std::time::Duration;

use dwarfstar_mesh::{MeshHandle, PeerInfo};
use dwarfstar_planner::{Link, DEFAULT_LINK};

/// Bytes of a bandwidth probe, and how many times it is sent.
const PROBE_BYTES: u64 = 1 << 20;
const PROBE_ROUNDS: usize = 2;

/// The links from `me` to its peers as the planner takes them: the one-way
/// latency is half the last libp2p ping's round trip, the bandwidth a
/// probe's (`bandwidth`, by peer id), else the planner's default. Peers
/// measured neither way, and links between two other nodes, keep the
/// planner's default link.
fn measured_links(me: &str, peers: &[PeerInfo], bandwidth: &HashMap<String, f64>) -> Vec<Link> {
    peers
        .iter()
        .filter(|p| p.caps.is_some())
        .filter_map(|p| {
            let id = p.peer.to_string();
            let bw = bandwidth.get(&id).copied();
            if p.rtt.is_none() && bw.is_none() {
                return None;
            }
            Some(Link {
                a: me.to_string(),
                b: id,
                bandwidth_bps: bw.unwrap_or(DEFAULT_LINK.0),
                latency_s: p.rtt.map_or(DEFAULT_LINK.1, |r| r.as_secs_f64() / 2.0),
            })
        })
        .collect()
}

/// The links from `me` to `peers` for the planner: each peer's bandwidth
/// probed over the data plane (all at once, a few seconds at most), its
/// latency from the last ping.
pub async fn measure(mesh: &MeshHandle, me: &str, peers: &[PeerInfo]) -> Vec<Link> {
    let probes: Vec<_> = peers
        .iter()
        .filter(|p| p.caps.is_some())
        .map(|p| {
            let (mesh, id) = (mesh.clone(), p.peer);
            tokio::spawn(async move {
                let probe = dwarfstar_mesh::probe::measure(&mesh, id, PROBE_BYTES, PROBE_ROUNDS);
                match tokio::time::timeout(Duration::from_secs(3), probe).await {
                    Ok(Ok(Some(bps))) => Some((id.to_string(), bps)),
                    Ok(Ok(None)) => None,
                    Ok(Err(e)) => {
                        tracing::debug!("probing the link to {id}: {e}");
                        None
                    }
                    Err(_) => {
                        tracing::debug!("probing the link to {id}: timed out");
                        None
                    }
                }
            })
        })
        .collect();
    let mut bandwidth = HashMap::new();
    for p in probes {
        if let Ok(Some((id, bps))) = p.await {
            tracing::info!("link to {id}: {:.2} Gbit/s", bps / 1e9);
            bandwidth.insert(id, bps);
        }
    }
    measured_links(me, peers, &bandwidth)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dwarfstar_mesh::PeerId;

    fn peer(rtt_ms: Option<u64>, caps: bool) -> dwarfstar_mesh::PeerInfo {
        dwarfstar_mesh::PeerInfo {
            peer: PeerId::random(),
            addrs: Vec::new(),
            caps: caps.then(Default::default),
            rtt: rtt_ms.map(Duration::from_millis),
            agent: None,
            quic_addr: None,
        }
    }

    #[test]
    fn links_carry_half_the_measured_round_trip() {
        let peers = [
            peer(Some(4), true),
            peer(None, true),
            peer(Some(2), false),
            peer(None, true),
        ];
        let probed = HashMap::from([(peers[3].peer.to_string(), 5e8)]);
        let links = measured_links("me", &peers, &probed);
        assert_eq!(links.len(), 2, "{links:?}");
        assert_eq!(links[0].a, "me");
        assert_eq!(links[0].b, peers[0].peer.to_string());
        assert!((links[0].latency_s - 0.002).abs() < 1e-12);
        assert_eq!(links[0].bandwidth_bps, DEFAULT_LINK.0);
        // Probed but not pinged yet: the default latency, the probed rate.
        assert_eq!(links[1].b, peers[3].peer.to_string());
        assert_eq!(links[1].bandwidth_bps, 5e8);
        assert_eq!(links[1].latency_s, DEFAULT_LINK.1);
    }
}
