//! Scalar reference dot products of legacy weight rows with Q8_0 / Q8_1
//! activation rows (ggml's `ggml_vec_dot_*_generic`): an integer dot per
//! block, scaled by `d_w * d_a` (plus `m_w * s_a` for the types with a
//! minimum) and summed in f32, block by block.
//!
//! Every SIMD kernel is tested against these. They read raw bytes of any
//! alignment and use `min(n / 32, whole blocks in w, whole blocks in act)`
//! blocks, so a short slice can never be read past its end.

use super::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1, QK};
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

/// Σ q_w[j] * q_a[j] over one block of 4-bit weights (`j` and `j + 16`
/// in byte `j`), each weight minus `offset`. Plain loops over the bytes,
/// so the compiler vectorizes them on any target.
fn idot4(qs: &[u8; 16], offset: i32, qa: &[i8; QK]) -> i32 {
    let mut sum = 0i32;
    for j in 0..16 {
        let lo = i32::from(qs[j] & 0x0F) - offset;
        let hi = i32::from(qs[j] >> 4) - offset;
        sum += lo * i32::from(qa[j]) + hi * i32::from(qa[j + 16]);
    }
    sum
}

/// As [`idot4`] for 5-bit weights, the fifth bits in `qh`.
fn idot5(qs: &[u8; 16], qh: [u8; 4], offset: i32, qa: &[i8; QK]) -> i32 {
    let h = u32::from_le_bytes(qh);
    let mut sum = 0i32;
    for j in 0..16 {
        let lo = i32::from(qs[j] & 0x0F) | (((h >> j) & 1) << 4) as i32;
        let hi = i32::from(qs[j] >> 4) | (((h >> (j + 16)) & 1) << 4) as i32;
        sum += (lo - offset) * i32::from(qa[j]) + (hi - offset) * i32::from(qa[j + 16]);
    }
    sum
}

/// Q4_0 weights · Q8_0 activations.
pub fn vec_dot_q4_0_q8_0_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in blocks::<BlockQ4_0, BlockQ8_0>(n, w, act) {
        let sumi = idot4(&x.qs, 8, &y.qs);
        sum += sumi as f32 * (x.d.to_f32() * y.d.to_f32());
    }
    sum
}

/// Q4_1 weights · Q8_1 activations.
pub fn vec_dot_q4_1_q8_1_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in blocks::<BlockQ4_1, BlockQ8_1>(n, w, act) {
        let sumi = idot4(&x.qs, 0, &y.qs);
        sum += (x.d.to_f32() * y.d.to_f32()) * sumi as f32 + x.m.to_f32() * y.s.to_f32();
    }
    sum
}

/// Q5_0 weights · Q8_0 activations.
pub fn vec_dot_q5_0_q8_0_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in blocks::<BlockQ5_0, BlockQ8_0>(n, w, act) {
        let sumi = idot5(&x.qs, x.qh, 16, &y.qs);
        sum += sumi as f32 * (x.d.to_f32() * y.d.to_f32());
    }
    sum
}

/// Q5_1 weights · Q8_1 activations.
pub fn vec_dot_q5_1_q8_1_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in blocks::<BlockQ5_1, BlockQ8_1>(n, w, act) {
        let sumi = idot5(&x.qs, x.qh, 0, &y.qs);
        sum += (x.d.to_f32() * y.d.to_f32()) * sumi as f32 + x.m.to_f32() * y.s.to_f32();
    }
    sum
}

/// Q8_0 weights · Q8_0 activations.
pub fn vec_dot_q8_0_q8_0_ref(n: usize, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in blocks::<BlockQ8_0, BlockQ8_0>(n, w, act) {
        let sumi: i32 = (x.qs.iter().zip(&y.qs))
            .map(|(&a, &b)| i32::from(a) * i32::from(b))
            .sum();
        sum += sumi as f32 * (x.d.to_f32() * y.d.to_f32());
    }
    sum
}
