//! `dwarfstar serve`: an OpenAI-compatible HTTP server with continuous
//! batching and a chat page.
//!
//! - [`config`]: the TOML file, flags and keys, checked into settings;
//! - [`engine`]: the model served now, and how `meshctl load` swaps it;
//! - [`scheduler`]: the engine thread — admission, chunked prefill, one
//!   batched forward pass per step, sampling, cancellation;
//! - [`spec`]: speculative decoding's per-sequence draft lengths;
//! - [`prefix`]: the cache of recent states for shared prompt starts;
//! - [`openai`]: OpenAI's request parsing and response bodies;
//! - [`responses`]: OpenAI's Responses API bodies; [`anthropic`]: Anthropic's
//!   Messages API bodies (both read into the same chat request);
//! - [`logprobs`]: the logprobs of sampled tokens;
//! - [`api`]: the axum routes, auth, the one generation path, streaming;
//! - [`metrics`]: counters, gauges and the Prometheus rendering.
//!
//! The model lives on one `std::thread` (its kernels use the rayon pool);
//! the tokio runtime only moves bytes. Next to HTTP, the gRPC Control
//! service (`meshctl`) is served by [`crate::node::grpc`] over
//! [`crate::node::lone::LoneNode`] (alone) or
//! [`crate::node::mesh_api::MeshNode`] (in a mesh, which the chat page's
//! status then shows too). A mesh node started without a model serves the
//! API (when given an address) once a load makes it a coordinator.

pub mod anthropic;
pub mod api;
pub mod config;
pub mod engine;
pub mod grammar;
pub mod kv_disk;
pub mod logprobs;
pub mod metrics;
pub mod openai;
pub mod prefix;
pub mod replan;
pub mod responses;
pub mod scheduler;
pub mod spec;
pub mod tools;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use self::config::{FileConfig, Overrides};
use self::engine::{EngineFactory, Engines};
use self::metrics::Metrics;
use crate::cli::init_threads;
use crate::node::grpc::{serve_grpc_on, NodeApi};
use crate::node::lone::LoneNode;
use crate::node::mesh_api::{announce_services, MeshNode};
use crate::node::mesh_serve::{self, MeshArgs};
use crate::node::pipeline::{StageLimits, STAGE_MAX_SEQS};

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
    /// (dense models); f32, f16 or q8_0 (DeepSeek V4's compressed cache)
    /// [default: f32, f16 for V4; or [model] kv_type].
    #[arg(long, value_name = "TYPE")]
    pub kv_type: Option<String>,
    /// Speculative decoding: a smaller GGUF model of the same vocabulary
    /// (e.g. `dwarfstar quantize --recipe dwarf-q2` of the served model)
    /// drafts tokens the served model then verifies in one pass. Greedy
    /// output is unchanged; sampling keeps the model's distribution.
    #[arg(long, value_name = "FILE")]
    pub draft_model: Option<PathBuf>,
    /// Most tokens drafted per sequence and step [default: 3].
    #[arg(long, value_name = "N")]
    pub spec_tokens: Option<usize>,
    /// Draft on every step, even while drafting measures slower than plain
    /// decoding (by default a step drafts only while that pays).
    #[arg(long)]
    pub spec_always: bool,
    /// Draft with the model's own MTP block (DeepSeek V4): the default
    /// where the model has one and no draft model is given; `--mtp=false`
    /// turns it off, `--mtp` refuses a model without one.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub mtp: Option<bool>,
    /// DeepSeek V4's MTP block in a GGUF file of its own (ds4 ships it so:
    /// `mtp.0.*`), attached to the model to draft with; implies `--mtp`.
    #[arg(long, value_name = "FILE")]
    pub mtp_model: Option<PathBuf>,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

