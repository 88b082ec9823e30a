//! [`LocalNode`]: the single-machine [`NodeApi`] — one node that holds the
//! whole model `dwarfstar serve` loaded, so `meshctl` works against one
//! daemon before (and without) a mesh. Generate runs the same
//! [`dwarfstar_model::generate::generate`] as `dwarfstar run` and ends with
//! the same JSON object (`cli::run::json_output`), so outputs compare token
//! for token.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use dwarfstar_model::generate::{generate, FinishReason, GenerateParams};
use dwarfstar_model::{Model, SamplerConfig, SeqState};
use dwarfstar_proto::v1::{
    generate_event, Addresses, Assignment, Capabilities, DType, Done, GenerateEvent,
    GenerateRequest, LoadReply, LoadRequest, ModelInfo, NodeState, NodeStatus, PeerInfo,
    PeersReply, Plan, PlanReply, PlanRequest, Role, Stage, StatusReply, Token,
};
use tokio::sync::Semaphore;

use super::backend::DistBackend;
use super::grpc::{ApiError, EventStream, NodeApi};
use crate::cli::run::{encode_prompt, json_output};
use crate::serve::metrics::Metrics;
use crate::serve::scheduler::Backend;

/// The scheduler runs on a shared model so gRPC generations can use it too.
impl Backend for Arc<Model> {
    type State = SeqState;

    fn new_state(&self, capacity: usize) -> SeqState {
        <Model as Backend>::new_state(self, capacity)
    }

    fn state_len(&self, s: &SeqState) -> usize {
        <Model as Backend>::state_len(self, s)
    }

    fn truncate(&self, s: &mut SeqState, len: usize) {
        <Model as Backend>::truncate(self, s, len)
    }

    fn clone_state(&self, s: &SeqState) -> SeqState {
        <Model as Backend>::clone_state(self, s)
    }

    fn kept_by_truncate(&self, s: &SeqState, len: usize) -> usize {
        s.kept_by_truncate(len)
    }

    fn cuts_anywhere(&self) -> bool {
        self.capabilities().cuts_anywhere
    }

    fn cuts_last_pass(&self) -> bool {
        self.capabilities().cuts_last_pass
    }

    fn compact(&self, s: &mut SeqState) {
        <Model as Backend>::compact(self, s)
    }

    fn state_bytes(&self, s: &SeqState) -> usize {
        <Model as Backend>::state_bytes(self, s)
    }

    fn forward_batch(
        &self,
        items: &mut [(&[u32], &mut SeqState, bool)],
    ) -> Result<Vec<Vec<f32>>, String> {
        <Model as Backend>::forward_batch(self, items)
    }

    fn hidden<'a>(&self, s: &'a SeqState) -> Option<(usize, &'a [f32])> {
        <Model as Backend>::hidden(self, s)
    }

    fn final_rows(&self, items: &mut [(&[u32], &mut SeqState)]) -> Result<Vec<Vec<f32>>, String> {
        <Model as Backend>::final_rows(self, items)
    }
}

/// What a [`LocalNode`] is built from.
pub struct LocalConfig {
    /// The node's id in answers ("local" without a mesh).
    pub id: String,
    pub model: Arc<Model>,
    pub tokenizer: Arc<dwarfstar_tokenizer::Tokenizer>,
    pub model_path: PathBuf,
    /// The id HTTP clients use (file name without `.gguf` by default).
    pub served_name: String,
    /// Positions a sequence may hold.
    pub ctx_size: usize,
    /// gRPC generations run at once (more wait).
    pub max_concurrent: usize,
    pub metrics: Arc<Metrics>,
    pub grpc_addr: String,
    pub http_addr: String,
    /// On a mesh coordinator: generations run through the plan's pipeline
    /// (the same one the HTTP API's scheduler drives), not the local model.
    pub pipeline: Option<Arc<std::sync::RwLock<DistBackend>>>,
}

