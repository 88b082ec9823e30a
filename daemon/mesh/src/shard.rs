//! Shard transfer on the QUIC data plane: a node holding a model file serves its
//! [`ShardManifest`] (the file's pieces, each with a BLAKE3 hash) and byte ranges of it; a node
//! lacking the file fetches the ranges its share needs and checks every piece against the
//! manifest before it trusts a byte.
//!
//! On a stream the requester sends one `SHARD_REQUEST` frame (U8 payload: a `MeshMessage`
//! holding a `ManifestRequest` or a `RangeRequest`). The holder answers with one `SHARD_REPLY`
//! frame (a `ShardManifest` or a `RangeReply`); a `RangeReply` without error is followed by a
//! second `SHARD_REPLY` frame whose payload is the range's bytes. Ranges must lie inside the file
//! and be at most [`MAX_RANGE_LEN`] bytes; anything else is answered with an error, never a
//! panic. What a node serves is a [`ShardSource`]; which pieces a file has and which a share
//! needs is the caller's business (the mesh knows nothing of GGUF).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use dwarfstar_proto::v1::{
    mesh_message::Body, ManifestRequest, MeshMessage, RangeReply, RangeRequest, ShardManifest,
    ShardPiece,
};
use libp2p::PeerId;
use prost::Message;

use crate::codec::Frame;
use crate::handle::MeshHandle;
use crate::stream::{FrameReceiver, FrameStream, StreamError};
use crate::wire::{DType, FrameHeader, FrameKind};
use crate::MeshError;

/// Largest range one request may ask for (larger pieces are split by whoever makes them).
pub const MAX_RANGE_LEN: u64 = 64 << 20;
/// Name of the manifest's first piece: the file's header.
pub const HEADER_PIECE: &str = "@header";

/// What goes wrong moving shards.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("model {model} is not held here")]
    NotHeld { model: String },
    #[error("range {offset}+{len} lies outside the {size}-byte file")]
    OutOfFile { offset: u64, len: u64, size: u64 },
    #[error("a range of {len} bytes exceeds the limit of {max} bytes per request")]
    TooLong { len: u64, max: u64 },
    #[error(
        "{what} ({len} bytes at {offset}) fails its BLAKE3 check: expected {expected}, got {got}"
    )]
    HashMismatch {
        what: String,
        offset: u64,
        len: u64,
        expected: String,
        got: String,
    },
    /// The holder answered with an error.
    #[error("{peer}: {reason}")]
    Remote { peer: PeerId, reason: String },
    /// The holder answered something that is not a valid answer.
    #[error("bad shard reply from {peer}: {reason}")]
    BadReply { peer: PeerId, reason: String },
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Mesh(#[from] MeshError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// What a node serves: manifests and bytes of the full model files it holds.
pub trait ShardSource: Send + Sync {
    /// The manifest of `model` (implementations cache it: hashing reads the whole file).
    fn manifest(&self, model: &str) -> Result<ShardManifest, ShardError>;
    /// The path and size of the full file of `model`, when held here.
    fn file(&self, model: &str) -> Option<(PathBuf, u64)>;
}

/// Lowercase hex BLAKE3 of `data`.
pub fn hash_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// BLAKE3 of a whole file, lowercase hex (a model's content hash).
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path)?)?;
    Ok(h.finalize().to_hex().to_string())
}

/// Checks that `offset..offset+len` lies inside a `size`-byte file and is not too long.
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<(), ShardError> {
    if len > MAX_RANGE_LEN {
        return Err(ShardError::TooLong {
            len,
            max: MAX_RANGE_LEN,
        });
    }
    match offset.checked_add(len) {
        Some(end) if end <= size && len > 0 => Ok(()),
        _ => Err(ShardError::OutOfFile { offset, len, size }),
    }
}

/// Checks `data` against a manifest piece (length and hash).
pub fn verify(piece: &ShardPiece, data: &[u8]) -> Result<(), ShardError> {
    let got = if data.len() as u64 == piece.len {
        hash_hex(data)
    } else {
        format!("{} bytes", data.len())
    };
    if got != piece.hash {
        return Err(ShardError::HashMismatch {
            what: piece.name.clone(),
            offset: piece.offset,
            len: piece.len,
            expected: piece.hash.clone(),
            got,
        });
    }
    Ok(())
}

