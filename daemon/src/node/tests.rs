//! The pipeline without sockets: a coordinator backend chained to stage
//! workers in one process gives the single-node logits bit for bit, and a
//! stage refuses steps a hostile or confused peer could send.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use dwarfstar_model::Model;

use super::backend::DistBackend;
use super::pipeline::{Hop, Span, StageHost, StageLimits, StageWorker, Step, Want};
use crate::serve::scheduler::Backend;

const LIMITS: StageLimits = StageLimits {
    ctx_size: 256,
    max_seqs: 8,
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn smollm2() -> Option<Arc<Model>> {
    let dir = std::env::var_os("DWARFSTAR_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("models"));
    let p = dir.join("SmolLM2-135M-Instruct-Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run deploy/fetch-models.sh",
        p.display()
    );
    Some(Arc::new(Model::open(&p, &[]).ok()?.0))
}

fn tiny_v4() -> Arc<Model> {
    let p = repo().join("tests/fixtures/tiny-deepseek-v4/tiny-dsv4-Q8_0.gguf");
    Arc::new(Model::open(&p, &[]).expect("fixture loads").0)
}

fn tiny_v3() -> Arc<Model> {
    let p = repo().join("tests/fixtures/tiny-deepseek-v3/tiny-dsv3-q8_0.gguf");
    Arc::new(Model::open(&p, &[]).expect("fixture loads").0)
}

/// Stages `[0, a)` here, then `[a, b)` and `[b, n)` on two "nodes".
fn chain(m: &Arc<Model>, a: usize, b: usize) -> DistBackend {
    let n = m.n_layer();
    let last = StageWorker {
        host: Mutex::new(StageHost::new(m.clone(), b..n, true, 7, LIMITS).unwrap()),
        next: None,
    };
    let mid = StageWorker {
        host: Mutex::new(StageHost::new(m.clone(), a..b, false, 7, LIMITS).unwrap()),
        next: Some(Arc::new(last)),
    };
    DistBackend::new(m.clone(), 0..a, Some(Arc::new(mid)), false, 7)
}

/// Two sequences batched, prompt then two decode steps, a rewind and a
/// clone: every logits vector equals the single-node backend's.
fn same_as_local(m: &Arc<Model>, a: usize, b: usize) {
    let d = chain(m, a, b);
    let p1: Vec<u32> = vec![1, 504, 2933, 22, 1392, 3240];
    let p2: Vec<u32> = vec![7, 8, 9];
    let mut l1 = m.new_state(256);
    let mut l2 = m.new_state(256);
    let mut d1 = d.new_state(256);
    let mut d2 = d.new_state(256);
    let local = |items: &mut [(&[u32], &mut dwarfstar_model::SeqState, bool)]| {
        Backend::forward_batch(&**m, items).unwrap()
    };
    let want = local(&mut [(&p1, &mut l1, false), (&p2, &mut l2, true)]);
    let got = d
        .forward_batch(&mut [(&p1, &mut d1, false), (&p2, &mut d2, true)])
        .unwrap();
    assert_eq!(got, want);
    for t in [42u32, 43] {
        let want = local(&mut [(&[t], &mut l1, false), (&[t + 1], &mut l2, false)]);
        let got = d
            .forward_batch(&mut [(&[t], &mut d1, false), (&[t + 1], &mut d2, false)])
            .unwrap();
        assert_eq!(got, want);
    }
    // Rewind two positions and run something else.
    Backend::truncate(&**m, &mut l1, 5);
    d.truncate(&mut d1, 5);
    let want = local(&mut [(&[99, 100], &mut l1, true)]);
    assert_eq!(
        d.forward_batch(&mut [(&[99, 100], &mut d1, true)]).unwrap(),
        want
    );
    // A clone (prompt-cache hit) continues independently of its source.
    let mut lc = Backend::clone_state(&**m, &l2);
    let mut dc = d.clone_state(&d2);
    Backend::truncate(&**m, &mut lc, 2);
    d.truncate(&mut dc, 2);
    let want = local(&mut [(&[5], &mut lc, false), (&[6], &mut l2, false)]);
    let got = d
        .forward_batch(&mut [(&[5], &mut dc, false), (&[6], &mut d2, false)])
        .unwrap();
    assert_eq!(got, want);
}

/// A hop that fails its `fail_at`-th call (counting from 1), as a lost
/// peer would, after the stages before it already ran.
struct FlakyHop {
    inner: Arc<dyn Hop>,
    calls: std::sync::atomic::AtomicUsize,
    fail_at: usize,
}

impl Hop for FlakyHop {
    fn call(&self, step: Step) -> super::error::Result<Vec<f32>> {
        let n = self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if n == self.fail_at {
            return Err(super::error::NodeError::NotReady(
                "the peer went away".into(),
            ));
        }
        self.inner.call(step)
    }

    fn release(&self, seqs: &[u64]) {
        self.inner.release(seqs)
    }
}

/// A step that fails past the first stage is taken back everywhere: the
/// retry (and the steps after it) give the single-node logits. DeepSeek V4
/// replays its kept tokens; the others rewind.
#[test]
fn a_failed_step_is_retried_exactly() {
    for m in [tiny_v3(), tiny_v4()] {
        let n = m.n_layer();
        let last = StageWorker {
            host: Mutex::new(StageHost::new(m.clone(), 2..n, true, 7, LIMITS).unwrap()),
            next: None,
        };
        let mid = StageWorker {
            host: Mutex::new(StageHost::new(m.clone(), 1..2, false, 7, LIMITS).unwrap()),
            next: Some(Arc::new(FlakyHop {
                inner: Arc::new(last),
                calls: Default::default(),
                fail_at: 2,
            })),
        };
        let d = DistBackend::new(m.clone(), 0..1, Some(Arc::new(mid)), false, 7);
        let prompt: Vec<u32> = vec![1, 504, 2933, 22, 1392, 3240];
        let mut l = m.new_state(256);
        let mut s = d.new_state(256);
        let local = |t: &[u32], st: &mut dwarfstar_model::SeqState| {
            Backend::forward_batch(&*m, &mut [(t, st, true)]).unwrap()
        };
        assert_eq!(
            d.forward_batch(&mut [(&prompt, &mut s, true)]).unwrap(),
            local(&prompt, &mut l)
        );
        let next: Vec<u32> = vec![42, 43, 44];
        assert!(d.forward_batch(&mut [(&next, &mut s, true)]).is_err());
        assert_eq!(d.state_len(&s), prompt.len());
        let want = local(&next, &mut l);
        assert_eq!(
            d.forward_batch(&mut [(&next, &mut s, true)]).unwrap(),
            want,
            "{}",
            m.arch()
        );
        let want = local(&[7], &mut l);
        assert_eq!(
            d.forward_batch(&mut [(&[7], &mut s, true)]).unwrap(),
            want,
            "{}",
            m.arch()
        );
    }
}

#[test]
fn split_pipeline_matches_one_node_smollm2() {
    let m = smollm2().unwrap();
    let n = m.n_layer();
    same_as_local(&m, n / 3, 2 * n / 3);
    same_as_local(&m, 0, n / 2);
}

#[test]
fn split_pipeline_matches_one_node_deepseek_v3() {
    let m = tiny_v3();
    same_as_local(&m, 1, 2);
}

/// DeepSeek V4: hyper-connection rows and token ids travel between stages;
/// its rewinds and clones replay the kept tokens through every stage.
#[test]
fn split_pipeline_matches_one_node_deepseek_v4() {
    let m = tiny_v4();
    let n = m.n_layer();
    assert!(n >= 3, "{n} layers");
    same_as_local(&m, 1, n - 1);
    same_as_local(&m, 0, n / 2);
}

fn step(m: &Model, layer: u32, spans: Vec<Span>) -> Step {
    let rows: u32 = spans.iter().map(|s| s.rows).sum();
    Step {
        plan_version: 7,
        layer,
        spans,
        tokens: vec![1; rows as usize],
        x: vec![0.01; rows as usize * m.n_embd()],
    }
}

fn span(seq: u64, rows: u32, pos0: u32) -> Span {
    Span {
        request: None,
        seq,
        rows,
        pos0,
        want: Want::Last,
        fork: None,
    }
}

#[test]
fn stages_refuse_bad_steps() {
    let m = tiny_v3();
    let n = m.n_layer() as u32;
    let mut h = StageHost::new(m.clone(), 1..n as usize, true, 7, LIMITS).unwrap();
    let bad = |h: &mut StageHost, mut s: Step| h.run(&mut s).unwrap_err().to_string();
    // Another plan, another first layer, rows that do not add up.
    let mut s = step(&m, 1, vec![span(1, 2, 0)]);
    s.plan_version = 6;
    assert!(bad(&mut h, s).contains("plan version"));
    assert!(bad(&mut h, step(&m, 0, vec![span(1, 2, 0)])).contains("layer"));
    let mut s = step(&m, 1, vec![span(1, 2, 0)]);
    s.x.pop();
    assert!(bad(&mut h, s).contains("rows"));
    // Rows without their token ids, or with ids outside the vocabulary.
    let mut s = step(&m, 1, vec![span(1, 2, 0)]);
    s.tokens.pop();
    assert!(bad(&mut h, s).contains("token ids"));
    let mut s = step(&m, 1, vec![span(1, 2, 0)]);
    s.tokens[1] = m.n_vocab() as u32;
    assert!(bad(&mut h, s).contains("vocabulary"));
    // A gap in positions, past the context, a repeated sequence, empty spans.
    assert!(bad(&mut h, step(&m, 1, vec![span(1, 2, 3)])).contains("holds 0"));
    assert!(bad(&mut h, step(&m, 1, vec![span(1, 2, 255)])).contains("context"));
    assert!(bad(&mut h, step(&m, 1, vec![span(1, 1, 0), span(1, 1, 0)])).contains("repeated"));
    assert!(bad(&mut h, step(&m, 1, vec![])).contains("rows"));
    // Too many sequences at once.
    let many = (0..9).map(|i| span(100 + i, 1, 0)).collect();
    assert!(bad(&mut h, step(&m, 1, many)).contains("sequences"));
    // Nothing was kept from the refused steps; a good one runs.
    assert_eq!(h.n_seqs(), 0);
    let mut s = step(&m, 1, vec![span(1, 2, 0)]);
    h.run(&mut s).unwrap();
    assert_eq!(s.layer, n);
    assert_eq!(h.logits(&s).unwrap().len(), m.n_vocab());
    h.release(&[1]);
    assert_eq!(h.n_seqs(), 0);
    assert!(StageHost::new(m.clone(), 2..99, true, 7, LIMITS).is_err());
}

/// Tiny V3 with layer 0 on the coordinator and the rest on one stage.
fn coordinator_and_last_stage(m: &Arc<Model>) -> (DistBackend, Arc<StageWorker>) {
    let last = Arc::new(StageWorker {
        host: Mutex::new(StageHost::new(m.clone(), 1..m.n_layer(), true, 7, LIMITS).unwrap()),
        next: None,
    });
    let next = Some(last.clone() as Arc<dyn Hop>);
    (DistBackend::new(m.clone(), 0..1, next, false, 7), last)
}

#[test]
fn released_sequences_free_their_stage_caches() {
    let m = tiny_v3();
    let (d, last) = coordinator_and_last_stage(&m);
    let mut a = d.new_state(64);
    let mut b = d.new_state(64);
    d.forward_batch(&mut [(&[1, 2, 3], &mut a, false), (&[4], &mut b, false)])
        .unwrap();
    assert_eq!(last.host.lock().unwrap().n_seqs(), 2);
    drop(a);
    d.forward_batch(&mut [(&[5], &mut b, false)]).unwrap();
    assert_eq!(last.host.lock().unwrap().n_seqs(), 1);
}

/// Runs `prompts` one after another through a scheduler with a prefix
/// cache over `b`: each request's cached prompt tokens and greedy tokens.
fn serve_in_turn<B: Backend>(b: B, prompts: &[Vec<u32>]) -> Vec<(usize, Vec<u32>)> {
    use crate::serve::metrics::Metrics;
    use crate::serve::scheduler::{queue, Event, GenRequest, SchedConfig, Scheduler};
    let metrics = Arc::new(Metrics::new());
    let (sub, rx) = queue(4, metrics.clone());
    let cfg = SchedConfig {
        max_batch: 4,
        prefill_chunk: 8,
        ctx_size: 64,
        cache_entries: 2,
        cache_bytes: 64 << 20,
        min_prefix: 4,
        kv_positions: usize::MAX,
    };
    let eog = vec![false; 1 << 17];
    let mut s = Scheduler::new(b, cfg, eog, rx, metrics);
    let mut out = Vec::new();
    for p in prompts {
        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        sub.submit(GenRequest {
            prompt: p.clone(),
            max_tokens: 6,
            sampler: dwarfstar_model::SamplerConfig::greedy(),
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            ignore_eos: true,
            constraint: None,
            logprobs: None,
            events: tx,
            request_id: None,
        })
        .unwrap();
        loop {
            s.admit(false);
            if s.active() == 0 {
                break;
            }
            s.step();
        }
        let (mut cached, mut toks) = (usize::MAX, Vec::new());
        while let Ok(e) = events.try_recv() {
            match e {
                Event::Started { cached_tokens } => cached = cached_tokens,
                Event::Token(t) => toks.push(t),
                Event::Failed(f) => panic!("request failed: {f}"),
                Event::Done(_) | Event::Logprobs(_) => {}
            }
        }
        out.push((cached, toks));
    }
    out
}

/// The prefix cache over a split pipeline: a prompt sharing a cached
/// sequence's start forks it on every stage and continues from there, with
/// the tokens one node gives; the cached source stays alive on the stages
/// until the cache lets it go.
#[test]
fn a_cached_prefix_is_reused_across_the_pipeline() {
    let m = tiny_v3();
    let (d, last) = coordinator_and_last_stage(&m);
    let system: Vec<u32> = (0..12).map(|i| 100 + 37 * i).collect();
    let with = |tail: &[u32]| [system.as_slice(), tail].concat();
    let prompts = vec![
        with(&[5, 6]),
        with(&[7, 8, 9]),
        with(&[7, 8, 9]),
        vec![3, 1, 4, 1, 5, 9, 2, 6],
        vec![2, 7, 1, 8, 2, 8, 1, 8],
    ];
    let want = serve_in_turn(m.clone(), &prompts);
    let got = serve_in_turn(d, &prompts);
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(g.1, w.1, "request {i}: tokens differ from one node");
        assert_eq!(g.0, w.0, "request {i}: cached tokens differ from one node");
    }
    // The shared start came from the cache, and the whole prompt the third time.
    assert_eq!(got[1].0, system.len());
    assert_eq!(got[2].0, prompts[2].len() - 1);
    assert_eq!(got[3].0, 0);
    // Five sequences ran; the stage kept only what the two-entry cache
    // holds, plus the one it evicted last (released with the next step).
    let held = last.host.lock().unwrap().n_seqs();
    assert!((2..=3).contains(&held), "the stage holds {held} sequences");
}

/// Pools `tokens` through a scheduler over `b` (prompt chunks of 3).
fn embed_through_engine<B: Backend>(b: B, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, String> {
    use crate::serve::metrics::Metrics;
    use crate::serve::scheduler::{queue, EmbedRequest, SchedConfig, Scheduler};
    let metrics = Arc::new(Metrics::new());
    let (sub, rx) = queue(4, metrics.clone());
    let cfg = SchedConfig {
        max_batch: 4,
        prefill_chunk: 3,
        ctx_size: 64,
        cache_entries: 2,
        cache_bytes: 64 << 20,
        min_prefix: 4,
        kv_positions: usize::MAX,
    };
    let mut s = Scheduler::new(b, cfg, vec![false; 1 << 17], rx, metrics);
    let (tx, mut reply) = tokio::sync::oneshot::channel();
    sub.embed(EmbedRequest {
        inputs: inputs.to_vec(),
        reply: tx,
    })
    .unwrap();
    s.admit(false);
    reply.try_recv().expect("the engine answered")
}

/// The pooled embedding computed by hand: every layer in one pass, rows
/// that give the model's own logits, the final norm, their mean scaled to
/// unit length.
fn embed_by_hand(m: &Model, tokens: &[u32]) -> Vec<f32> {
    let mut st = m.new_state(64);
    let mut x = m.embed(tokens).unwrap();
    m.forward_layers(0..m.n_layer(), &mut x, &mut [(tokens, &mut st)])
        .unwrap();
    let want = m.forward(tokens, &mut m.new_state(64), true).unwrap();
    let got = m.logits(&x).unwrap();
    let worst = want
        .iter()
        .zip(&got)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst < 1e-3,
        "the rows are not the final hidden state ({worst})"
    );
    let h = m.final_norm(&x).unwrap();
    let d = h.len() / tokens.len();
    let mut mean = vec![0.0f64; d];
    for r in h.chunks_exact(d) {
        for (s, &v) in mean.iter_mut().zip(r) {
            *s += f64::from(v) / tokens.len() as f64;
        }
    }
    let norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
    mean.iter().map(|v| (v / norm) as f32).collect()
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: widths differ");
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "{what}: off by {worst}");
}

