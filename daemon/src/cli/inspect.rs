//! `dwarfstar inspect`: what a GGUF file holds — architecture, metadata,
//! tensors with types and sizes, bytes by tensor class, and the bytes one
//! decoded token reads.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use dwarfstar_gguf::{GgufFile, TensorInfo};
use dwarfstar_model::Model;
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

/// The class a tensor's bytes are counted under.
pub fn tensor_class(name: &str) -> &'static str {
    if name.contains("_exps") {
        "routed_experts"
    } else if name.contains("_shexp") {
        "shared_experts"
    } else if name.starts_with("token_embd") || name.starts_with("output.") {
        "embeddings"
    } else if name.contains("attn") {
        "attention"
    } else {
        "other"
    }
}

#[derive(Default, Clone, Copy)]
struct ClassTotals {
    bytes: u64,
    params: u64,
}

fn n_params(t: &TensorInfo) -> u64 {
    t.dims.iter().product()
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
    let mut classes: BTreeMap<&'static str, ClassTotals> = BTreeMap::new();
    for c in [
        "routed_experts",
        "shared_experts",
        "attention",
        "embeddings",
        "other",
    ] {
        classes.insert(c, ClassTotals::default());
    }
    let mut total = ClassTotals::default();
    for t in file.tensors() {
        let c = classes.entry(tensor_class(&t.name)).or_default();
        c.bytes += t.n_bytes;
        c.params += n_params(t);
        total.bytes += t.n_bytes;
        total.params += n_params(t);
    }
    // Bytes read per decoded token: every weight once, except the
    // embedding table, of which one row is read (unless it doubles as the
    // output head).
    let tied = file.tensor("output.weight").is_none();
    let mut per_token = 0u64;
    for t in file.tensors() {
        if t.name == "token_embd.weight" && !tied {
            per_token += t.n_bytes / t.dims.get(1).copied().unwrap_or(1).max(1);
        } else {
            per_token += t.n_bytes;
        }
    }
    let file = std::sync::Arc::new(file);
    let (kv_per_token, model_err) = match Model::load(file.clone()) {
        Ok(m) => (Some(m.kv_bytes_per_token()), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let bpw = |c: &ClassTotals| {
        if c.params == 0 {
            0.0
        } else {
            c.bytes as f64 * 8.0 / c.params as f64
        }
    };
    if a.json {
        let tensors: Vec<_> = file
            .tensors()
            .iter()
            .map(|t| json!({"name": t.name, "type": t.ty.name(), "dims": t.dims, "bytes": t.n_bytes}))
            .collect();
        let cls: serde_json::Map<String, serde_json::Value> = classes
            .iter()
            .map(|(k, c)| {
                (
                    k.to_string(),
                    json!({"bytes": c.bytes, "params": c.params, "bits_per_weight": bpw(c)}),
                )
            })
            .collect();
        let obj = json!({
            "architecture": arch,
            "name": file.opt_str("general.name").ok().flatten(),
            "gguf_version": file.version(),
            "tensor_count": file.tensors().len(),
            "params": total.params,
            "weight_bytes": total.bytes,
            "bits_per_weight": bpw(&total),
            "classes": cls,
            "weight_bytes_per_token": per_token,
            "kv_bytes_per_token": kv_per_token,
            "model_error": model_err,
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
        bpw(&total)
    );
    println!("bytes/token:   {per_token} weight bytes read per decoded token");
    match (kv_per_token, &model_err) {
        (Some(kv), _) => println!("KV/token:      {kv} bytes (f32 cache)"),
        (None, Some(e)) => println!("model:         cannot run: {e}"),
        _ => {}
    }
    println!("classes:");
    for (k, c) in &classes {
        if c.params > 0 {
            println!(
                "  {k:<15} {:>12} bytes {:>12} params {:>6.2} bits/weight",
                c.bytes,
                c.params,
                bpw(c)
            );
        }
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
