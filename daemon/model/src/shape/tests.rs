//! Shape tests: the tensor classes, the tiny DeepSeek V3 fixture, and real
//! DeepSeek V3 / a tiny V4 described by metadata and tensor shapes alone.

use std::path::PathBuf;

use dwarfstar_gguf::{Array, GgufFile, TensorInfo, Value};
use dwarfstar_kernels::types::GgmlType;

use super::*;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(rel)
}

/// A GGUF with no tensors and `meta` set.
fn meta_only(meta: &[(&str, Value)]) -> GgufFile {
    super::builtin::meta_only(meta.to_vec()).expect("empty gguf parses")
}

fn tensor(name: &str, dims: &[u64], ty: GgmlType) -> TensorInfo {
    let n: u64 = dims.iter().product();
    TensorInfo {
        name: name.to_string(),
        dims: dims.to_vec(),
        ty,
        offset: 0,
        n_bytes: n / ty.block_size() as u64 * ty.type_size() as u64,
    }
}

#[test]
fn classes_follow_the_names() {
    use TensorClass::*;
    for (name, want) in [
        ("token_embd.weight", Embeddings),
        ("output.weight", Embeddings),
        ("output_norm.weight", Other),
        ("output_hc_fn.weight", Other),
        ("rope_freqs.weight", Other),
        ("blk.3.ffn_gate_exps.weight", RoutedExperts),
        ("blk.3.ffn_down_exps.weight", RoutedExperts),
        ("blk.3.ffn_up_shexp.weight", SharedExperts),
        ("blk.3.ffn_gate_inp_shexp.weight", SharedExperts),
        ("blk.3.ffn_gate_inp.weight", Other),
        ("blk.3.exp_probs_b.bias", Other),
        ("blk.0.ffn_gate_tid2eid.weight", Other),
        ("blk.0.ffn_up.weight", Other),
        ("blk.0.attn_norm.weight", Other),
        ("blk.0.attn_post_norm.weight", Other),
        ("blk.0.hc_attn_fn.weight", Other),
        ("blk.0.attn_q.weight", Attention),
        ("blk.0.attn_k_norm.weight", Attention),
        ("blk.0.attn_kv_a_mqa.weight", Attention),
        ("blk.0.attn_kv_a_norm.weight", Attention),
        ("blk.0.attn_k_b.weight", Attention),
        ("blk.0.attn_sinks.weight", Attention),
        ("blk.1.attn_compressor_kv.weight", Attention),
        ("blk.1.indexer.proj.weight", Attention),
        ("blk.1.indexer_compressor_ape.weight", Attention),
    ] {
        assert_eq!(tensor_class(name), want, "{name}");
    }
    assert_eq!(
        split_block("blk.12.attn_q.weight"),
        Some((12, "attn_q.weight"))
    );
    assert_eq!(split_block("output.weight"), None);
}

#[test]
fn tiny_deepseek_v3_splits_every_byte() {
    let f = GgufFile::open(fixture("tiny-deepseek-v3/tiny-dsv3-q8_0.gguf")).expect("fixture opens");
    let s = model_shape(&f).unwrap();
    assert_eq!(
        (s.arch.as_str(), s.n_layer, s.hidden, s.n_vocab),
        ("deepseek2", 4, 256, 4096)
    );
    let total: u64 = f.tensors().iter().map(|t| t.n_bytes).sum();
    assert_eq!(s.weight_bytes() + s.unused_bytes, total);
    assert!(!s.tied_embeddings);
    // Layer 0 is dense, 1..4 route 8 experts, top 2, one shared expert.
    assert_eq!(s.layers[0].n_experts, 0);
    for l in &s.layers[1..] {
        assert_eq!((l.n_experts, l.n_experts_used), (8, 2));
        // gate + up + down of one expert, Q8_0: 3 × 256·128 / 32 · 34.
        assert_eq!(l.expert_bytes, 3 * 256 * 128 / 32 * 34);
        assert_eq!(l.shared_expert_bytes, 3 * 34816);
        assert_eq!(l.expert_params, 3 * 256 * 128);
    }
    // Latent (64) + rope key (16), f32, per layer.
    assert!(s.layers.iter().all(|l| l.kv_bytes_per_token == 80 * 4));
    assert_eq!(s.kv_bytes_per_token, 4 * 80 * 4);
    let m = crate::Model::load(std::sync::Arc::new(f)).unwrap();
    assert_eq!(s.kv_bytes_per_token, m.kv_bytes_per_token() as u64);
    // Active: one embedding row, all non-expert bytes, 2 of 8 experts.
    let row = 256 / 32 * 34;
    let experts: u64 = s
        .layers
        .iter()
        .map(|l| l.n_experts as u64 * l.expert_bytes)
        .sum();
    let active_experts: u64 = s
        .layers
        .iter()
        .map(|l| 2 * l.expert_bytes * (l.n_experts > 0) as u64)
        .sum();
    assert_eq!(
        s.active_bytes_per_token,
        total - experts - s.embed_bytes + row + active_experts
    );
}

