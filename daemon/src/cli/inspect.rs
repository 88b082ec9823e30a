//! `dwarfstar inspect`: what a GGUF file holds — architecture, metadata,
//! tensors with types and sizes, bytes and bits per weight by tensor class,
//! the model's shape as the planner sees it (per layer: dense, shared-expert
//! and routed-expert bytes, expert counts, KV bytes), the KV bytes a
//! position costs, the weight bytes one decoded token reads, and what the
//! architecture supports (paging, pipeline stages, expert parallelism, KV
//! cache types, KV files).
//!
//! Classes and the per-layer split come from `dwarfstar_model::shape`
//! (see its doc for which tensor goes where).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use dwarfstar_gguf::{GgufFile, TensorInfo};
use dwarfstar_model::shape::{model_shape, tensor_class, LayerShape, ModelShape, TensorClass};
use dwarfstar_model::{Capabilities, Model};
use serde_json::json;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Path to a GGUF model file (also accepted as the first argument).
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// The model path, positionally.
    #[arg(conflicts_with = "model")]
    pub path: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// List every tensor in the text output too.
    #[arg(long)]
    pub tensors: bool,
}

#[derive(Default, Clone, Copy)]
struct ClassTotals {
    bytes: u64,
    params: u64,
}

impl ClassTotals {
    fn add(&mut self, t: &TensorInfo) {
        self.bytes += t.n_bytes;
        self.params += t.n_elements();
    }

    fn bpw(&self) -> f64 {
        if self.params == 0 {
            0.0
        } else {
            self.bytes as f64 * 8.0 / self.params as f64
        }
    }
}

/// One row of the per-layer table.
fn layer_json(il: usize, l: &LayerShape) -> serde_json::Value {
    json!({
        "layer": il,
        "dense_bytes": l.dense_bytes,
        "shared_expert_bytes": l.shared_expert_bytes,
        "routed_expert_bytes": l.n_experts as u64 * l.expert_bytes,
        "n_experts": l.n_experts,
        "n_experts_used": l.n_experts_used,
        "expert_bytes": l.expert_bytes,
        "bytes": l.total_bytes(),
        "active_bytes": l.dense_bytes + l.shared_expert_bytes + l.n_experts_used as u64 * l.expert_bytes,
        "kv_bytes_per_token": l.kv_bytes_per_token,
        "kv_fixed_bytes": l.kv_fixed_bytes,
    })
}

