//! Shapes of models too large to have here, for the simulator: their
//! tensor directories and the metadata the shape code reads, from the
//! published configurations, run through [`shape_of`] like any file.
//!
//! - `deepseek-v4-flash:RECIPE`: the synthetic deepseek4 plan at Flash's
//!   full size (43 layers + the MTP block, hidden 4096, 64 heads of 512, 256
//!   routed experts of FFN 2048 top-6 + 1 shared, q and output LoRA 1024, 8
//!   output groups, 64 indexer heads, vocabulary 129280), so the tensors
//!   are exactly those `dwarfstar synth` writes. `dwarf-q2`: routed gate/up
//!   IQ2_XXS, down Q2_K, attention/shared/output Q8_0 (ds4's recipe);
//!   `q4_k`: routed experts Q4_K.
//! - `deepseek-v3:RECIPE`: DeepSeek V3's directory as llama.cpp's converter
//!   writes it (61 layers, the first 3 dense with FFN 18432, hidden 7168,
//!   128 heads, MLA with q LoRA 1536 and KV LoRA 512, 256 experts of FFN
//!   2048 top-8 + 1 shared, vocabulary 129280). `q8_0`: Q8_0 matrices;
//!   `q4_k_m`: llama.cpp's Q4_K_M mix — Q4_K, with Q6_K for the output and
//!   for `ffn_down*` and `attn_v_b` on the layers its `use_more_bits`
//!   picks; rows not a multiple of 256 (`attn_k_b`) Q8_0.
//!
//! [`head_split`] finds a file's head-divisible attention bytes.

use dwarfstar_gguf::{Array, GgufFile, TensorInfo, Value};
use dwarfstar_kernels::GgmlType;
use dwarfstar_planner::predict::HeadSplit;
use dwarfstar_planner::sim::SimModel;

use super::{shape_of, split_block};
use crate::error::{ModelError, Result};
use crate::synth::config::SynthConfig;
use crate::synth::ds4::Ds4Plan;

/// Every built-in name.
pub const NAMES: [&str; 4] = [
    "deepseek-v4-flash:dwarf-q2",
    "deepseek-v4-flash:q4_k",
    "deepseek-v3:q4_k_m",
    "deepseek-v3:q8_0",
];

const VOCAB: u64 = 129280;

/// A GGUF with no tensors and `meta` set.
pub(crate) fn meta_only(meta: Vec<(&str, Value)>) -> Result<GgufFile> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    let mut f = GgufFile::from_bytes(b)?;
    for (k, v) in meta {
        f.set(k, v);
    }
    Ok(f)
}

fn tensor(name: String, dims: &[u64], ty: GgmlType) -> TensorInfo {
    let n: u64 = dims.iter().product();
    TensorInfo {
        name,
        dims: dims.to_vec(),
        ty,
        offset: 0,
        n_bytes: n / ty.block_size() as u64 * ty.type_size() as u64,
    }
}

/// The built-in model `name`.
pub fn builtin(name: &str) -> Result<SimModel> {
    let (model, recipe) = name.split_once(':').unwrap_or((name, ""));
    match (model, recipe) {
        ("deepseek-v4-flash", "dwarf-q2") => v4_flash(name, GgmlType::IQ2_XXS, GgmlType::Q2_K),
        ("deepseek-v4-flash", "q4_k") => v4_flash(name, GgmlType::Q4_K, GgmlType::Q4_K),
        ("deepseek-v3", "q4_k_m") => v3(name, true),
        ("deepseek-v3", "q8_0") => v3(name, false),
        _ => Err(ModelError::Invalid(format!(
            "no built-in model {name} (known: {})",
            NAMES.join(", ")
        ))),
    }
}

