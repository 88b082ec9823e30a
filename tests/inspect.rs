//! `dwarfstar inspect`: classes, bits per weight, the per-layer split and
//! the KV / active bytes per token, on the tiny DeepSeek V3 fixtures and
//! SmolLM2.

use std::process::Command;

use serde_json::Value;

use crate::common::*;

fn inspect(args: &[&str]) -> (Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dwarfstar"))
        .arg("inspect")
        .args(args)
        .env("DWARFSTAR_LOG", "error")
        .output()
        .expect("dwarfstar runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "inspect {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = if args.contains(&"--json") {
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    } else {
        Value::Null
    };
    (v, stdout)
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a u64: {v}"))
}

fn tiny_v3(file: &str) -> String {
    fixtures()
        .join("tiny-deepseek-v3")
        .join(file)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn tiny_deepseek_v3_layers_split_every_byte() {
    let path = tiny_v3("tiny-dsv3-q8_0.gguf");
    let (v, _) = inspect(&["--model", &path, "--json"]);
    let total = u(&v["weight_bytes"]);
    let tensor_sum: u64 = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| u(&t["bytes"]))
        .sum();
    assert_eq!(total, tensor_sum);
    // Classes cover every byte and every parameter once.
    let classes = v["classes"].as_object().unwrap();
    assert_eq!(classes.len(), 5);
    assert_eq!(classes.values().map(|c| u(&c["bytes"])).sum::<u64>(), total);
    assert_eq!(
        classes.values().map(|c| u(&c["params"])).sum::<u64>(),
        u(&v["params"])
    );
    // Per layer: dense + shared + routed = the layer; the layers, the
    // embedding and the output = the file.
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 4);
    let mut sum = 0;
    for l in layers {
        let parts =
            u(&l["dense_bytes"]) + u(&l["shared_expert_bytes"]) + u(&l["routed_expert_bytes"]);
        assert_eq!(parts, u(&l["bytes"]));
        assert_eq!(
            u(&l["routed_expert_bytes"]),
            u(&l["n_experts"]) * u(&l["expert_bytes"])
        );
        sum += parts;
    }
    let shape = &v["shape"];
    assert_eq!(
        sum + u(&shape["embed_bytes"]) + u(&shape["output_bytes"]),
        total
    );
    assert_eq!(u(&layers[0]["n_experts"]), 0);
    for l in &layers[1..] {
        assert_eq!((u(&l["n_experts"]), u(&l["n_experts_used"])), (8, 2));
    }
    // MLA latent (64) + rope key (16), f32, over 4 layers.
    assert_eq!(u(&v["kv_bytes_per_token"]), 4 * 80 * 4);
    // A token reads 2 of 8 experts and one embedding row (256 Q8_0
    // weights) besides every other byte.
    let active = u(&v["active_bytes_per_token"]);
    let routed = u(&classes["routed_experts"]["bytes"]);
    let embed = u(&shape["embed_bytes"]);
    assert_eq!(active, total - routed - embed + 256 / 32 * 34 + routed / 4);
    assert_eq!(v["weight_bytes_per_token"], v["active_bytes_per_token"]);
    // The positional form says the same.
    let (w, _) = inspect(&[&path, "--json"]);
    assert_eq!(w["classes"], v["classes"]);
    assert_eq!(w["layers"], v["layers"]);
    // The text form carries the same figures.
    let (_, text) = inspect(&[&path]);
    assert!(
        text.contains(&format!("KV/token:      {}", 4 * 80 * 4)),
        "{text}"
    );
    assert!(
        text.contains(&format!("{active} weight bytes read per decoded token")),
        "{text}"
    );
    assert!(
        text.contains("1..4"),
        "identical MoE layers print as one row: {text}"
    );
}

#[test]
fn bits_per_weight_are_what_the_types_say() {
    // Every tensor of the f32 file is F32: 32 bits in every class.
    let (v, _) = inspect(&["--model", &tiny_v3("tiny-dsv3-f32.gguf"), "--json"]);
    for (name, c) in v["classes"].as_object().unwrap() {
        assert_eq!(c["bits_per_weight"].as_f64(), Some(32.0), "{name}");
        assert_eq!(u(&c["bytes"]), 4 * u(&c["params"]), "{name}");
    }
    // Q8_0 file: experts, shared experts and embeddings are all Q8_0 (34
    // bytes per 32 weights); attention mixes in its f32 norms.
    let (v, _) = inspect(&["--model", &tiny_v3("tiny-dsv3-q8_0.gguf"), "--json"]);
    let c = &v["classes"];
    for name in ["routed_experts", "shared_experts", "embeddings"] {
        assert_eq!(c[name]["bits_per_weight"].as_f64(), Some(8.5), "{name}");
    }
    let att = c["attention"]["bits_per_weight"].as_f64().unwrap();
    assert!(att > 8.5 && att < 9.0, "{att}");
    let types: std::collections::BTreeSet<&str> = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["class"] == "routed_experts")
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert_eq!(types.into_iter().collect::<Vec<_>>(), vec!["Q8_0"]);
}

