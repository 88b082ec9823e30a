//! The search: pipeline orders, the layer split of each order (exact
//! dynamic programming over the boundaries), and expert placements on top
//! of the best split for each stage count.
//!
//! With at most [`EXACT_MAX_NODES`] nodes able to compute, every ordered
//! subset of them is tried (the coordinator first when it is in it); above
//! that, a few subsets per stage count (the fastest nodes, the largest
//! budgets, with and without the coordinator), ordered nearest-link-first.
//! For each order the split minimises (bytes over budget, time) exactly.
//! Ties keep the first found, and every loop runs in node-id order, so the
//! same request always gives the same plan.

use std::collections::{BTreeMap, BTreeSet};

use crate::cost::{Candidate, Ctx, Eval, Holding, Node};
use crate::types::ActDType;

/// Up to this many compute nodes every pipeline order is searched.
pub const EXACT_MAX_NODES: usize = 6;

/// Fractions of a node's overflow the offload variants move to peers.
const OFFLOAD_FRACTIONS: [f64; 4] = [0.25, 0.5, 0.75, 1.0];

type Key = (u64, f64);

fn less(a: Key, b: Key) -> bool {
    a.0 < b.0 || (a.0 == b.0 && a.1 < b.1)
}

/// Prefix sums over layers, shared by every order.
struct Prefix {
    res: Vec<u64>,
    experts: Vec<u64>,
    touched: Vec<f64>,
    /// One layer's active experts.
    working: Vec<u64>,
    /// Per node: prefix of whole-layer times (all experts local).
    time: Vec<Vec<f64>>,
}

impl Prefix {
    fn new(ctx: &Ctx) -> Prefix {
        let n = ctx.layers.len();
        let mut p = Prefix {
            res: vec![0; n + 1],
            experts: vec![0; n + 1],
            touched: vec![0.0; n + 1],
            working: Vec::with_capacity(n),
            time: vec![vec![0.0; n + 1]; ctx.nodes.len()],
        };
        for (i, l) in ctx.layers.iter().enumerate() {
            p.res[i + 1] = p.res[i].saturating_add(l.resident);
            p.experts[i + 1] = p.experts[i].saturating_add(l.n_exp as u64 * l.eb);
            p.touched[i + 1] = p.touched[i] + l.n_used as f64 * l.eb as f64;
            p.working.push(l.n_used as u64 * l.eb);
            for (t, lt) in p.time.iter_mut().zip(&ctx.layer_time) {
                t[i + 1] = t[i] + lt[i];
            }
        }
        p
    }
}

/// The best split of layers over `order`; None when no split exists
/// (more stages than layers). With `free_paging` paging costs no time
/// (only bytes over budget count): the split that moving experts to other
/// nodes' memory would make best.
fn split(
    ctx: &Ctx,
    pre: &Prefix,
    order: &[usize],
    out_on_coord: bool,
    act: ActDType,
    free_paging: bool,
) -> Option<(Key, Vec<u32>)> {
    let l = ctx.layers.len();
    let k = order.len();
    if k == 0 || k > l {
        return None;
    }
    let output = if out_on_coord {
        ctx.coord
    } else {
        order[k - 1]
    };
    // Costs that do not depend on where the boundaries fall.
    let mut fixed: Key = (
        0,
        ctx.chain_time(order, out_on_coord, act)
            + ctx.embed_time()
            + ctx.output_time(output)
            + ctx.step_overhead(order),
    );
    if !order.contains(&ctx.coord) {
        let h = Holding {
            embed: ctx.embed,
            output: if out_on_coord { ctx.output } else { 0 },
            ..Holding::default()
        };
        let f = h.fit(&ctx.nodes[ctx.coord], ctx.skew);
        fixed = (fixed.0 + f.overflow, fixed.1 + f.page_time);
    }
    let e_max = ctx.layers.iter().map(|l| l.n_exp).max().unwrap_or(0);
    let mut best: Vec<Vec<Option<Key>>> = vec![vec![None; l + 1]; k + 1];
    let mut parent = vec![vec![0usize; l + 1]; k + 1];
    best[0][0] = Some((0, 0.0));
    for i in 0..k {
        let n = order[i];
        let node: &Node = &ctx.nodes[n];
        let extra =
            if n == ctx.coord { ctx.embed } else { 0 } + if n == output { ctx.output } else { 0 };
        for a in i..=l - (k - i) {
            let Some(base) = best[i][a] else { continue };
            let mut working = 0u64;
            for b in a + 1..=l - (k - 1 - i) {
                working = working.max(pre.working[b - 1]);
                let h = Holding {
                    weights: pre.res[b] - pre.res[a],
                    embed: extra,
                    experts: pre.experts[b] - pre.experts[a],
                    touched: pre.touched[b] - pre.touched[a],
                    working,
                    n_exp: e_max,
                    ..Holding::default()
                };
                let f = h.fit(node, ctx.skew);
                let page = if free_paging { 0.0 } else { f.page_time };
                let t = pre.time[n][b] - pre.time[n][a] + page;
                let cand = (base.0.saturating_add(f.overflow), base.1 + t);
                if best[i + 1][b].is_none_or(|cur| less(cand, cur)) {
                    best[i + 1][b] = Some(cand);
                    parent[i + 1][b] = a;
                }
            }
        }
    }
    let end = best[k][l]?;
    let mut bounds = vec![l as u32; k + 1];
    let mut b = l;
    for i in (1..=k).rev() {
        b = parent[i][b];
        bounds[i - 1] = b as u32;
    }
    Some(((end.0.saturating_add(fixed.0), end.1 + fixed.1), bounds))
}

