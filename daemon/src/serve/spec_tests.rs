//! Speculative decoding in the scheduler, driven by the fake model of
//! `scheduler_tests` and a drafter that is right only some of the time:
//! greedy output equals plain decoding, rejected drafts leave no trace in
//! the state, and sampled tokens keep the model's exact distribution.

use std::collections::HashMap;

use dwarfstar_model::draft::{DraftAsk, Drafter};
use dwarfstar_model::sampler::argmax;

use super::tests::{cfg, drain, next_logits, reference, req, run_all, sched_cutting, tokens};
use super::*;

/// Proposes the fake model's argmax, except where a hash of the position
/// says to propose the next token id instead (a wrong guess).
struct Guess;

impl Drafter for Guess {
    fn draft(&mut self, asks: &[DraftAsk<'_>]) -> dwarfstar_model::Result<Vec<Vec<u32>>> {
        Ok(asks
            .iter()
            .map(|a| {
                let mut h = a.history.to_vec();
                for _ in 0..a.k {
                    let mut t = argmax(&next_logits(&h));
                    if (h.len() * 2654435761) % 7 < 2 {
                        t = (t + 1) % super::tests::VOCAB as u32;
                    }
                    h.push(t);
                }
                h[a.history.len()..].to_vec()
            })
            .collect())
    }

    fn forget(&mut self, _seq: u64) {}
}

fn spec(max_tokens: usize) -> Speculation {
    // Every step drafts: the output must not depend on when it does.
    Speculation {
        drafter: Box::new(Guess),
        max_tokens,
        payoff: None,
    }
}

#[test]
fn greedy_output_is_unchanged_by_drafts() {
    for k in [1, 3, 6] {
        let (s, sub, m) = sched_cutting(cfg(), &[], true);
        let mut s = s.with_speculation(spec(k));
        let prompts: Vec<Vec<u32>> = (0..4u32)
            .map(|i| (0..3 + i).map(|j| (i * 5 + j * 3) % 16).collect())
            .collect();
        let mut rxs = Vec::new();
        for p in &prompts {
            let (r, rx) = req(p.clone(), 20);
            sub.submit(r).unwrap();
            rxs.push(rx);
        }
        run_all(&mut s);
        for (p, rx) in prompts.iter().zip(&mut rxs) {
            let ev = drain(rx);
            assert_eq!(tokens(&ev), reference(p, 20, &[]), "k {k}, prompt {p:?}");
            assert_eq!(ev.last(), Some(&Event::Done(Finish::Length)));
        }
        let (d, a) = (m.spec_drafted.load(Relaxed), m.spec_accepted.load(Relaxed));
        assert!(d > 0 && a > 0 && a < d, "k {k}: drafted {d}, accepted {a}");
    }
}

/// The positions of rejected drafts are cut from the state: a sequence's
/// state ends holding exactly its tokens, and the prefix cache serves a
/// later prompt from it.
#[test]
fn rejected_drafts_leave_the_state_as_plain_decoding_would() {
    let (s, sub, m) = sched_cutting(cfg(), &[], true);
    let mut s = s.with_speculation(spec(4));
    let prompt = vec![1, 2, 3, 4];
    let (r, mut rx) = req(prompt.clone(), 12);
    sub.submit(r).unwrap();
    let mut seen = 0;
    for _ in 0..100 {
        s.admit(false);
        if s.active() == 0 {
            break;
        }
        s.step();
        if let Some(q) = s.active.first() {
            // Every held position is one of the sequence's tokens, and
            // only the last sampled one waits.
            let held = s.backend.state_len(&q.state);
            assert_eq!(held + 1, q.history.len());
            assert_eq!(&q.state.tokens[..], &q.history[..held]);
            seen += 1;
        }
    }
    assert!(seen > 0);
    let out = tokens(&drain(&mut rx));
    assert_eq!(out, reference(&prompt, 12, &[]));
    // Continue the same text from the cache: the cached state is clean.
    let mut longer = prompt.clone();
    longer.extend_from_slice(&out);
    longer.push(5);
    let (r, mut rx) = req(longer.clone(), 6);
    sub.submit(r).unwrap();
    run_all(&mut s);
    let ev = drain(&mut rx);
    assert!(matches!(ev[0], Event::Started { cached_tokens } if cached_tokens >= prompt.len()));
    assert_eq!(tokens(&ev), reference(&longer, 6, &[]));
    assert!(m.spec_drafted.load(Relaxed) > m.spec_accepted.load(Relaxed));
}

/// Drafting stops where max_tokens and the context do, and an
/// end-of-generation token among accepted drafts ends the sequence there.
#[test]
fn drafts_respect_max_tokens_context_and_stop_tokens() {
    let prompt = vec![3, 1, 4, 1, 5];
    let plain = reference(&prompt, 30, &[]);
    // max_tokens: exactly n tokens come out, whatever k.
    for n in [1, 2, 5] {
        let (s, sub, _) = sched_cutting(cfg(), &[], true);
        let mut s = s.with_speculation(spec(6));
        let (r, mut rx) = req(prompt.clone(), n);
        sub.submit(r).unwrap();
        run_all(&mut s);
        assert_eq!(tokens(&drain(&mut rx)), plain[..n]);
    }
    // A stop token: output ends at its first occurrence.
    let stop = plain[6];
    let want = reference(&prompt, 30, &[stop]);
    let (s, sub, _) = sched_cutting(cfg(), &[stop], true);
    let mut s = s.with_speculation(spec(6));
    let (r, mut rx) = req(prompt.clone(), 30);
    sub.submit(r).unwrap();
    run_all(&mut s);
    let ev = drain(&mut rx);
    assert_eq!(tokens(&ev), want);
    assert_eq!(ev.last(), Some(&Event::Done(Finish::Stop)));
    // The context: a small one ends the sequence by length, never full.
    let small = SchedConfig {
        ctx_size: 12,
        ..cfg()
    };
    let (s, sub, _) = sched_cutting(small, &[], true);
    let mut s = s.with_speculation(spec(6));
    let (r, mut rx) = req(prompt.clone(), 30);
    sub.submit(r).unwrap();
    run_all(&mut s);
    let ev = drain(&mut rx);
    assert_eq!(ev.last(), Some(&Event::Done(Finish::Length)), "{ev:?}");
    assert_eq!(tokens(&ev), plain[..8]);
}

/// States that cannot be cut back run without drafts.
#[test]
fn uncuttable_states_decode_without_drafts() {
    let (s, sub, m) = sched_cutting(cfg(), &[], false);
    let mut s = s.with_speculation(spec(3));
    let (r, mut rx) = req(vec![1, 2, 3], 8);
    sub.submit(r).unwrap();
    run_all(&mut s);
    assert_eq!(tokens(&drain(&mut rx)), reference(&[1, 2, 3], 8, &[]));
    assert_eq!(m.spec_drafted.load(Relaxed), 0);
}

/// The softmax of the fake model's logits at temperature 1.
fn probs(tokens: &[u32]) -> Vec<f64> {
    let l = next_logits(tokens);
    let e: Vec<f64> = l.iter().map(|&v| (v as f64).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// Temperature sampling with drafts keeps the model's distribution: over
/// seeds 0..4000, the joint distribution of the second and third tokens
/// (both decided by the acceptance rule: two drafts after the first token)
/// passes a chi-square test against the exact one computed from the fake
/// model's logits. The seeds are fixed, so the test is deterministic; the
/// bound is the 1e-6 tail of chi-square with 255 degrees of freedom
/// (Wilson–Hilferty: 377), far above what a correct rule gives here and far
/// below what accepting drafts outright gives (checked below).
#[test]
fn sampling_with_drafts_keeps_the_distribution() {
    const N: u64 = 4000;
    let vocab = super::tests::VOCAB;
    let prompt = vec![7u32, 3, 9];
    let mut exact = vec![0f64; vocab * vocab];
    let p1 = probs(&prompt);
    for (t1, &q1) in p1.iter().enumerate() {
        let h1 = [&prompt[..], &[t1 as u32]].concat();
        let p2 = probs(&h1);
        for (t2, &q2) in p2.iter().enumerate() {
            let p3 = probs(&[&h1[..], &[t2 as u32]].concat());
            for (t3, &q3) in p3.iter().enumerate() {
                exact[t2 * vocab + t3] += q1 * q2 * q3;
            }
        }
    }
    let run = |speculate: bool| -> (Vec<u64>, u64, u64) {
        let (s, sub, m) = sched_cutting(cfg(), &[], true);
        let mut s = if speculate {
            s.with_speculation(spec(3))
        } else {
            s
        };
        let mut counts = vec![0u64; vocab * vocab];
        for seed in 0..N {
            let (mut r, mut rx) = req(prompt.clone(), 4);
            r.sampler = SamplerConfig {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed,
                ..SamplerConfig::default()
            };
            sub.submit(r).unwrap();
            run_all(&mut s);
            let t = tokens(&drain(&mut rx));
            assert_eq!(t.len(), 4);
            counts[t[1] as usize * vocab + t[2] as usize] += 1;
        }
        (
            counts,
            m.spec_drafted.load(Relaxed),
            m.spec_accepted.load(Relaxed),
        )
    };
    let chi2 = |counts: &[u64]| -> f64 {
        counts
            .iter()
            .zip(&exact)
            .map(|(&c, &p)| {
                let e = p * N as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum()
    };
    let (plain, _, _) = run(false);
    let (spec_counts, drafted, accepted) = run(true);
    let (x_plain, x_spec) = (chi2(&plain), chi2(&spec_counts));
    eprintln!(
        "chi-square: plain {x_plain:.1}, speculative {x_spec:.1} (bound 377); drafts {drafted}, \
         accepted {accepted}"
    );
    assert!(
        x_plain < 377.0,
        "plain sampling fails its own test: {x_plain}"
    );
    assert!(x_spec < 377.0, "speculative sampling drifted: {x_spec}");
    assert!(drafted > N && accepted > 0 && accepted < drafted);
    // What taking every draft would give: the drafter's choices, which
    // the test tells apart at once.
    let mut greedy_draft = vec![0u64; vocab * vocab];
    let mut by_first: HashMap<u32, u64> = HashMap::new();
    for (i, &c) in spec_counts.iter().enumerate() {
        *by_first.entry((i / vocab) as u32).or_default() += c;
    }
    for (&t2, &c) in &by_first {
        let h = [&prompt[..], &[0, t2]].concat();
        greedy_draft[t2 as usize * vocab + argmax(&next_logits(&h)) as usize] += c;
    }
    assert!(chi2(&greedy_draft) > 10.0 * 377.0);
}
