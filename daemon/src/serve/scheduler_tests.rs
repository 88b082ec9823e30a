//! The scheduler driven by a fake model: admission order, chunked prefill,
//! cancellation, finish reasons, the prefix cache and the queue bound.

use std::cell::{Cell, RefCell};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::*;
use crate::serve::replan::{Replan, Resume};

pub(super) const VOCAB: usize = 16;

/// A model whose next-token logits depend on every token its state holds,
/// so any slip in batching or caching changes the output.
pub(super) struct Fake {
    /// Per forward pass: each item's token count and whether it was a
    /// prompt chunk (more than one token, or a first token).
    calls: RefCell<Vec<Vec<usize>>>,
    /// Whether a state keeps its positions when cut below its end (false:
    /// like DeepSeek V4's windows, a cut keeps nothing and the kept tokens
    /// are recomputed).
    cuts: bool,
    /// Forward passes left before one fails, as a pipeline that lost a
    /// node does (None: none fails).
    fail_in: Cell<Option<usize>>,
}

#[derive(Clone, Debug)]
pub(super) struct FakeState {
    pub(super) tokens: Vec<u32>,
    capacity: usize,
}

pub(super) fn next_logits(tokens: &[u32]) -> Vec<f32> {
    let mut h: u64 = 1469598103934665603;
    for &t in tokens {
        h = (h ^ t as u64).wrapping_mul(1099511628211);
    }
    let mut l = vec![0.0; VOCAB];
    l[(h % VOCAB as u64) as usize] = 1.0;
    l[((h >> 8) % VOCAB as u64) as usize] += 0.5;
    l
}

impl Backend for Fake {
    type State = FakeState;
    fn new_state(&self, capacity: usize) -> FakeState {
        FakeState {
            tokens: Vec::new(),
            capacity,
        }
    }
    fn state_len(&self, s: &FakeState) -> usize {
        s.tokens.len()
    }
    fn truncate(&self, s: &mut FakeState, len: usize) {
        s.tokens.truncate(len)
    }
    fn clone_state(&self, s: &FakeState) -> FakeState {
        s.clone()
    }
    fn cuts_anywhere(&self) -> bool {
        self.cuts
    }
    fn kept_by_truncate(&self, s: &FakeState, len: usize) -> usize {
        match (self.cuts, len >= s.tokens.len()) {
            (true, _) => len.min(s.tokens.len()),
            (false, true) => s.tokens.len(),
            (false, false) => 0,
        }
    }
    fn state_bytes(&self, s: &FakeState) -> usize {
        s.tokens.len() * 4
    }
    fn forward_batch(
        &self,
        items: &mut [(&[u32], &mut FakeState, bool)],
    ) -> Result<Vec<Vec<f32>>, String> {
        self.calls
            .borrow_mut()
            .push(items.iter().map(|i| i.0.len()).collect());
        match self.fail_in.get() {
            Some(0) => {
                self.fail_in.set(None);
                // Half written, as a pipeline that broke mid-step leaves it.
                if let Some((t, st, _)) = items.first_mut() {
                    st.tokens.extend_from_slice(t);
                }
                return Err("peer x lost: its link closed".into());
            }
            Some(n) => self.fail_in.set(Some(n - 1)),
            None => {}
        }
        let mut out = Vec::new();
        for (toks, st, all) in items.iter_mut() {
            if st.tokens.len() + toks.len() > st.capacity {
                return Err("context full".into());
            }
            let mut l = Vec::new();
            for &t in toks.iter() {
                st.tokens.push(t);
                if *all {
                    l.extend(next_logits(&st.tokens));
                }
            }
            if !*all {
                l = next_logits(&st.tokens);
            }
            out.push(l);
        }
        Ok(out)
    }
}

pub(super) fn cfg() -> SchedConfig {
    SchedConfig {
        max_batch: 4,
        prefill_chunk: 8,
        ctx_size: 64,
        cache_entries: 4,
        cache_bytes: 1 << 20,
        min_prefix: 2,
        kv_positions: usize::MAX,
    }
}