/// Every ordered subset of `pool` with `k` in `ks`, the coordinator first
/// whenever it is in.
fn all_orders(pool: &[usize], coord: usize, ks: &BTreeSet<usize>, out: &mut Vec<Vec<usize>>) {
    fn rec(
        rest: &[usize],
        cur: &mut Vec<usize>,
        ks: &BTreeSet<usize>,
        max_k: usize,
        out: &mut Vec<Vec<usize>>,
    ) {
        if ks.contains(&cur.len()) {
            out.push(cur.clone());
        }
        if cur.len() == max_k {
            return;
        }
        for (i, &n) in rest.iter().enumerate() {
            let mut next = rest.to_vec();
            next.remove(i);
            cur.push(n);
            rec(&next, cur, ks, max_k, out);
            cur.pop();
        }
    }
    let max_k = ks.iter().next_back().copied().unwrap_or(0);
    let others: Vec<usize> = pool.iter().copied().filter(|&n| n != coord).collect();
    if pool.contains(&coord) {
        rec(&others, &mut vec![coord], ks, max_k, out);
    }
    let mut cur = Vec::new();
    for (i, &n) in others.iter().enumerate() {
        let mut next = others.clone();
        next.remove(i);
        cur.push(n);
        rec(&next, &mut cur, ks, max_k, out);
        cur.pop();
    }
}

/// A few promising orders per stage count, for many nodes.
fn heuristic_orders(
    ctx: &Ctx,
    pool: &[usize],
    ks: &BTreeSet<usize>,
    act: ActDType,
) -> Vec<Vec<usize>> {
    let mut by_speed = pool.to_vec();
    by_speed.sort_by(|&a, &b| {
        let (x, y) = (&ctx.nodes[a], &ctx.nodes[b]);
        y.bw.total_cmp(&x.bw)
            .then(y.flops.total_cmp(&x.flops))
            .then(a.cmp(&b))
    });
    let mut by_mem = pool.to_vec();
    by_mem.sort_by(|&a, &b| {
        ctx.nodes[b]
            .budget
            .cmp(&ctx.nodes[a].budget)
            .then(a.cmp(&b))
    });
    let coord_ok = pool.contains(&ctx.coord);
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for &k in ks {
        for ranked in [&by_speed, &by_mem] {
            let mut sets = vec![ranked[..k].to_vec()];
            if coord_ok && !sets[0].contains(&ctx.coord) {
                let mut s: Vec<usize> = ranked
                    .iter()
                    .copied()
                    .filter(|&n| n != ctx.coord)
                    .take(k - 1)
                    .collect();
                s.push(ctx.coord);
                sets.push(s);
            }
            for set in sets {
                let order = nearest_first(ctx, set, act);
                if seen.insert(order.clone()) {
                    out.push(order);
                }
            }
        }
    }
    out
}

