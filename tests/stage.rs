//! A model split across "nodes" in one process: pipeline stages over layer
//! ranges, and routed experts run by another model instance through
//! `ExpertDispatch`, give the whole model's logits bit for bit (SmolLM2,
//! tiny DeepSeek V3 and V4).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dwarfstar_model::{ExpertBatch, ExpertDispatch, ExpertTicket, Model, ModelError, SeqState};

use crate::common::{fixtures, load, SMOLLM2};

fn tiny_v3(name: &str) -> Model {
    let p = fixtures().join("tiny-deepseek-v3").join(name);
    Model::open(&p, &[]).expect("tiny DeepSeek V3 loads").0
}

fn tiny_v4(name: &str) -> Model {
    let p = fixtures().join("tiny-deepseek-v4").join(name);
    Model::open(&p, &[]).expect("tiny DeepSeek V4 loads").0
}

const TOKENS: [u32; 12] = [1, 504, 2933, 22, 1392, 3240, 288, 17, 99, 1001, 7, 42];

/// Runs `tokens` as two pipeline stages with separate states, as two nodes
/// would, then decodes one more token the same way.
fn two_stages(m: &Model, split: usize, tokens: &[u32], next: u32) -> (Vec<f32>, Vec<f32>) {
    let n_layer = m.n_layer();
    let mut s0 = m.new_state(64);
    let mut s1 = m.new_state(64);
    let step = |toks: &[u32], s0: &mut SeqState, s1: &mut SeqState| {
        let mut x = m.embed(toks).unwrap();
        let n = toks.len();
        let mut a = [(toks, &mut *s0)];
        m.forward_layers(0..split, &mut x, &mut a).unwrap();
        m.finish_step(&mut a);
        let mut b = [(toks, &mut *s1)];
        m.forward_layers(split..n_layer, &mut x, &mut b).unwrap();
        m.finish_step(&mut b);
        let e = m.n_embd();
        m.logits(&x[(n - 1) * e..]).unwrap()
    };
    let first = step(tokens, &mut s0, &mut s1);
    let second = step(&[next], &mut s0, &mut s1);
    (first, second)
}

fn whole(m: &Model, tokens: &[u32], next: u32) -> (Vec<f32>, Vec<f32>) {
    let mut s = m.new_state(64);
    let a = m.forward(tokens, &mut s, false).unwrap();
    let b = m.forward(&[next], &mut s, false).unwrap();
    (a, b)
}

#[test]
fn pipeline_stages_equal_the_whole_model_smollm2() {
    let l = load(SMOLLM2);
    let m = &l.model;
    let want = whole(m, &TOKENS, 314);
    for split in [1, m.n_layer() / 2, m.n_layer() - 1] {
        assert_eq!(two_stages(m, split, &TOKENS, 314), want, "split at {split}");
    }
}

#[test]
fn pipeline_stages_equal_the_whole_model_deepseek_v3() {
    let m = tiny_v3("tiny-dsv3-q8_0.gguf");
    let want = whole(&m, &TOKENS, 77);
    for split in 1..m.n_layer() {
        assert_eq!(two_stages(&m, split, &TOKENS, 77), want, "split at {split}");
    }
}

/// DeepSeek V4's stages pass its hyper-connection streams and the token ids
/// its hash-routed layers read; every split equals the whole model.
#[test]
fn pipeline_stages_equal_the_whole_model_deepseek_v4() {
    for file in ["tiny-dsv4-f32.gguf", "tiny-dsv4-Q8_0.gguf"] {
        let m = tiny_v4(file);
        assert_eq!(m.n_embd() % m.expert_width(), 0);
        assert!(m.n_embd() > m.expert_width(), "the streams travel");
        let want = whole(&m, &TOKENS, 77);
        for split in 1..m.n_layer() {
            assert_eq!(
                two_stages(&m, split, &TOKENS, 77),
                want,
                "{file}: split at {split}"
            );
        }
    }
}

