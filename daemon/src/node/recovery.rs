//! A coordinator whose plan lost a member re-plans on its own: the
//! membership core breaks the plan ([`Members::broken_plans`] changes),
//! this task holds the engine (its running requests, set aside by the
//! failed step, wait; see `serve::scheduler::recover`), plans the same model
//! over the nodes left and hands the engine the new pipeline, on which the
//! running requests rebuild their caches and go on. When no plan fits the
//! nodes left, the requests set aside fail with the reason; the next load
//! (or a node coming back and a `meshctl load`) can try again.
//!
//! [`Members::broken_plans`]: super::members::Members::broken_plans

use std::sync::Arc;

use dwarfstar_proto::v1::LoadRequest;

use super::mesh_api::MeshNode;

impl MeshNode {
    /// Starts the task that re-plans each broken plan this node coordinates.
    pub fn spawn_recovery(self: &Arc<Self>) {
        let me = self.clone();
        let mut broken = self.rt.members.broken_plans();
        tokio::spawn(async move {
            while broken.changed().await.is_ok() {
                let version = *broken.borrow_and_update();
                me.recover(version).await;
            }
        });
    }

    async fn recover(&self, version: u64) {
        // After a load under way, which may have re-planned already.
        let _one = self.engines.switching.lock().await;
        let Some(plan) = self.rt.status().plan else {
            return;
        };
        if !self.rt.plan_broken() || plan.version != version {
            return;
        }
        let Some(engine) = self.engines.get() else {
            return;
        };
        let t0 = std::time::Instant::now();
        let holders: std::collections::BTreeSet<&str> =
            plan.experts.iter().map(|e| e.node.as_str()).collect();
        let survivors = self.rt.live_members(&plan);
        let req = LoadRequest {
            model: engine.model_path.to_string_lossy().into_owned(),
            stages: None,
            expert_parallel: holders.len() > 1 && survivors > 1,
        };
        tracing::warn!("plan v{version} lost a member; re-planning over {survivors} node(s)");
        match self.replan(&engine, &req, &plan).await {
            Ok(reply) => {
                let v = reply.plan.as_ref().map_or(0, |p| p.version);
                println!(
                    "dwarfstar mesh: recovered: plan v{v} over {survivors} node(s) in {:.1} s",
                    t0.elapsed().as_secs_f64()
                );
            }
            Err(e) => {
                tracing::error!("no new plan after plan v{version} lost a member: {e}");
                println!("dwarfstar mesh: no new plan over the nodes left: {e}");
            }
        }
    }
}
