//! The K-quant family: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and the Q8_K
//! activation format they are dotted with.
//!
//! Owns the block layouts ([`blocks`]), ggml-identical dequantization, the
//! reference quantizers `llama-quantize` uses without an importance matrix
//! and the importance-weighted ones it uses with one (`*_weighted`), the
//! Q8_K activation quantizer, and `vec_dot` of each format with Q8_K: a
//! scalar reference in each format's file, AVX2 versions in `avx2`, and
//! AVX-512 (and AVX-512 VNNI) versions of the hot Q4_K and Q6_K in `avx512`.
//!
//! The type-erased entry points for [`crate::dispatch`] accept byte slices
//! of any alignment: blocks are borrowed in place when aligned and copied
//! otherwise; the SIMD kernels read bytes directly.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod blocks;
mod lanes;
mod q2k;
mod q3k;
mod q4k;
mod q5k;
mod q6k;
mod q8k;
pub(crate) mod search;
mod step_batch;
pub mod tiled;

use std::mem::size_of;

use bytemuck::Pod;

use crate::dispatch::{DequantFn, QuantFn, TypeKernels, VecDotFn};
use crate::simd::SimdLevel;
use crate::types::GgmlType;

pub use blocks::{BlockQ2_K, BlockQ3_K, BlockQ4_K, BlockQ5_K, BlockQ6_K, BlockQ8_K, QK_K};
pub use q2k::{dequantize_q2_k, quantize_q2_k, quantize_q2_k_weighted, vec_dot_q2_k_q8_k};
pub use q3k::{dequantize_q3_k, quantize_q3_k, quantize_q3_k_weighted, vec_dot_q3_k_q8_k};
pub use q4k::{dequantize_q4_k, quantize_q4_k, quantize_q4_k_weighted, vec_dot_q4_k_q8_k};
pub use q5k::{dequantize_q5_k, quantize_q5_k, quantize_q5_k_weighted, vec_dot_q5_k_q8_k};
pub use q6k::{dequantize_q6_k, quantize_q6_k, quantize_q6_k_weighted, vec_dot_q6_k_q8_k};
pub use q8k::{dequantize_q8_k, quantize_q8_k, vec_dot_q8_k_q8_k};
pub use tiled::{matmul_tiled_order, tiled_supported};

/// A K-quant block type with its typed kernels, so that one generic
/// wrapper serves every format in the type-erased table.
trait KBlock: Pod {
    fn dequantize(blocks: &[Self], out: &mut [f32]);
    fn quantize(x: &[f32], out: &mut [Self]);
    fn vec_dot(w: &[Self], a: &[BlockQ8_K]) -> f32;
}

macro_rules! kblock {
    ($block:ty, $deq:ident, $quant:ident, $dot:ident) => {
        impl KBlock for $block {
            fn dequantize(blocks: &[Self], out: &mut [f32]) {
                $deq(blocks, out)
            }
            fn quantize(x: &[f32], out: &mut [Self]) {
                $quant(x, out)
            }
            #[inline(always)]
            fn vec_dot(w: &[Self], a: &[BlockQ8_K]) -> f32 {
                $dot(w, a)
            }
        }
    };
}

kblock!(BlockQ2_K, dequantize_q2_k, quantize_q2_k, vec_dot_q2_k_q8_k);
kblock!(BlockQ3_K, dequantize_q3_k, quantize_q3_k, vec_dot_q3_k_q8_k);
kblock!(BlockQ4_K, dequantize_q4_k, quantize_q4_k, vec_dot_q4_k_q8_k);
kblock!(BlockQ5_K, dequantize_q5_k, quantize_q5_k, vec_dot_q5_k_q8_k);
kblock!(BlockQ6_K, dequantize_q6_k, quantize_q6_k, vec_dot_q6_k_q8_k);
kblock!(BlockQ8_K, dequantize_q8_k, quantize_q8_k, vec_dot_q8_k_q8_k);

/// Runs `f` on `bytes` viewed as whole blocks: borrowed when aligned,
/// copied when not (a trailing partial block is ignored).
fn with_blocks<B: Pod, R>(bytes: &[u8], f: impl FnOnce(&[B]) -> R) -> R {
    let whole = bytes.len() / size_of::<B>() * size_of::<B>();
    match bytemuck::try_cast_slice::<u8, B>(&bytes[..whole]) {
        Ok(blocks) => f(blocks),
        Err(_) => {
            let copied: Vec<B> = bytes[..whole]
                .chunks_exact(size_of::<B>())
                .map(bytemuck::pod_read_unaligned)
                .collect();
            f(&copied)
        }
    }
}

fn dequantize_bytes<B: KBlock>(src: &[u8], dst: &mut [f32]) {
    with_blocks(src, |blocks: &[B]| B::dequantize(blocks, dst))
}

fn quantize_bytes<B: KBlock>(src: &[f32], dst: &mut [u8]) {
    let nb = (dst.len() / size_of::<B>()).min(src.len() / QK_K);
    let (src, dst) = (&src[..nb * QK_K], &mut dst[..nb * size_of::<B>()]);
    match bytemuck::try_cast_slice_mut::<u8, B>(dst) {
        Ok(blocks) => B::quantize(src, blocks),
        Err(_) => {
            let mut tmp = vec![B::zeroed(); nb];
            B::quantize(src, &mut tmp);
            dst.copy_from_slice(bytemuck::cast_slice(&tmp));
        }
    }
}

