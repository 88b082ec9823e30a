//! The pipeline and expert traffic over the mesh's QUIC data plane.
//!
//! - [`QuicHop`]: a [`Hop`] to the next stage's node, one stream per step;
//! - [`MeshExperts`]: an [`ExpertDispatch`] sending expert batches to their
//!   holders, one stream per batch, answered while local experts run;
//! - [`serve_frame`]: the receiving side, which answers one request frame
//!   per stream with what this node's [`Roles`] compute, or an ERROR frame.
//!
//! Model work runs on blocking threads (`spawn_blocking`); the async side
//! only moves frames. Every call to a peer is [`guarded`]: it fails as soon
//! as the peer is declared lost (heartbeats unanswered), or after
//! [`CALL_LIMIT`] whatever happens. A peer whose frame is malformed gets an ERROR answer
//! or, for codec violations, a closed connection (the mesh crate's call),
//! and this node keeps serving everyone else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use bytes::Bytes;
use dwarfstar_mesh::{Frame, FrameReceiver, FrameStream, MeshHandle, PeerId};
use dwarfstar_model::{ExpertBatch, ExpertDispatch, ExpertTicket, Model, ModelError};
use dwarfstar_proto::v1::{DType, FrameHeader, FrameKind};
use tokio::runtime::Handle;

use super::error::{NodeError, Result};
use super::frames;
use super::members::{guarded, LostPeers};
use super::pipeline::{Hop, StageWorker, Step};
use super::traffic;

/// The longest a data-plane call may take even from a peer that answers
/// its heartbeats (a step is one prefill chunk or one decode).
pub const CALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);

fn next_request_id() -> u64 {
    REQUEST_IDS.fetch_add(1, Ordering::Relaxed)
}

/// Sends one request frame on a fresh stream to `peer`; the answer comes on
/// the returned receiver.
async fn send_request(
    mesh: &MeshHandle,
    peer: PeerId,
    h: FrameHeader,
    payload: Bytes,
) -> Result<Sent> {
    let t = |e: &dyn std::fmt::Display| NodeError::Transport(format!("{peer}: {e}"));
    let (mut tx, rx) = mesh.open_stream(peer).await.map_err(|e| t(&e))?;
    let at = Instant::now();
    traffic::sent(&peer.to_string(), &h, payload.len());
    tx.send_frame(&h, payload).await.map_err(|e| t(&e))?;
    tx.finish().map_err(|e| t(&e))?;
    Ok(Sent { rx, at })
}

/// A request on its way: the stream its answer comes on, and when it left.
struct Sent {
    rx: FrameReceiver,
    at: Instant,
}

/// Reads the answer to a request [`send_request`] sent.
async fn read_answer(sent: Sent, peer: PeerId) -> Result<(FrameHeader, Bytes)> {
    let t = |e: &dyn std::fmt::Display| NodeError::Transport(format!("{peer}: {e}"));
    let Sent { mut rx, at } = sent;
    match rx.recv_frame().await.map_err(|e| t(&e))? {
        Some(f) => {
            traffic::answered(&peer.to_string(), &f.header, f.payload.len(), at.elapsed());
            Ok((f.header, f.payload))
        }
        None => Err(t(&"stream closed without an answer")),
    }
}

/// Sends one request frame on a fresh stream to `peer` and reads the answer.
async fn exchange(
    mesh: &MeshHandle,
    peer: PeerId,
    h: FrameHeader,
    payload: Bytes,
) -> Result<(FrameHeader, Bytes)> {
    let rx = send_request(mesh, peer, h, payload).await?;
    read_answer(rx, peer).await
}

/// The next pipeline stage, on another node.
pub struct QuicHop {
    pub mesh: MeshHandle,
    pub peer: PeerId,
    pub lost: LostPeers,
    pub rt: Handle,
    pub width: usize,
    pub dtype: DType,
}

