//! The weight store: where a model's weight bytes come from, within a
//! memory budget.
//!
//! Without a budget (or when the file fits in it) the store is the mapped
//! file, zero-copy, as before. Under a budget smaller than the weights it
//! *pages*: a [`Plan`] from the model says which byte ranges belong to
//! which unit, [`plan::split`] divides the budget, and
//!
//! - the global set (embeddings, output head, routers) and as many layers
//!   as fit are read once into owned memory and kept (*pinned*);
//! - the other layers stream through a window of a few slots, the next
//!   layer read while the current one computes ([`WeightStore::layer`]);
//! - routed experts are cached per (layer, expert) in the rest of the
//!   budget, evicted by a decayed use count ([`pool`]), demanded when the
//!   router picks them ([`WeightStore::want_experts`]) and predicted one
//!   layer ahead by the next layer's router on the current hidden state
//!   ([`WeightStore::prefetch_experts`], see [`pregate`]).
//!
//! Reads go to owned page-aligned buffers on a small I/O thread pool
//! ([`io`]: `O_DIRECT` by default), never through the page cache, so the
//! process's memory stays within the budget even under a cgroup limit.
//! The kernels see the same bytes either way, so paged outputs are
//! bit-identical to mapped ones.
//!
//! Compute code asks for bytes through [`WeightBytes`]: the mapped file,
//! the pinned set ([`WeightStore::resident`]), a [`LayerRef`] or an
//! [`ExpertRef`], the last two holding their unit in memory while alive.

mod budget;
mod io;
pub mod plan;
mod plans;
mod pool;
pub mod pregate;
mod stats;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dwarfstar_gguf::{GgufFile, TensorInfo};

pub use budget::{
    default_split, format_size, parse_size, split_from, MemInfo, DEFAULT_SHARE, KV_PART_OF_SHARE,
};
pub use io::IoMode;
pub use plan::{ByteRange, ExpertLayout, Plan, Share, StackRange};
pub(crate) use plans::{deepseek2_plan, deepseek4_plan, dense_plan};
pub use stats::StoreStats;

use io::{Buf, IoPool, Prio, Reader};
use plan::{find, layout, Layout, Placed, Split};
use pool::{Key, Need, Policy, Pool, Slot};

/// What can go wrong holding weights.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("memory budget of {} is too small for this model: paging it needs at least {}", format_size(*budget), format_size(*need))]
    Budget { need: u64, budget: u64 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading weights: {0}")]
    Read(String),
    #[error("{0}")]
    Invalid(String),
}

/// A source of weight bytes: `len` bytes at offset `off` of the file's
/// data section, when this source holds them.
pub trait WeightBytes: Sync {
    fn range(&self, off: u64, len: u64) -> Option<&[u8]>;
}

impl WeightBytes for GgufFile {
    fn range(&self, off: u64, len: u64) -> Option<&[u8]> {
        let (s, e) = (
            usize::try_from(off).ok()?,
            usize::try_from(off.checked_add(len)?).ok()?,
        );
        self.data_section().get(s..e)
    }
}

impl<T: WeightBytes + Send + ?Sized> WeightBytes for Arc<T> {
    fn range(&self, off: u64, len: u64) -> Option<&[u8]> {
        (**self).range(off, len)
    }
}

/// A tensor's bytes from `src` (empty when `src` does not hold them,
/// which the kernels reject as a size mismatch).
pub fn tensor_bytes<'a, S: WeightBytes + ?Sized>(src: &'a S, t: &TensorInfo) -> &'a [u8] {
    src.range(t.offset, t.n_bytes).unwrap_or(&[])
}

/// Settings of a paging store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Bytes of weights the store may hold.
    pub budget: u64,
    pub io_mode: IoMode,
    /// Threads issuing reads (blocking `pread`s; apart from rayon's pool).
    pub io_threads: usize,
    /// Slots of the streamed-layer window (>= 2).
    pub window: usize,
    /// Half-life of expert use counts, in tokens (None: `4·n_expert/k`,
    /// so that an average expert sees about four uses per half-life).
    pub half_life_tokens: Option<f64>,
    /// Read ahead: the next streamed layers and the predicted experts.
    pub prefetch: bool,
    /// Hold only a mesh node's share of the model (None: all of it).
    pub share: Option<Share>,
}

