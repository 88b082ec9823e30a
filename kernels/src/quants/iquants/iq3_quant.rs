//! IQ3_XXS and IQ3_S quantization, with or without an importance matrix,
//! as ggml's `quantize_iq3_xxs` / `quantize_iq3_s`.
//!
//! Per 32 weights: fold the signs out (IQ3_XXS keeps an even number of
//! negatives and 7 sign bits per 8; IQ3_S stores all 8), search scales
//! around `max/15` fitting each 4 magnitudes to the grid of `{1, 3, .., 15}^4`
//! points (256 for IQ3_XXS, 512 for IQ3_S), refit, and code the group
//! scales in 4 bits against the super-block's f16 scale (with ggml's fudge
//! factors 1.0125 and 1.033). Weights are `qw·sqrt(2σ² + x²)` with an
//! importance row, `x²` without.
//!
//! One deliberate difference: for a 32-weight group that is exactly zero
//! inside a non-zero IQ3_S super-block, ggml does not advance its output
//! pointers, so the grid indices and signs of every later group land one
//! slot early (and decode wrongly); here each group is written at its own
//! position. All other inputs give ggml's bytes.

use half::f16;

use super::gridsearch::{fold_signs, fold_signs_even, max_of, Search};
use super::lattice::{iq3s, iq3xxs, Lattice};
use super::{with_blocks_mut, BlockIQ3S, BlockIQ3XXS, QK_K};
use crate::quants::kquants::search::nearest_int;

const GROUP_MAX_EPS_IQ3_XXS: f32 = 1e-8;

const SEARCH_XXS: Search = Search {
    kmax: 8,
    steps: 15,
    step: 0.2,
    on_grid_init: true,
    refit_all: false,
};

const SEARCH_S: Search = Search {
    kmax: 8,
    steps: 9,
    step: 0.2,
    on_grid_init: false,
    refit_all: true,
};

/// Per-weight importance of 32 values of a super-block with `sigma2`.
fn group_weights(xb: &[f32], qw: Option<&[f32]>, sigma2: f32) -> ([f32; 32], [f32; 32]) {
    let weight: [f32; 32] = match qw {
        Some(q) => std::array::from_fn(|i| q[i] * (sigma2 + xb[i] * xb[i]).sqrt()),
        None => std::array::from_fn(|i| xb[i] * xb[i]),
    };
    let waux = weight.map(f32::sqrt);
    (weight, waux)
}

fn sigma2(x: &[f32]) -> f32 {
    let mut sumx2 = 0.0f32;
    for &v in x {
        sumx2 += v * v;
    }
    2.0 * sumx2 / QK_K as f32
}

/// The 4-bit code of a group scale against the inverse block scale `id`.
fn scale_code(id: f32, s: f32) -> u32 {
    nearest_int(0.5 * (id * s - 1.0)).clamp(0, 15) as u32
}

fn quantize_block_xxs(lat: &Lattice, x: &[f32], qw: Option<&[f32]>, out: &mut BlockIQ3XXS) {
    let sigma2 = sigma2(x);
    let mut grid = [0u8; QK_K / 4];
    let mut sas = [0u32; QK_K / 32];
    let mut scales = [0.0f32; QK_K / 32];
    let mut max_scale = 0.0f32;
    for ib in 0..QK_K / 32 {
        let xb = &x[32 * ib..32 * ib + 32];
        let (weight, waux) = group_weights(xb, qw.map(|q| &q[32 * ib..32 * ib + 32]), sigma2);
        let mut xval = [0.0f32; 32];
        let mut signs = [0u8; 4];
        for k in 0..4 {
            let r = 8 * k..8 * k + 8;
            signs[k] = fold_signs_even(&xb[r.clone()], &weight[r.clone()], &mut xval[r]);
        }
        let max = max_of(&xval);
        if max < GROUP_MAX_EPS_IQ3_XXS {
            continue;
        }
        let mut l = [0i8; 32];
        let mut scale = SEARCH_XXS.run(lat, &xval, &weight, &waux, max, &mut l);
        if scale < 0.0 {
            scale = -scale;
            for s in signs.iter_mut() {
                *s = !*s & 127;
            }
        }
        for k in 0..8 {
            grid[8 * ib + k] = lat.lookup(&l[4 * k..4 * k + 4]).unwrap_or(0) as u8;
        }
        sas[ib] = (0..4).fold(0, |a, k| a | (signs[k] as u32) << (7 * k));
        scales[ib] = scale;
        max_scale = if max_scale > scale { max_scale } else { scale };
    }
    out.d = f16::ZERO;
    out.qs = [0; 3 * QK_K / 8];
    if max_scale == 0.0 {
        return;
    }
    let d = max_scale / 31.0;
    out.d = f16::from_f32(d * 1.0125);
    let id = 1.0 / d;
    for (w, &s) in sas.iter_mut().zip(&scales) {
        *w |= scale_code(id, s) << 28;
    }
    out.qs[..QK_K / 4].copy_from_slice(&grid);
    for (b, w) in out.qs[QK_K / 4..].chunks_exact_mut(4).zip(&sas) {
        b.copy_from_slice(&w.to_le_bytes());
    }
}