/// Orders `set`: the coordinator first if in it, then each next node the
/// one with the quickest hop from the previous (ties: lower index).
fn nearest_first(ctx: &Ctx, mut set: Vec<usize>, act: ActDType) -> Vec<usize> {
    set.sort_unstable();
    let mut order = Vec::with_capacity(set.len());
    let mut cur = ctx.coord;
    if let Some(i) = set.iter().position(|&n| n == ctx.coord) {
        order.push(set.remove(i));
    }
    while !set.is_empty() {
        let a = ctx.act_bytes(act);
        let mut bi = 0;
        for i in 1..set.len() {
            if ctx.hop(cur, set[i], a) < ctx.hop(cur, set[bi], a) {
                bi = i;
            }
        }
        cur = set.remove(bi);
        order.push(cur);
    }
    order
}

/// All experts of every MoE layer on the stage's node.
fn local_experts(ctx: &Ctx, stages: &[(usize, std::ops::Range<u32>)]) -> Vec<Vec<(usize, u32)>> {
    let mut ex = vec![Vec::new(); ctx.layers.len()];
    for (n, r) in stages {
        for l in r.clone() {
            let ly = &ctx.layers[l as usize];
            if ly.is_moe() {
                ex[l as usize] = vec![(*n, ly.n_exp)];
            }
        }
    }
    ex
}

