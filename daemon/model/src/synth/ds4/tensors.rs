//! The tensors of a synthetic deepseek4 file: names, dims and types as
//! llama.cpp's converter writes them (see the module above for the types),
//! in its order — the hash routing tables, every block's routed experts
//! (gate, down, up; the MTP block's `nextn.eh_proj` after its experts),
//! the embeddings and head, then each block's other tensors, and
//! `output_norm` last — and how each is filled.
//!
//! Standard deviations keep activations sane at any depth, as the
//! deepseek2 plan's do: `1/sqrt(fan_in)` for every projection, residual
//! outputs (`attn_output_b`, expert and shared-expert `down`) further
//! `× 1/sqrt(2·blocks)`. Hyper-connections start near the identity
//! (`fill::hc_base`, scales 0.5), sinks are `N(0, 0.5)`, compressor
//! position biases `N(0, 0.1)`, routers give logits of deviation ~1, and
//! learned layers get deepseek2's Zipf-like selection bias.

use dwarfstar_kernels::GgmlType;

use super::super::config::{Fill, TensorPlan};
use super::{Ds4Plan, HC, IDX_DIM};

const F32: GgmlType = GgmlType::F32;
const F16: GgmlType = GgmlType::F16;
const Q8: GgmlType = GgmlType::Q8_0;

fn inv(x: usize) -> f32 {
    1.0 / (x as f32).sqrt()
}

/// Collects tensors in order.
#[derive(Default)]
struct List(Vec<TensorPlan>);

impl List {
    fn push(&mut self, name: String, dims: &[usize], ty: GgmlType, fill: Fill) {
        self.0.push(TensorPlan {
            name,
            dims: dims.iter().map(|&d| d as u64).collect(),
            ty,
            fill,
        });
    }

    /// A matrix drawn from a pool of deviation `sigma`.
    fn mat(&mut self, name: String, dims: &[usize], ty: GgmlType, sigma: f32) {
        self.push(name, dims, ty, Fill::Pool { sigma });
    }

    fn norm(&mut self, name: String, n: usize) {
        self.push(name, &[n], F32, Fill::Norm);
    }
}

impl Ds4Plan {
    /// The residual-branch output scale over all blocks.
    fn res_scale(&self) -> f32 {
        inv(2 * self.n_block())
    }

    /// Block `il`'s routed experts (and, for the MTP block, `eh_proj`).
    fn expert_tensors(&self, l: &mut List, il: usize) {
        let n = |t: &str| format!("blk.{il}.{t}");
        let (h, ff, e) = (self.hidden, self.expert_ff, self.n_expert);
        l.mat(n("ffn_gate_exps.weight"), &[h, ff, e], self.exp_ty, inv(h));
        l.mat(
            n("ffn_down_exps.weight"),
            &[ff, h, e],
            self.down_ty,
            inv(ff) * self.res_scale(),
        );
        l.mat(n("ffn_up_exps.weight"), &[h, ff, e], self.exp_ty, inv(h));
        if il == self.n_layer {
            l.mat(n("nextn.eh_proj.weight"), &[2 * h, h], Q8, inv(2 * h));
        }
    }

    /// A compressor of `dim`-wide entries pooling `ratio` tokens.
    fn compressor(&self, l: &mut List, prefix: String, ratio: usize, dim: usize) {
        let coff = if ratio == 4 { 2 } else { 1 };
        let h = self.hidden;
        l.push(
            format!("{prefix}_ape.weight"),
            &[coff * dim, ratio],
            F16,
            Fill::Normal {
                mean: 0.0,
                sigma: 0.1,
            },
        );
        l.norm(format!("{prefix}_norm.weight"), dim);
        l.mat(
            format!("{prefix}_gate.weight"),
            &[h, coff * dim],
            F16,
            inv(h),
        );
        l.mat(format!("{prefix}_kv.weight"), &[h, coff * dim], F16, inv(h));
    }

    fn hc(&self, l: &mut List, prefix: String, mix: usize, n_scale: usize) {
        let flat = HC * self.hidden;
        let base = if mix == HC {
            Fill::Normal {
                mean: 0.0,
                sigma: 0.1,
            }
        } else {
            Fill::HcBase { hc: HC }
        };
        l.push(format!("{prefix}_base.weight"), &[mix], F32, base);
        l.mat(format!("{prefix}_fn.weight"), &[flat, mix], F16, inv(flat));
        l.push(
            format!("{prefix}_scale.weight"),
            &[n_scale],
            F32,
            Fill::Normal {
                mean: 0.5,
                sigma: 0.05,
            },
        );
    }

