//! Synthetic MoE GGUFs with realistic shapes, for testing and benchmarking
//! what needs a big MoE model without downloading one.
//!
//! [`write_any`] writes either architecture; [`ds4`] makes `deepseek4`
//! (DeepSeek V4 Flash) files. [`write`] produces a `deepseek2` file exactly as llama.cpp's converter
//! lays one out — MLA tensors (`attn_q_a`/`attn_q_b`, `attn_kv_a_mqa`,
//! split `attn_k_b`/`attn_v_b`), leading dense layers, one shared expert,
//! routed experts stacked as `ffn_{gate,up,down}_exps`, the `exp_probs_b`
//! selection bias with sigmoid gating (V3's noaux_tc), V3's YaRN — with
//! the real tokenizer of another GGUF copied in (SmolLM2's, in the tools
//! and tests). Random weights are scaled so activations stay sane through
//! any depth, and the selection bias makes expert popularity Zipf-like
//! ([`fill::bias`]). Data is streamed through `GgufWriter` in bounded
//! memory.
//!
//! - [`config`]: the request and the tensor list's entries, shared;
//! - [`plan`]: dims from a target size, the tensor list;
//! - [`ds4`]: the same for `deepseek4`;
//! - [`ladder`]: a target size to a width and a layer count, for both;
//! - [`fill`]: the deterministic values (pools of pre-quantized chunks),
//!   streamed by both architectures' writers through one loop;
//! - [`probe`]: counts which experts a model's router picks on a prompt.

pub mod config;
pub mod ds4;
pub mod fill;
pub mod ladder;
pub mod plan;
pub mod probe;

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use dwarfstar_gguf::{GgufError, GgufFile, GgufWriter, Value};
use dwarfstar_kernels::{GgmlType, KernelError};

pub use config::{Fill, SynthConfig, TensorPlan};
pub use plan::SynthPlan;

/// The default architecture (DeepSeek V2/V3 layout).
pub const ARCH: &str = "deepseek2";

/// Bytes generated per write (bounds the memory used).
const BUF_BYTES: usize = 16 << 20;

/// What can go wrong generating a file.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

/// What [`write`] (or [`ds4::write`], with its plan) made, and how fast.
#[derive(Clone, Debug)]
pub struct SynthReport<P = SynthPlan> {
    pub plan: P,
    /// Bytes of the whole file.
    pub bytes: u64,
    /// Seconds spent quantizing the pools.
    pub pool_s: f64,
    /// Seconds in total.
    pub total_s: f64,
}

/// `general.file_type` (llama.cpp's `llama_ftype`) of a file mostly of `ty`.
pub(crate) fn file_type(ty: GgmlType) -> u32 {
    use GgmlType::*;
    match ty {
        F32 => 0,
        F16 => 1,
        Q4_0 => 2,
        Q4_1 => 3,
        Q8_0 => 7,
        Q5_0 => 8,
        Q5_1 => 9,
        Q2_K => 10,
        Q3_K => 12,
        Q4_K => 15,
        Q5_K => 17,
        Q6_K => 18,
        IQ2_XXS => 19,
        IQ2_XS => 20,
        IQ3_XXS => 23,
        IQ1_S => 24,
        IQ4_NL => 25,
        IQ3_S => 26,
        IQ2_S => 28,
        IQ4_XS => 30,
        IQ1_M => 31,
        BF16 => 32,
        TQ1_0 => 36,
        TQ2_0 => 37,
        MXFP4 => 38,
        _ => 0,
    }
}

/// The vocabulary size of the tokenizer in `tok`.
pub fn vocab_size(tok: &GgufFile) -> Result<usize, SynthError> {
    Ok(tok.get_str_array("tokenizer.ggml.tokens")?.len())
}

/// The `general.*` keys every synthetic file starts with: its
/// architecture, a name with the seed, and llama.cpp's size label
/// (`{experts}x{params of one expert}M-A{active params}B`).
fn general(
    w: &mut GgufWriter,
    arch: &str,
    seed: u64,
    n_expert: usize,
    expert_params: u64,
    active: u64,
) -> Result<(), SynthError> {
    w.add_kv("general.architecture", arch)?;
    w.add_kv("general.type", "model")?;
    w.add_kv(
        "general.name",
        format!("DwarfStar synthetic {arch} (seed {seed})"),
    )?;
    w.add_kv(
        "general.size_label",
        format!(
            "{n_expert}x{:.1}M-A{:.2}B",
            expert_params as f64 / 1e6,
            active as f64 / 1e9
        ),
    )?;
    Ok(())
}