fn sched(cfg: SchedConfig, eog: &[u32]) -> (Scheduler<Fake>, Submitter, Arc<Metrics>) {
    sched_cutting(cfg, eog, true)
}

pub(super) fn sched_cutting(
    cfg: SchedConfig,
    eog: &[u32],
    cuts: bool,
) -> (Scheduler<Fake>, Submitter, Arc<Metrics>) {
    let m = Arc::new(Metrics::new());
    let (sub, rx) = queue(4, m.clone());
    let mut e = vec![false; VOCAB];
    for &t in eog {
        e[t as usize] = true;
    }
    let fake = Fake {
        calls: RefCell::new(Vec::new()),
        fail_in: Cell::new(None),
        cuts,
    };
    (Scheduler::new(fake, cfg, e, rx, m.clone()), sub, m)
}

pub(super) fn req(prompt: Vec<u32>, max_tokens: usize) -> (GenRequest, UnboundedReceiver<Event>) {
    let (tx, rx) = unbounded_channel();
    (
        GenRequest {
            prompt,
            max_tokens,
            sampler: SamplerConfig::greedy(),
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            ignore_eos: false,
            constraint: None,
            logprobs: None,
            events: tx,
            request_id: None,
        },
        rx,
    )
}

/// The greedy continuation computed one token at a time, no scheduler.
pub(super) fn reference(prompt: &[u32], n: usize, eog: &[u32]) -> Vec<u32> {
    let mut toks = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let t = dwarfstar_model::sampler::argmax(&next_logits(&toks));
        out.push(t);
        toks.push(t);
        if eog.contains(&t) {
            break;
        }
    }
    out
}

pub(super) fn drain(rx: &mut UnboundedReceiver<Event>) -> Vec<Event> {
    let mut v = Vec::new();
    while let Ok(e) = rx.try_recv() {
        v.push(e);
    }
    v
}

pub(super) fn tokens(ev: &[Event]) -> Vec<u32> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Token(t) => Some(*t),
            _ => None,
        })
        .collect()
}

/// Submits one request, runs the scheduler until idle, and returns its
/// events.
fn serve_one(s: &mut Scheduler<Fake>, sub: &Submitter, prompt: Vec<u32>, n: usize) -> Vec<Event> {
    let (r, mut rx) = req(prompt, n);
    sub.submit(r).unwrap();
    run_all(s);
    drain(&mut rx)
}

pub(super) fn run_all(s: &mut Scheduler<Fake>) {
    for _ in 0..1000 {
        s.admit(false);
        if s.active() == 0 {
            return;
        }
        s.step();
    }
    panic!("did not finish");
}

#[test]
fn alone_and_batched_outputs_match_the_reference() {
    let (mut s, sub, m) = sched(cfg(), &[]);
    let prompts: Vec<Vec<u32>> = (0..6)
        .map(|i| (0..(3 + 5 * i)).map(|j| (j * 7 + i) % 13).collect())
        .collect();
    let mut rxs = Vec::new();
    for p in &prompts[..4] {
        let (r, rx) = req(p.clone(), 10);
        sub.submit(r).unwrap();
        rxs.push(rx);
    }
    run_all(&mut s);
    for (p, rx) in prompts.iter().zip(&mut rxs) {
        let ev = drain(rx);
        assert_eq!(ev[0], Event::Started { cached_tokens: 0 });
        assert_eq!(tokens(&ev), reference(p, 10, &[]));
        assert_eq!(ev.last(), Some(&Event::Done(Finish::Length)));
    }
    assert_eq!(m.generated_tokens.load(Relaxed), 40);
    assert_eq!(m.queue_depth.load(Relaxed), 0);
    assert_eq!(m.active.load(Relaxed), 0);
}