/// `dwarfstar join TOKEN [serve's flags]`.
#[derive(Args, Debug)]
pub struct JoinArgs {
    /// The join token another node printed (`dwarfstar serve --mesh`).
    #[arg(value_name = "TOKEN")]
    pub token: String,
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl JoinArgs {
    /// The `serve` this join is.
    pub fn into_serve(self) -> Result<ServeArgs> {
        let mut s = self.serve;
        if s.mesh.join.is_some()
            || s.mesh.join_file.is_some()
            || s.mesh.secret_file.is_some()
            || s.mesh.mesh
        {
            anyhow::bail!(
                "`dwarfstar join TOKEN` takes the mesh from its token: drop --join, \
                 --join-file, --secret-file and --mesh"
            );
        }
        s.mesh.join = Some(self.token);
        Ok(s)
    }
}

pub fn run(a: ServeArgs) -> Result<()> {
    let secret = a.mesh.secret()?;
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
        draft_model: a.draft_model,
        spec_tokens: a.spec_tokens,
        spec_always: a.spec_always,
        mtp: a.mtp,
        mtp_model: a.mtp_model,
    };
    let env_keys = std::env::var("DWARFSTAR_API_KEYS").ok();
    let s = config::resolve(file, flags, env_keys.as_deref())?;
    if s.model_path.is_none() && secret.is_none() {
        anyhow::bail!(
            "no model: give --model PATH or [model] path in the config file (or join a mesh \
             with `dwarfstar join TOKEN`, --secret-file or DWARFSTAR_SECRET, to take a share \
             of the models it loads)"
        );
    }

    init_threads(s.threads)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let metrics = Arc::new(Metrics::new());
    let engines = Arc::new(Engines::default());
    let factory = rt.block_on(serve_on(
        &a.mesh,
        a.mem_budget,
        secret,
        &s,
        &metrics,
        &engines,
    ))?;
    drop(rt);
    // Every submitter is gone: each engine ends its sequences and returns.
    engines.set(None);
    factory.join_all();
    Ok(())
}

