//! Shard distribution: a node that lacks a plan's model file fetches, from a peer holding it,
//! only the pieces of the file its share of the plan reads, and pages them from local disk.
//!
//! - [`ShardHost`]: what this node serves to others (the full model files it holds), with their
//!   manifests computed once per file;
//! - [`pieces`]: how a GGUF file is cut into pieces (header, tensors, routed experts' slices of
//!   stacked expert tensors, chunks of at most 64 MiB);
//! - [`needed`]: which pieces a node's share of a plan reads;
//! - [`fetch_share`]: fetching the missing ones into `<models_dir>/.shards/<name>`, a sparse file
//!   with the original's layout (so `Model::open` maps it unchanged; the holes are layers this
//!   node never runs), each piece checked against the manifest's BLAKE3 before it is written,
//!   with `<name>.ranges.json` beside it recording which pieces are present;
//! - [`route`]: the data-plane entry point that sends shard requests here and everything else
//!   to the pipeline's transport.
//!
//! A partial file lives under `.shards/`, never among the models the node holds.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::IsTerminal;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use dwarfstar_gguf::GgufFile;
use dwarfstar_mesh::shard::{self, ShardError, ShardSource, HEADER_PIECE, MAX_RANGE_LEN};
use dwarfstar_mesh::{FrameStream, MeshHandle, PeerId};
use dwarfstar_planner::Plan;
use dwarfstar_proto::v1 as pb;
use dwarfstar_proto::Message;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

use super::error::{NodeError, Result};
use super::plan_wire;
use super::transport::{serve_frame, Roles};

/// Folder (inside the models folder) of partial model files.
pub const SHARDS_DIR: &str = ".shards";
/// Range requests in flight at once.
const IN_FLIGHT: usize = 4;

/// The longest a holder may take over one range (at most [`MAX_RANGE_LEN`]
/// bytes, [`IN_FLIGHT`] at once: about 2 MB/s at the least), or over a
/// manifest; past it the next holder is asked.
const RANGE_WITHIN: Duration = Duration::from_secs(120);
const MANIFEST_WITHIN: Duration = Duration::from_secs(30);

/// `call` to `peer`, failed as unanswered after `within`.
async fn within<T>(
    peer: PeerId,
    within: Duration,
    call: impl std::future::Future<Output = std::result::Result<T, ShardError>>,
) -> std::result::Result<T, ShardError> {
    match tokio::time::timeout(within, call).await {
        Ok(r) => r,
        Err(_) => Err(ShardError::Mesh(dwarfstar_mesh::MeshError::Request {
            peer,
            reason: format!("no answer within {within:?}"),
        })),
    }
}

/// Largest gap between two pieces fetched in one request (alignment padding).
const MAX_GAP: u64 = 4096;

/// Answers one incoming data-plane stream: shard requests and link probes
/// here, the rest to the pipeline.
pub async fn route(mut s: FrameStream, roles: Arc<RwLock<Arc<Roles>>>, host: Arc<ShardHost>) {
    let frame = match s.recv.recv_frame().await {
        Ok(Some(f)) => f,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!("peer {} sent a bad frame: {e}", s.peer);
            return;
        }
    };
    if shard::is_request(&frame.header) {
        shard::serve(s, frame, host).await;
    } else if dwarfstar_mesh::probe::is_probe(&frame.header) {
        dwarfstar_mesh::probe::answer(s, frame).await;
    } else {
        serve_frame(s, frame, roles).await;
    }
}

/// A manifest with the file length and modification time it was computed for.
type Cached = (u64, Option<SystemTime>, Arc<pb::ShardManifest>);

/// The full model files this node serves to others, with cached manifests.
pub struct ShardHost {
    dir: PathBuf,
    offered: RwLock<HashMap<String, PathBuf>>,
    manifests: Mutex<HashMap<String, Cached>>,
}

impl ShardHost {
    /// Serves the model files directly in `dir` (not the partial ones under `.shards/`).
    pub fn new(dir: PathBuf) -> Arc<ShardHost> {
        Arc::new(ShardHost {
            dir,
            offered: RwLock::default(),
            manifests: Mutex::default(),
        })
    }