impl StoreConfig {
    pub fn new(budget: u64) -> StoreConfig {
        StoreConfig {
            budget,
            io_mode: IoMode::Direct,
            io_threads: 2,
            window: 2,
            half_life_tokens: None,
            prefetch: true,
            share: None,
        }
    }
}

/// Bytes of a unit in memory and where its ranges are.
pub struct Unit {
    buf: Buf,
    layout: Layout,
}

impl Unit {
    fn range(&self, off: u64, len: u64) -> Option<&[u8]> {
        let (s, e) = find(&self.layout.index, off, len)?;
        self.buf.bytes().get(s..e)
    }
}

/// The pinned units, searched as one.
struct Resident {
    units: Vec<Unit>,
    /// Every unit's ranges, sorted by offset, with the unit's index.
    index: Vec<(Placed, usize)>,
}

impl WeightBytes for Resident {
    fn range(&self, off: u64, len: u64) -> Option<&[u8]> {
        let i = self
            .index
            .partition_point(|p| p.0.off <= off)
            .checked_sub(1)?;
        let (p, u) = self.index[i];
        if off + len > p.off + p.len {
            return None;
        }
        let s = p.pos + (off - p.off) as usize;
        self.units[u].buf.bytes().get(s..s + len as usize)
    }
}

#[derive(Default)]
struct Counters {
    tokens: u64,
    expert_hits: u64,
    expert_prefetch_hits: u64,
    expert_misses: u64,
    layer_hits: u64,
    layer_prefetch_hits: u64,
    layer_misses: u64,
    prefetches: u64,
    prefetches_unused: u64,
    bytes_read: u64,
    reads: u64,
    stall: Duration,
    read_time: Duration,
}

struct State {
    layers: Pool,
    experts: Pool,
    /// Tokens seen (the clock of the use counts).
    clock: f64,
    /// Demanded experts not yet issued (no room then), in order.
    pending: VecDeque<Key>,
    /// Experts marked wanted by the last `want_experts`.
    wanted: Vec<Key>,
    c: Counters,
}

struct Paged {
    path: PathBuf,
    reader: Reader,
    data_offset: u64,
    resident: Resident,
    /// Streamed layers' layouts (None: pinned).
    layers: Vec<Option<Arc<Layout>>>,
    experts: Vec<Option<ExpertLayout>>,
    /// Expert stacks by tensor offset: (layer, stack index).
    stack_of: HashMap<u64, (u32, usize)>,
    k: usize,
    cfg: StoreConfig,
    split: Split,
    load_bytes: u64,
    load_s: f64,
    state: Mutex<State>,
    cv: Condvar,
}

/// Where a model's weights come from (see the module doc).
pub struct WeightStore {
    file: Arc<GgufFile>,
    paged: Option<Arc<Paged>>,
    io: Option<IoPool>,
}

impl std::fmt::Debug for WeightStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightStore")
            .field("paged", &self.paged.is_some())
            .finish()
    }
}

impl WeightStore {
    /// The whole file, mapped (no budget).
    pub fn mapped(file: Arc<GgufFile>) -> WeightStore {
        WeightStore {
            file,
            paged: None,
            io: None,
        }
    }

