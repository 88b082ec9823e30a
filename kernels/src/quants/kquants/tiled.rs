//! K-quant matrix products in the float order of llama.cpp's "tiled" CPU
//! path (`ggml-cpu/tiled/`), which ggml takes instead of `vec_dot` for
//! Q2_K … Q6_K weights outside the repack buffer once a product has at
//! least 8 activation rows.
//!
//! That path rounds the activations to Q8_K exactly as `vec_dot` does
//! (`quantize_row_q8_K`, same bytes, same `bsums`), and all its integer work
//! is exact, so only the float steps matter. Per output and per 256-element
//! super-block `b`, with `d`/`dmin` the weight block's scales (f16 widened)
//! and `d8` the activation block's scale:
//!
//! - `s1 = Σ_sub scale · Σ (code − BIAS) · q8`, where `code` is the weight's
//!   unsigned code (Q6_K: 6 bits, BIAS 32; Q3_K: 3 bits, BIAS 4, scale − 32;
//!   Q4_K/Q5_K/Q2_K: BIAS 0), summed over 16- or 32-wide sub-blocks;
//! - `s2 = Σ_sub min · bsum` for the formats with mins (Q2_K, Q4_K, Q5_K);
//! - `r = f32(s1) · d`, then `r = fma(−dmin, f32(s2), r)` when there are mins;
//! - `acc = fma(r, d8, acc)`, super-blocks in order from `acc = 0`.
//!
//! ggml writes the last step as a separate multiply and add, but the
//! compiler (GCC, `-ffp-contract=fast`) fuses it; the fused form is what the
//! library computes. The way the driver splits K into chunks and windows
//! does not change this order: every slab is added to the same accumulator
//! one after the other. `vec_dot` instead sums `d · d8` products per
//! super-block into lanes, so results differ in the last bit.

use bytemuck::{Pod, Zeroable};
use rayon::prelude::*;

use super::blocks::{
    k4_scales_mins, q3k_scales, BlockQ2_K, BlockQ3_K, BlockQ4_K, BlockQ5_K, BlockQ6_K, BlockQ8_K,
    QK_K,
};
use super::q8k::quantize_q8_k;
use crate::matmul::MatRef;
use crate::types::GgmlType;
use crate::KernelError;

/// Weight rows one rayon task takes.
const ROWS_PER_TASK: usize = 16;

/// One weight super-block unpacked to what the tiled kernel works on.
struct Unpacked {
    /// Unsigned codes in element order.
    codes: [u8; QK_K],
    /// Per-sub-block scales (and mins), sub-block width `SUB`.
    scales: [i32; 16],
    mins: [i32; 16],
    d: f32,
    dmin: f32,
}

impl Unpacked {
    fn new(d: f32, dmin: f32) -> Self {
        Unpacked {
            codes: [0; QK_K],
            scales: [0; 16],
            mins: [0; 16],
            d,
            dmin,
        }
    }
}

/// A K-quant format as the tiled kernel sees it.
trait TiledBlock: Pod {
    /// Sub-block width: 16 or 32.
    const SUB: usize;
    /// Offset subtracted from every code.
    const BIAS: i32;
    /// Whether the format has per-sub-block mins.
    const HAS_MIN: bool;
    fn unpack(&self) -> Unpacked;
}

impl TiledBlock for BlockQ4_K {
    const SUB: usize = 32;
    const BIAS: i32 = 0;
    const HAS_MIN: bool = true;
    fn unpack(&self) -> Unpacked {
        let mut u = Unpacked::new(self.d.to_f32(), self.dmin.to_f32());
        nibbles(&self.qs, &mut u.codes);
        let (sc, mn) = k4_scales_mins(&self.scales);
        for s in 0..8 {
            u.scales[s] = sc[s] as i32;
            u.mins[s] = mn[s] as i32;
        }
        u
    }
}

impl TiledBlock for BlockQ5_K {
    const SUB: usize = 32;
    const BIAS: i32 = 0;
    const HAS_MIN: bool = true;
    fn unpack(&self) -> Unpacked {
        let mut u = Unpacked::new(self.d.to_f32(), self.dmin.to_f32());
        nibbles(&self.qs, &mut u.codes);
        // The fifth bit of element e sits in bit e/32 of qh[e % 32].
        for (e, c) in u.codes.iter_mut().enumerate() {
            *c |= ((self.qh[e % 32] >> (e / 32)) & 1) << 4;
        }
        let (sc, mn) = k4_scales_mins(&self.scales);
        for s in 0..8 {
            u.scales[s] = sc[s] as i32;
            u.mins[s] = mn[s] as i32;
        }
        u
    }
}