#[test]
fn prefill_is_chunked_and_decoders_step_every_time() {
    let (mut s, sub, _) = sched(cfg(), &[]);
    let (r, mut short) = req(vec![1, 2], 30);
    sub.submit(r).unwrap();
    s.admit(false);
    s.step(); // prefill of the short prompt, first token
    let long: Vec<u32> = (0..40).map(|i| i % 11).collect();
    let (r, mut long_rx) = req(long.clone(), 3);
    sub.submit(r).unwrap();
    run_all(&mut s);
    let calls = s.backend.calls.borrow();
    // After the first step, every pass carries the decoding sequence (1
    // token) and at most 8 prompt tokens of the long one.
    for c in calls.iter().skip(1).take(5) {
        assert_eq!(c.len(), 2, "{calls:?}");
        assert_eq!(c[0], 1);
        assert!(c[1] <= 8);
    }
    assert_eq!(tokens(&drain(&mut short)), reference(&[1, 2], 30, &[]));
    assert_eq!(tokens(&drain(&mut long_rx)), reference(&long, 3, &[]));
}

#[test]
fn fifo_admission_up_to_max_batch() {
    let (mut s, sub, m) = sched(
        SchedConfig {
            max_batch: 2,
            ..cfg()
        },
        &[],
    );
    let mut rxs = Vec::new();
    for i in 0..3 {
        let (r, rx) = req(vec![i, i + 1], 4);
        sub.submit(r).unwrap();
        rxs.push(rx);
    }
    s.admit(false);
    assert_eq!(s.active(), 2);
    assert_eq!(m.queue_depth.load(Relaxed), 1);
    assert!(drain(&mut rxs[2]).is_empty());
    s.step();
    run_all(&mut s);
    assert_eq!(tokens(&drain(&mut rxs[2])), reference(&[2, 3], 4, &[]));
}

#[test]
fn end_of_generation_stops_and_the_context_caps_length() {
    let want = reference(&[5, 6, 7], 20, &[]);
    let eog = want[3];
    let (mut s, sub, _) = sched(cfg(), &[eog]);
    let ev = serve_one(&mut s, &sub, vec![5, 6, 7], 20);
    let got = tokens(&ev);
    assert_eq!(got, reference(&[5, 6, 7], 20, &[eog]));
    assert_eq!(*got.last().unwrap(), eog);
    assert_eq!(ev.last(), Some(&Event::Done(Finish::Stop)));

    // A prompt of 60 in a context of 64: five tokens fit (the fifth is
    // sampled but never run), then "length".
    let (mut s, sub, _) = sched(cfg(), &[]);
    let p: Vec<u32> = (0..60).map(|i| i % 3).collect();
    let ev = serve_one(&mut s, &sub, p, 1000);
    assert_eq!(tokens(&ev).len(), 5);
    assert_eq!(ev.last(), Some(&Event::Done(Finish::Length)));

    let (r, mut rx) = req((0..64).collect(), 10);
    sub.submit(r).unwrap();
    run_all(&mut s);
    assert!(matches!(drain(&mut rx)[..], [Event::Failed(_)]));
}

#[test]
fn a_dropped_receiver_frees_its_slot() {
    let (mut s, sub, m) = sched(
        SchedConfig {
            max_batch: 1,
            ..cfg()
        },
        &[],
    );
    let (r, rx) = req(vec![1, 2, 3], 50);
    sub.submit(r).unwrap();
    let (r2, mut rx2) = req(vec![4, 5], 3);
    sub.submit(r2).unwrap();
    s.admit(false);
    s.step();
    s.step();
    drop(rx);
    s.step();
    assert_eq!(s.active(), 0);
    run_all(&mut s);
    assert_eq!(tokens(&drain(&mut rx2)), reference(&[4, 5], 3, &[]));
    // The cancelled sequence's state was cached.
    assert!(m.prefix_entries.load(Relaxed) >= 1);
}

