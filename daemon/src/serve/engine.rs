//! The model a daemon serves, and the slot where `meshctl load` swaps it.
//!
//! An [`Engine`] is what the HTTP API and Control's generations need of one
//! served model: its tokenizer, the queue of the scheduler thread running
//! it, the names clients use, and, on a mesh coordinator, the re-plan hold
//! and the pipeline. [`Engines`] holds the engine in force, or none (a mesh
//! node that coordinates nothing). [`EngineFactory`] builds engines the
//! way the daemon was configured: alone from a model file, or around the
//! pipeline a mesh plan gave this node.
//!
//! A replaced engine is not stopped by force. Its scheduler finishes the
//! sequences it runs and ends once the last handle to its queue is gone
//! (a mesh engine is first held and drained, then retired: see
//! [`super::replan`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use dwarfstar_model::draft::ModelDrafter;
use dwarfstar_model::draft_mtp::MtpDrafter;
use dwarfstar_model::{KvType, Model};
use dwarfstar_tokenizer::Tokenizer;

use super::config::{DraftSettings, DraftSource, LimitsConfig, DEFAULT_SPEC_TOKENS};
use super::grammar::TokenTrie;
use super::kv_disk;
use super::metrics::Metrics;
use super::replan::{Replan, Resume};
use super::scheduler::{self, SchedConfig, Scheduler, Submitter};
use super::spec::Speculation;
use crate::cli::load_tokenizer;
use crate::node::backend::DistBackend;
use crate::node::local::{LocalConfig, LocalNode};
use crate::node::pipeline::STAGE_MAX_SEQS;

/// How long a switch waits for an engine's running requests to finish.
pub const DRAIN: Duration = Duration::from_secs(120);

/// A mesh coordinator's engine hold, and the pipeline slot Control's
/// generations read; a new plan for the same model updates both.
pub type Replanning = (Arc<Replan<DistBackend>>, Arc<RwLock<DistBackend>>);

/// One served model. See the module doc.
pub struct Engine {
    pub tok: Arc<Tokenizer>,
    pub submit: Submitter,
    /// The id HTTP clients use.
    pub model_name: String,
    pub model_path: PathBuf,
    pub arch: String,
    pub n_vocab: usize,
    /// Positions a sequence may hold.
    pub ctx_size: usize,
    /// Control's generations, and a lone daemon's status answers.
    pub node: LocalNode,
    /// On a mesh coordinator.
    pub replan: Option<Replanning>,
    /// The vocabulary as a byte trie for grammar masks, built on first use.
    trie: OnceLock<Arc<TokenTrie>>,
}

impl Engine {
    /// The vocabulary trie grammar masks walk: each token's text as the
    /// output shows it with special tokens rendered; end-of-generation
    /// tokens (and ids past the tokenizer's) have none.
    pub fn token_trie(&self) -> Arc<TokenTrie> {
        self.trie
            .get_or_init(|| {
                let tok = &self.tok;
                let n = self.n_vocab;
                let eog: Vec<bool> = (0..n as u32).map(|i| tok.is_eog(i)).collect();
                let bytes = (0..n as u32)
                    .map(|i| {
                        if eog[i as usize] || i as usize >= tok.n_vocab() {
                            Vec::new()
                        } else {
                            tok.piece(i, true)
                        }
                    })
                    .collect();
                Arc::new(TokenTrie::new(bytes, eog))
            })
            .clone()
    }

    /// Whether this engine serves the file at `path`.
    pub fn serves(&self, path: &Path) -> bool {
        same_file(&self.model_path, path)
    }
}

/// Whether two paths name one file.
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The engine in force. See the module doc.
#[derive(Default)]
pub struct Engines {
    current: RwLock<Option<Arc<Engine>>>,
    /// Held by the one load or release under way.
    pub switching: tokio::sync::Mutex<()>,
}

impl Engines {
    pub fn get(&self) -> Option<Arc<Engine>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts `next` in force; the engine it replaces.
    pub fn set(&self, next: Option<Engine>) -> Option<Arc<Engine>> {
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *cur, next.map(Arc::new))
    }

    /// Stops serving: drains the engine in force (its running requests
    /// finish, new ones wait), empties the slot and retires it (the waiting
    /// ones fail). The model it served, if any. The caller holds
    /// [`Engines::switching`].
    pub async fn retire(&self, drain: Duration) -> Result<Option<String>, String> {
        let Some(e) = self.get() else {
            return Ok(None);
        };
        let hold = e.replan.as_ref().map(|(h, _)| h.clone());
        if let Some(h) = &hold {
            drain_engine(h, drain).await?;
        }
        self.set(None);
        if let Some(h) = hold {
            h.resume(Resume::Retire);
        }
        Ok(Some(e.model_name.clone()))
    }
}