fn quantize_block_s(lat: &Lattice, x: &[f32], qw: Option<&[f32]>, out: &mut BlockIQ3S) {
    *out = bytemuck::Zeroable::zeroed();
    let sigma2 = sigma2(x);
    let mut scales = [0.0f32; QK_K / 32];
    let mut max_scale = 0.0f32;
    for ib in 0..QK_K / 32 {
        let xb = &x[32 * ib..32 * ib + 32];
        let (weight, waux) = group_weights(xb, qw.map(|q| &q[32 * ib..32 * ib + 32]), sigma2);
        let mut xval = [0.0f32; 32];
        let mut signs = [0u8; 4];
        for k in 0..4 {
            let r = 8 * k..8 * k + 8;
            signs[k] = fold_signs(&xb[r.clone()], &mut xval[r]);
        }
        let max = max_of(&xval);
        if max == 0.0 {
            continue;
        }
        let mut l = [0i8; 32];
        let mut scale = SEARCH_S.run(lat, &xval, &weight, &waux, max, &mut l);
        if scale < 0.0 {
            scale = -scale;
            for s in signs.iter_mut() {
                *s = !*s;
            }
        }
        for k in 0..8 {
            let j = lat.lookup(&l[4 * k..4 * k + 4]).unwrap_or(0);
            out.qs[8 * ib + k] = j as u8;
            out.qh[ib] |= ((j >> 8) as u8) << k;
        }
        out.signs[4 * ib..4 * ib + 4].copy_from_slice(&signs);
        scales[ib] = scale;
        max_scale = if max_scale > scale { max_scale } else { scale };
    }
    if max_scale == 0.0 {
        return;
    }
    let d = max_scale / 31.0;
    out.d = f16::from_f32(d * 1.033);
    let id = 1.0 / d;
    for (b, pair) in out.scales.iter_mut().zip(scales.chunks_exact(2)) {
        *b = (scale_code(id, pair[0]) | scale_code(id, pair[1]) << 4) as u8;
    }
}

/// Quantizes whole super-blocks of `x` to IQ3_XXS into `dst`, weighted by
/// the importance row `qw` when given (then `x` is one row and `qw` as
/// long), as ggml's `quantize_iq3_xxs`; without `qw` this is ggml's
/// `quantize_row_iq3_xxs_ref`.
pub fn quantize_iq3_xxs(x: &[f32], qw: Option<&[f32]>, dst: &mut [u8]) {
    let lat = iq3xxs();
    with_blocks_mut::<BlockIQ3XXS>(dst, |ys| {
        for (i, (xb, y)) in x.chunks_exact(QK_K).zip(ys).enumerate() {
            let q = qw.and_then(|q| q.get(QK_K * i..QK_K * (i + 1)));
            quantize_block_xxs(lat, xb, q, y);
        }
    });
}

/// Quantizes whole super-blocks of `x` to IQ3_S into `dst`, like
/// [`quantize_iq3_xxs`] (ggml's `quantize_iq3_s`).
pub fn quantize_iq3_s(x: &[f32], qw: Option<&[f32]>, dst: &mut [u8]) {
    let lat = iq3s();
    with_blocks_mut::<BlockIQ3S>(dst, |ys| {
        for (i, (xb, y)) in x.chunks_exact(QK_K).zip(ys).enumerate() {
            let q = qw.and_then(|q| q.get(QK_K * i..QK_K * (i + 1)));
            quantize_block_s(lat, xb, q, y);
        }
    });
}

/// [`quantize_iq3_xxs`] without weights, for the dispatch table.
pub fn quantize_iq3_xxs_ref(x: &[f32], dst: &mut [u8]) {
    quantize_iq3_xxs(x, None, dst)
}

/// [`quantize_iq3_s`] without weights, for the dispatch table.
pub fn quantize_iq3_s_ref(x: &[f32], dst: &mut [u8]) {
    quantize_iq3_s(x, None, dst)
}
