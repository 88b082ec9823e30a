//! The [`Plan`]s of the architectures: which tensors are global, which
//! belong to a layer, which are routed-expert stacks.

use crate::deepseek2::weights::{Ds2Weights, Ffn, GateUp, Mlp, QProj, Stack};
use crate::weights::{DenseWeights, Weight};

use super::plan::{ByteRange, ExpertLayout, Plan, StackRange};

fn range(w: &Weight) -> ByteRange {
    ByteRange {
        off: w.info.offset,
        len: w.info.n_bytes,
    }
}

fn whole(s: &Stack) -> ByteRange {
    ByteRange {
        off: s.info.offset,
        len: s.info.n_bytes,
    }
}

fn slices(s: &Stack) -> StackRange {
    StackRange {
        off: s.info.offset,
        slice: s.slice_bytes() as u64,
    }
}

fn mlp(m: &Mlp) -> [ByteRange; 3] {
    [range(&m.gate), range(&m.up), range(&m.down)]
}

/// Dense models: embeddings and head global, each block a layer.
pub(crate) fn dense_plan(w: &DenseWeights) -> Plan {
    let layers: Vec<Vec<ByteRange>> = w
        .layers
        .iter()
        .map(|l| {
            [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down]
                .into_iter()
                .map(range)
                .collect()
        })
        .collect();
    Plan {
        global: vec![range(&w.tok_embd), range(&w.output)],
        experts: vec![None; layers.len()],
        layers,
        n_expert_used: 0,
    }
}

/// deepseek2: embeddings, head and every router global (the routers
/// predict the next layer's experts before that layer is read); MLA,
/// shared experts and dense FFNs per layer; the routed-expert stacks
/// sliced per expert, gate and up before down (the order they run).
pub(crate) fn deepseek2_plan(w: &Ds2Weights, n_expert_used: usize) -> Plan {
    let mut global = vec![range(&w.tok_embd), range(&w.output)];
    let mut layers = Vec::with_capacity(w.layers.len());
    let mut experts = Vec::with_capacity(w.layers.len());
    for l in &w.layers {
        let a = &l.attn;
        let mut r = match &a.q {
            QProj::Lora { a, b, .. } => vec![range(a), range(b)],
            QProj::Direct(q) => vec![range(q)],
        };
        r.extend([
            range(&a.kv_a_mqa),
            whole(&a.k_b),
            whole(&a.v_b),
            range(&a.wo),
        ]);
        match &l.ffn {
            Ffn::Dense(m) => {
                r.extend(mlp(m));
                experts.push(None);
            }
            Ffn::Moe(m) => {
                global.push(range(&m.gate_inp));
                if let Some(sh) = &m.shared {
                    r.extend(mlp(sh));
                }
                let mut stacks = match &m.gate_up {
                    GateUp::Split { gate, up } => vec![slices(gate), slices(up)],
                    GateUp::Fused(s) => vec![slices(s)],
                };
                stacks.push(slices(&m.down));
                experts.push(Some(ExpertLayout {
                    stacks,
                    n: m.down.n,
                }));
            }
        }
        layers.push(r);
    }
    Plan {
        global,
        layers,
        experts,
        n_expert_used,
    }
}
