//! Tiled attention for prompt batches: a block of query rows of one head
//! against the f32 keys and values of their sequence, each key and value
//! row read once per block instead of once per query row.
//!
//! The query rows of a block run side by side, one per SIMD lane, so every
//! instruction does the same operation for every row. Each row's arithmetic
//! is exactly the one-row path's (`dot_kq`, `softmax_aligned`, then
//! `weighted_sum_v` in [`VSumOrder::VecDot`] order): `q·k` in `dot_kq`'s
//! four 16-lane accumulators and its `reduce16`, the softmax's exponentials
//! by ggml's polynomial and its sums in groups of 16 cells, and the value
//! sum's 64 per-cell accumulators, each taking its cells in increasing
//! order, folded as ggml folds them. Only the loop order and the memory
//! reuse differ, so a row's output is the same to the bit whether it runs
//! alone or in a block (the engine promises that a position's logits do not
//! depend on what shares its forward pass). Cells outside a row's causal
//! range or window are left out of its value sums by a per-lane blend, not
//! by a zero weight (whose `+0` could turn a `-0` sum into `+0`).

use super::attn_tile_lanes::{key_scores, slot_sum, Lanes, Portable8};
#[cfg(target_arch = "x86_64")]
use super::attn_tile_lanes::{Avx2x8, Avx512x16};
use crate::simd::SimdLevel;

/// One head's f32 key or value rows: row `j` is
/// `data[offset + j · stride..][..d]`.
#[derive(Clone, Copy, Debug)]
pub struct F32Rows<'a> {
    pub data: &'a [f32],
    pub stride: usize,
    pub offset: usize,
    pub d: usize,
}

impl<'a> F32Rows<'a> {
    #[inline(always)]
    pub(super) fn row(&self, j: usize) -> &'a [f32] {
        let at = self.offset + j * self.stride;
        &self.data[at..at + self.d]
    }
}

/// Query rows per block at `level` (the lanes of one register).
pub fn tile_rows(level: SimdLevel) -> usize {
    match crate::quants::legacy::usable_level(level) {
        SimdLevel::Avx512 => 16,
        _ => 8,
    }
}

/// Scratch reused between blocks (one per worker).
#[derive(Default, Debug)]
pub struct TileScratch {
    buf: Vec<f32>,
}

