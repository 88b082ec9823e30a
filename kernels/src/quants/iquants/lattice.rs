//! The codebook search structures of the i-quant quantizers, as ggml's
//! `iq2xs_init_impl` / `iq3xs_init_impl` build them, built lazily once.
//!
//! A codebook (grid) is a list of points with `dim` coordinates (8 for the
//! IQ2/IQ1 grids, 4 for the IQ3 ones); coordinate `k` of a point is a small
//! level `l` (the magnitude `2l + 1`). A point's *code* packs its levels,
//! `bits` bits each, coordinate 0 lowest. For every code of levels up to
//! `max_level` that is not itself a grid point, the search keeps the grid
//! points at the `nwant` smallest distinct squared distances (ties in grid
//! order), so the quantizers can snap an off-grid rounding to its best
//! nearby grid point.
//!
//! The points come from the dequantization tables in [`super::grids`],
//! which hold the same grids as ggml's `kgrid_*` tables in value form.

use std::sync::OnceLock;

use super::grids::{IQ1S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID};

/// One grid and its lookup from codes to grid points or neighbour lists.
pub(crate) struct Lattice {
    dim: usize,
    bits: u32,
    /// Point `j` as levels (only the first `dim` used).
    points: Vec<[u8; 8]>,
    /// Point `j`'s magnitudes `2l + 1` as f32, `dim` per point.
    mags: Vec<f32>,
    /// Code -> grid index, or `-(offset + 1)` into `neighbours`, or
    /// `i32::MIN` for codes with a level above `max_level`.
    map: Vec<i32>,
    /// Per off-grid code: a count `n`, then `n` grid indices.
    neighbours: Vec<u16>,
}

impl Lattice {
    fn build(points: Vec<[u8; 8]>, dim: usize, bits: u32, max_level: u8, nwant: usize) -> Lattice {
        let mags = points
            .iter()
            .flat_map(|p| p[..dim].iter().map(|&l| (2 * l as i32 + 1) as f32))
            .collect();
        let mut lat = Lattice {
            dim,
            bits,
            points,
            mags,
            map: vec![i32::MIN; 1 << (bits as usize * dim)],
            neighbours: Vec::new(),
        };
        for j in 0..lat.points.len() {
            let l = lat.points[j].map(|v| v as i8);
            let code = lat.code_of(&l);
            lat.map[code] = j as i32;
        }
        let mut dist: Vec<(i32, u16)> = Vec::with_capacity(lat.points.len());
        for code in 0..lat.map.len() {
            let levels: Vec<i32> = (0..dim)
                .map(|k| ((code >> (bits as usize * k)) & ((1 << bits) - 1)) as i32)
                .collect();
            if lat.map[code] >= 0 || levels.iter().any(|&l| l > max_level as i32) {
                continue;
            }
            dist.clear();
            for (j, p) in lat.points.iter().enumerate() {
                let d2: i32 = (0..dim)
                    .map(|k| {
                        let d = 2 * (p[k] as i32 - levels[k]);
                        d * d
                    })
                    .sum();
                dist.push((d2, j as u16));
            }
            dist.sort_unstable();
            let start = lat.neighbours.len();
            lat.map[code] = -(start as i32 + 1);
            lat.neighbours.push(0);
            let (mut d2, mut distinct) = (dist[0].0, 1);
            for &(d, j) in &dist {
                if d > d2 {
                    if distinct == nwant {
                        break;
                    }
                    d2 = d;
                    distinct += 1;
                }
                lat.neighbours.push(j);
            }
            lat.neighbours[start] = (lat.neighbours.len() - start - 1) as u16;
        }
        lat
    }

    #[inline]
    fn code_of(&self, l: &[i8]) -> usize {
        let mut u = 0usize;
        for (k, &v) in l[..self.dim].iter().enumerate() {
            u |= (v as u8 as usize) << (self.bits as usize * k);
        }
        u
    }

    /// Coordinates per grid point (8 or 4).
    #[inline]
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The levels of grid point `j`.
    #[inline]
    pub fn point(&self, j: usize) -> &[u8] {
        &self.points[j][..self.dim]
    }

    /// The grid point whose levels are `l` (each within `0..=max_level`),
    /// or `Err(neighbours)`: the candidate grid points of that code.
    #[inline]
    pub fn lookup(&self, l: &[i8]) -> Result<usize, &[u16]> {
        let m = self.map.get(self.code_of(l)).copied().unwrap_or(i32::MIN);
        if m >= 0 {
            return Ok(m as usize);
        }
        let start = (-(m as i64) - 1) as usize;
        let count = self.neighbours.get(start).copied().unwrap_or(0) as usize;
        Err(self
            .neighbours
            .get(start + 1..start + 1 + count)
            .unwrap_or(&[]))
    }

