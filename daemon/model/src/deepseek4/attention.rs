//! DeepSeek V4 attention for one layer: a single shared key/value head,
//! attention sinks, a sliding window, and the compressed blocks of CSA
//! (ratio 4, chosen by the lightning indexer) or HCA (ratio 128, all).
//!
//! - query: `q_a` → RMS norm → `q_b`, then each head RMS-normalised
//!   without weight; key/value: `kv` → RMS norm (`attn_kv_a_norm`). Both
//!   get RoPE on their trailing `n_rot` dims at the token's position.
//! - the keys of a query at position `p`: the raw rows of positions
//!   `p - sliding_window + 1 ..= p`, then the compressed entries it may
//!   see (HCA: blocks `< (p+1)/128`; CSA: the indexer's choice among blocks
//!   `< (p+1)/4`). Keys double as values.
//! - softmax over `q·k / sqrt(head_dim)` and the head's sink logit (which
//!   takes probability mass but contributes no value).
//! - the output's rope dims are rotated back by the query's angle, then the
//!   grouped projection: head group `g` (`n_head / o_groups` heads) goes
//!   through rows `g·o_lora_rank..` of `attn_output_a`, the concatenation
//!   through `attn_output_b`.
//!
//! New compressed entries are made token by token before the queries run,
//! so a block completed inside a batch is visible to the queries at and
//! after its last token, exactly as when decoding one token at a time.

use dwarfstar_kernels::ops;
use rayon::prelude::*;

use crate::error::Result;
use crate::observe::MatIndex;

use super::cache::{Ds4Cache, LayerCache, Selection};
use super::compressor::CompState;
use super::hparams::{Ds4HParams, LayerKind};
use super::indexer::{self, IndexerRule};
use super::rope::Rotary;
use super::weights::{rows, AttnWeights, CompressorWeights};
use super::Ctx;

/// One sequence's rows in a batch: first row, row count, first position.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    pub row: usize,
    pub len: usize,
    pub pos0: usize,
}

/// RMS-normalises every `w.len()`-wide row of `x`.
pub(crate) fn norm_rows(x: &mut [f32], w: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(w.len()) {
        ops::rms_norm(row, w, eps);
    }
}

/// Feeds the compressor `state` the rows of one span (values `kv`, gate
/// scores `gate`, `n × coff·dim`, positions from `pos0`) and returns each
/// finished entry: normalised, rotated at its block's first position, then
/// passed through `finish` (the indexer's preparation).
#[allow(clippy::too_many_arguments)]
fn compress(
    state: &mut CompState,
    w: &CompressorWeights,
    kv: &[f32],
    gate: &mut [f32],
    pos0: usize,
    ratio: usize,
    rot: &Rotary,
    eps: f32,
    finish: impl Fn(&mut [f32]),
) -> Vec<Vec<f32>> {
    let wide = w.kv.rows;
    let dim = w.norm.len();
    let mut cs = Vec::new();
    let mut out = Vec::new();
    for (i, (k, g)) in kv
        .chunks_exact(wide)
        .zip(gate.chunks_exact_mut(wide))
        .enumerate()
    {
        let p = pos0 + i;
        let ape = &w.ape[(p % ratio) * wide..(p % ratio + 1) * wide];
        g.iter_mut().zip(ape).for_each(|(a, &b)| *a += b);
        if let Some(mut e) = state.push(k, g) {
            ops::rms_norm(&mut e, &w.norm, eps);
            rot.cos_sin(p + 1 - ratio, &mut cs);
            rot.apply(&mut e, dim, &cs);
            finish(&mut e);
            out.push(e);
        }
    }
    out
}

/// One query's attention over `keys` (`nk × hd`, keys = values) for every
/// head of `q` (`n_head × hd`), with per-head sink logits.
fn attend(q: &[f32], keys: &[f32], hd: usize, sinks: &[f32], scale: f32, o: &mut [f32]) {
    let nk = keys.len() / hd;
    let mut sc = vec![0f32; nk + 1];
    for ((qh, oh), &sink) in q.chunks_exact(hd).zip(o.chunks_exact_mut(hd)).zip(sinks) {
        for (s, k) in sc.iter_mut().zip(keys.chunks_exact(hd)) {
            *s = ops::dot_f32(qh, k) * scale;
        }
        sc[nk] = sink;
        ops::softmax(&mut sc);
        oh.fill(0.0);
        for (&a, k) in sc.iter().zip(keys.chunks_exact(hd)) {
            ops::axpy(oh, a, k);
        }
    }
}

