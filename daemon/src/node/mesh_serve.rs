//! `dwarfstar serve` in a mesh: the flags, joining the mesh, the
//! self-benchmark a node announces, and coordinating the model it starts
//! with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use dwarfstar_mesh::token::is_routable;
use dwarfstar_mesh::{sysinfo, JoinSecret, JoinToken, Mesh, MeshConfig, MeshHandle, Multiaddr};
use dwarfstar_planner::NodeCaps;
use tokio::runtime::Handle;

use super::pipeline::StageLimits;
use super::runtime::{node_caps, NodeRuntime, NodeSettings};

/// Environment variable holding the join secret (when no file is given).
pub const SECRET_ENV: &str = "DWARFSTAR_SECRET";
/// Environment variable holding a join token (when `--join` is not given).
pub const JOIN_ENV: &str = "DWARFSTAR_JOIN";
/// The file in the state folder holding the secret of a mesh this node started (`--mesh`).
pub const SECRET_FILE: &str = "join-secret";

#[derive(Args, Debug, Clone, Default)]
pub struct MeshArgs {
    /// Start a mesh (or rejoin the one this node started): its secret is
    /// kept in the state folder, made on first use, and the daemon prints
    /// the one-line join token other machines pass to `dwarfstar join`.
    #[arg(long)]
    pub mesh: bool,
    /// Join a mesh with the token its first node printed (or set
    /// DWARFSTAR_JOIN): the token holds the secret and addresses to dial.
    #[arg(long, value_name = "TOKEN", conflicts_with_all = ["secret_file", "mesh"])]
    pub join: Option<String>,
    /// Join a mesh with the token kept in this file (e.g. a systemd
    /// credential; deploy/install.sh writes one readable by root only).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["join", "secret_file", "mesh"])]
    pub join_file: Option<PathBuf>,
    /// Join a mesh: a file holding the cluster's join secret (or set
    /// DWARFSTAR_SECRET). Without any of these, the daemon serves alone.
    #[arg(long, value_name = "FILE", conflicts_with = "mesh")]
    pub secret_file: Option<PathBuf>,
    /// Where the node keeps its identity key and benchmark cache
    /// [default: ~/.local/state/dwarfstar].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// libp2p (discovery, control) TCP address [default: 0.0.0.0:7000].
    #[arg(long, value_name = "HOST:PORT")]
    pub mesh_addr: Option<SocketAddr>,
    /// QUIC data-plane UDP address [default: 0.0.0.0:7001].
    #[arg(long, value_name = "HOST:PORT")]
    pub quic_addr: Option<SocketAddr>,
    /// A peer to dial, HOST:PORT of its mesh address or a multiaddr. Repeatable.
    #[arg(long = "peer", value_name = "ADDR")]
    pub peers: Vec<String>,
    /// Do not discover peers with mDNS (static peers only).
    #[arg(long)]
    pub no_mdns: bool,
    /// Nodes (this one included) to wait for before planning [default: 1].
    #[arg(long, value_name = "N")]
    pub mesh_nodes: Option<usize>,
    /// Seconds to wait for them [default: 60].
    #[arg(long, value_name = "S", default_value_t = 60)]
    pub mesh_wait: u64,
    /// Split the model into exactly N pipeline stages.
    #[arg(long, value_name = "N")]
    pub stages: Option<u32>,
    /// Spread routed experts over the nodes (MoE models).
    #[arg(long)]
    pub expert_parallel: bool,
    /// Where this node finds model files named in a plan [default: the
    /// model's folder, else DWARFSTAR_MODELS_DIR, else ./models].
    #[arg(long, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// Memory this node lets the model use, e.g. 6GiB [default: free RAM].
    #[arg(long, value_name = "SIZE")]
    pub node_budget: Option<String>,
    /// Declare a plan member lost when it answers no heartbeat for this
    /// long, in milliseconds [default: `[mesh] lost_after_ms`, else 3000].
    #[arg(long, value_name = "MS")]
    pub lost_after_ms: Option<u64>,
}

