//! Handing the engine a new backend while it runs: a new plan for the same
//! model (another split of the mesh) replaces the pipeline between steps.
//!
//! The side that re-plans first [`Replan::hold`]s the engine: it admits no
//! new request (they wait in the queue), finishes the running ones, and
//! then reports idle. The re-planner waits for that ([`Replan::wait_idle`]),
//! puts the new plan in force on the mesh, and [`Replan::resume`]s the
//! engine with the new backend (or without one, keeping the old, if the
//! plan failed). Cached prefixes belong to the old pipeline, so the engine
//! drops them when it swaps.
//!
//! When the daemon moves to another model, or another node takes over the
//! mesh, the held engine is [`Resume::Retire`]d instead: it fails the
//! requests still queued for the old model, and ends.
//!
//! A pipeline that breaks under running requests (a node lost) meets the
//! same way from the other side: the engine's step fails, it sets its
//! sequences aside (their tokens kept) and waits, at most
//! [`Replan::recovery_wait`], for a re-planner to hold it
//! ([`Replan::wait_hold`]); the new backend it is resumed with rebuilds
//! their caches from their tokens. A re-plan that finds no plan resumes it
//! with [`Resume::Failed`], and the requests set aside fail with the reason.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How a held engine goes on.
#[derive(Debug, PartialEq)]
pub enum Resume<B> {
    /// With the backend it had (the new plan failed).
    Keep,
    /// With a new backend, for the same model.
    Swap(B),
    /// Not at all: the model it serves is no longer served here.
    Retire,
    /// With the backend it had, though it is broken: no new plan could be
    /// made, for this reason (the requests a broken step set aside fail).
    Failed(String),
}

struct State<B> {
    hold: bool,
    idle: bool,
    next: Resume<B>,
    /// The engine waits for a hold after a broken step.
    recovering: bool,
}

/// How long a broken step's requests wait for a re-plan by default: the
/// liveness bound (3 s) and a new plan's loading, with room to spare.
pub const RECOVERY_WAIT: Duration = Duration::from_secs(20);

/// The meeting point of the engine and a re-planner.
pub struct Replan<B> {
    state: Mutex<State<B>>,
    cv: Condvar,
    recovery_wait: Duration,
}

impl<B> Default for Replan<B> {
    fn default() -> Self {
        Replan {
            state: Mutex::new(State {
                hold: false,
                idle: false,
                next: Resume::Keep,
                recovering: false,
            }),
            cv: Condvar::new(),
            recovery_wait: RECOVERY_WAIT,
        }
    }
}

impl<B> Replan<B> {
    /// A meeting point whose engine waits `wait` for a re-plan after a
    /// broken step.
    #[cfg(test)]
    pub fn with_recovery_wait(wait: Duration) -> Self {
        Replan {
            recovery_wait: wait,
            ..Replan::default()
        }
    }

    /// How long the engine waits for a re-plan after a broken step.
    pub fn recovery_wait(&self) -> Duration {
        self.recovery_wait
    }

    /// The engine's side, after a broken step: waits at most `timeout` for
    /// a re-planner to hold it. Whether one did.
    pub fn wait_hold(&self, timeout: Duration) -> bool {
        let mut s = self.lock();
        s.recovering = true;
        self.cv.notify_all();
        let (mut s, _) = self
            .cv
            .wait_timeout_while(s, timeout, |s| !s.hold)
            .unwrap_or_else(|e| e.into_inner());
        s.recovering = false;
        s.hold
    }

    /// Waits until the engine waits for a re-plan after a broken step.
    #[cfg(test)]
    pub fn wait_recovering(&self) {
        let s = self.lock();
        let _s = self
            .cv
            .wait_while(s, |s| !s.recovering)
            .unwrap_or_else(|e| e.into_inner());
    }

    fn lock(&self) -> MutexGuard<'_, State<B>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the engine to stop admitting and drain. False when another
    /// re-plan already holds it.
    pub fn hold(&self) -> bool {
        let mut s = self.lock();
        if s.hold {
            return false;
        }
        s.hold = true;
        s.idle = false;
        self.cv.notify_all();
        true
    }

    /// Waits until the held engine has no running sequence.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let s = self.lock();
        let (s, _) = self
            .cv
            .wait_timeout_while(s, timeout, |s| s.hold && !s.idle)
            .unwrap_or_else(|e| e.into_inner());
        s.idle
    }

    /// Lets the engine go on as `next` says.
    pub fn resume(&self, next: Resume<B>) {
        let mut s = self.lock();
        s.next = next;
        s.hold = false;
        self.cv.notify_all();
    }

    /// The engine's side: whether it is asked to hold.
    pub fn held(&self) -> bool {
        self.lock().hold
    }

    /// The engine's side, with nothing running: reports idle and waits for
    /// the re-planner; how to go on.
    pub fn idle_until_resumed(&self) -> Resume<B> {
        let mut s = self.lock();
        s.idle = true;
        self.cv.notify_all();
        let mut s = self
            .cv
            .wait_while(s, |s| s.hold)
            .unwrap_or_else(|e| e.into_inner());
        s.idle = false;
        std::mem::replace(&mut s.next, Resume::Keep)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// An engine thread goes idle under the hold; the re-planner resumes it
    /// with `how`; what the engine was told.
    fn resumed_as(r: &Arc<Replan<u32>>, how: Resume<u32>) -> Resume<u32> {
        let engine = {
            let r = r.clone();
            std::thread::spawn(move || r.idle_until_resumed())
        };
        assert!(r.wait_idle(Duration::from_secs(10)));
        r.resume(how);
        engine.join().unwrap()
    }

    #[test]
    fn a_held_engine_reports_idle_and_takes_the_new_backend() {
        let r = Arc::new(Replan::<u32>::default());
        assert!(!r.held());
        assert!(r.hold());
        assert!(!r.hold(), "a second re-plan waits its turn");
        assert!(
            !r.wait_idle(Duration::from_millis(10)),
            "the engine is still busy"
        );
        assert_eq!(resumed_as(&r, Resume::Swap(7)), Resume::Swap(7));
        assert!(!r.held());
        // A failed re-plan resumes without a backend.
        assert!(r.hold());
        assert_eq!(resumed_as(&r, Resume::Keep), Resume::Keep);
        // A retired engine is told so once; a later hold starts afresh.
        assert!(r.hold());
        assert_eq!(resumed_as(&r, Resume::Retire), Resume::Retire);
    }
}
