//! Property tests: the plan's promises on random instances.

use proptest::prelude::*;

use super::*;
use crate::{plan, plan_and_predict, CostTerms, NodeTerms, PlanError, PredictOptions};

const IDS: [&str; 6] = ["12D3KooWa", "12D3KooWb", "QmC", "QmD", "node-e", "node-f"];

fn arb_layer(moe: bool) -> impl Strategy<Value = LayerShape> {
    (
        1u64..200,
        0u64..4,
        prop_oneof![Just(4u32), Just(8), Just(16)],
        1u32..5,
        1u64..40,
    )
        .prop_map(move |(dense, kv, e, k, eb)| LayerShape {
            dense_bytes: dense * MB,
            kv_bytes_per_token: kv * 512,
            dense_params: dense * MB * 2,
            n_experts: if moe { e } else { 0 },
            n_experts_used: if moe { k.min(e) } else { 0 },
            expert_bytes: if moe { eb * MB } else { 0 },
            expert_params: if moe { eb * MB * 2 } else { 0 },
            shared_expert_bytes: if moe { eb * MB } else { 0 },
            ..LayerShape::default()
        })
}

fn arb_model() -> impl Strategy<Value = ModelShape> {
    (1usize..10, 0usize..4, any::<bool>())
        .prop_flat_map(|(n, lead, moe)| {
            let lead = lead.min(n);
            (
                proptest::collection::vec(arb_layer(false), lead),
                proptest::collection::vec(arb_layer(moe), n - lead),
                1u64..300,
            )
        })
        .prop_map(|(mut a, b, emb)| {
            a.extend(b);
            let n = a.len() as u32;
            shape("m", n, a, emb * MB, emb * MB)
        })
}

fn arb_node(i: usize) -> impl Strategy<Value = NodeCaps> {
    (
        1u64..40,
        prop_oneof![Just(0.0), 1.0f64..100.0],
        1.0f64..1000.0,
        prop_oneof![Just(0.0), 0.1f64..5.0],
    )
        .prop_map(move |(gb, bw, gf, disk)| node(IDS[i], gb * GB / 4, bw, gf, disk))
}

fn arb_request() -> impl Strategy<Value = PlanRequest> {
    (arb_model(), 1usize..5)
        .prop_flat_map(|(m, n)| {
            let nodes: Vec<_> = (0..n).map(arb_node).collect();
            let links = proptest::collection::vec((0..n, 0..n, 1e6f64..1e11, 0.0f64..0.01), 0..6);
            (
                Just(m),
                nodes,
                links,
                0..n,
                proptest::option::of(1u32..4),
                any::<bool>(),
            )
        })
        .prop_map(|(m, mut nodes, links, coord, force, ep)| {
            // At least one node computes.
            nodes[0].mem_bw_gbs = nodes[0].mem_bw_gbs.max(1.0);
            let links = links
                .into_iter()
                .map(|(a, b, bps, lat)| link(IDS[a], IDS[b], bps, lat))
                .collect();
            let mut r = PlanRequest::new(m, nodes.clone(), links, nodes[coord].id.clone());
            r.force_stages = force;
            r.expert_parallel = ep;
            r.kv_tokens = 256;
            r
        })
}

/// The request with every node's budget raised to hold the whole model.
fn roomy(mut r: PlanRequest) -> PlanRequest {
    let m = &r.model;
    let all = m.embed_bytes
        + m.output_bytes
        + m.layers
            .iter()
            .map(|l| l.total_bytes() + l.kv_bytes_per_token * r.kv_tokens + l.kv_fixed_bytes)
            .sum::<u64>();
    for n in &mut r.nodes {
        n.mem_budget = n.mem_budget.max(all);
    }
    r
}

fn usable(r: &PlanRequest) -> usize {
    r.nodes
        .iter()
        .filter(|n| n.mem_bw_gbs > 0.0 && n.matmul_gflops > 0.0)
        .count()
}

