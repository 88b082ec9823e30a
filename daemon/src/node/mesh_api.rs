//! [`MeshNode`]: the [`NodeApi`] of a daemon in a mesh. It answers for the
//! whole mesh: the plan in force (from the [`NodeRuntime`]), the peers'
//! announced capabilities (addresses, RAM, budget, from the mesh's
//! capabilities protocol), every member's state (from the plan handshake,
//! kept in the runtime's roster), the bytes each one holds, and this node's
//! own resident memory and data-plane traffic.
//!
//! On the coordinator, generations run on its engine (as [`LocalNode`]
//! does, through the plan's pipeline); a node without an engine says where
//! the coordinator is.
//!
//! LoadModel asked of any node makes that node the model's coordinator:
//! the same model with another split, or a plan that lost a member, is
//! re-planned in place (over the nodes left); another model,
//! or a load asked of a worker, drains the engine in force (this node's, or
//! the other coordinator's, through a `Release`), plans the new model over
//! the nodes the mesh has, and serves it from a new engine.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use dwarfstar_planner::{ActDType, Plan as MeshPlan};
use dwarfstar_proto::v1::{
    Addresses, Assignment, Capabilities, GenerateRequest, LoadReply, LoadRequest, NodeState,
    NodeStatus, PeerInfo, PeersReply, Plan, PlanReply, PlanRequest, Role, StatusReply,
};
use serde_json::{json, Value};

use super::grpc::{ApiError, EventStream, NodeApi};
use super::local::{file_name, host_name};
use super::paging;
use super::plan_wire;
use super::roster::{held_bytes, MemberState};
use super::runtime::{node_caps, CoordOptions, NodeRuntime};
use super::traffic;
use crate::serve::engine::{drain_engine, Engine, EngineFactory, Engines, DRAIN};
use crate::serve::metrics::Metrics;
use crate::serve::replan::Resume;

/// A mesh daemon's Control service. See the module doc.
pub struct MeshNode {
    pub(super) rt: Arc<NodeRuntime>,
    /// The model this node coordinates, if any.
    pub(super) engines: Arc<Engines>,
    /// How this daemon builds the engine of a model it is asked to load.
    factory: Arc<EngineFactory>,
    metrics: Arc<Metrics>,
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(format!("the mesh: {e}"))
}

/// Resident memory of this process (VmRSS), bytes; 0 where unknown.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The plan's layer count (its stages cover 0..n exactly).
fn n_layer(plan: &MeshPlan) -> u32 {
    plan.stages.last().map_or(0, |s| s.layers.end)
}

/// What `node` does under `plan`: coordinator, stage, experts (held for
/// layers it does not run), or standby.
fn roles(plan: &MeshPlan, node: &str) -> Vec<i32> {
    let mut r = Vec::new();
    if plan.coordinator == node {
        r.push(Role::Coordinator as i32);
    }
    let runs: Vec<_> = plan.stages.iter().filter(|s| s.node == node).collect();
    if !runs.is_empty() {
        r.push(Role::Stage as i32);
    }
    let foreign = plan
        .experts
        .iter()
        .filter(|e| e.node == node)
        .any(|e| !runs.iter().any(|s| s.layers.contains(&e.layer)));
    if foreign {
        r.push(Role::Experts as i32);
    }
    if r.is_empty() {
        r.push(Role::Standby as i32);
    }
    r
}

fn member_state(s: MemberState) -> NodeState {
    match s {
        MemberState::Loading => NodeState::Loading,
        MemberState::Ready => NodeState::Ready,
        MemberState::Failed => NodeState::Failed,
    }
}

fn local_state(s: &str) -> NodeState {
    match s {
        "loading" => NodeState::Loading,
        "ready" => NodeState::Ready,
        "failed" => NodeState::Failed,
        _ => NodeState::Idle,
    }
}

impl MeshNode {
    /// What the weight store of this node's share holds and read (None
    /// before a plan).
    pub fn store_stats(&self) -> Option<dwarfstar_model::store::StoreStats> {
        self.rt.store_stats()
    }

    pub fn new(
        rt: Arc<NodeRuntime>,
        engines: Arc<Engines>,
        factory: Arc<EngineFactory>,
        metrics: Arc<Metrics>,
    ) -> Self {
        MeshNode {
            rt,
            engines,
            factory,
            metrics,
        }
    }