impl TiledBlock for BlockQ6_K {
    const SUB: usize = 16;
    const BIAS: i32 = 32;
    const HAS_MIN: bool = false;
    fn unpack(&self) -> Unpacked {
        let mut u = Unpacked::new(self.d.to_f32(), 0.0);
        // Each 128-element half: four 32-element runs take the low or high
        // nibble of ql[0..32] / ql[32..64] and the next 2-bit field of qh.
        for half in 0..2 {
            let ql = &self.ql[64 * half..64 * half + 64];
            let qh = &self.qh[32 * half..32 * half + 32];
            for l in 0..32 {
                let out = &mut u.codes[128 * half..128 * half + 128];
                out[l] = (ql[l] & 15) | ((qh[l] & 3) << 4);
                out[32 + l] = (ql[32 + l] & 15) | (((qh[l] >> 2) & 3) << 4);
                out[64 + l] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                out[96 + l] = (ql[32 + l] >> 4) | (((qh[l] >> 6) & 3) << 4);
            }
        }
        for s in 0..16 {
            u.scales[s] = self.scales[s] as i32;
        }
        u
    }
}

impl TiledBlock for BlockQ3_K {
    const SUB: usize = 16;
    const BIAS: i32 = 4;
    const HAS_MIN: bool = false;
    fn unpack(&self) -> Unpacked {
        let mut u = Unpacked::new(self.d.to_f32(), 0.0);
        for (e, c) in u.codes.iter_mut().enumerate() {
            let (half, group, l) = (e / 128, (e % 128) / 32, e % 32);
            let low = (self.qs[32 * half + l] >> (2 * group)) & 3;
            let high = (self.hmask[l] >> (4 * half + group)) & 1;
            *c = low | (high << 2);
        }
        for (dst, &s) in u.scales.iter_mut().zip(q3k_scales(&self.scales).iter()) {
            *dst = s as i32;
        }
        u
    }
}

impl TiledBlock for BlockQ2_K {
    const SUB: usize = 16;
    const BIAS: i32 = 0;
    const HAS_MIN: bool = true;
    fn unpack(&self) -> Unpacked {
        let mut u = Unpacked::new(self.d.to_f32(), self.dmin.to_f32());
        for (e, c) in u.codes.iter_mut().enumerate() {
            let (half, el) = (e / 128, e % 128);
            *c = (self.qs[32 * half + el % 32] >> (2 * (el / 32))) & 3;
        }
        for s in 0..16 {
            u.scales[s] = (self.scales[s] & 15) as i32;
            u.mins[s] = (self.scales[s] >> 4) as i32;
        }
        u
    }
}

/// Q4_K/Q5_K low 4 bits: 64-element chunk j is the low nibbles of
/// qs[32j..32j+32] followed by their high nibbles.
fn nibbles(qs: &[u8; 128], codes: &mut [u8; QK_K]) {
    for j in 0..4 {
        for l in 0..32 {
            let b = qs[32 * j + l];
            codes[64 * j + l] = b & 15;
            codes[64 * j + 32 + l] = b >> 4;
        }
    }
}

/// Whether [`matmul_tiled_order`] handles weights of type `ty`.
pub fn tiled_supported(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K
    )
}

/// `out[t * rows + r] = dot(w row r, x row t)` for `n` activation rows,
/// rounded exactly as llama.cpp's tiled K-quant path rounds them (the path
/// ggml takes for `n >= 8` when the weights are not repacked). Any `n` is
/// accepted; the result does not depend on `n`.
pub fn matmul_tiled_order(
    w: MatRef<'_>,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    match w.ty {
        GgmlType::Q2_K => run::<BlockQ2_K>(w, x, n, out),
        GgmlType::Q3_K => run::<BlockQ3_K>(w, x, n, out),
        GgmlType::Q4_K => run::<BlockQ4_K>(w, x, n, out),
        GgmlType::Q5_K => run::<BlockQ5_K>(w, x, n, out),
        GgmlType::Q6_K => run::<BlockQ6_K>(w, x, n, out),
        ty => Err(KernelError::Unsupported(ty, "tiled matmul")),
    }
}