proptest! {
    // PROPTEST_CASES=N runs more.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(192),
        ..ProptestConfig::default()
    })]

    /// Any answer is a valid plan or a typed error; never a panic.
    #[test]
    fn plans_keep_their_promises(r in arb_request()) {
        match plan(&r) {
            Ok(p) => {
                check_plan(&r, &p);
                // Asked for expert parallelism with MoE layers and two nodes
                // that compute: some experts live off their layer's node.
                if r.expert_parallel && usable(&r) >= 2 && r.model.layers.iter().any(|l| l.n_experts > 0) {
                    let owner = |l: u32| p.stages.iter().find(|s| s.layers.contains(&l)).map(|s| s.node.clone());
                    prop_assert!(p.experts.iter().any(|s| owner(s.layer).as_ref() != Some(&s.node)));
                }
            }
            Err(PlanError::Infeasible { shortfall_bytes, detail }) => {
                prop_assert!(shortfall_bytes > 0);
                prop_assert!(r.nodes.iter().any(|n| detail.contains(&n.id)), "{}", detail);
            }
            Err(PlanError::BadInput(msg)) => {
                let k = r.force_stages.unwrap_or(1) as usize;
                prop_assert!(k > usable(&r).min(r.model.layers.len()), "{}", msg);
            }
            Err(e) => prop_assert!(false, "{e}"),
        }
    }

    /// Where every node could hold the whole model, a plan exists, and it
    /// pages nothing.
    #[test]
    fn feasible_instances_get_a_plan_within_budgets(r in arb_request()) {
        let mut r = roomy(r);
        r.force_stages = r.force_stages.filter(|&k| k as usize <= usable(&r).min(r.model.layers.len()));
        let p = plan(&r).unwrap();
        check_plan(&r, &p);
        prop_assert!(p.predicted_paging.iter().all(|(_, b)| *b == 0), "{:?}", p.predicted_paging);
    }

    /// Budgets below one layer's dense bytes: infeasible, with the bytes.
    #[test]
    fn hopeless_instances_say_how_short(r in arb_request()) {
        let mut r = r;
        r.force_stages = None;
        let smallest = r.model.layers.iter().map(|l| l.dense_bytes).min().unwrap();
        for n in &mut r.nodes {
            n.mem_budget = smallest / 2;
        }
        match plan(&r) {
            Err(PlanError::Infeasible { shortfall_bytes, detail }) => {
                prop_assert!(shortfall_bytes >= smallest / 2);
                prop_assert!(detail.contains("budget"));
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }

    /// Same input, same plan; node and link order do not matter.
    #[test]
    fn plans_are_deterministic(r in arb_request(), rot in 0usize..4) {
        let a = plan(&r);
        prop_assert_eq!(&a, &plan(&r));
        let mut q = r.clone();
        q.nodes.reverse();
        let k = rot % q.nodes.len();
        q.nodes.rotate_left(k);
        q.links.reverse();
        for l in &mut q.links {
            std::mem::swap(&mut l.a, &mut l.b);
        }
        prop_assert_eq!(&a, &plan(&q));
    }

    /// Of two nodes with room for the same number of (identical) layers,
    /// the faster runs at least as many, when the link between them costs
    /// (next to) nothing. (Over a real link a slower coordinator may rightly
    /// keep a small model to itself rather than pay two hops a token, and a
    /// large lm head may rightly take a fast node's room.) The faster is at
    /// least 10% faster: within `SPREAD_MIN_GAIN` the coordinator keeps
    /// its layers on purpose.
    #[test]
    fn a_faster_node_gets_at_least_as_many_layers(
        n in 2u32..16, layer_mb in 10u64..500, budget_layers in 1u64..20,
        slow_bw in 1.0f64..50.0, speedup in 1.1f64..4.0, coord_fast in any::<bool>(),
        disk in prop_oneof![Just(0.0), 0.1f64..4.0], forced in any::<bool>(),
    ) {
        // Small embedding and output, and room for both on either node, so
        // each node fits the same number of layers whatever else it holds.
        let mut m = dense_model(n, layer_mb * MB);
        m.embed_bytes = MB;
        m.output_bytes = MB;
        m.output_params = MB;
        let kv = m.layers[0].kv_bytes_per_token * DEFAULT_KV_TOKENS;
        let budget = budget_layers * (layer_mb * MB + kv) + 2 * MB;
        let nodes = vec![
            node("slow", budget, slow_bw, slow_bw * 10.0, disk),
            node("fast", budget, slow_bw * speedup, slow_bw * speedup * 10.0, disk),
        ];
        let links = vec![link("slow", "fast", 1e15, 0.0)];
        let mut r = PlanRequest::new(m, nodes, links, if coord_fast { "fast" } else { "slow" });
        r.force_stages = forced.then_some(2);
        if let Ok(p) = plan(&r) {
            check_plan(&r, &p);
            let c = layer_counts(&p);
            let f = c.get("fast").copied().unwrap_or(0);
            let s = c.get("slow").copied().unwrap_or(0);
            prop_assert!(f >= s, "fast {} < slow {}: {:?}", f, s, p.stages);
        }
    }
}

fn arb_terms(r: &PlanRequest) -> impl Strategy<Value = CostTerms> {
    let ids: Vec<String> = r.nodes.iter().map(|n| n.id.clone()).collect();
    (
        proptest::collection::vec((0.0f64..1e-3, 0.0f64..1e-2, 0.0f64..5000.0), ids.len()),
        prop_oneof![Just(0.0), 0.1f64..1.5],
    )
        .prop_map(move |(t, skew)| CostTerms {
            nodes: ids
                .iter()
                .cloned()
                .zip(t)
                .map(|(id, (l, s, b))| {
                    (
                        id,
                        NodeTerms {
                            layer_overhead_s: l,
                            step_overhead_s: s,
                            batch_gflops: b,
                        },
                    )
                })
                .collect(),
            expert_skew: skew,
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128),
        ..ProptestConfig::default()
    })]

    /// With any cost terms: a valid plan, a split that adds up to the
    /// plan's tokens/s, and batched steps that cost more in all but less
    /// per token as streams are added.
    #[test]
    fn predictions_are_consistent(
        (r, terms) in arb_request().prop_flat_map(|r| {
            let t = arb_terms(&r);
            (Just(r), t)
        })
    ) {
        let opts = PredictOptions {
            streams: vec![1, 2, 4, 16, 64],
            ..PredictOptions::default()
        };
        match plan_and_predict(&r, &terms, &opts) {
            Ok((p, pred)) => {
                check_plan(&r, &p);
                let t = pred.decode.total();
                prop_assert!(t.is_finite() && t > 0.0);
                prop_assert!((p.predicted_tokens_per_s * t - 1.0).abs() < 1e-9);
                prop_assert!((pred.streams[0].step_s - t).abs() <= 1e-12 * t.max(1.0));
                for w in pred.streams.windows(2) {
                    let (a, b) = (&w[0], &w[1]);
                    prop_assert!(b.step_s >= a.step_s * (1.0 - 1e-9), "{a:?} {b:?}");
                    prop_assert!(
                        b.step_s / b.streams as f64 <= a.step_s / a.streams as f64 * (1.0 + 1e-9),
                        "{a:?} {b:?}"
                    );
                }
                prop_assert!(pred.ttft_s >= pred.decode.total() * (1.0 - 1e-9) - pred.decode.hops);
            }
            Err(PlanError::Infeasible { .. }) | Err(PlanError::BadInput(_)) => {}
            Err(e) => prop_assert!(false, "{e}"),
        }
    }
}
