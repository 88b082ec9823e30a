//! Hand-built cases: one node, forced splits, paging, infeasibility, expert
//! parallelism, the f16 rule, bad input, serde.

use super::*;
use crate::{plan, PlanError};

fn req(model: ModelShape, nodes: Vec<NodeCaps>, coord: &str) -> PlanRequest {
    PlanRequest::new(model, nodes, Vec::new(), coord)
}

#[test]
fn one_node_runs_everything() {
    let r = req(
        moe_model(6, 1, 8, 2, 10 * MB),
        vec![node("a", 8 * GB, 50.0, 500.0, 2.0)],
        "a",
    );
    let p = plan(&r).unwrap();
    check_plan(&r, &p);
    assert_eq!(p.stages.len(), 1);
    assert_eq!(p.stages[0].layers, 0..6);
    assert!(p.stages[0].holds_embed && p.stages[0].holds_output);
    assert_eq!(p.output_node, "a");
    assert_eq!(p.experts.len(), 5, "one shard per MoE layer");
    assert_eq!(p.predicted_paging, vec![("a".to_string(), 0)]);
    assert_eq!(p.activation_dtype, ActDType::F32);
}

#[test]
fn the_faster_node_alone_when_it_fits() {
    let r = req(
        dense_model(10, 100 * MB),
        vec![
            node("slow", 8 * GB, 10.0, 100.0, 1.0),
            node("fast", 8 * GB, 40.0, 400.0, 1.0),
        ],
        "slow",
    );
    let p = plan(&r).unwrap();
    check_plan(&r, &p);
    assert_eq!(
        layer_counts(&p),
        [("fast".to_string(), 10)].into_iter().collect()
    );
    // The coordinator still embeds; it holds no stage.
    assert_eq!(p.coordinator, "slow");
    assert!(p.stages.iter().all(|s| !s.holds_embed));
}

#[test]
fn a_node_a_little_faster_by_measurement_does_not_take_the_coordinators_layers() {
    let plan_with = |worker_bw: f64| {
        // A fast, near link: the hops cost far less than the gain.
        let r = PlanRequest::new(
            dense_model(10, 100 * MB),
            vec![
                node("coord", 8 * GB, 20.0, 200.0, 1.0),
                node("worker", 8 * GB, worker_bw, 200.0, 1.0),
            ],
            vec![link("coord", "worker", 1e10, 5e-5)],
            "coord",
        );
        let p = plan(&r).unwrap();
        check_plan(&r, &p);
        layer_counts(&p)
    };
    // 4% faster: within the noise of a benchmark; the layers stay.
    assert_eq!(
        plan_with(20.8),
        [("coord".to_string(), 10)].into_iter().collect()
    );
    // 10% faster: worth the hops; the worker runs (nearly) everything, the
    // coordinator keeping what costs less than the 5% margin.
    let moved = plan_with(22.0);
    assert!(moved.get("worker").copied().unwrap_or(0) >= 9, "{moved:?}");
}

#[test]
fn forced_two_stages_over_two_nodes() {
    let mut r = req(
        dense_model(8, 100 * MB),
        vec![
            node("b", 8 * GB, 20.0, 200.0, 1.0),
            node("a", 8 * GB, 20.0, 200.0, 1.0),
        ],
        "b",
    );
    r.force_stages = Some(2);
    let p = plan(&r).unwrap();
    check_plan(&r, &p);
    assert_eq!(p.stages.len(), 2);
    assert_eq!(
        p.stages[0].node, "b",
        "the coordinator runs the first stage"
    );
    assert!(p.stages[0].holds_embed);
}

#[test]
fn a_model_too_big_for_one_node_is_split_without_paging() {
    // 12 layers × 1 GiB; each node holds 8 GiB.
    let r = req(
        dense_model(12, GB),
        vec![
            node("a", 8 * GB, 20.0, 200.0, 1.0),
            node("b", 8 * GB, 20.0, 200.0, 1.0),
        ],
        "a",
    );
    let p = plan(&r).unwrap();
    check_plan(&r, &p);
    assert_eq!(p.stages.len(), 2);
    assert!(p.predicted_paging.iter().all(|(_, b)| *b == 0));
}

