//! A mesh node's weights within its memory budget: the share its plan
//! gives it (the layers it runs, the routed experts it holds) goes through
//! the same weight store as a single machine's (`dwarfstar_model::store`),
//! paged when the share does not fit the budget the node announced
//! (`--node-budget`), less the KV cache of its layers. Also what the
//! node's status reports of it.

use dwarfstar_model::store::{self, Share, StoreConfig, StoreStats};
use dwarfstar_model::Model;
use dwarfstar_planner::Plan;
use dwarfstar_proto::v1 as pb;

use super::error::Result;

/// What `me` runs under `plan` of a model of `n_layer` layers.
pub fn share_of(plan: &Plan, me: &str, n_layer: usize) -> Share {
    let mut layers = vec![false; n_layer];
    for s in plan.stages.iter().filter(|s| s.node == me) {
        for l in layers
            .iter_mut()
            .take(s.layers.end as usize)
            .skip(s.layers.start as usize)
        {
            *l = true;
        }
    }
    let mut experts: Vec<Vec<bool>> = vec![Vec::new(); n_layer];
    for x in &plan.experts {
        let Some(held) = experts.get_mut(x.layer as usize) else {
            continue;
        };
        let top = x.experts.iter().max().map_or(0, |&e| e as usize + 1);
        if held.len() < top {
            held.resize(top, false);
        }
        if x.node == me {
            for &e in &x.experts {
                held[e as usize] = true;
            }
        }
    }
    let mine = |holds: fn(&dwarfstar_planner::Stage) -> bool| {
        plan.stages.iter().any(|s| s.node == me && holds(s))
    };
    Share {
        embed: plan.coordinator == me || mine(|s| s.holds_embed),
        output: plan.output_node == me || mine(|s| s.holds_output),
        layers,
        experts,
    }
}

/// Holds `model`'s share for `me` under `plan` within `budget` bytes (0:
/// no budget known, the file stays mapped), keeping room for the KV cache
/// of `ctx_size` positions on its layers (as the planner counts it).
pub fn hold_share(
    model: &mut Model,
    plan: &Plan,
    me: &str,
    budget: u64,
    ctx_size: usize,
) -> Result<()> {
    if budget == 0 {
        return Ok(());
    }
    let n_layer = model.n_layer();
    let share = share_of(plan, me, n_layer);
    let mine = share.layers.iter().filter(|&&l| l).count();
    let kv = (model.kv_bytes_per_token() * ctx_size * mine / n_layer.max(1)) as u64;
    let mut cfg = StoreConfig::new(budget.saturating_sub(kv));
    cfg.share = Some(share);
    model.set_memory_budget(&cfg)?;
    let s = model.store_stats();
    if s.paged {
        tracing::info!(
            "share paged within {} (budget {}, KV {}): {} pinned, {} expert cache, {} streamed layers",
            store::format_size(cfg.budget),
            store::format_size(budget),
            store::format_size(kv),
            store::format_size(s.pinned_bytes),
            store::format_size(s.expert_cache_bytes),
            s.streamed_layers
        );
    }
    Ok(())
}

/// The weight store's figures as a node status reports them.
pub fn to_proto(s: &StoreStats) -> pb::Paging {
    pb::Paging {
        paged: s.paged,
        budget_bytes: s.budget_bytes,
        resident_bytes: s.resident_bytes,
        expert_hit_rate: s.expert_hit_rate(),
        bytes_read: s.bytes_read,
        tokens: s.tokens,
        bytes_read_per_token: if s.tokens > 0 {
            s.bytes_read as f64 / s.tokens as f64
        } else {
            0.0
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dwarfstar_planner::{ActDType, ExpertShard, Stage};

    #[test]
    fn a_share_is_the_nodes_layers_and_experts() {
        let plan = Plan {
            version: 1,
            model: "m".into(),
            coordinator: "a".into(),
            stages: vec![
                Stage {
                    node: "a".into(),
                    layers: 0..2,
                    holds_embed: true,
                    holds_output: false,
                },
                Stage {
                    node: "b".into(),
                    layers: 2..3,
                    holds_embed: false,
                    holds_output: true,
                },
            ],
            experts: vec![
                ExpertShard {
                    node: "a".into(),
                    layer: 1,
                    experts: vec![0, 1],
                },
                ExpertShard {
                    node: "b".into(),
                    layer: 1,
                    experts: vec![2, 3],
                },
                ExpertShard {
                    node: "b".into(),
                    layer: 2,
                    experts: vec![0, 1, 2, 3],
                },
            ],
            activation_dtype: ActDType::F32,
            predicted_tokens_per_s: 1.0,
            predicted_paging: Vec::new(),
            output_node: "b".into(),
        };
        let a = share_of(&plan, "a", 3);
        assert!(a.embed && !a.output);
        assert_eq!(a.layers, vec![true, true, false]);
        assert!(a.holds(1, 1) && !a.holds(1, 2) && !a.holds(2, 0) && !a.holds(0, 0));
        let b = share_of(&plan, "b", 3);
        assert!(!b.embed && b.output);
        assert_eq!(b.layers, vec![false, false, true]);
        assert!(b.holds(1, 3) && b.holds(2, 0) && !b.holds(1, 0));
    }
}
