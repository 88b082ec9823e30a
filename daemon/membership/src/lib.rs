//! Membership of a DwarfStar mesh and its plan handshake, as a state machine
//! without I/O (in the manner of quinn-proto): no sockets, no runtime, no
//! clock. The node runtime feeds it [`Event`]s (peers coming and going,
//! replies, link failures) and the time, through [`Membership::handle`] and
//! [`Membership::handle_timeout`]; it carries out the [`Action`]s that
//! [`Membership::poll_action`] hands back (send a message, plan over these
//! nodes, apply the plan, fail the round, declare a peer lost, mark the plan
//! in force broken) and sleeps until [`Membership::poll_timeout`].
//!
//! What it owns:
//! - **the coordinator's round**: gather enough nodes, propose a plan to its
//!   members, collect their `NodeReady`s (stale ones, of another plan
//!   version, are ignored), apply, and announce the plan in force;
//! - **liveness**: every member of the round or of the plan in force gets a
//!   heartbeat each [`Config::heartbeat_interval`]; a heartbeat unanswered by
//!   the next one is a strike, and [`Config::strikes`] strikes in a row
//!   declare the member lost, so a node that stops answering is lost within
//!   [`Config::lost_after`]. Any answer clears the strikes. A member lost
//!   before the plan is in force fails the round; one lost while serving
//!   breaks the plan in force. A lost node that answers again, or connects
//!   again, rejoins: it counts for the next plan;
//! - **the member's side**: which proposal a node takes when several
//!   coordinators race (the larger `(version, coordinator)` wins everywhere,
//!   so nobody goes back to an older plan), whether a finished load is still
//!   wanted, and whether a coordinator's `NodeReady` is for the plan this
//!   node holds.

mod core;
mod member;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use crate::core::Membership;

/// A node's id (its libp2p PeerId as text).
pub type NodeId = String;

/// How quickly a silent member is declared lost, and how long a member may
/// take to load its share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// A member that answers nothing for this long is declared lost.
    pub lost_after: Duration,
    /// Heartbeats unanswered in a row that declare a member lost (at least 1).
    pub strikes: u32,
    /// How long a member may take to answer a proposal with its `NodeReady`
    /// (loading, or fetching, its share), heartbeats answered all along.
    pub ready_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            lost_after: Duration::from_secs(3),
            strikes: 3,
            ready_timeout: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// The default configuration, with members declared lost after `lost_after`.
    pub fn with_lost_after(lost_after: Duration) -> Config {
        Config {
            lost_after,
            ..Config::default()
        }
    }

    /// The time between two heartbeats to a member, which is also how long
    /// each has for its answer: `strikes` of them unanswered, after the last
    /// one answered, take `lost_after`.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.lost_after / (self.strikes.max(1) + 1)).max(Duration::from_millis(1))
    }
}

/// Something the runtime saw.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A peer is admitted and its capabilities are known (again).
    PeerUp(NodeId),
    /// The link to a peer closed.
    PeerDown { node: NodeId, reason: String },
    /// Begin a round as coordinator: wait (at most `wait`) until this node
    /// and its peers number `min_nodes`, then plan over them.
    Gather {
        version: u64,
        min_nodes: usize,
        wait: Duration,
    },
    /// The round's plan is made: propose it to `members` (this node left out).
    Propose { version: u64, members: Vec<NodeId> },
    /// A member's `NodeReady` without an error.
    Ready {
        from: NodeId,
        version: u64,
        bytes_loaded: u64,
        load_ms: u64,
    },
    /// A member refused the proposal, or could not be asked.
    NotReady {
        from: NodeId,
        version: u64,
        why: Failure,
    },
    /// This node took its own share of the round's plan: it is in force.
    Applied { version: u64 },
    /// The round ended here (planning or the local share failed).
    Abandon { version: u64 },
    /// A heartbeat's answer: `plan` is the plan the member holds.
    HeartbeatAck {
        from: NodeId,
        seq: u64,
        plan: Option<(u64, NodeId)>,
    },
}

/// A message for the runtime to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// The round's plan proposal; the member answers with its `NodeReady`.
    Proposal { version: u64 },
    /// "Are you there?": answered at once, with the plan the member holds.
    Heartbeat { seq: u64 },
    /// The coordinator's own `NodeReady`: the plan is in force.
    Announce { version: u64 },
}

/// Something for the runtime to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Enough nodes: plan round `version` over `nodes` (this node first).
    Plan {
        version: u64,
        nodes: Vec<NodeId>,
    },
    Send {
        to: NodeId,
        msg: Msg,
    },
    /// A member loaded its share of the round's plan.
    MemberReady {
        node: NodeId,
        version: u64,
        bytes_loaded: u64,
        load_ms: u64,
    },
    /// A member will not serve the round's plan.
    MemberFailed {
        node: NodeId,
        version: u64,
        why: Failure,
    },
    /// Every member is ready: take this node's share of plan `version`.
    Apply {
        version: u64,
    },
    /// The round failed; nothing of it is in force.
    RoundFailed {
        version: u64,
        why: Failure,
    },
    /// `node` stopped answering, or its link closed: calls to it fail now.
    PeerLost {
        node: NodeId,
        reason: String,
    },
    /// A node declared lost answers again (or connected again).
    Rejoined {
        node: NodeId,
    },
    /// The plan in force lost a member and cannot serve as it is: its
    /// requests fail, and the next plan is made over `survivors`.
    PlanBroken {
        version: u64,
        lost: NodeId,
        survivors: Vec<NodeId>,
        reason: String,
    },
    /// A message that belongs to no round or plan here (for the log).
    Ignored {
        from: NodeId,
        why: String,
    },
}

/// Why a round failed, or a member will not serve it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("{joined} of {wanted} nodes joined within {wait:?}")]
    TooFewNodes {
        joined: usize,
        wanted: usize,
        wait: Duration,
    },
    /// The member answered with an error.
    #[error("{node}: {message}")]
    Refused { node: NodeId, message: String },
    /// The proposal could not be delivered, or its answer did not come back.
    #[error("{node}: {error}")]
    Unreachable { node: NodeId, error: String },
    #[error("{node} answered the plan with something else")]
    BadAnswer { node: NodeId },
    #[error("{node} was lost before the plan was in force: {reason}")]
    Lost { node: NodeId, reason: String },
    #[error("{node} did not load its share within {after:?}")]
    NotReadyInTime { node: NodeId, after: Duration },
    /// Another coordinator's later plan took this node, or its members.
    #[error("superseded by plan v{version} of {coordinator}")]
    Superseded { version: u64, coordinator: NodeId },
}

/// Why a node does not take a proposal.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "plan v{version} of {from} is not newer than plan v{current} of {coordinator}, which this \
         node takes"
    )]
    Stale {
        version: u64,
        from: NodeId,
        current: u64,
        coordinator: NodeId,
    },
    #[error("this node coordinates plan v{version} itself, which is newer")]
    Coordinating { version: u64 },
}