/// Hashes `(name, offset, len)` pieces of the file at `path` into manifest pieces.
pub fn hash_pieces(
    path: &Path,
    pieces: &[(String, u64, u64)],
) -> Result<Vec<ShardPiece>, ShardError> {
    let f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut out = Vec::with_capacity(pieces.len());
    for (name, offset, len) in pieces {
        if offset.checked_add(*len).is_none_or(|e| e > size) {
            return Err(ShardError::OutOfFile {
                offset: *offset,
                len: *len,
                size,
            });
        }
        let mut h = blake3::Hasher::new();
        let mut done = 0u64;
        while done < *len {
            let n = (len - done).min(buf.len() as u64) as usize;
            read_at(&f, &mut buf[..n], offset + done)?;
            h.update(&buf[..n]);
            done += n as u64;
        }
        out.push(ShardPiece {
            name: name.clone(),
            offset: *offset,
            len: *len,
            hash: h.finalize().to_hex().to_string(),
        });
    }
    Ok(out)
}

#[cfg(unix)]
fn read_at(f: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, offset)
}

#[cfg(not(unix))]
fn read_at(f: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = f;
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

/// Whether a frame is a shard request (to route it to [`serve`]).
pub fn is_request(h: &FrameHeader) -> bool {
    h.kind == FrameKind::ShardRequest as i32
}

fn bytes_frame(kind: FrameKind, payload: Bytes) -> (FrameHeader, Bytes) {
    let h = FrameHeader {
        kind: kind as i32,
        dtype: DType::U8 as i32,
        shape: if payload.is_empty() {
            Vec::new()
        } else {
            vec![payload.len() as u64]
        },
        payload_len: payload.len() as u64,
        ..Default::default()
    };
    (h, payload)
}

fn message_frame(kind: FrameKind, body: Body) -> (FrameHeader, Bytes) {
    let msg = MeshMessage { body: Some(body) };
    bytes_frame(kind, Bytes::from(msg.encode_to_vec()))
}

fn range_error(r: &RangeRequest, e: &ShardError) -> Body {
    Body::RangeReply(RangeReply {
        offset: r.offset,
        len: r.len,
        error: e.to_string(),
        ..Default::default()
    })
}

/// Reads a checked range of a held file.
fn read_range(src: &dyn ShardSource, r: &RangeRequest) -> Result<Bytes, ShardError> {
    let (path, size) = src.file(&r.model).ok_or_else(|| ShardError::NotHeld {
        model: r.model.clone(),
    })?;
    check_range(r.offset, r.len, size)?;
    let f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; r.len as usize];
    read_at(&f, &mut buf, r.offset)?;
    Ok(Bytes::from(buf))
}

/// Answers one shard request, `first` being the stream's first frame (already read). Refusals
/// (unknown model, bad range) are answered as errors; the stream is then finished.
pub async fn serve(mut s: FrameStream, first: Frame, src: Arc<dyn ShardSource>) {
    let peer = s.peer;
    let msg = match MeshMessage::decode(first.payload.as_ref()) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(%peer, "undecodable shard request: {e}");
            let _ = s.send.finish();
            return;
        }
    };
    let frames: Vec<(FrameHeader, Bytes)> = match msg.body {
        Some(Body::ManifestRequest(m)) => {
            let src = src.clone();
            let model = m.model.clone();
            let man = tokio::task::spawn_blocking(move || src.manifest(&model)).await;
            let man = match man {
                Ok(Ok(man)) => man,
                Ok(Err(e)) => ShardManifest {
                    model: m.model,
                    error: e.to_string(),
                    ..Default::default()
                },
                Err(e) => ShardManifest {
                    model: m.model,
                    error: format!("manifest failed: {e}"),
                    ..Default::default()
                },
            };
            vec![message_frame(
                FrameKind::ShardReply,
                Body::ShardManifest(man),
            )]
        }
        Some(Body::RangeRequest(r)) => {
            let src = src.clone();
            let r2 = r.clone();
            match tokio::task::spawn_blocking(move || read_range(src.as_ref(), &r2)).await {
                Ok(Ok(data)) => {
                    let reply = RangeReply {
                        hash: hash_hex(&data),
                        offset: r.offset,
                        len: data.len() as u64,
                        ..Default::default()
                    };
                    vec![
                        message_frame(FrameKind::ShardReply, Body::RangeReply(reply)),
                        bytes_frame(FrameKind::ShardReply, data),
                    ]
                }
                Ok(Err(e)) => {
                    tracing::warn!(%peer, "refused shard range {}+{} of {}: {e}", r.offset, r.len, r.model);
                    vec![message_frame(FrameKind::ShardReply, range_error(&r, &e))]
                }
                Err(e) => {
                    let e = ShardError::Io(std::io::Error::other(e.to_string()));
                    vec![message_frame(FrameKind::ShardReply, range_error(&r, &e))]
                }
            }
        }
        _ => {
            tracing::warn!(%peer, "shard request without a manifest or range request");
            let e = ShardError::Remote {
                peer,
                reason: "not a shard request".into(),
            };
            vec![message_frame(
                FrameKind::ShardReply,
                range_error(&RangeRequest::default(), &e),
            )]
        }
    };
    for (h, p) in frames {
        if let Err(e) = s.send.send_frame(&h, p).await {
            tracing::debug!(%peer, "answering a shard request: {e}");
            return;
        }
    }
    let _ = s.send.finish();
}