/// Embeddings through the engine (prompt chunks, one node and a pipeline
/// whose coordinator holds the output head) equal the hand computation,
/// for a dense model, DeepSeek V3 and V4 (whose rows carry several streams).
#[test]
fn embeddings_pool_the_final_normed_rows_on_one_node_and_a_pipeline() {
    let inputs = vec![vec![1, 2, 3, 4, 5, 6, 7], vec![42], vec![9, 8, 7, 6]];
    let mut models = vec![("v3", tiny_v3()), ("v4", tiny_v4())];
    if let Some(m) = smollm2() {
        models.push(("smollm2", m));
    }
    for (name, m) in models {
        let want: Vec<Vec<f32>> = inputs.iter().map(|t| embed_by_hand(&m, t)).collect();
        let one = embed_through_engine(m.clone(), &inputs).unwrap();
        let last = StageWorker {
            host: Mutex::new(StageHost::new(m.clone(), 1..m.n_layer(), false, 7, LIMITS).unwrap()),
            next: None,
        };
        let d = DistBackend::new(m.clone(), 0..1, Some(Arc::new(last)), true, 7);
        let split = embed_through_engine(d, &inputs).unwrap();
        for i in 0..inputs.len() {
            let norm: f32 = one[i].iter().map(|v| v * v).sum();
            assert!((norm - 1.0).abs() < 1e-4, "{name}: not unit length");
            assert_close(&one[i], &want[i], &format!("{name} input {i}, one node"));
            assert_close(&split[i], &want[i], &format!("{name} input {i}, pipeline"));
        }
    }
    // Where the last stage holds the head it answers with logits: refused.
    let m = tiny_v3();
    let e = embed_through_engine(chain(&m, 1, 2), &inputs).unwrap_err();
    assert!(e.contains("output head"), "{e}");
}
