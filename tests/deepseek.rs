//! The `deepseek2` architecture (MLA + MoE) against the tiny DeepSeek V3
//! reference: every GGUF variant's logits at all 24 positions against
//! llama.cpp's for the same file, the f32 file against transformers
//! (1e-4), greedy continuations, cache against recompute, batching, the
//! latent cache size, and rejection of inconsistent metadata.
//!
//! Per SIMD level: every figure here is the same on scalar, AVX2 and
//! AVX-512, because the kernels these files reach sum in ggml's x86 order
//! at every level (kernels/tests/x86_order.rs). Against llama.cpp the f32,
//! f16 and q8_0 files are asserted to the bit; Q4_K_M and Q2_K to 1e-5
//! (see [`Expect`]).

use std::path::PathBuf;

use dwarfstar_gguf::Value;
use dwarfstar_model::sampler::argmax;
use dwarfstar_model::{Model, ModelError, SeqState};

use crate::common::*;

fn dir() -> PathBuf {
    fixtures().join("tiny-deepseek-v3")
}

fn gguf(label: &str) -> PathBuf {
    dir().join(format!("tiny-dsv3-{label}.gguf"))
}

/// The model in llama.cpp-exact mode (see `Deepseek2Model::llama_exact`):
/// the reference logits come from llama.cpp's repacked x86 kernels, and in
/// this random tiny model a last-bit difference can flip a Q8 rounding.
fn open(label: &str) -> Model {
    let mut m = Model::open(&gguf(label), &[])
        .expect("tiny deepseek loads")
        .0;
    match &mut m {
        Model::Deepseek2(d) => d.llama_exact = true,
        _ => panic!("{label}: not loaded as deepseek2"),
    }
    m
}

fn summary() -> serde_json::Value {
    read_json(&dir().join("tiny-dsv3.summary.json"))
}

fn prompt() -> Vec<u32> {
    ids(&summary()["tokens"])
}

/// Every position's logits from one pass over the prompt.
fn all_logits(m: &Model, toks: &[u32]) -> Vec<f32> {
    let mut st = m.new_state(toks.len() + 32);
    m.forward(toks, &mut st, true).expect("forward")
}

/// Max |Δ| per position.
fn per_position(a: &[f32], b: &[f32], n_vocab: usize) -> Vec<f32> {
    a.chunks_exact(n_vocab)
        .zip(b.chunks_exact(n_vocab))
        .map(|(x, y)| max_abs_diff(x, y))
        .collect()
}

fn check_against(label: &str, reference: &str, tol: f32) {
    let m = open(label);
    let toks = prompt();
    let ours = all_logits(&m, &toks);
    let want = read_f32(&dir().join(reference));
    assert_eq!(ours.len(), want.len(), "{label}: logits shape");
    let pp = per_position(&ours, &want, m.n_vocab());
    let worst = pp.iter().copied().fold(0.0, f32::max);
    let pp_s: Vec<String> = pp.iter().map(|d| format!("{d:.1e}")).collect();
    eprintln!(
        "{label} vs {reference}: max |Δ| {worst:.3e}, per position [{}]",
        pp_s.join(" ")
    );
    assert!(
        worst < tol,
        "{label}: logits differ from {reference} by {worst} (per position {pp:?})"
    );
}

/// How one file's logits are held to llama.cpp's.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Every logit to the bit: llama-exact mode reproduces each product's
    /// order (its repacked and tiled kernels, tinyBLAS, `ggml_vec_dot_*`).
    Bits,
    /// Within this max |Δ|. Q4_K_M and Q2_K leave the bits by 2.7e-7 and
    /// 6.0e-7 (measured; logits have std 0.32), the same on every level:
    /// some product of these mixed-type files still sums in another order
    /// than llama.cpp's (not yet found). 1e-5 is 17-37× that, and far below
    /// what a flipped 8-bit activation rounding does to this model: before
    /// the scalar kernels followed the x86 order, a scalar run left
    /// llama.cpp's logits by 2.7e-2 (Q4_K_M) and 0.52 (q8_0).
    Within(f32),
}

fn check_llama(label: &str, expect: Expect) {
    let reference = format!("tiny-dsv3.{label}.logits.f32.bin");
    match expect {
        Expect::Within(tol) => check_against(label, &reference, tol),
        Expect::Bits => {
            let m = open(label);
            let ours = all_logits(&m, &prompt());
            let want = read_f32(&dir().join(&reference));
            assert_eq!(ours.len(), want.len(), "{label}: logits shape");
            let nv = m.n_vocab();
            if let Some(i) = (0..ours.len()).find(|&i| ours[i].to_bits() != want[i].to_bits()) {
                panic!(
                    "{label}: logit {} at position {} is {} vs llama.cpp {} (max |Δ| {})",
                    i % nv,
                    i / nv,
                    ours[i],
                    want[i],
                    max_abs_diff(&ours, &want)
                );
            }
        }
    }
}

#[test]
fn dsv3_f32_matches_llama_cpp() {
    check_llama("f32", Expect::Bits);
}

#[test]
fn dsv3_f16_matches_llama_cpp() {
    check_llama("f16", Expect::Bits);
}

#[test]
fn dsv3_q8_0_matches_llama_cpp() {
    check_llama("q8_0", Expect::Bits);
}

#[test]
fn dsv3_q4_k_m_matches_llama_cpp() {
    check_llama("Q4_K_M", Expect::Within(1e-5));
}