/// Holds a mesh engine and waits until its running requests finished; on
/// a timeout it lets the engine go on and says so.
pub async fn drain_engine(hold: &Arc<Replan<DistBackend>>, drain: Duration) -> Result<(), String> {
    if !hold.hold() {
        return Err("another re-plan or load is under way".into());
    }
    let h = hold.clone();
    let idle = tokio::task::spawn_blocking(move || h.wait_idle(drain))
        .await
        .unwrap_or(false);
    if !idle {
        hold.resume(Resume::Keep);
        return Err(format!("running requests did not finish within {drain:?}"));
    }
    Ok(())
}

/// How this daemon builds engines: the settings of `dwarfstar serve` that
/// do not change with the model. See the module doc.
pub struct EngineFactory {
    /// The model named at start (flag or config file), whose name, context
    /// and metadata overrides apply only to it.
    pub configured: Option<PathBuf>,
    pub configured_name: String,
    pub ctx_size: Option<usize>,
    pub override_kv: Vec<String>,
    pub kv_type: Option<KvType>,
    /// `--mem-budget`.
    pub mem_budget: Option<String>,
    pub limits: LimitsConfig,
    /// `[model] kv_cache_dir` and its bytes (the configured model, alone).
    pub kv_cache: Option<(PathBuf, u64)>,
    /// Speculative decoding (the configured model, alone or coordinated).
    pub draft: Option<DraftSettings>,
    pub metrics: Arc<Metrics>,
    /// The node's id in Control answers ("local" alone).
    pub node_id: String,
    pub grpc_addr: String,
    pub http_addr: String,
    /// The engine threads started, joined at shutdown.
    pub threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// The served name of a model file: its name without `.gguf`.
pub fn stem(path: &Path) -> String {
    let f = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    f.strip_suffix(".gguf").unwrap_or(&f).to_string()
}

impl EngineFactory {
    fn is_configured(&self, path: &Path) -> bool {
        self.configured
            .as_deref()
            .is_some_and(|c| same_file(c, path))
    }

    fn served_name(&self, path: &Path) -> String {
        if self.is_configured(path) {
            self.configured_name.clone()
        } else {
            stem(path)
        }
    }

    fn sched_config(&self, ctx_size: usize) -> SchedConfig {
        SchedConfig {
            max_batch: self.limits.max_batch,
            prefill_chunk: self.limits.prefill_chunk,
            ctx_size,
            cache_entries: self.limits.prefix_cache_entries,
            cache_bytes: self.limits.prefix_cache_mib.saturating_mul(1 << 20),
            min_prefix: 16,
            kv_positions: usize::MAX,
        }
    }

