//! The node runtime: one event loop over the mesh's events, the plan
//! handshake, and what a plan makes of this node.
//!
//! The node where a model is loaded coordinates it ([`NodeRuntime::coordinate`]):
//! it waits for its peers, plans with their capabilities, proposes the plan
//! to every node in it (a `PlanProposal` on the control protocol, answered
//! by `NodeReady` once the node has loaded its share), and then serves
//! through a [`DistBackend`]. Every node answers data-plane streams with the
//! [`Roles`] its plan gave it.
//!
//! The decisions (enough nodes, every member ready, a stale answer, a
//! member lost, which of two racing proposals a node takes) are the
//! membership core's ([`super::members`]); this module does the I/O they
//! call for: planning, loading, the control messages.
//!
//! A load asked of another node makes that node the coordinator: it first
//! asks the coordinator in force to give up its model (a `Release`, answered
//! by a `PlanAck` once that node's engine drained and stopped), then plans.
//! A proposal from another coordinator also stops this node's engine.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use dwarfstar_membership::Event;

use dwarfstar_mesh::{ControlResponder, MeshEvent, MeshEvents, MeshHandle, ModelInfo, PeerId};
use dwarfstar_model::Model;
use dwarfstar_planner::{ActDType, NodeCaps, Plan};
use dwarfstar_proto::v1 as pb;
use dwarfstar_proto::Message;
use tokio::runtime::Handle;

use super::backend::DistBackend;
use super::error::{NodeError, Result};
use super::members::Members;
use super::pipeline::{Hop, StageHost, StageLimits, StageWorker};
use super::plan_wire;
use super::roster::{held_bytes, MemberState, Roster};
use super::shards::{self, ShardHost};
use super::transport::{MeshExperts, QuicHop, Roles};
use crate::serve::engine::Engines;

/// What a node needs to take a share of a plan.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    /// Where model files are found by name.
    pub models_dir: PathBuf,
    pub limits: StageLimits,
    /// This node's capabilities, as the planner sees them.
    pub caps: NodeCaps,
    /// When a silent member is declared lost, and how long a load may take.
    pub liveness: dwarfstar_membership::Config,
    /// The model file whose MTP block drafts when this node coordinates it
    /// (the plan then keeps the output head here), and the block's own
    /// file to attach first (ds4's layout), if it has one.
    pub mtp: Option<(PathBuf, Option<PathBuf>)>,
}

/// How the coordinator plans.
#[derive(Clone, Debug, Default)]
pub struct CoordOptions {
    /// Nodes (this one included) to wait for before planning.
    pub min_nodes: usize,
    pub wait: Duration,
    pub force_stages: Option<u32>,
    pub expert_parallel: bool,
}

/// Where this node stands, for status displays.
#[derive(Clone, Debug, Default)]
pub struct NodeStatus {
    /// `idle`, `loading`, `ready` or `failed`.
    pub state: String,
    pub model: Option<String>,
    pub plan: Option<Plan>,
    pub error: Option<String>,
}

pub struct NodeRuntime {
    pub mesh: MeshHandle,
    /// This node's id (its PeerId as text).
    pub me: String,
    rt: Handle,
    roles: Arc<RwLock<Arc<Roles>>>,
    settings: NodeSettings,
    status: Mutex<NodeStatus>,
    /// The model files this node serves to peers that lack them.
    pub(super) shards: Arc<ShardHost>,
    /// The plan's members as this node knows them (status answers).
    pub roster: Roster,
    /// The model this node serves, when it coordinates one.
    engines: Arc<Engines>,
    /// One change of the announced capabilities at a time.
    caps_lock: tokio::sync::Mutex<()>,
    /// True once the models this node holds are hashed and announced: a
    /// plan's model is checked against those hashes.
    inventory: tokio::sync::watch::Sender<bool>,
    /// The model of the plan in force, for its weight store's figures.
    held: Mutex<Weak<Model>>,
    /// Membership, the plan handshake and liveness, decided without I/O.
    pub(super) members: Members,
    /// One share loaded at a time (a later proposal waits, and the
    /// membership core says whether the earlier share is still wanted).
    loading: tokio::sync::Mutex<()>,
}