#[test]
fn a_shared_prefix_is_reused_and_gives_the_same_output() {
    let (mut s, sub, m) = sched(cfg(), &[]);
    let system: Vec<u32> = (0..20).map(|i| (i * 5) % 9).collect();
    let mut a = system.clone();
    a.extend([1, 1]);
    let mut b = system.clone();
    b.extend([2, 3, 4]);
    assert_eq!(
        tokens(&serve_one(&mut s, &sub, a.clone(), 5)),
        reference(&a, 5, &[])
    );
    let ev = serve_one(&mut s, &sub, b.clone(), 5);
    assert_eq!(ev[0], Event::Started { cached_tokens: 20 });
    assert_eq!(tokens(&ev), reference(&b, 5, &[]));
    // The same prompt again: all but its last token come from the cache.
    let ev = serve_one(&mut s, &sub, b.clone(), 5);
    assert_eq!(
        ev[0],
        Event::Started {
            cached_tokens: b.len() - 1
        }
    );
    assert_eq!(tokens(&ev), reference(&b, 5, &[]));
    assert_eq!(m.prefix_hits.load(Relaxed), 2);
    assert_eq!(m.prefix_misses.load(Relaxed), 1);
}

/// States that keep nothing when cut (DeepSeek V4's) are reused whole:
/// the next chat turn extends the previous sequence (its end is cached)
/// or at least its prompt (a copy is kept when all of the prompt but its
/// last token is in, which serves the same prompt again too); a prompt
/// that shares only part of a cached key is not counted as cached, since
/// that state would be recomputed. Outputs never change.
#[test]
fn states_that_do_not_cut_are_reused_from_whole_keys() {
    let (mut s, sub, m) = sched_cutting(cfg(), &[], false);
    let system: Vec<u32> = (0..20).map(|i| (i * 5) % 9).collect();
    let mut a = system.clone();
    a.extend([1, 1]);
    let reply = tokens(&serve_one(&mut s, &sub, a.clone(), 5));
    assert_eq!(reply, reference(&a, 5, &[]));
    // Prompt-end copy and sequence-end state are both kept.
    assert_eq!(m.prefix_entries.load(Relaxed), 2);

    // The next turn extends the whole sequence (all but the last reply
    // token, which was never run).
    let mut next = a.clone();
    next.extend(&reply);
    next.extend([7, 7, 7]);
    let ev = serve_one(&mut s, &sub, next.clone(), 3);
    assert_eq!(
        ev[0],
        Event::Started {
            cached_tokens: a.len() + reply.len() - 1
        }
    );
    assert_eq!(tokens(&ev), reference(&next, 3, &[]));

    // A turn whose reply re-tokenized otherwise still has the prompt.
    let mut other = a.clone();
    other.extend([8, 8, 8, 8]);
    let ev = serve_one(&mut s, &sub, other.clone(), 3);
    assert_eq!(
        ev[0],
        Event::Started {
            cached_tokens: a.len() - 1
        }
    );
    assert_eq!(tokens(&ev), reference(&other, 3, &[]));

    // The same prompt again.
    let ev = serve_one(&mut s, &sub, a.clone(), 5);
    assert_eq!(
        ev[0],
        Event::Started {
            cached_tokens: a.len() - 1
        }
    );
    assert_eq!(tokens(&ev), reply);

    // Only the system prompt in common: nothing whole to reuse.
    let mut c = system.clone();
    c.extend([3, 3, 3]);
    let ev = serve_one(&mut s, &sub, c.clone(), 3);
    assert_eq!(ev[0], Event::Started { cached_tokens: 0 });
    assert_eq!(tokens(&ev), reference(&c, 3, &[]));
    assert_eq!(m.prefix_hits.load(Relaxed), 3);
}

