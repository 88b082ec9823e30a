//! `dwarfstar serve`: an OpenAI-compatible HTTP server with continuous
//! batching and a chat page.
//!
//! - [`config`]: the TOML file, flags and keys, checked into settings;
//! - [`scheduler`]: the engine thread — admission, chunked prefill, one
//!   batched forward pass per step, sampling, cancellation;
//! - [`prefix`]: the cache of recent states for shared prompt starts;
//! - [`openai`]: request parsing and response bodies;
//! - [`api`]: the axum routes, auth, streaming;
//! - [`metrics`]: counters, gauges and the Prometheus rendering.
//!
//! The model lives on one `std::thread` (its kernels use the rayon pool);
//! the tokio runtime only moves bytes. Next to HTTP, the gRPC Control
//! service (`meshctl`) is served by [`crate::node::grpc`] over
//! [`crate::node::local::LocalNode`] (alone) or
//! [`crate::node::mesh_api::MeshNode`] (in a mesh, which the chat page's
//! status then shows too).

pub mod api;
pub mod config;
pub mod kv_disk;
pub mod metrics;
pub mod openai;
pub mod prefix;
pub mod replan;
pub mod scheduler;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use dwarfstar_model::Model;

use self::config::{FileConfig, Overrides};
use self::metrics::Metrics;
use self::scheduler::{SchedConfig, Scheduler};
use crate::cli::{init_threads, load_tokenizer};
use crate::node::grpc::{serve_grpc_on, NodeApi};
use crate::node::local::{LocalConfig, LocalNode};
use crate::node::mesh_api::{announce_services, MeshNode};
use crate::node::mesh_serve::MeshArgs;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Path to a GGUF model file (or [model] path in the config).
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// TOML configuration file (see deploy/dwarfstar.example.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Listen address, host:port [default: 127.0.0.1:8080]. Addresses other
    /// than loopback need API keys.
    #[arg(long)]
    pub http_addr: Option<String>,
    /// gRPC Control address for meshctl, host:port, or `off`
    /// [default: 127.0.0.1:7070; when that port is taken, gRPC stays off].
    #[arg(long, value_name = "ADDR")]
    pub grpc_listen: Option<String>,
    /// An API key clients must send as `Authorization: Bearer KEY`.
    /// Repeatable; DWARFSTAR_API_KEYS adds comma-separated keys.
    #[arg(long = "api-key", value_name = "KEY")]
    pub api_keys: Vec<String>,
    /// Kernel worker threads (default: all cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Positions per sequence (default: the model's, at most 8192).
    #[arg(long, short = 'c')]
    pub ctx_size: Option<usize>,
    /// Most sequences decoded together [default: 16].
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// Requests that may wait for a slot before 429 [default: 64].
    #[arg(long)]
    pub queue: Option<usize>,
    /// Prompt tokens run per step, all sequences together [default: 128].
    #[arg(long)]
    pub prefill_chunk: Option<usize>,
    /// The model id clients use (default: the file name without .gguf).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Override a metadata value: KEY=TYPE:VALUE. Repeatable.
    #[arg(long = "override-kv", value_name = "KEY=TYPE:VALUE")]
    pub override_kv: Vec<String>,
    /// Memory for weights, e.g. 6GiB; a larger model is paged from disk
    /// (default: 75% of available memory less the KV caches; "none": map
    /// the whole file). See `dwarfstar run --help`.
    #[arg(long, value_name = "SIZE")]
    pub mem_budget: Option<String>,
    /// How KV caches store keys and values: f32, f16, q8_0 or q4_0
    /// (dense models) [default: f32; or [model] kv_type].
    #[arg(long, value_name = "TYPE")]
    pub kv_type: Option<String>,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let secret = a.mesh.secret()?;
    if let (Some(secret), None, None) = (&secret, &a.model, &a.config) {
        let mut keys = a.api_keys.clone();
        if let Ok(env) = std::env::var("DWARFSTAR_API_KEYS") {
            keys.extend(
                env.split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(String::from),
            );
        }
        return crate::node::mesh_serve::run_worker(
            &a.mesh,
            secret.clone(),
            a.threads,
            a.grpc_listen.as_deref(),
            keys,
        );
    }
    let file = match &a.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let flags = Overrides {
        model: a.model,
        model_name: a.model_name,
        http_addr: a.http_addr,
        grpc_listen: a.grpc_listen,
        api_keys: a.api_keys,
        threads: a.threads,
        ctx_size: a.ctx_size,
        max_batch: a.max_batch,
        queue: a.queue,
        prefill_chunk: a.prefill_chunk,
        override_kv: a.override_kv,
        kv_type: a.kv_type,
    };
    let env_keys = std::env::var("DWARFSTAR_API_KEYS").ok();
    let s = config::resolve(file, flags, env_keys.as_deref())?;

    init_threads(s.threads)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let overrides = s
        .override_kv
        .iter()
        .map(|o| dwarfstar_gguf::parse_override(o).with_context(|| format!("override {o}")))
        .collect::<Result<Vec<_>>>()?;
    let (mut model, gguf) = Model::open(&s.model_path, &overrides)
        .with_context(|| format!("loading {}", s.model_path.display()))?;
    model
        .set_kv_type(s.kv_type)
        .with_context(|| format!("kv_type {}", s.kv_type))?;
    let tok = Arc::new(load_tokenizer(&gguf, &s.model_path)?);
    let ctx_size = s
        .ctx_size
        .unwrap_or_else(|| model.n_ctx_train().min(8192))
        .max(2);
    crate::cli::apply_mem_budget(
        &mut model,
        a.mem_budget.as_deref(),
        ctx_size.saturating_mul(s.limits.max_batch),
    )?;
    let n_vocab = model.n_vocab();
    let arch = model.arch().to_string();
    let eog: Vec<bool> = (0..n_vocab).map(|id| tok.is_eog(id as u32)).collect();
    // Shared with the gRPC Control service's generations.
    let model = Arc::new(model);

    let metrics = Arc::new(Metrics::new());
    let (submit, rx) = scheduler::queue(s.limits.queue, metrics.clone());
    let mut cfg = SchedConfig {
        max_batch: s.limits.max_batch,
        prefill_chunk: s.limits.prefill_chunk,
        ctx_size,
        cache_entries: s.limits.prefix_cache_entries,
        cache_bytes: s.limits.prefix_cache_mib.saturating_mul(1 << 20),
        min_prefix: 16,
    };
    let mut mesh_node = None;
    let mut pipeline = None;
    let replan = Arc::new(replan::Replan::default());
    let engine = match secret {
        // In a mesh, this node coordinates the model over the plan's nodes.
        Some(secret) => {
            let limits = crate::node::pipeline::StageLimits {
                ctx_size,
                max_seqs: crate::node::pipeline::STAGE_MAX_SEQS,
            };
            let (node, backend) = rt.block_on(crate::node::mesh_serve::coordinate(
                &a.mesh,
                secret,
                &s.model_path,
                limits,
            ))?;
            let slot = Arc::new(std::sync::RwLock::new(backend.clone()));
            mesh_node = Some((node, slot.clone()));
            pipeline = Some(slot);
            // A cached prefix stays alive on every stage as a sequence of
            // its own, so the cache shares the stages' sequence slots with
            // the running batch (and releases in flight).
            cfg.cache_entries = cfg
                .cache_entries
                .min(crate::node::pipeline::STAGE_MAX_SEQS.saturating_sub(2 * cfg.max_batch));
            if s.kv_cache.is_some() {
                tracing::warn!(
                    "kv_cache_dir is not used in mesh mode: each stage would need its own files; \
                     prefixes are reused from memory only"
                );
            }
            let sched = Scheduler::new(backend, cfg, eog, rx, metrics.clone());
            spawn_engine(sched.with_replan(replan.clone()))?
        }
        None => match &s.kv_cache {
            Some((dir, bytes)) => {
                let backend = kv_disk::DiskCached::open(model.clone(), dir, *bytes)?;
                spawn_engine(Scheduler::new(backend, cfg, eog, rx, metrics.clone()))?
            }
            None => spawn_engine(Scheduler::new(model.clone(), cfg, eog, rx, metrics.clone()))?,
        },
    };

    let local_node = |grpc_addr: String, http_addr: String| {
        LocalNode::new(LocalConfig {
            id: "local".into(),
            model: model.clone(),
            tokenizer: tok.clone(),
            model_path: s.model_path.clone(),
            served_name: s.model_name.clone(),
            ctx_size,
            max_concurrent: s.limits.max_batch,
            metrics: metrics.clone(),
            grpc_addr,
            http_addr,
            pipeline: pipeline.clone(),
        })
    };
    // In a mesh, gRPC and the page answer for the whole mesh.
    let mesh_api = mesh_node.map(|(node, slot)| {
        Arc::new(MeshNode::coordinator(
            node,
            local_node(String::new(), String::new()),
            s.model_path.clone(),
            metrics.clone(),
            (replan.clone(), slot),
        ))
    });
    let state = Arc::new(api::AppState {
        mesh: mesh_api.clone(),
        tok: tok.clone(),
        submit,
        metrics: metrics.clone(),
        model_name: s.model_name.clone(),
        arch,
        n_vocab,
        ctx_size,
        keys: s.api_keys.clone(),
        max_body_bytes: s.max_body_bytes,
        limits: s.limits.clone(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(s.addr)
            .await
            .with_context(|| format!("listening on {}", s.addr))?;
        let local = listener.local_addr()?;
        let grpc_listener = match s.grpc_addr {
            None => None,
            Some(a) => match tokio::net::TcpListener::bind(a).await {
                Ok(l) => Some(l),
                Err(e) if !s.grpc_explicit => {
                    eprintln!(
                        "dwarfstar serve: gRPC control off: {a}: {e} (give --grpc-listen ADDR)"
                    );
                    None
                }
                Err(e) => return Err(e).with_context(|| format!("gRPC listen address {a}")),
            },
        };
        let grpc_local = match &grpc_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let stop = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|&v| v).await;
        };
        let grpc_text = grpc_local.map(|a| a.to_string()).unwrap_or_default();
        if let Some(m) = &mesh_api {
            announce_services(m.runtime(), &grpc_text, &local.to_string()).await;
        }
        let grpc_task = grpc_listener.map(|l| {
            let api: Arc<dyn NodeApi> = match &mesh_api {
                Some(m) => m.clone(),
                None => Arc::new(local_node(grpc_text.clone(), local.to_string())),
            };
            tokio::spawn(serve_grpc_on(
                l,
                api,
                s.api_keys.clone(),
                stopped(stop.1.clone()),
            ))
        });
        // One line, one write: tests read it and may close the pipe.
        println!(
            "dwarfstar serve: listening on http://{local} (model {}, context {ctx_size}, batch {}, queue {}{}); gRPC control {}",
            s.model_name,
            s.limits.max_batch,
            s.limits.queue,
            if s.api_keys.is_empty() { ", no API keys" } else { "" },
            grpc_local.map_or("off".to_string(), |a| format!("on {a}")),
        );
        let _ = std::io::stdout().flush();
        let stop_tx = stop.0;
        let served = axum::serve(listener, api::router(state))
            .with_graceful_shutdown(async move {
                shutdown().await;
                let _ = stop_tx.send(true);
            })
            .await
            .context("serving HTTP");
        if let Some(t) = grpc_task {
            match t.await {
                Ok(r) => r.context("serving gRPC")?,
                Err(e) => anyhow::bail!("the gRPC server failed: {e}"),
            }
        }
        served
    })?;
    drop(rt);
    // Every submitter is gone: the engine ends its sequences and returns.
    let _ = engine.join();
    Ok(())
}

/// Runs a scheduler on its own thread (its kernels use the rayon pool).
fn spawn_engine<B>(sched: Scheduler<B>) -> Result<std::thread::JoinHandle<()>>
where
    B: scheduler::Backend + Send + 'static,
    B::State: Send,
{
    std::thread::Builder::new()
        .name("dwarfstar-engine".into())
        .spawn(move || sched.run())
        .context("starting the engine thread")
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("dwarfstar serve: shutting down");
}