/// Binds the listeners, starts the engine (alone, or as the coordinator of
/// a mesh plan, or none on a mesh node without a model) and serves HTTP
/// and gRPC until Ctrl-C. The engine factory, whose threads remain.
async fn serve_on(
    mesh_args: &MeshArgs,
    mem_budget: Option<String>,
    secret: Option<dwarfstar_mesh::JoinSecret>,
    s: &config::Settings,
    metrics: &Arc<Metrics>,
    engines: &Arc<Engines>,
) -> Result<Arc<EngineFactory>> {
    // A node without a model serves HTTP only at an address it was given.
    let listener = if s.model_path.is_some() || s.http_explicit {
        let l = tokio::net::TcpListener::bind(s.addr)
            .await
            .with_context(|| format!("listening on {}", s.addr))?;
        Some(l)
    } else {
        None
    };
    let grpc_listener = match s.grpc_addr {
        None => None,
        Some(a) => match tokio::net::TcpListener::bind(a).await {
            Ok(l) => Some(l),
            Err(e) if !s.grpc_explicit => {
                eprintln!("dwarfstar serve: gRPC control off: {a}: {e} (give --grpc-listen ADDR)");
                None
            }
            Err(e) => return Err(e).with_context(|| format!("gRPC listen address {a}")),
        },
    };
    let http_text = match &listener {
        Some(l) => l.local_addr()?.to_string(),
        None => String::new(),
    };
    let grpc_text = match &grpc_listener {
        Some(l) => l.local_addr()?.to_string(),
        None => String::new(),
    };
    let factory = Arc::new(EngineFactory {
        configured: s.model_path.clone(),
        configured_name: s.model_name.clone(),
        ctx_size: s.ctx_size,
        override_kv: s.override_kv.clone(),
        kv_type: s.kv_type,
        mem_budget,
        limits: s.limits.clone(),
        kv_cache: s.kv_cache.clone(),
        draft: s.draft.clone(),
        metrics: metrics.clone(),
        node_id: "local".into(),
        grpc_addr: grpc_text.clone(),
        http_addr: http_text.clone(),
        threads: Default::default(),
    });

    let mesh_api = match secret {
        // In a mesh, this node coordinates its model (if it has one) over
        // the plan's nodes, and takes shares of others' plans.
        Some(secret) => {
            let limits = StageLimits {
                ctx_size: s.ctx_size.unwrap_or(8192).max(2),
                max_seqs: STAGE_MAX_SEQS,
            };
            let dir = mesh_serve::models_dir(mesh_args, s.model_path.as_deref());
            let lost_after = mesh_serve::lost_after(mesh_args, s.lost_after)?;
            let mtp = match (&s.model_path, &s.draft) {
                (
                    Some(m),
                    Some(config::DraftSettings {
                        source: config::DraftSource::Mtp { file, .. },
                        ..
                    }),
                ) => Some((m.clone(), file.clone())),
                _ => None,
            };
            let node = mesh_serve::join(
                mesh_args,
                secret,
                dir,
                limits,
                lost_after,
                engines.clone(),
                mtp,
            )
            .await?;
            if let Some(path) = &s.model_path {
                let (_, applied) = mesh_serve::coordinate(mesh_args, &node, path).await?;
                let backend = applied.backend.ok_or_else(|| {
                    anyhow::anyhow!("the plan does not make this node its coordinator")
                })?;
                let (f, p, model) = (factory.clone(), path.clone(), applied.model);
                let engine = tokio::task::spawn_blocking(move || {
                    f.coordinator(&p, model, backend, limits.ctx_size)
                })
                .await??;
                engines.set(Some(engine));
            }
            let api = Arc::new(MeshNode::new(
                node.clone(),
                engines.clone(),
                factory.clone(),
                metrics.clone(),
            ));
            api.spawn_recovery();
            announce_services(&node, &grpc_text, &http_text).await;
            Some(api)
        }
        None => {
            let (f, p) = (factory.clone(), s.model_path.clone().unwrap_or_default());
            let engine = tokio::task::spawn_blocking(move || f.alone(&p)).await??;
            engines.set(Some(engine));
            None
        }
    };

    let stop = tokio::sync::watch::channel(false);
    let grpc_task = grpc_listener.map(|l| {
        let api: Arc<dyn NodeApi> = match &mesh_api {
            Some(m) => m.clone(),
            None => Arc::new(LoneNode::new(engines.clone(), factory.clone())),
        };
        let mut rx = stop.1.clone();
        tokio::spawn(serve_grpc_on(l, api, s.api_keys.clone(), async move {
            let _ = rx.wait_for(|&v| v).await;
        }))
    });
    let grpc_line = if grpc_text.is_empty() {
        "off".to_string()
    } else {
        format!("on {grpc_text}")
    };
    // One line, one write: tests read it and may close the pipe.
    match engines.get() {
        Some(e) => println!(
            "dwarfstar serve: listening on http://{http_text} (model {}, context {}, batch {}, queue {}{}); gRPC control {grpc_line}",
            e.model_name,
            e.ctx_size,
            s.limits.max_batch,
            s.limits.queue,
            if s.api_keys.is_empty() { ", no API keys" } else { "" },
        ),
        None => println!(
            "dwarfstar serve: mesh worker ready, waiting for a plan; HTTP API {}; gRPC control {grpc_line}",
            if http_text.is_empty() {
                "off".to_string()
            } else {
                format!("on http://{http_text}")
            },
        ),
    }
    let _ = std::io::stdout().flush();
    let stop_tx = stop.0;
    let served = match listener {
        Some(l) => {
            let state = Arc::new(api::AppState {
                mesh: mesh_api.clone(),
                engines: engines.clone(),
                metrics: metrics.clone(),
                keys: s.api_keys.clone(),
                max_body_bytes: s.max_body_bytes,
                limits: s.limits.clone(),
                created: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            });
            axum::serve(l, api::router(state))
                .with_graceful_shutdown(async move {
                    shutdown().await;
                    let _ = stop_tx.send(true);
                })
                .await
                .context("serving HTTP")
        }
        None => {
            shutdown().await;
            let _ = stop_tx.send(true);
            Ok(())
        }
    };
    if let Some(t) = grpc_task {
        match t.await {
            Ok(r) => r.context("serving gRPC")?,
            Err(e) => anyhow::bail!("the gRPC server failed: {e}"),
        }
    }
    if let Some(m) = &mesh_api {
        m.runtime().mesh.shutdown().await;
    }
    served.map(|_| factory)
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