/// A scheduler running request `a` ([1, 2, 3], 4 tokens) under a re-plan
/// hold, with `b` ([4, 5], 3 tokens) queued behind it, and a thread that
/// resumes it with `how` once it is idle.
#[allow(clippy::type_complexity)]
fn held_with_one_queued(
    how: Resume<Fake>,
) -> (
    Scheduler<Fake>,
    Submitter,
    Arc<Metrics>,
    Arc<Replan<Fake>>,
    [UnboundedReceiver<Event>; 2],
    std::thread::JoinHandle<()>,
) {
    let (s, sub, m) = sched(cfg(), &[]);
    let r = Arc::new(Replan::default());
    let mut s = s.with_replan(r.clone());
    let (a, rxa) = req(vec![1, 2, 3], 4);
    sub.submit(a).unwrap();
    s.admit(false);
    assert!(r.hold());
    let (b, rxb) = req(vec![4, 5], 3);
    sub.submit(b).unwrap();
    s.admit(false);
    assert_eq!(s.active(), 1, "under the hold, b waits in the queue");
    let switcher = {
        let r = r.clone();
        std::thread::spawn(move || {
            assert!(r.wait_idle(std::time::Duration::from_secs(30)));
            r.resume(how);
        })
    };
    (s, sub, m, r, [rxa, rxb], switcher)
}

#[test]
fn a_replan_drains_running_requests_then_swaps_the_backend() {
    let new = Fake {
        calls: RefCell::new(Vec::new()),
        fail_in: Cell::new(None),
        cuts: true,
    };
    let (mut s, _sub, _m, r, [mut rxa, mut rxb], planner) = held_with_one_queued(Resume::Swap(new));
    run_all(&mut s);
    planner.join().unwrap();
    assert_eq!(tokens(&drain(&mut rxa)), reference(&[1, 2, 3], 4, &[]));
    assert_eq!(tokens(&drain(&mut rxb)), reference(&[4, 5], 3, &[]));
    // Only b ran on the new backend, and nothing cached came across.
    let calls = s.backend.calls.borrow();
    assert_eq!(calls.first(), Some(&vec![2]), "{calls:?}");
    assert!(!r.held());
}

#[test]
fn a_retired_engine_finishes_running_requests_and_fails_queued_ones() {
    let (s, sub, m, _r, [mut rxa, mut rxb], switcher) = held_with_one_queued(Resume::Retire);
    // The engine's own loop: it ends although a submitter is still alive.
    s.run();
    switcher.join().unwrap();
    assert_eq!(tokens(&drain(&mut rxa)), reference(&[1, 2, 3], 4, &[]));
    let eb = drain(&mut rxb);
    assert!(
        matches!(eb.as_slice(), [Event::Failed(e)] if e.contains("send it again")),
        "{eb:?}"
    );
    assert_eq!(m.queue_depth.load(Relaxed), 0);
    let (c, _rxc) = req(vec![1], 1);
    assert_eq!(sub.submit(c), Err(SubmitError::Closed));
}

#[test]
fn a_full_queue_refuses_and_a_stopped_engine_is_closed() {
    let (s, sub, m) = sched(cfg(), &[]);
    let mut keep = Vec::new();
    for _ in 0..4 {
        let (r, rx) = req(vec![1], 1);
        sub.submit(r).unwrap();
        keep.push(rx);
    }
    let (r, _rx) = req(vec![1], 1);
    assert_eq!(sub.submit(r), Err(SubmitError::Full));
    assert_eq!(m.queue_depth.load(Relaxed), 4);
    drop(s);
    let (r, _rx) = req(vec![1], 1);
    assert_eq!(sub.submit(r), Err(SubmitError::Closed));
}

#[test]
fn penalties_lower_repeated_tokens() {
    let mut l = vec![1.0, 2.0, 3.0];
    let counts = HashMap::from([(2, 3), (0, 1)]);
    penalize(&mut l, &counts, 0.5, 1.0);
    assert_eq!(l, vec![-0.5, 2.0, -0.5]);
}

