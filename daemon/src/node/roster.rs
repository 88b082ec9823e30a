//! What a node knows about the other members of its plan, for status
//! answers: each member's lifecycle state (the coordinator learns it from
//! the `NodeReady` answers to its proposal; a member learns that the whole
//! plan is in force from the coordinator's own `NodeReady`), the bytes each
//! member holds, and the shape of the model the plan is for.

use std::collections::BTreeMap;
use std::sync::Mutex;

use dwarfstar_planner::{ModelShape, Plan};

/// A member's lifecycle as this node last heard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Asked to load its share (a proposal is out).
    Loading,
    /// Loaded its share of `plan_version`.
    Ready,
    /// Its load failed or it could not be reached.
    Failed,
}

/// One member of the plan in force.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub state: MemberState,
    /// Why it failed; empty otherwise.
    pub detail: String,
    pub plan_version: u64,
    /// Bytes of weights the member said it holds (`NodeReady.bytes_loaded`);
    /// 0 while unknown.
    pub bytes_loaded: u64,
    pub load_ms: u64,
}

/// Members by node id, the model's shape, and this node's announced
/// capabilities (with its service addresses).
#[derive(Default)]
pub struct Roster {
    members: Mutex<BTreeMap<String, Member>>,
    /// The plan's model: its file name and shape.
    model: Mutex<Option<(String, ModelShape)>>,
    local_caps: Mutex<Option<dwarfstar_mesh::Capabilities>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Roster {
    /// Forgets every member: a new plan begins with `nodes` loading.
    pub fn begin(&self, version: u64, nodes: &[&str]) {
        let mut m = lock(&self.members);
        m.clear();
        for n in nodes {
            m.insert(
                n.to_string(),
                Member {
                    state: MemberState::Loading,
                    detail: String::new(),
                    plan_version: version,
                    bytes_loaded: 0,
                    load_ms: 0,
                },
            );
        }
    }

    /// A member answered (or failed to answer) the proposal.
    pub fn set(&self, node: &str, state: MemberState, detail: String, ready: Option<(u64, u64)>) {
        let mut m = lock(&self.members);
        let e = m.entry(node.to_string()).or_insert(Member {
            state,
            detail: String::new(),
            plan_version: 0,
            bytes_loaded: 0,
            load_ms: 0,
        });
        e.state = state;
        e.detail = detail;
        if let Some((bytes, ms)) = ready {
            e.bytes_loaded = bytes;
            e.load_ms = ms;
        }
    }

    /// The coordinator of `version` is ready: it applied the plan only after
    /// every member's `NodeReady`, so every member is.
    pub fn all_ready(&self, version: u64) -> bool {
        let mut m = lock(&self.members);
        if m.values().any(|e| e.plan_version != version) {
            return false;
        }
        for e in m.values_mut() {
            e.state = MemberState::Ready;
            e.detail.clear();
        }
        true
    }

    pub fn members(&self) -> BTreeMap<String, Member> {
        lock(&self.members).clone()
    }

    /// The plan's model file (its name) and shape.
    pub fn set_model(&self, file: String, shape: ModelShape) {
        *lock(&self.model) = Some((file, shape));
    }

    pub fn shape(&self) -> Option<ModelShape> {
        lock(&self.model).as_ref().map(|m| m.1.clone())
    }

    /// The file name of the plan's model, once known.
    pub fn model_file(&self) -> Option<String> {
        lock(&self.model).as_ref().map(|m| m.0.clone())
    }

    pub fn set_local_caps(&self, caps: dwarfstar_mesh::Capabilities) {
        *lock(&self.local_caps) = Some(caps);
    }

    pub fn local_caps(&self) -> Option<dwarfstar_mesh::Capabilities> {
        lock(&self.local_caps).clone()
    }
}

/// Bytes of weights `node` holds under `plan`: its stages' layers (dense
/// and shared-expert tensors), the routed experts of its shards, the
/// embedding on the coordinator and the output on the output node (a tied
/// table once).
pub fn held_bytes(shape: &ModelShape, plan: &Plan, node: &str) -> u64 {
    let mut b = 0u64;
    for s in plan.stages.iter().filter(|s| s.node == node) {
        for li in s.layers.clone() {
            if let Some(l) = shape.layers.get(li as usize) {
                b += l.dense_bytes + l.shared_expert_bytes;
                if !plan.experts.iter().any(|e| e.layer == li) {
                    b += l.n_experts as u64 * l.expert_bytes;
                }
            }
        }
    }
    for e in plan.experts.iter().filter(|e| e.node == node) {
        if let Some(l) = shape.layers.get(e.layer as usize) {
            b += e.experts.len() as u64 * l.expert_bytes;
        }
    }
    let embed = plan.coordinator == node;
    let output = plan.output_node == node
        || (plan.output_node.is_empty()
            && plan.stages.iter().any(|s| s.node == node && s.holds_output));
    if embed {
        b += shape.embed_bytes;
    }
    if output {
        b += shape.output_bytes;
        if embed && shape.tied_embeddings {
            b = b.saturating_sub(shape.embed_bytes.min(shape.output_bytes));
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use dwarfstar_planner::{ActDType, ExpertShard, LayerShape, Stage};

    fn shape(moe: bool) -> ModelShape {
        let layer = LayerShape {
            dense_bytes: 100,
            shared_expert_bytes: if moe { 10 } else { 0 },
            n_experts: if moe { 4 } else { 0 },
            n_experts_used: if moe { 2 } else { 0 },
            expert_bytes: if moe { 7 } else { 0 },
            kv_bytes_per_token: 1,
            ..Default::default()
        };
        ModelShape {
            name: "m".into(),
            arch: "llama".into(),
            n_layer: 4,
            hidden: 8,
            n_vocab: 16,
            embed_bytes: 1000,
            output_bytes: 2000,
            output_params: 0,
            tied_embeddings: false,
            unused_bytes: 0,
            layers: vec![layer; 4],
            kv_bytes_per_token: 4,
            active_bytes_per_token: 0,
        }
    }

    fn plan(experts: Vec<ExpertShard>) -> Plan {
        Plan {
            version: 3,
            model: "m".into(),
            coordinator: "a".into(),
            stages: vec![
                Stage {
                    node: "a".into(),
                    layers: 0..1,
                    holds_embed: true,
                    holds_output: false,
                },
                Stage {
                    node: "b".into(),
                    layers: 1..4,
                    holds_embed: false,
                    holds_output: true,
                },
            ],
            experts,
            activation_dtype: ActDType::F32,
            predicted_tokens_per_s: 0.0,
            predicted_paging: vec![],
            output_node: "b".into(),
        }
    }

    #[test]
    fn a_pipeline_splits_the_weights_between_its_stages() {
        let (s, p) = (shape(false), plan(vec![]));
        assert_eq!(held_bytes(&s, &p, "a"), 100 + 1000);
        assert_eq!(held_bytes(&s, &p, "b"), 300 + 2000);
        assert_eq!(held_bytes(&s, &p, "c"), 0);
    }

    #[test]
    fn routed_experts_count_where_their_shard_is() {
        let s = shape(true);
        let shards = (0..4)
            .flat_map(|l| {
                [
                    ExpertShard {
                        node: "a".into(),
                        layer: l,
                        experts: vec![0, 1, 2],
                    },
                    ExpertShard {
                        node: "c".into(),
                        layer: l,
                        experts: vec![3],
                    },
                ]
            })
            .collect();
        let p = plan(shards);
        assert_eq!(held_bytes(&s, &p, "a"), 110 + 1000 + 4 * 3 * 7);
        assert_eq!(held_bytes(&s, &p, "b"), 3 * 110 + 2000);
        assert_eq!(held_bytes(&s, &p, "c"), 4 * 7);
        // Without shards, a stage holds its layers' experts.
        let p = plan(vec![]);
        assert_eq!(held_bytes(&s, &p, "b"), 3 * (110 + 28) + 2000);
    }

    #[test]
    fn the_coordinators_ready_makes_the_plan_ready() {
        let r = Roster::default();
        r.begin(5, &["a", "b"]);
        r.set("b", MemberState::Failed, "gone".into(), None);
        assert!(!r.all_ready(4), "another version");
        assert!(r.all_ready(5));
        let m = r.members();
        assert!(m
            .values()
            .all(|e| e.state == MemberState::Ready && e.detail.is_empty()));
    }
}
