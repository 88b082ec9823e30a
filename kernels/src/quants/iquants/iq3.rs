//! The 3-bit i-quants: IQ3_XXS (3.06 bpw) and IQ3_S (3.44 bpw). Groups of
//! 4 weights are one point of a magnitude grid (256 points for IQ3_XXS, 512
//! for IQ3_S), with sign bits per 8 weights and a 4-bit scale per 32.
//!
//! Block types and dequantization (bit-identical to ggml's
//! `dequantize_row_iq3_*`).

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::grids::{IQ3S_GRID, IQ3XXS_GRID, KSIGNS_IQ2XS};
use super::{blocks, put_signed8, QK_K};

/// IQ3_XXS super-block: `qs[0..64]` 8-bit grid indices (one per 4
/// weights); `qs[64..96]` one u32 per 32 weights with four 7-bit sign
/// indices and a 4-bit scale in the top bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ3XXS {
    pub d: f16,
    pub qs: [u8; 3 * QK_K / 8],
}
const _: () = assert!(std::mem::size_of::<BlockIQ3XXS>() == 98);

/// IQ3_S super-block: 8 low index bits per 4 weights in `qs`, the 9th bit
/// in `qh` (one byte per 32 weights), explicit sign bytes, and a 4-bit
/// scale per 32 weights (two per byte).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ3S {
    pub d: f16,
    pub qs: [u8; QK_K / 4],
    pub qh: [u8; QK_K / 32],
    pub signs: [u8; QK_K / 8],
    pub scales: [u8; QK_K / 64],
}
const _: () = assert!(std::mem::size_of::<BlockIQ3S>() == 110);

/// Packs two 4-magnitude grid points into the 8-byte layout of
/// [`put_signed8`].
#[inline]
fn pair(g1: u32, g2: u32) -> u64 {
    g1 as u64 | (g2 as u64) << 32
}

/// Dequantizes IQ3_XXS blocks into `dst` (`dst.len() / 256` blocks).
pub fn dequantize_iq3_xxs(src: &[u8], dst: &mut [f32]) {
    let xs = blocks::<BlockIQ3XXS>(src);
    for (x, y) in xs.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = x.d.to_f32();
        let (qs, scales_signs) = x.qs.split_at(QK_K / 4);
        for (ib32, y) in y.chunks_exact_mut(32).enumerate() {
            let w = &scales_signs[4 * ib32..4 * ib32 + 4];
            let aux = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
            let q = &qs[8 * ib32..8 * ib32 + 8];
            for (l, y) in y.chunks_exact_mut(8).enumerate() {
                let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
                let grid = pair(
                    IQ3XXS_GRID[q[2 * l] as usize],
                    IQ3XXS_GRID[q[2 * l + 1] as usize],
                );
                put_signed8(y, db, grid, signs);
            }
        }
    }
}

/// Dequantizes IQ3_S blocks into `dst` (`dst.len() / 256` blocks).
pub fn dequantize_iq3_s(src: &[u8], dst: &mut [f32]) {
    let xs = blocks::<BlockIQ3S>(src);
    for (x, y) in xs.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = x.d.to_f32();
        for (ib32, y) in y.chunks_exact_mut(32).enumerate() {
            let sc = (x.scales[ib32 / 2] >> (4 * (ib32 % 2))) & 0xf;
            let db = d * (1 + 2 * sc as u32) as f32;
            let qh = x.qh[ib32] as usize;
            let q = &x.qs[8 * ib32..8 * ib32 + 8];
            let index = |k: usize| q[k] as usize | ((qh >> k) & 1) << 8;
            for (l, y) in y.chunks_exact_mut(8).enumerate() {
                let grid = pair(IQ3S_GRID[index(2 * l)], IQ3S_GRID[index(2 * l + 1)]);
                put_signed8(y, db, grid, x.signs[4 * ib32 + l]);
            }
        }
    }
}