#[test]
fn smollm2_kv_bytes_per_token() {
    let path = model_path(SMOLLM2);
    let file = dwarfstar_gguf::GgufFile::open(&path).unwrap();
    let n_layer = file.get_u64("llama.block_count").unwrap();
    let n_head = file.get_u64("llama.attention.head_count").unwrap();
    let n_kv = file.get_u64("llama.attention.head_count_kv").unwrap();
    let head_dim = file.get_u64("llama.embedding_length").unwrap() / n_head;
    let (v, _) = inspect(&["--model", path.to_str().unwrap(), "--json"]);
    assert_eq!(
        u(&v["kv_bytes_per_token"]),
        2 * n_layer * n_kv * head_dim * 4
    );
    assert_eq!(u(&v["kv_bytes_per_token"]), 2 * 30 * 3 * 64 * 4);
    let shape = &v["shape"];
    assert_eq!(u(&shape["n_layer"]), n_layer);
    // Tied embeddings: the output reads the whole table, so a token reads
    // every weight byte, plus one embedding row.
    assert_eq!(shape["tied_embeddings"], true);
    let active = u(&v["active_bytes_per_token"]);
    let total = u(&v["weight_bytes"]);
    assert!(
        active > total && active < total + total / 1000,
        "{active} vs {total}"
    );
    assert!(v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| u(&l["n_experts"]) == 0));
}

/// Each architecture reports what it supports: paging, stages, KV files
/// and (for MoE models) expert parallelism hold for every one of them.
#[test]
fn capabilities_are_reported_per_architecture() {
    let v4 = fixtures()
        .join("tiny-deepseek-v4/tiny-dsv4-Q8_0.gguf")
        .to_string_lossy()
        .into_owned();
    let smol = model_path(SMOLLM2).to_string_lossy().into_owned();
    for (path, moe) in [
        (smol.as_str(), false),
        (&tiny_v3("tiny-dsv3-q8_0.gguf"), true),
        (v4.as_str(), true),
    ] {
        let kv_wanted: &[&str] = if path == v4 { &["f16", "q8_0"] } else { &[] };
        let (v, text) = inspect(&["--model", path, "--json"]);
        let c = &v["capabilities"];
        assert_eq!(c["stages"], true, "{path}: {c}");
        assert_eq!(c["expert_parallel"], moe, "{path}: {c}");
        let kv = c["kv_types"].as_array().unwrap();
        assert!(kv.iter().any(|t| t == "f32"), "{path}: {c}");
        for t in kv_wanted {
            assert!(kv.iter().any(|k| k == t), "{path}: {t} in {c}");
        }
        for k in ["paging", "kv_save"] {
            assert_eq!(c[k], true, "{path}: {k} in {c}");
        }
        assert!(text.contains("\"capabilities\""));
        let (_, plain) = inspect(&["--model", path]);
        assert!(plain.contains("capabilities:  paging"), "{plain}");
    }
}