/// DeepSeek V3's metadata as llama.cpp's converter writes it.
fn v3_meta() -> GgufFile {
    meta_only(&super::builtin::v3_metadata("DeepSeek V3"))
}

/// DeepSeek V3's tensor directory; 2-D/3-D weights in `q(ne0)`, norms and
/// the router in f32.
fn v3_tensors(q: impl Fn(u64) -> GgmlType) -> Vec<TensorInfo> {
    let f = GgmlType::F32;
    let (e, v, ff, fe, ne) = (7168u64, 129280u64, 18432u64, 2048u64, 256u64);
    let mut t = vec![
        tensor("token_embd.weight", &[e, v], q(e)),
        tensor("output_norm.weight", &[e], f),
        tensor("output.weight", &[e, v], q(e)),
    ];
    for il in 0..61 {
        let b = |n: &str| format!("blk.{il}.{n}.weight");
        t.push(tensor(&b("attn_norm"), &[e], f));
        t.push(tensor(&b("attn_q_a"), &[e, 1536], q(e)));
        t.push(tensor(&b("attn_q_a_norm"), &[1536], f));
        t.push(tensor(&b("attn_q_b"), &[1536, 128 * 192], q(1536)));
        t.push(tensor(&b("attn_kv_a_mqa"), &[e, 576], q(e)));
        t.push(tensor(&b("attn_kv_a_norm"), &[512], f));
        t.push(tensor(&b("attn_k_b"), &[128, 512, 128], q(128)));
        t.push(tensor(&b("attn_v_b"), &[512, 128, 128], q(512)));
        t.push(tensor(&b("attn_output"), &[128 * 128, e], q(128 * 128)));
        t.push(tensor(&b("ffn_norm"), &[e], f));
        if il < 3 {
            t.push(tensor(&b("ffn_gate"), &[e, ff], q(e)));
            t.push(tensor(&b("ffn_up"), &[e, ff], q(e)));
            t.push(tensor(&b("ffn_down"), &[ff, e], q(ff)));
        } else {
            t.push(tensor(&b("ffn_gate_inp"), &[e, ne], f));
            t.push(tensor(&format!("blk.{il}.exp_probs_b.bias"), &[ne], f));
            t.push(tensor(&b("ffn_gate_exps"), &[e, fe, ne], q(e)));
            t.push(tensor(&b("ffn_up_exps"), &[e, fe, ne], q(e)));
            t.push(tensor(&b("ffn_down_exps"), &[fe, e, ne], q(fe)));
            t.push(tensor(&b("ffn_gate_shexp"), &[e, fe], q(e)));
            t.push(tensor(&b("ffn_up_shexp"), &[e, fe], q(e)));
            t.push(tensor(&b("ffn_down_shexp"), &[fe, e], q(fe)));
        }
    }
    t
}

/// The figures for the real DeepSeek V3 (671B), from its real shapes:
/// KV per token and the bytes and parameters one decoded token reads.
#[test]
fn real_deepseek_v3_figures() {
    let f = v3_meta();
    let q8 = shape_of(&f, &v3_tensors(|_| GgmlType::Q8_0)).unwrap();
    // 61 layers × (512 latent + 64 rope) × 4 bytes.
    assert_eq!(q8.kv_bytes_per_token, 61 * 576 * 4);
    assert_eq!(q8.kv_bytes_per_token, 140_544);
    let params = |s: &ModelShape| -> (u64, u64) {
        let total = s
            .layers
            .iter()
            .map(|l| l.dense_params + l.shared_expert_params + l.n_experts as u64 * l.expert_params)
            .sum::<u64>()
            + 2 * 7168 * 129280
            + 7168;
        let active = s
            .layers
            .iter()
            .map(|l| {
                l.dense_params + l.shared_expert_params + l.n_experts_used as u64 * l.expert_params
            })
            .sum::<u64>()
            + 7168
            + 7168 * 129280
            + 7168;
        (total, active)
    };
    let (total, active) = params(&q8);
    // DeepSeek's own figures: 671B parameters, 37B activated per token
    // (counting the whole embedding table; a token reads one row of it).
    assert!((670e9..672e9).contains(&(total as f64)), "{total}");
    let active_ds = active - 7168 + 7168 * 129280;
    assert!((37e9..38e9).contains(&(active_ds as f64)), "{active_ds}");
    assert!((36.5e9..36.8e9).contains(&(active as f64)), "{active}");
    // Q8_0 (8.5 bits/weight) everywhere but norms and router.
    assert!(
        (39.0e9..39.5e9).contains(&(q8.active_bytes_per_token as f64)),
        "{}",
        q8.active_bytes_per_token
    );
    // Q4_K where rows allow (multiples of 256), Q8_0 elsewhere.
    let q4 = shape_of(
        &f,
        &v3_tensors(|ne0| {
            if ne0 % 256 == 0 {
                GgmlType::Q4_K
            } else {
                GgmlType::Q8_0
            }
        }),
    )
    .unwrap();
    assert!(
        (18e9..24e9).contains(&(q4.active_bytes_per_token as f64)),
        "{}",
        q4.active_bytes_per_token
    );
    eprintln!(
        "DeepSeek V3: {total} params, {active} active; KV {} B/token; active bytes/token: Q8_0 {} (weights {}), Q4_K/Q8_0 {} (weights {})",
        q8.kv_bytes_per_token,
        q8.active_bytes_per_token,
        q8.weight_bytes(),
        q4.active_bytes_per_token,
        q4.weight_bytes()
    );
}