/// Sends one request and reads the answer's first frame.
async fn ask(
    mesh: &MeshHandle,
    peer: PeerId,
    body: Body,
) -> Result<(MeshMessage, FrameReceiver), ShardError> {
    let (mut tx, mut rx) = mesh.open_stream(peer).await?;
    let (h, p) = message_frame(FrameKind::ShardRequest, body);
    tx.send_frame(&h, p).await?;
    tx.finish()?;
    let f = next_reply(&mut rx, peer).await?;
    let msg = MeshMessage::decode(f.payload.as_ref()).map_err(|e| ShardError::BadReply {
        peer,
        reason: e.to_string(),
    })?;
    Ok((msg, rx))
}

async fn next_reply(rx: &mut FrameReceiver, peer: PeerId) -> Result<Frame, ShardError> {
    let bad = |reason: &str| ShardError::BadReply {
        peer,
        reason: reason.into(),
    };
    let f = rx
        .recv_frame()
        .await?
        .ok_or_else(|| bad("stream closed without an answer"))?;
    if f.header.kind == FrameKind::Error as i32 {
        return Err(ShardError::Remote {
            peer,
            reason: f.header.error,
        });
    }
    if f.header.kind != FrameKind::ShardReply as i32 {
        return Err(bad(&format!("frame kind {}", f.header.kind)));
    }
    Ok(f)
}

/// Asks `peer` for the manifest of `model`; checks its pieces lie in the file, in order.
pub async fn fetch_manifest(
    mesh: &MeshHandle,
    peer: PeerId,
    model: &str,
) -> Result<ShardManifest, ShardError> {
    let body = Body::ManifestRequest(ManifestRequest {
        model: model.to_string(),
    });
    let (msg, _) = ask(mesh, peer, body).await?;
    let bad = |reason: String| ShardError::BadReply { peer, reason };
    let man = match msg.body {
        Some(Body::ShardManifest(m)) => m,
        _ => return Err(bad("not a manifest".into())),
    };
    if !man.error.is_empty() {
        return Err(ShardError::Remote {
            peer,
            reason: man.error,
        });
    }
    check_manifest(&man).map_err(|e| bad(e.to_string()))?;
    Ok(man)
}

/// A manifest's pieces: the header first, in file order, inside the file, each fetchable in one
/// request.
pub fn check_manifest(man: &ShardManifest) -> Result<(), ShardError> {
    let mut end = 0u64;
    for (i, p) in man.pieces.iter().enumerate() {
        check_range(p.offset, p.len, man.size)?;
        if (i == 0) != (p.name == HEADER_PIECE) || (i == 0 && p.offset != 0) || p.offset < end {
            return Err(ShardError::Io(std::io::Error::other(format!(
                "piece {i} ({}) is out of order",
                p.name
            ))));
        }
        end = p.offset + p.len;
    }
    if man.pieces.is_empty() {
        return Err(ShardError::Io(std::io::Error::other("no pieces")));
    }
    Ok(())
}