#[test]
fn admission_waits_while_the_positions_would_outgrow_the_kv_room() {
    // Room for 20 positions: a sequence reaching 2 + 10 runs, a second
    // (2 + 10 more) waits until it ends, then runs to the same tokens.
    let (mut s, sub, m) = sched(
        SchedConfig {
            kv_positions: 20,
            ..cfg()
        },
        &[],
    );
    let (r1, mut rx1) = req(vec![1, 2], 10);
    let (r2, mut rx2) = req(vec![3, 4], 10);
    sub.submit(r1).unwrap();
    sub.submit(r2).unwrap();
    s.admit(false);
    assert_eq!(s.active(), 1);
    assert_eq!(m.queue_depth.load(Relaxed), 1);
    s.step();
    s.admit(false);
    assert_eq!(s.active(), 1, "the second request must wait for room");
    run_all(&mut s);
    assert_eq!(tokens(&drain(&mut rx1)), reference(&[1, 2], 10, &[]));
    assert_eq!(tokens(&drain(&mut rx2)), reference(&[3, 4], 10, &[]));
    assert_eq!(m.queue_depth.load(Relaxed), 0);

    // One sequence always runs, even one reaching past the room.
    assert_eq!(tokens(&serve_one(&mut s, &sub, vec![5, 6], 40)).len(), 40);
}

