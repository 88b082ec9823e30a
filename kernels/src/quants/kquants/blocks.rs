//! The K-quant super-block layouts, byte for byte as ggml-common.h, and the
//! small decoders of their packed scale bytes shared by every kernel.
//!
//! All K-quants cover 256 weights ([`QK_K`]). Field order matters: the
//! structs are `#[repr(C)]` and have no padding (checked by `Pod` and by the
//! size asserts below).

use bytemuck::{Pod, Zeroable};
use half::f16;

/// Weights per K-quant super-block.
pub const QK_K: usize = 256;

/// 2-bit: 16 groups of 16, `w = d·sc·q − dmin·m` with 4-bit `sc` and `m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[allow(non_camel_case_types)]
pub struct BlockQ2_K {
    /// Low nibble: group scale, high nibble: group min.
    pub scales: [u8; 16],
    /// 2-bit quants, four per byte (see [`super::q2k`] for the order).
    pub qs: [u8; 64],
    pub d: f16,
    pub dmin: f16,
}

/// 3-bit: 16 groups of 16, `w = d·(sc − 32)·q` with 6-bit `sc`, `q ∈ [−4, 3]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[allow(non_camel_case_types)]
pub struct BlockQ3_K {
    /// High bit of each quant (set means "no −4 offset").
    pub hmask: [u8; 32],
    /// Low 2 bits of each quant.
    pub qs: [u8; 64],
    /// Sixteen 6-bit scales, packed (see [`q3k_scales`]).
    pub scales: [u8; 12],
    pub d: f16,
}

/// 4-bit: 8 groups of 32, `w = d·sc·q − dmin·m` with 6-bit `sc` and `m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[allow(non_camel_case_types)]
pub struct BlockQ4_K {
    pub d: f16,
    pub dmin: f16,
    /// Eight 6-bit scales and eight 6-bit mins, packed (see [`k4_scales_mins`]).
    pub scales: [u8; 12],
    /// Byte `32c + l`: low nibble is weight `64c + l`, high nibble `64c + 32 + l`.
    pub qs: [u8; 128],
}

/// 5-bit: as [`BlockQ4_K`] plus one high bit per weight in `qh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[allow(non_camel_case_types)]
pub struct BlockQ5_K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    /// Bit `g` of byte `l`: high bit of weight `32g + l`.
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}

/// 6-bit: 16 groups of 16, `w = d·sc·(q − 32)` with signed 8-bit `sc`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[allow(non_camel_case_types)]
pub struct BlockQ6_K {
    /// Low 4 bits of each quant.
    pub ql: [u8; 128],
    /// High 2 bits of each quant.
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: f16,
}

/// 8-bit activations for K-quant dot products: `x = d·q`, with the sums of
/// each group of 16 quants precomputed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[allow(non_camel_case_types)]
pub struct BlockQ8_K {
    pub d: f32,
    pub qs: [i8; 256],
    pub bsums: [i16; 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ2_K>() == 84);
const _: () = assert!(std::mem::size_of::<BlockQ3_K>() == 110);
const _: () = assert!(std::mem::size_of::<BlockQ4_K>() == 144);
const _: () = assert!(std::mem::size_of::<BlockQ5_K>() == 176);
const _: () = assert!(std::mem::size_of::<BlockQ6_K>() == 210);
const _: () = assert!(std::mem::size_of::<BlockQ8_K>() == 292);

fn word(b: &[u8; 12], i: usize) -> u32 {
    u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}

/// Unpacks the 12 scale bytes of Q4_K/Q5_K into eight 6-bit scales and
/// eight 6-bit mins. Groups 0–3 keep their values in the low 6 bits of bytes
/// 0–7; groups 4–7 put their low nibbles in bytes 8–11 and their top two
/// bits in the spare top bits of bytes 0–7.
#[inline]
pub fn k4_scales_mins(packed: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let (a0, a1, a2) = (word(packed, 0), word(packed, 1), word(packed, 2));
    let sc_lo = a0 & 0x3f3f_3f3f;
    let mn_lo = a1 & 0x3f3f_3f3f;
    let sc_hi = (a2 & 0x0f0f_0f0f) | (((a0 >> 6) & 0x0303_0303) << 4);
    let mn_hi = ((a2 >> 4) & 0x0f0f_0f0f) | (((a1 >> 6) & 0x0303_0303) << 4);
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    sc[..4].copy_from_slice(&sc_lo.to_le_bytes());
    sc[4..].copy_from_slice(&sc_hi.to_le_bytes());
    mn[..4].copy_from_slice(&mn_lo.to_le_bytes());
    mn[4..].copy_from_slice(&mn_hi.to_le_bytes());
    (sc, mn)
}

/// Packs eight 6-bit scales and mins the way [`k4_scales_mins`] reads them.
pub fn pack_k4_scales_mins(sc: &[u8; 8], mn: &[u8; 8]) -> [u8; 12] {
    let mut out = [0u8; 12];
    for j in 0..4 {
        out[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        out[j + 4] = (mn[j] & 63) | ((mn[j + 4] >> 4) << 6);
        out[j + 8] = (sc[j + 4] & 0xf) | ((mn[j + 4] & 0xf) << 4);
    }
    out
}

/// Unpacks the sixteen 6-bit Q3_K scales, already offset to `[−32, 31]`.
/// Group `j` keeps its low nibble in byte `j % 8` (low half for `j < 8`,
/// high half otherwise) and its top two bits in byte `8 + j % 4`, at bit
/// `2·(j / 4)`.
#[inline]
pub fn q3k_scales(packed: &[u8; 12]) -> [i8; 16] {
    let (a0, a1, a2) = (word(packed, 0), word(packed, 1), word(packed, 2));
    let lo = [
        a0 & 0x0f0f_0f0f,
        a1 & 0x0f0f_0f0f,
        (a0 >> 4) & 0x0f0f_0f0f,
        (a1 >> 4) & 0x0f0f_0f0f,
    ];
    let mut out = [0i8; 16];
    for (k, l) in lo.iter().enumerate() {
        let v = l | (((a2 >> (2 * k)) & 0x0303_0303) << 4);
        for (b, byte) in v.to_le_bytes().iter().enumerate() {
            out[4 * k + b] = *byte as i8 - 32;
        }
    }
    out
}

/// Packs sixteen Q3_K scales given as `[0, 63]` (value + 32).
pub fn pack_q3k_scales(ls: &[u8; 16]) -> [u8; 12] {
    let mut out = [0u8; 12];
    for (j, &l) in ls.iter().enumerate() {
        if j < 8 {
            out[j] = l & 0xf;
        } else {
            out[j - 8] |= (l & 0xf) << 4;
        }
        out[8 + j % 4] |= (l >> 4) << (2 * (j / 4));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k4_scale_packing_round_trips() {
        let sc = [1, 63, 17, 32, 5, 63, 48, 0];
        let mn = [0, 2, 63, 31, 62, 16, 33, 9];
        let packed = pack_k4_scales_mins(&sc, &mn);
        assert_eq!(k4_scales_mins(&packed), (sc, mn));
    }

    #[test]
    fn q3_scale_packing_round_trips() {
        let ls: [u8; 16] = [0, 1, 2, 63, 31, 32, 33, 40, 7, 8, 15, 16, 47, 48, 62, 20];
        let got = q3k_scales(&pack_q3k_scales(&ls));
        for j in 0..16 {
            assert_eq!(got[j] as i32, ls[j] as i32 - 32, "group {j}");
        }
    }
}
