//! Carrying running sequences over a broken pipeline: when a step of a
//! split model fails (a stage or expert holder was lost, or a call to it
//! failed), no request fails at once. Each running sequence keeps what
//! defines it (its tokens, sampler, penalties, grammar and draft state), its
//! cache is dropped (part of it lived on the pipeline), and the engine waits
//! for the re-planner ([`Replan::wait_hold`]). The new backend, or the same
//! one when nobody re-plans within [`Replan::recovery_wait`] (a call that
//! failed while every node lives), rebuilds each cache by running the
//! sequence's tokens again, all of them in one batched step; the next token
//! is sampled from the last position's logits as it would have been. A
//! position's logits do not depend on how many positions share a pass, so
//! greedy output is the same as an undisturbed run's. Queued requests wait
//! in the queue meanwhile. A request fails only when the re-planner found
//! no plan ([`Resume::Failed`], with its reason), when the model is no
//! longer served here, or when its cache had to be rebuilt
//! [`MAX_REPLAYS`] times.
//!
//! [`Replan::wait_hold`]: super::Replan::wait_hold
//! [`Replan::recovery_wait`]: super::Replan::recovery_wait

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::{Backend, Event, Resume, Scheduler};

/// Times one sequence's cache is rebuilt before its request fails.
pub(super) const MAX_REPLAYS: u32 = 3;

impl<B: Backend> Scheduler<B> {
    /// After a failed step (`error`): waits for a new plan and sets every
    /// running sequence to rebuild its cache from its tokens.
    pub(super) fn recover(&mut self, error: String) {
        let Some(r) = self.replan.clone() else {
            self.fail_running(&error);
            return;
        };
        let t0 = Instant::now();
        tracing::warn!(
            sequences = self.active.len(),
            "a step failed ({error}); its requests wait for a new plan"
        );
        let wait = r.recovery_wait();
        let resume = if r.wait_hold(wait) {
            r.idle_until_resumed()
        } else {
            tracing::warn!("no re-plan within {wait:?}; rebuilding on the same pipeline");
            Resume::Keep
        };
        match resume {
            Resume::Swap(b) => self.set_backend(b),
            Resume::Keep => {}
            Resume::Failed(why) => {
                self.fail_running(&format!("{error}; {why}"));
                self.drop_cache();
                return;
            }
            Resume::Retire => {
                self.fail_running(&format!(
                    "{error}; this daemon no longer serves the model; send the request again"
                ));
                self.close_for_good();
                return;
            }
        }
        // Cached states belong to the broken pipeline too.
        self.drop_cache();
        let mut replayed = 0;
        for s in &mut self.active {
            s.replays += 1;
            if s.replays > MAX_REPLAYS {
                let _ = s.req.events.send(Event::Failed(format!(
                    "{error} (its cache was rebuilt {MAX_REPLAYS} times already)"
                )));
                s.ended = true;
                continue;
            }
            // What the broken pipeline had run (a decoding sequence's last
            // token is still to run; a failed pass may have half written).
            let ran = self.backend.state_len(&s.state);
            replayed += ran.min(s.history.len().saturating_sub(1));
            if let Some(spec) = self.spec.as_mut() {
                spec.drafter.forget(s.id);
            }
            s.state = self.backend.new_state(self.cfg.ctx_size);
            if let Some(id) = &s.req.request_id {
                self.backend.tag(&mut s.state, id);
            }
        }
        self.active.retain(|s| !s.ended);
        self.metrics.active.store(self.active.len(), Relaxed);
        self.metrics.recoveries.fetch_add(1, Relaxed);
        self.metrics
            .replayed_tokens
            .fetch_add(replayed as u64, Relaxed);
        tracing::info!(
            sequences = self.active.len(),
            replayed,
            waited_s = t0.elapsed().as_secs_f64(),
            "rebuilding the running requests' caches"
        );
        self.recovering = Some(t0);
    }

    /// The first step that ran after a recovery: counts how long the
    /// running requests paused.
    pub(super) fn recovered(&mut self) {
        if let Some(t0) = self.recovering.take() {
            let took = t0.elapsed();
            self.metrics
                .recovery_ms
                .fetch_add(took.as_millis() as u64, Relaxed);
            tracing::info!(
                took_s = took.as_secs_f64(),
                "the running requests go on after the lost node"
            );
        }
    }

    /// Fails every running sequence with `why`.
    fn fail_running(&mut self, why: &str) {
        for s in self.active.drain(..) {
            let _ = s.req.events.send(Event::Failed(why.to_string()));
        }
        self.metrics.active.store(0, Relaxed);
    }
}
