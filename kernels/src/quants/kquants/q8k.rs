//! Q8_K: the 8-bit activation format every K-quant (and the IQ family)
//! dots against. Quantization matches ggml's x86 CPU path bit for bit
//! (`quantize_row_q8_K` there is `quantize_row_q8_K_ref`): scale
//! `−127/max` by the signed value of largest magnitude, round to nearest
//! even, and store `d = 1/iscale` with the sums of each 16 quants.

use super::blocks::{BlockQ8_K, QK_K};
use super::search::nearest_int;

/// Quantizes `x` (`256 · out.len()` values) to Q8_K exactly as ggml does
/// before a K-quant or IQ matrix product.
pub fn quantize_q8_k(x: &[f32], out: &mut [BlockQ8_K]) {
    assert_eq!(x.len(), out.len() * QK_K, "quantize_q8_k: length mismatch");
    for (x, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        quantize_block(x, b);
    }
}

fn quantize_block(x: &[f32], b: &mut BlockQ8_K) {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        *b = bytemuck::Zeroable::zeroed();
        return;
    }
    let iscale = -127.0f32 / max;
    for (q, &v) in b.qs.iter_mut().zip(x) {
        *q = nearest_int(iscale * v).min(127) as i8;
    }
    for (g, s) in b.bsums.iter_mut().enumerate() {
        *s = b.qs[16 * g..16 * g + 16].iter().map(|&q| q as i16).sum();
    }
    b.d = 1.0 / iscale;
}

/// Dequantizes Q8_K blocks (`d · q`).
pub fn dequantize_q8_k(blocks: &[BlockQ8_K], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        for (y, &q) in y.iter_mut().zip(&b.qs) {
            *y = b.d * q as f32;
        }
    }
}

/// Dot product of two Q8_K rows (scalar; Q8_K weights are rare).
pub fn vec_dot_q8_k_q8_k(w: &[BlockQ8_K], a: &[BlockQ8_K]) -> f32 {
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let sumi: i32 =
            x.qs.iter()
                .zip(&y.qs)
                .map(|(&p, &q)| p as i32 * q as i32)
                .sum();
        sum += x.d * y.d * sumi as f32;
    }
    sum
}