fn v4_flash(name: &str, exp: GgmlType, down: GgmlType) -> Result<SimModel> {
    let mut cfg = SynthConfig::deepseek4(None);
    cfg.layers = Some(43);
    cfg.hidden = Some(4096);
    cfg.experts = Some(256);
    cfg.top_k = Some(6);
    cfg.ffn = Some(2048);
    cfg.ty = exp;
    cfg.down_ty = Some(down);
    let p = Ds4Plan::resolve(&cfg, VOCAB as usize)
        .map_err(|e| ModelError::Invalid(format!("V4 Flash plan: {e}")))?;
    let tensors: Vec<TensorInfo> = p
        .tensors()
        .into_iter()
        .map(|t| tensor(t.name, &t.dims, t.ty))
        .collect();
    let u = |v: usize| Value::U32(v as u32);
    let f = meta_only(vec![
        ("general.architecture", Value::String("deepseek4".into())),
        ("general.name", Value::String(name.into())),
        ("deepseek4.block_count", u(p.n_block())),
        ("deepseek4.nextn_predict_layers", u(1)),
        ("deepseek4.embedding_length", u(p.hidden)),
        ("deepseek4.expert_used_count", u(p.top_k)),
        ("deepseek4.attention.key_length", u(p.head_dim)),
        (
            "deepseek4.attention.indexer.key_length",
            u(crate::synth::ds4::IDX_DIM),
        ),
        (
            "deepseek4.attention.sliding_window",
            u(crate::synth::ds4::SLIDING_WINDOW),
        ),
        (
            "deepseek4.attention.compress_ratios",
            Value::Array(Array::I32(p.ratios())),
        ),
        ("deepseek4.attention.output_group_count", u(p.o_groups)),
        ("deepseek4.attention.head_count", u(p.n_head)),
    ])?;
    let shape = shape_of(&f, &tensors)?;
    let head_split = head_split(&f, &tensors, shape.n_layer);
    Ok(SimModel { shape, head_split })
}

/// llama.cpp's `use_more_bits`: the layers Q4_K_M gives Q6_K.
fn use_more_bits(i: u64, n: u64) -> bool {
    let (lo, hi) = (n / 8, 7 * n / 8);
    if i < lo || i >= hi {
        return true;
    }
    (i - lo) % 3 == 2
}

/// DeepSeek V3's metadata as llama.cpp's converter writes it, named `name`.
pub(crate) fn v3_metadata(name: &str) -> Vec<(&'static str, Value)> {
    let u = Value::U32;
    vec![
        ("general.architecture", Value::String("deepseek2".into())),
        ("general.name", Value::String(name.into())),
        ("deepseek2.block_count", u(61)),
        ("deepseek2.context_length", u(163840)),
        ("deepseek2.embedding_length", u(7168)),
        ("deepseek2.feed_forward_length", u(18432)),
        ("deepseek2.attention.head_count", u(128)),
        ("deepseek2.attention.head_count_kv", u(1)),
        ("deepseek2.attention.key_length", u(576)),
        ("deepseek2.attention.value_length", u(512)),
        ("deepseek2.attention.key_length_mla", u(192)),
        ("deepseek2.attention.value_length_mla", u(128)),
        (
            "deepseek2.attention.layer_norm_rms_epsilon",
            Value::F32(1e-6),
        ),
        ("deepseek2.attention.q_lora_rank", u(1536)),
        ("deepseek2.attention.kv_lora_rank", u(512)),
        ("deepseek2.rope.dimension_count", u(64)),
        ("deepseek2.rope.freq_base", Value::F32(10000.0)),
        ("deepseek2.rope.scaling.type", Value::String("yarn".into())),
        ("deepseek2.rope.scaling.factor", Value::F32(40.0)),
        ("deepseek2.rope.scaling.original_context_length", u(4096)),
        (
            "deepseek2.rope.scaling.yarn_log_multiplier",
            Value::F32(0.1),
        ),
        ("deepseek2.leading_dense_block_count", u(3)),
        ("deepseek2.vocab_size", u(VOCAB as u32)),
        ("deepseek2.expert_count", u(256)),
        ("deepseek2.expert_used_count", u(8)),
        ("deepseek2.expert_group_count", u(8)),
        ("deepseek2.expert_group_used_count", u(4)),
        ("deepseek2.expert_feed_forward_length", u(2048)),
        ("deepseek2.expert_shared_count", u(1)),
        ("deepseek2.expert_weights_scale", Value::F32(2.5)),
        ("deepseek2.expert_weights_norm", Value::Bool(true)),
        ("deepseek2.expert_gating_func", u(2)),
    ]
}

