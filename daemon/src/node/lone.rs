//! [`LoneNode`]: the Control service of a daemon without peers. It answers
//! as the [`super::local::LocalNode`] of the engine in force, and its
//! LoadModel serves another model: the new engine is built while the old
//! one goes on serving, then takes every new request; the old one finishes
//! the sequences it runs and ends.

use std::sync::Arc;
use std::time::Instant;

use dwarfstar_proto::v1::{
    GenerateRequest, LoadReply, LoadRequest, PeersReply, PlanReply, PlanRequest, StatusReply,
};

use super::grpc::{ApiError, EventStream, NodeApi};
use super::local::{file_name, LocalNode};
use crate::serve::engine::{Engine, EngineFactory, Engines};

/// A lone daemon's Control service. See the module doc.
pub struct LoneNode {
    engines: Arc<Engines>,
    factory: Arc<EngineFactory>,
}

impl LoneNode {
    pub fn new(engines: Arc<Engines>, factory: Arc<EngineFactory>) -> Self {
        LoneNode { engines, factory }
    }

    fn engine(&self) -> Result<Arc<Engine>, ApiError> {
        self.engines
            .get()
            .ok_or_else(|| ApiError::FailedPrecondition("no model is loaded".into()))
    }
}

#[tonic::async_trait]
impl NodeApi for LoneNode {
    async fn status(&self) -> Result<StatusReply, ApiError> {
        self.engine()?.node.status().await
    }

    async fn peers(&self) -> Result<PeersReply, ApiError> {
        self.engine()?.node.peers().await
    }

    async fn plan(&self, req: PlanRequest) -> Result<PlanReply, ApiError> {
        self.engine()?.node.plan(req).await
    }

    async fn load_model(&self, req: LoadRequest) -> Result<LoadReply, ApiError> {
        LocalNode::check_stages(req.stages)?;
        let current = self.engine()?;
        let path = current.node.resolve_model(&req.model)?;
        if current.node.is_loaded_path(&path) {
            return current.node.load_model(req).await;
        }
        let Ok(_one) = self.engines.switching.try_lock() else {
            return Err(ApiError::Unavailable("another load is under way".into()));
        };
        let t0 = Instant::now();
        let factory = self.factory.clone();
        let p = path.clone();
        let engine = tokio::task::spawn_blocking(move || factory.alone(&p))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| ApiError::InvalidArgument(format!("loading {}: {e:#}", path.display())))?;
        let plan = engine.node.current_plan();
        tracing::info!(
            "serving {} as {:?} (was {:?})",
            path.display(),
            engine.model_name,
            current.model_name
        );
        drop(current);
        self.engines.set(Some(engine));
        Ok(LoadReply {
            model: file_name(&path),
            plan: Some(plan),
            load_ms: t0.elapsed().as_millis() as u64,
            unchanged: false,
        })
    }

    async fn generate(&self, req: GenerateRequest) -> Result<EventStream, ApiError> {
        self.engine()?.node.generate(req).await
    }
}