fn run<B: TiledBlock>(
    w: MatRef<'_>,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let row_bytes =
        w.ty.row_bytes(w.cols)
            .ok_or(KernelError::NotBlockMultiple {
                ty: w.ty,
                len: w.cols,
                block: QK_K,
            })?;
    check_len(w.ty, w.rows * row_bytes, w.data.len())?;
    check_len(GgmlType::F32, n * w.cols, x.len())?;
    check_len(GgmlType::F32, n * w.rows, out.len())?;
    if n == 0 || w.rows == 0 {
        return Ok(());
    }
    let nb = w.cols / QK_K;
    let mut act = vec![BlockQ8_K::zeroed(); n * nb];
    for (xr, ar) in x.chunks_exact(w.cols).zip(act.chunks_exact_mut(nb)) {
        quantize_q8_k(xr, ar);
    }
    // Results row-major per weight row ([r][t]) so tasks own whole chunks.
    let mut by_row = vec![0f32; w.rows * n];
    by_row
        .par_chunks_mut(ROWS_PER_TASK * n)
        .enumerate()
        .for_each(|(task, dst)| {
            let r0 = task * ROWS_PER_TASK;
            for (i, dst_row) in dst.chunks_exact_mut(n).enumerate() {
                let bytes = &w.data[(r0 + i) * row_bytes..(r0 + i + 1) * row_bytes];
                weight_row::<B>(bytes, &act, nb, dst_row);
            }
        });
    for (r, row) in by_row.chunks_exact(n).enumerate() {
        for (t, &v) in row.iter().enumerate() {
            out[t * w.rows + r] = v;
        }
    }
    Ok(())
}

fn check_len(ty: GgmlType, expected: usize, got: usize) -> Result<(), KernelError> {
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::ByteLength { ty, expected, got })
    }
}

/// One weight row against every activation row: `dst[t]`.
fn weight_row<B: TiledBlock>(bytes: &[u8], act: &[BlockQ8_K], nb: usize, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has FMA, checked just above.
            unsafe { weight_row_fma::<B>(bytes, act, nb, dst) };
            return;
        }
    }
    weight_row_body::<B>(bytes, act, nb, dst)
}

/// [`weight_row_body`] compiled with FMA so `mul_add` is one instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn weight_row_fma<B: TiledBlock>(
    bytes: &[u8],
    act: &[BlockQ8_K],
    nb: usize,
    dst: &mut [f32],
) {
    weight_row_body::<B>(bytes, act, nb, dst)
}

#[inline(always)]
fn weight_row_body<B: TiledBlock>(bytes: &[u8], act: &[BlockQ8_K], nb: usize, dst: &mut [f32]) {
    let size = std::mem::size_of::<B>();
    dst.fill(0.0);
    for b in 0..nb {
        let blk: B = bytemuck::pod_read_unaligned(&bytes[b * size..(b + 1) * size]);
        let u = blk.unpack();
        for (t, acc) in dst.iter_mut().enumerate() {
            let a = &act[t * nb + b];
            let (s1, s2) = block_sums::<B>(&u, a);
            let mut r = s1 as f32 * u.d;
            if B::HAS_MIN {
                r = (-u.dmin).mul_add(s2 as f32, r);
            }
            *acc = r.mul_add(a.d, *acc);
        }
    }
}

/// The exact integer sums of one super-block: `s1 = Σ scale · Σ (code −
/// BIAS) · q8` and `s2 = Σ min · bsum` (ggml's wrapping i32 arithmetic).
#[inline(always)]
fn block_sums<B: TiledBlock>(u: &Unpacked, a: &BlockQ8_K) -> (i32, i32) {
    let (mut s1, mut s2) = (0i32, 0i32);
    for s in 0..QK_K / B::SUB {
        let range = s * B::SUB..(s + 1) * B::SUB;
        let raw: i32 = u.codes[range.clone()]
            .iter()
            .zip(&a.qs[range])
            .map(|(&c, &q)| c as i32 * q as i32)
            .fold(0i32, i32::wrapping_add);
        let per16 = B::SUB / 16;
        let bsum: i32 = a.bsums[s * per16..(s + 1) * per16]
            .iter()
            .map(|&v| v as i32)
            .sum();
        let corr = raw.wrapping_sub(B::BIAS.wrapping_mul(bsum));
        s1 = s1.wrapping_add(u.scales[s].wrapping_mul(corr));
        if B::HAS_MIN {
            s2 = s2.wrapping_add(u.mins[s].wrapping_mul(bsum));
        }
    }
    (s1, s2)
}