/// The best pipelines (all experts local) for each stage count in `ks`:
/// the best as predicted, and the best were paging free (the base that
/// moving experts off over-budget nodes improves most), when different.
pub(crate) fn pipelines(ctx: &Ctx, ks: &BTreeSet<usize>, act: ActDType) -> Vec<Candidate> {
    let pool: Vec<usize> = (0..ctx.nodes.len())
        .filter(|&n| ctx.nodes[n].usable())
        .collect();
    let mut orders = Vec::new();
    if pool.len() <= EXACT_MAX_NODES {
        all_orders(&pool, ctx.coord, ks, &mut orders);
    } else {
        orders = heuristic_orders(ctx, &pool, ks, act);
    }
    let pre = Prefix::new(ctx);
    let mut best: BTreeMap<(usize, bool, usize), (Key, Candidate)> = BTreeMap::new();
    for order in orders {
        let last = order[order.len() - 1];
        // The output goes on the last stage, or on the coordinator when it
        // runs the first stage (then the last stage sends its hidden rows
        // back instead of logits); only there when the request asks.
        let outs: &[bool] = match (
            order[0] == ctx.coord && last != ctx.coord,
            ctx.output_on_coord,
        ) {
            (true, true) => &[true],
            (true, false) => &[false, true],
            (false, _) => &[false],
        };
        for &on_coord in outs {
            for free_paging in [false, true] {
                let Some((key, bounds)) = split(ctx, &pre, &order, on_coord, act, free_paging)
                else {
                    continue;
                };
                // Kept per count of nodes besides the coordinator too, for
                // the spread rule (crate doc, step 3).
                let helpers = order.iter().filter(|&&n| n != ctx.coord).count();
                let slot = (order.len(), free_paging, helpers);
                if best.get(&slot).is_some_and(|(k, _)| !less(key, *k)) {
                    continue;
                }
                let stages: Vec<_> = order
                    .iter()
                    .zip(bounds.windows(2))
                    .map(|(&n, w)| (n, w[0]..w[1]))
                    .collect();
                let cand = Candidate {
                    experts: local_experts(ctx, &stages),
                    stages,
                    output: if on_coord { ctx.coord } else { last },
                    act,
                };
                best.insert(slot, (key, cand));
            }
        }
    }
    let mut out: Vec<Candidate> = Vec::new();
    for (_, c) in best.into_values() {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// Splits `e` experts by `weights` (largest remainder; ties: first).
fn apportion(e: u32, weights: &[(usize, f64)]) -> Vec<(usize, u32)> {
    let total: f64 = weights.iter().map(|w| w.1).sum();
    if total <= 0.0 {
        return Vec::new();
    }
    let mut out: Vec<(usize, u32, f64)> = weights
        .iter()
        .map(|&(n, w)| {
            let q = e as f64 * w / total;
            (n, q.floor() as u32, q - q.floor())
        })
        .collect();
    let mut left = e - out.iter().map(|o| o.1).sum::<u32>().min(e);
    let mut idx: Vec<usize> = (0..out.len()).collect();
    idx.sort_by(|&a, &b| out[b].2.total_cmp(&out[a].2).then(a.cmp(&b)));
    for i in idx.into_iter().cycle() {
        if left == 0 {
            break;
        }
        out[i].1 += 1;
        left -= 1;
    }
    out.into_iter()
        .map(|(n, c, _)| (n, c))
        .filter(|x| x.1 > 0)
        .collect()
}

/// Owner first, then the others by index.
fn ordered(owner: usize, counts: &BTreeMap<usize, u32>) -> Vec<(usize, u32)> {
    let mut v: Vec<(usize, u32)> = counts
        .get(&owner)
        .map(|&c| (owner, c))
        .into_iter()
        .collect();
    v.extend(
        counts
            .iter()
            .filter(|(&n, &c)| n != owner && c > 0)
            .map(|(&n, &c)| (n, c)),
    );
    v.retain(|x| x.1 > 0);
    v
}

/// `apportion`, but every weighted node gets at least one expert while
/// there are experts enough: a spread that rounds a slow node down to
/// nothing would silently not be expert parallel at all.
fn at_least_one_each(e: u32, w: &[(usize, f64)]) -> BTreeMap<usize, u32> {
    let mut counts: BTreeMap<usize, u32> = apportion(e, w).into_iter().collect();
    if e as usize >= w.len() {
        for &(n, _) in w {
            if counts.get(&n).copied().unwrap_or(0) == 0 {
                // Take one from the largest share (first such node on a tie).
                let Some((&big, _)) = counts
                    .iter()
                    .filter(|x| *x.1 > 1)
                    .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                else {
                    break;
                };
                *counts.get_mut(&big).unwrap() -= 1;
                counts.insert(n, 1);
            }
        }
    }
    counts
}

/// Every layer's experts split over the compute nodes by `weight`.
fn spread(ctx: &Ctx, base: &Candidate, weight: impl Fn(usize) -> f64) -> Option<Candidate> {
    let w: Vec<(usize, f64)> = (0..ctx.nodes.len())
        .filter(|&n| ctx.nodes[n].usable())
        .map(|n| (n, weight(n).max(0.0)))
        .filter(|x| x.1 > 0.0)
        .collect();
    if w.len() < 2 {
        return None;
    }
    let mut c = base.clone();
    for (owner, r) in &base.stages {
        for l in r.clone() {
            let ly = &ctx.layers[l as usize];
            if !ly.is_moe() {
                continue;
            }
            let counts = at_least_one_each(ly.n_exp, &w);
            c.experts[l as usize] = ordered(*owner, &counts);
        }
    }
    Some(c)
}

/// Moves `frac` of each over-budget node's excess experts to nodes with
/// room, the quickest-to-reach first, spread evenly over its layers.
fn offload(ctx: &Ctx, base: &Candidate, ev: &Eval, frac: f64) -> Option<Candidate> {
    let nn = ctx.nodes.len();
    let mut free: Vec<i128> = (0..nn)
        .map(|n| {
            if !ctx.nodes[n].usable() {
                return 0;
            }
            let h = &ev.holdings[n];
            ctx.nodes[n].budget as i128 - h.resident() as i128 - h.experts as i128
        })
        .collect();
    let mut counts: Vec<BTreeMap<usize, u32>> = base
        .experts
        .iter()
        .map(|v| v.iter().copied().collect())
        .collect();
    let mut moved_any = false;
    for (s, r) in &base.stages {
        let s = *s;
        if free[s] >= 0 {
            continue;
        }
        let target = (-free[s] as f64 * frac).ceil() as i128;
        let moe: Vec<u32> = r
            .clone()
            .filter(|&l| ctx.layers[l as usize].is_moe())
            .collect();
        let a = ctx.act_bytes(base.act);
        let mut recv: Vec<usize> = (0..nn).filter(|&p| p != s && free[p] > 0).collect();
        recv.sort_by(|&x, &y| {
            ctx.hop(s, x, a)
                .total_cmp(&ctx.hop(s, y, a))
                .then(x.cmp(&y))
        });
        let mut moved: i128 = 0;
        'outer: loop {
            let mut progress = false;
            for &l in &moe {
                if moved >= target {
                    break 'outer;
                }
                let eb = ctx.layers[l as usize].eb as i128;
                let own = counts[l as usize].get(&s).copied().unwrap_or(0);
                if own == 0 || eb == 0 {
                    continue;
                }
                let Some(&p) = recv.iter().find(|&&p| free[p] >= eb) else {
                    continue;
                };
                counts[l as usize].insert(s, own - 1);
                *counts[l as usize].entry(p).or_insert(0) += 1;
                free[p] -= eb;
                free[s] += eb;
                moved += eb;
                progress = true;
                moved_any = true;
            }
            if !progress {
                break;
            }
        }
    }
    if !moved_any {
        return None;
    }
    let mut c = base.clone();
    for (owner, r) in &base.stages {
        for l in r.clone() {
            if ctx.layers[l as usize].is_moe() {
                c.experts[l as usize] = ordered(*owner, &counts[l as usize]);
            }
        }
    }
    Some(c)
}

/// The expert-parallel variants of `base`.
pub(crate) fn expert_variants(ctx: &Ctx, base: &Candidate, ev: &Eval) -> Vec<Candidate> {
    if !ctx.layers.iter().any(|l| l.is_moe()) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for f in OFFLOAD_FRACTIONS {
        if let Some(c) = offload(ctx, base, ev, f) {
            out.push(c);
        }
    }
    if let Some(c) = spread(ctx, base, |n| ctx.nodes[n].bw) {
        out.push(c);
    }
    let spare = |n: usize| {
        ctx.nodes[n]
            .budget
            .saturating_sub(ev.holdings[n].resident()) as f64
    };
    if let Some(c) = spread(ctx, base, spare) {
        out.push(c);
    }
    let mut seen: Vec<Candidate> = Vec::new();
    out.retain(|c| {
        let new = !seen.contains(c);
        if new {
            seen.push(c.clone());
        }
        new
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apportion_is_exact_and_proportional() {
        let v = apportion(256, &[(0, 1.0), (1, 1.0), (2, 2.0)]);
        assert_eq!(v, vec![(0, 64), (1, 64), (2, 128)]);
        let v = apportion(7, &[(3, 1.0), (5, 1.0)]);
        assert_eq!(v.iter().map(|x| x.1).sum::<u32>(), 7);
        assert_eq!(v[0], (3, 4));
        assert!(apportion(8, &[(0, 0.0)]).is_empty());
    }

    #[test]
    fn a_spread_leaves_no_weighted_node_empty() {
        let c = at_least_one_each(4, &[(0, 1.0), (1, 60.0)]);
        assert_eq!(c.values().sum::<u32>(), 4);
        assert_eq!(c[&0], 1);
        assert_eq!(c[&1], 3);
        // Fewer experts than nodes: plain apportioning.
        let c = at_least_one_each(1, &[(0, 1.0), (1, 60.0)]);
        assert_eq!(c.values().sum::<u32>(), 1);
    }

    #[test]
    fn orders_put_the_coordinator_first() {
        let mut out = Vec::new();
        let ks: BTreeSet<usize> = [1, 2, 3].into_iter().collect();
        all_orders(&[0, 1, 2], 1, &ks, &mut out);
        // With the coordinator: 1 + 2 + 2; without: 2 + 2.
        assert_eq!(out.len(), 9);
        for o in &out {
            if let Some(i) = o.iter().position(|&n| n == 1) {
                assert_eq!(i, 0, "{o:?}");
            }
        }
        let set: BTreeSet<_> = out.iter().cloned().collect();
        assert_eq!(set.len(), out.len());
    }
}
