//! The gRPC `Control` service (`dwarfstar.v1.Control`, what `meshctl` talks
//! to), served over tonic against a [`NodeApi`] that the node runtime
//! implements: this module owns the transport, API-key checks and the mapping
//! of [`ApiError`] to gRPC status codes, not what the answers say.
//!
//! [`super::local::LocalNode`] is the single-node implementation over the
//! local engine.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use dwarfstar_proto::v1::control_server::{Control, ControlServer};
use dwarfstar_proto::v1::{
    GenerateEvent, GenerateRequest, LoadReply, LoadRequest, PeersReply, PeersRequest, PlanReply,
    PlanRequest, StatusReply, StatusRequest,
};
use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status};

/// Events of one generation: `Token`s then one `Done`, or an error that
/// ends the stream.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<GenerateEvent, ApiError>> + Send>>;

/// Why a Control call failed; each variant is one gRPC status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or out of range (INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidArgument(String),
    /// A model or node that does not exist (NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The node is not in a state to do it: no model, a single node asked
    /// for several stages, another model loaded (FAILED_PRECONDITION).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Out of memory, queue or context (RESOURCE_EXHAUSTED).
    #[error("{0}")]
    ResourceExhausted(String),
    /// Shutting down, or a peer is gone (UNAVAILABLE).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an engine failure (INTERNAL).
    #[error("{0}")]
    Internal(String),
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        match e {
            ApiError::InvalidArgument(m) => Status::invalid_argument(m),
            ApiError::NotFound(m) => Status::not_found(m),
            ApiError::FailedPrecondition(m) => Status::failed_precondition(m),
            ApiError::ResourceExhausted(m) => Status::resource_exhausted(m),
            ApiError::Unavailable(m) => Status::unavailable(m),
            ApiError::Internal(m) => Status::internal(m),
        }
    }
}

/// What a node answers the Control service with. The node runtime (mesh)
/// and [`super::local::LocalNode`] (one machine) implement it.
#[tonic::async_trait]
pub trait NodeApi: Send + Sync + 'static {
    /// This node and every node it knows, this one first.
    async fn status(&self) -> Result<StatusReply, ApiError>;
    /// Every known peer with its capabilities, this node first.
    async fn peers(&self) -> Result<PeersReply, ApiError>;
    /// The plan in force, or (with `preview`) a fresh one not applied.
    async fn plan(&self, req: PlanRequest) -> Result<PlanReply, ApiError>;
    /// Plans and loads a model; returns once it is served.
    async fn load_model(&self, req: LoadRequest) -> Result<LoadReply, ApiError>;
    /// Starts a generation. Request errors come back here, before the
    /// stream; failures mid-generation end the stream with an error.
    async fn generate(&self, req: GenerateRequest) -> Result<EventStream, ApiError>;
}

/// The tonic service over a [`NodeApi`].
pub struct ControlService {
    api: Arc<dyn NodeApi>,
}

impl ControlService {
    pub fn new(api: Arc<dyn NodeApi>) -> Self {
        ControlService { api }
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        Ok(Response::new(self.api.status().await?))
    }

    async fn peers(&self, _: Request<PeersRequest>) -> Result<Response<PeersReply>, Status> {
        Ok(Response::new(self.api.peers().await?))
    }

    async fn plan(&self, req: Request<PlanRequest>) -> Result<Response<PlanReply>, Status> {
        Ok(Response::new(self.api.plan(req.into_inner()).await?))
    }

    async fn load_model(&self, req: Request<LoadRequest>) -> Result<Response<LoadReply>, Status> {
        Ok(Response::new(self.api.load_model(req.into_inner()).await?))
    }

    type GenerateStream = Pin<Box<dyn Stream<Item = Result<GenerateEvent, Status>> + Send>>;

    async fn generate(
        &self,
        req: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let events = self.api.generate(req.into_inner()).await?;
        Ok(Response::new(Box::pin(
            events.map(|e| e.map_err(Status::from)),
        )))
    }
}

/// Compares without stopping at the first differing byte.
fn same_key(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Checks `authorization: Bearer KEY` against `keys` (none: everyone in).
fn check_key(keys: &[String], req: &Request<()>) -> Result<(), Status> {
    if keys.is_empty() {
        return Ok(());
    }
    let given = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(k) if keys.iter().any(|key| same_key(key, k)) => Ok(()),
        Some(_) => Err(Status::unauthenticated("incorrect API key")),
        None => Err(Status::unauthenticated(
            "this node needs an API key: send `authorization: Bearer KEY` (meshctl --api-key)",
        )),
    }
}

/// Serves the Control service on `listener` until `shutdown` resolves, then
/// lets calls in flight finish. With `api_keys`, every call must carry one.
pub async fn serve_grpc_on(
    listener: tokio::net::TcpListener,
    api: Arc<dyn NodeApi>,
    api_keys: Vec<String>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let keys = Arc::new(api_keys);
    let svc = ControlServer::with_interceptor(ControlService::new(api), move |req| {
        check_key(&keys, &req)?;
        Ok(req)
    });
    tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown,
        )
        .await
}

/// Binds `addr` and serves the Control service there (see [`serve_grpc_on`]).
/// `dwarfstar serve` binds first itself (to print the port it got); this is
/// for callers that already know their address.
#[allow(dead_code)]
pub async fn serve_grpc(
    addr: SocketAddr,
    api: Arc<dyn NodeApi>,
    api_keys: Vec<String>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("gRPC listen address {addr}: {e}"))?;
    serve_grpc_on(listener, api, api_keys, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_their_codes() {
        let cases = [
            (
                ApiError::InvalidArgument("a".into()),
                tonic::Code::InvalidArgument,
            ),
            (ApiError::NotFound("b".into()), tonic::Code::NotFound),
            (
                ApiError::FailedPrecondition("c".into()),
                tonic::Code::FailedPrecondition,
            ),
            (
                ApiError::ResourceExhausted("d".into()),
                tonic::Code::ResourceExhausted,
            ),
            (ApiError::Unavailable("e".into()), tonic::Code::Unavailable),
            (ApiError::Internal("f".into()), tonic::Code::Internal),
        ];
        for (e, code) in cases {
            let msg = e.to_string();
            let s = Status::from(e);
            assert_eq!(s.code(), code);
            assert_eq!(s.message(), msg);
        }
    }

    #[test]
    fn keys_are_checked_when_configured() {
        let with = |v: Option<&str>| {
            let mut r = Request::new(());
            if let Some(v) = v {
                r.metadata_mut().insert("authorization", v.parse().unwrap());
            }
            r
        };
        assert!(check_key(&[], &with(None)).is_ok());
        let keys = vec!["sekrit".to_string(), "other".to_string()];
        assert!(check_key(&keys, &with(Some("Bearer other"))).is_ok());
        assert_eq!(
            check_key(&keys, &with(Some("Bearer nope")))
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            check_key(&keys, &with(None)).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            check_key(&keys, &with(Some("sekrit"))).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}
