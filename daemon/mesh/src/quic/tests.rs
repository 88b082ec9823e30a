//! Data-plane admission without libp2p: the TLS verifier refuses peers that are not in the
//! book, the secret binding refuses peers with another secret, and pinning refuses a server
//! that is not the PeerId dialed.

use super::*;
use crate::codec::f32s_to_bytes;
use crate::wire::{DType, FrameHeader, FrameKind};

struct Node {
    id: Identity,
    book: PeerBook,
    dp: Arc<DataPlane>,
    events: mpsc::UnboundedReceiver<MeshEvent>,
}

fn node(secret: &[u8]) -> Node {
    let (tx, events) = mpsc::unbounded_channel();
    let id = Identity::generate();
    let book = PeerBook::default();
    let dp = DataPlane::bind(
        "127.0.0.1:0".parse().unwrap(),
        &id,
        &JoinSecret::new(secret.to_vec()).unwrap(),
        book.clone(),
        FrameLimits::default(),
        tx,
    )
    .unwrap();
    Node {
        id,
        book,
        dp,
        events,
    }
}

/// Makes `a` know `b` as admitted, at b's QUIC address.
fn introduce(a: &Node, b: &Node) {
    a.book.admit(b.id.peer_id(), None);
    a.book
        .set_quic(&b.id.peer_id(), &b.dp.local_addr().unwrap().to_string());
}

const SECRET: &[u8] = b"the mesh secret for these tests";

#[tokio::test]
async fn admitted_peers_with_the_secret_exchange_frames() {
    let a = node(SECRET);
    let mut b = node(SECRET);
    introduce(&a, &b);
    introduce(&b, &a);
    let (mut send, _recv) = a.dp.open_stream(b.id.peer_id()).await.unwrap();
    let values: Vec<f32> = (0..6).map(|i| i as f32).collect();
    let header = FrameHeader {
        kind: FrameKind::Activation as i32,
        dtype: DType::F32 as i32,
        shape: vec![2, 3],
        payload_len: 24,
        ..Default::default()
    };
    send.send_frame(&header, f32s_to_bytes(&values))
        .await
        .unwrap();
    let Some(MeshEvent::IncomingStream(peer, mut stream)) = b.events.recv().await else {
        panic!("expected an incoming stream")
    };
    assert_eq!(peer, a.id.peer_id());
    let frame = stream.recv.recv_frame().await.unwrap().unwrap();
    assert_eq!(frame.header, header);
    assert_eq!(
        crate::codec::f32s_from_bytes(&frame.payload).unwrap(),
        values
    );
    // A second stream reuses the connection.
    let _second = a.dp.open_stream(b.id.peer_id()).await.unwrap();
    assert_eq!(a.dp.conns.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn server_refuses_a_peer_it_has_not_admitted() {
    let mut a = node(SECRET);
    let c = node(SECRET);
    introduce(&c, &a); // c thinks a is admitted; a never admitted c
    let err = c.dp.open_stream(a.id.peer_id()).await.unwrap_err();
    assert!(
        matches!(
            err,
            DataPlaneError::Connection(_) | DataPlaneError::Connect { .. }
        ),
        "{err}"
    );
    match tokio::time::timeout(Duration::from_secs(10), a.events.recv()).await {
        Ok(Some(MeshEvent::DataPlaneRefused { .. })) => {}
        other => panic!("expected a refusal on a's side, got {other:?}"),
    }
    // The dialer may try again: each try is refused too, none is a stream.
    while let Ok(ev) = a.events.try_recv() {
        assert!(
            matches!(ev, MeshEvent::DataPlaneRefused { .. }),
            "only refusals reach a: {ev:?}"
        );
    }
}

#[tokio::test]
async fn wrong_secret_fails_the_channel_binding() {
    let mut a = node(SECRET);
    let c = node(b"some other secret entirely");
    introduce(&a, &c);
    introduce(&c, &a);
    let err = c.dp.open_stream(a.id.peer_id()).await.unwrap_err();
    assert!(
        matches!(
            err,
            DataPlaneError::Binding { .. } | DataPlaneError::Connection(_)
        ),
        "{err}"
    );
    // a's side ends in a refusal event, never in a stream or an adopted connection.
    match tokio::time::timeout(Duration::from_secs(10), a.events.recv()).await {
        Ok(Some(MeshEvent::DataPlaneRefused { peer, .. })) => {
            assert_eq!(peer, Some(c.id.peer_id()))
        }
        other => panic!("expected a refusal on a's side, got {other:?}"),
    }
    while let Ok(ev) = a.events.try_recv() {
        assert!(
            matches!(ev, MeshEvent::DataPlaneRefused { .. }),
            "only refusals reach a: {ev:?}"
        );
    }
    assert!(a.dp.conns.lock().unwrap().is_empty());
}

#[tokio::test]
async fn dialing_pins_the_expected_peer() {
    let a = node(SECRET);
    let b = node(SECRET);
    let c = node(SECRET);
    introduce(&b, &a);
    introduce(&a, &b);
    // c's book says b lives at a's address: the certificate there is a's, not b's.
    c.book.admit(b.id.peer_id(), None);
    c.book
        .set_quic(&b.id.peer_id(), &a.dp.local_addr().unwrap().to_string());
    a.book.admit(c.id.peer_id(), None);
    let err = c.dp.open_stream(b.id.peer_id()).await.unwrap_err();
    assert!(
        matches!(
            err,
            DataPlaneError::Connection(_) | DataPlaneError::Connect { .. }
        ),
        "{err}"
    );
}