impl MeshArgs {
    /// The join secret, when this daemon is to join a mesh: from
    /// `--secret-file`, a join token (`--join`, DWARFSTAR_JOIN),
    /// DWARFSTAR_SECRET, or the state folder's (`--mesh`), in that order.
    pub fn secret(&self) -> Result<Option<JoinSecret>> {
        if let Some(f) = &self.secret_file {
            return Ok(Some(
                JoinSecret::from_file(f).with_context(|| format!("secret file {}", f.display()))?,
            ));
        }
        if let Some(t) = self.token()? {
            return Ok(Some(t.secret));
        }
        if let Some(s) = JoinSecret::from_env(SECRET_ENV)? {
            return Ok(Some(s));
        }
        if self.mesh {
            let dir = self.state_dir();
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("state dir {}", dir.display()))?;
            return Ok(Some(JoinSecret::load_or_create(&dir.join(SECRET_FILE))?));
        }
        Ok(None)
    }

    /// The join token given, if any (`--join`, `--join-file`, else
    /// DWARFSTAR_JOIN).
    pub fn token(&self) -> Result<Option<JoinToken>> {
        if let Some(f) = &self.join_file {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("--join-file {}", f.display()))?;
            let t =
                JoinToken::parse(&text).with_context(|| format!("--join-file {}", f.display()))?;
            return Ok(Some(t));
        }
        let text = match &self.join {
            Some(t) => t.clone(),
            None => match std::env::var(JOIN_ENV) {
                Ok(t) if !t.trim().is_empty() && self.secret_file.is_none() => t,
                _ => return Ok(None),
            },
        };
        Ok(Some(JoinToken::parse(&text).context("--join")?))
    }

    fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."))
                .join(".local/state/dwarfstar")
        })
    }
}

fn multiaddr(s: &str) -> Result<Multiaddr> {
    if s.starts_with('/') {
        return s.parse().with_context(|| format!("peer address {s}"));
    }
    let a: SocketAddr = s
        .parse()
        .with_context(|| format!("peer address {s} (HOST:PORT or a multiaddr)"))?;
    let ip = match a.ip() {
        std::net::IpAddr::V4(v) => format!("/ip4/{v}"),
        std::net::IpAddr::V6(v) => format!("/ip6/{v}"),
    };
    Ok(format!("{ip}/tcp/{}", a.port()).parse()?)
}

/// Parses sizes such as `6GiB`, `512MiB`, `2G` or a byte count, as
/// `--mem-budget` does.
pub fn parse_size(s: &str) -> Result<u64> {
    dwarfstar_model::store::parse_size(s).map_err(anyhow::Error::msg)
}

/// A short measure of this machine's f32 multiply-add rate (GFLOP/s).
fn measure_gflops() -> f64 {
    let a: Vec<f32> = (0..1 << 16).map(|i| (i % 97) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..1 << 16).map(|i| (i % 89) as f32 * 0.01).collect();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        let mut s = 0f32;
        for _ in 0..64 {
            s += dwarfstar_kernels::ops::dot_f32(std::hint::black_box(&a), &b);
        }
        std::hint::black_box(s);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (64.0 * 2.0 * a.len() as f64) / best.max(1e-9) / 1e9
}

/// The liveness bound: the flag, else the configuration file's, else 3 s.
pub fn lost_after(args: &MeshArgs, configured: Option<Duration>) -> Result<Duration> {
    match args.lost_after_ms {
        Some(ms) => crate::serve::config::lost_after(ms).context("--lost-after-ms"),
        None => Ok(configured.unwrap_or(dwarfstar_membership::Config::default().lost_after)),
    }
}

