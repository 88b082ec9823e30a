//! The 1-bit i-quants: IQ1_S (1.56 bpw) and IQ1_M (1.75 bpw). Groups of 8
//! weights are one point of a 2048-entry ternary grid ({-1, 0, 1}) shifted
//! by ±[`IQ1S_DELTA`], times a 3-bit odd scale per 32 (IQ1_S) or 16 (IQ1_M)
//! weights.
//!
//! Block types and dequantization (bit-identical to ggml's
//! `dequantize_row_iq1_*`).

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::grids::IQ1S_GRID;
use super::{blocks, QK_K};

/// The grid shift of IQ1_S and IQ1_M (ggml's `IQ1S_DELTA` = `IQ1M_DELTA`).
pub const IQ1S_DELTA: f32 = 0.125;

/// IQ1_S super-block: `qs` low 8 bits of the 11-bit grid indices; per 32
/// weights a u16 `qh` with the 3 high bits of its four indices (bits
/// 0..12), the 3-bit scale (12..15) and the sign of the shift (bit 15).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ1S {
    pub d: f16,
    pub qs: [u8; QK_K / 8],
    pub qh: [u16; QK_K / 32],
}
const _: () = assert!(std::mem::size_of::<BlockIQ1S>() == 50);

/// IQ1_M super-block: `qs` low index bits; `qh` per 8 weights a nibble with
/// 3 high index bits and the shift sign (bit 3); `scales` four u16 holding
/// 3-bit scales per 16 weights (bits 0..12) and, in their top nibbles, the
/// f16 super-block scale.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ1M {
    pub qs: [u8; QK_K / 8],
    pub qh: [u8; QK_K / 16],
    pub scales: [u8; QK_K / 32],
}
const _: () = assert!(std::mem::size_of::<BlockIQ1M>() == 56);

impl BlockIQ1M {
    /// The four scale words (little-endian u16).
    #[inline]
    pub fn scale_words(&self) -> [u16; 4] {
        let s = &self.scales;
        [0, 1, 2, 3].map(|k| u16::from_le_bytes([s[2 * k], s[2 * k + 1]]))
    }

    /// The super-block scale, spread over the top nibbles of the words.
    #[inline]
    pub fn d(&self) -> f16 {
        let sc = self.scale_words();
        f16::from_bits(
            (sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000),
        )
    }
}

/// Writes 8 weights `scale * (grid[j] + delta)` of ternary grid point `idx`.
#[inline]
fn put_shifted8(out: &mut [f32], scale: f32, idx: usize, delta: f32) {
    let grid = IQ1S_GRID[idx];
    for (j, o) in out.iter_mut().take(8).enumerate() {
        let g = (grid >> (8 * j)) as u8 as i8;
        *o = scale * (g as f32 + delta);
    }
}

/// Dequantizes IQ1_S blocks into `dst` (`dst.len() / 256` blocks).
pub fn dequantize_iq1_s(src: &[u8], dst: &mut [f32]) {
    let xs = blocks::<BlockIQ1S>(src);
    for (x, y) in xs.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = x.d.to_f32();
        for (ib, y) in y.chunks_exact_mut(32).enumerate() {
            let qh = x.qh[ib] as usize;
            let dl = d * (2 * ((qh >> 12) & 7) + 1) as f32;
            let delta = if qh & 0x8000 != 0 {
                -IQ1S_DELTA
            } else {
                IQ1S_DELTA
            };
            for (l, y) in y.chunks_exact_mut(8).enumerate() {
                let idx = x.qs[4 * ib + l] as usize | ((qh >> (3 * l)) & 7) << 8;
                put_shifted8(y, dl, idx, delta);
            }
        }
    }
}

/// Dequantizes IQ1_M blocks into `dst` (`dst.len() / 256` blocks).
pub fn dequantize_iq1_m(src: &[u8], dst: &mut [f32]) {
    let xs = blocks::<BlockIQ1M>(src);
    for (x, y) in xs.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let sc = x.scale_words();
        let d = x.d().to_f32();
        for (ib, y) in y.chunks_exact_mut(32).enumerate() {
            let s = (sc[ib / 2] >> (6 * (ib % 2))) as usize;
            let dl = [
                d * (2 * (s & 7) + 1) as f32,
                d * (2 * ((s >> 3) & 7) + 1) as f32,
            ];
            for (l, y) in y.chunks_exact_mut(8).enumerate() {
                // One nibble of qh per 8 weights: high index bits, then the
                // shift's sign.
                let nib = (x.qh[2 * ib + l / 2] >> (4 * (l % 2))) as usize & 0xf;
                let idx = x.qs[4 * ib + l] as usize | (nib & 7) << 8;
                let delta = if nib & 8 != 0 {
                    -IQ1S_DELTA
                } else {
                    IQ1S_DELTA
                };
                put_shifted8(y, dl[l / 2], idx, delta);
            }
        }
    }
}