#[test]
fn experts_page_when_ram_falls_short_and_disk_allows() {
    // 4 MoE layers × 64 experts × 64 MiB = 16 GiB of experts on an 8 GiB node.
    let r = req(
        moe_model(4, 0, 64, 4, 64 * MB),
        vec![node("a", 8 * GB, 50.0, 500.0, 3.0)],
        "a",
    );
    let p = plan(&r).unwrap();
    check_plan(&r, &p);
    let paged = p.predicted_paging[0].1;
    assert!(paged > 8 * GB && paged < 16 * GB, "{paged}");
    // Paging costs time: the same model on a roomy node is faster.
    let mut roomy = r.clone();
    roomy.nodes[0].mem_budget = 32 * GB;
    let q = plan(&roomy).unwrap();
    assert!(q.predicted_tokens_per_s > p.predicted_tokens_per_s * 1.5);
}

#[test]
fn without_a_disk_experts_must_fit() {
    let r = req(
        moe_model(4, 0, 64, 4, 64 * MB),
        vec![node("a", 8 * GB, 50.0, 500.0, 0.0)],
        "a",
    );
    match plan(&r) {
        Err(PlanError::Infeasible {
            shortfall_bytes,
            detail,
        }) => {
            assert!(shortfall_bytes > 8 * GB, "{shortfall_bytes}");
            assert!(detail.contains("node a"), "{detail}");
            assert!(detail.contains("no disk"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn infeasible_names_the_shortfall_and_the_node() {
    // 4 layers × 1 GiB of dense weights, one node of 3 GiB: nothing pages.
    let m = dense_model(4, GB);
    let r = req(
        m.clone(),
        vec![node("tiny", 3 * GB, 20.0, 200.0, 5.0)],
        "tiny",
    );
    let kv = 4 * 1024 * DEFAULT_KV_TOKENS;
    let need = 4 * GB + kv + m.embed_bytes + m.output_bytes;
    match plan(&r) {
        Err(PlanError::Infeasible {
            shortfall_bytes,
            detail,
        }) => {
            assert_eq!(shortfall_bytes, need - 3 * GB);
            assert!(detail.contains("node tiny"), "{detail}");
            assert!(detail.contains(&need.to_string()), "{detail}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn expert_parallel_when_asked_spreads_every_layer() {
    let mut r = req(
        moe_model(4, 1, 16, 2, 16 * MB),
        vec![
            node("a", 16 * GB, 50.0, 500.0, 2.0),
            node("b", 16 * GB, 50.0, 500.0, 2.0),
        ],
        "a",
    );
    r.expert_parallel = true;
    r.links = vec![link("a", "b", 10e9, 1e-4)];
    let p = plan(&r).unwrap();
    check_plan(&r, &p);
    let on_b = p.experts.iter().filter(|s| s.node == "b").count();
    let on_a = p.experts.iter().filter(|s| s.node == "a").count();
    assert!(on_a > 0 && on_b > 0, "{:?}", p.experts);
    // Without the request, one node holding everything is faster.
    r.expert_parallel = false;
    let q = plan(&r).unwrap();
    check_plan(&r, &q);
    assert!(q.predicted_tokens_per_s >= p.predicted_tokens_per_s);
}

#[test]
fn experts_go_over_a_fast_link_rather_than_a_slow_disk() {
    // "a" is fast but small: its non-expert part fits, half its experts do
    // not. "b" is slow at compute but has room, and the link is fast.
    let m = moe_model(8, 0, 64, 2, 32 * MB);
    let experts = 8 * 64 * 32 * MB;
    let mut r = req(
        m,
        vec![
            node("a", experts / 2 + 3 * GB, 100.0, 1000.0, 0.05),
            node("b", 64 * GB, 5.0, 50.0, 0.05),
        ],
        "a",
    );
    r.links = vec![link("a", "b", 100e9, 2e-5)];
    let p = plan(&r).unwrap();
    check_plan(&r, &p);
    assert_eq!(
        layer_counts(&p),
        [("a".to_string(), 8)].into_iter().collect(),
        "{:?}",
        p.stages
    );
    assert!(p.experts.iter().any(|s| s.node == "b"), "{:?}", p.experts);
    assert_eq!(p.predicted_paging.iter().map(|x| x.1).sum::<u64>(), 0);
}

#[test]
fn f16_only_when_the_link_is_slow() {
    let mut r = req(
        dense_model(8, 100 * MB),
        vec![
            node("a", 8 * GB, 20.0, 200.0, 1.0),
            node("b", 8 * GB, 20.0, 200.0, 1.0),
        ],
        "a",
    );
    r.force_stages = Some(2);
    r.links = vec![link("a", "b", 10e9, 1e-4)];
    assert_eq!(plan(&r).unwrap().activation_dtype, ActDType::F32);
    // 1 Mbit/s: 16 KiB of f32 activations take 0.13 s a hop.
    r.links = vec![link("a", "b", 1e6, 1e-4)];
    let p = plan(&r).unwrap();
    assert_eq!(p.activation_dtype, ActDType::F16);
    r.force_act_dtype = Some(ActDType::F32);
    let q = plan(&r).unwrap();
    assert_eq!(q.activation_dtype, ActDType::F32);
    assert!(q.predicted_tokens_per_s < p.predicted_tokens_per_s);
}

#[test]
fn logits_are_not_shipped_over_a_slow_link_when_the_coordinator_can_compute_them() {
    let mut m = dense_model(8, 100 * MB);
    m.n_vocab = 200_000;
    let mut r = req(
        m,
        vec![
            node("a", 8 * GB, 20.0, 200.0, 1.0),
            node("b", 8 * GB, 20.0, 200.0, 1.0),
        ],
        "a",
    );
    r.force_stages = Some(2);
    r.force_act_dtype = Some(ActDType::F32);
    r.links = vec![link("a", "b", 1e8, 1e-4)];
    let p = plan(&r).unwrap();
    check_plan(&r, &p);
    assert_eq!(p.output_node, "a");
    assert!(p.stages[0].holds_output && !p.stages[1].holds_output);
}

/// A small vocabulary and a fast link leave the head on the last stage,
/// unless the request keeps it on the coordinator (its MTP block drafts
/// there from the hidden rows and shares the head).
#[test]
fn the_output_head_stays_on_the_coordinator_when_asked() {
    let mut r = req(
        dense_model(8, 100 * MB),
        vec![
            node("a", 8 * GB, 20.0, 200.0, 1.0),
            node("b", 8 * GB, 20.0, 200.0, 1.0),
        ],
        "a",
    );
    r.force_stages = Some(2);
    r.links = vec![link("a", "b", 1e10, 5e-5)];
    let p = plan(&r).unwrap();
    check_plan(&r, &p);
    assert_eq!(p.output_node, "b", "the head moves to the last stage");
    r.output_on_coordinator = true;
    let p = plan(&r).unwrap();
    check_plan(&r, &p);
    assert_eq!(p.output_node, "a");
    assert!(p.stages[0].holds_output && !p.stages[1].holds_output);
}

#[test]
fn a_v3_sized_model_over_four_nodes() {
    // DeepSeek V3 at ~4.5 bits/weight: 3 dense + 58 MoE layers of 256
    // experts (24.8 MB each), top 8.
    let mut layers = Vec::new();
    for i in 0..61 {
        let mut l = LayerShape {
            dense_bytes: 105_000_000 + if i < 3 { 223_000_000 } else { 0 },
            kv_bytes_per_token: 576 * 4,
            dense_params: 187_000_000 + if i < 3 { 396_000_000 } else { 0 },
            ..LayerShape::default()
        };
        if i >= 3 {
            l.n_experts = 256;
            l.n_experts_used = 8;
            l.expert_bytes = 24_800_000;
            l.expert_params = 44_040_192;
            l.shared_expert_bytes = 24_800_000;
            l.shared_expert_params = 44_040_192;
        }
        layers.push(l);
    }
    let m = shape("v3", 61, layers, 520_000_000, 520_000_000);
    let ids: Vec<String> = (0..4).map(|i| format!("n{i}")).collect();
    let nodes = ids
        .iter()
        .map(|id| node(id, 110 * GB, 60.0, 600.0, 3.0))
        .collect();
    let mut r = req(m, nodes, "n0");
    let links = |bps: f64, lat: f64| {
        let mut v = Vec::new();
        for a in &ids {
            for b in &ids {
                if a < b {
                    v.push(link(a, b, bps, lat));
                }
            }
        }
        v
    };
    // 5 ms links: a round trip per MoE layer costs more than reading the
    // experts, so the model is cut into 4 stages, nothing paged.
    r.links = links(10e9, 5e-3);
    let p = plan(&r).unwrap();
    check_plan(&r, &p);
    assert_eq!(p.stages.len(), 4);
    assert!(p.experts.iter().all(|s| p
        .stages
        .iter()
        .any(|st| st.node == s.node && st.layers.contains(&s.layer))));
    assert!(
        p.predicted_paging.iter().all(|(_, b)| *b == 0),
        "{:?}",
        p.predicted_paging
    );
    // Memory-bound decode: ~20 GB active at 60 GB/s, a few tokens/s.
    assert!(
        p.predicted_tokens_per_s > 2.0 && p.predicted_tokens_per_s < 4.0,
        "{}",
        p.predicted_tokens_per_s
    );
    // 50 µs, 25 Gbit/s links: the nodes read experts at the same time.
    r.links = links(25e9, 5e-5);
    let q = plan(&r).unwrap();
    check_plan(&r, &q);
    assert!(q.experts.iter().any(|s| q
        .stages
        .iter()
        .all(|st| st.node != s.node || !st.layers.contains(&s.layer))));
    assert!(
        q.predicted_tokens_per_s > p.predicted_tokens_per_s * 1.2,
        "{} vs {}",
        q.predicted_tokens_per_s,
        p.predicted_tokens_per_s
    );
}

#[test]
fn many_nodes_take_the_heuristic_orders() {
    // 9 nodes (above the exhaustive limit), 40 layers of 1 GiB, 6 GiB each.
    let nodes: Vec<_> = (0..9)
        .map(|i| node(&format!("n{i}"), 6 * GB, 10.0 + i as f64, 100.0, 1.0))
        .collect();
    let mut r = req(dense_model(40, GB), nodes, "n3");
    let p = plan(&r).unwrap();
    check_plan(&r, &p);
    assert!(p.stages.len() >= 8, "{:?}", p.stages);
    r.nodes.reverse();
    assert_eq!(plan(&r).unwrap(), p);
    r.force_stages = Some(9);
    let q = plan(&r).unwrap();
    check_plan(&r, &q);
    assert_eq!(q.stages.len(), 9);
}

#[test]
fn bad_requests_are_named() {
    let good = req(
        dense_model(4, MB),
        vec![node("a", GB, 10.0, 10.0, 1.0)],
        "a",
    );
    assert!(plan(&good).is_ok());
    let mut r = good.clone();
    r.nodes.clear();
    assert_eq!(plan(&r), Err(PlanError::NoNodes));
    type Edit = Box<dyn Fn(&mut PlanRequest)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("coordinator", Box::new(|r| r.coordinator = "zz".into())),
        ("twice", Box::new(|r| r.nodes.push(r.nodes[0].clone()))),
        ("mem_bw_gbs", Box::new(|r| r.nodes[0].mem_bw_gbs = f64::NAN)),
        ("force_stages", Box::new(|r| r.force_stages = Some(0))),
        ("force_stages", Box::new(|r| r.force_stages = Some(2))),
        (
            "layer shapes",
            Box::new(|r| r.model.layers.pop().map(|_| ()).unwrap_or(())),
        ),
        (
            "unknown node",
            Box::new(|r| r.links.push(link("a", "q", 1e9, 0.0))),
        ),
        (
            "bandwidth",
            Box::new(|r| r.links.push(link("a", "a", 0.0, 0.0))),
        ),
        ("compute", Box::new(|r| r.nodes[0].matmul_gflops = 0.0)),
        (
            "experts used",
            Box::new(|r| {
                r.model.layers[0].n_experts = 2;
                r.model.layers[0].n_experts_used = 3;
            }),
        ),
    ];
    for (word, f) in cases {
        let mut r = good.clone();
        f(&mut r);
        match plan(&r) {
            Err(PlanError::BadInput(msg)) => assert!(msg.contains(word), "{word}: {msg}"),
            other => panic!("{word}: {other:?}"),
        }
    }
}

#[test]
fn plans_and_requests_round_trip_through_json() {
    let mut r = req(
        moe_model(4, 1, 8, 2, 10 * MB),
        vec![
            node("a", 8 * GB, 50.0, 500.0, 2.0),
            node("b", 8 * GB, 50.0, 500.0, 2.0),
        ],
        "a",
    );
    r.expert_parallel = true;
    let p = plan(&r).unwrap();
    let back: Plan = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(back, p);
    let rb: PlanRequest = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(rb, r);
    // The fields added beyond the mesh design default when absent.
    let mut v = serde_json::to_value(&r).unwrap();
    v.as_object_mut().unwrap().remove("kv_tokens");
    v.as_object_mut().unwrap().remove("force_act_dtype");
    let rd: PlanRequest = serde_json::from_value(v).unwrap();
    assert_eq!(rd.kv_tokens, DEFAULT_KV_TOKENS);
    assert_eq!(rd.force_act_dtype, None);
}
