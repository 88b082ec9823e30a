//! Tests of the planner: fixtures and the invariant checker shared by the
//! unit tests ([`unit`]), the cost-term tests ([`terms`]) and the property
//! tests ([`props`]).

mod props;
mod terms;
mod unit;

use std::collections::BTreeMap;

use crate::types::*;

pub const MB: u64 = 1 << 20;
pub const GB: u64 = 1 << 30;

pub fn node(id: &str, budget: u64, bw: f64, gflops: f64, disk: f64) -> NodeCaps {
    NodeCaps {
        id: id.to_string(),
        mem_budget: budget,
        free_ram: budget,
        cores: 8,
        matmul_gflops: gflops,
        mem_bw_gbs: bw,
        disk_read_gbs: disk,
    }
}

pub fn link(a: &str, b: &str, bps: f64, lat: f64) -> Link {
    Link {
        a: a.into(),
        b: b.into(),
        bandwidth_bps: bps,
        latency_s: lat,
    }
}

/// `n` identical dense layers of `bytes` weights each.
pub fn dense_model(n: u32, bytes: u64) -> ModelShape {
    let layer = LayerShape {
        dense_bytes: bytes,
        kv_bytes_per_token: 1024,
        dense_params: bytes * 2,
        ..LayerShape::default()
    };
    shape("dense", n, vec![layer; n as usize], 64 * MB, 64 * MB)
}

/// `dense_lead` dense layers then MoE layers of `e` experts (top `k`).
pub fn moe_model(n: u32, dense_lead: u32, e: u32, k: u32, expert_bytes: u64) -> ModelShape {
    let layers = (0..n)
        .map(|i| {
            let mut l = LayerShape {
                dense_bytes: 40 * MB,
                kv_bytes_per_token: 2048,
                dense_params: 80 * MB,
                ..LayerShape::default()
            };
            if i >= dense_lead {
                l.n_experts = e;
                l.n_experts_used = k;
                l.expert_bytes = expert_bytes;
                l.expert_params = expert_bytes * 2;
                l.shared_expert_bytes = expert_bytes;
                l.shared_expert_params = expert_bytes * 2;
            }
            l
        })
        .collect();
    shape("moe", n, layers, 128 * MB, 128 * MB)
}

pub fn shape(name: &str, n: u32, layers: Vec<LayerShape>, embed: u64, output: u64) -> ModelShape {
    let kv = layers.iter().map(|l| l.kv_bytes_per_token).sum();
    let active = embed / 1000
        + output
        + layers
            .iter()
            .map(|l| {
                l.dense_bytes + l.shared_expert_bytes + l.n_experts_used as u64 * l.expert_bytes
            })
            .sum::<u64>();
    ModelShape {
        name: name.into(),
        arch: "test".into(),
        n_layer: n,
        hidden: 4096,
        n_vocab: 1000,
        embed_bytes: embed,
        output_bytes: output,
        output_params: output * 2,
        tied_embeddings: false,
        unused_bytes: 0,
        layers,
        kv_bytes_per_token: kv,
        active_bytes_per_token: active,
    }
}

/// Layers per node in a plan.
pub fn layer_counts(p: &Plan) -> BTreeMap<String, u32> {
    p.stages
        .iter()
        .map(|s| (s.node.clone(), s.layers.end - s.layers.start))
        .collect()
}

