//! The lane vectors of tiled attention: one query row per lane, the same
//! operation on every lane. [`Lanes`] is implemented for eight plain f32
//! (the portable reference), an AVX2 register (eight lanes) and an
//! AVX-512 register (sixteen lanes); every operation is one IEEE rounding
//! per lane, so the results are the same on all three. The two hot loops of
//! the block, a key's scores and a value accumulator's cells, are written
//! once over the trait.

use super::attn_tile::F32Rows;

/// A vector of `L` f32 lanes. Callers hold the target features of the
/// implementing type (the functions are `unsafe` for that and for the raw
/// loads and stores).
pub(super) trait Lanes: Copy {
    const L: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(x: f32) -> Self;
    /// Loads `L` values.
    unsafe fn load(p: *const f32) -> Self;
    /// Stores `L` values.
    unsafe fn store(self, p: *mut f32);
    unsafe fn add(self, o: Self) -> Self;
    unsafe fn mul(self, o: Self) -> Self;
    /// `a · b + c`, one rounding.
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    /// Lane `l` of `new` where bit `l` of `mask` is set, of `old` elsewhere.
    unsafe fn blend(mask: u32, new: Self, old: Self) -> Self;
}

#[derive(Clone, Copy)]
pub(super) struct Portable8([f32; 8]);

impl Lanes for Portable8 {
    const L: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Portable8([0.0; 8])
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Portable8([x; 8])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller passes 8 readable values.
        Portable8(unsafe { std::ptr::read_unaligned(p as *const [f32; 8]) })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller passes room for 8 values.
        unsafe { std::ptr::write_unaligned(p as *mut [f32; 8], self.0) }
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        Portable8(std::array::from_fn(|l| self.0[l] + o.0[l]))
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        Portable8(std::array::from_fn(|l| self.0[l] * o.0[l]))
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        Portable8(std::array::from_fn(|l| a.0[l].mul_add(b.0[l], c.0[l])))
    }
    #[inline(always)]
    unsafe fn blend(mask: u32, new: Self, old: Self) -> Self {
        Portable8(std::array::from_fn(|l| {
            if mask >> l & 1 == 1 {
                new.0[l]
            } else {
                old.0[l]
            }
        }))
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use x86::{Avx2x8, Avx512x16};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Lanes;
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub(in super::super) struct Avx2x8(__m256);

    // SAFETY (all): callers run with AVX2 and FMA enabled, and pass
    // pointers to 8 readable values.
    impl Lanes for Avx2x8 {
        const L: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx2x8(unsafe { _mm256_setzero_ps() })
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Avx2x8(unsafe { _mm256_set1_ps(x) })
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx2x8(unsafe { _mm256_loadu_ps(p) })
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm256_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            Avx2x8(unsafe { _mm256_add_ps(self.0, o.0) })
        }
        #[inline(always)]
        unsafe fn mul(self, o: Self) -> Self {
            Avx2x8(unsafe { _mm256_mul_ps(self.0, o.0) })
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            Avx2x8(unsafe { _mm256_fmadd_ps(a.0, b.0, c.0) })
        }
        #[inline(always)]
        unsafe fn blend(mask: u32, new: Self, old: Self) -> Self {
            unsafe {
                let bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
                let m = _mm256_and_si256(_mm256_set1_epi32(mask as i32), bits);
                let m = _mm256_castsi256_ps(_mm256_cmpeq_epi32(m, bits));
                Avx2x8(_mm256_blendv_ps(old.0, new.0, m))
            }
        }
    }

    #[derive(Clone, Copy)]
    pub(in super::super) struct Avx512x16(__m512);

    // SAFETY (all): callers run with AVX-512 F enabled, and pass pointers
    // to 16 readable values.
    impl Lanes for Avx512x16 {
        const L: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx512x16(unsafe { _mm512_setzero_ps() })
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Avx512x16(unsafe { _mm512_set1_ps(x) })
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx512x16(unsafe { _mm512_loadu_ps(p) })
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm512_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            Avx512x16(unsafe { _mm512_add_ps(self.0, o.0) })
        }
        #[inline(always)]
        unsafe fn mul(self, o: Self) -> Self {
            Avx512x16(unsafe { _mm512_mul_ps(self.0, o.0) })
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            Avx512x16(unsafe { _mm512_fmadd_ps(a.0, b.0, c.0) })
        }
        #[inline(always)]
        unsafe fn blend(mask: u32, new: Self, old: Self) -> Self {
            Avx512x16(unsafe { _mm512_mask_blend_ps(mask as __mmask16, old.0, new.0) })
        }
    }
}