#[test]
fn dsv3_q2_k_matches_llama_cpp() {
    check_llama("Q2_K", Expect::Within(1e-5));
}

#[test]
fn dsv3_f32_matches_transformers() {
    check_against("f32", "tiny-dsv3.hf-fp32.logits.f32.bin", 1e-4);
}

/// Greedy decoding through the latent cache reproduces transformers'
/// 16-token continuation (which recomputes the whole sequence each step).
#[test]
fn dsv3_greedy_matches_transformers() {
    let want = ids(&summary()["reference"]["greedy"]);
    for label in ["f32", "f16"] {
        let m = open(label);
        let toks = prompt();
        let mut st = m.new_state(toks.len() + want.len());
        let mut logits = m.forward(&toks, &mut st, false).unwrap();
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let t = argmax(&logits);
            got.push(t);
            if got.len() < want.len() {
                logits = m.forward(&[t], &mut st, false).unwrap();
            }
        }
        assert_eq!(got, want, "{label}: greedy continuation");
    }
}

/// Decoding one token at a time through the cache gives the logits of one
/// pass over the whole sequence; so does a prefix prefill plus a chunk.
/// (In llama.cpp-exact mode a Q4_K product's last bits depend on the batch
/// size, as in llama.cpp, whose GEMM and GEMV sum in different orders; the
/// quantized file is checked with DwarfStar's batch-invariant kernels.)
#[test]
fn dsv3_cache_equals_recompute() {
    for label in ["f32", "Q4_K_M"] {
        let mut m = open(label);
        if let Model::Deepseek2(d) = &mut m {
            d.llama_exact = label == "f32";
        }
        let toks = prompt();
        let full = all_logits(&m, &toks);
        let nv = m.n_vocab();
        let mut st = m.new_state(toks.len());
        let mut worst = 0f32;
        for (i, t) in toks.iter().enumerate() {
            let l = m.forward(&[*t], &mut st, false).unwrap();
            worst = worst.max(max_abs_diff(&l, &full[i * nv..(i + 1) * nv]));
        }
        assert!(
            worst < 1e-4,
            "{label}: token-by-token decode differs by {worst}"
        );
        // Rewind to 10 positions, run the rest as one chunk.
        st.truncate(10);
        let rest = m.forward(&toks[10..], &mut st, true).unwrap();
        let d = max_abs_diff(&rest, &full[10 * nv..]);
        assert!(d < 1e-4, "{label}: chunk after truncate differs by {d}");
        eprintln!("{label}: decode vs one pass {worst:.1e}, chunk {d:.1e}");
    }
}

/// Several sequences in one batch (sharing expert groups) give each one's
/// own logits.
#[test]
fn dsv3_batch_equals_separate_runs() {
    let m = open("q8_0");
    let toks = prompt();
    let (a, b) = (&toks[..7], &toks[5..24]);
    let alone_a = all_logits(&m, a);
    let alone_b = all_logits(&m, b);
    let mut sa = m.new_state(32);
    let mut sb = m.new_state(32);
    let out = {
        let mut items: Vec<(&[u32], &mut SeqState, bool)> =
            vec![(a, &mut sa, true), (b, &mut sb, true)];
        m.forward_batch(&mut items).unwrap()
    };
    assert!(max_abs_diff(&out[0], &alone_a) < 1e-4);
    assert!(max_abs_diff(&out[1], &alone_b) < 1e-4);
    assert_eq!((sa.len(), sb.len()), (7, 19));
}

/// Only the latent and the rope key are cached: (64 + 16) f32 per layer.
#[test]
fn dsv3_cache_holds_only_the_latent() {
    let m = open("f32");
    assert_eq!(m.arch(), "deepseek2");
    assert_eq!(m.kv_bytes_per_token(), 4 * (64 + 16) * 4);
    let toks = prompt();
    let mut st = m.new_state(toks.len());
    m.forward(&toks, &mut st, false).unwrap();
    assert_eq!(st.bytes(), toks.len() * m.kv_bytes_per_token());
    let err = m.forward(&[1], &mut st, false).unwrap_err();
    assert!(matches!(err, ModelError::ContextFull { .. }), "{err}");
}

/// A file whose metadata disagrees with its tensors (or lacks a key) is
/// rejected with an error that names the key.
#[test]
fn dsv3_bad_metadata_names_the_key() {
    let cases: &[(&str, Option<Value>)] = &[
        ("deepseek2.expert_count", Some(Value::U32(16))),
        ("deepseek2.expert_feed_forward_length", Some(Value::U32(64))),
        ("deepseek2.attention.kv_lora_rank", Some(Value::U32(32))),
        ("deepseek2.attention.q_lora_rank", Some(Value::U32(128))),
        ("deepseek2.attention.head_count", Some(Value::U32(8))),
        ("deepseek2.attention.key_length", Some(Value::U32(96))),
        ("deepseek2.embedding_length", Some(Value::U32(512))),
        ("deepseek2.expert_used_count", Some(Value::U32(9))),
        ("deepseek2.expert_gating_func", Some(Value::U32(7))),
        ("deepseek2.rope.dimension_count", Some(Value::U32(15))),
        ("deepseek2.leading_dense_block_count", Some(Value::U32(2))),
        ("deepseek2.nextn_predict_layers", Some(Value::U32(4))),
        ("deepseek2.attention.key_length_mla", None),
        ("deepseek2.attention.kv_lora_rank", None),
        ("deepseek2.expert_count", None),
    ];
    assert_each_bad_key_is_named(&gguf("f32"), cases);
}