    /// A store for `plan` within `cfg.budget`: the mapped file when the
    /// weights fit (or the file has no path to read from), else paging.
    pub fn new(
        file: Arc<GgufFile>,
        plan: &Plan,
        cfg: &StoreConfig,
    ) -> Result<WeightStore, StoreError> {
        let shared;
        let plan = match &cfg.share {
            Some(s) => {
                shared = plan.restrict(s);
                &shared
            }
            None => plan,
        };
        if plan.total_bytes() <= cfg.budget {
            return Ok(WeightStore::mapped(file));
        }
        let path = file
            .path()
            .ok_or_else(|| StoreError::Invalid("paging needs a model file on disk".into()))?
            .to_path_buf();
        let data_offset = file.data_offset();
        let split = plan::split(plan, data_offset, cfg.budget, cfg.window)?;
        let io_err = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let reader = Reader::open(&path, cfg.io_mode).map_err(io_err)?;
        let io = IoPool::new(cfg.io_threads).map_err(io_err)?;

        // The pinned units: global first, then pinned layers; read in parallel.
        let mut layouts = vec![layout(&plan.global, data_offset)];
        for (r, &p) in plan.layers.iter().zip(&split.pinned) {
            if p {
                layouts.push(layout(r, data_offset));
            }
        }
        let t0 = Instant::now();
        let reader = Arc::new(reader);
        let (tx, rx) = mpsc::channel();
        for (i, l) in layouts.into_iter().enumerate() {
            let mut buf = Buf::new(l.bytes).map_err(io_err)?;
            let (tx, reader) = (tx.clone(), reader.clone());
            io.submit(
                Prio::Demand,
                Box::new(move || {
                    let r = reader.read(&l.segs, buf.bytes_mut());
                    let _ = tx.send((i, r.map(|n| (n, Unit { buf, layout: l }))));
                }),
            );
        }
        drop(tx);
        let mut units: Vec<Option<Unit>> = Vec::new();
        let mut load_bytes = 0;
        for (i, r) in rx {
            let (n, u) = r.map_err(io_err)?;
            load_bytes += n;
            if units.len() <= i {
                units.resize_with(i + 1, || None);
            }
            units[i] = Some(u);
        }
        let units: Vec<Unit> = units
            .into_iter()
            .collect::<Option<_>>()
            .ok_or_else(|| StoreError::Read("a pinned unit was not read".into()))?;
        let mut index: Vec<(Placed, usize)> = units
            .iter()
            .enumerate()
            .flat_map(|(i, u)| u.layout.index.iter().map(move |p| (*p, i)))
            .collect();
        index.sort_by_key(|p| p.0.off);
        let load_s = t0.elapsed().as_secs_f64();
        let reader = Arc::try_unwrap(reader)
            .map_err(|_| StoreError::Read("a read outlived loading".into()))?;

        let layers = plan
            .layers
            .iter()
            .zip(&split.pinned)
            .map(|(r, &p)| (!p).then(|| Arc::new(layout(r, data_offset))))
            .collect();
        let mut stack_of = HashMap::new();
        let mut n_expert = 0;
        for (il, x) in plan.experts.iter().enumerate() {
            if let Some(x) = x {
                n_expert = n_expert.max(x.n);
                for (si, s) in x.stacks.iter().enumerate() {
                    stack_of.insert(s.off, (il as u32, si));
                }
            }
        }
        let k = plan.n_expert_used.max(1);
        let half_life = cfg
            .half_life_tokens
            .unwrap_or((4 * n_expert.max(1) / k) as f64)
            .max(1.0);
        if file.is_mmapped() {
            io::release_mapping(file.bytes());
        }
        reader.drop_cache();
        let n_layer = plan.layers.len();
        tracing::info!(
            "weights paged within {}: {} pinned ({} of {n_layer} layers), {} layer window, {} of experts; read {} in {load_s:.2}s ({:?})",
            format_size(cfg.budget),
            format_size(split.global_bytes + split.pinned_bytes),
            split.pinned.iter().filter(|&&p| p).count(),
            format_size(split.layer_pool),
            format_size(split.expert_pool),
            format_size(load_bytes),
            reader.mode(),
        );
        let state = State {
            layers: Pool::new(split.layer_pool, Policy::Cyclic { n_layer }),
            experts: Pool::new(split.expert_pool, Policy::Lfu { half_life }),
            clock: 0.0,
            pending: VecDeque::new(),
            wanted: Vec::new(),
            c: Counters::default(),
        };
        let paged = Paged {
            path,
            reader,
            data_offset,
            resident: Resident { units, index },
            layers,
            experts: plan.experts.clone(),
            stack_of,
            k,
            cfg: cfg.clone(),
            split,
            load_bytes,
            load_s,
            state: Mutex::new(state),
            cv: Condvar::new(),
        };
        Ok(WeightStore {
            file,
            paged: Some(Arc::new(paged)),
            io: Some(io),
        })
    }

    pub fn is_paged(&self) -> bool {
        self.paged.is_some()
    }

    /// The bytes that never move: the mapped file, or the pinned set.
    pub fn resident(&self) -> &dyn WeightBytes {
        match &self.paged {
            Some(p) => &p.resident,
            None => &*self.file,
        }
    }

