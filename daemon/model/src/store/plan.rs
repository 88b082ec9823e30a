//! What a model asks the store to hold, and how a budget is split.
//!
//! A [`Plan`] lists byte ranges of the file's data section in three
//! groups: `global` (embeddings, output head, routers: always resident),
//! per-layer non-expert weights (attention, shared experts, dense FFNs),
//! and per-layer routed-expert stacks. Each group is loaded in *units*: the
//! global set, one layer, or one (layer, expert) — the expert's slice of
//! every stack of its layer.
//!
//! [`split`] divides a budget: first the global set, then as many layers
//! as fit are pinned (a layer is needed by every token, an expert only by
//! the tokens routed to it, so a byte of layer is worth more); the layers
//! that do not fit stream through a window of a few slots; the rest of
//! the budget caches experts.

use super::io::{Seg, ALIGN};
use super::StoreError;

/// `len` bytes at `off` in the data section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ByteRange {
    pub off: u64,
    pub len: u64,
}

/// One stacked tensor of a layer's routed experts: expert `e`'s matrix is
/// `slice` bytes at `off + e * slice`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackRange {
    pub off: u64,
    pub slice: u64,
}

/// A layer's routed experts: `n` experts, each a slice of every stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpertLayout {
    pub stacks: Vec<StackRange>,
    pub n: usize,
    /// The experts this process runs (a mesh node's share; empty: all).
    pub held: Vec<bool>,
}

impl ExpertLayout {
    /// Bytes of a buffer that holds any one expert: a slice of `L` bytes
    /// spans at most `ceil(L / 4096) + 1` aligned pages. All experts of a
    /// layer share this size, so an evicted expert's buffer fits the next.
    pub fn unit_bytes(&self) -> u64 {
        self.stacks
            .iter()
            .map(|s| (s.slice.div_ceil(ALIGN) + 1) * ALIGN)
            .sum()
    }

    /// Experts this process runs.
    pub fn n_held(&self) -> usize {
        if self.held.is_empty() {
            self.n
        } else {
            self.held.iter().filter(|&&h| h).count()
        }
    }

    /// Expert `e`'s ranges, one per stack.
    pub fn ranges(&self, e: usize) -> Vec<ByteRange> {
        self.stacks
            .iter()
            .map(|s| ByteRange {
                off: s.off + e as u64 * s.slice,
                len: s.slice,
            })
            .collect()
    }
}

/// What a model needs held, by unit.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Always resident. The first two ranges are the token embeddings and
    /// the output head, in that order (a mesh node's [`Share`] may leave
    /// either out).
    pub global: Vec<ByteRange>,
    pub layers: Vec<Vec<ByteRange>>,
    /// Per layer (same length as `layers`): its routed experts, if any.
    pub experts: Vec<Option<ExpertLayout>>,
    /// Experts each token uses per MoE layer.
    pub n_expert_used: usize,
}

impl Plan {
    /// Bytes of every range (unaligned): the weights' size.
    pub fn total_bytes(&self) -> u64 {
        let ranges: u64 = self
            .global
            .iter()
            .chain(self.layers.iter().flatten())
            .map(|r| r.len)
            .sum();
        let experts: u64 = self
            .experts
            .iter()
            .flatten()
            .map(|x| x.stacks.iter().map(|s| s.slice).sum::<u64>() * x.n_held() as u64)
            .sum();
        ranges + experts
    }

    /// The part of the plan a mesh node runs: the embeddings and the
    /// output head if it uses them, the non-expert weights of its layers,
    /// and its routed experts. The rest of the global set (routers and
    /// the like, small) stays whole.
    pub fn restrict(&self, share: &Share) -> Plan {
        let global = self
            .global
            .iter()
            .enumerate()
            .filter(|(i, _)| match i {
                0 => share.embed,
                1 => share.output,
                _ => true,
            })
            .map(|(_, r)| *r)
            .collect();
        let layers = self
            .layers
            .iter()
            .enumerate()
            .map(|(il, r)| {
                if share.layers.get(il).copied().unwrap_or(false) {
                    r.clone()
                } else {
                    Vec::new()
                }
            })
            .collect();
        let experts = self
            .experts
            .iter()
            .enumerate()
            .map(|(il, x)| {
                let x = x.as_ref()?;
                let held: Vec<bool> = (0..x.n).map(|e| share.holds(il, e)).collect();
                held.contains(&true)
                    .then(|| ExpertLayout { held, ..x.clone() })
            })
            .collect();
        Plan {
            global,
            layers,
            experts,
            n_expert_used: self.n_expert_used,
        }
    }
}

