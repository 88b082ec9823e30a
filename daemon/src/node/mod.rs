//! The mesh node runtime: how a daemon takes part in a model split across
//! machines.
//!
//! - [`pipeline`]: steps, stage hosts and hops, sans I/O;
//! - [`backend`]: the coordinator's scheduler backend over the pipeline;
//! - [`error`]: what goes wrong, typed;
//! - [`grpc`]: the gRPC Control service (meshctl) over a [`grpc::NodeApi`];
//! - [`local`]: the single-machine `NodeApi` over the local engine.

pub mod backend;
pub mod error;
pub mod grpc;
pub mod local;
pub mod pipeline;

#[cfg(test)]
mod tests;
