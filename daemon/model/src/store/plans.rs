//! The [`Plan`]s of the architectures: which tensors are global, which
//! belong to a layer, which are routed-expert stacks.

use crate::deepseek2::weights::{Ds2Weights, Ffn, GateUp, Mlp, QProj, Stack};
use crate::deepseek4::weights::Ds4Weights;
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
                    held: Vec::new(),
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

fn ds4_attn(a: &crate::deepseek4::weights::AttnWeights, r: &mut Vec<ByteRange>) {
    r.extend([&a.q_a, &a.q_b, &a.kv, &a.out_a, &a.out_b].map(range));
    if let Some(c) = &a.comp {
        r.extend([range(&c.kv), range(&c.gate)]);
    }
    if let Some(ix) = &a.indexer {
        r.extend([&ix.q_b, &ix.proj, &ix.comp.kv, &ix.comp.gate].map(range));
    }
}

/// deepseek4: embeddings, head (and its hyper-connection collapse), every
/// router and every FFN hyper-connection mix global (pre-gating the next
/// layer runs `hc_ffn` then the router on the current streams); the
/// attention (with its compressors and indexer), its hyper-connection
/// mix and the shared expert per layer; the routed-expert stacks sliced
/// per expert, gate, up, down. The MTP block is not run, so not held.
/// Small vectors (norms, sinks, hash tables) are copied at load.
pub(crate) fn deepseek4_plan(w: &Ds4Weights, n_expert_used: usize) -> Plan {
    let mut global = vec![range(&w.tok_embd), range(&w.output), range(&w.hc_head.fn_)];
    let mut layers = Vec::with_capacity(w.layers.len());
    let mut experts = Vec::with_capacity(w.layers.len());
    for l in &w.layers {
        global.extend([range(&l.hc_ffn.fn_), range(&l.moe.gate_inp)]);
        let mut r = vec![range(&l.hc_attn.fn_)];
        ds4_attn(&l.attn, &mut r);
        if let Some(sh) = &l.moe.shared {
            r.extend([&sh.gate, &sh.up, &sh.down].map(range));
        }
        layers.push(r);
        let m = &l.moe;
        experts.push(Some(ExpertLayout {
            stacks: vec![slices(&m.gate), slices(&m.up), slices(&m.down)],
            n: m.down.n,
            held: Vec::new(),
        }));
    }
    Plan {
        global,
        layers,
        experts,
        n_expert_used,
    }
}
