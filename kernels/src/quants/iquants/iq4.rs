//! The non-linear 4-bit i-quants: IQ4_NL (4.5 bpw, blocks of 32 with an f16
//! scale) and IQ4_XS (4.25 bpw, super-blocks of 256 with a 6-bit scale per
//! 32). Both map each 4-bit code through [`KVALUES_IQ4NL`].
//!
//! Block types, dequantization (bit-identical to ggml's) and quantization
//! (ggml's `quantize_iq4_nl` / `quantize_iq4_xs`, the functions
//! `llama-quantize` uses: a scale search over 15 candidates per 32 weights,
//! weighted by x² or, when given, an importance matrix).

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::grids::KVALUES_IQ4NL;
use super::{blocks, with_blocks_mut, QK_K};

/// Elements per IQ4_NL block.
pub const QK4_NL: usize = 32;

/// IQ4_NL block: f16 scale, 32 4-bit codes (low nibbles = elements 0..16,
/// high nibbles = 16..32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ4NL {
    pub d: f16,
    pub qs: [u8; QK4_NL / 2],
}
const _: () = assert!(std::mem::size_of::<BlockIQ4NL>() == 18);

/// IQ4_XS super-block: f16 scale; per 32 weights a 6-bit scale (offset by
/// 32) split in a low nibble (`scales_l`) and 2 high bits (`scales_h`);
/// codes laid out per 32 weights as in IQ4_NL.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ4XS {
    pub d: f16,
    pub scales_h: u16,
    pub scales_l: [u8; QK_K / 64],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockIQ4XS>() == 136);

impl BlockIQ4XS {
    /// The signed scale (-32..=31) of 32-weight group `ib`.
    #[inline]
    pub fn scale(&self, ib: usize) -> i32 {
        let lo = (self.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xf;
        let hi = (self.scales_h >> (2 * ib)) & 3;
        (lo as i32 | (hi as i32) << 4) - 32
    }
}

/// Writes 32 weights `d * KVALUES_IQ4NL[code]` from 16 packed bytes.
#[inline]
fn put_nl32(y: &mut [f32], d: f32, qs: &[u8]) {
    let (lo, hi) = y.split_at_mut(16);
    for ((l, h), q) in lo.iter_mut().zip(hi.iter_mut()).zip(qs) {
        *l = d * KVALUES_IQ4NL[(q & 0xf) as usize] as f32;
        *h = d * KVALUES_IQ4NL[(q >> 4) as usize] as f32;
    }
}

/// Dequantizes IQ4_NL blocks into `dst` (`dst.len() / 32` blocks).
pub fn dequantize_iq4_nl(src: &[u8], dst: &mut [f32]) {
    let xs = blocks::<BlockIQ4NL>(src);
    for (x, y) in xs.iter().zip(dst.chunks_exact_mut(QK4_NL)) {
        put_nl32(y, x.d.to_f32(), &x.qs);
    }
}

/// Dequantizes IQ4_XS blocks into `dst` (`dst.len() / 256` blocks).
pub fn dequantize_iq4_xs(src: &[u8], dst: &mut [f32]) {
    let xs = blocks::<BlockIQ4XS>(src);
    for (x, y) in xs.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = x.d.to_f32();
        for (ib, (y, qs)) in y
            .chunks_exact_mut(32)
            .zip(x.qs.chunks_exact(16))
            .enumerate()
        {
            put_nl32(y, d * x.scale(ib) as f32, qs);
        }
    }
}

/// Index of the entry of the sorted table `KVALUES_IQ4NL` nearest to `x`
/// (the upper one on a tie, as ggml's `best_index_int8`).
#[inline]
fn nearest_code(x: f32) -> u8 {
    let v = &KVALUES_IQ4NL;
    if x <= v[0] as f32 {
        return 0;
    }
    if x >= v[15] as f32 {
        return 15;
    }
    // First entry above x (1..=15); x lies between v[hi - 1] and v[hi].
    let hi = v.partition_point(|&e| e as f32 <= x);
    if x - (v[hi - 1] as f32) < v[hi] as f32 - x {
        (hi - 1) as u8
    } else {
        hi as u8
    }
}

/// `acc + a * b`, rounded twice: ggml-quants.c lives in ggml-base, built
/// without FMA, so its sums are not contracted.
#[inline]
fn madd(a: f32, b: f32, acc: f32) -> f32 {
    a * b + acc
}

