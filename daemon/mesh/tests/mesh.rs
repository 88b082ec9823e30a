//! Mesh nodes on 127.0.0.1 with ephemeral ports (no mDNS): admission by the join secret,
//! capabilities and control exchange, QUIC frame round trips, protocol violations, identity
//! persistence, and static-peer redial.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use dwarfstar_mesh::{
    f32s_from_bytes, f32s_to_bytes, Capabilities, DType, FrameHeader, FrameKind, JoinSecret, Mesh,
    MeshConfig, MeshEvent, MeshEvents, MeshHandle, Multiaddr, PeerId,
};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Deadline of control requests that are answered.
const SOON: Duration = Duration::from_secs(10);

const SECRET: &[u8] = b"integration-test join secret 0123456789";

fn state_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dwarfstar-mesh-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(name: &str, secret: &[u8], peers: Vec<Multiaddr>, cores: u32) -> MeshConfig {
    let mut cfg = MeshConfig::loopback(state_dir(name), JoinSecret::new(secret.to_vec()).unwrap());
    cfg.static_peers = peers;
    cfg.request_timeout = Duration::from_secs(5);
    cfg.redial_initial = Duration::from_millis(100);
    cfg.redial_max = Duration::from_millis(400);
    cfg.caps = Capabilities {
        cores,
        mem_budget: 1 << 30,
        ..Default::default()
    };
    cfg
}

/// Length prefix + encoded header, with no validation (to forge bad frames).
fn raw_frame(header: &FrameHeader, payload_len: usize) -> Vec<u8> {
    use prost::Message;
    let body = header.encode_to_vec();
    let mut w = (body.len() as u32).to_le_bytes().to_vec();
    w.extend(body);
    w.extend(vec![0u8; payload_len]);
    w
}

/// What the test sees of a node: its handle and the non-stream events its server task forwards.
struct Node {
    handle: MeshHandle,
    seen: mpsc::UnboundedReceiver<MeshEvent>,
}

/// Serves a node's events: answers control requests with the request reversed, echoes every
/// frame of incoming streams back, and forwards the other events to the test.
fn serve(mut events: MeshEvents) -> mpsc::UnboundedReceiver<MeshEvent> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut hung = Vec::new();
        while let Some(ev) = events.recv().await {
            match ev {
                MeshEvent::ControlRequest(_, req, responder) if req.starts_with(b"hang") => {
                    // Never answered, never dropped (a peer that stopped).
                    hung.push(responder);
                }
                MeshEvent::ControlRequest(_, mut req, responder) => {
                    req.reverse();
                    let _ = responder.respond(req).await;
                }
                MeshEvent::IncomingStream(_, mut stream) => {
                    tokio::spawn(async move {
                        while let Ok(Some(frame)) = stream.recv.recv_frame().await {
                            if dwarfstar_mesh::probe::is_probe(&frame.header) {
                                dwarfstar_mesh::probe::answer(stream, frame).await;
                                return;
                            }
                            if stream
                                .send
                                .send_frame(&frame.header, frame.payload)
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                        let _ = stream.send.finish();
                    });
                }
                other => {
                    let _ = tx.send(other);
                }
            }
        }
    });
    rx
}

async fn start(cfg: MeshConfig) -> Node {
    let (handle, events) = Mesh::start(cfg).await.expect("mesh starts");
    Node {
        handle,
        seen: serve(events),
    }
}

async fn addr_of(node: &Node) -> Multiaddr {
    let info = node.handle.local_info().await.unwrap();
    info.listen_addrs[0].clone()
}