    /// Whether predicting the next layer's experts is worth a router
    /// product: experts are paged and prefetching is on.
    pub fn pregating(&self) -> bool {
        self.paged
            .as_ref()
            .is_some_and(|p| p.cfg.prefetch && p.experts.iter().any(Option::is_some))
    }

    /// Notes a forward pass of `n` tokens (the clock of the use counts).
    pub fn begin_pass(&self, n: usize) {
        if let Some(p) = &self.paged {
            let mut s = p.lock();
            s.clock += n as f64;
            s.c.tokens += n as u64;
        }
    }

    /// Layer `il`'s non-expert bytes, held while the guard lives. A
    /// streamed layer is read now if it is not in (or on its way to) the
    /// window, and the next streamed layers are prefetched.
    pub fn layer(&self, il: usize) -> Result<LayerRef<'_>, StoreError> {
        let base = self.resident();
        let (Some(p), Some(io)) = (&self.paged, &self.io) else {
            return Ok(LayerRef {
                base,
                unit: None,
                held: None,
            });
        };
        let Some(Some(lay)) = p.layers.get(il) else {
            return Ok(LayerRef {
                base,
                unit: None,
                held: None,
            });
        };
        let key = Key::Layer(il as u32);
        let mut s = p.lock();
        s.layers.current = il;
        let mut stalled: Option<Instant> = None;
        let mut counted = false;
        let unit = loop {
            let st = &mut *s;
            match st.layers.entries.get_mut(&key) {
                Some(e) => match &e.slot {
                    Slot::Ready(u) => {
                        let u = u.clone();
                        if !counted {
                            if e.prefetched {
                                st.c.layer_prefetch_hits += 1;
                            } else {
                                st.c.layer_hits += 1;
                            }
                        }
                        e.prefetched = false;
                        e.pins += 1;
                        e.wanted = false;
                        e.spec = false;
                        st.layers.refresh(key);
                        break u;
                    }
                    Slot::Loading => {
                        if !counted {
                            counted = true;
                            st.c.layer_prefetch_hits += 1;
                            e.prefetched = false;
                            e.spec = false;
                            e.wanted = true;
                        }
                        stalled.get_or_insert_with(Instant::now);
                        s = p.wait(s);
                    }
                    Slot::Failed(m) => {
                        let m = m.clone();
                        st.layers.remove(key);
                        return Err(StoreError::Read(m));
                    }
                },
                None => {
                    if !counted {
                        counted = true;
                        st.c.layer_misses += 1;
                    }
                    match st
                        .layers
                        .reserve(lay.bytes as u64, Need::Demand)
                        .map_err(|e| p.io_err(e))?
                    {
                        Some(buf) => {
                            st.layers.insert(key, lay.bytes as u64, false);
                            p.submit(io, key, lay.clone(), buf, Prio::Demand);
                        }
                        None => {
                            stalled.get_or_insert_with(Instant::now);
                            s = p.wait(s);
                        }
                    }
                }
            }
        };
        if let Some(t) = stalled {
            s.c.stall += t.elapsed();
        }
        if p.cfg.prefetch {
            self.prefetch_layers(&mut s, il);
        }
        drop(s);
        Ok(LayerRef {
            base,
            unit: Some(unit),
            held: Some((p, key)),
        })
    }

    /// Starts reading the streamed layers after `il` (cyclically) into the
    /// free window slots.
    fn prefetch_layers(&self, s: &mut State, il: usize) {
        let (Some(p), Some(io)) = (&self.paged, &self.io) else {
            return;
        };
        let n = p.layers.len();
        let mut j = il;
        let mut ahead = 0;
        for _ in 1..n {
            if ahead + 1 >= p.cfg.window.max(2) {
                break;
            }
            j = (j + 1) % n;
            let Some(Some(lay)) = p.layers.get(j) else {
                continue;
            };
            if j == il {
                break;
            }
            ahead += 1;
            let key = Key::Layer(j as u32);
            if s.layers.entries.contains_key(&key) {
                continue;
            }
            let need = Need::Prefetch(s.layers.score(key));
            match s.layers.reserve(lay.bytes as u64, need) {
                Ok(Some(buf)) => {
                    s.layers.insert(key, lay.bytes as u64, true);
                    s.c.prefetches += 1;
                    p.submit(io, key, lay.clone(), buf, Prio::Prefetch);
                }
                _ => break,
            }
        }
    }

    /// The computing layer `il` will run `experts` (id, tokens routed to
    /// it): counts the uses, issues reads for those not held, in order,
    /// as far as the cache has room, and returns the order to run them
    /// in — held ones first, then as their reads were issued.
    pub fn want_experts(&self, il: usize, experts: &[(usize, usize)]) -> Vec<usize> {
        let ids = || experts.iter().map(|e| e.0).collect();
        let (Some(p), Some(io)) = (&self.paged, &self.io) else {
            return ids();
        };
        let Some(Some(x)) = p.experts.get(il) else {
            return ids();
        };
        let mut s = p.lock();
        let st = &mut *s;
        // Last layer's leftovers are no longer wanted, this layer's
        // predictions are settled.
        for k in std::mem::take(&mut st.wanted) {
            if let Some(e) = st.experts.entries.get_mut(&k) {
                e.wanted = false;
                st.experts.refresh(k);
            }
        }
        st.pending.clear();
        for e in 0..x.n {
            let k = Key::Expert(il as u32, e as u32);
            if let Some(en) = st.experts.entries.get_mut(&k) {
                if en.spec {
                    en.spec = false;
                    st.experts.refresh(k);
                }
            }
        }
        let now = st.clock;
        let (mut held, mut loading, mut later) = (Vec::new(), Vec::new(), Vec::new());
        for &(e, uses) in experts {
            let k = Key::Expert(il as u32, e as u32);
            st.experts.touch(k, now, uses as f64);
            st.wanted.push(k);
            match st.experts.entries.get_mut(&k) {
                Some(en) => {
                    en.wanted = true;
                    match en.slot {
                        Slot::Ready(_) if !en.prefetched => {
                            st.c.expert_hits += 1;
                            held.push(e);
                        }
                        Slot::Ready(_) => {
                            st.c.expert_prefetch_hits += 1;
                            held.push(e);
                        }
                        _ => {
                            st.c.expert_prefetch_hits += 1;
                            loading.push(e);
                        }
                    }
                    en.prefetched = false;
                    st.experts.refresh(k);
                }
                None => {
                    st.c.expert_misses += 1;
                    later.push(e);
                    st.pending.push_back(k);
                }
            }
        }
        p.pump(st, io);
        held.extend(loading);
        held.extend(later);
        held
    }

    /// Starts reading experts predicted for layer `il`, best first, where
    /// the cache has room for them without evicting hotter experts.
    pub fn prefetch_experts(&self, il: usize, experts: &[usize]) {
        let (Some(p), Some(io)) = (&self.paged, &self.io) else {
            return;
        };
        let Some(Some(x)) = p.experts.get(il) else {
            return;
        };
        if !p.cfg.prefetch {
            return;
        }
        let bytes = x.unit_bytes();
        let mut s = p.lock();
        let now = s.clock;
        for &e in experts.iter().take(2 * p.k) {
            if e >= x.n {
                continue;
            }
            let key = Key::Expert(il as u32, e as u32);
            if s.experts.entries.contains_key(&key) {
                continue;
            }
            // A prediction is worth one use now.
            let score = s.experts.score_if_used(key, now, 1.0);
            if let Ok(Some(buf)) = s.experts.reserve(bytes, Need::Prefetch(score)) {
                s.experts.insert(key, bytes, true);
                s.c.prefetches += 1;
                let lay = Arc::new(layout(&x.ranges(e), p.data_offset));
                p.submit(io, key, lay, buf, Prio::Prefetch);
            }
        }
    }

    /// Expert `e`'s bytes for the stack tensor `stack`, held while the
    /// guard lives (read now if needed).
    pub fn expert(&self, stack: &TensorInfo, e: usize) -> Result<ExpertRef<'_>, StoreError> {
        let (Some(p), Some(io)) = (&self.paged, &self.io) else {
            return Ok(ExpertRef {
                base: &*self.file,
                unit: None,
                held: None,
            });
        };
        let Some(&(il, si)) = p.stack_of.get(&stack.offset) else {
            // Not a paged expert stack: it is resident.
            return Ok(ExpertRef {
                base: &p.resident,
                unit: None,
                held: None,
            });
        };
        let x = p.experts[il as usize]
            .as_ref()
            .ok_or_else(|| StoreError::Invalid(format!("layer {il} has no experts")))?;
        if e >= x.n {
            return Err(StoreError::Invalid(format!("expert {e} of {}", x.n)));
        }
        let last = si + 1 == x.stacks.len();
        let key = Key::Expert(il, e as u32);
        let mut s = p.lock();
        p.pump(&mut s, io);
        let mut stalled: Option<Instant> = None;
        let unit = loop {
            let st = &mut *s;
            match st.experts.entries.get_mut(&key) {
                Some(en) => match &en.slot {
                    Slot::Ready(u) => {
                        let u = u.clone();
                        en.pins += 1;
                        if last {
                            en.wanted = false;
                        }
                        st.experts.refresh(key);
                        break u;
                    }
                    Slot::Loading => {
                        stalled.get_or_insert_with(Instant::now);
                        s = p.wait(s);
                    }
                    Slot::Failed(m) => {
                        let m = m.clone();
                        st.experts.remove(key);
                        return Err(StoreError::Read(m));
                    }
                },
                None => {
                    // Not demanded through `want_experts` (or evicted since).
                    if si == 0 && !st.wanted.contains(&key) {
                        st.c.expert_misses += 1;
                        let now = st.clock;
                        st.experts.touch(key, now, 1.0);
                    }
                    let lay = layout(&x.ranges(e), p.data_offset);
                    let bytes = x.unit_bytes();
                    match st
                        .experts
                        .reserve(bytes, Need::Demand)
                        .map_err(|e| p.io_err(e))?
                    {
                        Some(buf) => {
                            st.experts.insert(key, bytes, false);
                            st.pending.retain(|k| *k != key);
                            p.submit(io, key, Arc::new(lay), buf, Prio::Demand);
                        }
                        None => {
                            stalled.get_or_insert_with(Instant::now);
                            s = p.wait(s);
                        }
                    }
                }
            }
        };
        if let Some(t) = stalled {
            s.c.stall += t.elapsed();
        }
        drop(s);
        Ok(ExpertRef {
            base: &p.resident,
            unit: Some(unit),
            held: Some((p, key)),
        })
    }

    /// A snapshot of what the store did and holds.
    pub fn stats(&self) -> StoreStats {
        let Some(p) = &self.paged else {
            let size = self.file.data_section().len() as u64;
            return StoreStats {
                io_mode: "mapped".into(),
                budget_bytes: size,
                resident_bytes: size,
                pinned_bytes: size,
                ..Default::default()
            };
        };
        let s = p.lock();
        let pinned = p.split.global_bytes + p.split.pinned_bytes;
        StoreStats {
            paged: true,
            io_mode: match p.reader.mode() {
                IoMode::Direct => "direct",
                IoMode::Buffered => "buffered",
            }
            .into(),
            budget_bytes: p.cfg.budget,
            resident_bytes: pinned + s.layers.used + s.experts.used,
            pinned_bytes: pinned,
            expert_cache_bytes: p.split.expert_pool,
            layer_window_bytes: p.split.layer_pool,
            streamed_layers: p.layers.iter().filter(|l| l.is_some()).count(),
            tokens: s.c.tokens,
            expert_hits: s.c.expert_hits,
            expert_prefetch_hits: s.c.expert_prefetch_hits,
            expert_misses: s.c.expert_misses,
            layer_hits: s.c.layer_hits,
            layer_prefetch_hits: s.c.layer_prefetch_hits,
            layer_misses: s.c.layer_misses,
            prefetches: s.c.prefetches,
            prefetches_unused: s.c.prefetches_unused,
            evictions: s.layers.evictions + s.experts.evictions,
            bytes_read: s.c.bytes_read,
            reads: s.c.reads,
            io_stall_s: s.c.stall.as_secs_f64(),
            io_read_s: s.c.read_time.as_secs_f64(),
            load_bytes: p.load_bytes,
            load_s: p.load_s,
        }
    }
}

