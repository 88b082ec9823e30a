//! The planner's [`Plan`] as the proto message nodes exchange, and back,
//! checked: a plan from a peer must cover every layer exactly once in
//! order before any node acts on it.

use dwarfstar_planner::{ActDType, ExpertShard, Plan, Stage};
use dwarfstar_proto::v1 as pb;

use super::error::{NodeError, Result};

pub fn to_proto(p: &Plan, n_layer: u32) -> pb::Plan {
    pb::Plan {
        version: p.version,
        model: p.model.clone(),
        coordinator: p.coordinator.clone(),
        stages: p
            .stages
            .iter()
            .map(|s| pb::Stage {
                node: s.node.clone(),
                layer_start: s.layers.start,
                layer_end: s.layers.end,
                holds_embed: s.holds_embed,
                holds_output: s.holds_output,
            })
            .collect(),
        experts: p
            .experts
            .iter()
            .map(|e| pb::ExpertShard {
                node: e.node.clone(),
                layer: e.layer,
                experts: e.experts.clone(),
            })
            .collect(),
        activation_dtype: match p.activation_dtype {
            ActDType::F32 => pb::DType::F32 as i32,
            ActDType::F16 => pb::DType::F16 as i32,
        },
        predicted_tokens_per_s: p.predicted_tokens_per_s,
        predicted_paging: p
            .predicted_paging
            .iter()
            .map(|(node, bytes)| pb::NodePaging {
                node: node.clone(),
                bytes: *bytes,
            })
            .collect(),
        n_layer,
    }
}

/// A plan a peer proposed, checked for `n_layer` layers.
pub fn from_proto(p: &pb::Plan, n_layer: u32) -> Result<Plan> {
    let bad = |m: String| Err(NodeError::BadRequest(format!("plan {}: {m}", p.version)));
    if p.n_layer != n_layer {
        return bad(format!("for {} layers, the model has {n_layer}", p.n_layer));
    }
    let mut next = 0;
    for s in &p.stages {
        if s.layer_start != next || s.layer_end < s.layer_start {
            return bad(format!(
                "stage {}..{} out of order",
                s.layer_start, s.layer_end
            ));
        }
        next = s.layer_end;
    }
    if next != n_layer || p.stages.is_empty() {
        return bad(format!("stages cover 0..{next} of {n_layer} layers"));
    }
    // The output head is on the last stage, or with the coordinator's
    // first stage (tied embeddings: the final hidden rows come back).
    let out: Vec<usize> = (0..p.stages.len())
        .filter(|&i| p.stages[i].holds_output)
        .collect();
    let ok = match out.as_slice() {
        [i] => *i + 1 == p.stages.len() || (*i == 0 && p.stages[0].node == p.coordinator),
        _ => false,
    };
    if !ok {
        return bad("one stage, the last or the coordinator's first, holds the output head".into());
    }
    let activation_dtype = match pb::DType::try_from(p.activation_dtype) {
        Ok(pb::DType::F16) => ActDType::F16,
        Ok(pb::DType::F32) | Ok(pb::DType::Unspecified) => ActDType::F32,
        _ => return bad(format!("activation dtype {}", p.activation_dtype)),
    };
    Ok(Plan {
        version: p.version,
        model: p.model.clone(),
        coordinator: p.coordinator.clone(),
        stages: p
            .stages
            .iter()
            .map(|s| Stage {
                node: s.node.clone(),
                layers: s.layer_start..s.layer_end,
                holds_embed: s.holds_embed,
                holds_output: s.holds_output,
            })
            .collect(),
        experts: p
            .experts
            .iter()
            .map(|e| ExpertShard {
                node: e.node.clone(),
                layer: e.layer,
                experts: e.experts.clone(),
            })
            .collect(),
        activation_dtype,
        predicted_tokens_per_s: p.predicted_tokens_per_s,
        predicted_paging: p
            .predicted_paging
            .iter()
            .map(|n| (n.node.clone(), n.bytes))
            .collect(),
        output_node: p
            .stages
            .iter()
            .find(|s| s.holds_output)
            .map(|s| s.node.clone())
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            version: 4,
            model: "m".into(),
            coordinator: "a".into(),
            stages: vec![
                Stage {
                    node: "a".into(),
                    layers: 0..10,
                    holds_embed: true,
                    holds_output: false,
                },
                Stage {
                    node: "b".into(),
                    layers: 10..30,
                    holds_embed: false,
                    holds_output: true,
                },
            ],
            experts: vec![ExpertShard {
                node: "b".into(),
                layer: 3,
                experts: vec![1, 2],
            }],
            activation_dtype: ActDType::F16,
            predicted_tokens_per_s: 12.5,
            predicted_paging: vec![("b".into(), 7)],
            output_node: "b".into(),
        }
    }

    #[test]
    fn plans_round_trip() {
        let p = plan();
        assert_eq!(from_proto(&to_proto(&p, 30), 30).unwrap(), p);
    }

    #[test]
    fn incoherent_plans_are_refused() {
        let p = plan();
        assert!(from_proto(&to_proto(&p, 30), 31).is_err());
        let mut gap = to_proto(&p, 30);
        gap.stages[1].layer_start = 11;
        assert!(from_proto(&gap, 30).is_err());
        let mut two_outputs = to_proto(&p, 30);
        two_outputs.stages[0].holds_output = true;
        assert!(from_proto(&two_outputs, 30).is_err());
        let mut none = to_proto(&p, 30);
        none.stages.clear();
        assert!(from_proto(&none, 30).is_err());
    }
}
