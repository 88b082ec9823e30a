//! The mesh node runtime: how a daemon takes part in a model split across
//! machines.
//!
//! - [`pipeline`]: steps, stage hosts and hops, sans I/O;
//! - [`frames`]: steps and expert batches as data-plane frames, checked;
//! - [`backend`]: the coordinator's scheduler backend over the pipeline;
//! - [`transport`]: steps and expert batches over the QUIC data plane;
//! - [`plan_wire`]: plans as nodes exchange them, checked;
//! - [`mesh_serve`]: `dwarfstar serve` in a mesh: flags, joining, coordinating;
//! - [`runtime`]: the event loop, the plan handshake (a member's side), roles;
//! - [`coordinate`]: the coordinator's round, from gathering nodes to the plan in force;
//! - [`members`]: the shell of the membership core: its events, timers and actions, and the peers declared lost;
//! - [`inventory`]: the model files a node holds and announces, hashed;
//! - [`links`]: the measured links (ping latency, probed bandwidth) the planner is given;
//! - [`shards`]: fetching a plan's share of a model file from a peer holding it;
//! - [`error`]: what goes wrong, typed;
//! - [`grpc`]: the gRPC Control service (meshctl) over a [`grpc::NodeApi`];
//! - [`local`]: the single-machine `NodeApi` over one engine;
//! - [`lone`]: a lone daemon's `NodeApi`, which swaps engines on LoadModel;
//! - [`mesh_api`]: the mesh `NodeApi`: plan, peers, members' states;
//! - [`recovery`]: a coordinator re-plans on its own when its plan loses a member;
//! - [`paging`]: a node's share of the weights within its budget;
//! - [`roster`]: what a node knows of its plan's members;
//! - [`traffic`]: data-plane frame and byte counters.

pub mod backend;
pub mod coordinate;
pub mod error;
pub mod frames;
pub mod grpc;
pub mod inventory;
pub mod links;
pub mod local;
pub mod lone;
pub mod members;
pub mod mesh_api;
pub mod mesh_serve;
pub mod paging;
pub mod pipeline;
pub mod plan_wire;
pub mod recovery;
pub mod roster;
pub mod runtime;
pub mod shards;
pub mod traffic;
pub mod transport;

#[cfg(test)]
mod tests;