/// The metadata of a file of `plan`, with every `tokenizer.*` key of `tok`.
fn metadata(w: &mut GgufWriter, p: &SynthPlan, tok: &GgufFile) -> Result<(), SynthError> {
    let k = |s: &str| format!("{ARCH}.{s}");
    let (all, active) = p.params();
    general(
        w,
        ARCH,
        p.seed,
        p.n_expert,
        (3 * p.hidden * p.expert_ff) as u64,
        active,
    )?;
    w.add_kv("general.description", p.describe())?;
    w.add_kv("general.parameter_count", all)?;
    w.add_kv(k("block_count"), p.n_layer as u32)?;
    w.add_kv(k("context_length"), 163840u32)?;
    w.add_kv(k("embedding_length"), p.hidden as u32)?;
    w.add_kv(k("feed_forward_length"), p.dense_ff as u32)?;
    w.add_kv(k("attention.head_count"), p.n_head as u32)?;
    w.add_kv(k("attention.head_count_kv"), 1u32)?;
    w.add_kv(k("rope.freq_base"), 10000f32)?;
    w.add_kv(k("attention.layer_norm_rms_epsilon"), 1e-6f32)?;
    w.add_kv(k("expert_count"), p.n_expert as u32)?;
    w.add_kv(k("expert_used_count"), p.top_k as u32)?;
    w.add_kv(k("expert_group_count"), p.n_group as u32)?;
    w.add_kv(k("expert_group_used_count"), p.n_group_used as u32)?;
    w.add_kv(k("expert_gating_func"), 2u32)?;
    w.add_kv(
        k("attention.key_length"),
        (p.kv_lora + plan::QK_ROPE) as u32,
    )?;
    w.add_kv(k("attention.value_length"), p.kv_lora as u32)?;
    w.add_kv(k("leading_dense_block_count"), p.n_dense as u32)?;
    w.add_kv(k("vocab_size"), p.n_vocab as u32)?;
    if p.q_lora > 0 {
        w.add_kv(k("attention.q_lora_rank"), p.q_lora as u32)?;
    }
    w.add_kv(k("attention.kv_lora_rank"), p.kv_lora as u32)?;
    w.add_kv(
        k("attention.key_length_mla"),
        (plan::QK_NOPE + plan::QK_ROPE) as u32,
    )?;
    w.add_kv(k("attention.value_length_mla"), plan::V_HEAD as u32)?;
    w.add_kv(k("expert_feed_forward_length"), p.expert_ff as u32)?;
    w.add_kv(k("expert_shared_count"), p.n_shared as u32)?;
    w.add_kv(k("expert_weights_scale"), 2.5f32)?;
    w.add_kv(k("expert_weights_norm"), true)?;
    w.add_kv(k("rope.dimension_count"), plan::QK_ROPE as u32)?;
    // DeepSeek V3's YaRN: 4k trained, extended 40x.
    w.add_kv(k("rope.scaling.type"), "yarn")?;
    w.add_kv(k("rope.scaling.factor"), 40f32)?;
    w.add_kv(k("rope.scaling.original_context_length"), 4096u32)?;
    w.add_kv(k("rope.scaling.yarn_log_multiplier"), 0.1f32)?;
    copy_tokenizer(w, tok)?;
    w.add_kv("general.quantization_version", 2u32)?;
    w.add_kv("general.file_type", Value::U32(file_type(p.ty)))?;
    Ok(())
}

/// The bytes of a tensor drawn whole (not from a pool): `v` in `ty`.
fn encode(ty: GgmlType, v: &[f32]) -> Result<Vec<u8>, SynthError> {
    if ty == GgmlType::F32 {
        return Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect());
    }
    let len = ty.row_bytes(v.len()).ok_or_else(|| {
        SynthError::Config(format!("{} values are not whole {ty} blocks", v.len()))
    })?;
    let mut out = vec![0u8; len];
    dwarfstar_kernels::quantize_row(ty, v, &mut out)?;
    Ok(out)
}