impl Hop for QuicHop {
    fn call(&self, step: Step) -> Result<Vec<f32>> {
        let id = next_request_id();
        let (h, p) = frames::step_frame(&step, id, self.width, self.dtype);
        let call = exchange(&self.mesh, self.peer, h, p);
        let (ah, ap) = self
            .rt
            .block_on(guarded(&self.lost, self.peer, CALL_LIMIT, call))?;
        frames::answer_rows(&ah, &ap, FrameKind::Logits, &self.peer.to_string())
    }

    fn release(&self, seqs: &[u64]) {
        let (h, p) = frames::release_frame(0, seqs);
        let (mesh, peer, lost) = (self.mesh.clone(), self.peer, self.lost.clone());
        self.rt.spawn(async move {
            let call = exchange(&mesh, peer, h, p);
            if let Err(e) = guarded(&lost, peer, CALL_LIMIT, call).await {
                tracing::debug!("release on {peer}: {e}");
            }
        });
    }
}

/// Routed experts other nodes hold, by (layer, expert).
pub struct MeshExperts {
    pub mesh: MeshHandle,
    pub rt: Handle,
    pub nodes: Vec<PeerId>,
    /// (layer, expert) → index into `nodes`; absent = held here.
    pub owners: HashMap<(usize, usize), u32>,
    pub plan_version: u64,
    pub dtype: DType,
    pub lost: LostPeers,
}

/// An expert batch on its way: the request is sent, the answer not read.
/// The model thread drives both halves itself (`block_on`), so a round
/// trip costs no hand-over to a runtime worker and back.
struct Pending {
    rt: Handle,
    peer: PeerId,
    rx: Sent,
    lost: LostPeers,
}

impl ExpertTicket for Pending {
    fn wait(self: Box<Self>) -> dwarfstar_model::Result<Vec<f32>> {
        let Pending { rt, peer, rx, lost } = *self;
        rt.block_on(async move {
            let call = read_answer(rx, peer);
            let (ah, ap) = guarded(&lost, peer, CALL_LIMIT, call).await?;
            frames::answer_rows(&ah, &ap, FrameKind::ExpertResult, &peer.to_string())
        })
        .map_err(|e| ModelError::Invalid(format!("remote experts: {e}")))
    }
}

impl ExpertDispatch for MeshExperts {
    fn owner(&self, il: usize, e: usize) -> Option<u32> {
        self.owners.get(&(il, e)).copied()
    }

    fn submit(
        &self,
        node: u32,
        il: usize,
        batch: ExpertBatch,
    ) -> dwarfstar_model::Result<Box<dyn ExpertTicket>> {
        let peer = *self
            .nodes
            .get(node as usize)
            .ok_or_else(|| ModelError::Invalid(format!("no node {node} in the plan")))?;
        let (h, p) = frames::expert_request_frame(
            next_request_id(),
            self.plan_version,
            il as u32,
            &batch,
            self.dtype,
        );
        let call = send_request(&self.mesh, peer, h, p);
        let rx = self
            .rt
            .block_on(guarded(&self.lost, peer, CALL_LIMIT, call))
            .map_err(|e| ModelError::Invalid(format!("remote experts: {e}")))?;
        Ok(Box::new(Pending {
            rt: self.rt.clone(),
            peer,
            rx,
            lost: self.lost.clone(),
        }))
    }
}

/// What this node does for others under the current plan.
#[derive(Default)]
pub struct Roles {
    pub plan_version: u64,
    pub stage: Option<Arc<StageWorker>>,
    /// The model whose routed experts this node runs for others.
    pub experts: Option<Arc<Model>>,
}

/// Answers the request `frame`, the first frame of an incoming stream
/// (read by [`super::shards::route`], which sends shard requests elsewhere).
pub async fn serve_frame(mut s: FrameStream, frame: Frame, roles: Arc<RwLock<Arc<Roles>>>) {
    let peer = s.peer;
    traffic::served_in(&frame.header, frame.payload.len());
    let roles = roles.read().unwrap_or_else(|e| e.into_inner()).clone();
    let (h, p) = frame_answer(frame.header, frame.payload, roles).await;
    traffic::served_out(&h, p.len());
    if let Err(e) = s.send.send_frame(&h, p).await {
        tracing::debug!("answering {peer}: {e}");
        return;
    }
    let _ = s.send.finish();
}