/// What the layer needs besides weights and caches.
pub(crate) struct LayerCx<'a> {
    pub hp: &'a Ds4HParams,
    pub il: usize,
    pub kind: LayerKind,
    pub rot: &'a Rotary,
    pub rule: IndexerRule,
}

/// Gathers the keys of the query at position `p` (row `t`) into `keys`.
#[allow(clippy::too_many_arguments)]
fn gather(
    lc: &LayerCache,
    sp: &Span,
    kv: &[f32],
    hd: usize,
    n_swa: usize,
    kind: LayerKind,
    sel: &[u32],
    p: usize,
    keys: &mut Vec<f32>,
    buf: &mut [f32],
) {
    keys.clear();
    for qp in (p + 1).saturating_sub(n_swa)..=p {
        let row = if qp < sp.pos0 {
            let s = qp % lc.raw_slots;
            &lc.raw[s * hd..(s + 1) * hd]
        } else {
            let r = sp.row + qp - sp.pos0;
            &kv[r * hd..(r + 1) * hd]
        };
        keys.extend_from_slice(row);
    }
    let mut push = |b: usize| {
        lc.entries.get(b, buf);
        keys.extend_from_slice(buf);
    };
    match kind {
        LayerKind::Sliding => {}
        LayerKind::Hca => (0..(p + 1) / 128).for_each(&mut push),
        LayerKind::Csa => sel.iter().for_each(|&b| push(b as usize)),
    }
}