    /// Loads `path` whole on this machine and starts its engine thread.
    /// Blocking: it reads the file.
    pub fn alone(&self, path: &Path) -> Result<Engine> {
        let configured = self.is_configured(path);
        let overrides = if configured {
            self.override_kv
                .iter()
                .map(|o| dwarfstar_gguf::parse_override(o).with_context(|| format!("override {o}")))
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        let (mut model, gguf) =
            Model::open(path, &overrides).with_context(|| format!("loading {}", path.display()))?;
        self.attach_mtp(path, &mut model)?;
        if let Some(ty) = self.kv_type {
            model
                .set_kv_type(ty)
                .with_context(|| format!("kv_type {ty}"))?;
        }
        let tok = Arc::new(load_tokenizer(&gguf, path)?);
        let asked = self.ctx_size.filter(|_| configured);
        let mut ctx_size = asked
            .unwrap_or_else(|| crate::cli::default_ctx(&model))
            .max(2);
        let per_pos = model.kv_bytes_per_token().max(1) as u64;
        let wanted = per_pos
            .saturating_mul(ctx_size as u64)
            .saturating_mul(self.limits.max_batch.max(1) as u64);
        let split = crate::cli::apply_mem_budget(&mut model, self.mem_budget.as_deref(), wanted)?;
        let mut cfg = self.sched_config(ctx_size);
        if let Some(kv) = split.kv {
            // The default budget left `kv` bytes for caches: sequences are
            // admitted only while their positions fit, and the default
            // context shrinks to what one sequence can hold there.
            let positions = (kv / per_pos) as usize;
            if asked.is_none() && positions < ctx_size {
                ctx_size = positions.max(2);
                tracing::warn!(
                    "context {ctx_size} (the memory left for KV caches, {}, holds no more); \
                     set ctx_size or mem_budget to choose",
                    dwarfstar_model::store::format_size(kv)
                );
                cfg.ctx_size = ctx_size;
            }
            cfg.kv_positions = positions.max(ctx_size);
        }
        let eog = eog_table(&tok, model.n_vocab());
        let mtp = self.mtp_wanted(path, &model)?.is_some();
        if let (true, Model::Deepseek4(m)) = (mtp, &mut model) {
            // The states keep the hidden streams the block drafts from.
            m.keep_hidden = true;
        }
        let spec = match mtp {
            true => None,
            false => self.speculation(path, &gguf, ctx_size)?,
        };
        let model = Arc::new(model);
        let spec = match mtp {
            true => Some(self.mtp_speculation(model.clone(), ctx_size)?),
            false => spec,
        };
        let (submit, rx) = scheduler::queue(self.limits.queue, self.metrics.clone());
        match self.kv_cache.as_ref().filter(|_| configured) {
            Some((dir, bytes)) => {
                let backend = kv_disk::DiskCached::open(model.clone(), dir, *bytes)?;
                let s = Scheduler::new(backend, cfg, eog, rx, self.metrics.clone());
                self.spawn(with_spec(s, spec))?
            }
            None => {
                let s = Scheduler::new(model.clone(), cfg, eog, rx, self.metrics.clone());
                self.spawn(with_spec(s, spec))?
            }
        }
        Ok(self.engine(path, model, tok, submit, ctx_size, None))
    }

    /// The engine of a mesh coordinator: `backend` runs the plan's
    /// pipeline from `model` (this node's share of `path`), with sequences
    /// of up to `stage_ctx` positions on every stage.
    pub fn coordinator(
        &self,
        path: &Path,
        model: Arc<Model>,
        backend: DistBackend,
        stage_ctx: usize,
    ) -> Result<Engine> {
        let gguf = dwarfstar_gguf::GgufFile::open(path)
            .with_context(|| format!("reading {}", path.display()))?;
        let tok = Arc::new(load_tokenizer(&gguf, path)?);
        let ctx_size = self
            .ctx_size
            .filter(|_| self.is_configured(path))
            .unwrap_or_else(|| crate::cli::default_ctx(&model).min(stage_ctx))
            .clamp(2, stage_ctx.max(2));
        let eog = eog_table(&tok, model.n_vocab());
        let (submit, rx) = scheduler::queue(self.limits.queue, self.metrics.clone());
        let mut cfg = self.sched_config(ctx_size);
        // A cached prefix stays alive on every stage as a sequence of its
        // own, so the cache shares the stages' sequence slots with the
        // running batch (and releases in flight).
        cfg.cache_entries = cfg
            .cache_entries
            .min(STAGE_MAX_SEQS.saturating_sub(2 * cfg.max_batch));
        if self.kv_cache.is_some() {
            tracing::warn!(
                "kv_cache_dir is not used in mesh mode: each stage would need its own files; \
                 prefixes are reused from memory only"
            );
        }
        let mut backend = backend;
        let spec = match self.mtp_wanted(path, &model)? {
            // The pipeline brings the final hidden rows back here.
            Some(_) if backend.keep_hidden() => {
                Some(self.mtp_speculation(model.clone(), ctx_size)?)
            }
            Some(true) => anyhow::bail!(
                "mtp: the plan puts the output head on another node, so the hidden rows the \
                 MTP block drafts from stay there"
            ),
            Some(false) => {
                tracing::warn!(
                    "MTP drafting is off: the plan puts the output head on another node"
                );
                None
            }
            None => self.speculation(path, &gguf, ctx_size)?,
        };
        let hold = Arc::new(Replan::default());
        let slot = Arc::new(RwLock::new(backend.clone()));
        let s =
            Scheduler::new(backend, cfg, eog, rx, self.metrics.clone()).with_replan(hold.clone());
        self.spawn(with_spec(s, spec))?;
        Ok(self.engine(path, model, tok, submit, ctx_size, Some((hold, slot))))
    }

    /// The engine of `model` from `path`, its queue `submit` already served
    /// by a scheduler thread.
    fn engine(
        &self,
        path: &Path,
        model: Arc<Model>,
        tok: Arc<Tokenizer>,
        submit: Submitter,
        ctx_size: usize,
        replan: Option<Replanning>,
    ) -> Engine {
        let pipeline = replan.as_ref().map(|(_, slot)| slot.clone());
        Engine {
            model_name: self.served_name(path),
            model_path: path.to_path_buf(),
            arch: model.arch().to_string(),
            n_vocab: model.n_vocab(),
            ctx_size,
            node: LocalNode::new(LocalConfig {
                id: self.node_id.clone(),
                model,
                tokenizer: tok.clone(),
                model_path: path.to_path_buf(),
                served_name: self.served_name(path),
                ctx_size,
                max_concurrent: self.limits.max_batch,
                metrics: self.metrics.clone(),
                grpc_addr: self.grpc_addr.clone(),
                http_addr: self.http_addr.clone(),
                pipeline,
            }),
            tok,
            submit,
            replan,
            trie: OnceLock::new(),
        }
    }
}

impl EngineFactory {
    /// Runs a scheduler on its own thread (its kernels use the rayon
    /// pool); it ends by itself once its queue's submitters are gone.
    fn spawn<B>(&self, sched: Scheduler<B>) -> Result<()>
    where
        B: scheduler::Backend + Send + 'static,
        B::State: Send,
    {
        let t = std::thread::Builder::new()
            .name("dwarfstar-engine".into())
            .spawn(move || sched.run())
            .context("starting the engine thread")?;
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        threads.retain(|t| !t.is_finished());
        threads.push(t);
        Ok(())
    }