#[test]
fn a_grammar_constrains_every_token_and_ends_the_sequence() {
    use crate::serve::grammar::{Constraint, Grammar, TokenTrie};
    // Token t spells the letter 'a' + t; token 15 ends generation.
    let bytes: Vec<Vec<u8>> = (0..VOCAB as u8)
        .map(|t| if t == 15 { Vec::new() } else { vec![b'a' + t] })
        .collect();
    let mut eog = vec![false; VOCAB];
    eog[15] = true;
    let trie = Arc::new(TokenTrie::new(bytes, eog));
    let g = Arc::new(Grammar::parse(r#"root ::= [b-d] [a-c]{2} "o""#).unwrap());
    for seed in 0..8 {
        let (mut s, sub, _) = sched(cfg(), &[15]);
        let (mut r, mut rx) = req(vec![1, 2, 3], 20);
        r.sampler = SamplerConfig {
            temperature: 1.0,
            seed,
            ..SamplerConfig::default()
        };
        r.constraint = Some(Constraint::new(g.clone(), trie.clone()));
        sub.submit(r).unwrap();
        run_all(&mut s);
        let ev = drain(&mut rx);
        let toks = tokens(&ev);
        let text: String = toks[..toks.len() - 1]
            .iter()
            .map(|&t| (b'a' + t as u8) as char)
            .collect();
        assert!(g.accepts(&text), "seed {seed}: {text:?}");
        assert_eq!(toks.last(), Some(&15));
        assert_eq!(ev.last(), Some(&Event::Done(Finish::Stop)));
    }
}

/// A scheduler on a split model running `a` ([1, 2, 3], 6 tokens) and `b`
/// ([4, 5], 5 tokens) whose third forward pass fails (a node lost), with
/// `c` ([7], 2 tokens) queued behind them.
#[allow(clippy::type_complexity)]
fn broken_mid_decode(
    wait: std::time::Duration,
) -> (
    Scheduler<Fake>,
    Submitter,
    Arc<Metrics>,
    Arc<Replan<Fake>>,
    [UnboundedReceiver<Event>; 3],
) {
    let mut c = cfg();
    c.max_batch = 2;
    let (s, sub, m) = sched(c, &[]);
    let r = Arc::new(Replan::with_recovery_wait(wait));
    let s = s.with_replan(r.clone());
    s.backend.fail_in.set(Some(2));
    let (a, rxa) = req(vec![1, 2, 3], 6);
    let (b, rxb) = req(vec![4, 5], 5);
    let (q, rxc) = req(vec![7], 2);
    sub.submit(a).unwrap();
    sub.submit(b).unwrap();
    sub.submit(q).unwrap();
    (s, sub, m, r, [rxa, rxb, rxc])
}

/// A re-planner that holds the engine and resumes it with `how` once idle.
fn replanner(r: &Arc<Replan<Fake>>, how: Resume<Fake>) -> std::thread::JoinHandle<()> {
    let r = r.clone();
    std::thread::spawn(move || {
        // As the node runtime does once the plan broke: it holds the engine.
        r.wait_recovering();
        assert!(r.hold());
        assert!(r.wait_idle(std::time::Duration::from_secs(30)));
        r.resume(how);
    })
}

#[test]
fn a_broken_step_loses_no_request_the_new_backend_replays_their_tokens() {
    let (mut s, _sub, m, r, [mut rxa, mut rxb, mut rxc]) =
        broken_mid_decode(std::time::Duration::from_secs(30));
    let new = Fake {
        calls: RefCell::new(Vec::new()),
        cuts: true,
        fail_in: Cell::new(None),
    };
    let planner = replanner(&r, Resume::Swap(new));
    run_all(&mut s);
    planner.join().unwrap();
    // Every request, the queued one too, gets what an undisturbed run gives.
    let (ea, eb, ec) = (drain(&mut rxa), drain(&mut rxb), drain(&mut rxc));
    assert_eq!(tokens(&ea), reference(&[1, 2, 3], 6, &[]), "{ea:?}");
    assert_eq!(tokens(&eb), reference(&[4, 5], 5, &[]), "{eb:?}");
    assert_eq!(tokens(&ec), reference(&[7], 2, &[]), "{ec:?}");
    for e in [&ea, &eb, &ec] {
        assert_eq!(e.last(), Some(&Event::Done(Finish::Length)), "{e:?}");
    }
    // The new backend's first pass rebuilt both caches in one step: each
    // sequence's prompt and the tokens it had sent.
    let calls = s.backend.calls.borrow();
    assert_eq!(calls.first(), Some(&vec![3 + 2, 2 + 2]), "{calls:?}");
    assert_eq!(m.recoveries.load(Relaxed), 1);
    assert_eq!(m.replayed_tokens.load(Relaxed), (3 + 1) + (2 + 1));
    assert!(!r.held());
}

#[test]
fn with_nobody_replanning_the_same_backend_rebuilds_the_caches() {
    let (mut s, _sub, m, _r, [mut rxa, mut rxb, _rxc]) =
        broken_mid_decode(std::time::Duration::from_millis(50));
    run_all(&mut s);
    assert_eq!(tokens(&drain(&mut rxa)), reference(&[1, 2, 3], 6, &[]));
    assert_eq!(tokens(&drain(&mut rxb)), reference(&[4, 5], 5, &[]));
    assert_eq!(m.recoveries.load(Relaxed), 1);
}

#[test]
fn when_no_plan_fits_the_running_requests_fail_with_the_reason_and_queued_ones_run() {
    let (mut s, _sub, _m, r, [mut rxa, mut rxb, mut rxc]) =
        broken_mid_decode(std::time::Duration::from_secs(30));
    let planner = replanner(&r, Resume::Failed("no plan fits 1 node".into()));
    run_all(&mut s);
    planner.join().unwrap();
    for rx in [&mut rxa, &mut rxb] {
        let e = drain(rx);
        assert!(
            matches!(e.last(), Some(Event::Failed(why)) if why.contains("lost") && why.contains("no plan fits")),
            "{e:?}"
        );
    }
    // The queued request waited and ran (here the fake backend works again).
    assert_eq!(tokens(&drain(&mut rxc)), reference(&[7], 2, &[]));
}

#[test]
fn a_request_whose_cache_keeps_breaking_fails_after_the_replay_bound() {
    let (mut s, _sub, _m, _r, [mut rxa, _rxb, _rxc]) =
        broken_mid_decode(std::time::Duration::from_millis(10));
    // Every pass from the third on fails.
    for _ in 0..=super::recover::MAX_REPLAYS {
        s.backend.fail_in.set(Some(0));
        s.admit(false);
        s.step();
        if s.active() == 0 {
            break;
        }
    }
    let e = drain(&mut rxa);
    assert!(
        matches!(e.last(), Some(Event::Failed(why)) if why.contains("rebuilt")),
        "{e:?}"
    );
}