/// What applying a plan gave this node.
pub struct Applied {
    pub model: Arc<Model>,
    /// Set on the coordinator: the scheduler's backend.
    pub backend: Option<DistBackend>,
    /// What this node does for others under the plan, once installed.
    roles: Arc<Roles>,
}

fn peer(id: &str) -> Result<PeerId> {
    id.parse()
        .map_err(|_| NodeError::BadRequest(format!("'{id}' is not a peer id")))
}

impl NodeRuntime {
    pub fn new(
        mesh: MeshHandle,
        rt: Handle,
        mut settings: NodeSettings,
        engines: Arc<Engines>,
    ) -> Arc<NodeRuntime> {
        let me = mesh.local_peer_id().to_string();
        settings.caps.id = me.clone();
        Arc::new(NodeRuntime {
            members: Members::new(&me, settings.liveness.clone()),
            loading: tokio::sync::Mutex::new(()),
            mesh,
            me,
            rt,
            roles: Arc::default(),
            shards: ShardHost::new(settings.models_dir.clone()),
            settings,
            status: Mutex::new(NodeStatus {
                state: "idle".into(),
                ..Default::default()
            }),
            roster: Roster::default(),
            engines,
            caps_lock: tokio::sync::Mutex::new(()),
            inventory: tokio::sync::watch::Sender::new(false),
            held: Mutex::new(Weak::new()),
        })
    }

    /// What the weight store of the model in force holds and read (None
    /// before a plan).
    pub fn store_stats(&self) -> Option<dwarfstar_model::store::StoreStats> {
        let m = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .upgrade()?;
        Some(m.store_stats())
    }

    /// Announces `models` as the files this node holds.
    pub async fn set_inventory(&self, models: Vec<ModelInfo>) {
        self.update_caps(|c| c.models = models).await;
        self.inventory.send_replace(true);
    }

    /// Waits until this node's models are hashed and announced.
    pub(super) async fn inventory_ready(&self) {
        let _ = self.inventory.subscribe().wait_for(|&v| v).await;
    }

    /// Changes this node's announced capabilities and pushes them to every
    /// peer, one change at a time (so a later change is never overtaken).
    pub async fn update_caps(&self, f: impl FnOnce(&mut dwarfstar_mesh::Capabilities)) {
        let _one = self.caps_lock.lock().await;
        let mut caps = self.roster.local_caps().unwrap_or_default();
        f(&mut caps);
        self.roster.set_local_caps(caps.clone());
        if let Err(e) = self.mesh.set_local_caps(caps).await {
            tracing::warn!("announcing this node's capabilities: {e}");
        }
    }

    /// The content hash this node announces for the model file `name` of
    /// `size` bytes; empty when it has not hashed it.
    pub fn announced_hash(&self, name: &str, size: u64) -> String {
        self.roster
            .local_caps()
            .and_then(|c| {
                c.models
                    .into_iter()
                    .find(|m| m.name == name && m.size == size)
                    .map(|m| m.blake3)
            })
            .unwrap_or_default()
    }

    /// What this node was started with (its capabilities, limits, models folder).
    pub fn settings(&self) -> &NodeSettings {
        &self.settings
    }

