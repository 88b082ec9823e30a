//! The node runtime's error type: what a stage, an expert holder or the
//! coordinator reports when a step cannot run.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum NodeError {
    /// The model refused the work (shapes, states, arithmetic checks).
    #[error("model: {0}")]
    Model(#[from] dwarfstar_model::ModelError),
    /// A peer sent something this node cannot accept; the peer is at fault.
    #[error("bad request from a peer: {0}")]
    BadRequest(String),
    /// The work was for a plan this node does not run (any more).
    #[error("plan version {got}, this node runs version {have}")]
    WrongPlan { got: u64, have: u64 },
    /// Moving frames failed (connection lost, peer gone, timeout).
    #[error("transport: {0}")]
    Transport(String),
    /// The peer stopped answering (or its link closed) and was declared lost.
    #[error("node {node} was lost: {reason}")]
    Lost { node: String, reason: String },
    /// A remote node reported a failure.
    #[error("node {node}: {message}")]
    Remote { node: String, message: String },
    /// Not loaded, or not in a state to do this.
    #[error("{0}")]
    NotReady(String),
}

pub type Result<T, E = NodeError> = std::result::Result<T, E>;