impl Paged {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, g: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.cv.wait(g).unwrap_or_else(|e| e.into_inner())
    }

    fn io_err(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn pool(s: &mut State, key: Key) -> &mut Pool {
        match key {
            Key::Layer(_) => &mut s.layers,
            Key::Expert(..) => &mut s.experts,
        }
    }

    /// Queues the read of `key` into `buf`.
    fn submit(self: &Arc<Self>, io: &IoPool, key: Key, lay: Arc<Layout>, mut buf: Buf, prio: Prio) {
        let p = self.clone();
        io.submit(
            prio,
            Box::new(move || {
                // A prediction whose layer went by unused is not read.
                {
                    let mut s = p.lock();
                    let pool = Paged::pool(&mut s, key);
                    let stale = pool
                        .entries
                        .get(&key)
                        .is_none_or(|e| e.prefetched && !e.spec && !e.wanted);
                    if stale {
                        pool.remove(key);
                        s.c.prefetches_unused += 1;
                        p.cv.notify_all();
                        return;
                    }
                }
                let t = Instant::now();
                let r = p.reader.read(&lay.segs, buf.bytes_mut());
                let dt = t.elapsed();
                let mut s = p.lock();
                s.c.read_time += dt;
                let slot = match r {
                    Ok(n) => {
                        s.c.bytes_read += n;
                        s.c.reads += 1;
                        Slot::Ready(Arc::new(Unit {
                            buf,
                            layout: Arc::unwrap_or_clone(lay),
                        }))
                    }
                    Err(e) => Slot::Failed(format!("{}: {e}", p.path.display())),
                };
                let pool = Paged::pool(&mut s, key);
                if let Some(e) = pool.entries.get_mut(&key) {
                    e.slot = slot;
                    pool.refresh(key);
                }
                p.cv.notify_all();
            }),
        );
    }

    /// Issues demanded reads that found no room before.
    fn pump(self: &Arc<Self>, s: &mut State, io: &IoPool) {
        while let Some(&key) = s.pending.front() {
            if s.experts.entries.contains_key(&key) {
                s.pending.pop_front();
                continue;
            }
            let Key::Expert(il, e) = key else {
                s.pending.pop_front();
                continue;
            };
            let Some(Some(x)) = self.experts.get(il as usize) else {
                s.pending.pop_front();
                continue;
            };
            let lay = layout(&x.ranges(e as usize), self.data_offset);
            match s.experts.reserve(x.unit_bytes(), Need::Demand) {
                Ok(Some(buf)) => {
                    s.experts.insert(key, x.unit_bytes(), false);
                    s.pending.pop_front();
                    self.submit(io, key, Arc::new(lay), buf, Prio::Demand);
                }
                _ => break,
            }
        }
    }

    /// A guard let go of `key`.
    fn release(&self, key: Key) {
        let mut s = self.lock();
        let pool = Paged::pool(&mut s, key);
        if let Some(e) = pool.entries.get_mut(&key) {
            e.pins = e.pins.saturating_sub(1);
            pool.refresh(key);
        }
        self.cv.notify_all();
    }
}