    pub fn status(&self) -> NodeStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn set_status(&self, f: impl FnOnce(&mut NodeStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Runs the event loop (data-plane streams, control requests, peers
    /// for the membership core) and the membership core's shell.
    pub fn run_events(self: &Arc<Self>, mut events: MeshEvents) {
        self.rt.spawn(self.clone().drive_members());
        let me = self.clone();
        self.rt.spawn(async move {
            while let Some(ev) = events.recv().await {
                match ev {
                    MeshEvent::IncomingStream(_, s) => {
                        tokio::spawn(shards::route(s, me.roles.clone(), me.shards.clone()));
                    }
                    MeshEvent::ControlRequest(p, req, resp) => {
                        tokio::spawn(me.clone().on_control(p, req, resp));
                    }
                    MeshEvent::PeerAdmitted(p) => tracing::info!("peer {p} admitted"),
                    MeshEvent::Caps(p, _) => me.members.feed(Event::PeerUp(p.to_string())),
                    MeshEvent::PeerLost(p) => {
                        tracing::info!("peer {p} disconnected");
                        me.members.feed(Event::PeerDown {
                            node: p.to_string(),
                            reason: "disconnected".into(),
                        });
                    }
                    MeshEvent::DataPlaneRefused {
                        remote,
                        peer,
                        reason,
                    } => tracing::warn!(%remote, ?peer, %reason, "data-plane connection refused"),
                    _ => {}
                }
            }
        });
    }

    async fn on_control(self: Arc<Self>, from: PeerId, req: Vec<u8>, resp: ControlResponder) {
        let reply = match pb::MeshMessage::decode(req.as_slice()) {
            Ok(pb::MeshMessage {
                body: Some(pb::mesh_message::Body::PlanProposal(p)),
            }) => pb::mesh_message::Body::NodeReady(self.clone().on_proposal(from, p).await),
            Ok(pb::MeshMessage {
                body: Some(pb::mesh_message::Body::NodeReady(r)),
            }) => pb::mesh_message::Body::PlanAck(self.on_plan_ready(from, r)),
            Ok(pb::MeshMessage {
                body: Some(pb::mesh_message::Body::Release(r)),
            }) => pb::mesh_message::Body::PlanAck(self.on_release(from, r).await),
            Ok(pb::MeshMessage {
                body: Some(pb::mesh_message::Body::Heartbeat(h)),
            }) => {
                // Answered here, on the event loop's side: a node busy
                // computing still answers.
                let held = self.members.core().held();
                let (plan_version, coordinator) = held.unwrap_or_default();
                pb::mesh_message::Body::HeartbeatAck(pb::HeartbeatAck {
                    seq: h.seq,
                    node: self.me.clone(),
                    plan_version,
                    coordinator,
                })
            }
            Ok(_) => {
                tracing::warn!("peer {from} sent a control message this node does not take");
                pb::mesh_message::Body::NodeReady(pb::NodeReady {
                    node: self.me.clone(),
                    error: "unexpected control message".into(),
                    ..Default::default()
                })
            }
            Err(e) => {
                tracing::warn!("peer {from} sent an undecodable control message: {e}");
                return;
            }
        };
        let msg = pb::MeshMessage { body: Some(reply) };
        if let Err(e) = resp.respond(msg.encode_to_vec()).await {
            tracing::debug!("answering {from}: {e}");
        }
    }

    /// The coordinator's own `NodeReady` for the plan in force: it applies
    /// a plan only once every member answered ready, so all of them are.
    fn on_plan_ready(&self, from: PeerId, r: pb::NodeReady) -> pb::PlanAck {
        let ours = self
            .members
            .core()
            .on_announce(&from.to_string(), r.plan_version);
        let accepted = ours && r.error.is_empty() && self.roster.all_ready(r.plan_version);
        if accepted {
            self.roster.set(
                &from.to_string(),
                MemberState::Ready,
                String::new(),
                Some((r.bytes_loaded, r.load_ms)),
            );
        }
        pb::PlanAck {
            plan_version: r.plan_version,
            node: self.me.clone(),
            accepted,
            reason: if accepted {
                String::new()
            } else {
                "not the plan this node serves".into()
            },
        }
    }

    /// Another node is to coordinate: stop serving the model this one
    /// coordinates (its running requests finish first).
    async fn on_release(&self, from: PeerId, r: pb::Release) -> pb::PlanAck {
        let ack = |accepted: bool, reason: String| pb::PlanAck {
            plan_version: r.plan_version,
            node: self.me.clone(),
            accepted,
            reason,
        };
        if r.new_coordinator != from.to_string() {
            return ack(
                false,
                "a release names its sender as the new coordinator".into(),
            );
        }
        match self.give_up(&from.to_string(), &r.model).await {
            Ok(()) => {
                self.members.core().released(Instant::now());
                self.members.poke();
                ack(true, String::new())
            }
            Err(e) => ack(false, e.to_string()),
        }
    }

    /// Stops this node's engine, if it has one, because `by` coordinates
    /// `model` next.
    async fn give_up(&self, by: &str, model: &str) -> Result<()> {
        if self.engines.get().is_none() {
            return Ok(());
        }
        let Ok(_one) = self.engines.switching.try_lock() else {
            return Err(NodeError::NotReady(
                "a load is under way on this node".into(),
            ));
        };
        match self.engines.retire(crate::serve::engine::DRAIN).await {
            Ok(Some(was)) => {
                tracing::info!("stopped serving {was}: {by} coordinates {model} now");
                println!("dwarfstar mesh: stopped serving {was}; {by} coordinates {model}");
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(NodeError::NotReady(format!(
                "stopping this node's engine: {e}"
            ))),
        }
    }

    /// Asks the coordinator of `plan` (another node) to give up its model
    /// before this one coordinates `model`.
    pub async fn release(&self, plan: &Plan, model: &str) -> Result<()> {
        if plan.coordinator == self.me {
            return Ok(());
        }
        let id = peer(&plan.coordinator)?;
        let connected = self
            .mesh
            .peers()
            .await
            .map_err(|e| NodeError::Transport(e.to_string()))?
            .iter()
            .any(|p| p.peer == id);
        if !connected {
            // Gone: it serves nobody of this mesh.
            return Ok(());
        }
        let msg = pb::MeshMessage {
            body: Some(pb::mesh_message::Body::Release(pb::Release {
                plan_version: plan.version,
                new_coordinator: self.me.clone(),
                model: model.to_string(),
            })),
        }
        .encode_to_vec();
        // It drains its running requests first.
        let within = crate::serve::engine::DRAIN + Duration::from_secs(10);
        let reply = self
            .mesh
            .send_control(id, msg, within)
            .await
            .map_err(|e| NodeError::Transport(e.to_string()))?;
        match pb::MeshMessage::decode(reply.as_slice()) {
            Ok(pb::MeshMessage {
                body: Some(pb::mesh_message::Body::PlanAck(a)),
            }) if a.accepted => Ok(()),
            Ok(pb::MeshMessage {
                body: Some(pb::mesh_message::Body::PlanAck(a)),
            }) => Err(NodeError::Remote {
                node: plan.coordinator.clone(),
                message: a.reason,
            }),
            _ => Err(NodeError::BadRequest(format!(
                "{} answered the release with something else",
                plan.coordinator
            ))),
        }
    }

    /// A version for a new plan of this node's: `at_least`, or later than
    /// any plan this node took (so its members take it too).
    pub fn next_version(&self, at_least: u64) -> u64 {
        self.members.core().next_version(at_least)
    }

    /// True when the plan this node coordinates lost a member: it cannot
    /// serve until a load re-plans.
    pub fn plan_broken(&self) -> bool {
        self.members
            .core()
            .serving()
            .is_some_and(|(_, broken)| broken)
    }

    /// The members of `plan` (this node included) not declared lost.
    pub fn live_members(&self, plan: &Plan) -> usize {
        let core = self.members.core();
        plan.members()
            .into_iter()
            .filter(|m| core.lost(m).is_none())
            .count()
    }

    /// Bytes `node` holds under `plan`, when the model's shape is known.
    pub fn held_by(&self, plan: &Plan, node: &str) -> u64 {
        self.roster
            .shape()
            .map_or(0, |s| held_bytes(&s, plan, node))
    }

    /// Reads the shape of the model file `name` (in the models folder, or
    /// the partial copy of a fetched share under its `.shards/`) for status
    /// answers; a file it cannot read leaves the shape unknown.
    fn learn_shape(&self, name: &str) {
        let Some(file) = Path::new(name).file_name() else {
            return;
        };
        let dir = &self.settings.models_dir;
        let path = [
            dir.join(file),
            dir.join(super::shards::SHARDS_DIR).join(file),
        ]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| dir.join(file));
        match dwarfstar_gguf::GgufFile::open(&path)
            .map_err(|e| e.to_string())
            .and_then(|f| dwarfstar_model::shape::model_shape(&f).map_err(|e| e.to_string()))
        {
            Ok(shape) => self
                .roster
                .set_model(file.to_string_lossy().into_owned(), shape),
            Err(e) => tracing::debug!("shape of {}: {e}", path.display()),
        }
    }

    async fn on_proposal(self: Arc<Self>, from: PeerId, p: pb::PlanProposal) -> pb::NodeReady {
        let t0 = Instant::now();
        let version = p.plan.as_ref().map_or(0, |p| p.version);
        let model = p.model.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let refuse = |e: &dyn std::fmt::Display| {
            tracing::warn!("plan {version} from {from}: {e}");
            pb::NodeReady {
                plan_version: version,
                node: self.me.clone(),
                error: e.to_string(),
                ..Default::default()
            }
        };
        let sender = from.to_string();
        // Of racing coordinators, the later plan wins on every node.
        let taken = self.members.core().on_proposal(t0, &sender, version);
        self.members.poke();
        if let Err(e) = taken {
            return refuse(&e);
        }
        // Another coordinator's plan replaces the pipeline this node's
        // engine drives, if it has one.
        if let Err(e) = self.give_up(&sender, &model).await {
            self.members.core().load_failed(&sender, version);
            return refuse(&e);
        }
        let _one = self.loading.lock().await;
        if !self.members.core().wants(&sender, version) {
            return refuse(&"a later plan came while this node waited to load");
        }
        self.set_status(|s| s.state = "loading".into());
        if let Some(wire) = &p.plan {
            let mut nodes: BTreeSet<&str> = wire.stages.iter().map(|s| s.node.as_str()).collect();
            nodes.extend(wire.experts.iter().map(|s| s.node.as_str()));
            nodes.insert(wire.coordinator.as_str());
            self.roster
                .begin(version, &nodes.into_iter().collect::<Vec<_>>());
        }
        let me = self.clone();
        let name = p.model.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let r = tokio::task::spawn_blocking(move || {
            let r = me.accept(&p);
            if r.is_ok() {
                me.learn_shape(&name);
            }
            r
        })
        .await;
        let r = match r {
            Ok(r) => r,
            Err(e) => Err(NodeError::NotReady(format!("loading failed: {e}"))),
        };
        // The share goes in force only if no later plan came meanwhile.
        let r = r.and_then(|(plan, applied)| {
            let mut core = self.members.core();
            match core.loaded(&sender, version) {
                Ok(()) => {
                    self.install(&applied);
                    Ok((plan, applied))
                }
                Err(e) => Err(NodeError::NotReady(e.to_string())),
            }
        });
        if r.is_err() {
            self.members.core().load_failed(&sender, version);
        }
        let mut ready = pb::NodeReady {
            plan_version: version,
            node: self.me.clone(),
            load_ms: t0.elapsed().as_millis() as u64,
            ..Default::default()
        };
        match r {
            Ok((plan, applied)) => {
                tracing::info!("plan {version} from {from}: ready in {} ms", ready.load_ms);
                // Without the model's shape, the whole file's weights.
                ready.bytes_loaded = match self.held_by(&plan, &self.me) {
                    0 => applied.model.weight_bytes(),
                    b => b,
                };
                let me = self.me.clone();
                self.roster.set(
                    &me,
                    MemberState::Ready,
                    String::new(),
                    Some((ready.bytes_loaded, ready.load_ms)),
                );
                self.set_status(|s| {
                    s.state = "ready".into();
                    s.model = Some(plan.model.clone());
                    s.plan = Some(plan);
                    s.error = None;
                });
            }
            Err(e) => {
                tracing::warn!("plan {version} from {from}: {e}");
                ready.error = e.to_string();
                let me = self.me.clone();
                self.roster
                    .set(&me, MemberState::Failed, e.to_string(), None);
                self.set_status(|s| {
                    s.state = "failed".into();
                    s.error = Some(e.to_string());
                });
            }
        }
        ready
    }

    /// Checks a proposal, finds the model file, and takes this node's share.
    fn accept(&self, p: &pb::PlanProposal) -> Result<(Plan, Applied)> {
        let info = p
            .model
            .as_ref()
            .ok_or_else(|| NodeError::BadRequest("proposal without a model".into()))?;
        let wire = p
            .plan
            .as_ref()
            .ok_or_else(|| NodeError::BadRequest("proposal without a plan".into()))?;
        let name = Path::new(&info.name)
            .file_name()
            .ok_or_else(|| NodeError::BadRequest(format!("model name '{}'", info.name)))?;
        let mut path = self.settings.models_dir.join(name);
        match std::fs::metadata(&path) {
            Ok(meta) if meta.len() != info.size => {
                return Err(NodeError::NotReady(format!(
                    "model {} here has {} bytes, the coordinator's has {}",
                    path.display(),
                    meta.len(),
                    info.size
                )));
            }
            Ok(_) => {
                self.rt.block_on(self.inventory_ready());
                let ours = self.announced_hash(&info.name, info.size);
                if !info.blake3.is_empty() && !ours.is_empty() && ours != info.blake3 {
                    return Err(NodeError::NotReady(format!(
                        "model {} here has BLAKE3 {ours}, the coordinator's has {}",
                        path.display(),
                        info.blake3
                    )));
                }
            }
            Err(_) => {
                // Not here: fetch this node's share from a peer holding the file.
                let dir = &self.settings.models_dir;
                let f = shards::fetch_share(&self.mesh, &self.rt, dir, &self.me, p)?;
                println!(
                    "dwarfstar mesh: fetched {} bytes of {} (share {} bytes) in {:.2} s",
                    f.bytes, info.name, f.share_bytes, f.seconds
                );
                path = f.path;
            }
        }
        let (model, _) = Model::open(&path, &[])?;
        let plan = plan_wire::from_proto(wire, model.n_layer() as u32)?;
        self.rt.block_on(self.meet(&plan, &p.members))?;
        let applied = self.apply(&plan, model)?;
        Ok((plan, applied))
    }

    /// Dials the plan's members this node sends to (its next stage, the
    /// expert holders) that it has not met, and waits until they are admitted.
    async fn meet(&self, plan: &Plan, members: &[dwarfstar_mesh::Capabilities]) -> Result<()> {
        let t = |e: &dyn std::fmt::Display| NodeError::Transport(e.to_string());
        let mut need: BTreeSet<&str> = plan.experts.iter().map(|s| s.node.as_str()).collect();
        if let Some(i) = plan.stages.iter().position(|s| s.node == self.me) {
            if let Some(s) = plan.stages.get(i + 1) {
                need.insert(s.node.as_str());
            }
        }
        need.remove(self.me.as_str());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let met: BTreeSet<String> = self
                .mesh
                .peers()
                .await
                .map_err(|e| t(&e))?
                .into_iter()
                .map(|p| p.peer.to_string())
                .collect();
            let missing: Vec<&str> = need.iter().copied().filter(|n| !met.contains(*n)).collect();
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(NodeError::NotReady(format!(
                    "could not reach plan members {}",
                    missing.join(", ")
                )));
            }
            for c in members.iter().filter(|c| missing.contains(&c.id.as_str())) {
                for a in c.addresses.iter().flat_map(|a| &a.libp2p) {
                    if let Ok(addr) = a.parse() {
                        let _ = self.mesh.add_peer(addr).await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Builds this node's roles for `plan` around `model` (not yet in force:
    /// see [`NodeRuntime::install`]).
    pub fn apply(&self, plan: &Plan, mut model: Model) -> Result<Applied> {
        let act = match plan.activation_dtype {
            ActDType::F32 => pb::DType::F32,
            ActDType::F16 => pb::DType::F16,
        };
        // Experts held elsewhere go there.
        let others: BTreeSet<&str> = plan
            .experts
            .iter()
            .filter(|s| s.node != self.me)
            .map(|s| s.node.as_str())
            .collect();
        if !others.is_empty() {
            let nodes: Vec<&str> = others.into_iter().collect();
            let mut owners = HashMap::new();
            for s in plan.experts.iter().filter(|s| s.node != self.me) {
                let i = nodes.iter().position(|n| *n == s.node).unwrap_or(0) as u32;
                for &e in &s.experts {
                    owners.insert((s.layer as usize, e as usize), i);
                }
            }
            let dispatch = MeshExperts {
                mesh: self.mesh.clone(),
                rt: self.rt.clone(),
                nodes: nodes.iter().map(|n| peer(n)).collect::<Result<_>>()?,
                owners,
                plan_version: plan.version,
                dtype: act,
                lost: self.members.lost_peers(),
            };
            model.set_expert_dispatch(Some(Arc::new(dispatch)))?;
        }
        // This node's share within the budget it announced.
        super::paging::hold_share(
            &mut model,
            plan,
            &self.me,
            self.settings.caps.mem_budget,
            self.settings.limits.ctx_size,
        )?;
        let model = Arc::new(model);
        let width = model.n_embd();

        // Stage workers from the last stage back, each knowing the way on.
        let coordinator = plan.coordinator == self.me;
        let mut next: Option<Arc<dyn Hop>> = None;
        let mut mine: Option<Arc<StageWorker>> = None;
        let mut local = 0..0;
        for (i, s) in plan.stages.iter().enumerate().rev() {
            if s.node != self.me {
                next = Some(Arc::new(QuicHop {
                    mesh: self.mesh.clone(),
                    peer: peer(&s.node)?,
                    lost: self.members.lost_peers(),
                    rt: self.rt.clone(),
                    width,
                    dtype: act,
                }));
                continue;
            }
            let layers = s.layers.start as usize..s.layers.end as usize;
            if coordinator && i == 0 {
                local = layers;
                continue;
            }
            let host = StageHost::new(
                model.clone(),
                layers,
                s.holds_output,
                plan.version,
                self.settings.limits,
            )?;
            let w = Arc::new(StageWorker {
                host: Mutex::new(host),
                next: next.take(),
            });
            mine = Some(w.clone());
            next = Some(w);
        }
        let holds_experts = plan.experts.iter().any(|s| s.node == self.me);
        let roles = Arc::new(Roles {
            plan_version: plan.version,
            stage: mine,
            experts: holds_experts.then(|| model.clone()),
        });
        let backend = coordinator.then(|| {
            let next = if local.end as u32 == plan.stages.last().map_or(0, |s| s.layers.end) {
                None
            } else {
                next
            };
            let first = plan.stages.first();
            let output_here = first.is_some_and(|s| s.node == self.me && s.holds_output);
            DistBackend::new(model.clone(), local, next, output_here, plan.version)
        });
        Ok(Applied {
            model,
            backend,
            roles,
        })
    }

    /// Puts what [`NodeRuntime::apply`] built in force: data-plane requests
    /// get these roles from now on.
    pub(super) fn install(&self, applied: &Applied) {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(&applied.model);
        *self.roles.write().unwrap_or_else(|e| e.into_inner()) = applied.roles.clone();
    }
}

/// A peer's announced capabilities as the planner takes them.
pub fn node_caps(id: &str, c: &dwarfstar_mesh::Capabilities) -> NodeCaps {
    NodeCaps {
        id: id.to_string(),
        mem_budget: c.mem_budget,
        free_ram: c.free_ram,
        cores: c.cores,
        matmul_gflops: c.matmul_gflops,
        mem_bw_gbs: c.mem_bw_gbs,
        disk_read_gbs: c.disk_read_gbs,
    }
}