fn v3(name: &str, q4_k_m: bool) -> Result<SimModel> {
    let f = meta_only(v3_metadata(name))?;
    let n_layer = 61u64;
    // The type of a matrix of `ne0`-long rows in layer `il` (None: outside).
    let q = |ne0: u64, more_bits: bool| {
        if !ne0.is_multiple_of(256) || !q4_k_m {
            GgmlType::Q8_0
        } else if more_bits {
            GgmlType::Q6_K
        } else {
            GgmlType::Q4_K
        }
    };
    let f32t = GgmlType::F32;
    let (e, v, ff, fe, ne) = (7168u64, VOCAB, 18432u64, 2048u64, 256u64);
    let mut t = vec![
        tensor("token_embd.weight".into(), &[e, v], q(e, false)),
        tensor("output_norm.weight".into(), &[e], f32t),
        tensor("output.weight".into(), &[e, v], q(e, true)),
    ];
    for il in 0..n_layer {
        let more = use_more_bits(il, n_layer);
        let b = |n: &str| format!("blk.{il}.{n}.weight");
        t.push(tensor(b("attn_norm"), &[e], f32t));
        t.push(tensor(b("attn_q_a"), &[e, 1536], q(e, false)));
        t.push(tensor(b("attn_q_a_norm"), &[1536], f32t));
        t.push(tensor(b("attn_q_b"), &[1536, 128 * 192], q(1536, false)));
        t.push(tensor(b("attn_kv_a_mqa"), &[e, 576], q(e, false)));
        t.push(tensor(b("attn_kv_a_norm"), &[512], f32t));
        t.push(tensor(b("attn_k_b"), &[128, 512, 128], q(128, false)));
        t.push(tensor(b("attn_v_b"), &[512, 128, 128], q(512, more)));
        t.push(tensor(
            b("attn_output"),
            &[128 * 128, e],
            q(128 * 128, false),
        ));
        t.push(tensor(b("ffn_norm"), &[e], f32t));
        if il < 3 {
            t.push(tensor(b("ffn_gate"), &[e, ff], q(e, false)));
            t.push(tensor(b("ffn_up"), &[e, ff], q(e, false)));
            t.push(tensor(b("ffn_down"), &[ff, e], q(ff, more)));
        } else {
            t.push(tensor(b("ffn_gate_inp"), &[e, ne], f32t));
            t.push(tensor(format!("blk.{il}.exp_probs_b.bias"), &[ne], f32t));
            t.push(tensor(b("ffn_gate_exps"), &[e, fe, ne], q(e, false)));
            t.push(tensor(b("ffn_up_exps"), &[e, fe, ne], q(e, false)));
            t.push(tensor(b("ffn_down_exps"), &[fe, e, ne], q(fe, more)));
            t.push(tensor(b("ffn_gate_shexp"), &[e, fe], q(e, false)));
            t.push(tensor(b("ffn_up_shexp"), &[e, fe], q(e, false)));
            t.push(tensor(b("ffn_down_shexp"), &[fe, e], q(fe, more)));
        }
    }
    let shape = shape_of(&f, &t)?;
    let head_split = head_split(&f, &t, shape.n_layer);
    Ok(SimModel { shape, head_split })
}

