//! The cost terms beyond the roofline: fixed per-layer and per-step costs,
//! skewed expert-cache hits, batched decode over several streams, prefill
//! for time to first token, and head-parallel attention.

use super::*;
use crate::{plan, plan_and_predict, plan_with, CostTerms, NodeTerms, PredictOptions};

fn one_node(model: ModelShape, n: NodeCaps) -> PlanRequest {
    let id = n.id.clone();
    PlanRequest::new(model, vec![n], Vec::new(), id)
}

fn terms(id: &str, layer: f64, step: f64, batch_gflops: f64) -> CostTerms {
    CostTerms {
        nodes: [(
            id.to_string(),
            NodeTerms {
                layer_overhead_s: layer,
                step_overhead_s: step,
                batch_gflops,
            },
        )]
        .into_iter()
        .collect(),
        expert_skew: 0.0,
    }
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-9 + 1e-9 * b.abs(), "{what}: {a} vs {b}");
}

#[test]
fn default_terms_change_nothing() {
    let r = one_node(
        moe_model(6, 1, 8, 2, 10 * MB),
        node("a", 8 * GB, 50.0, 500.0, 2.0),
    );
    assert_eq!(
        plan(&r).unwrap(),
        plan_with(&r, &CostTerms::default()).unwrap()
    );
}

#[test]
fn fixed_costs_add_per_layer_and_per_step() {
    let r = one_node(
        dense_model(10, 100 * MB),
        node("a", 8 * GB, 50.0, 500.0, 1.0),
    );
    let opts = PredictOptions::default();
    let (_, base) = plan_and_predict(&r, &CostTerms::default(), &opts).unwrap();
    let (p, with) = plan_and_predict(&r, &terms("a", 1e-4, 2e-3, 0.0), &opts).unwrap();
    // 10 layers × 100 µs + one step of 2 ms.
    close(with.decode.overhead, 10.0 * 1e-4 + 2e-3, "overhead");
    close(
        with.decode.total(),
        base.decode.total() + 3e-3,
        "total grows by the fixed costs",
    );
    close(
        p.predicted_tokens_per_s,
        1.0 / with.decode.total(),
        "tokens/s",
    );
    assert_eq!(base.decode.overhead, 0.0);
}

#[test]
fn a_skewed_cache_pages_less_than_a_uniform_one() {
    // 16 GiB of experts on an 8 GiB node: about half page.
    let r = one_node(
        moe_model(4, 0, 64, 4, 64 * MB),
        node("a", 8 * GB, 50.0, 500.0, 3.0),
    );
    let opts = PredictOptions::default();
    let (_, uniform) = plan_and_predict(&r, &CostTerms::default(), &opts).unwrap();
    let skewed_terms = CostTerms {
        expert_skew: 1.0,
        ..CostTerms::default()
    };
    let (_, skewed) = plan_and_predict(&r, &skewed_terms, &opts).unwrap();
    assert_eq!(
        uniform.nodes[0].experts_paged,
        skewed.nodes[0].experts_paged
    );
    let held = uniform.nodes[0].experts as f64;
    let paged = uniform.nodes[0].experts_paged as f64;
    // A token touches 4 layers × 4 experts × 64 MiB; uniform misses the
    // paged share of them, Zipf(1) only the unpopular tail's picks.
    let touched = 16.0 * 64.0 * MB as f64;
    close(
        uniform.decode.paging,
        touched * paged / held / 3e9,
        "uniform paging",
    );
    let hit = crate::cost::hit_rate(64, 1.0 - paged / held, 1.0);
    close(
        skewed.decode.paging,
        touched * (1.0 - hit) / 3e9,
        "skewed paging",
    );
    assert!(skewed.decode.paging < 0.6 * uniform.decode.paging);
    assert_eq!(skewed.decode.compute, uniform.decode.compute);
}

#[test]
fn batched_decode_reads_weights_once_and_multiplies_compute() {
    // 1 GB of dense weights (2e9 parameters: 4 GFLOP a token) at 50 GB/s:
    // 20 ms a step, bandwidth-bound; at 2 TFLOP/s batched a token costs 2
    // ms, so steps of up to 10 tokens cost the same and larger ones grow
    // with the tokens.
    let mut m = dense_model(10, 100_000_000);
    m.embed_bytes = 0;
    m.output_bytes = 0;
    m.output_params = 0;
    let r = one_node(m, node("a", 8 * GB, 50.0, 1000.0, 1.0));
    let opts = PredictOptions {
        streams: vec![1, 4, 16],
        ..PredictOptions::default()
    };
    let (_, p) = plan_and_predict(&r, &terms("a", 0.0, 0.0, 2000.0), &opts).unwrap();
    let s: Vec<_> = p.streams.iter().map(|s| (s.streams, s.step_s)).collect();
    close(s[0].1, 0.02, "1 stream: bandwidth");
    close(s[1].1, 0.02, "4 streams: still the weights' read");
    close(s[2].1, 16.0 * 4e9 / 2000e9, "16 streams: compute");
    close(p.streams[1].tokens_per_s, 4.0 / 0.02, "aggregate at 4");
    assert!(p.streams[2].tokens_per_s > p.streams[1].tokens_per_s);
}