/// Weighted least-squares fit of `x ≈ d * value[code]` for one group of 32
/// weights: tries the scale `-max / 127` and 15 scales around it, returns
/// the best `d` (0 for an all-zero group).
fn fit_group(x: &[f32], w: &[f32], codes: &mut [u8]) -> f32 {
    const NTRY: i32 = 7;
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < 1e-15 {
        return 0.0;
    }
    let v0 = KVALUES_IQ4NL[0] as f32;
    let sums = |id: f32, codes: Option<&mut [u8]>| {
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        let mut codes = codes;
        for (j, (&xj, &wj)) in x.iter().zip(w).enumerate() {
            let l = nearest_code(id * xj);
            if let Some(c) = codes.as_deref_mut() {
                c[j] = l;
            }
            let q = KVALUES_IQ4NL[l as usize] as f32;
            sumqx = madd(wj * q, xj, sumqx);
            sumq2 = madd(wj * q, q, sumq2);
        }
        (sumqx, sumq2)
    };
    let d0 = -max / v0;
    let (sumqx, sumq2) = sums(1.0 / d0, Some(codes));
    let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -NTRY..=NTRY {
        let id = (itry as f32 + v0) / max;
        let (sumqx, sumq2) = sums(id, None);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// The fitting weights of one group: `x²`, or with an importance matrix
/// `qw * sqrt(sigma2 + x²)` (sigma2 = 2·mean(x²) over the super-block).
fn group_weights(x: &[f32], qw: Option<&[f32]>, sigma2: f32, w: &mut [f32]) {
    match qw {
        Some(qw) => {
            for ((w, &q), &v) in w.iter_mut().zip(qw).zip(x) {
                *w = q * madd(v, v, sigma2).sqrt();
            }
        }
        None => {
            for (w, &v) in w.iter_mut().zip(x) {
                *w = v * v;
            }
        }
    }
}

/// Packs 32 codes into 16 bytes (element j in the low nibble of byte j,
/// element 16 + j in its high nibble).
fn pack32(codes: &[u8], qs: &mut [u8]) {
    for (j, q) in qs.iter_mut().take(16).enumerate() {
        *q = codes[j] | codes[16 + j] << 4;
    }
}

fn sigma2_of(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s = madd(v, v, s);
    }
    s * (2.0 / x.len() as f32)
}

fn quantize_nl_block(x: &[f32], qw: Option<&[f32]>, out: &mut BlockIQ4NL) {
    let mut w = [0.0f32; QK4_NL];
    let mut codes = [0u8; QK4_NL];
    group_weights(x, qw, sigma2_of(x), &mut w);
    let d = fit_group(x, &w, &mut codes);
    out.d = f16::from_f32(d);
    // Re-pick the codes for the stored scale (ggml uses the f32 one).
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = nearest_code(id * v);
    }
    pack32(&codes, &mut out.qs);
}

fn quantize_xs_block(x: &[f32], qw: Option<&[f32]>, out: &mut BlockIQ4XS) {
    let sigma2 = sigma2_of(x);
    let mut scales = [0.0f32; QK_K / 32];
    let mut codes = [0u8; QK_K];
    let mut w = [0.0f32; 32];
    let (mut amax_scale, mut max_scale) = (0.0f32, 0.0f32);
    for (ib, s) in scales.iter_mut().enumerate() {
        let xb = &x[32 * ib..32 * ib + 32];
        group_weights(xb, qw.map(|q| &q[32 * ib..32 * ib + 32]), sigma2, &mut w);
        *s = fit_group(xb, &w, &mut codes[32 * ib..32 * ib + 32]);
        if s.abs() > amax_scale {
            amax_scale = s.abs();
            max_scale = *s;
        }
    }
    let d = -max_scale / 32.0;
    out.d = f16::from_f32(d);
    out.scales_h = 0;
    out.scales_l = [0; QK_K / 64];
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (ib, &s) in scales.iter().enumerate() {
        let l = ((id * s).round_ties_even() as i32).clamp(-32, 31);
        let dl = d * l as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        for (c, &v) in codes[32 * ib..32 * ib + 32]
            .iter_mut()
            .zip(&x[32 * ib..32 * ib + 32])
        {
            *c = nearest_code(idl * v);
        }
        let l = (l + 32) as u8;
        out.scales_l[ib / 2] |= (l & 0xf) << (4 * (ib % 2));
        out.scales_h |= ((l >> 4) as u16) << (2 * ib);
    }
    for (ib, qs) in out.qs.chunks_exact_mut(16).enumerate() {
        pack32(&codes[32 * ib..32 * ib + 32], qs);
    }
}

/// Quantizes `src` to IQ4_NL with optional per-element importance weights
/// (`weights.len() == src.len()`, e.g. an imatrix row repeated per row).
pub fn quantize_iq4_nl_weighted(src: &[f32], weights: Option<&[f32]>, dst: &mut [u8]) {
    with_blocks_mut::<BlockIQ4NL>(dst, |ys| {
        for (i, (x, y)) in src.chunks_exact(QK4_NL).zip(ys.iter_mut()).enumerate() {
            let qw = weights.and_then(|w| w.get(QK4_NL * i..QK4_NL * (i + 1)));
            quantize_nl_block(x, qw, y);
        }
    });
}

/// Quantizes `src` to IQ4_XS with optional per-element importance weights.
pub fn quantize_iq4_xs_weighted(src: &[f32], weights: Option<&[f32]>, dst: &mut [u8]) {
    with_blocks_mut::<BlockIQ4XS>(dst, |ys| {
        for (i, (x, y)) in src.chunks_exact(QK_K).zip(ys.iter_mut()).enumerate() {
            let qw = weights.and_then(|w| w.get(QK_K * i..QK_K * (i + 1)));
            quantize_xs_block(x, qw, y);
        }
    });
}

/// Quantizes `src` to IQ4_NL (ggml's `quantize_iq4_nl` without imatrix).
pub fn quantize_iq4_nl(src: &[f32], dst: &mut [u8]) {
    quantize_iq4_nl_weighted(src, None, dst);
}

/// Quantizes `src` to IQ4_XS (ggml's `quantize_iq4_xs` without imatrix).
pub fn quantize_iq4_xs(src: &[f32], dst: &mut [u8]) {
    quantize_iq4_xs_weighted(src, None, dst);
}