    /// Also serves `path` (a model loaded from elsewhere) under its file name.
    pub fn offer(&self, path: &Path) {
        if let Some(n) = path.file_name() {
            self.offered
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(n.to_string_lossy().into_owned(), path.to_path_buf());
        }
    }

    fn path(&self, model: &str) -> Option<PathBuf> {
        // A plain file name only: no folders, no hidden files (partials live in .shards/).
        if model.is_empty()
            || model.starts_with('.')
            || Path::new(model).file_name() != Some(std::ffi::OsStr::new(model))
        {
            return None;
        }
        let offered = self.offered.read().unwrap_or_else(|e| e.into_inner());
        let p = offered
            .get(model)
            .cloned()
            .unwrap_or_else(|| self.dir.join(model));
        p.is_file().then_some(p)
    }
}

impl ShardSource for ShardHost {
    fn manifest(&self, model: &str) -> std::result::Result<pb::ShardManifest, ShardError> {
        let path = self.path(model).ok_or_else(|| ShardError::NotHeld {
            model: model.to_string(),
        })?;
        let meta = std::fs::metadata(&path)?;
        let stamp = (meta.len(), meta.modified().ok());
        let cached = self.manifests.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((len, modified, m)) = cached.get(model) {
            if (*len, *modified) == stamp {
                return Ok((**m).clone());
            }
        }
        drop(cached);
        let t0 = Instant::now();
        let file = GgufFile::open(&path).map_err(|e| ShardError::Io(std::io::Error::other(e)))?;
        let man = pb::ShardManifest {
            model: model.to_string(),
            size: meta.len(),
            pieces: shard::hash_pieces(&path, &pieces(&file))?,
            error: String::new(),
        };
        tracing::info!(
            "manifest of {model}: {} pieces hashed in {:.2} s",
            man.pieces.len(),
            t0.elapsed().as_secs_f64()
        );
        self.manifests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(model.to_string(), (stamp.0, stamp.1, Arc::new(man.clone())));
        Ok(man)
    }

    fn file(&self, model: &str) -> Option<(PathBuf, u64)> {
        let p = self.path(model)?;
        let len = std::fs::metadata(&p).ok()?.len();
        Some((p, len))
    }
}

/// Pushes `name`'s bytes `offset..offset+len` as pieces of at most [`MAX_RANGE_LEN`].
fn push_chunks(out: &mut Vec<(String, u64, u64)>, name: String, offset: u64, len: u64) {
    if len <= MAX_RANGE_LEN {
        out.push((name, offset, len));
        return;
    }
    for (k, at) in (0..len).step_by(MAX_RANGE_LEN as usize).enumerate() {
        let n = (len - at).min(MAX_RANGE_LEN);
        out.push((format!("{name}#c{k}"), offset + at, n));
    }
}

/// The pieces of a GGUF file, in file order: the header, then each tensor (a stacked expert
/// tensor one piece per expert), large ones in chunks of at most 64 MiB.
pub fn pieces(file: &GgufFile) -> Vec<(String, u64, u64)> {
    let mut out = vec![(HEADER_PIECE.to_string(), 0, file.data_offset())];
    let mut tensors: Vec<_> = file.tensors().iter().filter(|t| t.n_bytes > 0).collect();
    tensors.sort_by_key(|t| t.offset);
    for t in tensors {
        let at = file.tensor_file_offset(t);
        let experts = match t.dims.as_slice() {
            [_, _, n] if *n > 1 && t.name.contains("_exps") && t.n_bytes % n == 0 => *n,
            _ => 1,
        };
        if experts == 1 {
            push_chunks(&mut out, t.name.clone(), at, t.n_bytes);
            continue;
        }
        let each = t.n_bytes / experts;
        for e in 0..experts {
            push_chunks(&mut out, format!("{}#e{e}", t.name), at + e * each, each);
        }
    }
    out
}