/// The attention weights of each layer that divide over independent head
/// groups: DeepSeek V4's `attn_q_b` and `attn_output_a` over its output
/// groups; elsewhere the per-head projections (`attn_q`, `attn_k`,
/// `attn_v`, `attn_output`, MLA's `attn_q_b`, `attn_k_b`, `attn_v_b`) over
/// the KV heads (the query heads without grouped KV). None when the file
/// has none of them or gives no head count.
pub fn head_split(file: &GgufFile, tensors: &[TensorInfo], n_layer: u32) -> Option<HeadSplit> {
    let arch = file.get_str("general.architecture").ok()?.to_string();
    let count = |k: &str| {
        file.get(&format!("{arch}.{k}"))
            .and_then(|v| v.as_integer())
            .and_then(|v| u32::try_from(v).ok())
            .filter(|&v| v > 0)
    };
    let (groups, names): (u32, &[&str]) = if arch == "deepseek4" {
        (
            count("attention.output_group_count")?,
            &["attn_q_b", "attn_output_a"],
        )
    } else {
        let heads = count("attention.head_count")?;
        let kv = count("attention.head_count_kv").unwrap_or(heads);
        (
            if kv > 1 { kv } else { heads },
            &[
                "attn_q",
                "attn_k",
                "attn_v",
                "attn_output",
                "attn_q_b",
                "attn_k_b",
                "attn_v_b",
            ],
        )
    };
    let mut per_layer = vec![0u64; n_layer as usize];
    for t in tensors {
        let Some((il, rest)) = split_block(&t.name) else {
            continue;
        };
        let base = rest.split('.').next().unwrap_or(rest);
        if let Some(slot) = per_layer.get_mut(il as usize) {
            if names.contains(&base) {
                *slot += t.n_bytes;
            }
        }
    }
    if per_layer.iter().all(|&b| b == 0) {
        return None;
    }
    Some(HeadSplit {
        groups,
        per_layer_bytes: per_layer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog_path(name: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../planner/catalog")
            .join(format!("{}.json", name.replace(':', ".")))
    }

    /// The planner's catalog is these shapes; `DWARFSTAR_BLESS=1` rewrites
    /// it (deliberately, when the shape code changes).
    #[test]
    fn builtin_shapes_match_the_planner_catalog() {
        let bless = std::env::var("DWARFSTAR_BLESS").is_ok_and(|v| v == "1");
        assert_eq!(
            NAMES.to_vec(),
            dwarfstar_planner::sim::catalog::names(),
            "the planner's catalog lists other models"
        );
        for name in NAMES {
            let m = builtin(name).unwrap();
            let json = serde_json::to_string_pretty(&m).unwrap() + "\n";
            let path = catalog_path(name);
            if bless {
                // The planner embeds the files at build time: compare on the
                // next run.
                std::fs::write(&path, &json).unwrap();
                continue;
            }
            let have = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                have == json,
                "{} differs from the shape code's {name}; rerun with DWARFSTAR_BLESS=1 if that is meant",
                path.display()
            );
            assert_eq!(dwarfstar_planner::sim::catalog::builtin(name).unwrap(), m);
        }
    }

    #[test]
    fn flash_dwarf_q2_has_flash_figures() {
        let m = builtin("deepseek-v4-flash:dwarf-q2").unwrap();
        let s = &m.shape;
        assert_eq!(s.n_layer, 43);
        assert_eq!(s.hidden, 4096);
        assert_eq!(s.n_vocab, 129280);
        let moe = &s.layers[5];
        assert_eq!((moe.n_experts, moe.n_experts_used), (256, 6));
        // One expert: gate and up 4096×2048 IQ2_XXS (66 bytes per 256),
        // down 2048×4096 Q2_K (84 bytes per 256).
        let per = 4096 * 2048 / 256;
        assert_eq!(moe.expert_bytes, per * (66 + 66 + 84));
        // About 284B parameters in all, 13B active (DeepSeek's card).
        let params: u64 = s
            .layers
            .iter()
            .map(|l| l.dense_params + l.shared_expert_params + l.n_experts as u64 * l.expert_params)
            .sum();
        assert!((270e9..290e9).contains(&(params as f64)), "{params}");
        // The MTP block is not run.
        assert!(s.unused_bytes > 0);
        let h = m.head_split.as_ref().unwrap();
        assert_eq!(h.groups, 8);
        // attn_q_b 1024×32768 and attn_output_a 4096×8192, Q8_0.
        assert_eq!(h.per_layer_bytes[0], 2 * 1024 * 32768 / 32 * 34);
        eprintln!(
            "V4 Flash dwarf-q2: weights {} B, active {} B/token, attention share {:.2}",
            s.weight_bytes(),
            s.active_bytes_per_token,
            h.per_layer_bytes.iter().sum::<u64>() as f64 / s.active_bytes_per_token as f64
        );
    }

    #[test]
    fn v3_q4_k_m_is_about_the_published_size() {
        let m = builtin("deepseek-v3:q4_k_m").unwrap();
        // llama.cpp's DeepSeek V3 Q4_K_M files are about 404 GB.
        let w = m.shape.weight_bytes() as f64;
        assert!((380e9..420e9).contains(&w), "{w}");
        assert_eq!(m.head_split.as_ref().unwrap().groups, 128);
        assert!(m.shape.layers[..3].iter().all(|l| !l.is_moe()));
    }
}
