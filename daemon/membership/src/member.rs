//! A node's side of other coordinators' plans: which proposal it takes
//! when several race, whether a finished load is still wanted, and whether
//! a coordinator's `NodeReady` is for the plan it holds.
//!
//! Plans are ordered by `(version, coordinator)`, the same on every node:
//! a node takes a proposal only if it is later than the plan it takes now
//! (its own round or plan in force included), so of two racing
//! coordinators the later plan wins on every member, and the other's round
//! fails with [`Failure::Superseded`] or a [`Refusal`].

use std::time::Instant;

use crate::core::Membership;
use crate::{Failure, NodeId, Refusal};

impl Membership {
    /// The plan `(version, coordinator)` whose share this node holds, for
    /// heartbeat answers.
    pub fn held(&self) -> Option<(u64, NodeId)> {
        self.held.clone()
    }

    /// The version a plan of this node's must exceed to be taken by every
    /// node that took the plans this node knows.
    pub fn next_version(&self, at_least: u64) -> u64 {
        let known = [&self.wanted, &self.held]
            .into_iter()
            .flatten()
            .map(|(v, _)| v + 1)
            .max()
            .unwrap_or(0);
        at_least.max(known)
    }

    /// A proposal of plan `version` from `from`: `Ok` to load it. Taking
    /// it ends this node's own round (failed as superseded) and the plan it
    /// coordinates (the runtime stops its engine).
    pub fn on_proposal(&mut self, now: Instant, from: &str, version: u64) -> Result<(), Refusal> {
        let key = (version, from.to_string());
        if let Some(r) = &self.round {
            let ours = (r.version(), self.me.clone());
            if key <= ours {
                return Err(Refusal::Coordinating { version: ours.0 });
            }
        }
        if let Some((current, coordinator)) = &self.wanted {
            if key <= (*current, coordinator.clone()) {
                return Err(Refusal::Stale {
                    version,
                    from: from.to_string(),
                    current: *current,
                    coordinator: coordinator.clone(),
                });
            }
        }
        self.fail_round(Failure::Superseded {
            version,
            coordinator: from.to_string(),
        });
        self.serving = None;
        self.wanted = Some(key);
        self.sync_beats(now);
        Ok(())
    }

    /// Whether `(version, from)` is still the plan this node takes (a later
    /// proposal may have come while it waited to load).
    pub fn wants(&self, from: &str, version: u64) -> bool {
        self.wanted == Some((version, from.to_string()))
    }

    /// This node loaded its share of `version` from `from`: `Ok` when that
    /// plan is still the one it takes (it holds it now), else the later
    /// plan that superseded it (the share is dropped).
    pub fn loaded(&mut self, from: &str, version: u64) -> Result<(), Failure> {
        let key = (version, from.to_string());
        match &self.wanted {
            Some(w) if *w == key => {
                self.held = Some(key);
                Ok(())
            }
            Some((v, c)) => Err(Failure::Superseded {
                version: *v,
                coordinator: c.clone(),
            }),
            None => Err(Failure::Superseded {
                version: 0,
                coordinator: String::new(),
            }),
        }
    }

    /// Loading `version` from `from` failed: this node takes the plan it
    /// holds again.
    pub fn load_failed(&mut self, from: &str, version: u64) {
        if self.wanted == Some((version, from.to_string())) {
            self.wanted = self.held.clone();
        }
    }

    /// A coordinator's own `NodeReady` (its plan is in force): true when it
    /// is for the plan this node holds.
    pub fn on_announce(&self, from: &str, version: u64) -> bool {
        self.held == Some((version, from.to_string()))
    }

    /// This node gave up the plan it coordinates (another node coordinates
    /// next).
    pub fn released(&mut self, now: Instant) {
        self.serving = None;
        self.sync_beats(now);
    }
}