    /// Puts a new plan for the model `e` serves in force: holds the engine
    /// until its running requests finish (new ones wait in the queue),
    /// plans over the same nodes, has them load their new shares, and hands
    /// the engine and Control's generations the new pipeline.
    pub(super) async fn replan(
        &self,
        e: &Engine,
        req: &LoadRequest,
        old: &MeshPlan,
    ) -> Result<LoadReply, ApiError> {
        let Some((hold, slot)) = &e.replan else {
            return Err(ApiError::FailedPrecondition(
                "this node's engine does not run a mesh plan".into(),
            ));
        };
        let t0 = std::time::Instant::now();
        drain_engine(hold, DRAIN)
            .await
            .map_err(|m| ApiError::Unavailable(format!("{m}; plan v{} stays", old.version)))?;
        // The same nodes, less those lost (a broken plan).
        let opts = CoordOptions {
            min_nodes: self.rt.live_members(old),
            wait: std::time::Duration::from_secs(30),
            force_stages: req.stages,
            expert_parallel: req.expert_parallel,
        };
        let version = self.rt.next_version((now_ms() / 1000).max(old.version + 1));
        match self.rt.coordinate(&e.model_path, &opts, version).await {
            Ok((plan, applied)) => {
                let Some(backend) = applied.backend else {
                    let why = "the new plan does not make this node its coordinator";
                    hold.resume(Resume::Failed(why.into()));
                    return Err(ApiError::Internal(why.into()));
                };
                *slot.write().unwrap_or_else(|e| e.into_inner()) = backend.clone();
                hold.resume(Resume::Swap(backend));
                tracing::info!("plan v{} in force: {plan:?}", plan.version);
                Ok(LoadReply {
                    model: file_name(&e.model_path),
                    plan: Some(plan_wire::to_proto(&plan, n_layer(&plan))),
                    load_ms: t0.elapsed().as_millis() as u64,
                    unchanged: false,
                })
            }
            Err(err) => {
                // Requests a broken step set aside fail with the reason.
                hold.resume(Resume::Failed(format!(
                    "no new plan fits the nodes left: {err}"
                )));
                Err(ApiError::Unavailable(format!(
                    "re-planning failed: {err} (the nodes that took the new plan no longer \
                     serve v{}; load again, or restart the coordinator)",
                    old.version
                )))
            }
        }
    }

