//! Shard transfer between two mesh nodes on loopback: a holder serves a file's manifest and
//! ranges; the fetcher checks them. Hostile requests (outside the file, oversized, unknown or
//! hidden models, garbage) are refused with an error answer and the holder keeps serving; a
//! piece whose bytes do not match the manifest is refused by the fetcher.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dwarfstar_mesh::shard::{self, ShardError, ShardSource, HEADER_PIECE, MAX_RANGE_LEN};
use dwarfstar_mesh::{
    Capabilities, DType, FrameHeader, FrameKind, JoinSecret, Mesh, MeshConfig, MeshEvent,
    MeshEvents, MeshHandle, PeerId,
};
use dwarfstar_proto::v1::{mesh_message::Body, MeshMessage, RangeRequest, ShardManifest};
use prost::Message;
use tokio::time::timeout;

const SECRET: &[u8] = b"shard-test join secret 0123456789abcdef";

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dwarfstar-shard-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One file served as model "m.gguf", with a manifest computed at start.
struct OneFile {
    path: PathBuf,
    manifest: ShardManifest,
}

impl ShardSource for OneFile {
    fn manifest(&self, model: &str) -> Result<ShardManifest, ShardError> {
        if model != "m.gguf" {
            return Err(ShardError::NotHeld {
                model: model.into(),
            });
        }
        Ok(self.manifest.clone())
    }

    fn file(&self, model: &str) -> Option<(PathBuf, u64)> {
        (model == "m.gguf").then(|| (self.path.clone(), self.manifest.size))
    }
}

fn serve(mut events: MeshEvents, src: Arc<OneFile>) {
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if let MeshEvent::IncomingStream(_, mut s) = ev {
                let src = src.clone();
                tokio::spawn(async move {
                    if let Ok(Some(f)) = s.recv.recv_frame().await {
                        assert!(shard::is_request(&f.header));
                        shard::serve(s, f, src).await;
                    }
                });
            }
        }
    });
}

async fn node(name: &str, peers: Vec<dwarfstar_mesh::Multiaddr>) -> (MeshHandle, MeshEvents) {
    let mut cfg = MeshConfig::loopback(dir(name), JoinSecret::new(SECRET.to_vec()).unwrap());
    cfg.static_peers = peers;
    cfg.caps = Capabilities {
        cores: 1,
        ..Default::default()
    };
    Mesh::start(cfg).await.expect("mesh starts")
}