/// Whole blocks a dot product of `n` elements may read from both rows.
#[inline]
fn dot_blocks<B>(n: usize, w: &[u8], a: &[u8]) -> usize {
    (n / QK_K)
        .min(w.len() / size_of::<B>())
        .min(a.len() / size_of::<BlockQ8_K>())
}

/// The scalar level's dot (portable, in the x86 lanes' order).
fn vec_dot_bytes<B: KBlock>(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = dot_blocks::<B>(n, w, a);
    with_blocks(&w[..nb * size_of::<B>()], |w: &[B]| {
        with_blocks(&a[..nb * size_of::<BlockQ8_K>()], |a: &[BlockQ8_K]| {
            vec_dot_blocks::<B>(w, a)
        })
    })
}

crate::simd::portable_kernel! {
    /// [`KBlock::vec_dot`], compiled for AVX2 + FMA where present.
    fn vec_dot_blocks<B: KBlock>(w: &[B], a: &[BlockQ8_K]) -> f32 {
        B::vec_dot(w, a)
    }
}

/// The dot products one format has, per instruction set.
struct Dots {
    scalar: VecDotFn,
    avx2: Option<VecDotFn>,
    avx512: Option<VecDotFn>,
    avx512_vnni: Option<VecDotFn>,
}

impl Dots {
    /// The best kernel at or below `level` that this CPU can run.
    fn pick(&self, level: SimdLevel) -> VecDotFn {
        let hw = SimdLevel::available();
        if level == SimdLevel::Avx512 && hw.contains(&SimdLevel::Avx512) {
            if let Some(f) = self.avx512_vnni.filter(|_| has_avx512_vnni()) {
                return f;
            }
            if let Some(f) = self.avx512.or(self.avx2) {
                return f;
            }
        }
        if matches!(level, SimdLevel::Avx2 | SimdLevel::Avx512) && hw.contains(&SimdLevel::Avx2) {
            if let Some(f) = self.avx2 {
                return f;
            }
        }
        self.scalar
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx512_vnni() -> bool {
    use std::sync::OnceLock;
    static VNNI: OnceLock<bool> = OnceLock::new();
    *VNNI.get_or_init(|| std::arch::is_x86_feature_detected!("avx512vnni"))
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx512_vnni() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn dots_for(ty: GgmlType) -> Dots {
    let (scalar, avx2, avx512, avx512_vnni): (VecDotFn, _, _, _) = match ty {
        GgmlType::Q2_K => (
            vec_dot_bytes::<BlockQ2_K>,
            Some(avx2::Q2_K as VecDotFn),
            None,
            None,
        ),
        GgmlType::Q3_K => (
            vec_dot_bytes::<BlockQ3_K>,
            Some(avx2::Q3_K as VecDotFn),
            None,
            None,
        ),
        GgmlType::Q4_K => (
            vec_dot_bytes::<BlockQ4_K>,
            Some(avx2::Q4_K as VecDotFn),
            Some(avx512::Q4_K as VecDotFn),
            Some(avx512::Q4_K_VNNI as VecDotFn),
        ),
        GgmlType::Q5_K => (
            vec_dot_bytes::<BlockQ5_K>,
            Some(avx2::Q5_K as VecDotFn),
            None,
            None,
        ),
        GgmlType::Q6_K => (
            vec_dot_bytes::<BlockQ6_K>,
            Some(avx2::Q6_K as VecDotFn),
            Some(avx512::Q6_K as VecDotFn),
            Some(avx512::Q6_K_VNNI as VecDotFn),
        ),
        _ => (vec_dot_bytes::<BlockQ8_K>, None, None, None),
    };
    Dots {
        scalar,
        avx2,
        avx512,
        avx512_vnni,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn dots_for(ty: GgmlType) -> Dots {
    let scalar: VecDotFn = match ty {
        GgmlType::Q2_K => vec_dot_bytes::<BlockQ2_K>,
        GgmlType::Q3_K => vec_dot_bytes::<BlockQ3_K>,
        GgmlType::Q4_K => vec_dot_bytes::<BlockQ4_K>,
        GgmlType::Q5_K => vec_dot_bytes::<BlockQ5_K>,
        GgmlType::Q6_K => vec_dot_bytes::<BlockQ6_K>,
        _ => vec_dot_bytes::<BlockQ8_K>,
    };
    Dots {
        scalar,
        avx2: None,
        avx512: None,
        avx512_vnni: None,
    }
}

fn erased<B: KBlock>() -> (DequantFn, QuantFn) {
    (dequantize_bytes::<B>, quantize_bytes::<B>)
}

/// The K-quant kernels of `ty` at `level` (the best this CPU has at or
/// below it), or `None` when `ty` is not a K-quant.
pub(crate) fn kernels(ty: GgmlType, level: SimdLevel) -> Option<TypeKernels> {
    let (dequantize, quantize) = match ty {
        GgmlType::Q2_K => erased::<BlockQ2_K>(),
        GgmlType::Q3_K => erased::<BlockQ3_K>(),
        GgmlType::Q4_K => erased::<BlockQ4_K>(),
        GgmlType::Q5_K => erased::<BlockQ5_K>(),
        GgmlType::Q6_K => erased::<BlockQ6_K>(),
        GgmlType::Q8_K => erased::<BlockQ8_K>(),
        _ => return None,
    };
    Some(TypeKernels {
        ty,
        dequantize,
        quantize: Some(quantize),
        vec_dot_type: GgmlType::Q8_K,
        vec_dot: Some(dots_for(ty).pick(level)),
    })
}

#[cfg(test)]
mod tests;