/// Fetches `len` bytes at `offset` of `model` from `peer` (unchecked against a manifest: the
/// caller verifies the pieces the range covers).
pub async fn fetch_range(
    mesh: &MeshHandle,
    peer: PeerId,
    model: &str,
    offset: u64,
    len: u64,
) -> Result<Bytes, ShardError> {
    check_range(offset, len, u64::MAX)?;
    let body = Body::RangeRequest(RangeRequest {
        model: model.to_string(),
        offset,
        len,
    });
    let (msg, mut rx) = ask(mesh, peer, body).await?;
    let bad = |reason: String| ShardError::BadReply { peer, reason };
    let reply = match msg.body {
        Some(Body::RangeReply(r)) => r,
        _ => return Err(bad("not a range reply".into())),
    };
    if !reply.error.is_empty() {
        return Err(ShardError::Remote {
            peer,
            reason: reply.error,
        });
    }
    let data = next_reply(&mut rx, peer).await?.payload;
    if reply.offset != offset || reply.len != len || data.len() as u64 != len {
        return Err(bad(format!(
            "asked {len} bytes at {offset}, got {} ({} declared at {})",
            data.len(),
            reply.len,
            reply.offset
        )));
    }
    if hash_hex(&data) != reply.hash {
        return Err(ShardError::HashMismatch {
            what: "range".into(),
            offset,
            len,
            expected: reply.hash,
            got: hash_hex(&data),
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(name: &str, offset: u64, data: &[u8]) -> ShardPiece {
        ShardPiece {
            name: name.into(),
            offset,
            len: data.len() as u64,
            hash: hash_hex(data),
        }
    }

    #[test]
    fn a_corrupted_piece_is_refused() {
        let data = vec![7u8; 1000];
        let p = piece("blk.0.attn_q.weight", 4096, &data);
        verify(&p, &data).unwrap();
        let mut bad = data.clone();
        bad[500] ^= 1;
        let e = verify(&p, &bad).unwrap_err();
        assert!(matches!(e, ShardError::HashMismatch { .. }), "{e}");
        assert!(e.to_string().contains("blk.0.attn_q.weight"), "{e}");
        let e = verify(&p, &data[..999]).unwrap_err();
        assert!(matches!(e, ShardError::HashMismatch { .. }), "{e}");
    }

    #[test]
    fn ranges_outside_the_file_or_too_long_are_refused() {
        check_range(0, 10, 10).unwrap();
        check_range(5, MAX_RANGE_LEN, u64::MAX).unwrap();
        assert!(matches!(
            check_range(5, 6, 10),
            Err(ShardError::OutOfFile { .. })
        ));
        assert!(matches!(
            check_range(u64::MAX, 2, u64::MAX),
            Err(ShardError::OutOfFile { .. })
        ));
        assert!(matches!(
            check_range(0, 0, 10),
            Err(ShardError::OutOfFile { .. })
        ));
        assert!(matches!(
            check_range(0, MAX_RANGE_LEN + 1, u64::MAX),
            Err(ShardError::TooLong { .. })
        ));
    }

    #[test]
    fn pieces_hash_as_their_bytes_and_manifests_are_checked() {
        let dir = std::env::temp_dir().join(format!("dwarfstar-shard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.bin");
        let bytes: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let pieces = hash_pieces(
            &path,
            &[
                (HEADER_PIECE.into(), 0, 100),
                ("a".into(), 128, 2000),
                ("b".into(), 2128, 2872),
            ],
        )
        .unwrap();
        assert_eq!(pieces[1], piece("a", 128, &bytes[128..2128]));
        let mut man = ShardManifest {
            model: "m.bin".into(),
            size: 5000,
            pieces,
            error: String::new(),
        };
        check_manifest(&man).unwrap();
        man.pieces[2].len += 1;
        assert!(check_manifest(&man).is_err());
        man.pieces[2].len -= 1;
        man.pieces.swap(1, 2);
        assert!(check_manifest(&man).is_err());
        assert!(hash_pieces(&path, &[("x".into(), 4999, 2)]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
