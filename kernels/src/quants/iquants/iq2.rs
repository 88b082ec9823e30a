//! The 2-bit i-quants: IQ2_XXS (2.06 bpw), IQ2_XS (2.31 bpw) and IQ2_S
//! (2.56 bpw). Each codes groups of 8 weights as one point of an E8-lattice
//! grid of magnitudes {8, 25, 43} plus 8 sign bits, with a 4-bit scale per
//! 32 (IQ2_XXS) or per 16 (IQ2_XS, IQ2_S) weights.
//!
//! Block types and dequantization (bit-identical to ggml's
//! `dequantize_row_iq2_*`).

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::grids::{IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, KSIGNS_IQ2XS};
use super::{blocks, put_signed8, QK_K};

/// IQ2_XXS super-block: per 32 weights two u32s, the first holding four
/// 8-bit grid indices, the second four 7-bit sign indices (into
/// [`KSIGNS_IQ2XS`]) and a 4-bit scale in its top bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ2XXS {
    pub d: f16,
    pub qs: [u16; QK_K / 8],
}
const _: () = assert!(std::mem::size_of::<BlockIQ2XXS>() == 66);

/// IQ2_XS super-block: per 8 weights a u16 (9-bit grid index, 7-bit sign
/// index), and two 4-bit scales per 32 weights.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ2XS {
    pub d: f16,
    pub qs: [u16; QK_K / 8],
    pub scales: [u8; QK_K / 32],
}
const _: () = assert!(std::mem::size_of::<BlockIQ2XS>() == 74);

/// IQ2_S super-block: `qs[0..32]` low 8 bits of the 10-bit grid indices,
/// `qs[32..64]` explicit sign bytes, `qh` the top 2 index bits (4 per 32
/// weights), two 4-bit scales per 32 weights.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ2S {
    pub d: f16,
    pub qs: [u8; QK_K / 4],
    pub qh: [u8; QK_K / 32],
    pub scales: [u8; QK_K / 32],
}
const _: () = assert!(std::mem::size_of::<BlockIQ2S>() == 82);

impl BlockIQ2XXS {
    /// The two u32 words of 32-weight group `ib32` (grid indices, then
    /// signs + scale), as ggml reads them with `memcpy`.
    #[inline]
    pub fn words(&self, ib32: usize) -> (u32, u32) {
        let q = &self.qs[4 * ib32..4 * ib32 + 4];
        (
            q[0] as u32 | (q[1] as u32) << 16,
            q[2] as u32 | (q[3] as u32) << 16,
        )
    }
}

/// Dequantizes IQ2_XXS blocks into `dst` (`dst.len() / 256` blocks).
pub fn dequantize_iq2_xxs(src: &[u8], dst: &mut [f32]) {
    let xs = blocks::<BlockIQ2XXS>(src);
    for (x, y) in xs.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = x.d.to_f32();
        for (ib32, y) in y.chunks_exact_mut(32).enumerate() {
            let (grid_idx, signs_scale) = x.words(ib32);
            let db = d * (0.5 + (signs_scale >> 28) as f32) * 0.25;
            for (l, y) in y.chunks_exact_mut(8).enumerate() {
                let grid = IQ2XXS_GRID[((grid_idx >> (8 * l)) & 0xff) as usize];
                let signs = KSIGNS_IQ2XS[((signs_scale >> (7 * l)) & 127) as usize];
                put_signed8(y, db, grid, signs);
            }
        }
    }
}

/// Dequantizes IQ2_XS blocks into `dst` (`dst.len() / 256` blocks).
pub fn dequantize_iq2_xs(src: &[u8], dst: &mut [f32]) {
    let xs = blocks::<BlockIQ2XS>(src);
    for (x, y) in xs.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = x.d.to_f32();
        for (ib32, y) in y.chunks_exact_mut(32).enumerate() {
            let sc = x.scales[ib32];
            let db = [
                d * (0.5 + (sc & 0xf) as f32) * 0.25,
                d * (0.5 + (sc >> 4) as f32) * 0.25,
            ];
            for (l, y) in y.chunks_exact_mut(8).enumerate() {
                let q = x.qs[4 * ib32 + l];
                let grid = IQ2XS_GRID[(q & 511) as usize];
                let signs = KSIGNS_IQ2XS[(q >> 9) as usize];
                put_signed8(y, db[l / 2], grid, signs);
            }
        }
    }
}

/// Dequantizes IQ2_S blocks into `dst` (`dst.len() / 256` blocks).
pub fn dequantize_iq2_s(src: &[u8], dst: &mut [f32]) {
    let xs = blocks::<BlockIQ2S>(src);
    for (x, y) in xs.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = x.d.to_f32();
        let (qs, signs) = x.qs.split_at(QK_K / 8);
        for (ib32, y) in y.chunks_exact_mut(32).enumerate() {
            let sc = x.scales[ib32];
            let db = [
                d * (0.5 + (sc & 0xf) as f32) * 0.25,
                d * (0.5 + (sc >> 4) as f32) * 0.25,
            ];
            let qh = x.qh[ib32] as usize;
            for (l, y) in y.chunks_exact_mut(8).enumerate() {
                let idx = qs[4 * ib32 + l] as usize | ((qh >> (2 * l)) & 3) << 8;
                put_signed8(y, db[l / 2], IQ2S_GRID[idx], signs[4 * ib32 + l]);
            }
        }
    }
}