/// One node that holds the whole model. See the module doc.
pub struct LocalNode {
    cfg: LocalConfig,
    /// `ModelInfo.name`: the file name.
    file_name: String,
    file_size: u64,
    slots: Arc<Semaphore>,
    active: Arc<AtomicUsize>,
}

/// `dwarfstar run`'s defaults for fields a request leaves unset.
const DEFAULT_N: u32 = 128;
const DEFAULT_TEMP: f32 = 0.8;
const DEFAULT_TOP_K: u32 = 40;
const DEFAULT_TOP_P: f32 = 0.95;
const DEFAULT_MIN_P: f32 = 0.05;
const DEFAULT_REPEAT_PENALTY: f32 = 1.0;
const DEFAULT_REPEAT_LAST_N: u32 = 64;

/// A validated generation.
struct Job {
    prompt: Vec<u32>,
    params: GenerateParams,
    /// The top-K the client asked for (the run asks for at least 1 so the
    /// callback can tell token steps from the final flush).
    logits: usize,
}

impl LocalNode {
    /// What the served model's weight store holds and read.
    pub fn store_stats(&self) -> dwarfstar_model::store::StoreStats {
        self.cfg.model.store_stats()
    }

    pub fn new(cfg: LocalConfig) -> Self {
        let file_name = file_name(&cfg.model_path);
        let file_size = std::fs::metadata(&cfg.model_path).map_or(0, |m| m.len());
        let slots = Arc::new(Semaphore::new(cfg.max_concurrent.max(1)));
        LocalNode {
            cfg,
            file_name,
            file_size,
            slots,
            active: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn addresses(&self) -> Addresses {
        Addresses {
            grpc: self.cfg.grpc_addr.clone(),
            http: self.cfg.http_addr.clone(),
            quic: String::new(),
            libp2p: Vec::new(),
        }
    }

    /// A plan for `model`: one stage holding everything.
    fn plan_for(&self, model: &str, n_layer: u32) -> Plan {
        Plan {
            version: 1,
            model: model.to_string(),
            coordinator: self.cfg.id.clone(),
            stages: vec![Stage {
                node: self.cfg.id.clone(),
                layer_start: 0,
                layer_end: n_layer,
                holds_embed: true,
                holds_output: true,
            }],
            experts: Vec::new(),
            activation_dtype: DType::F32 as i32,
            predicted_tokens_per_s: 0.0,
            predicted_paging: Vec::new(),
            n_layer,
        }
    }

    /// The plan in force: one stage holding everything.
    pub(crate) fn current_plan(&self) -> Plan {
        self.plan_for(&self.file_name, self.cfg.model.n_layer() as u32)
    }

    /// Finds `name` as a path, in `$DWARFSTAR_MODELS_DIR` (default
    /// `./models`) or beside the loaded model, with or without `.gguf`.
    pub(crate) fn resolve_model(&self, name: &str) -> Result<PathBuf, ApiError> {
        let name = name.trim();
        if name.is_empty() || self.is_loaded_name(name) {
            return Ok(self.cfg.model_path.clone());
        }
        let dirs: Vec<PathBuf> = [
            std::env::var_os("DWARFSTAR_MODELS_DIR")
                .map(PathBuf::from)
                .or_else(|| Some(PathBuf::from("models"))),
            self.cfg.model_path.parent().map(Path::to_path_buf),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut tries = vec![PathBuf::from(name)];
        for d in &dirs {
            tries.push(d.join(name));
            tries.push(d.join(format!("{name}.gguf")));
        }
        tries.into_iter().find(|p| p.is_file()).ok_or_else(|| {
            ApiError::NotFound(format!(
                "model {name:?} not found (looked for the path, and in {})",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    fn is_loaded_name(&self, name: &str) -> bool {
        name == self.file_name || name == self.cfg.served_name
    }

    pub(crate) fn is_loaded_path(&self, p: &Path) -> bool {
        crate::serve::engine::same_file(p, &self.cfg.model_path)
    }

    /// One node runs one stage; `stages` beyond that can't be honoured.
    pub(crate) fn check_stages(stages: Option<u32>) -> Result<(), ApiError> {
        match stages {
            Some(0) => Err(ApiError::InvalidArgument(
                "stages must be at least 1".into(),
            )),
            Some(s) if s > 1 => Err(ApiError::FailedPrecondition(format!(
                "{s} stages asked, but this node has no peers: a single node runs 1 stage"
            ))),
            _ => Ok(()),
        }
    }

    fn check_job(&self, r: GenerateRequest) -> Result<Job, ApiError> {
        let bad = |m: String| Err(ApiError::InvalidArgument(m));
        let tok = &self.cfg.tokenizer;
        if r.system.is_some() && !r.chat {
            return bad("system needs chat".into());
        }
        let prompt = match (&r.prompt, r.prompt_ids.is_empty()) {
            (Some(_), false) => return bad("give prompt or prompt_ids, not both".into()),
            (None, true) => return bad("give prompt or prompt_ids".into()),
            (Some(text), true) => encode_prompt(tok, text, r.chat, r.system.as_deref())
                .map_err(|e| ApiError::InvalidArgument(format!("prompt: {e:#}")))?,
            (None, false) => {
                if r.chat {
                    return bad("chat needs a text prompt, not prompt_ids".into());
                }
                r.prompt_ids.clone()
            }
        };
        if prompt.is_empty() {
            return bad("the prompt has no tokens".into());
        }
        let n_vocab = self.cfg.model.n_vocab();
        if let Some(&id) = prompt.iter().find(|&&id| id as usize >= n_vocab) {
            return bad(format!(
                "token id {id} is out of range: the vocabulary has {n_vocab} tokens"
            ));
        }
        let n = r.n.unwrap_or(DEFAULT_N) as usize;
        if prompt.len() + n > self.cfg.ctx_size {
            return Err(ApiError::ResourceExhausted(format!(
                "{} prompt tokens + {n} to generate exceed this node's context of {} positions",
                prompt.len(),
                self.cfg.ctx_size
            )));
        }
        let temp = r.temp.unwrap_or(DEFAULT_TEMP);
        let top_p = r.top_p.unwrap_or(DEFAULT_TOP_P);
        let min_p = r.min_p.unwrap_or(DEFAULT_MIN_P);
        let repeat_penalty = r.repeat_penalty.unwrap_or(DEFAULT_REPEAT_PENALTY);
        if !(temp.is_finite() && temp >= 0.0) {
            return bad(format!("temp must be a number >= 0, not {temp}"));
        }
        for (name, v) in [("top_p", top_p), ("min_p", min_p)] {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!("{name} must be within 0..=1, not {v}"));
            }
        }
        if !(repeat_penalty.is_finite() && repeat_penalty > 0.0) {
            return bad(format!(
                "repeat_penalty must be a number > 0, not {repeat_penalty}"
            ));
        }
        let logits = r.logits as usize;
        if logits > n_vocab {
            return bad(format!(
                "logits asks for the top {logits}, but the vocabulary has {n_vocab} tokens"
            ));
        }
        let seed = r.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        Ok(Job {
            prompt,
            params: GenerateParams {
                max_tokens: n,
                sampler: SamplerConfig {
                    temperature: temp,
                    top_k: r.top_k.unwrap_or(DEFAULT_TOP_K) as usize,
                    top_p,
                    min_p,
                    repeat_penalty,
                    repeat_last_n: r.repeat_last_n.unwrap_or(DEFAULT_REPEAT_LAST_N) as usize,
                    seed,
                },
                ignore_eos: r.ignore_eos,
                stop: r.stop,
                top_logits: logits.max(1),
            },
            logits,
        })
    }
}

/// Runs `job` to the end on the calling (kernel pool) thread, sending events.
fn run_job(
    model: &Model,
    pipeline: Option<&DistBackend>,
    tok: &dwarfstar_tokenizer::Tokenizer,
    job: Job,
    tx: &tokio::sync::mpsc::UnboundedSender<Result<GenerateEvent, ApiError>>,
) -> Result<Done, ApiError> {
    let capacity = job.prompt.len() + job.params.max_tokens + 1;
    let mut index = 0u32;
    let mut tail = String::new();
    let on_step = |step: &dwarfstar_model::generate::Step| {
        if tx.is_closed() {
            return false; // the client is gone
        }
        if step.top.is_empty() {
            // Only the final flush has no distribution (top_logits >= 1).
            tail.push_str(&step.text);
            return true;
        }
        let ev = generate_event::Event::Token(Token {
            index,
            id: step.token,
            text: step.text.clone(),
        });
        index += 1;
        tx.send(Ok(GenerateEvent { event: Some(ev) })).is_ok()
    };
    let g = match pipeline {
        Some(p) => {
            let mut state = Backend::new_state(p, capacity);
            generate(p, tok, &mut state, &job.prompt, &job.params, on_step)
        }
        None => {
            let mut state = model.new_state(capacity);
            generate(model, tok, &mut state, &job.prompt, &job.params, on_step)
        }
    }
    .map_err(|e| ApiError::Internal(format!("generation failed: {e}")))?;
    let stop_reason = match g.finish {
        FinishReason::Length => "length",
        FinishReason::Stop => "stop",
        FinishReason::Cancelled => "cancelled",
    };
    Ok(Done {
        json: json_output(&job.prompt, &g, job.logits).to_string(),
        n_prompt: g.n_prompt as u32,
        n_generated: g.tokens.len() as u32,
        stop_reason: stop_reason.into(),
        prefill_s: g.prefill_s,
        decode_s: g.decode_s,
        tail,
    })
}

#[tonic::async_trait]
impl NodeApi for LocalNode {
    async fn status(&self) -> Result<StatusReply, ApiError> {
        let (total, _) = meminfo();
        let plan = self.current_plan();
        let busy = self.cfg.metrics.active.load(Relaxed) + self.active.load(Relaxed);
        let node = NodeStatus {
            id: self.cfg.id.clone(),
            name: host_name(),
            addresses: Some(self.addresses()),
            roles: vec![Role::Coordinator as i32, Role::Stage as i32],
            assignment: Some(Assignment {
                stages: plan.stages.clone(),
                experts: plan.experts.clone(),
            }),
            mem_used: self.file_size + self.cfg.metrics.prefix_bytes.load(Relaxed) as u64,
            mem_budget: total,
            state: NodeState::Ready as i32,
            state_detail: String::new(),
            model: self.file_name.clone(),
            plan_version: plan.version,
            active_requests: busy as u32,
            local: true,
            version: env!("CARGO_PKG_VERSION").into(),
            traffic: Some(super::traffic::snapshot()),
            paging: Some(super::paging::to_proto(&self.cfg.model.store_stats())),
            speculation: Some(self.cfg.metrics.speculation()),
        };
        Ok(StatusReply {
            node_id: self.cfg.id.clone(),
            nodes: vec![node],
            model: self.file_name.clone(),
            plan_version: plan.version,
        })
    }

    async fn peers(&self) -> Result<PeersReply, ApiError> {
        let (total, available) = meminfo();
        let caps = Capabilities {
            id: self.cfg.id.clone(),
            mem_budget: total,
            free_ram: available,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()) as u32,
            matmul_gflops: 0.0,
            mem_bw_gbs: 0.0,
            disk_read_gbs: 0.0,
            models: vec![ModelInfo {
                name: self.file_name.clone(),
                size: self.file_size,
                sha256: String::new(),
                blake3: String::new(),
                arch: self.cfg.model.arch().to_string(),
            }],
            addresses: Some(self.addresses()),
            version: env!("CARGO_PKG_VERSION").into(),
            protocol_version: dwarfstar_proto::PROTOCOL_VERSION,
            name: host_name(),
        };
        Ok(PeersReply {
            peers: vec![PeerInfo {
                id: self.cfg.id.clone(),
                local: true,
                capabilities: Some(caps),
                connected: true,
                latency_s: 0.0,
                bandwidth_bps: 0.0,
                discovered_by: "local".into(),
                last_seen_unix_ms: 0,
            }],
        })
    }

    async fn plan(&self, req: PlanRequest) -> Result<PlanReply, ApiError> {
        if !req.preview {
            return Ok(PlanReply {
                plan: Some(self.current_plan()),
                applied: true,
            });
        }
        Self::check_stages(req.stages)?;
        let path = self.resolve_model(&req.model)?;
        let plan = if self.is_loaded_path(&path) {
            self.current_plan()
        } else {
            let name = file_name(&path);
            let n_layer = tokio::task::spawn_blocking(move || block_count(&path))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))??;
            self.plan_for(&name, n_layer)
        };
        Ok(PlanReply {
            plan: Some(plan),
            applied: false,
        })
    }

    /// The model this node serves already: unchanged. Another one is
    /// [`super::lone::LoneNode`]'s to swap in.
    async fn load_model(&self, req: LoadRequest) -> Result<LoadReply, ApiError> {
        Self::check_stages(req.stages)?;
        let path = self.resolve_model(&req.model)?;
        if !self.is_loaded_path(&path) {
            return Err(ApiError::FailedPrecondition(format!(
                "this engine serves {}, not {}",
                self.file_name,
                path.display()
            )));
        }
        Ok(LoadReply {
            plan: Some(self.current_plan()),
            model: self.file_name.clone(),
            load_ms: 0,
            unchanged: true,
        })
    }

    async fn generate(&self, req: GenerateRequest) -> Result<EventStream, ApiError> {
        let job = self.check_job(req)?;
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Unavailable("the node is shutting down".into()))?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let model = self.cfg.model.clone();
        let pipeline = self
            .cfg
            .pipeline
            .as_ref()
            .map(|p| p.read().unwrap_or_else(|e| e.into_inner()).clone());
        let tok = self.cfg.tokenizer.clone();
        let active = self.active.clone();
        active.fetch_add(1, Relaxed);
        // On a kernel-pool worker, as `dwarfstar run` generates: the
        // matmuls fork there instead of waking the pool from outside.
        rayon::spawn(move || {
            let _permit = permit;
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                run_job(&model, pipeline.as_ref(), &tok, job, &tx)
            }))
            .unwrap_or_else(|_| Err(ApiError::Internal("generation panicked".into())));
            let ev = r.map(|done| GenerateEvent {
                event: Some(generate_event::Event::Done(done)),
            });
            let _ = tx.send(ev);
            active.fetch_sub(1, Relaxed);
        });
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|ev| (ev, rx)) },
            );
        Ok(Box::pin(stream))
    }
}

/// The last path component, lossy.
pub(crate) fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `{arch}.block_count` of a GGUF file (its number of layers).
fn block_count(path: &Path) -> Result<u32, ApiError> {
    let bad = |e: String| ApiError::InvalidArgument(format!("{}: {e}", path.display()));
    let f = dwarfstar_gguf::GgufFile::open(path).map_err(|e| bad(e.to_string()))?;
    let m = f.metadata();
    let arch = m
        .get_str("general.architecture")
        .map_err(|e| bad(e.to_string()))?;
    m.get_u32(&format!("{arch}.block_count"))
        .map_err(|e| bad(e.to_string()))
}

/// (MemTotal, MemAvailable) in bytes from /proc/meminfo; zeros elsewhere.
fn meminfo() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// The machine's host name, or "" when unknown.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default()
}