/// The tensor and routed expert a piece name stands for.
fn piece_tensor(name: &str) -> (&str, Option<u32>) {
    let Some((tensor, rest)) = name.split_once('#') else {
        return (name, None);
    };
    let expert = rest
        .strip_prefix('e')
        .and_then(|r| r.split('#').next())
        .and_then(|r| r.parse().ok());
    (tensor, expert)
}

fn layer_of(tensor: &str) -> Option<u32> {
    tensor.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// What a node runs under a plan.
#[derive(Debug, Default)]
struct Share {
    layers: Vec<Range<u32>>,
    embed: bool,
    output: bool,
    /// (layer, expert) this node holds for others.
    mine: HashSet<(u32, u32)>,
    /// (layer, expert) other nodes hold.
    others: HashSet<(u32, u32)>,
}

fn share(plan: &Plan, me: &str) -> Share {
    let mut s = Share::default();
    for st in plan.stages.iter().filter(|st| st.node == me) {
        s.layers.push(st.layers.clone());
        s.embed |= st.holds_embed;
        s.output |= st.holds_output;
    }
    for x in &plan.experts {
        let set = if x.node == me {
            &mut s.mine
        } else {
            &mut s.others
        };
        set.extend(x.experts.iter().map(|&e| (x.layer, e)));
    }
    s
}

/// Indices of the pieces `me`'s share of `plan` reads: the header, every 1-D tensor (binding a
/// model reads them all), its layers' tensors (without the routed experts others hold), the
/// experts it holds for others, the embedding or output head when its stage has them, and any
/// other tensor outside the blocks.
pub fn needed(file: &GgufFile, pieces: &[pb::ShardPiece], plan: &Plan, me: &str) -> Vec<usize> {
    let s = share(plan, me);
    let tied = file.tensor("output.weight").is_none();
    let keep = |name: &str| -> bool {
        if name == HEADER_PIECE {
            return true;
        }
        let (tensor, expert) = piece_tensor(name);
        if file.tensor(tensor).is_none_or(|t| t.dims.len() == 1) {
            return true;
        }
        match layer_of(tensor) {
            Some(l) => {
                let runs = s.layers.iter().any(|r| r.contains(&l));
                match expert {
                    Some(e) => (runs && !s.others.contains(&(l, e))) || s.mine.contains(&(l, e)),
                    None => runs,
                }
            }
            None if tensor.starts_with("token_embd.") => s.embed || (s.output && tied),
            None if tensor.starts_with("output.") => s.output,
            None => true,
        }
    };
    (0..pieces.len())
        .filter(|&i| keep(&pieces[i].name))
        .collect()
}

/// The sidecar of a partial file: which pieces of which manifest are present.
#[derive(Serialize, Deserialize, Default, Debug)]
struct Held {
    model: String,
    size: u64,
    /// BLAKE3 of the encoded manifest the pieces were checked against.
    manifest: String,
    have: BTreeSet<usize>,
    /// Bytes of the pieces present.
    #[serde(default)]
    bytes: u64,
}

/// Where a node keeps the partial file of `name` and its sidecar.
pub fn partial_paths(models_dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let dir = models_dir.join(SHARDS_DIR);
    (dir.join(name), dir.join(format!("{name}.ranges.json")))
}

fn save_held(path: &Path, held: &Held) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec(held).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, path)
}

/// One range request: pieces next to each other in the file.
struct Request {
    offset: u64,
    len: u64,
    pieces: Vec<usize>,
}

fn requests(pieces: &[pb::ShardPiece], missing: &[usize]) -> Vec<Request> {
    let mut out: Vec<Request> = Vec::new();
    for &i in missing {
        let p = &pieces[i];
        if let Some(r) = out.last_mut() {
            let end = r.offset + r.len;
            if p.offset >= end
                && p.offset - end <= MAX_GAP
                && p.offset + p.len - r.offset <= MAX_RANGE_LEN
            {
                r.len = p.offset + p.len - r.offset;
                r.pieces.push(i);
                continue;
            }
        }
        out.push(Request {
            offset: p.offset,
            len: p.len,
            pieces: vec![i],
        });
    }
    out
}