/// Odd experts "live" on node 1, an independent instance of the model.
struct OtherNode {
    holder: Model,
    calls: AtomicUsize,
}

struct Done(dwarfstar_model::Result<Vec<f32>>);

impl ExpertTicket for Done {
    fn wait(self: Box<Self>) -> dwarfstar_model::Result<Vec<f32>> {
        self.0
    }
}

impl ExpertDispatch for OtherNode {
    fn owner(&self, _il: usize, e: usize) -> Option<u32> {
        (e % 2 == 1).then_some(1)
    }
    fn submit(
        &self,
        node: u32,
        il: usize,
        batch: ExpertBatch,
    ) -> dwarfstar_model::Result<Box<dyn ExpertTicket>> {
        assert_eq!(node, 1);
        assert!(batch.experts.iter().all(|e| e % 2 == 1));
        self.calls.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(Done(self.holder.run_experts(il, &batch))))
    }
}

#[test]
fn remote_experts_equal_local_experts_deepseek_v3() {
    for file in ["tiny-dsv3-f32.gguf", "tiny-dsv3-Q4_K_M.gguf"] {
        let local = tiny_v3(file);
        let want = whole(&local, &TOKENS, 77);
        let mut split = tiny_v3(file);
        let other = Arc::new(OtherNode {
            holder: tiny_v3(file),
            calls: AtomicUsize::new(0),
        });
        split.set_expert_dispatch(Some(other.clone())).unwrap();
        assert_eq!(whole(&split, &TOKENS, 77), want, "{file}");
        assert!(
            other.calls.load(Ordering::Relaxed) > 0,
            "no expert went remote"
        );
    }
}

/// V4's routed experts on another instance (hash-routed layers included)
/// equal local ones bit for bit; the shared expert stays here.
#[test]
fn remote_experts_equal_local_experts_deepseek_v4() {
    for file in ["tiny-dsv4-f32.gguf", "tiny-dsv4-Q8_0.gguf"] {
        let local = tiny_v4(file);
        let want = whole(&local, &TOKENS, 77);
        let mut split = tiny_v4(file);
        let other = Arc::new(OtherNode {
            holder: tiny_v4(file),
            calls: AtomicUsize::new(0),
        });
        split.set_expert_dispatch(Some(other.clone())).unwrap();
        assert_eq!(whole(&split, &TOKENS, 77), want, "{file}");
        // Every layer of the prompt sends its odd experts, and one more
        // token does again.
        let calls = other.calls.load(Ordering::Relaxed);
        assert!(calls >= split.n_layer(), "{calls} remote batches");
        // Pipeline stages and remote experts together.
        assert_eq!(two_stages(&split, 1, &TOKENS, 77), want, "{file}");
    }
}

/// Runs every expert locally but fails the `fail_at`-th remote call (as a
/// lost peer would), counting from 1.
struct FlakyNode {
    holder: Model,
    calls: AtomicUsize,
    fail_at: AtomicUsize,
}

impl ExpertDispatch for FlakyNode {
    fn owner(&self, _il: usize, e: usize) -> Option<u32> {
        (e % 2 == 1).then_some(1)
    }
    fn submit(
        &self,
        _node: u32,
        il: usize,
        batch: ExpertBatch,
    ) -> dwarfstar_model::Result<Box<dyn ExpertTicket>> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.fail_at.load(Ordering::Relaxed) {
            return Err(ModelError::Invalid("the expert holder went away".into()));
        }
        Ok(Box::new(Done(self.holder.run_experts(il, &batch))))
    }
}