    /// Block `il`'s tensors other than its routed experts and hash table.
    fn block_tensors(&self, l: &mut List, il: usize) {
        let n = |t: &str| format!("blk.{il}.{t}");
        let (h, hd, ql) = (self.hidden, self.head_dim, self.q_lora);
        let rs = self.res_scale();
        l.push(
            n("attn_sinks.weight"),
            &[self.n_head],
            F32,
            Fill::Normal {
                mean: 0.0,
                sigma: 0.5,
            },
        );
        let ratio = self.ratio(il) as usize;
        if ratio != 0 {
            self.compressor(l, n("attn_compressor"), ratio, hd);
        }
        if ratio == 4 {
            self.compressor(l, n("indexer_compressor"), 4, IDX_DIM);
            l.mat(n("indexer.proj.weight"), &[h, self.idx_heads], F16, inv(h));
            l.mat(
                n("indexer.attn_q_b.weight"),
                &[ql, self.idx_heads * IDX_DIM],
                F16,
                inv(ql),
            );
        }
        l.norm(n("attn_kv_a_norm.weight"), hd);
        l.norm(n("attn_q_a_norm.weight"), ql);
        l.mat(n("attn_kv.weight"), &[h, hd], Q8, inv(h));
        let group_in = self.n_head * hd / self.o_groups;
        let lora_out = self.o_groups * self.o_lora;
        l.mat(
            n("attn_output_a.weight"),
            &[group_in, lora_out],
            Q8,
            inv(group_in),
        );
        l.mat(
            n("attn_output_b.weight"),
            &[lora_out, h],
            Q8,
            inv(lora_out) * rs,
        );
        l.mat(n("attn_q_a.weight"), &[h, ql], Q8, inv(h));
        l.mat(n("attn_q_b.weight"), &[ql, self.n_head * hd], Q8, inv(ql));
        l.norm(n("attn_norm.weight"), h);
        if il >= self.n_hash {
            l.push(n("exp_probs_b.bias"), &[self.n_expert], F32, Fill::Bias);
        }
        l.push(
            n("ffn_gate_inp.weight"),
            &[h, self.n_expert],
            F16,
            Fill::Router { sigma: inv(h) },
        );
        let ff = self.expert_ff;
        l.mat(n("ffn_gate_shexp.weight"), &[h, ff], Q8, inv(h));
        l.mat(n("ffn_down_shexp.weight"), &[ff, h], Q8, inv(ff) * rs);
        l.mat(n("ffn_up_shexp.weight"), &[h, ff], Q8, inv(h));
        l.norm(n("ffn_norm.weight"), h);
        let mix = (2 + HC) * HC;
        self.hc(l, n("hc_attn"), mix, 3);
        self.hc(l, n("hc_ffn"), mix, 3);
        if il == self.n_layer {
            l.norm(n("nextn.enorm.weight"), h);
            l.norm(n("nextn.hnorm.weight"), h);
            l.norm(n("nextn.shared_head_norm.weight"), h);
        }
    }

    /// Every tensor of the file, in file order.
    pub fn tensors(&self) -> Vec<TensorPlan> {
        let mut l = List::default();
        let (h, v) = (self.hidden, self.n_vocab);
        for il in 0..self.n_hash {
            l.push(
                format!("blk.{il}.ffn_gate_tid2eid.weight"),
                &[self.top_k, v],
                GgmlType::I32,
                Fill::HashIds {
                    n_expert: self.n_expert,
                },
            );
        }
        for il in 0..self.n_block() {
            self.expert_tensors(&mut l, il);
        }
        l.mat("token_embd.weight".into(), &[h, v], F16, 1.0);
        self.hc(&mut l, "output_hc".into(), HC, 1);
        // Logits of standard deviation ~3: a peaked, not flat, output.
        l.mat("output.weight".into(), &[h, v], Q8, 3.0 / (h as f32).sqrt());
        for il in 0..self.n_block() {
            self.block_tensors(&mut l, il);
        }
        l.norm("output_norm.weight".into(), h);
        l.0
    }
}