/// Joins the mesh and starts the node's event loop; `engines` is where the
/// daemon serves the model it coordinates, if any; plan members silent for
/// `lost_after` are declared lost; `mtp` names the model whose MTP block
/// drafts when this node coordinates it (and the block's own file).
pub async fn join(
    args: &MeshArgs,
    secret: JoinSecret,
    models_dir: PathBuf,
    limits: StageLimits,
    lost_after: Duration,
    engines: Arc<crate::serve::engine::Engines>,
    mtp: Option<(PathBuf, Option<PathBuf>)>,
) -> Result<Arc<NodeRuntime>> {
    let state = args.state_dir();
    std::fs::create_dir_all(&state).with_context(|| format!("state dir {}", state.display()))?;
    let probe = sysinfo::probe(&state);
    let bench = tokio::task::spawn_blocking({
        let state = state.clone();
        move || {
            let key = format!(
                "{}-{}",
                env!("CARGO_PKG_VERSION"),
                std::thread::available_parallelism().map_or(1, |n| n.get())
            );
            sysinfo::cached_bench(&state, &key, || sysinfo::BenchResults {
                key: String::new(),
                matmul_gflops: measure_gflops(),
                mem_bw_gbs: sysinfo::measure_mem_bw(),
                disk_read_gbs: 1.0,
            })
        }
    })
    .await?;
    let budget = match &args.node_budget {
        Some(s) => parse_size(s)?,
        None => probe.free_ram * 3 / 4,
    };
    let token_secret = secret.clone();
    let mut cfg = MeshConfig::new(&state, secret);
    if let Some(a) = args.mesh_addr {
        cfg.listen = vec![multiaddr(&a.to_string())?];
    }
    if let Some(q) = args.quic_addr {
        cfg.quic_listen = q;
    }
    cfg.static_peers = args
        .peers
        .iter()
        .map(|p| multiaddr(p))
        .collect::<Result<_>>()?;
    if let Some(t) = args.token()? {
        cfg.static_peers.extend(t.peers);
    }
    cfg.mdns = !args.no_mdns;
    cfg.caps = sysinfo::capabilities(&probe, &bench, budget);
    cfg.caps.name = super::local::host_name();
    let caps: NodeCaps = node_caps("", &cfg.caps);
    let mut announced = cfg.caps.clone();
    let (mesh, events) = Mesh::start(cfg).await.context("starting the mesh")?;
    let info = mesh.local_info().await?;
    let wildcard = args.mesh_addr.is_none_or(|a| a.ip().is_unspecified());
    let listen = dialable_addrs(&mesh, wildcard, info.listen_addrs).await;
    announced.id = info.peer.to_string();
    let a = announced.addresses.get_or_insert_with(Default::default);
    a.quic = info.quic_addr.to_string();
    a.libp2p = listen.iter().map(|a| a.to_string()).collect();
    println!(
        "dwarfstar mesh: node {} on {} (QUIC {})",
        info.peer,
        listen
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        info.quic_addr
    );
    // The line a user copies to the other machines; it holds the secret.
    let token = JoinToken::new(token_secret, &listen);
    println!(
        "dwarfstar mesh: to add a machine, run there: dwarfstar join {}",
        token.encode()
    );
    let inventory_dir = models_dir.clone();
    let node = NodeRuntime::new(
        mesh,
        Handle::current(),
        NodeSettings {
            models_dir,
            limits,
            caps,
            liveness: dwarfstar_membership::Config::with_lost_after(lost_after),
            mtp,
        },
        engines,
    );
    node.roster.set_local_caps(announced);
    node.run_events(events);
    // The models this node holds, announced once hashed (cached in the
    // state folder, so only new or changed files take time).
    let n = node.clone();
    tokio::spawn(async move {
        let models =
            tokio::task::spawn_blocking(move || super::inventory::scan(&inventory_dir, &state))
                .await
                .unwrap_or_default();
        tracing::info!("holding {} model file(s)", models.len());
        n.set_inventory(models).await;
    });
    Ok(node)
}

/// The listen addresses to put in a join token. A listener on `0.0.0.0`
/// reports each interface's address as the OS lists it, loopback often
/// first: wait (up to 3 s) for one another machine can dial, so the token
/// does not name only 127.0.0.1 (a machine with no other keeps that).
async fn dialable_addrs(
    mesh: &MeshHandle,
    wildcard: bool,
    mut addrs: Vec<Multiaddr>,
) -> Vec<Multiaddr> {
    let deadline = Instant::now() + Duration::from_secs(3);
    while wildcard && !addrs.iter().any(is_routable) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        match mesh.local_info().await {
            Ok(info) => addrs = info.listen_addrs,
            Err(_) => break,
        }
    }
    addrs
}

/// How long the coordinator waits for the nodes it was told to expect.
pub fn wait(args: &MeshArgs) -> Duration {
    Duration::from_secs(args.mesh_wait)
}

/// Where a node looks for model files a plan names.
pub fn models_dir(args: &MeshArgs, model: Option<&std::path::Path>) -> PathBuf {
    if let Some(d) = &args.models_dir {
        return d.clone();
    }
    if let Some(p) = model.and_then(|m| m.parent()) {
        return p.to_path_buf();
    }
    std::env::var_os("DWARFSTAR_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("models"))
}

/// Waits for the nodes asked for, plans `model` over them and has each
/// load its share; the plan, and this node's part (with the scheduler's
/// backend).
pub async fn coordinate(
    args: &MeshArgs,
    node: &Arc<NodeRuntime>,
    model: &std::path::Path,
) -> Result<(dwarfstar_planner::Plan, super::runtime::Applied)> {
    let opts = super::runtime::CoordOptions {
        min_nodes: args.mesh_nodes.unwrap_or(1),
        wait: wait(args),
        force_stages: args.stages,
        expert_parallel: args.expert_parallel,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs());
    let version = node.next_version(now);
    let (plan, applied) = node.coordinate(model, &opts, version).await?;
    let stages: Vec<String> = plan
        .stages
        .iter()
        .map(|s| format!("{}..{} on {}", s.layers.start, s.layers.end, short(&s.node)))
        .collect();
    let experts: std::collections::BTreeSet<&str> =
        plan.experts.iter().map(|e| e.node.as_str()).collect();
    println!(
        "dwarfstar mesh: plan {}: layers {}; experts on {} node(s); predicted {:.1} tokens/s",
        plan.version,
        stages.join(", "),
        experts.len(),
        plan.predicted_tokens_per_s
    );
    Ok((plan, applied))
}

/// The last characters of a peer id, enough to tell nodes apart.
pub fn short(id: &str) -> &str {
    &id[id.len().saturating_sub(8)..]
}