async fn frame_answer(h: FrameHeader, payload: Bytes, roles: Arc<Roles>) -> (FrameHeader, Bytes) {
    let (id, version) = (h.request_id, h.plan_version);
    // On a multi-threaded runtime the work starts at once on this thread
    // (the runtime moves its other tasks elsewhere): a hand-over to a
    // blocking thread and back costs tens of microseconds per round trip,
    // as much as a small expert batch's compute.
    let multi = Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread;
    let r = if multi {
        let run = std::panic::AssertUnwindSafe(|| answer(&h, &payload, &roles));
        tokio::task::block_in_place(|| std::panic::catch_unwind(run))
            .map_err(|_| "the model panicked".to_string())
    } else {
        tokio::task::spawn_blocking(move || answer(&h, &payload, &roles))
            .await
            .map_err(|e| e.to_string())
    };
    match r {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            tracing::warn!("request {id}: {e}");
            frames::error_frame(id, version, &e.to_string())
        }
        Err(e) => frames::error_frame(id, version, &format!("worker failed: {e}")),
    }
}

fn answer(h: &FrameHeader, payload: &[u8], roles: &Roles) -> Result<(FrameHeader, Bytes)> {
    let kind = FrameKind::try_from(h.kind)
        .map_err(|_| NodeError::BadRequest(format!("frame kind {}", h.kind)))?;
    match kind {
        FrameKind::Activation => {
            let stage = roles
                .stage
                .as_ref()
                .ok_or_else(|| NodeError::NotReady("this node runs no stage".into()))?;
            let (width, n_layer) = {
                let host = stage.host.lock().unwrap_or_else(|e| e.into_inner());
                let m = host.model();
                (m.n_embd(), m.n_layer() as u32)
            };
            let step = frames::frame_step(h, payload, width)?;
            let (version, rows) = (step.plan_version, step.output_rows().len());
            let answer = stage.handle(step)?;
            // Logits, or final hidden rows for a coordinator holding the head.
            let per_row = answer.len().checked_div(rows).unwrap_or(1);
            Ok(frames::logits_frame(
                h.request_id,
                version,
                n_layer,
                &answer,
                per_row,
            ))
        }
        FrameKind::ExpertRequest => {
            if h.plan_version != roles.plan_version {
                return Err(NodeError::WrongPlan {
                    got: h.plan_version,
                    have: roles.plan_version,
                });
            }
            let m = roles
                .experts
                .as_ref()
                .ok_or_else(|| NodeError::NotReady("this node holds no experts".into()))?;
            let b = frames::frame_expert_batch(h, payload, m.expert_width())?;
            let y = m.run_experts(h.layer as usize, &b)?;
            let rows = y.len() / b.d;
            let mut ah = FrameHeader {
                request_id: h.request_id,
                plan_version: h.plan_version,
                kind: FrameKind::ExpertResult as i32,
                layer: h.layer,
                ..Default::default()
            };
            let payload = frames::encode_rows(&y, DType::F32);
            ah.dtype = DType::F32 as i32;
            ah.shape = vec![rows as u64, b.d as u64];
            ah.payload_len = payload.len() as u64;
            Ok((ah, payload))
        }
        FrameKind::Release => {
            if let Some(stage) = &roles.stage {
                let seqs: Vec<u64> = h.spans.iter().map(|s| s.seq).collect();
                stage.release(&seqs);
            }
            let ah = FrameHeader {
                request_id: h.request_id,
                kind: FrameKind::Release as i32,
                ..Default::default()
            };
            Ok((ah, Bytes::new()))
        }
        other => Err(NodeError::BadRequest(format!("{other:?} is not a request"))),
    }
}