/// What a mesh node runs of a model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Share {
    /// It embeds tokens.
    pub embed: bool,
    /// It runs the output head.
    pub output: bool,
    /// Per layer: whether the node runs its non-expert weights.
    pub layers: Vec<bool>,
    /// Per layer: the routed experts the node runs (empty: none).
    pub experts: Vec<Vec<bool>>,
}

impl Share {
    /// Whether the node runs expert `e` of layer `il`.
    pub fn holds(&self, il: usize, e: usize) -> bool {
        self.experts
            .get(il)
            .and_then(|x| x.get(e))
            .copied()
            .unwrap_or(false)
    }
}

/// Where each range of a unit lies in the unit's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    pub off: u64,
    pub len: u64,
    pub pos: usize,
}

/// The reads that fill a unit's buffer and where its ranges land.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub segs: Vec<Seg>,
    /// Sorted by `off`.
    pub index: Vec<Placed>,
    /// Buffer size (a multiple of [`ALIGN`]).
    pub bytes: usize,
}

fn floor_a(x: u64) -> u64 {
    x / ALIGN * ALIGN
}

fn ceil_a(x: u64) -> u64 {
    x.div_ceil(ALIGN) * ALIGN
}

/// Lays `ranges` (data-section offsets; the data section starts at file
/// offset `data_offset`) out as aligned reads: ranges whose aligned spans
/// touch are read together, and every range keeps its file offset's
/// position within a 4 KiB page, so its bytes are as aligned as in a
/// mapping of the file.
pub fn layout(ranges: &[ByteRange], data_offset: u64) -> Layout {
    let mut rs: Vec<ByteRange> = ranges.iter().copied().filter(|r| r.len > 0).collect();
    rs.sort_by_key(|r| r.off);
    rs.dedup();
    let mut segs: Vec<Seg> = Vec::new();
    let mut index = Vec::with_capacity(rs.len());
    let mut pos = 0usize;
    for r in rs {
        let (a, b) = (data_offset + r.off, data_offset + r.off + r.len);
        let (fa, cb) = (floor_a(a), ceil_a(b));
        match segs.last_mut() {
            Some(s) if fa <= s.file_off + s.len as u64 => {
                let end = (s.file_off + s.len as u64).max(cb);
                let grow = (end - s.file_off) as usize - s.len;
                s.len += grow;
                pos += grow;
                index.push(Placed {
                    off: r.off,
                    len: r.len,
                    pos: s.pos + (a - s.file_off) as usize,
                });
            }
            _ => {
                segs.push(Seg {
                    file_off: fa,
                    len: (cb - fa) as usize,
                    pos,
                });
                index.push(Placed {
                    off: r.off,
                    len: r.len,
                    pos: pos + (a - fa) as usize,
                });
                pos += (cb - fa) as usize;
            }
        }
    }
    Layout {
        segs,
        index,
        bytes: pos,
    }
}

/// Finds `len` bytes at `off` in a sorted index: the range that contains
/// them.
pub fn find(index: &[Placed], off: u64, len: u64) -> Option<(usize, usize)> {
    let i = index.partition_point(|p| p.off <= off).checked_sub(1)?;
    let p = index[i];
    (off + len <= p.off + p.len).then(|| {
        let s = p.pos + (off - p.off) as usize;
        (s, s + len as usize)
    })
}

/// How a budget is divided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    pub global_bytes: u64,
    /// Layers loaded once and kept.
    pub pinned: Vec<bool>,
    pub pinned_bytes: u64,
    /// Bytes of the window the other layers stream through.
    pub layer_pool: u64,
    /// Bytes for cached experts (and their reads in flight).
    pub expert_pool: u64,
    /// Bytes of one expert unit (largest layer's).
    pub expert_unit: u64,
}

/// Expert units the expert pool must hold at least: the current layer's
/// and the next layer's predictions, plus two in flight.
pub fn min_expert_units(k: usize) -> u64 {
    2 * k.max(1) as u64 + 2
}

