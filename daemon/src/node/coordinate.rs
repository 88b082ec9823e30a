//! The coordinator's round ([`NodeRuntime::coordinate`]): the membership
//! core says when enough nodes joined and when every member is ready (or
//! why the round failed); this module does the I/O in between: measuring
//! links, planning, encoding the proposal, taking this node's own share.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use dwarfstar_membership::Event;
use dwarfstar_mesh::ModelInfo;
use dwarfstar_model::Model;
use dwarfstar_planner::{ActDType, NodeCaps, Plan, PlanRequest};
use dwarfstar_proto::v1 as pb;
use dwarfstar_proto::Message;
use tokio::sync::mpsc;

use super::error::{NodeError, Result};
use super::members::{round_error, RoundStep};
use super::plan_wire;
use super::roster::MemberState;
use super::runtime::{node_caps, Applied, CoordOptions, NodeRuntime};

/// The next step of a round, or why it failed.
async fn next_step(steps: &mut mpsc::UnboundedReceiver<RoundStep>) -> Result<RoundStep> {
    match steps.recv().await {
        Some(RoundStep::Failed(why)) => Err(round_error(why)),
        Some(s) => Ok(s),
        None => Err(NodeError::NotReady("the round ended".into())),
    }
}

impl NodeRuntime {
    /// Plans `path` over the admitted peers, has every node in the plan load
    /// its share, and takes this node's.
    pub async fn coordinate(
        self: &Arc<Self>,
        path: &Path,
        opts: &CoordOptions,
        version: u64,
    ) -> Result<(Plan, Applied)> {
        self.shards.offer(path);
        let mut steps = self.members.open_round(version);
        let r = self.round(&mut steps, path, opts, version).await;
        self.members.close_round(version);
        r
    }

    async fn round(
        self: &Arc<Self>,
        steps: &mut mpsc::UnboundedReceiver<RoundStep>,
        path: &Path,
        opts: &CoordOptions,
        version: u64,
    ) -> Result<(Plan, Applied)> {
        let t = |e: &dyn std::fmt::Display| NodeError::Transport(e.to_string());
        // Peers met before the event loop told the core about them count too.
        let seen = self.mesh.peers().await.map_err(|e| t(&e))?;
        {
            let (mut core, now) = (self.members.core(), Instant::now());
            for p in seen.iter().filter(|p| p.caps.is_some()) {
                let id = p.peer.to_string();
                if !core.knows(&id) {
                    core.handle(now, Event::PeerUp(id));
                }
            }
            let (min_nodes, wait) = (opts.min_nodes, opts.wait);
            core.handle(
                now,
                Event::Gather {
                    version,
                    min_nodes,
                    wait,
                },
            );
        }
        self.members.poke();
        let RoundStep::Plan(nodes) = next_step(steps).await? else {
            return Err(NodeError::NotReady(
                "internal error: the membership round asked to apply before it asked for a plan"
                    .into(),
            ));
        };
        self.set_status(|s| s.state = "loading".into());
        let mut seen = self.mesh.peers().await.map_err(|e| t(&e))?;
        seen.retain(|p| p.caps.is_some() && nodes.contains(&p.peer.to_string()));
        let mut caps: Vec<NodeCaps> = vec![self.settings().caps.clone()];
        let mut members: Vec<dwarfstar_mesh::Capabilities> = Vec::new();
        for p in &seen {
            if let Some(c) = &p.caps {
                caps.push(node_caps(&p.peer.to_string(), c));
                members.push(dwarfstar_mesh::Capabilities {
                    id: p.peer.to_string(),
                    ..c.clone()
                });
            }
        }
        let links = super::links::measure(&self.mesh, &self.me, &seen).await;
        let p = path.to_path_buf();
        // Drafting with the model's MTP block: attach its own file, if any,
        // and keep the output head here (the block reads the final hidden
        // rows and shares the head).
        let mtp = (self.settings().mtp.as_ref())
            .filter(|(m, _)| crate::serve::engine::same_file(m, path))
            .map(|(_, f)| f.clone());
        let wants_mtp = mtp.is_some();
        let open = move || -> dwarfstar_model::Result<_> {
            let (mut model, file) = Model::open(&p, &[])?;
            if let Some(Some(f)) = mtp {
                model.attach_mtp_file(&f)?;
            }
            Ok((model, file))
        };
        let (model, file) = tokio::task::spawn_blocking(open)
            .await
            .map_err(|e| NodeError::NotReady(e.to_string()))??;
        let shape = dwarfstar_model::shape::model_shape(&file)?;
        let n_layer = model.n_layer() as u32;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.roster.set_model(file_name.clone(), shape.clone());
        let req = PlanRequest {
            model: shape,
            nodes: caps,
            links,
            coordinator: self.me.clone(),
            version,
            force_stages: opts.force_stages,
            expert_parallel: opts.expert_parallel,
            kv_tokens: self.settings().limits.ctx_size as u64,
            force_act_dtype: Some(ActDType::F32),
            output_on_coordinator: wants_mtp && model.has_mtp(),
        };
        let plan = dwarfstar_planner::plan(&req)
            .map_err(|e| NodeError::NotReady(format!("planning: {e}")))?;
        tracing::info!("plan {version}: {plan:?}");
        self.inventory_ready().await;
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let info = ModelInfo {
            blake3: self.announced_hash(&file_name, size),
            name: file_name,
            size,
            arch: model.arch().to_string(),
            ..Default::default()
        };
        let proposal = pb::MeshMessage {
            body: Some(pb::mesh_message::Body::PlanProposal(pb::PlanProposal {
                plan: Some(plan_wire::to_proto(&plan, n_layer)),
                model: Some(info),
                proposer: self.me.clone(),
                members,
            })),
        }
        .encode_to_vec();
        let mut others = plan.members();
        others.remove(self.me.as_str());
        let others: Vec<String> = others.into_iter().map(str::to_string).collect();
        let mut everyone: Vec<&str> = others.iter().map(String::as_str).collect();
        everyone.push(&self.me);
        self.roster.begin(version, &everyone);
        self.members.propose(version, proposal, others);
        let RoundStep::Apply = next_step(steps).await? else {
            return Err(NodeError::NotReady(
                "the round skipped its members' answers".into(),
            ));
        };
        let me = self.clone();
        let plan2 = plan.clone();
        let applied = tokio::task::spawn_blocking(move || me.apply(&plan2, model))
            .await
            .map_err(|e| NodeError::NotReady(e.to_string()))??;
        let held = self.held_by(&plan, &self.me);
        self.set_status(|s| {
            s.state = "ready".into();
            s.model = Some(plan.model.clone());
            s.plan = Some(plan.clone());
            s.error = None;
        });
        // In force only if no member was lost meanwhile; the core then tells
        // every member (the coordinator's own `NodeReady`).
        let in_force = {
            let mut core = self.members.core();
            core.handle(Instant::now(), Event::Applied { version });
            let ok = core.serving() == Some((version, false));
            if ok {
                self.install(&applied);
            }
            ok
        };
        if !in_force {
            self.members.poke();
            let failed = tokio::time::timeout(std::time::Duration::from_secs(1), next_step(steps));
            let why = match failed.await {
                Ok(Err(e)) => e,
                _ => NodeError::NotReady(format!("plan v{version} was not put in force")),
            };
            self.set_status(|s| {
                s.state = "failed".into();
                s.error = Some(why.to_string());
            });
            return Err(why);
        }
        self.members.poke();
        let me = self.me.clone();
        self.roster
            .set(&me, MemberState::Ready, String::new(), Some((held, 0)));
        Ok((plan, applied))
    }
}