#[test]
fn batched_steps_read_the_experts_any_stream_picks() {
    // 1 MoE layer of 64 experts, top 4: 16 streams pick 1 − (60/64)^16 of
    // them, far fewer than 16 × 4 expert reads.
    let mut m = moe_model(1, 0, 64, 4, 10_000_000);
    m.layers[0].dense_bytes = 0;
    m.layers[0].dense_params = 0;
    m.layers[0].shared_expert_bytes = 0;
    m.layers[0].shared_expert_params = 0;
    m.embed_bytes = 0;
    m.output_bytes = 0;
    m.output_params = 0;
    let r = one_node(m, node("a", 8 * GB, 10.0, 1e6, 1.0));
    let opts = PredictOptions {
        streams: vec![1, 16],
        ..PredictOptions::default()
    };
    let (_, p) = plan_and_predict(&r, &CostTerms::default(), &opts).unwrap();
    close(
        p.streams[0].step_s,
        4.0 * 1e7 / 1e10,
        "one token reads 4 experts",
    );
    let picked = 64.0 * (1.0 - (60.0f64 / 64.0).powi(16));
    close(p.streams[1].step_s, picked * 1e7 / 1e10, "16 streams");
}

#[test]
fn time_to_first_token_is_a_compute_bound_prefill() {
    let mut m = dense_model(10, 100_000_000);
    m.embed_bytes = 0;
    m.output_bytes = 0;
    m.output_params = 0;
    let r = one_node(m, node("a", 8 * GB, 50.0, 1000.0, 1.0));
    let opts = PredictOptions {
        prompt_tokens: 1000,
        ..PredictOptions::default()
    };
    // 1000 tokens × 4 GFLOP at 2 TFLOP/s batched, plus 10 layers' fixed cost.
    let (_, p) = plan_and_predict(&r, &terms("a", 1e-4, 0.0, 2000.0), &opts).unwrap();
    close(p.ttft_s, 1000.0 * 4e9 / 2000e9 + 1e-3, "ttft");
    assert_eq!(p.prompt_tokens, 1000);
    // Without batched kernels the matvec rate applies: twice as slow.
    let (_, slow) = plan_and_predict(&r, &terms("a", 1e-4, 0.0, 0.0), &opts).unwrap();
    close(
        slow.ttft_s,
        1000.0 * 4e9 / 1000e9 + 1e-3,
        "ttft at matvec rate",
    );
}

#[test]
fn head_parallel_attention_splits_the_groups_and_pays_a_round_trip_per_layer() {
    use crate::predict::HeadSplit;
    // Two equal nodes; one runs the whole model (it fits); 8 groups of
    // 80 MB of attention per layer split 4/4 over a 10 µs, 100 Gbit/s link.
    let m = dense_model(10, 100_000_000);
    let r = PlanRequest::new(
        m,
        vec![
            node("a", 8 * GB, 50.0, 500.0, 1.0),
            node("b", 8 * GB, 50.0, 500.0, 1.0),
        ],
        vec![link("a", "b", 1e11, 1e-5)],
        "a",
    );
    let opts = PredictOptions {
        head_split: Some(HeadSplit {
            groups: 8,
            per_layer_bytes: vec![80_000_000; 10],
        }),
        ..PredictOptions::default()
    };
    let (p, pred) = plan_and_predict(&r, &CostTerms::default(), &opts).unwrap();
    assert_eq!(p.stages.len(), 1, "{p:?}");
    // The plan gives b nothing, so head parallelism has no helper.
    let hp = pred.head_parallel.as_ref().unwrap();
    close(
        hp.split.total(),
        pred.decode.total(),
        "no helper, no change",
    );
    // Expert-free model forced over both nodes as two stages: each stage
    // splits its layers' groups with the other node.
    let mut two = r.clone();
    two.force_stages = Some(2);
    let (_, pred2) = plan_and_predict(&two, &CostTerms::default(), &opts).unwrap();
    let hp2 = pred2.head_parallel.unwrap();
    assert!(
        hp2.groups
            .iter()
            .all(|(_, g)| g.len() == 2 && g.iter().all(|x| x.1 == 4)),
        "{:?}",
        hp2.groups
    );
    // 800 MB of attention at 50 GB/s is 16 ms; halved saves 8 ms, and 10
    // round trips of 2 × (10 µs + 16 KiB at 100 Gbit/s) cost back.
    let rtt = 10.0 * 2.0 * (1e-5 + 4096.0 * 4.0 * 8.0 / 1e11);
    close(
        pred2.decode.compute - hp2.split.compute,
        0.008,
        "compute saved",
    );
    close(hp2.split.head_round_trips, rtt, "round trips");
    assert!(hp2.tokens_per_s > pred2.tokens_per_s);
    assert_eq!(hp2.extra_bytes.len(), 2);
}
