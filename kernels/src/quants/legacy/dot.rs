//! Scalar reference dot products of legacy weight rows with Q8_0 / Q8_1
//! activation rows (ggml's `ggml_vec_dot_*_generic`): an integer dot per
//! block, scaled by `d_w * d_a` (plus `m_w * s_a` for the types with a
//! minimum) and summed in f32, block by block.
//!
//! Every SIMD kernel is tested against these. They read raw bytes of any
//! alignment and use `min(n / 32, whole blocks in w, whole blocks in act)`
//! blocks, so a short slice can never be read past its end.

use super::{nibble, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1, QK};
use bytemuck::Pod;

/// Walks the blocks of a weight row and an activation row pairwise.
fn blocks<'a, W: Pod, A: Pod>(
    n: usize,
    w: &'a [u8],
    act: &'a [u8],
) -> impl Iterator<Item = (W, A)> + 'a {
    w.chunks_exact(std::mem::size_of::<W>())
        .zip(act.chunks_exact(std::mem::size_of::<A>()))
        .take(n / QK)
        .map(|(w, a)| {
            (
                bytemuck::pod_read_unaligned(w),
                bytemuck::pod_read_unaligned(a),
            )
        })
}

/// Σ q_w[j] * q_a[j] over one block, for weights given by `wq(j)`.
fn idot(wq: impl Fn(usize) -> i32, qa: &[i8; QK]) -> i32 {
    (0..QK).map(|j| wq(j) * i32::from(qa[j])).sum()
}

fn five(qs: &[u8; 16], qh: [u8; 4], j: usize) -> i32 {
    i32::from(super::five_bit(qs, qh, j))
}

/// Q4_0 weights · Q8_0 activations.
pub fn vec_dot_q4_0_q8_0_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in blocks::<BlockQ4_0, BlockQ8_0>(n, w, act) {
        let sumi = idot(|j| i32::from(nibble(&x.qs, j)) - 8, &y.qs);
        sum += sumi as f32 * (x.d.to_f32() * y.d.to_f32());
    }
    sum
}

/// Q4_1 weights · Q8_1 activations.
pub fn vec_dot_q4_1_q8_1_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in blocks::<BlockQ4_1, BlockQ8_1>(n, w, act) {
        let sumi = idot(|j| i32::from(nibble(&x.qs, j)), &y.qs);
        sum += (x.d.to_f32() * y.d.to_f32()) * sumi as f32 + x.m.to_f32() * y.s.to_f32();
    }
    sum
}

/// Q5_0 weights · Q8_0 activations.
pub fn vec_dot_q5_0_q8_0_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in blocks::<BlockQ5_0, BlockQ8_0>(n, w, act) {
        let sumi = idot(|j| five(&x.qs, x.qh, j) - 16, &y.qs);
        sum += sumi as f32 * (x.d.to_f32() * y.d.to_f32());
    }
    sum
}

/// Q5_1 weights · Q8_1 activations.
pub fn vec_dot_q5_1_q8_1_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in blocks::<BlockQ5_1, BlockQ8_1>(n, w, act) {
        let sumi = idot(|j| five(&x.qs, x.qh, j), &y.qs);
        sum += (x.d.to_f32() * y.d.to_f32()) * sumi as f32 + x.m.to_f32() * y.s.to_f32();
    }
    sum
}

/// Q8_0 weights · Q8_0 activations.
pub fn vec_dot_q8_0_q8_0_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in blocks::<BlockQ8_0, BlockQ8_0>(n, w, act) {
        let sumi = idot(|j| i32::from(x.qs[j]), &y.qs);
        sum += sumi as f32 * (x.d.to_f32() * y.d.to_f32());
    }
    sum
}