/// Divides `budget` bytes for `plan` (see the module doc); `window` is the
/// number of streamed-layer slots (at least 2: the layer computing and
/// the next one loading).
pub fn split(
    plan: &Plan,
    data_offset: u64,
    budget: u64,
    window: usize,
) -> Result<Split, StoreError> {
    let g = layout(&plan.global, data_offset).bytes as u64;
    let lb: Vec<u64> = plan
        .layers
        .iter()
        .map(|r| layout(r, data_offset).bytes as u64)
        .collect();
    let l_max = lb.iter().copied().max().unwrap_or(0);
    let x = plan
        .experts
        .iter()
        .flatten()
        .map(ExpertLayout::unit_bytes)
        .max()
        .unwrap_or(0);
    let x_min = if x > 0 {
        x * min_expert_units(plan.n_expert_used)
    } else {
        0
    };
    let all_layers: u64 = lb.iter().sum();
    let too_small = |need: u64| StoreError::Budget { need, budget };
    if g + all_layers + x_min <= budget {
        return Ok(Split {
            global_bytes: g,
            pinned: vec![true; lb.len()],
            pinned_bytes: all_layers,
            layer_pool: 0,
            expert_pool: budget - g - all_layers,
            expert_unit: x,
        });
    }
    let w = window.max(2) as u64 * l_max;
    let need = g + w + x_min;
    if need > budget {
        return Err(too_small(need));
    }
    // Pin layers in order while they fit; the others stream.
    let mut room = budget - need;
    let mut pinned = vec![false; lb.len()];
    let mut pinned_bytes = 0;
    for (p, &b) in pinned.iter_mut().zip(&lb) {
        if b > room {
            break;
        }
        *p = true;
        room -= b;
        pinned_bytes += b;
    }
    Ok(Split {
        global_bytes: g,
        pinned,
        pinned_bytes,
        layer_pool: w,
        expert_pool: x_min + room,
        expert_unit: x,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(off: u64, len: u64) -> ByteRange {
        ByteRange { off, len }
    }

    #[test]
    fn layout_merges_touching_spans_and_keeps_page_offsets() {
        // Data section at 100: ranges at file 132..5132 and 5132..6000
        // share a page; one at 20100 is apart.
        let l = layout(&[r(20000, 50), r(32, 5000), r(5032, 868)], 100);
        assert_eq!(l.segs.len(), 2);
        assert_eq!(
            l.segs[0],
            Seg {
                file_off: 0,
                len: 8192,
                pos: 0
            }
        );
        assert_eq!(
            l.segs[1],
            Seg {
                file_off: 16384,
                len: 4096,
                pos: 8192
            }
        );
        assert_eq!(l.bytes, 12288);
        for p in &l.index {
            let file = 100 + p.off;
            let seg = l
                .segs
                .iter()
                .find(|s| s.file_off <= file && file < s.file_off + s.len as u64)
                .unwrap();
            assert_eq!(p.pos, seg.pos + (file - seg.file_off) as usize);
            assert_eq!(p.pos as u64 % ALIGN, file % ALIGN);
        }
        assert_eq!(find(&l.index, 32, 5000), Some((132, 5132)));
        assert_eq!(find(&l.index, 40, 8), Some((140, 148)));
        assert_eq!(find(&l.index, 32, 5001), None);
        assert_eq!(find(&l.index, 10, 4), None);
    }

    fn plan(layers: usize, layer_bytes: u64, experts: usize) -> Plan {
        let mut off = 0;
        let mut next = |len: u64| {
            let o = off;
            off += len;
            r(o, len)
        };
        let global = vec![next(3 * ALIGN)];
        let mut ls = Vec::new();
        let mut xs = Vec::new();
        for _ in 0..layers {
            ls.push(vec![next(layer_bytes)]);
            xs.push((experts > 0).then(|| {
                let a = next(experts as u64 * ALIGN);
                let b = next(experts as u64 * ALIGN);
                ExpertLayout {
                    stacks: vec![
                        StackRange {
                            off: a.off,
                            slice: ALIGN,
                        },
                        StackRange {
                            off: b.off,
                            slice: ALIGN,
                        },
                    ],
                    n: experts,
                    held: Vec::new(),
                }
            }));
        }
        Plan {
            global,
            layers: ls,
            experts: xs,
            n_expert_used: 2,
        }
    }

    #[test]
    fn split_pins_what_fits_and_streams_the_rest() {
        let p = plan(6, 4 * ALIGN, 0);
        // Everything fits.
        let s = split(&p, 0, 30 * ALIGN, 2).unwrap();
        assert!(s.pinned.iter().all(|&p| p));
        // Global 3 + window 2×4 + 2 pinned×4 = 19 pages.
        let s = split(&p, 0, 19 * ALIGN, 2).unwrap();
        assert_eq!(s.pinned, vec![true, true, false, false, false, false]);
        assert_eq!(s.layer_pool, 8 * ALIGN);
        assert!(matches!(
            split(&p, 0, 10 * ALIGN, 2),
            Err(StoreError::Budget { need, .. }) if need == 11 * ALIGN
        ));
    }

    #[test]
    fn split_gives_experts_the_rest() {
        let p = plan(2, ALIGN, 8);
        assert_eq!(p.total_bytes(), 3 * ALIGN + 2 * ALIGN + 2 * 16 * ALIGN);
        // Global 3 + layers 2 + 6 expert units of (at most) 4 pages.
        let s = split(&p, 0, 40 * ALIGN, 2).unwrap();
        assert_eq!(s.expert_unit, 4 * ALIGN);
        assert_eq!(s.expert_pool, 35 * ALIGN);
        assert!(split(&p, 0, 28 * ALIGN, 2).is_err());
    }
}