/// Attention of `q.len() <= tile_rows(level)` query rows of one head:
/// row `r` (its `dk` values `q[r]`) attends to cells `ranges[r].0 ..=
/// ranges[r].1` of `keys`/`values` with scores `q·k · scale`, and its
/// output goes to `out[r · dv..][..dv]`. Bit for bit the one-row path (see
/// the module doc).
pub fn attend_tile(
    level: SimdLevel,
    q: &[&[f32]],
    ranges: &[(usize, usize)],
    keys: &F32Rows<'_>,
    values: &F32Rows<'_>,
    scale: f32,
    out: &mut [f32],
    scratch: &mut TileScratch,
) {
    match crate::quants::legacy::usable_level(level) {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => {
            // SAFETY: `usable_level` checked AVX-512 F/BW/VL.
            unsafe { tile_avx512(q, ranges, keys, values, scale, out, scratch) }
        }
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => {
            // SAFETY: `usable_level` checked AVX2 and FMA.
            unsafe { tile_avx2(q, ranges, keys, values, scale, out, scratch) }
        }
        _ => tile_portable(q, ranges, keys, values, scale, out, scratch),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn tile_avx512(
    q: &[&[f32]],
    ranges: &[(usize, usize)],
    keys: &F32Rows<'_>,
    values: &F32Rows<'_>,
    scale: f32,
    out: &mut [f32],
    scratch: &mut TileScratch,
) {
    tile::<Avx512x16, 16, 16>(q, ranges, keys, values, scale, out, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(
    q: &[&[f32]],
    ranges: &[(usize, usize)],
    keys: &F32Rows<'_>,
    values: &F32Rows<'_>,
    scale: f32,
    out: &mut [f32],
    scratch: &mut TileScratch,
) {
    tile::<Avx2x8, 8, 8>(q, ranges, keys, values, scale, out, scratch)
}

crate::simd::portable_kernel! {
    fn tile_portable(
        q: &[&[f32]],
        ranges: &[(usize, usize)],
        keys: &F32Rows<'_>,
        values: &F32Rows<'_>,
        scale: f32,
        out: &mut [f32],
        scratch: &mut TileScratch,
    ) -> () {
        tile::<Portable8, 8, 8>(q, ranges, keys, values, scale, out, scratch)
    }
}

/// `reduce16`'s tree (halves, quarters, pairs) over 16 lane vectors.
#[inline(always)]
fn reduce16_lanes<const L: usize>(t: &[[f32; L]; 16]) -> [f32; L] {
    let mut h = [[0f32; L]; 8];
    for i in 0..8 {
        for l in 0..L {
            h[i][l] = t[8 + i][l] + t[i][l];
        }
    }
    let mut u = [[0f32; L]; 4];
    for i in 0..4 {
        for l in 0..L {
            u[i][l] = h[4 + i][l] + h[i][l];
        }
    }
    std::array::from_fn(|l| (u[0][l] + u[2][l]) + (u[1][l] + u[3][l]))
}

/// [`super::expf`] lane by lane, written without branches so it vectorizes; the
/// same bits as `expf` for every input (tested).
#[inline(always)]
fn expf_lanes<const L: usize>(x: &mut [f32; L]) {
    for v in x.iter_mut() {
        let x = *v;
        let r = f32::from_bits(0x4b40_0000);
        let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), r);
        let n = z - r;
        let b = (-n).mul_add(
            f32::from_bits(0x35bf_be8e),
            (-n).mul_add(f32::from_bits(0x3f31_7200), x),
        );
        let u = b * b;
        let j = f32::from_bits(0x3c07_2010)
            .mul_add(b, f32::from_bits(0x3d2b_9f17))
            .mul_add(
                u,
                f32::from_bits(0x3e2a_af33).mul_add(b, f32::from_bits(0x3eff_fedb)),
            )
            .mul_add(u, f32::from_bits(0x3f7f_fff6).mul_add(b, 1.0));
        let ni = n.clamp(-193.0, 193.0) as i32;
        let scale = f64::from_bits(((ni + 1023) as u64) << 52);
        let e = (j as f64 * scale) as f32;
        let big = if n <= 0.0 { 0.0 } else { f32::INFINITY };
        let e = if n.abs() > 192.0 { big } else { e };
        *v = if n.is_nan() { f32::NAN } else { e };
    }
}

/// The block, `L` rows in the lanes of `V`, value columns `C` at a time.
#[inline(always)]
fn tile<V: Lanes, const L: usize, const C: usize>(
    q: &[&[f32]],
    ranges: &[(usize, usize)],
    keys: &F32Rows<'_>,
    values: &F32Rows<'_>,
    scale: f32,
    out: &mut [f32],
    scratch: &mut TileScratch,
) {
    const { assert!(V::L == L) };
    let rows = q.len().min(ranges.len()).min(L);
    if rows == 0 {
        return;
    }
    let (dk, dv) = (keys.d, values.d);
    let lo = ranges[..rows].iter().map(|r| r.0).min().unwrap_or(0);
    let hi = ranges[..rows].iter().map(|r| r.1).max().unwrap_or(0);
    // Cells every row attends to: no per-lane masks there.
    let full_lo = ranges[..rows].iter().map(|r| r.0).max().unwrap_or(0);
    let full_hi = ranges[..rows].iter().map(|r| r.1).min().unwrap_or(0);
    let cells = hi + 1 - lo;
    let mut rlo = [usize::MAX; L];
    let mut rhi = [0usize; L];
    for r in 0..rows {
        (rlo[r], rhi[r]) = ranges[r];
    }
    // Bit `l`: row `l` attends to cell `j` (all bits where every row does).
    let mask = |j: usize| -> u32 {
        if full_lo <= j && j <= full_hi {
            return u32::MAX;
        }
        (0..L).fold(0, |m, l| m | (u32::from(rlo[l] <= j && j <= rhi[l]) << l))
    };

    // Scratch: transposed queries, then one vector of scores per cell.
    let need = (dk + cells) * L;
    if scratch.buf.len() < need {
        scratch.buf.resize(need, 0.0);
    }
    let (qt, sc) = scratch.buf[..need].split_at_mut(dk * L);
    for (m, v) in qt.as_chunks_mut::<L>().0.iter_mut().enumerate() {
        *v = std::array::from_fn(|l| if l < rows { q[l][m] } else { 0.0 });
    }

    // Scores: dot_kq's lanes and reduction, for all rows at once.
    for j in lo..=hi {
        // SAFETY: the caller holds `V`'s target features; `j - lo < cells`.
        unsafe {
            let s: V = key_scores(qt, keys.row(j), scale);
            s.store(sc.as_mut_ptr().add((j - lo) * L));
        }
    }
    let sc: &mut [[f32; L]] = sc.as_chunks_mut().0;

    // Softmax per lane over its own cells.
    let mut mx = [f32::NEG_INFINITY; L];
    for (j, s) in (lo..=hi).zip(sc.iter()) {
        let m = mask(j);
        if m == u32::MAX {
            for l in 0..L {
                mx[l] = mx[l].max(s[l]);
            }
        } else {
            for l in 0..L {
                if m >> l & 1 == 1 {
                    mx[l] = mx[l].max(s[l]);
                }
            }
        }
    }
    for (j, s) in (lo..=hi).zip(sc.iter_mut()) {
        for l in 0..L {
            s[l] -= mx[l];
        }
        expf_lanes(s);
        let m = mask(j);
        if m != u32::MAX {
            for l in 0..L {
                if m >> l & 1 == 0 {
                    s[l] = 0.0;
                }
            }
        }
    }
    // Sums in groups of 16 cells aligned to cell 0, each group's reduce16
    // added in f64 (a group outside a row's cells adds +0 to it).
    let mut sum = [0f64; L];
    let mut g = lo & !15;
    while g <= hi {
        let t: [[f32; L]; 16] = std::array::from_fn(|i| {
            let j = g + i;
            if j >= lo && j <= hi {
                sc[j - lo]
            } else {
                [0.0; L]
            }
        });
        let r = reduce16_lanes(&t);
        for l in 0..L {
            sum[l] += r[l] as f64;
        }
        g += 16;
    }
    let inv: [f32; L] = std::array::from_fn(|l| (1.0 / sum[l]) as f32);
    for s in sc.iter_mut() {
        for l in 0..L {
            s[l] *= inv[l];
        }
    }
    // A row with no finite score weighs nothing (softmax_aligned's zeros).
    for l in 0..rows {
        if mx[l] == f32::NEG_INFINITY {
            sc.iter_mut().for_each(|s| s[l] = 0.0);
        }
    }
    let p = sc.as_flattened();

    // Values: per column chunk, the 64 cell accumulators one at a time,
    // each over its cells in increasing order, folded as weighted_sum_v.
    let mut c0 = 0;
    while c0 < dv {
        let cw = C.min(dv - c0);
        let mut lanes = [[[0f32; L]; 16]; C];
        for ln in 0..16 {
            let mut s4 = [[[0f32; L]; C]; 4];
            for (jj, sj) in s4.iter_mut().enumerate() {
                let slot = 16 * jj + ln;
                // First cell >= lo in this slot.
                let first = lo + (slot + 64 - lo % 64) % 64;
                // SAFETY: the caller holds `V`'s target features.
                unsafe {
                    let acc: [V; C] = slot_sum(p, lo, (first, hi), values, c0, &mask);
                    for (c, a) in acc.iter().enumerate() {
                        a.store(sj[c].as_mut_ptr());
                    }
                }
            }
            for c in 0..cw {
                for l in 0..L {
                    lanes[c][ln][l] = (s4[0][c][l] + s4[2][c][l]) + (s4[1][c][l] + s4[3][c][l]);
                }
            }
        }
        for c in 0..cw {
            let r = reduce16_lanes(&lanes[c]);
            for l in 0..rows {
                out[l * dv + c0 + c] = r[l];
            }
        }
        c0 += cw;
    }
}

#[cfg(test)]
#[path = "attn_tile_tests.rs"]
mod tests;