/// Streams the tensor data of `tensors` to `out`; `seed` and `skew` as in
/// the plans.
fn write_data(
    gw: &mut GgufWriter,
    out: &mut impl Write,
    seed: u64,
    skew: f32,
    tensors: &[TensorPlan],
    pools: &[fill::Pool],
) -> Result<(), SynthError> {
    let mut buf = Vec::new();
    for (ti, t) in tensors.iter().enumerate() {
        let key = seed ^ fill::mix(fill::name_key(&t.name) ^ ti as u64);
        let n = t.n_elements() as usize;
        let small: Option<Vec<f32>> = match t.fill {
            Fill::Pool { .. } => None,
            Fill::Norm => Some(fill::norm(n, key)),
            Fill::Router { sigma } => Some(fill::normal(n, sigma, key)),
            Fill::Bias => Some(fill::bias(n, skew, key)),
            Fill::Normal { mean, sigma } => Some(
                fill::normal(n, sigma, key)
                    .into_iter()
                    .map(|v| v + mean)
                    .collect(),
            ),
            Fill::HcBase { hc } => Some(fill::hc_base(hc, key)),
            Fill::HashIds { n_expert } => {
                let k = t.dims[0] as usize;
                let ids = fill::hash_ids(n / k.max(1), k, n_expert, skew, key);
                let bytes: Vec<u8> = ids.iter().flat_map(|x| x.to_le_bytes()).collect();
                gw.write_tensor_data(out, &t.name, &bytes)?;
                continue;
            }
        };
        if let Some(v) = small {
            if v.len() != n {
                return Err(SynthError::Config(format!(
                    "{}: {} values for {n} elements",
                    t.name,
                    v.len()
                )));
            }
            gw.write_tensor_data(out, &t.name, &encode(t.ty, &v)?)?;
            continue;
        }
        let Fill::Pool { sigma } = t.fill else {
            continue;
        };
        let pool = pools
            .iter()
            .find(|q| q.ty == t.ty && q.sigma == sigma)
            .ok_or_else(|| SynthError::Config(format!("no pool for {}", t.name)))?;
        let cb = pool.chunk_bytes();
        let total = t.bytes() as usize;
        let per = (BUF_BYTES / cb).max(1) * cb;
        let mut done = 0usize;
        while done < total {
            let len = per.min(total - done);
            buf.resize(len, 0);
            pool.fill(key, (done / cb) as u64, &mut buf);
            gw.write_tensor_data(out, &t.name, &buf)?;
            done += len;
        }
    }
    Ok(())
}

/// Declares `tensors` in `gw` (whose metadata is set), builds the pools
/// they draw from, and streams the whole file to `path`. Returns the
/// file's bytes and the seconds since `t0` when the pools were ready.
pub(crate) fn stream(
    path: &Path,
    mut gw: GgufWriter,
    tensors: &[TensorPlan],
    seed: u64,
    skew: f32,
    t0: Instant,
) -> Result<(u64, f64), SynthError> {
    for t in tensors {
        gw.add_tensor_info(&t.name, &t.dims, t.ty)?;
    }
    let mut kinds: Vec<(GgmlType, f32)> = Vec::new();
    for t in tensors {
        if let Fill::Pool { sigma } = t.fill {
            if !kinds.contains(&(t.ty, sigma)) {
                kinds.push((t.ty, sigma));
            }
        }
    }
    let pools = kinds
        .iter()
        .map(|&(ty, sigma)| fill::Pool::build(ty, sigma, seed))
        .collect::<Result<Vec<_>, _>>()?;
    let pool_s = t0.elapsed().as_secs_f64();

    let io = |source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(path).map_err(io)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let res = gw
        .write_header(&mut out)
        .map_err(SynthError::from)
        .and_then(|_| write_data(&mut gw, &mut out, seed, skew, tensors, &pools))
        .and_then(|_| gw.finish(&mut out).map_err(SynthError::from));
    match res {
        Err(SynthError::Gguf(GgufError::Write(source))) => return Err(io(source)),
        r => r?,
    }
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    let bytes = file.metadata().map_err(io)?.len();
    Ok((bytes, pool_s))
}

/// Copies every `tokenizer.*` key of `tok`.
pub(crate) fn copy_tokenizer(w: &mut GgufWriter, tok: &GgufFile) -> Result<(), SynthError> {
    for (key, v) in tok.metadata().iter() {
        if key.starts_with("tokenizer.") {
            w.add_kv(key, v.clone())?;
        }
    }
    Ok(())
}

/// Writes a synthetic model of `cfg` to `path`, with the tokenizer of
/// `tok` (whose vocabulary sets `n_vocab`).
pub fn write(path: &Path, cfg: &SynthConfig, tok: &GgufFile) -> Result<SynthReport, SynthError> {
    let t0 = Instant::now();
    let plan = SynthPlan::resolve(cfg, vocab_size(tok)?)?;
    let tensors = plan.tensors();
    let mut gw = GgufWriter::new(32)?;
    metadata(&mut gw, &plan, tok)?;
    let (bytes, pool_s) = stream(path, gw, &tensors, plan.seed, plan.skew, t0)?;
    Ok(SynthReport {
        plan,
        bytes,
        pool_s,
        total_s: t0.elapsed().as_secs_f64(),
    })
}

/// What [`write_any`] wrote: its plan's description, bytes and timings.
pub type AnyReport = SynthReport<String>;

/// Writes a model of `cfg.arch` (deepseek2 or deepseek4).
pub fn write_any(path: &Path, cfg: &SynthConfig, tok: &GgufFile) -> Result<AnyReport, SynthError> {
    let (plan, bytes, pool_s, total_s) = match cfg.arch.as_str() {
        ds4::ARCH => {
            let r = ds4::write(path, cfg, tok)?;
            (r.plan.describe(), r.bytes, r.pool_s, r.total_s)
        }
        _ => {
            let r = write(path, cfg, tok)?;
            (r.plan.describe(), r.bytes, r.pool_s, r.total_s)
        }
    };
    Ok(SynthReport {
        plan,
        bytes,
        pool_s,
        total_s,
    })
}