/// A V4 step that fails midway (some layers already wrote their windows
/// and compressors) leaves no half-written state: the retry recomputes,
/// and it and the steps after it (a compressed block completes in them)
/// give the whole model's logits.
#[test]
fn a_failed_deepseek_v4_step_leaves_no_half_written_state() {
    let file = "tiny-dsv4-Q8_0.gguf";
    let next: [u32; 4] = [77, 5, 6, 7];
    let reference = tiny_v4(file);
    let mut r = reference.new_state(64);
    reference.forward(&TOKENS, &mut r, false).unwrap();
    let want_next = reference.forward(&next, &mut r, true).unwrap();
    let want_after = reference.forward(&[8], &mut r, false).unwrap();

    let mut m = tiny_v4(file);
    let flaky = Arc::new(FlakyNode {
        holder: tiny_v4(file),
        calls: AtomicUsize::new(0),
        fail_at: AtomicUsize::new(0),
    });
    m.set_expert_dispatch(Some(flaky.clone())).unwrap();
    let fail_second_call = || {
        let done = flaky.calls.load(Ordering::Relaxed);
        flaky.fail_at.store(done + 2, Ordering::Relaxed);
    };
    // Whole-model calls.
    let mut s = m.new_state(64);
    m.forward(&TOKENS, &mut s, false).unwrap();
    fail_second_call();
    assert!(m.forward(&next, &mut s, true).is_err());
    assert_eq!(s.len(), TOKENS.len(), "the failed tokens did not join");
    assert_eq!(m.forward(&next, &mut s, true).unwrap(), want_next);
    assert_eq!(m.forward(&[8], &mut s, false).unwrap(), want_after);
    // A stage's call.
    let mut s = m.new_state(64);
    m.forward(&TOKENS, &mut s, false).unwrap();
    fail_second_call();
    let mut x = m.embed(&next).unwrap();
    assert!(m
        .forward_layers(0..m.n_layer(), &mut x, &mut [(&next[..], &mut s)])
        .is_err());
    assert_eq!(s.held(), 0, "the state was dropped");
    assert_eq!(s.pending(), &TOKENS[..], "its tokens are kept");
    assert_eq!(m.forward(&next, &mut s, true).unwrap(), want_next);
    assert_eq!(m.forward(&[8], &mut s, false).unwrap(), want_after);
}

#[test]
fn bad_expert_batches_are_refused() {
    let m = tiny_v3("tiny-dsv3-f32.gguf");
    let d = m.n_embd();
    let moe = (0..m.n_layer()).find(|&il| m.is_moe_layer(il)).unwrap();
    let bad_rows = ExpertBatch {
        d,
        experts: vec![0],
        counts: vec![2],
        rows: vec![0.0; d],
    };
    assert!(matches!(
        m.run_experts(moe, &bad_rows),
        Err(ModelError::Invalid(_))
    ));
    let bad_expert = ExpertBatch {
        d,
        experts: vec![10_000],
        counts: vec![1],
        rows: vec![0.0; d],
    };
    assert!(m.run_experts(moe, &bad_expert).is_err());
    let dense_layer = ExpertBatch {
        d,
        experts: vec![0],
        counts: vec![1],
        rows: vec![0.0; d],
    };
    assert!(m.run_experts(0, &dense_layer).is_err() || m.is_moe_layer(0));
    let l = load(SMOLLM2);
    assert!(l.model.run_experts(0, &dense_layer).is_err());
    // V4's expert rows are n_embd wide, not the hyper-connection streams.
    let v4 = tiny_v4("tiny-dsv4-Q8_0.gguf");
    let e = v4.expert_width();
    let streams = ExpertBatch {
        d: v4.n_embd(),
        experts: vec![0],
        counts: vec![1],
        rows: vec![0.0; v4.n_embd()],
    };
    assert!(v4.run_experts(0, &streams).is_err());
    let ok = ExpertBatch {
        d: e,
        experts: vec![0],
        counts: vec![1],
        rows: vec![0.01; e],
    };
    assert_eq!(v4.run_experts(0, &ok).unwrap().len(), e);
    assert!(v4.run_experts(v4.n_layer(), &ok).is_err());
    let bad_expert = ExpertBatch {
        experts: vec![v4.n_expert() as u32],
        ..ok
    };
    assert!(v4.run_experts(0, &bad_expert).is_err());
}