/// A layer's bytes (its unit when streamed, else the resident set), held
/// while alive.
pub struct LayerRef<'a> {
    base: &'a dyn WeightBytes,
    unit: Option<Arc<Unit>>,
    held: Option<(&'a Arc<Paged>, Key)>,
}

impl WeightBytes for LayerRef<'_> {
    fn range(&self, off: u64, len: u64) -> Option<&[u8]> {
        self.unit
            .as_ref()
            .and_then(|u| u.range(off, len))
            .or_else(|| self.base.range(off, len))
    }
}

impl Drop for LayerRef<'_> {
    fn drop(&mut self) {
        self.unit = None;
        if let Some((p, key)) = self.held.take() {
            p.release(key);
        }
    }
}

/// An expert's bytes, held while alive.
pub struct ExpertRef<'a> {
    base: &'a dyn WeightBytes,
    unit: Option<Arc<Unit>>,
    held: Option<(&'a Arc<Paged>, Key)>,
}

impl WeightBytes for ExpertRef<'_> {
    fn range(&self, off: u64, len: u64) -> Option<&[u8]> {
        self.unit
            .as_ref()
            .and_then(|u| u.range(off, len))
            .or_else(|| self.base.range(off, len))
    }
}

impl Drop for ExpertRef<'_> {
    fn drop(&mut self) {
        self.unit = None;
        if let Some((p, key)) = self.held.take() {
            // Reads still pending are issued by the next `expert` call.
            p.release(key);
        }
    }
}

#[cfg(test)]
mod tests;