/// The attention block for the normalised rows `cur` (`n × n_embd`, the
/// sequences of `spans` back to back). Updates each sequence's layer state
/// and returns `n × n_embd`.
pub(crate) fn attention(
    cx: &Ctx<'_>,
    lx: &LayerCx<'_>,
    w: &AttnWeights,
    cur: &[f32],
    spans: &[Span],
    caches: &mut [&mut Ds4Cache],
) -> Result<Vec<f32>> {
    let hp = lx.hp;
    let (il, rot) = (lx.il, lx.rot);
    let (nh, hd, eps) = (hp.n_head, hp.head_dim, hp.rms_eps);
    let n = cur.len() / hp.n_embd;

    let mut qr = cx.mm(&w.q_a, cur, n)?;
    norm_rows(&mut qr, &w.q_a_norm, eps);
    let mut q = cx.mm(&w.q_b, &qr, n)?;
    for head in q.chunks_exact_mut(hd) {
        ops::rms_norm(head, &[], eps);
    }
    let mut kv = cx.mm(&w.kv, cur, n)?;
    norm_rows(&mut kv, &w.kv_norm, eps);
    let mut angles = vec![Vec::new(); n];
    for sp in spans {
        for i in 0..sp.len {
            let t = sp.row + i;
            rot.cos_sin(sp.pos0 + i, &mut angles[t]);
            rot.apply(&mut q[t * nh * hd..(t + 1) * nh * hd], hd, &angles[t]);
            rot.apply(&mut kv[t * hd..(t + 1) * hd], hd, &angles[t]);
        }
    }

    if let Some(cw) = &w.comp {
        let ratio = lx.kind.ratio();
        let ckv = cx.mm(&cw.kv, cur, n)?;
        let mut cg = cx.mm(&cw.gate, cur, n)?;
        let wide = cw.kv.rows;
        for (sp, c) in spans.iter().zip(caches.iter_mut()) {
            let lc = c.layer_mut(il);
            if let Some(st) = &mut lc.comp {
                let range = sp.row * wide..(sp.row + sp.len) * wide;
                let made = compress(
                    st,
                    cw,
                    &ckv[range.clone()],
                    &mut cg[range],
                    sp.pos0,
                    ratio,
                    rot,
                    eps,
                    |_| {},
                );
                made.iter().for_each(|e| lc.entries.push(e));
            }
        }
    }

    // The indexer's choice per query (CSA only).
    let mut sel: Vec<Vec<u32>> = vec![Vec::new(); n];
    if let Some(ix) = &w.indexer {
        let idim = hp.idx_dim;
        let rule = lx.rule;
        let prep = |v: &mut [f32]| indexer::prepare(rule, v);
        let ikv = cx.mm(&ix.comp.kv, cur, n)?;
        let mut ig = cx.mm(&ix.comp.gate, cur, n)?;
        let wide = ix.comp.kv.rows;
        for (sp, c) in spans.iter().zip(caches.iter_mut()) {
            let lc = c.layer_mut(il);
            if let Some(st) = &mut lc.idx {
                let range = sp.row * wide..(sp.row + sp.len) * wide;
                let made = compress(
                    st,
                    &ix.comp,
                    &ikv[range.clone()],
                    &mut ig[range],
                    sp.pos0,
                    4,
                    rot,
                    eps,
                    prep,
                );
                made.iter().for_each(|e| lc.keys.push(e));
            }
        }
        let mut iq = cx.mm(&ix.q_b, &qr, n)?;
        let ih = hp.idx_heads;
        for (t, row) in iq.chunks_exact_mut(ih * idim).enumerate() {
            rot.apply(row, idim, &angles[t]);
            row.chunks_exact_mut(idim).for_each(prep);
        }
        let mut iw = cx.mm(&ix.proj, cur, n)?;
        let wscale = 1.0 / ((idim as f32).sqrt() * (ih as f32).sqrt());
        iw.iter_mut().for_each(|v| *v *= wscale);
        for (sp, c) in spans.iter().zip(caches.iter_mut()) {
            let lc = c.layer(il);
            let picks: Vec<Vec<u32>> = (0..sp.len)
                .into_par_iter()
                .map(|i| {
                    let t = sp.row + i;
                    indexer::select(
                        &iq[t * ih * idim..(t + 1) * ih * idim],
                        &iw[t * ih..(t + 1) * ih],
                        idim,
                        (sp.pos0 + i + 1) / 4,
                        hp.idx_top_k,
                        |s, buf| lc.keys.get(s, buf),
                    )
                })
                .collect();
            if c.record_selections {
                for (i, blocks) in picks.iter().enumerate() {
                    c.selections.push(Selection {
                        layer: il,
                        pos: sp.pos0 + i,
                        blocks: blocks.clone(),
                    });
                }
            }
            for (i, s) in picks.into_iter().enumerate() {
                sel[sp.row + i] = s;
            }
        }
    }

    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; n * nh * hd];
    for (sp, c) in spans.iter().zip(caches.iter()) {
        let lc = c.layer(il);
        let dst = &mut out[sp.row * nh * hd..(sp.row + sp.len) * nh * hd];
        let run = |i: usize, o: &mut [f32], keys: &mut Vec<f32>, buf: &mut Vec<f32>| {
            let t = sp.row + i;
            let (kind, n_swa) = (lx.kind, hp.n_swa);
            gather(
                lc,
                sp,
                &kv,
                hd,
                n_swa,
                kind,
                &sel[t],
                sp.pos0 + i,
                keys,
                buf,
            );
            attend(
                &q[t * nh * hd..(t + 1) * nh * hd],
                keys,
                hd,
                &w.sinks,
                scale,
                o,
            );
        };
        dst.par_chunks_mut(nh * hd).enumerate().for_each_init(
            || (Vec::new(), vec![0f32; hd]),
            |(keys, buf), (i, o)| run(i, o, keys, buf),
        );
    }

    // The raw window keeps the last rows of each sequence.
    for (sp, c) in spans.iter().zip(caches.iter_mut()) {
        let lc = c.layer_mut(il);
        let slots = lc.raw_slots;
        if slots == 0 {
            continue;
        }
        for i in sp.len.saturating_sub(slots)..sp.len {
            let s = (sp.pos0 + i) % slots;
            let r = sp.row + i;
            lc.raw[s * hd..(s + 1) * hd].copy_from_slice(&kv[r * hd..(r + 1) * hd]);
        }
    }

    for (t, o) in out.chunks_exact_mut(nh * hd).enumerate() {
        rot.apply_inverse(o, hd, &angles[t]);
    }
    let (og, ol) = (hp.o_groups, hp.o_lora_rank);
    let gd = nh * hd / og;
    let mut oa = vec![0f32; n * og * ol];
    let mut xg = vec![0f32; n * gd];
    for g in 0..og {
        for t in 0..n {
            xg[t * gd..(t + 1) * gd]
                .copy_from_slice(&out[t * nh * hd + g * gd..t * nh * hd + (g + 1) * gd]);
        }
        let slice = MatIndex::Slice {
            id: g as u32,
            of: og as u32,
        };
        cx.see(&w.out_a, &xg, slice);
        let y = cx.mat(rows(&w.out_a, cx.file, g * ol, ol), &xg, n)?;
        for t in 0..n {
            oa[t * og * ol + g * ol..t * og * ol + (g + 1) * ol]
                .copy_from_slice(&y[t * ol..(t + 1) * ol]);
        }
    }
    cx.mm(&w.out_b, &oa, n)
}