/// Bytes done, shown as tracing lines (and a bar on a terminal).
struct Progress {
    name: String,
    total: u64,
    done: AtomicU64,
    t0: Instant,
    last: Mutex<Instant>,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(name: &str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_message(format!("fetching {name}"));
            b
        });
        Progress {
            name: name.to_string(),
            total,
            done: AtomicU64::new(0),
            t0: Instant::now(),
            last: Mutex::new(Instant::now()),
            bar,
        }
    }

    fn add(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(b) = &self.bar {
            b.set_position(done);
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed().as_secs_f64() >= 1.0 || done == self.total {
            *last = Instant::now();
            let s = self.t0.elapsed().as_secs_f64().max(1e-6);
            tracing::info!(
                "fetching {}: {:.1} of {:.1} MiB ({:.0}%) at {:.1} MiB/s",
                self.name,
                done as f64 / 1048576.0,
                self.total as f64 / 1048576.0,
                100.0 * done as f64 / self.total.max(1) as f64,
                done as f64 / 1048576.0 / s
            );
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Fetches one request's bytes from the first holder that serves them intact, checking each
/// piece against the manifest.
async fn fetch_request(
    mesh: &MeshHandle,
    holders: &[PeerId],
    model: &str,
    pieces: &[pb::ShardPiece],
    r: &Request,
) -> std::result::Result<bytes::Bytes, ShardError> {
    let mut last = None;
    for &peer in holders {
        let call = shard::fetch_range(mesh, peer, model, r.offset, r.len);
        let got = within(peer, RANGE_WITHIN, call).await.and_then(|data| {
            for &i in &r.pieces {
                let p = &pieces[i];
                let at = (p.offset - r.offset) as usize;
                shard::verify(p, &data[at..at + p.len as usize])?;
            }
            Ok(data)
        });
        match got {
            Ok(d) => return Ok(d),
            Err(e) => {
                tracing::warn!("range {}+{} of {model} from {peer}: {e}", r.offset, r.len);
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or(ShardError::NotHeld {
        model: model.to_string(),
    }))
}

/// The manifest of `model` from the first holder that has it.
async fn manifest(
    mesh: &MeshHandle,
    holders: &[PeerId],
    info: &pb::ModelInfo,
) -> Result<pb::ShardManifest> {
    let mut errors = Vec::new();
    for &peer in holders {
        let call = shard::fetch_manifest(mesh, peer, &info.name);
        match within(peer, MANIFEST_WITHIN, call).await {
            Ok(m) if m.size == info.size => return Ok(m),
            Ok(m) => errors.push(format!("{peer} has {} bytes, not {}", m.size, info.size)),
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(NodeError::NotReady(format!(
        "no peer serves model {}: {}",
        info.name,
        errors.join("; ")
    )))
}

/// What [`fetch_share`] did.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub path: PathBuf,
    /// Bytes fetched now.
    pub bytes: u64,
    /// Bytes of the pieces the share reads (fetched now or before).
    pub share_bytes: u64,
    pub seconds: f64,
}

/// Fetches the pieces of the proposal's model that `me`'s share reads and are not here yet
/// into the partial file under `<models_dir>/.shards/`; returns its path. Holders are the
/// proposer and the members announcing the model; the manifest whose hashes every piece
/// must match is the proposer's (the coordinator's) only.
pub fn fetch_share(
    mesh: &MeshHandle,
    rt: &Handle,
    models_dir: &Path,
    me: &str,
    p: &pb::PlanProposal,
) -> Result<Fetched> {
    let bad = |m: String| NodeError::BadRequest(m);
    let info = p
        .model
        .as_ref()
        .ok_or_else(|| bad("proposal without a model".into()))?;
    let wire = p
        .plan
        .as_ref()
        .ok_or_else(|| bad("proposal without a plan".into()))?;
    if info.name.starts_with('.')
        || Path::new(&info.name).file_name() != Some(std::ffi::OsStr::new(&info.name))
    {
        return Err(bad(format!("model name '{}'", info.name)));
    }
    let plan = plan_wire::from_proto(wire, wire.n_layer)?;
    let proposer: PeerId = p
        .proposer
        .parse()
        .map_err(|_| bad(format!("proposer '{}' is not a peer id", p.proposer)))?;
    let mut holders = vec![proposer];
    for c in &p.members {
        let has = c.models.iter().any(|m| {
            m.name == info.name
                && m.size == info.size
                && (info.blake3.is_empty() || m.blake3 == info.blake3)
        });
        if let (true, Ok(id)) = (has, c.id.parse::<PeerId>()) {
            if !holders.contains(&id) && c.id != me {
                holders.push(id);
            }
        }
    }
    let io = |what: &str, e: &dyn std::fmt::Display| {
        NodeError::NotReady(format!("partial model {what}: {e}"))
    };
    let (path, side) = partial_paths(models_dir, &info.name);
    std::fs::create_dir_all(models_dir.join(SHARDS_DIR)).map_err(|e| io("folder", &e))?;
    let t0 = Instant::now();
    // The manifest comes from the coordinator alone: the pieces, from any
    // holder, are checked against the hashes it vouches for.
    let man = rt.block_on(manifest(mesh, &[proposer], info))?;
    let man_hash = shard::hash_hex(&man.encode_to_vec());
    let mut held: Held = std::fs::read(&side)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let fresh = held.model != info.name || held.size != man.size || held.manifest != man_hash;
    held.have.retain(|&i| i < man.pieces.len());
    if fresh {
        held = Held {
            model: info.name.clone(),
            size: man.size,
            manifest: man_hash,
            ..Default::default()
        };
    }
    let stale = !matches!(std::fs::metadata(&path), Ok(m) if m.len() == man.size);
    if fresh || stale {
        // A new file rather than a truncated one: a model of an earlier
        // plan may still map the old one.
        held.have.clear();
        held.bytes = 0;
        let _ = std::fs::remove_file(&path);
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io("file", &e))?;
    if fresh || stale {
        file.set_len(man.size).map_err(|e| io("file", &e))?;
    }
    let write = |data: &[u8], at: u64| {
        std::os::unix::fs::FileExt::write_all_at(&file, data, at).map_err(|e| io("write", &e))
    };
    let fetched = AtomicU64::new(0);
    // The header first: it says what the other pieces are.
    if !held.have.contains(&0) {
        let r = Request {
            offset: 0,
            len: man.pieces[0].len,
            pieces: vec![0],
        };
        let data = rt
            .block_on(fetch_request(mesh, &holders, &info.name, &man.pieces, &r))
            .map_err(|e| NodeError::NotReady(format!("fetching {}: {e}", info.name)))?;
        write(&data, 0)?;
        fetched.fetch_add(data.len() as u64, Ordering::Relaxed);
        held.have.insert(0);
        held.bytes = held.have.iter().map(|&i| man.pieces[i].len).sum();
    }
    let gguf = GgufFile::open(&path).map_err(|e| io("header", &e))?;
    let ours = pieces(&gguf);
    let same = ours.len() == man.pieces.len()
        && ours
            .iter()
            .zip(&man.pieces)
            .all(|((n, o, l), p)| *n == p.name && *o == p.offset && *l == p.len);
    if !same {
        return Err(NodeError::NotReady(format!(
            "the manifest of {} does not match its header",
            info.name
        )));
    }
    let need = needed(&gguf, &man.pieces, &plan, me);
    drop(gguf);
    let share_bytes: u64 = need.iter().map(|&i| man.pieces[i].len).sum();
    let missing: Vec<usize> = need
        .iter()
        .copied()
        .filter(|i| !held.have.contains(i))
        .collect();
    let reqs = requests(&man.pieces, &missing);
    let total: u64 = reqs.iter().map(|r| r.len).sum();
    let progress = Progress::new(&info.name, total);
    let held = Mutex::new(held);
    let mut last_save = Instant::now();
    let (hs, ps, name) = (&holders, &man.pieces, info.name.as_str());
    let result: Result<()> = rt.block_on(async {
        let mut results = futures_util::stream::iter(reqs.iter())
            .map(|r| async move {
                let d = fetch_request(mesh, hs, name, ps, r).await;
                (r, d)
            })
            .buffer_unordered(IN_FLIGHT);
        while let Some((r, data)) = results.next().await {
            let data =
                data.map_err(|e| NodeError::NotReady(format!("fetching {}: {e}", info.name)))?;
            write(&data, r.offset)?;
            fetched.fetch_add(data.len() as u64, Ordering::Relaxed);
            progress.add(data.len() as u64);
            let mut h = held.lock().unwrap_or_else(|e| e.into_inner());
            h.have.extend(&r.pieces);
            h.bytes += r.pieces.iter().map(|&i| man.pieces[i].len).sum::<u64>();
            if last_save.elapsed().as_secs() >= 2 {
                last_save = Instant::now();
                file.sync_data().map_err(|e| io("sync", &e))?;
                save_held(&side, &h).map_err(|e| io("ranges", &e))?;
            }
        }
        Ok(())
    });
    progress.finish();
    // Record what arrived, even when something failed, so a retry fetches only the rest.
    file.sync_data().map_err(|e| io("sync", &e))?;
    let held = held.into_inner().unwrap_or_else(|e| e.into_inner());
    save_held(&side, &held).map_err(|e| io("ranges", &e))?;
    result?;
    Ok(Fetched {
        path,
        bytes: fetched.load(Ordering::Relaxed),
        share_bytes,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dwarfstar_planner::{ActDType, ExpertShard, Stage};

    #[test]
    fn piece_names_parse() {
        assert_eq!(
            piece_tensor("blk.3.attn_q.weight"),
            ("blk.3.attn_q.weight", None)
        );
        assert_eq!(
            piece_tensor("blk.3.ffn_up_exps.weight#e17"),
            ("blk.3.ffn_up_exps.weight", Some(17))
        );
        assert_eq!(
            piece_tensor("blk.3.ffn_up_exps.weight#e2#c1"),
            ("blk.3.ffn_up_exps.weight", Some(2))
        );
        assert_eq!(
            piece_tensor("token_embd.weight#c1"),
            ("token_embd.weight", None)
        );
        assert_eq!(layer_of("blk.12.ffn_down.weight"), Some(12));
        assert_eq!(layer_of("output.weight"), None);
    }

    #[test]
    fn requests_join_neighbours_within_the_limit() {
        let p = |offset, len| pb::ShardPiece {
            offset,
            len,
            ..Default::default()
        };
        let pieces = vec![
            p(0, 100),
            p(128, 100),
            p(10_000, 50),
            p(10_050, MAX_RANGE_LEN - 10),
        ];
        let r = requests(&pieces, &[0, 1, 2, 3]);
        assert_eq!(r.len(), 3);
        assert_eq!(
            (r[0].offset, r[0].len, r[0].pieces.clone()),
            (0, 228, vec![0, 1])
        );
        assert_eq!(r[1].pieces, vec![2]);
        assert_eq!(r[2].pieces, vec![3]);
    }

    #[test]
    fn a_share_reads_its_layers_and_experts() {
        let plan = Plan {
            version: 1,
            model: "m".into(),
            coordinator: "a".into(),
            stages: vec![
                Stage {
                    node: "a".into(),
                    layers: 0..2,
                    holds_embed: true,
                    holds_output: false,
                },
                Stage {
                    node: "b".into(),
                    layers: 2..4,
                    holds_embed: false,
                    holds_output: true,
                },
            ],
            experts: vec![
                ExpertShard {
                    node: "a".into(),
                    layer: 3,
                    experts: vec![0],
                },
                ExpertShard {
                    node: "b".into(),
                    layer: 3,
                    experts: vec![1],
                },
            ],
            activation_dtype: ActDType::F32,
            predicted_tokens_per_s: 0.0,
            predicted_paging: Vec::new(),
            output_node: "b".into(),
        };
        let s = share(&plan, "b");
        assert_eq!(s.layers, vec![2..4]);
        assert!(s.output && !s.embed);
        assert!(s.mine.contains(&(3, 1)) && s.others.contains(&(3, 0)));
    }
}