/// Waits until `from` knows `peer`'s QUIC address (capabilities exchanged).
async fn met(from: &MeshHandle, peer: PeerId) {
    for _ in 0..100 {
        let peers = from.peers().await.unwrap();
        if peers.iter().any(|p| p.peer == peer && p.caps.is_some()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("peers never met");
}

/// Sends a raw shard request body and returns the first answer message.
async fn raw(mesh: &MeshHandle, peer: PeerId, payload: Vec<u8>) -> MeshMessage {
    let (mut tx, mut rx) = mesh.open_stream(peer).await.unwrap();
    let h = FrameHeader {
        kind: FrameKind::ShardRequest as i32,
        dtype: DType::U8 as i32,
        shape: vec![payload.len() as u64],
        payload_len: payload.len() as u64,
        ..Default::default()
    };
    tx.send_frame(&h, Bytes::from(payload)).await.unwrap();
    tx.finish().unwrap();
    let f = timeout(Duration::from_secs(10), rx.recv_frame())
        .await
        .expect("answered")
        .unwrap();
    match f {
        Some(f) => MeshMessage::decode(f.payload.as_ref()).unwrap(),
        None => MeshMessage::default(),
    }
}

fn range(model: &str, offset: u64, len: u64) -> Vec<u8> {
    MeshMessage {
        body: Some(Body::RangeRequest(RangeRequest {
            model: model.into(),
            offset,
            len,
        })),
    }
    .encode_to_vec()
}

fn refused(m: &MeshMessage) -> String {
    match &m.body {
        Some(Body::RangeReply(r)) if !r.error.is_empty() && r.data.is_empty() => r.error.clone(),
        other => panic!("not a refusal: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_are_served_checked_and_hostile_requests_refused() {
    let d = dir("file");
    let path = d.join("m.gguf");
    let bytes: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &bytes).unwrap();
    let pieces = vec![
        (HEADER_PIECE.to_string(), 0, 1000),
        ("a".to_string(), 1024, 100_000),
        ("b".to_string(), 101_024, 198_976),
    ];
    let manifest = ShardManifest {
        model: "m.gguf".into(),
        size: bytes.len() as u64,
        pieces: shard::hash_pieces(&path, &pieces).unwrap(),
        error: String::new(),
    };
    let src = Arc::new(OneFile {
        path: path.clone(),
        manifest: manifest.clone(),
    });
    let (holder, events) = node("holder", vec![]).await;
    serve(events, src);
    let addr = holder.local_info().await.unwrap().listen_addrs[0].clone();
    let (fetcher, _events) = node("fetcher", vec![addr]).await;
    let hp = holder.local_peer_id();
    met(&fetcher, hp).await;

    // The manifest and a verified range.
    let got = shard::fetch_manifest(&fetcher, hp, "m.gguf").await.unwrap();
    assert_eq!(got, manifest);
    let p = &got.pieces[1];
    let data = shard::fetch_range(&fetcher, hp, "m.gguf", p.offset, p.len)
        .await
        .unwrap();
    shard::verify(p, &data).unwrap();
    assert_eq!(&data[..], &bytes[1024..101_024]);

    // A holder without the model says so.
    let e = shard::fetch_manifest(&fetcher, hp, "other.gguf")
        .await
        .unwrap_err();
    assert!(
        matches!(e, ShardError::Remote { .. }) && e.to_string().contains("not held"),
        "{e}"
    );

    // Hostile ranges: past the end, overflowing, oversized, empty, unknown/hidden models,
    // and bytes that are no request at all.
    let size = bytes.len() as u64;
    for (req, why) in [
        (range("m.gguf", size - 10, 11), "outside"),
        (range("m.gguf", u64::MAX - 1, 5), "outside"),
        (range("m.gguf", 0, MAX_RANGE_LEN + 1), "exceeds"),
        (range("m.gguf", 0, 0), "outside"),
        (range("../m.gguf", 0, 10), "not held"),
        (range("", 0, 10), "not held"),
    ] {
        let m = raw(&fetcher, hp, req).await;
        let e = refused(&m);
        assert!(e.contains(why), "{e}");
    }
    let m = raw(&fetcher, hp, vec![0xff, 0xff, 0xff]).await;
    assert_eq!(m, MeshMessage::default(), "garbage gets the stream closed");

    // The holder still serves.
    let whole = shard::fetch_range(&fetcher, hp, "m.gguf", 0, 1000)
        .await
        .unwrap();
    shard::verify(&got.pieces[0], &whole).unwrap();

    // A holder whose bytes changed under its manifest: the fetcher refuses the piece.
    let mut changed = bytes.clone();
    changed[150_000] ^= 0x55;
    std::fs::write(&path, &changed).unwrap();
    let p = &got.pieces[2];
    let data = shard::fetch_range(&fetcher, hp, "m.gguf", p.offset, p.len)
        .await
        .unwrap();
    let e = shard::verify(p, &data).unwrap_err();
    assert!(matches!(e, ShardError::HashMismatch { .. }), "{e}");

    // The fetcher refuses to ask for an oversized range itself.
    let e = shard::fetch_range(&fetcher, hp, "m.gguf", 0, MAX_RANGE_LEN + 1)
        .await
        .unwrap_err();
    assert!(matches!(e, ShardError::TooLong { .. }), "{e}");
    fetcher.shutdown().await;
    holder.shutdown().await;
    let _ = std::fs::remove_dir_all(&d);
}