/// Waits for an event matching `pred`, skipping others.
async fn wait_for<T>(
    node: &mut Node,
    secs: u64,
    mut pred: impl FnMut(&MeshEvent) -> Option<T>,
) -> Option<T> {
    timeout(Duration::from_secs(secs), async {
        while let Some(ev) = node.seen.recv().await {
            if let Some(t) = pred(&ev) {
                return Some(t);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

async fn caps_from(node: &mut Node, peer: PeerId) -> Capabilities {
    wait_for(node, 10, |ev| match ev {
        MeshEvent::Caps(p, c) if *p == peer => Some(c.clone()),
        _ => None,
    })
    .await
    .expect("capabilities arrive")
}

fn activation(values: &[f32], rows: u64) -> (FrameHeader, Bytes) {
    let header = FrameHeader {
        request_id: 42,
        plan_version: 1,
        kind: FrameKind::Activation as i32,
        layer: 3,
        positions: (0..rows as u32).collect(),
        dtype: DType::F32 as i32,
        shape: vec![rows, values.len() as u64 / rows],
        payload_len: values.len() as u64 * 4,
        ..Default::default()
    };
    (header, f32s_to_bytes(values))
}

/// Sends one frame to `peer` on a new stream and checks the echo is identical.
async fn round_trip(from: &MeshHandle, peer: PeerId, values: &[f32], rows: u64) {
    let (header, payload) = activation(values, rows);
    let (mut send, mut recv) = from.open_stream(peer).await.expect("stream opens");
    send.send_frame(&header, payload).await.unwrap();
    send.finish().unwrap();
    let frame = timeout(Duration::from_secs(10), recv.recv_frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(frame.header, header);
    assert_eq!(f32s_from_bytes(&frame.payload).unwrap(), values);
    assert!(
        recv.recv_frame().await.unwrap().is_none(),
        "stream ends cleanly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_secret_nodes_admit_exchange_caps_control_and_frames() {
    let mut a = start(config("a1", SECRET, vec![], 3)).await;
    let mut b = start(config("b1", SECRET, vec![addr_of(&a).await], 5)).await;
    let (pa, pb) = (a.handle.local_peer_id(), b.handle.local_peer_id());

    let caps_of_a = caps_from(&mut b, pa).await;
    assert_eq!(caps_of_a.cores, 3);
    assert_eq!(caps_of_a.id, pa.to_string());
    let quic = caps_of_a.addresses.as_ref().unwrap().quic.clone();
    assert_eq!(quic, a.handle.quic_addr().unwrap().to_string());
    assert_eq!(caps_from(&mut a, pb).await.cores, 5);

    // peers() and a fresh capabilities() request.
    let peers = b.handle.peers().await.unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].peer, pa);
    assert_eq!(peers[0].caps.as_ref().unwrap().cores, 3);
    assert_eq!(a.handle.capabilities(pb).await.unwrap().mem_budget, 1 << 30);

    // Updated caps are pushed to connected peers.
    a.handle
        .set_local_caps(Capabilities {
            cores: 9,
            ..Default::default()
        })
        .await
        .unwrap();
    let updated = wait_for(&mut b, 10, |ev| match ev {
        MeshEvent::Caps(p, c) if *p == pa && c.cores == 9 => Some(c.clone()),
        _ => None,
    })
    .await;
    assert!(updated.is_some(), "pushed capabilities arrive");

    // Control protocol both ways.
    assert_eq!(
        b.handle
            .send_control(pa, b"plan".to_vec(), SOON)
            .await
            .unwrap(),
        b"nalp"
    );
    assert_eq!(
        a.handle
            .send_control(pb, vec![1, 2, 3], SOON)
            .await
            .unwrap(),
        vec![3, 2, 1]
    );
    // A request the peer never answers fails at its deadline, long before
    // the request timeout (5 s here).
    let t = std::time::Instant::now();
    let hung = b
        .handle
        .send_control(pa, b"hang".to_vec(), Duration::from_millis(300));
    let err = hung.await.unwrap_err().to_string();
    assert!(err.contains("no answer within 300ms"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // Frames both ways over one reused connection; a 4 MiB tensor arrives intact.
    let values: Vec<f32> = (0..64).map(|i| i as f32 * 0.25 - 8.0).collect();
    round_trip(&b.handle, pa, &values, 4).await;
    round_trip(&a.handle, pb, &values, 2).await;
    let big: Vec<f32> = (0..(1 << 20)).map(|i| (i as f32).sin()).collect();
    round_trip(&b.handle, pa, &big, 1024).await;

    // A link probe: loopback moves well over 100 Mbit/s; an oversized
    // probe is refused before anything is sent.
    let bw = dwarfstar_mesh::probe::measure(&b.handle, pa, 1 << 20, 2)
        .await
        .unwrap();
    assert!(bw.is_some_and(|bps| bps > 1e8), "{bw:?}");
    let err = dwarfstar_mesh::probe::exchange(&b.handle, pa, dwarfstar_mesh::probe::MAX_PROBE + 1)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("exceeds"), "{err}");

    // The sender refuses a header that disagrees with its payload.
    let (mut send, _recv) = b.handle.open_stream(pa).await.unwrap();
    let (header, _) = activation(&values, 4);
    let err = send
        .send_frame(&header, Bytes::from_static(&[0u8; 8]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, dwarfstar_mesh::StreamError::Frame(_)),
        "{err}"
    );

    a.handle.shutdown().await;
    let lost = wait_for(&mut b, 10, |ev| {
        matches!(ev, MeshEvent::PeerLost(p) if *p == pa).then_some(())
    })
    .await;
    assert!(lost.is_some(), "b sees a leave");
    b.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_not_admitted() {
    let mut a = start(config("a2", SECRET, vec![], 1)).await;
    let mut c = start(config(
        "c2",
        b"not the mesh secret at all",
        vec![addr_of(&a).await],
        1,
    ))
    .await;
    let pa = a.handle.local_peer_id();
    // Give c time for several dial attempts.
    let admitted = wait_for(&mut c, 3, |ev| match ev {
        MeshEvent::PeerAdmitted(_) | MeshEvent::Caps(..) => Some(()),
        _ => None,
    })
    .await;
    assert!(admitted.is_none(), "c must not be admitted");
    assert!(a.handle.peers().await.unwrap().is_empty());
    assert!(c.handle.peers().await.unwrap().is_empty());
    assert!(a.seen.try_recv().is_err(), "a saw nothing of c");
    assert!(c
        .handle
        .send_control(pa, b"x".to_vec(), SOON)
        .await
        .is_err());
    assert!(c.handle.capabilities(pa).await.is_err());
    assert!(
        c.handle.open_stream(pa).await.is_err(),
        "no QUIC stream without admission"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_disconnect_only_the_offender() {
    let a = start(config("a3", SECRET, vec![], 1)).await;
    let a_addr = addr_of(&a).await;
    let mut bad = start(config("bad3", SECRET, vec![a_addr.clone()], 1)).await;
    let mut good = start(config("good3", SECRET, vec![a_addr], 1)).await;
    let pa = a.handle.local_peer_id();
    caps_from(&mut bad, pa).await;
    caps_from(&mut good, pa).await;
    let values: Vec<f32> = (0..32).map(|i| i as f32).collect();
    round_trip(&good.handle, pa, &values, 2).await;

    let mut mismatch = activation(&values, 2).0;
    mismatch.payload_len = 100; // the shape says 128 bytes
    let mut unspecified = activation(&values, 2).0;
    unspecified.kind = FrameKind::Unspecified as i32;
    let garbage: Vec<Vec<u8>> = vec![
        70_000u32.to_le_bytes().to_vec(),         // header over 64 KiB
        raw_frame(&mismatch, 100),                // payload_len != shape x dtype
        vec![4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff], // header that is not protobuf
        raw_frame(&unspecified, 128),             // unspecified frame kind
    ];
    for bytes in garbage {
        let (mut send, mut recv) = bad
            .handle
            .open_stream(pa)
            .await
            .expect("bad node can still connect");
        send.raw().write_all(&bytes).await.unwrap();
        // a closes the connection: the bad node's read fails instead of getting a frame.
        let r = timeout(Duration::from_secs(10), recv.recv_frame())
            .await
            .expect("disconnected in time");
        let err = r.expect_err("connection closed by a");
        assert_eq!(
            err.peer_close_code(),
            Some(u64::from(dwarfstar_mesh::quic::CLOSE_PROTOCOL_VIOLATION)),
            "{err}"
        );
        // The good node keeps exchanging frames with a.
        round_trip(&good.handle, pa, &values, 2).await;
    }
    // The libp2p side of the offender is untouched: control still works.
    assert_eq!(
        bad.handle
            .send_control(pa, b"ok".to_vec(), SOON)
            .await
            .unwrap(),
        b"ko"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_persists_across_restarts() {
    let cfg = config("id4", SECRET, vec![], 1);
    let dir = cfg.state_dir.clone();
    let (h1, _e1) = Mesh::start(cfg.clone()).await.unwrap();
    let first = h1.local_peer_id();
    h1.shutdown().await;
    let (h2, _e2) = Mesh::start(cfg).await.unwrap();
    assert_eq!(h2.local_peer_id(), first);
    h2.shutdown().await;
    let other = config("id4-other", SECRET, vec![], 1);
    let (h3, _e3) = Mesh::start(other).await.unwrap();
    assert_ne!(h3.local_peer_id(), first);
    h3.shutdown().await;
    assert!(dir.join("identity.key").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_peer_is_redialed_after_it_restarts() {
    let cfg_a = config("a5", SECRET, vec![], 1);
    let a = start(cfg_a.clone()).await;
    let a_addr = addr_of(&a).await;
    let pa = a.handle.local_peer_id();
    let mut b = start(config("b5", SECRET, vec![a_addr.clone()], 1)).await;
    caps_from(&mut b, pa).await;
    a.handle.shutdown().await;
    drop(a);
    let lost = wait_for(&mut b, 10, |ev| {
        matches!(ev, MeshEvent::PeerLost(p) if *p == pa).then_some(())
    })
    .await;
    assert!(lost.is_some());
    // Restart a on the same port with the same identity; b redials it.
    let mut cfg_a2 = cfg_a;
    cfg_a2.listen = vec![a_addr];
    let _a2 = start(cfg_a2).await;
    let caps = caps_from(&mut b, pa).await;
    assert_eq!(caps.id, pa.to_string());
    let values = [1.0f32, 2.0, 3.0, 4.0];
    round_trip(&b.handle, pa, &values, 1).await;
}