    /// `l` itself when on the grid; otherwise among its neighbours the
    /// point nearest to `xval` at `scale` (`Σ w·(scale·(2l+1) − x)²`, the
    /// first on ties), written back into `l` (ggml's
    /// `iq2_find_best_neighbour` / `iq3_find_best_neighbour`). Returns the
    /// grid index and whether `l` was on the grid.
    pub fn snap(&self, l: &mut [i8], xval: &[f32], weight: &[f32], scale: f32) -> (usize, bool) {
        let cands = match self.lookup(l) {
            Ok(j) => return (j, true),
            Err(c) => c,
        };
        let dim = self.dim;
        let mut best = (f32::MAX, cands.first().map_or(0, |&j| j as usize));
        for &j in cands {
            let q = &self.mags[dim * j as usize..dim * j as usize + dim];
            let mut d2 = 0.0f32;
            for i in 0..dim {
                let diff = scale * q[i] - xval[i];
                d2 += weight[i] * diff * diff;
            }
            if d2 < best.0 {
                best = (d2, j as usize);
            }
        }
        let best = best.1;
        for (v, &g) in l.iter_mut().zip(self.point(best)) {
            *v = g as i8;
        }
        (best, false)
    }

    /// The candidate with the smallest `dist` (the first on ties; the
    /// first candidate when every distance is NaN or infinite, where ggml
    /// would abort).
    pub fn nearest(&self, cands: &[u16], dist: impl Fn(&[u8]) -> f32) -> usize {
        let mut best = (f32::MAX, cands.first().map_or(0, |&j| j as usize));
        for &j in cands {
            let d2 = dist(self.point(j as usize));
            if d2 < best.0 {
                best = (d2, j as usize);
            }
        }
        best.1
    }
}

/// Levels of a u64 grid entry whose bytes are one of `values` (level =
/// position in `values`).
fn levels_u64(g: u64, values: &[u8]) -> [u8; 8] {
    std::array::from_fn(|k| {
        let b = ((g >> (8 * k)) & 0xff) as u8;
        values.iter().position(|&v| v == b).unwrap_or(0) as u8
    })
}

fn levels_u32(g: u32, values: &[u8]) -> [u8; 8] {
    let mut l = levels_u64(g as u64, values);
    l[4..].fill(0);
    l
}

/// IQ2_XXS: 256 points of `{1, 3, 5}^8`, two neighbour distances.
pub(crate) fn iq2xxs() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| {
        let pts = IQ2XXS_GRID
            .iter()
            .map(|&g| levels_u64(g, &[0x08, 0x19, 0x2b]))
            .collect();
        Lattice::build(pts, 8, 2, 2, 2)
    })
}

/// IQ2_XS: 512 points of `{1, 3, 5}^8`, two neighbour distances.
pub(crate) fn iq2xs() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| {
        let pts = IQ2XS_GRID
            .iter()
            .map(|&g| levels_u64(g, &[0x08, 0x19, 0x2b]))
            .collect();
        Lattice::build(pts, 8, 2, 2, 2)
    })
}

/// IQ1_S: 2048 points of `{−1, 0, 1}^8` (levels 0, 1, 2), three distances.
pub(crate) fn iq1s() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| {
        let pts = IQ1S_GRID
            .iter()
            .map(|&g| levels_u64(g, &[0xff, 0x00, 0x01]))
            .collect();
        Lattice::build(pts, 8, 2, 2, 3)
    })
}

/// IQ3_XXS: 256 points of 4 levels in `0..8`, two neighbour distances.
pub(crate) fn iq3xxs() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| {
        let values = [4, 12, 20, 28, 36, 44, 52, 62];
        let pts = IQ3XXS_GRID
            .iter()
            .map(|&g| levels_u32(g, &values))
            .collect();
        Lattice::build(pts, 4, 3, 7, 2)
    })
}

/// IQ3_S: 512 points of 4 levels in `0..8`, three neighbour distances.
pub(crate) fn iq3s() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| {
        let values = [1, 3, 5, 7, 9, 11, 13, 15];
        let pts = IQ3S_GRID.iter().map(|&g| levels_u32(g, &values)).collect();
        Lattice::build(pts, 4, 3, 7, 3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every grid decodes to distinct points and every lookup of levels
    /// within range lands on the grid or on a non-empty neighbour list
    /// whose points are all at the same minimal-or-next distances.
    #[test]
    fn grids_are_consistent() {
        for (lat, n, dim, max) in [
            (iq2xxs(), 256, 8, 2),
            (iq2xs(), 512, 8, 2),
            (iq1s(), 2048, 8, 2),
            (iq3xxs(), 256, 4, 7),
            (iq3s(), 512, 4, 7),
        ] {
            assert_eq!(lat.points.len(), n);
            let on_grid = lat.map.iter().filter(|&&m| m >= 0).count();
            assert_eq!(on_grid, n, "grid points must be distinct");
            for j in 0..n {
                let l: Vec<i8> = lat.point(j).iter().map(|&v| v as i8).collect();
                assert!(lat.point(j).iter().all(|&v| v <= max));
                assert_eq!(lat.lookup(&l), Ok(j));
            }
            // Every code of in-range levels is a grid point or has a
            // non-empty list of neighbours on the grid.
            let base = max as usize + 1;
            for code in 0..base.pow(dim as u32) {
                let l: Vec<i8> = (0..dim)
                    .map(|k| (code / base.pow(k as u32) % base) as i8)
                    .collect();
                if let Err(c) = lat.lookup(&l) {
                    assert!(!c.is_empty(), "{l:?}");
                    assert!(c.iter().all(|&j| (j as usize) < n));
                }
            }
        }
    }
}