/// Checks everything a plan promises, from the plan and the request alone.
pub fn check_plan(req: &PlanRequest, p: &Plan) {
    let m = &req.model;
    let caps: BTreeMap<&str, &NodeCaps> = req.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    // Stages: contiguous, cover 0..n_layer once, nodes distinct, known, able.
    let mut next = 0;
    let mut seen = std::collections::BTreeSet::new();
    for (i, s) in p.stages.iter().enumerate() {
        assert_eq!(
            s.layers.start, next,
            "stages not contiguous: {:?}",
            p.stages
        );
        assert!(s.layers.end > s.layers.start, "empty stage {s:?}");
        next = s.layers.end;
        assert!(seen.insert(s.node.clone()), "node twice in {:?}", p.stages);
        let c = caps[s.node.as_str()];
        assert!(c.mem_bw_gbs > 0.0 && c.matmul_gflops > 0.0);
        assert_eq!(s.holds_embed, s.node == p.coordinator);
        assert_eq!(s.holds_output, s.node == p.output_node);
        if s.node == p.coordinator {
            assert_eq!(i, 0, "the coordinator's stage must come first");
        }
    }
    assert_eq!(next, m.n_layer, "stages do not cover every layer");
    let last = &p.stages[p.stages.len() - 1].node;
    assert!(p.output_node == *last || p.output_node == p.stages[0].node && p.stages[0].holds_embed);
    assert_eq!(p.stages.iter().filter(|s| s.holds_output).count(), 1);
    assert_eq!(p.coordinator, req.coordinator);
    if let Some(k) = req.force_stages {
        assert_eq!(p.stages.len(), k as usize);
    }
    // Experts: every (layer, expert) of MoE layers exactly once.
    let mut held: BTreeMap<(u32, u32), &str> = BTreeMap::new();
    for sh in &p.experts {
        let c = caps[sh.node.as_str()];
        assert!(c.mem_bw_gbs > 0.0 && c.matmul_gflops > 0.0);
        assert!(sh.experts.windows(2).all(|w| w[0] < w[1]));
        for &e in &sh.experts {
            assert!(e < m.layers[sh.layer as usize].n_experts);
            assert!(
                held.insert((sh.layer, e), &sh.node).is_none(),
                "({}, {e}) twice",
                sh.layer
            );
        }
    }
    let want: u64 = m.layers.iter().map(|l| l.n_experts as u64).sum();
    assert_eq!(held.len() as u64, want, "not every expert placed");
    // Budgets: resident bytes + what experts cannot page fit every node.
    let paged: BTreeMap<&str, u64> = p
        .predicted_paging
        .iter()
        .map(|(n, b)| (n.as_str(), *b))
        .collect();
    assert_eq!(paged.len(), req.nodes.len());
    for n in &req.nodes {
        let mut resident = 0u64;
        if n.id == p.coordinator {
            resident += m.embed_bytes;
        }
        if n.id == p.output_node {
            resident += m.output_bytes;
        }
        for s in p.stages.iter().filter(|s| s.node == n.id) {
            for l in s.layers.clone() {
                let ly = &m.layers[l as usize];
                resident += ly.dense_bytes
                    + ly.shared_expert_bytes
                    + ly.kv_bytes_per_token * req.kv_tokens
                    + ly.kv_fixed_bytes;
            }
        }
        let (mut experts, mut working) = (0u64, 0u64);
        for sh in p.experts.iter().filter(|s| s.node == n.id) {
            let ly = &m.layers[sh.layer as usize];
            experts += sh.experts.len() as u64 * ly.expert_bytes;
            working = working
                .max(sh.experts.len().min(ly.n_experts_used as usize) as u64 * ly.expert_bytes);
        }
        let pg = paged[n.id.as_str()];
        if n.disk_read_gbs == 0.0 {
            assert_eq!(pg, 0, "node {} pages without a disk", n.id);
        }
        let must = resident
            + if n.disk_read_gbs > 0.0 {
                working.min(experts)
            } else {
                experts
            };
        assert!(
            must <= n.mem_budget,
            "node {} must hold {must} > budget {}",
            n.id,
            n.mem_budget
        );
        assert!(pg <= experts);
        assert!(
            resident + experts - pg <= n.mem_budget,
            "node {}: {resident} + {experts} - {pg} paged > {}",
            n.id,
            n.mem_budget
        );
    }
    assert!(p.predicted_tokens_per_s > 0.0 && p.predicted_tokens_per_s.is_finite());
}
