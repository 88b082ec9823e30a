//! Attention of prompt batches over f32 caches, tiled: per head, blocks
//! of consecutive query rows of one sequence share each key and value row
//! they read ([`ops::attend_tile`]), and the work is split over heads ×
//! query blocks so every thread stays busy through the layer.
//!
//! A row's result is the one-row path's to the bit (`DenseModel::attention`
//! in the default order), so which rows share a pass changes nothing: the
//! tiled path only changes the loop order and the memory reuse.

use dwarfstar_kernels::ops::{self, F32Rows, TileScratch};
use dwarfstar_kernels::SimdLevel;
use rayon::prelude::*;

use crate::hparams::HParams;
use crate::kv::KvCache;

/// The least rows a sequence runs in one pass for the tiled path to pay.
pub(crate) const MIN_ROWS: usize = 4;

/// Attention of the rows of every span with at least [`MIN_ROWS`] rows
/// (arguments as `DenseModel::attention`), into `out` (`n × n_head × dv`);
/// other spans' rows are left as they are.
pub(crate) fn attention(
    hp: &HParams,
    q: &[f32],
    caches: &[&KvCache],
    spans: &[(usize, usize, usize)],
    il: usize,
    window: usize,
    out: &mut [f32],
) {
    let (dk, dv, nh) = (hp.head_dim_k, hp.head_dim_v, hp.n_head);
    let group = hp.n_head / hp.n_head_kv;
    let level = SimdLevel::current();
    let tr = ops::tile_rows(level);
    // (span, head, first row of the block within the span)
    let tasks: Vec<(usize, usize, usize)> = spans
        .iter()
        .enumerate()
        .filter(|(_, sp)| sp.1 >= MIN_ROWS)
        .flat_map(|(s, sp)| {
            (0..nh).flat_map(move |h| (0..sp.1).step_by(tr).map(move |b| (s, h, b)))
        })
        .collect();
    let blocks: Vec<Vec<f32>> = tasks
        .par_iter()
        .map_init(TileScratch::default, |scratch, &(s, h, b)| {
            let (row0, rows, pos0) = spans[s];
            let kv = caches[s];
            let (kd, vd) = (kv.k_dim(), kv.v_dim());
            let g = h / group;
            let lk = &kv.layers[il].k;
            let keys = F32Rows {
                data: lk,
                stride: kd,
                offset: g * dk,
                d: dk,
            };
            let values = F32Rows {
                data: &kv.layers[il].v,
                stride: vd,
                offset: g * dv,
                d: dv,
            };
            let end = (b + tr).min(rows);
            let qs: Vec<&[f32]> = (b..end)
                .map(|r| {
                    let at = (row0 + r) * hp.q_dim() + h * dk;
                    &q[at..at + dk]
                })
                .collect();
            let ranges: Vec<(usize, usize)> = (b..end)
                .map(|r| {
                    let p = pos0 + r;
                    let lo = if window > 0 {
                        (p + 1).saturating_sub(window)
                    } else {
                        0
                    };
                    (lo, p)
                })
                .collect();
            let mut o = vec![0f32; (end - b) * dv];
            ops::attend_tile(
                level,
                &qs,
                &ranges,
                &keys,
                &values,
                hp.attn_scale,
                &mut o,
                scratch,
            );
            o
        })
        .collect();
    for (&(s, h, b), o) in tasks.iter().zip(&blocks) {
        let row0 = spans[s].0;
        for (r, src) in o.chunks_exact(dv).enumerate() {
            let t = row0 + b + r;
            out[(t * nh + h) * dv..(t * nh + h + 1) * dv].copy_from_slice(src);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dwarfstar_kernels::ops::{Rope, RopeStyle, VSumOrder, Yarn};

    fn hparams(n_head: usize, n_head_kv: usize, d: usize) -> HParams {
        HParams {
            arch: "test".into(),
            n_layer: 1,
            n_ctx_train: 4096,
            n_embd: n_head * d,
            n_ff: 4 * n_head * d,
            n_head,
            n_head_kv,
            head_dim_k: d,
            head_dim_v: d,
            rms_eps: 1e-6,
            n_vocab: 10,
            rope: Rope {
                style: RopeStyle::Normal,
                n_rot: d,
                freq_base: 10000.0,
                freq_scale: 1.0,
                yarn: Yarn::default(),
            },
            n_swa: 0,
            swa_layers: vec![false],
            rope_base_swa: 10000.0,
            attn_scale: 1.0 / (d as f32).sqrt(),
            final_softcap: None,
        }
    }

    /// The one-row path of `DenseModel::attention` for row `t`, head `h`.
    fn one_row(
        hp: &HParams,
        q: &[f32],
        kv: &KvCache,
        p: usize,
        t: usize,
        h: usize,
        window: usize,
    ) -> Vec<f32> {
        let (d, kd) = (hp.head_dim_k, kv.k_dim());
        let g = h / (hp.n_head / hp.n_head_kv);
        let lo = if window > 0 {
            (p + 1).saturating_sub(window)
        } else {
            0
        };
        let qh = &q[t * hp.q_dim() + h * d..][..d];
        let l = &kv.layers[0];
        let mut sc: Vec<f32> = (lo..=p)
            .map(|j| ops::dot_kq(qh, &l.k[j * kd + g * d..][..d]) * hp.attn_scale)
            .collect();
        ops::softmax_aligned(&mut sc, lo);
        let v = |j: usize| &l.v[j * kd + g * d..][..d];
        let mut o = vec![0f32; d];
        ops::weighted_sum_v(&sc, lo, &v, &mut o, VSumOrder::VecDot, &mut Vec::new());
        o
    }

    /// Two sequences in one pass (one after a cached prefix, one with a
    /// decode-sized span left to the caller), GQA groups of three, with and
    /// without a window: every tiled row equals the one-row path's bits.
    #[test]
    fn tiled_rows_equal_the_one_row_path() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0
        };
        let hp = hparams(6, 2, 64);
        let kd = hp.k_dim();
        // (rows, cached prefix) per sequence; the 2-row one is not tiled.
        let seqs = [(37usize, 21usize), (2, 5), (70, 0)];
        let mut caches: Vec<KvCache> = Vec::new();
        for &(rows, pre) in &seqs {
            let mut c = KvCache::new(1, kd, kd, rows + pre);
            let k: Vec<f32> = (0..(rows + pre) * kd).map(|_| next()).collect();
            let v: Vec<f32> = (0..(rows + pre) * kd).map(|_| next()).collect();
            c.write(0, 0, &k, &v);
            caches.push(c);
        }
        let n: usize = seqs.iter().map(|s| s.0).sum();
        let q: Vec<f32> = (0..n * hp.q_dim()).map(|_| next()).collect();
        let mut spans = Vec::new();
        let mut row = 0;
        for &(rows, pre) in &seqs {
            spans.push((row, rows, pre));
            row += rows;
        }
        let refs: Vec<&KvCache> = caches.iter().collect();
        for window in [0, 9, 40] {
            let dv = hp.head_dim_v;
            let mut out = vec![f32::NAN; n * hp.n_head * dv];
            attention(&hp, &q, &refs, &spans, 0, window, &mut out);
            for (s, &(row0, rows, pos0)) in spans.iter().enumerate() {
                for t in row0..row0 + rows {
                    for h in 0..hp.n_head {
                        let got = &out[(t * hp.n_head + h) * dv..][..dv];
                        if rows < MIN_ROWS {
                            assert!(
                                got.iter().all(|v| v.is_nan()),
                                "span {s} was not left alone"
                            );
                            continue;
                        }
                        let want = one_row(&hp, &q, &caches[s], pos0 + t - row0, t, h, window);
                        let same = got
                            .iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "window {window} seq {s} row {t} head {h}");
                    }
                }
            }
        }
    }
}