    /// Makes this node the coordinator of `path`: drains the engine in
    /// force (this node's, or another coordinator's), plans the model over
    /// the nodes the mesh has now, and serves it from a new engine.
    async fn take_over(
        &self,
        path: &Path,
        req: &LoadRequest,
        old: Option<&MeshPlan>,
    ) -> Result<LoadReply, ApiError> {
        let t0 = std::time::Instant::now();
        let name = file_name(path);
        let current = self.engines.get();
        let hold = current
            .as_ref()
            .and_then(|e| e.replan.as_ref().map(|(h, _)| h.clone()));
        if let Some(h) = &hold {
            drain_engine(h, DRAIN)
                .await
                .map_err(|m| ApiError::Unavailable(format!("{m}; this node keeps its model")))?;
        }
        // The old engine goes on only if nothing changed on the mesh.
        let keep = |e: ApiError| {
            if let Some(h) = &hold {
                h.resume(Resume::Keep);
            }
            e
        };
        if let Some(p) = old {
            self.rt.release(p, &name).await.map_err(|e| {
                keep(ApiError::Unavailable(format!(
                    "the coordinator in force did not give up its model: {e}"
                )))
            })?;
        }
        let peers = self
            .rt
            .mesh
            .peers()
            .await
            .map_err(|e| keep(unavailable(e)))?;
        let opts = CoordOptions {
            min_nodes: 1 + peers.iter().filter(|p| p.caps.is_some()).count(),
            wait: std::time::Duration::from_secs(30),
            force_stages: req.stages,
            expert_parallel: req.expert_parallel,
        };
        let version = self
            .rt
            .next_version((now_ms() / 1000).max(old.map_or(0, |p| p.version) + 1));
        let (plan, applied) = self
            .rt
            .coordinate(path, &opts, version)
            .await
            .map_err(|e| {
                keep(ApiError::Unavailable(format!(
                    "loading {name} failed: {e} (nodes that took the new plan no longer serve \
                 the old one; load again)"
                )))
            })?;
        // From here the old pipeline is gone: its engine retires whatever
        // becomes of the new one.
        let retire = || {
            if let Some(h) = &hold {
                h.resume(Resume::Retire);
            }
        };
        let Some(backend) = applied.backend else {
            self.engines.set(None);
            retire();
            return Err(ApiError::Internal(
                "the new plan does not make this node its coordinator".into(),
            ));
        };
        let factory = self.factory.clone();
        let (p, model, ctx) = (
            path.to_path_buf(),
            applied.model,
            self.rt.settings().limits.ctx_size,
        );
        let built =
            tokio::task::spawn_blocking(move || factory.coordinator(&p, model, backend, ctx))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))
                .and_then(|r| r.map_err(|e| ApiError::InvalidArgument(format!("{name}: {e:#}"))));
        let engine = match built {
            Ok(e) => e,
            Err(e) => {
                self.engines.set(None);
                retire();
                return Err(e);
            }
        };
        println!(
            "dwarfstar mesh: plan {}: serving {} as {:?} over {} node(s)",
            plan.version,
            name,
            engine.model_name,
            plan.members().len()
        );
        self.engines.set(Some(engine));
        retire();
        Ok(LoadReply {
            model: name,
            plan: Some(plan_wire::to_proto(&plan, n_layer(&plan))),
            load_ms: t0.elapsed().as_millis() as u64,
            unchanged: false,
        })
    }

    /// The node runtime this service answers for.
    pub fn runtime(&self) -> &Arc<NodeRuntime> {
        &self.rt
    }

    /// This node's announced capabilities, with its id and name.
    fn local_caps(&self) -> Capabilities {
        let mut c = self.rt.roster.local_caps().unwrap_or_default();
        c.id = self.rt.me.clone();
        if c.name.is_empty() {
            c.name = host_name();
        }
        c
    }

    /// The coordinator's gRPC address, as it announced it.
    async fn coordinator_addr(&self) -> Option<String> {
        let plan = self.rt.status().plan?;
        let peers = self.rt.mesh.peers().await.ok()?;
        peers
            .into_iter()
            .find(|p| p.peer.to_string() == plan.coordinator)
            .and_then(|p| p.caps)
            .and_then(|c| c.addresses)
            .map(|a| a.grpc)
            .filter(|a| !a.is_empty())
    }

    fn worker_error(&self, what: &str, coordinator: Option<String>) -> ApiError {
        ApiError::FailedPrecondition(match coordinator {
            Some(a) => format!(
                "this node is a mesh worker and {what}; ask the coordinator (meshctl --addr {a})"
            ),
            None => format!("this node is a mesh worker and {what}; ask the mesh's coordinator"),
        })
    }

    /// The model file `name` names: the loaded one when empty, else a path
    /// or a file in the models folder (with or without `.gguf`), or the
    /// served one by its served name.
    fn resolve_model(&self, name: &str) -> Result<PathBuf, ApiError> {
        let dir = &self.rt.settings().models_dir;
        let name = name.trim();
        let served = self.engines.get();
        if let Some(e) = served.filter(|e| name.is_empty() || e.model_name == name) {
            return Ok(e.model_path.clone());
        }
        if name.is_empty() {
            return match self.rt.roster.model_file() {
                Some(f) => Ok(dir.join(f)),
                None => Err(ApiError::FailedPrecondition(
                    "no model is loaded: name one to plan for".into(),
                )),
            };
        }
        [
            PathBuf::from(name),
            dir.join(name),
            dir.join(format!("{name}.gguf")),
        ]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "model {name:?} not found (looked for the path, and in {})",
                dir.display()
            ))
        })
    }

    /// A fresh plan over the nodes the mesh has now, not applied.
    async fn preview(&self, req: &PlanRequest) -> Result<Plan, ApiError> {
        if req.stages == Some(0) {
            return Err(ApiError::InvalidArgument(
                "stages must be at least 1".into(),
            ));
        }
        let path = self.resolve_model(&req.model)?;
        let mut nodes = vec![node_caps(&self.rt.me, &self.local_caps())];
        let peers = self.rt.mesh.peers().await.map_err(unavailable)?;
        let links = super::links::measure(&self.rt.mesh, &self.rt.me, &peers).await;
        for p in peers {
            if let Some(c) = p.caps {
                nodes.push(node_caps(&p.peer.to_string(), &c));
            }
        }
        let shape = tokio::task::spawn_blocking(move || {
            let f = dwarfstar_gguf::GgufFile::open(&path)
                .map_err(|e| ApiError::InvalidArgument(format!("{}: {e}", path.display())))?;
            dwarfstar_model::shape::model_shape(&f)
                .map_err(|e| ApiError::InvalidArgument(format!("{}: {e}", path.display())))
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
        let n_layer = shape.n_layer;
        let version = self.rt.status().plan.map_or(0, |p| p.version) + 1;
        let plan = dwarfstar_planner::plan(&dwarfstar_planner::PlanRequest {
            model: shape,
            nodes,
            links,
            coordinator: self.rt.me.clone(),
            version,
            force_stages: req.stages,
            expert_parallel: req.expert_parallel,
            kv_tokens: self.rt.settings().limits.ctx_size as u64,
            force_act_dtype: Some(ActDType::F32),
            output_on_coordinator: false,
        })
        .map_err(|e| ApiError::ResourceExhausted(format!("planning: {e}")))?;
        Ok(plan_wire::to_proto(&plan, n_layer))
    }
}

#[tonic::async_trait]
impl NodeApi for MeshNode {
    async fn status(&self) -> Result<StatusReply, ApiError> {
        let me = self.rt.me.clone();
        let st = self.rt.status();
        let peers = self.rt.mesh.peers().await.map_err(unavailable)?;
        let members = self.rt.roster.members();
        let shape = self.rt.roster.shape();
        let plan = st.plan.as_ref();
        let wire = plan.map(|p| plan_wire::to_proto(p, n_layer(p)));
        let model = self
            .rt
            .roster
            .model_file()
            .or_else(|| plan.map(|p| p.model.clone()))
            .unwrap_or_default();

        // This node, the plan's members in pipeline order, then the rest.
        let mut ids = vec![me.clone()];
        if let Some(p) = plan {
            let nodes = std::iter::once(&p.coordinator)
                .chain(p.stages.iter().map(|s| &s.node))
                .chain(p.experts.iter().map(|e| &e.node));
            for n in nodes {
                if !ids.contains(n) {
                    ids.push(n.clone());
                }
            }
        }
        for p in &peers {
            let id = p.peer.to_string();
            if !ids.contains(&id) {
                ids.push(id);
            }
        }

        let mut nodes = Vec::new();
        for id in ids {
            let local = id == me;
            let peer = peers.iter().find(|p| p.peer.to_string() == id);
            let caps = if local {
                Some(self.local_caps())
            } else {
                peer.and_then(|p| p.caps.clone())
            };
            let member = members.get(&id);
            let in_plan = plan.is_some_and(|p| !roles(p, &id).contains(&(Role::Standby as i32)));
            let lost = (!local)
                .then(|| self.rt.members.core().lost(&id).map(str::to_string))
                .flatten();
            let (state, detail) = if local {
                (local_state(&st.state), st.error.clone().unwrap_or_default())
            } else if let Some(why) = lost {
                // Declared lost (a hung node keeps its connections open).
                (NodeState::Unreachable, format!("lost: {why}"))
            } else if peer.is_none() {
                (NodeState::Unreachable, "not connected".to_string())
            } else if let Some(m) = member {
                (member_state(m.state), m.detail.clone())
            } else if caps.is_none() {
                (NodeState::Joining, String::new())
            } else {
                (NodeState::Idle, String::new())
            };
            let mem_used = if local {
                resident_bytes()
            } else {
                match (member.map(|m| m.bytes_loaded), plan, &shape) {
                    (Some(b), _, _) if b > 0 => b,
                    (_, Some(p), Some(s)) => held_bytes(s, p, &id),
                    _ => 0,
                }
            };
            let assignment = wire.as_ref().map(|w| Assignment {
                stages: w.stages.iter().filter(|s| s.node == id).cloned().collect(),
                experts: w.experts.iter().filter(|e| e.node == id).cloned().collect(),
            });
            let active = if local {
                self.metrics.active.load(Relaxed) as u32
            } else {
                0
            };
            nodes.push(NodeStatus {
                id: id.clone(),
                name: caps.as_ref().map(|c| c.name.clone()).unwrap_or_default(),
                addresses: caps.as_ref().and_then(|c| c.addresses.clone()),
                roles: plan.map(|p| roles(p, &id)).unwrap_or_default(),
                assignment,
                mem_used,
                mem_budget: caps.as_ref().map_or(0, |c| c.mem_budget),
                state: state as i32,
                state_detail: detail,
                model: if in_plan {
                    model.clone()
                } else {
                    String::new()
                },
                plan_version: if in_plan {
                    member.map_or(plan.map_or(0, |p| p.version), |m| m.plan_version)
                } else {
                    0
                },
                active_requests: active,
                local,
                version: caps.map(|c| c.version).unwrap_or_default(),
                traffic: local.then(traffic::snapshot),
                paging: if local {
                    self.rt.store_stats().map(|s| paging::to_proto(&s))
                } else {
                    None
                },
                speculation: local.then(|| self.metrics.speculation()),
            });
        }
        Ok(StatusReply {
            node_id: me,
            nodes,
            model: if plan.is_some() { model } else { String::new() },
            plan_version: plan.map_or(0, |p| p.version),
        })
    }

    async fn peers(&self) -> Result<PeersReply, ApiError> {
        let mut out = vec![PeerInfo {
            id: self.rt.me.clone(),
            local: true,
            capabilities: Some(self.local_caps()),
            connected: true,
            discovered_by: "local".into(),
            ..Default::default()
        }];
        let peers = self.rt.mesh.peers().await.map_err(unavailable)?;
        let now = now_ms();
        for p in &peers {
            let id = p.peer.to_string();
            out.push(PeerInfo {
                capabilities: p.caps.clone().map(|mut c| {
                    c.id = id.clone();
                    c
                }),
                id,
                local: false,
                connected: true,
                latency_s: p.rtt.map_or(0.0, |d| d.as_secs_f64()),
                bandwidth_bps: 0.0,
                discovered_by: "mesh".into(),
                last_seen_unix_ms: now,
            });
        }
        // Plan members the mesh has lost.
        if let Some(plan) = self.rt.status().plan {
            for s in &plan.stages {
                if !out.iter().any(|p| p.id == s.node) {
                    out.push(PeerInfo {
                        id: s.node.clone(),
                        discovered_by: "plan".into(),
                        ..Default::default()
                    });
                }
            }
        }
        Ok(PeersReply { peers: out })
    }

    async fn plan(&self, req: PlanRequest) -> Result<PlanReply, ApiError> {
        if req.preview {
            return Ok(PlanReply {
                plan: Some(self.preview(&req).await?),
                applied: false,
            });
        }
        Ok(PlanReply {
            plan: self
                .rt
                .status()
                .plan
                .map(|p| plan_wire::to_proto(&p, n_layer(&p))),
            applied: true,
        })
    }

    async fn load_model(&self, req: LoadRequest) -> Result<LoadReply, ApiError> {
        if req.stages == Some(0) {
            return Err(ApiError::InvalidArgument(
                "stages must be at least 1".into(),
            ));
        }
        let path = self.resolve_model(&req.model)?;
        let Ok(_one) = self.engines.switching.try_lock() else {
            return Err(ApiError::Unavailable(
                "another load is under way on this node".into(),
            ));
        };
        let plan = self.rt.status().plan;
        let served = self.engines.get().filter(|e| e.serves(&path));
        let (Some(e), Some(plan)) = (served, plan.as_ref()) else {
            return self.take_over(&path, &req, plan.as_ref()).await;
        };
        let same_stages = req.stages.is_none_or(|s| s as usize == plan.stages.len());
        let same_experts = !req.expert_parallel
            || plan
                .experts
                .iter()
                .map(|e| &e.node)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                > 1;
        // A plan that lost a member is made again over the nodes left.
        if !(same_stages && same_experts) || self.rt.plan_broken() {
            return self.replan(&e, &req, plan).await;
        }
        Ok(LoadReply {
            model: file_name(&e.model_path),
            plan: Some(plan_wire::to_proto(plan, n_layer(plan))),
            load_ms: 0,
            unchanged: true,
        })
    }

    async fn generate(&self, req: GenerateRequest) -> Result<EventStream, ApiError> {
        if let Some(e) = self.engines.get() {
            return e.node.generate(req).await;
        }
        match self.rt.status().plan {
            Some(p) if p.coordinator != self.rt.me => {
                let at = self.coordinator_addr().await;
                Err(self.worker_error("does not generate", at))
            }
            _ => Err(ApiError::FailedPrecondition(
                "this node serves no model: load one with `meshctl load MODEL`".into(),
            )),
        }
    }
}

/// Announces where this node's gRPC and HTTP services listen (in its
/// capabilities, pushed to every peer), once they are bound.
pub async fn announce_services(rt: &NodeRuntime, grpc: &str, http: &str) {
    rt.update_caps(|caps| {
        let a = caps.addresses.get_or_insert_with(Addresses::default);
        a.grpc = grpc.to_string();
        a.http = http.to_string();
    })
    .await;
}

/// A status answer as the chat page's `/v1/status` shows it under `mesh`.
pub fn status_json(r: &StatusReply) -> Value {
    let state = |s: i32| {
        NodeState::try_from(s).map_or("unknown".to_string(), |s| {
            s.as_str_name()
                .trim_start_matches("NODE_STATE_")
                .to_lowercase()
        })
    };
    let role = |r: &i32| {
        Role::try_from(*r).map_or("unknown".to_string(), |r| {
            r.as_str_name().trim_start_matches("ROLE_").to_lowercase()
        })
    };
    let nodes: Vec<Value> = r
        .nodes
        .iter()
        .map(|n| {
            let a = n.assignment.clone().unwrap_or_default();
            let addr = n.addresses.clone().unwrap_or_default();
            json!({
                "id": n.id,
                "name": n.name,
                "local": n.local,
                "roles": n.roles.iter().map(role).collect::<Vec<_>>(),
                "layers": a.stages.iter().map(|s| json!({
                    "start": s.layer_start, "end": s.layer_end,
                    "embed": s.holds_embed, "output": s.holds_output,
                })).collect::<Vec<_>>(),
                "experts": a.experts.iter().map(|e| e.experts.len()).sum::<usize>(),
                "mem_used": n.mem_used,
                "mem_budget": n.mem_budget,
                "paging": n.paging.as_ref().map(|p| json!({
                    "paged": p.paged,
                    "budget_bytes": p.budget_bytes,
                    "resident_bytes": p.resident_bytes,
                    "expert_hit_rate": p.expert_hit_rate,
                    "bytes_read": p.bytes_read,
                    "tokens": p.tokens,
                    "bytes_read_per_token": p.bytes_read_per_token,
                })),
                "state": state(n.state),
                "state_detail": n.state_detail,
                "addresses": { "grpc": addr.grpc, "http": addr.http, "quic": addr.quic },
            })
        })
        .collect();
    json!({
        "node_id": r.node_id,
        "model": r.model,
        "plan_version": r.plan_version,
        "nodes": nodes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dwarfstar_planner::{ExpertShard, Stage};

    fn plan() -> MeshPlan {
        MeshPlan {
            version: 2,
            model: "m".into(),
            coordinator: "a".into(),
            stages: vec![
                Stage {
                    node: "a".into(),
                    layers: 0..2,
                    holds_embed: true,
                    holds_output: false,
                },
                Stage {
                    node: "b".into(),
                    layers: 2..4,
                    holds_embed: false,
                    holds_output: true,
                },
            ],
            experts: vec![
                ExpertShard {
                    node: "a".into(),
                    layer: 1,
                    experts: vec![0],
                },
                ExpertShard {
                    node: "c".into(),
                    layer: 1,
                    experts: vec![1],
                },
            ],
            activation_dtype: ActDType::F32,
            predicted_tokens_per_s: 1.0,
            predicted_paging: vec![],
            output_node: "b".into(),
        }
    }

    #[test]
    fn roles_follow_the_plan() {
        let p = plan();
        assert_eq!(
            roles(&p, "a"),
            vec![Role::Coordinator as i32, Role::Stage as i32]
        );
        assert_eq!(roles(&p, "b"), vec![Role::Stage as i32]);
        assert_eq!(roles(&p, "c"), vec![Role::Experts as i32]);
        assert_eq!(roles(&p, "d"), vec![Role::Standby as i32]);
        assert_eq!(n_layer(&p), 4);
    }

    #[test]
    fn the_page_json_names_states_and_roles() {
        let r = StatusReply {
            node_id: "a".into(),
            nodes: vec![NodeStatus {
                id: "a".into(),
                local: true,
                roles: vec![Role::Coordinator as i32],
                state: NodeState::Ready as i32,
                assignment: Some(Assignment {
                    stages: vec![dwarfstar_proto::v1::Stage {
                        node: "a".into(),
                        layer_start: 0,
                        layer_end: 15,
                        holds_embed: true,
                        holds_output: false,
                    }],
                    experts: vec![],
                }),
                ..Default::default()
            }],
            model: "m.gguf".into(),
            plan_version: 2,
        };
        let j = status_json(&r);
        assert_eq!(j["nodes"][0]["state"], "ready");
        assert_eq!(j["nodes"][0]["roles"][0], "coordinator");
        assert_eq!(j["nodes"][0]["layers"][0]["end"], 15);
        assert!(resident_bytes() > 0);
    }
}