#[test]
fn tiny_deepseek_v4_kv_follows_its_compressed_cache() {
    let u = Value::U32;
    let f = meta_only(&[
        ("general.architecture", Value::String("deepseek4".into())),
        ("deepseek4.block_count", u(4)),
        ("deepseek4.context_length", u(4096)),
        ("deepseek4.embedding_length", u(128)),
        ("deepseek4.vocab_size", u(4096)),
        ("deepseek4.attention.head_count", u(4)),
        ("deepseek4.attention.head_count_kv", u(1)),
        ("deepseek4.rope.freq_base", Value::F32(10000.0)),
        (
            "deepseek4.attention.layer_norm_rms_epsilon",
            Value::F32(1e-6),
        ),
        ("deepseek4.expert_count", u(8)),
        ("deepseek4.expert_used_count", u(2)),
        ("deepseek4.expert_gating_func", u(4)),
        ("deepseek4.attention.key_length", u(128)),
        ("deepseek4.attention.value_length", u(128)),
        ("deepseek4.rope.dimension_count", u(64)),
        ("deepseek4.attention.q_lora_rank", u(64)),
        ("deepseek4.attention.sliding_window", u(16)),
        ("deepseek4.expert_feed_forward_length", u(64)),
        ("deepseek4.expert_shared_count", u(1)),
        ("deepseek4.expert_weights_scale", Value::F32(1.5)),
        ("deepseek4.expert_weights_norm", Value::Bool(true)),
        (
            "deepseek4.swiglu_clamp_exp",
            Value::Array(Array::F32(vec![10.0; 4])),
        ),
        (
            "deepseek4.swiglu_clamp_shexp",
            Value::Array(Array::F32(vec![10.0; 4])),
        ),
        ("deepseek4.attention.indexer.head_count", u(4)),
        ("deepseek4.attention.indexer.key_length", u(64)),
        ("deepseek4.attention.indexer.top_k", u(4)),
        ("deepseek4.attention.output_group_count", u(2)),
        ("deepseek4.attention.output_lora_rank", u(32)),
        (
            "deepseek4.attention.compress_ratios",
            Value::Array(Array::I32(vec![0, 4, 128, 4])),
        ),
        (
            "deepseek4.attention.compress_rope_freq_base",
            Value::F32(160000.0),
        ),
        ("deepseek4.hyper_connection.count", u(4)),
        ("deepseek4.hyper_connection.sinkhorn_iterations", u(20)),
        ("deepseek4.hyper_connection.epsilon", Value::F32(1e-6)),
        ("deepseek4.hash_layer_count", u(2)),
    ]);
    let q = GgmlType::F32;
    let mut t = vec![
        tensor("token_embd.weight", &[128, 4096], q),
        tensor("output.weight", &[128, 4096], q),
    ];
    for il in 0..4 {
        let b = |n: &str| format!("blk.{il}.{n}.weight");
        t.push(tensor(&b("attn_kv"), &[128, 128], q));
        t.push(tensor(&b("ffn_gate_exps"), &[128, 64, 8], q));
        t.push(tensor(&b("ffn_up_exps"), &[128, 64, 8], q));
        t.push(tensor(&b("ffn_down_exps"), &[64, 128, 8], q));
        t.push(tensor(&b("ffn_up_shexp"), &[128, 64], q));
        if il % 2 == 1 {
            t.push(tensor(&b("indexer.proj"), &[128, 4], q));
        }
    }
    let s = shape_of(&f, &t).unwrap();
    // f16 entries: CSA (128 + 64)/4 floats, HCA 128/128, sliding none.
    let per: Vec<u64> = s.layers.iter().map(|l| l.kv_bytes_per_token).collect();
    assert_eq!(per, vec![0, 96, 2, 96]);
    // Whole model: (48 + 1 + 48) floats × 2 + a 4-byte token id.
    assert_eq!(s.kv_bytes_per_token, 97 * 2 + 4);
    // Every layer keeps a 15-position f32 window.
    assert!(s.layers.iter().all(|l| l.kv_fixed_bytes >= 15 * 128 * 4));
    assert_eq!(s.layers[1].expert_bytes, 3 * 128 * 64 * 4);
    assert_eq!(s.layers[1].n_experts_used, 2);
    assert_eq!(s.layers[1].dense_bytes, 128 * 128 * 4 + 128 * 4 * 4);
}