pub fn run(a: InspectArgs) -> Result<()> {
    let path = a
        .model
        .or(a.path)
        .context("give the model path (--model PATH)")?;
    let file = GgufFile::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let arch = file
        .get_str("general.architecture")
        .unwrap_or("?")
        .to_string();
    let mut classes: BTreeMap<TensorClass, ClassTotals> = TensorClass::ALL
        .iter()
        .map(|&c| (c, ClassTotals::default()))
        .collect();
    let mut total = ClassTotals::default();
    for t in file.tensors() {
        classes.entry(tensor_class(&t.name)).or_default().add(t);
        total.add(t);
    }
    let (shape, shape_err) = match model_shape(&file) {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let file = std::sync::Arc::new(file);
    let (model_kv, caps, v4, model_err) = match Model::load(file.clone()) {
        Ok(m) => (
            Some(m.kv_bytes_per_token() as u64),
            Some(m.capabilities()),
            v4_json(&m),
            None,
        ),
        Err(e) => (None, None, None, Some(e.to_string())),
    };
    let kv_per_token = shape.as_ref().map(|s| s.kv_bytes_per_token).or(model_kv);
    let active = shape.as_ref().map(|s| s.active_bytes_per_token);
    if a.json {
        let tensors: Vec<_> = file
            .tensors()
            .iter()
            .map(|t| {
                json!({"name": t.name, "type": t.ty.name(), "dims": t.dims, "bytes": t.n_bytes,
                       "class": tensor_class(&t.name).as_str()})
            })
            .collect();
        let cls: serde_json::Map<String, serde_json::Value> = classes
            .iter()
            .map(|(k, c)| {
                (
                    k.as_str().to_string(),
                    json!({"bytes": c.bytes, "params": c.params, "bits_per_weight": c.bpw()}),
                )
            })
            .collect();
        let layers: Option<Vec<_>> = shape.as_ref().map(|s| {
            s.layers
                .iter()
                .enumerate()
                .map(|(i, l)| layer_json(i, l))
                .collect()
        });
        let obj = json!({
            "architecture": arch,
            "name": file.opt_str("general.name").ok().flatten(),
            "gguf_version": file.version(),
            "tensor_count": file.tensors().len(),
            "params": total.params,
            "weight_bytes": total.bytes,
            "bits_per_weight": total.bpw(),
            "classes": cls,
            // Kept under its first name: the weight bytes a decoded token reads.
            "weight_bytes_per_token": active,
            "active_bytes_per_token": active,
            "kv_bytes_per_token": kv_per_token,
            "layers": layers,
            "shape": shape,
            "shape_error": shape_err,
            "model_error": model_err,
            "capabilities": caps.as_ref().map(caps_json),
            "deepseek4": v4,
            "tensors": tensors,
        });
        println!("{}", serde_json::to_string_pretty(&obj)?);
        return Ok(());
    }
    println!("file:          {}", path.display());
    println!("architecture:  {arch}");
    if let Ok(Some(name)) = file.opt_str("general.name") {
        println!("name:          {name}");
    }
    println!("GGUF version:  {}", file.version());
    println!(
        "parameters:    {} ({:.2} M), {} tensors, {:.1} MiB, {:.2} bits/weight",
        total.params,
        total.params as f64 / 1e6,
        file.tensors().len(),
        total.bytes as f64 / 1048576.0,
        total.bpw()
    );
    if let Some(b) = active {
        println!(
            "bytes/token:   {b} weight bytes read per decoded token ({:.1} MiB)",
            b as f64 / 1048576.0
        );
    }
    if let Some(kv) = kv_per_token {
        println!("KV/token:      {kv} bytes");
    }
    if let Some(e) = &model_err {
        println!("model:         cannot run: {e}");
    }
    if let Some(c) = &caps {
        let kv: Vec<&str> = c.kv_types.iter().map(|t| t.name()).collect();
        println!(
            "capabilities:  paging {}, stages {}, expert_parallel {}, kv_save {}, cuts_anywhere {}, cuts_last_pass {}, kv_types {}",
            c.paging,
            c.stages,
            c.expert_parallel,
            c.kv_save,
            c.cuts_anywhere,
            c.cuts_last_pass,
            kv.join(",")
        );
    }
    if let Some(e) = &shape_err {
        println!("shape:         unavailable: {e}");
    }
    println!("classes:");
    for (k, c) in &classes {
        if c.params > 0 {
            println!(
                "  {:<15} {:>14} bytes {:>14} params {:>6.2} bits/weight",
                k.as_str(),
                c.bytes,
                c.params,
                c.bpw()
            );
        }
    }
    if let Some(s) = &shape {
        print_layers(s);
    }
    let mut types: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for t in file.tensors() {
        let e = types.entry(t.ty.name().to_string()).or_default();
        e.0 += 1;
        e.1 += t.n_bytes;
    }
    println!("types:");
    for (ty, (n, b)) in &types {
        println!(
            "  {ty:<8} {n:>5} tensors {:>10.2} MiB",
            *b as f64 / 1048576.0
        );
    }
    if a.tensors {
        println!("tensors:");
        for t in file.tensors() {
            println!(
                "  {:<40} {:<8} {:?} {} bytes",
                t.name,
                t.ty.name(),
                t.dims,
                t.n_bytes
            );
        }
    }
    Ok(())
}

/// What the architecture supports, as `--json` reports it.
/// A DeepSeek V4 model's structure: per-block compression ratios (the MTP
/// block's last), hash-routed layers, hyper-connection streams, window,
/// and whether the file holds the MTP block.
fn v4_json(m: &Model) -> Option<serde_json::Value> {
    let Model::Deepseek4(m) = m else {
        return None;
    };
    let hp = &m.hp;
    Some(json!({
        "compress_ratios": hp.kinds.iter().map(|k| k.ratio()).collect::<Vec<_>>(),
        "hash_layers": hp.n_hash,
        "hc_mult": hp.hc_mult,
        "sliding_window": hp.n_swa,
        "indexer_heads": hp.idx_heads,
        "mtp": m.w.mtp.is_some(),
    }))
}

fn caps_json(c: &Capabilities) -> serde_json::Value {
    let kv: Vec<&str> = c.kv_types.iter().map(|t| t.name()).collect();
    json!({
        "paging": c.paging,
        "stages": c.stages,
        "expert_parallel": c.expert_parallel,
        "kv_types": kv,
        "kv_save": c.kv_save,
        "cuts_anywhere": c.cuts_anywhere,
        "cuts_last_pass": c.cuts_last_pass,
    })
}

/// The per-layer table; runs of identical layers print as one row.
fn print_layers(s: &ModelShape) {
    println!(
        "layers:        {} (embedding {} bytes, output {} bytes{}{})",
        s.n_layer,
        s.embed_bytes,
        s.output_bytes,
        if s.tied_embeddings {
            ", tied: the output is the embedding table"
        } else {
            ""
        },
        if s.unused_bytes > 0 {
            format!(", {} bytes in blocks not run", s.unused_bytes)
        } else {
            String::new()
        }
    );
    println!(
        "  {:<10} {:>13} {:>13} {:>15} {:>9} {:>12} {:>10}",
        "layers", "dense", "shared exp", "routed exp", "experts", "expert", "KV/token"
    );
    let mut i = 0;
    while i < s.layers.len() {
        let l = &s.layers[i];
        let mut j = i + 1;
        while j < s.layers.len() && s.layers[j] == *l {
            j += 1;
        }
        let range = if j - i == 1 {
            format!("{i}")
        } else {
            format!("{i}..{j}")
        };
        let experts = if l.n_experts > 0 {
            format!("{}/{}", l.n_experts_used, l.n_experts)
        } else {
            "-".to_string()
        };
        println!(
            "  {range:<10} {:>13} {:>13} {:>15} {experts:>9} {:>12} {:>10}",
            l.dense_bytes,
            l.shared_expert_bytes,
            l.n_experts as u64 * l.expert_bytes,
            l.expert_bytes,
            l.kv_bytes_per_token
        );
        i = j;
    }
}
