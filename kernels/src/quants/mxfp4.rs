//! MXFP4 (OCP microscaling FP4): blocks of 32 e2m1 values sharing one E8M0
//! (power-of-two) exponent, 4.25 bpw. Used for the routed experts of
//! gpt-oss and DeepSeek-V4.
//!
//! Owns the block type, dequantization bit-identical to ggml, ggml's
//! reference quantizer (`quantize_row_mxfp4_ref`, which is also what
//! `llama-quantize` uses), and the dot product with a Q8_0 activation row
//! (ggml's `vec_dot_type` for MXFP4): scalar reference, AVX2 and AVX-512,
//! through the table-lookup kernels it shares with IQ4_NL
//! (`iquants::dot`).

use bytemuck::{Pod, Zeroable};

use crate::dispatch::{TypeKernels, VecDotFn};
use crate::quants::iquants::dot::{nl_q8_0, nl_q8_0_ref, NlBlock};
use crate::quants::iquants::grids::KVALUES_MXFP4;
use crate::quants::iquants::{blocks, with_blocks_mut};
use crate::simd::SimdLevel;
use crate::types::GgmlType;

/// Elements per MXFP4 block.
pub const QK_MXFP4: usize = 32;

/// MXFP4 block: E8M0 exponent `e` (scale 2^(e-127)), then 32 e2m1 codes
/// (low nibbles = elements 0..16, high nibbles = 16..32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockMXFP4 {
    pub e: u8,
    pub qs: [u8; QK_MXFP4 / 2],
}
const _: () = assert!(std::mem::size_of::<BlockMXFP4>() == 17);

/// Half the E8M0 scale, 2^(e-128), exactly as ggml's
/// `ggml_e8m0_to_fp32_half` (the table values are doubled e2m1, so this
/// half scale times a table value is the true weight). e = 0, 1 give the
/// subnormals 2^-128, 2^-127; e = 255 (NaN in the spec) gives 2^127.
#[inline]
pub fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        ((e as u32) - 1) << 23
    };
    f32::from_bits(bits)
}

/// Dequantizes MXFP4 blocks into `dst` (`dst.len() / 32` blocks).
pub fn dequantize_mxfp4(src: &[u8], dst: &mut [f32]) {
    let xs = blocks::<BlockMXFP4>(src);
    for (x, y) in xs.iter().zip(dst.chunks_exact_mut(QK_MXFP4)) {
        let d = e8m0_to_f32_half(x.e);
        let (lo, hi) = y.split_at_mut(QK_MXFP4 / 2);
        for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&x.qs) {
            *l = KVALUES_MXFP4[(q & 0xf) as usize] as f32 * d;
            *h = KVALUES_MXFP4[(q >> 4) as usize] as f32 * d;
        }
    }
}

/// The code whose value times `d` is nearest to `x` (the first on a tie).
#[inline]
fn nearest_code(x: f32, d: f32) -> u8 {
    let mut best = 0u8;
    let mut best_err = (KVALUES_MXFP4[0] as f32 * d - x).abs();
    for (i, &v) in KVALUES_MXFP4.iter().enumerate().skip(1) {
        let err = (v as f32 * d - x).abs();
        if err < best_err {
            best = i as u8;
            best_err = err;
        }
    }
    best
}

/// Quantizes `src` to MXFP4 (ggml's `quantize_row_mxfp4_ref`): the
/// exponent puts the block's largest magnitude in [4, 8) times the half
/// scale (e2m1's top binade), every value takes its nearest code.
pub fn quantize_mxfp4(src: &[f32], dst: &mut [u8]) {
    with_blocks_mut::<BlockMXFP4>(dst, |ys| {
        for (x, y) in src.chunks_exact(QK_MXFP4).zip(ys.iter_mut()) {
            let amax = x
                .iter()
                .fold(0.0f32, |m, v| if m < v.abs() { v.abs() } else { m });
            // `as u8` saturates where C's conversion would be undefined
            // (amax below 2^-125 or above 2^128).
            y.e = if amax > 0.0 {
                (amax.log2().floor() - 2.0 + 127.0) as u8
            } else {
                0
            };
            let d = e8m0_to_f32_half(y.e);
            for j in 0..QK_MXFP4 / 2 {
                y.qs[j] = nearest_code(x[j], d) | nearest_code(x[j + QK_MXFP4 / 2], d) << 4;
            }
        }
    });
}

impl NlBlock for BlockMXFP4 {
    const VALUES: [i8; 16] = KVALUES_MXFP4;
    #[inline]
    fn codes(&self) -> &[u8; 16] {
        &self.qs
    }
    #[inline]
    fn scale_with(&self, _h2f: impl Fn(half::f16) -> f32) -> f32 {
        e8m0_to_f32_half(self.e)
    }
}

/// Reference dot product of `n` MXFP4 weights with a Q8_0 row (ggml's
/// `ggml_vec_dot_mxfp4_q8_0_generic`: per block `d8 * 2^(e-128)` times
/// the integer sum of code values times quants).
pub fn vec_dot_mxfp4_q8_0_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    nl_q8_0_ref::<BlockMXFP4>(n, w, act)
}

/// The MXFP4 x Q8_0 dot product for `level` (AVX2 / AVX-512 share the
/// IQ4_NL table-lookup kernels; other levels use the reference).
pub fn vec_dot_mxfp4_q8_0(level: SimdLevel) -> VecDotFn {
    nl_q8_0::<BlockMXFP4>(level)
}

/// The MXFP4 kernels (None for other types).
pub(crate) fn kernels(ty: GgmlType, level: SimdLevel) -> Option<TypeKernels> {
    (ty == GgmlType::MXFP4).then(|| TypeKernels {
        ty,
        dequantize: dequantize_mxfp4,
        quantize: Some(quantize_mxfp4),
        vec_dot_type: GgmlType::Q8_0,
        vec_dot: Some(vec_dot_mxfp4_q8_0(level)),
    })
}
