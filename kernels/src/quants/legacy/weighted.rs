//! Importance-weighted quantization of Q4_0, Q4_1, Q5_0 and Q5_1, as ggml's
//! `quantize_q4_0` .. `quantize_q5_1` do when given quantization weights
//! (an imatrix row). Q8_0 has no weighted variant: ggml ignores the weights.
//!
//! Per row: `σ² = Σx² / n` over the whole row; per element the weight is
//! `qw[j]·sqrt(σ² + x[j]²)`. The symmetric formats search the scale with
//! `make_qx_quants` (levels `[−nmax, nmax)`), the affine ones scale and min
//! with `make_qkx3_quants` (rmin −0.9, step 0.05, 36 steps). Scales and
//! mins are stored as f16 straight from the search, without re-rounding
//! the levels against them (ggml does not either).

use half::f16;

use super::{high_bits, pack_nibbles, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, QK};
use crate::quants::kquants::search::{make_qkx_quants, make_qx_quants, AffineSearch};

/// A legacy block with an importance-weighted quantizer.
pub trait WeightedBlock: bytemuck::Pod {
    /// Quantizes one block of 32 against per-element weights `w`.
    fn quantize_weighted(x: &[f32; QK], w: &[f32; QK]) -> Self;
}

/// The affine search of the weighted Q4_1 / Q5_1 quantizers.
fn affine(nmax: i32) -> AffineSearch {
    AffineSearch {
        nmax,
        rmin: -0.9,
        rdelta: 0.05,
        nstep: 36,
        use_mad: false,
    }
}

/// Signed levels of a symmetric format (`level + nmax`, so `0..2·nmax`).
fn symmetric(nmax: i32, x: &[f32; QK], w: &[f32; QK]) -> (f16, [u8; QK]) {
    let mut l = [0i8; QK];
    let d = make_qx_quants(nmax, x, &mut l, Some(w));
    (f16::from_f32(d), l.map(|v| v as u8))
}

/// Levels, f16 scale and f16 min (`x ≈ d·l + m`) of an affine format.
fn with_min(nmax: i32, x: &[f32; QK], w: &[f32; QK]) -> (f16, f16, [u8; QK]) {
    let mut l = [0u8; QK];
    let (d, neg_min) = make_qkx_quants(affine(nmax), x, w, &mut l);
    (f16::from_f32(d), f16::from_f32(-neg_min), l)
}

impl WeightedBlock for BlockQ4_0 {
    fn quantize_weighted(x: &[f32; QK], w: &[f32; QK]) -> Self {
        let (d, l) = symmetric(8, x, w);
        BlockQ4_0 {
            d,
            qs: pack_nibbles(&l),
        }
    }
}

impl WeightedBlock for BlockQ4_1 {
    fn quantize_weighted(x: &[f32; QK], w: &[f32; QK]) -> Self {
        let (d, m, l) = with_min(15, x, w);
        BlockQ4_1 {
            d,
            m,
            qs: pack_nibbles(&l),
        }
    }
}

impl WeightedBlock for BlockQ5_0 {
    fn quantize_weighted(x: &[f32; QK], w: &[f32; QK]) -> Self {
        let (d, l) = symmetric(16, x, w);
        BlockQ5_0 {
            d,
            qh: high_bits(&l),
            qs: pack_nibbles(&l),
        }
    }
}

impl WeightedBlock for BlockQ5_1 {
    fn quantize_weighted(x: &[f32; QK], w: &[f32; QK]) -> Self {
        let (d, m, l) = with_min(31, x, w);
        BlockQ5_1 {
            d,
            m,
            qh: high_bits(&l),
            qs: pack_nibbles(&l),
        }
    }
}

/// Quantizes one row `x` (a multiple of 32 long) against the importance
/// row `qw` (same length) into `out` (`x.len() / 32` blocks), as ggml's
/// `quantize_row_*_impl` with quantization weights.
pub fn quantize_row_weighted<B: WeightedBlock>(x: &[f32], qw: &[f32], out: &mut [B]) {
    let mut sum_x2 = 0.0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    let sigma2 = sum_x2 / x.len() as f32;
    for ((xb, qb), b) in x.chunks_exact(QK).zip(qw.chunks_exact(QK)).zip(out) {
        let Ok(xb) = <&[f32; QK]>::try_from(xb) else {
            continue;
        };
        let w: [f32; QK] = std::array::from_fn(|j| qb[j] * (sigma2 + xb[j] * xb[j]).sqrt());
        *b = B::quantize_weighted(xb, &w);
    }
}

/// [`quantize_row_weighted`] into raw bytes of any alignment
/// (`dst.len() == x.len() / 32 · size_of::<B>()`).
pub fn quantize_row_weighted_bytes<B: WeightedBlock>(x: &[f32], qw: &[f32], dst: &mut [u8]) {
    let size = std::mem::size_of::<B>();
    match bytemuck::try_cast_slice_mut::<u8, B>(dst) {
        Ok(blocks) => quantize_row_weighted(x, qw, blocks),
        Err(_) => {
            let mut tmp = vec![B::zeroed(); dst.len() / size];
            quantize_row_weighted(x, qw, &mut tmp);
            dst.copy_from_slice(bytemuck::cast_slice(&tmp));
        }
    }
}