    /// Waits for every engine thread to end: each finishes its running
    /// sequences once the submitters of its queue are gone.
    pub fn join_all(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl EngineFactory {
    /// The drafter for `path` (the configured model only), its vocabulary
    /// checked against `target`'s. Blocking: it maps the draft file.
    fn speculation(
        &self,
        path: &Path,
        target: &dwarfstar_gguf::GgufFile,
        ctx_size: usize,
    ) -> Result<Option<Speculation>> {
        let Some(d) = self.draft.as_ref().filter(|_| self.is_configured(path)) else {
            return Ok(None);
        };
        let DraftSource::Model(file) = &d.source else {
            return Ok(None);
        };
        let (draft, gguf) = Model::open(file, &[])
            .with_context(|| format!("loading the draft model {}", file.display()))?;
        dwarfstar_model::draft::check_vocab(target, &gguf)
            .with_context(|| format!("draft model {}", file.display()))?;
        tracing::info!(
            "speculative decoding: {} drafts up to {} tokens a step",
            file.display(),
            d.tokens
        );
        let drafter = ModelDrafter::new(Arc::new(draft), ctx_size);
        Ok(Some(self.spec_of(Box::new(drafter))))
    }

    /// Speculation with `drafter`, as configured.
    fn spec_of(&self, drafter: Box<dyn dwarfstar_model::draft::Drafter>) -> Speculation {
        let (tokens, always) = self
            .draft
            .as_ref()
            .map_or((DEFAULT_SPEC_TOKENS, false), |d| (d.tokens, d.always));
        let mut spec = Speculation::new(drafter, tokens);
        if always {
            spec.payoff = None;
        }
        spec
    }

    /// Whether the configured model `path` drafts with its own MTP block
    /// (the settings' default where it has one): `Some(required)` if so,
    /// `required` where MTP was asked for by name. Refuses a model without
    /// the block where it was.
    fn mtp_wanted(&self, path: &Path, model: &Model) -> Result<Option<bool>> {
        let Some(d) = self.draft.as_ref().filter(|_| self.is_configured(path)) else {
            return Ok(None);
        };
        let DraftSource::Mtp { required, .. } = d.source else {
            return Ok(None);
        };
        match model {
            Model::Deepseek4(m) if m.has_mtp() => Ok(Some(required)),
            _ if required => {
                anyhow::bail!("mtp: {} has no MTP block to draft with", path.display())
            }
            _ => Ok(None),
        }
    }

    /// Attaches the MTP block's own file to `model` where the settings
    /// give one for `path` (ds4's layout).
    pub fn attach_mtp(&self, path: &Path, model: &mut Model) -> Result<()> {
        if !self.is_configured(path) {
            return Ok(());
        }
        if let Some(DraftSettings {
            source: DraftSource::Mtp {
                file: Some(file), ..
            },
            ..
        }) = &self.draft
        {
            model
                .attach_mtp_file(file)
                .with_context(|| format!("mtp_model {}", file.display()))?;
        }
        Ok(())
    }

    /// Speculation drafted by `model`'s MTP block.
    fn mtp_speculation(&self, model: Arc<Model>, ctx_size: usize) -> Result<Speculation> {
        let drafter = MtpDrafter::new(model, ctx_size).context("MTP drafting")?;
        let spec = self.spec_of(Box::new(drafter));
        tracing::info!(
            "speculative decoding: the model's MTP block drafts up to {} tokens a step",
            spec.max_tokens
        );
        Ok(spec)
    }
}

/// `s`, drafting with `spec` where there is one.
fn with_spec<B: scheduler::Backend>(s: Scheduler<B>, spec: Option<Speculation>) -> Scheduler<B> {
    match spec {
        Some(spec) => s.with_speculation(spec),
        None => s,
    }
}

/// `eog[id]`: whether token `id` ends generation.
pub(crate) fn eog_table(tok: &Tokenizer, n_vocab: usize) -> Vec<bool> {
    (0..n_vocab).map(|id| tok.is_eog(id as u32)).collect()
}