/// The `L` rows' scores of key `k`: `dot_kq`'s four 16-lane accumulators
/// and `reduce16`, the tail added product by product, times `scale`.
/// `qt` holds the queries transposed (`dk × L`).
#[inline(always)]
pub(super) unsafe fn key_scores<V: Lanes>(qt: &[f32], k: &[f32], scale: f32) -> V {
    let dk = k.len().min(qt.len() / V::L);
    let np = dk & !63;
    let q = qt.as_ptr();
    // SAFETY: every `m < dk` indexes `k` and a whole vector of `qt`.
    unsafe {
        let mut t = [V::zero(); 16];
        for (ln, tl) in t.iter_mut().enumerate() {
            let mut a = [V::zero(); 4];
            let mut i = 0;
            while i < np {
                for (jj, aj) in a.iter_mut().enumerate() {
                    let m = i + 16 * jj + ln;
                    let km = V::splat(*k.get_unchecked(m));
                    *aj = V::fma(V::load(q.add(m * V::L)), km, *aj);
                }
                i += 64;
            }
            *tl = a[0].add(a[2]).add(a[1].add(a[3]));
        }
        let h: [V; 8] = std::array::from_fn(|i| t[8 + i].add(t[i]));
        let u: [V; 4] = std::array::from_fn(|i| h[4 + i].add(h[i]));
        let mut s = u[0].add(u[2]).add(u[1].add(u[3]));
        for m in np..dk {
            s = s.add(V::load(q.add(m * V::L)).mul(V::splat(*k.get_unchecked(m))));
        }
        s.mul(V::splat(scale))
    }
}

/// One of the 64 value accumulators, columns `c0..c0 + C` (those past
/// the row are zeros): the cells `j = first, first + 64, .. <= hi`, in
/// order, each `fma(v_j[c], p_j, acc)` on the lanes whose rows attend to
/// it (`mask(j)`; `u32::MAX` where all do). `p` holds the weights of
/// cells `lo..` (`L` per cell).
#[inline(always)]
pub(super) unsafe fn slot_sum<V: Lanes, const C: usize>(
    p: &[f32],
    lo: usize,
    (first, hi): (usize, usize),
    values: &F32Rows<'_>,
    c0: usize,
    mask: &dyn Fn(usize) -> u32,
) -> [V; C] {
    // SAFETY: `j - lo` indexes a whole vector of `p` for `j <= hi`.
    unsafe {
        let mut acc = [V::zero(); C];
        let mut j = first;
        while j <= hi {
            let w = V::load(p.as_ptr().add((j - lo) * V::L));
            let row = values.row(j);
            let m = mask(j);
            if row.len() >= c0 + C && m == u32::MAX {
                for (c, a) in acc.iter_mut().enumerate() {
                    *a = V::fma(V::splat(*row.get_unchecked(c0 + c)), w, *a);
                }
            } else {
                for (c, a) in acc.iter_mut().enumerate() {
                    let x = V::splat(row.get(c0 + c).copied().unwrap_or(0.0));
                    *a = V::blend(m, V::fma(x, w, *a), *a);
                }
            }
            j += 64;
        }
        acc
    }
}
