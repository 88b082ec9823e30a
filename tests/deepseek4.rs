//! The `deepseek4` architecture (DeepSeek V4) against the tiny reference
//! model (`tests/fixtures/tiny-deepseek-v4`, see the reference README):
//! transformers' logits with the indexer's choice neutralised (`topk_all`),
//! DeepSeek's own indexer rule (FP4 quantization-aware, `deepseek-ref`) at
//! top-k 4, llama.cpp's logits for the f32 and Q8_0 files, greedy decoding,
//! cache against recompute, the compressed cache's size, the MTP block and
//! rejection of inconsistent metadata.
//!
//! Per SIMD level: in llama-exact mode every figure is the same on scalar,
//! AVX2 and AVX-512 (the MXFP4 × Q8_0 and Q8_0 × Q8_0 products sum in
//! ggml's x86 order at every level), but it is not llama.cpp's bits: the
//! f32 file stays 2.3e-3 and the Q8_0 file 1.6e-2 (max |Δ|) from llama.cpp,
//! because some step of its deepseek4 graph still sums in another order
//! (not yet found). Those two tests keep tolerances (3e-3 and 5e-2) below
//! llama.cpp's own distance to transformers on the same files (4.1e-3 and
//! 0.11, reference README). The comparisons with transformers and
//! `deepseek-ref` run the routed experts with f32 activations
//! (`f32_experts`, DeepSeek's arithmetic); those f32 products use the
//! level's F32 dot, whose AVX-512 order (16 lanes) differs from AVX2's and
//! the scalar level's in the last bits (1.40e-4 vs 1.43e-4 max |Δ| against
//! transformers): they are comparisons with another implementation and
//! have tolerances anyway. The default (quantized expert products, Q8_0
//! activations into MXFP4) is held to llama.cpp's own distance from
//! transformers.

use std::path::PathBuf;

use dwarfstar_gguf::{Array, GgufFile, GgufWriter, Value};
use dwarfstar_model::deepseek4::{
    Deepseek4Model, EhProj, IndexerRule, KvType, LayerKind, Selection,
};
use dwarfstar_model::sampler::argmax;
use dwarfstar_model::{Model, ModelError, SeqState};

use crate::common::*;

fn dir() -> PathBuf {
    fixtures().join("tiny-deepseek-v4")
}

pub(crate) fn gguf(label: &str) -> PathBuf {
    dir().join(format!("tiny-dsv4-{label}.gguf"))
}

/// The `topk_all` variant's override: more blocks per query than the
/// sequence has, so the indexer's choice does not matter.
fn topk_all() -> Vec<(String, Value)> {
    vec![("deepseek4.attention.indexer.top_k".into(), Value::I64(64))]
}

fn open(label: &str, overrides: &[(String, Value)]) -> Model {
    Model::open(&gguf(label), overrides)
        .unwrap_or_else(|e| panic!("{label}: {e}"))
        .0
}

fn ds4(m: &mut Model) -> &mut Deepseek4Model {
    match m {
        Model::Deepseek4(d) => d,
        _ => panic!("not loaded as deepseek4"),
    }
}

/// `open` with the routed experts in f32 activations (DeepSeek's
/// arithmetic), for the comparisons with transformers.
fn open_f32_experts(label: &str, overrides: &[(String, Value)]) -> Model {
    let mut m = open(label, overrides);
    ds4(&mut m).f32_experts = true;
    m
}

fn summary() -> serde_json::Value {
    read_json(&dir().join("tiny-dsv4.topk_all.summary.json"))
}

fn prompt() -> Vec<u32> {
    ids(&summary()["tokens"])
}

fn reference(name: &str) -> Vec<f32> {
    read_f32(&dir().join(format!("tiny-dsv4.{name}.logits.f32.bin")))
}

/// Every position's logits from one pass.
fn all_logits(m: &Model, toks: &[u32]) -> Vec<f32> {
    let mut st = m.new_state(toks.len() + 32);
    m.forward(toks, &mut st, true).expect("forward")
}

/// Max and mean |Δ| and top-1 agreement of two `[n][n_vocab]` sets.
#[derive(Debug, Clone, Copy)]
struct Diff {
    max: f32,
    mean: f64,
    top1: usize,
    worst: usize,
}

fn diff(a: &[f32], b: &[f32], nv: usize) -> Diff {
    assert_eq!(a.len(), b.len(), "logit shapes");
    let mut d = Diff {
        max: 0.0,
        mean: 0.0,
        top1: 0,
        worst: 0,
    };
    for (t, (x, y)) in a.chunks_exact(nv).zip(b.chunks_exact(nv)).enumerate() {
        let m = max_abs_diff(x, y);
        if m > d.max {
            (d.max, d.worst) = (m, t);
        }
        d.mean += x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs() as f64)
            .sum::<f64>();
        d.top1 += usize::from(argmax(x) == argmax(y));
    }
    d.mean /= a.len() as f64;
    d
}

fn show(what: &str, d: Diff) {
    eprintln!(
        "{what}: max |Δ| {:.3e} (position {}), mean {:.3e}, top-1 {}/{}",
        d.max, d.worst, d.mean, d.top1, 200
    );
}

/// With every block selected and f32 activations into the experts, the
/// f32 file reproduces transformers closer than llama.cpp does (whose
/// MXFP4 expert products round activations to Q8_0).
#[test]
fn dsv4_topk_all_matches_transformers() {
    let m = open_f32_experts("f32", &topk_all());
    let nv = m.n_vocab();
    let ours = all_logits(&m, &prompt());
    let hf = reference("topk_all.hf-fp32");
    let d = diff(&ours, &hf, nv);
    let llama = diff(&reference("topk_all.f32"), &hf, nv);
    show("ours vs transformers", d);
    show("llama.cpp vs transformers", llama);
    assert!(d.max < 1e-3, "{d:?}");
    assert!(
        d.max <= llama.max && d.mean <= llama.mean,
        "{d:?} vs {llama:?}"
    );
    assert!(d.top1 >= llama.top1, "{d:?} vs {llama:?}");
}

/// By default the routed experts run as quantized dot products (MXFP4
/// against Q8_0 activations, as ggml does), not through an f32 copy of
/// their weights: the logits move off transformers' by what that rounding
/// costs, on average as far as llama.cpp's own logits for the file are.
/// (Measured: mean |Δ| 5.7e-4 vs llama.cpp's 4.9e-4, top-1 198 vs 199 of
/// 200; the max, 7.9e-2 vs 4.1e-3, is one position where a near-tie
/// between experts fell the other way, within the Q8_0 file's bound.)
#[test]
fn dsv4_experts_run_quantized_by_default() {
    let m = open("f32", &topk_all());
    let nv = m.n_vocab();
    let toks = prompt();
    let ours = all_logits(&m, &toks);
    let f32x = all_logits(&open_f32_experts("f32", &topk_all()), &toks);
    let hf = reference("topk_all.hf-fp32");
    let d = diff(&ours, &hf, nv);
    let llama = diff(&reference("topk_all.f32"), &hf, nv);
    let moved = diff(&ours, &f32x, nv);
    show("quantized experts vs transformers", d);
    show("llama.cpp vs transformers", llama);
    show("quantized vs f32 experts", moved);
    assert!(
        moved.max > 1e-5,
        "the default did not change the products: {moved:?}"
    );
    assert!(
        d.max < 0.15 && d.mean <= llama.mean * 1.5,
        "{d:?} vs {llama:?}"
    );
    assert!(d.top1 + 3 >= llama.top1, "{d:?} vs {llama:?}");
}

/// Greedy decoding through the compressed cache continues the prompt as
/// transformers does (recomputing the whole sequence each step).
#[test]
fn dsv4_greedy_matches_transformers() {
    let want = ids(&summary()["reference"]["greedy"]);
    let m = open_f32_experts("f32", &topk_all());
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
    assert_eq!(got, want);
}

fn selections(st: &SeqState) -> Vec<Selection> {
    let SeqState::Ds4(c) = st else {
        panic!("not a deepseek4 state")
    };
    c.selections.clone()
}

/// Runs the prompt at the configured top-k 4, recording the indexer's
/// choices; returns the logits and per (layer, position) blocks.
fn topk4_run(m: &Model) -> (Vec<f32>, Vec<Selection>) {
    let toks = prompt();
    let mut st = m.new_state(toks.len());
    if let SeqState::Ds4(c) = &mut st {
        c.record_selections = true;
    }
    let out = m.forward(&toks, &mut st, true).unwrap();
    (out, selections(&st))
}

/// (layer, position) pairs whose blocks differ from the reference trace
/// `tiny-dsv4.topk4.selection.<rule>.json`.
fn selection_misses(got: &[Selection], rule: &str) -> Vec<(usize, usize)> {
    let j = read_json(&dir().join(format!("tiny-dsv4.topk4.selection.{rule}.json")));
    let mut miss = Vec::new();
    let mut seen = 0;
    for s in got {
        let want = ids(&j["layers"][s.layer.to_string()]["selected"][s.pos]);
        seen += 1;
        if want != s.blocks {
            miss.push((s.layer, s.pos));
        }
    }
    assert_eq!(seen, 2 * 200, "two CSA layers × 200 queries");
    miss
}

/// At top-k 4 the model follows DeepSeek's indexer (Hadamard + FP4 round
/// trip of queries and keys): with an f32 cache it reproduces the
/// `deepseek-ref` logits and every selection; with the default f16 cache
/// (half the bytes) the same up to near-ties. Without the FP4 step
/// (transformers' and llama.cpp's rule) about half the choices change, and
/// the choices are transformers' own up to how exact ties are broken.
#[test]
fn dsv4_topk4_follows_deepseeks_indexer() {
    let mut m = open_f32_experts("f32", &[]);
    let nv = m.n_vocab();
    let want = reference("topk4.deepseek-ref");

    ds4(&mut m).kv_type = KvType::F32;
    let (out, sel) = topk4_run(&m);
    let d = diff(&out, &want, nv);
    show("f32 cache vs deepseek-ref", d);
    assert!(d.max < 1e-4 && d.top1 == 200, "{d:?}");
    assert_eq!(selection_misses(&sel, "deepseek-ref"), vec![]);

    ds4(&mut m).kv_type = KvType::F16;
    let (out, sel) = topk4_run(&m);
    let d = diff(&out, &want, nv);
    show("f16 cache vs deepseek-ref", d);
    let miss = selection_misses(&sel, "deepseek-ref");
    eprintln!("f16 cache: selections differing from deepseek-ref: {miss:?}");
    assert!(miss.len() <= 3, "{miss:?}");
    assert!(d.mean < 1e-3 && d.top1 >= 198 && d.max < 0.2, "{d:?}");

    ds4(&mut m).indexer = IndexerRule::Plain;
    let (out, sel) = topk4_run(&m);
    let d = diff(&out, &want, nv);
    show("without the FP4 step vs deepseek-ref", d);
    let miss = selection_misses(&sel, "deepseek-ref");
    assert!(
        miss.iter().filter(|x| x.0 == 1).count() > 60,
        "{}",
        miss.len()
    );
    assert!(d.max > 0.2 && d.top1 < 180, "{d:?}");
    // That rule is transformers': in layer 1 (whose inputs do not depend on
    // earlier choices) the blocks differ only where transformers' top-k
    // broke an exact tie (gap 0) otherwise than by the lowest index.
    let j = read_json(&dir().join("tiny-dsv4.topk4.selection.hf.json"));
    let miss1: Vec<usize> = selection_misses(&sel, "hf")
        .into_iter()
        .filter(|x| x.0 == 1)
        .map(|x| x.1)
        .collect();
    eprintln!("plain rule vs transformers, layer 1: {miss1:?}");
    for t in &miss1 {
        assert_eq!(
            j["layers"]["1"]["gap"][*t].as_f64(),
            Some(0.0),
            "position {t}"
        );
    }
}

/// The Q8_0 file (attention and shared experts Q8_0, experts MXFP4):
/// within quantization error of transformers; llama-exact mode (Q8_0
/// activations into the experts, ggml's product orders) tracks llama.cpp's
/// own logits for the file more closely than the default. Every level:
/// llama-exact max |Δ| 1.58e-2 measured, bound 5e-2 (module doc).
#[test]
fn dsv4_q8_0_file() {
    let hf = reference("topk_all.hf-fp32");
    let llama = reference("topk_all.Q8_0");
    let mut m = open("Q8_0", &topk_all());
    let nv = m.n_vocab();
    let ours = all_logits(&m, &prompt());
    let vs_hf = diff(&ours, &hf, nv);
    let vs_llama = diff(&ours, &llama, nv);
    let llama_hf = diff(&llama, &hf, nv);
    show("Q8_0 vs transformers", vs_hf);
    show("Q8_0 vs llama.cpp Q8_0", vs_llama);
    show("llama.cpp Q8_0 vs transformers", llama_hf);
    assert!(
        vs_hf.max < 0.15 && vs_hf.mean < 8e-3 && vs_hf.top1 >= 180,
        "{vs_hf:?}"
    );

    m.set_llama_exact(true);
    let exact = all_logits(&m, &prompt());
    let ex_llama = diff(&exact, &llama, nv);
    show("Q8_0 llama-exact vs llama.cpp Q8_0", ex_llama);
    assert!(
        ex_llama.max < 0.05 && ex_llama.mean < vs_llama.mean,
        "{ex_llama:?}"
    );
}

/// llama-exact mode on the f32 file is closer to llama.cpp's logits than
/// to transformers' (the MXFP4 experts see Q8_0 activations, as in ggml).
/// Every level: max |Δ| 2.26e-3 measured, bound 3e-3 (module doc).
#[test]
fn dsv4_llama_exact_tracks_llama_cpp() {
    let mut m = open("f32", &topk_all());
    m.set_llama_exact(true);
    let nv = m.n_vocab();
    let ours = all_logits(&m, &prompt());
    let d = diff(&ours, &reference("topk_all.f32"), nv);
    let h = diff(&ours, &reference("topk_all.hf-fp32"), nv);
    show("f32 llama-exact vs llama.cpp", d);
    show("f32 llama-exact vs transformers", h);
    assert!(d.max < 3e-3 && d.mean < h.mean * 0.6, "{d:?} vs {h:?}");
}

/// Decoding one token at a time through the compressed cache gives the
/// logits of one pass over the whole sequence; so do uneven chunks, and a
/// truncation followed by a chunk (which recomputes the kept prefix).
#[test]
fn dsv4_cache_equals_recompute() {
    for label in ["f32", "Q8_0"] {
        let m = open(label, &[]);
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

        let mut st = m.new_state(toks.len());
        let mut chunked = Vec::new();
        for r in [0..37, 37..129, 129..130, 130..200] {
            chunked.extend(m.forward(&toks[r], &mut st, true).unwrap());
        }
        let c = max_abs_diff(&chunked, &full);
        assert!(c < 1e-4, "{label}: chunks differ by {c}");

        // Rewind below the held state: the kept prefix is recomputed.
        st.truncate(150);
        assert_eq!(st.len(), 150);
        let rest = m.forward(&toks[150..], &mut st, true).unwrap();
        let d = max_abs_diff(&rest, &full[150 * nv..]);
        assert!(d < 1e-4, "{label}: chunk after truncate differs by {d}");
        assert_eq!(st.len(), 200);
        eprintln!(
            "{label}: decode vs one pass {worst:.1e}, chunks {c:.1e}, after truncate {d:.1e}"
        );
    }
}

/// Several sequences in one batch give each one's own logits.
#[test]
fn dsv4_batch_equals_separate_runs() {
    let m = open("f32", &[]);
    let toks = prompt();
    let (a, b) = (&toks[..7], &toks[20..170]);
    let alone_a = all_logits(&m, a);
    let alone_b = all_logits(&m, b);
    let mut sa = m.new_state(200);
    let mut sb = m.new_state(200);
    let out = {
        let mut items: Vec<(&[u32], &mut SeqState, bool)> =
            vec![(a, &mut sa, true), (b, &mut sb, true)];
        m.forward_batch(&mut items).unwrap()
    };
    assert!(max_abs_diff(&out[0], &alone_a) < 1e-4);
    assert!(max_abs_diff(&out[1], &alone_b) < 1e-4);
    assert_eq!((sa.len(), sb.len()), (7, 150));
}

/// The cache holds the compressed form: per token only the compressed
/// entries (head 128 per 4 tokens in the two CSA layers, per 128 in the
/// HCA layer), indexer keys (64 per 4 tokens) and the token id; the rest
/// (windows, compressor states) does not grow.
#[test]
fn dsv4_cache_holds_the_compressed_form() {
    let m = open("f32", &[]);
    assert_eq!(m.arch(), "deepseek4");
    // (2 × (128 + 64) / 4 + 128 / 128) f16 values + 4 bytes.
    assert_eq!(m.kv_bytes_per_token(), 97 * 2 + 4);
    let Model::Deepseek4(d) = &m else {
        unreachable!()
    };
    assert_eq!(
        d.hp.kinds,
        vec![
            LayerKind::Sliding,
            LayerKind::Csa,
            LayerKind::Hca,
            LayerKind::Csa
        ]
    );
    let fixed = d.fixed_kv_bytes();
    let toks = prompt();
    let mut st = m.new_state(toks.len());
    m.forward(&toks, &mut st, false).unwrap();
    let SeqState::Ds4(c) = &st else {
        unreachable!()
    };
    // 50 CSA blocks × (128 + 64) f16 × 2 layers, 1 HCA block, 200 ids.
    let grown = 50 * 192 * 2 * 2 + 128 * 2 + 200 * 4;
    assert_eq!(c.compressed_bytes(), grown);
    assert!(
        st.bytes() <= fixed + grown && st.bytes() > grown,
        "{}",
        st.bytes()
    );
    eprintln!(
        "kv: {} bytes/token, {} bytes fixed, {} held after 200 tokens",
        m.kv_bytes_per_token(),
        fixed,
        st.bytes()
    );
    let err = m.forward(&[1], &mut st, false).unwrap_err();
    assert!(matches!(err, ModelError::ContextFull { .. }), "{err}");
}

/// A file whose metadata disagrees with its tensors (or lacks a key) is
/// rejected with an error that names the key.
#[test]
fn dsv4_bad_metadata_names_the_key() {
    let arr_i32 = |v: &[i32]| Some(Value::Array(Array::I32(v.to_vec())));
    let cases: &[(&str, Option<Value>)] = &[
        ("deepseek4.expert_count", Some(Value::U32(16))),
        ("deepseek4.expert_used_count", Some(Value::U32(3))),
        ("deepseek4.expert_feed_forward_length", Some(Value::U32(32))),
        ("deepseek4.expert_shared_count", Some(Value::U32(2))),
        ("deepseek4.embedding_length", Some(Value::U32(256))),
        ("deepseek4.attention.head_count", Some(Value::U32(8))),
        ("deepseek4.attention.head_count_kv", Some(Value::U32(2))),
        ("deepseek4.attention.key_length", Some(Value::U32(64))),
        ("deepseek4.attention.value_length", Some(Value::U32(64))),
        ("deepseek4.attention.q_lora_rank", Some(Value::U32(32))),
        (
            "deepseek4.attention.output_group_count",
            Some(Value::U32(4)),
        ),
        ("deepseek4.attention.output_lora_rank", Some(Value::U32(16))),
        (
            "deepseek4.attention.indexer.head_count",
            Some(Value::U32(8)),
        ),
        (
            "deepseek4.attention.indexer.key_length",
            Some(Value::U32(32)),
        ),
        (
            "deepseek4.attention.compress_ratios",
            arr_i32(&[0, 4, 4, 4]),
        ),
        (
            "deepseek4.attention.compress_ratios",
            arr_i32(&[4, 4, 128, 4]),
        ),
        (
            "deepseek4.attention.compress_ratios",
            arr_i32(&[0, 8, 128, 4]),
        ),
        ("deepseek4.attention.compress_ratios", arr_i32(&[0, 4, 128])),
        ("deepseek4.hash_layer_count", Some(Value::U32(3))),
        ("deepseek4.hash_layer_count", Some(Value::U32(1))),
        ("deepseek4.hyper_connection.count", Some(Value::U32(2))),
        ("deepseek4.expert_gating_func", Some(Value::U32(2))),
        ("deepseek4.rope.dimension_count", Some(Value::U32(63))),
        ("deepseek4.nextn_predict_layers", Some(Value::U32(4))),
        (
            "deepseek4.swiglu_clamp_exp",
            Some(Value::Array(Array::F32(vec![10.0; 2]))),
        ),
        ("deepseek4.attention.compress_ratios", None),
        ("deepseek4.expert_count", None),
        ("deepseek4.hyper_connection.count", None),
        ("deepseek4.attention.sliding_window", None),
        ("deepseek4.attention.indexer.top_k", None),
        ("deepseek4.attention.output_lora_rank", None),
        ("deepseek4.swiglu_clamp_exp", None),
        ("deepseek4.hash_layer_count", None),
    ];
    assert_each_bad_key_is_named(&gguf("f32"), cases);
}

fn with_mtp() -> PathBuf {
    with_mtp_tagged("bound")
}

/// The tiny file plus an MTP block as llama.cpp's MTP export lays it out
/// (`blk.4.*` with `nextn.*`, `nextn_predict_layers = 1`), in a temporary
/// file named by `tag`.
pub(crate) fn with_mtp_tagged(tag: &str) -> PathBuf {
    let f = GgufFile::open(gguf("f32")).unwrap();
    let mut w = GgufWriter::new(f.alignment()).unwrap();
    for (k, v) in f.metadata().iter() {
        let v = match k {
            "general.alignment" => continue,
            "deepseek4.block_count" => Value::U32(5),
            "deepseek4.attention.compress_ratios" => {
                Value::Array(Array::I32(vec![0, 4, 128, 4, 0]))
            }
            "deepseek4.swiglu_clamp_exp" | "deepseek4.swiglu_clamp_shexp" => {
                Value::Array(Array::F32(vec![10.0; 5]))
            }
            _ => v.clone(),
        };
        w.add_kv(k, v).unwrap();
    }
    w.add_kv("deepseek4.nextn_predict_layers", Value::U32(1))
        .unwrap();
    for t in f.tensors() {
        w.add_tensor(&t.name, &t.dims, t.ty, f.tensor_data(t).to_vec())
            .unwrap();
    }
    // Block 4: layer 3's tensors without its compressor and indexer.
    for t in f.tensors() {
        let Some(rest) = t.name.strip_prefix("blk.3.") else {
            continue;
        };
        if rest.contains("compressor") || rest.starts_with("indexer") {
            continue;
        }
        w.add_tensor(
            format!("blk.4.{rest}"),
            &t.dims,
            t.ty,
            f.tensor_data(t).to_vec(),
        )
        .unwrap();
    }
    let floats = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| (((i * 7919) % 101) as f32 * 0.01 - 0.5).to_le_bytes())
            .collect()
    };
    use dwarfstar_gguf::GgmlType;
    w.add_tensor(
        "blk.4.nextn.eh_proj.weight",
        &[256, 128],
        GgmlType::F32,
        floats(256 * 128),
    )
    .unwrap();
    for n in ["enorm", "hnorm"] {
        w.add_tensor(
            format!("blk.4.nextn.{n}.weight"),
            &[128],
            GgmlType::F32,
            floats(128),
        )
        .unwrap();
    }
    let path = std::env::temp_dir().join(format!("dsv4-mtp-{tag}-{}.gguf", std::process::id()));
    w.write_to_path(&path).unwrap();
    path
}

/// An MTP block is bound (for speculative decoding later) and leaves the
/// trunk's logits unchanged.
#[test]
fn dsv4_mtp_block_is_bound() {
    let path = with_mtp();
    let mut m = open("f32", &[]);
    let mut mt = Model::open(&path, &[]).expect("file with MTP loads").0;
    let _ = std::fs::remove_file(&path);
    assert_eq!(mt.n_layer(), 4);
    {
        let d = ds4(&mut mt);
        let mtp = d.w.mtp.as_ref().expect("MTP block bound");
        assert_eq!(mtp.block, 4);
        let EhProj::Joint(eh) = &mtp.eh_proj else {
            panic!("llama.cpp's MTP block has a joint eh_proj")
        };
        assert_eq!((eh.rows, eh.cols), (128, 256));
        assert_eq!(mtp.layer.kind, LayerKind::Sliding);
        assert!(mtp.shared_head_norm.is_none() && mtp.head.is_none());
    }
    assert!(ds4(&mut m).w.mtp.is_none());
    let toks = &prompt()[..24];
    assert_eq!(all_logits(&m, toks), all_logits(&mt, toks));
}

/// The tiny file as ds4 lays out a trunk: `vocab_size` present, one MTP
/// block declared (`nextn_predict_layers` 1) but not counted in
/// `block_count` nor held, compress ratios with the MTP slot; with
/// `mtp_in_file`, ds4's `mtp.0.*` block is in the same file.
fn ds4_trunk(mtp_in_file: bool) -> PathBuf {
    ds4_trunk_tagged(mtp_in_file, "load")
}

/// [`ds4_trunk`] in a temporary file named by `tag`.
pub(crate) fn ds4_trunk_tagged(mtp_in_file: bool, tag: &str) -> PathBuf {
    let f = GgufFile::open(gguf("f32")).unwrap();
    let mut w = GgufWriter::new(f.alignment()).unwrap();
    for (k, v) in f.metadata().iter() {
        let v = match k {
            "general.alignment" => continue,
            "deepseek4.attention.compress_ratios" => {
                Value::Array(Array::I32(vec![0, 4, 128, 4, 0]))
            }
            _ => v.clone(),
        };
        w.add_kv(k, v).unwrap();
    }
    w.add_kv("deepseek4.nextn_predict_layers", Value::U32(1))
        .unwrap();
    w.add_kv("deepseek4.vocab_size", Value::U32(4096)).unwrap();
    for t in f.tensors() {
        w.add_tensor(&t.name, &t.dims, t.ty, f.tensor_data(t).to_vec())
            .unwrap();
    }
    if mtp_in_file {
        add_ds4_mtp(&f, &mut w);
    }
    let path = std::env::temp_dir().join(format!(
        "dsv4-ds4-trunk-{mtp_in_file}-{tag}-{}.gguf",
        std::process::id()
    ));
    w.write_to_path(&path).unwrap();
    path
}

/// ds4's `mtp.0.*` tensors: layer 3's (no compressor or indexer), split
/// `e_proj`/`h_proj`, `enorm`, `hnorm`, `norm` and its own `hc_head_*`.
pub(crate) fn add_ds4_mtp(f: &GgufFile, w: &mut GgufWriter) {
    use dwarfstar_gguf::GgmlType;
    for t in f.tensors() {
        let data = f.tensor_data(t).to_vec();
        if let Some(rest) = t.name.strip_prefix("blk.3.") {
            if !(rest.contains("compressor") || rest.starts_with("indexer")) {
                w.add_tensor(format!("mtp.0.{rest}"), &t.dims, t.ty, data)
                    .unwrap();
            }
        } else if let Some(rest) = t.name.strip_prefix("output_hc_") {
            w.add_tensor(format!("mtp.0.hc_head_{rest}"), &t.dims, t.ty, data)
                .unwrap();
        }
    }
    let floats = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| (((i * 7919) % 101) as f32 * 0.01 - 0.5).to_le_bytes())
            .collect()
    };
    for n in ["e_proj", "h_proj"] {
        w.add_tensor(
            format!("mtp.0.{n}.weight"),
            &[128, 128],
            GgmlType::F32,
            floats(128 * 128),
        )
        .unwrap();
    }
    for n in ["enorm", "hnorm", "norm"] {
        w.add_tensor(
            format!("mtp.0.{n}.weight"),
            &[128],
            GgmlType::F32,
            floats(128),
        )
        .unwrap();
    }
}

fn assert_ds4_mtp(m: &mut Model) {
    let d = ds4(m);
    let mtp = d.w.mtp.as_ref().expect("ds4 MTP block bound");
    assert_eq!(mtp.block, 4);
    let EhProj::Split { e, h } = &mtp.eh_proj else {
        panic!("ds4's MTP block keeps e_proj and h_proj apart")
    };
    assert_eq!((e.rows, e.cols, h.rows, h.cols), (128, 128, 128, 128));
    assert_eq!(mtp.layer.kind, LayerKind::Sliding);
    assert!(mtp.shared_head_norm.is_some() && mtp.hc_head.is_some());
}

/// ds4's own layout loads: a trunk that declares an MTP block it does not
/// hold runs all its 4 layers (the same logits as llama.cpp's file), and
/// ds4's `mtp.0.*` block binds from the trunk's file or from a file of
/// its own; a file without it is refused by name.
#[test]
fn dsv4_ds4_layout_and_mtp_files_load() {
    let plain = open("f32", &[]);
    let toks = &prompt()[..24];
    let want = all_logits(&plain, toks);

    let trunk = ds4_trunk(false);
    let mut m = Model::open(&trunk, &[]).expect("ds4 trunk loads").0;
    assert_eq!(m.n_layer(), 4, "every block of a ds4 trunk is a layer");
    assert!(ds4(&mut m).w.mtp.is_none());
    assert_eq!(all_logits(&m, toks), want);

    let with = ds4_trunk(true);
    let mut mw = Model::open(&with, &[])
        .expect("ds4 trunk with mtp.0 loads")
        .0;
    assert_ds4_mtp(&mut mw);
    assert_eq!(all_logits(&mw, toks), want);

    // ds4's MTP GGUF on its own, attached to the trunk.
    let f = GgufFile::open(gguf("f32")).unwrap();
    let mut w = GgufWriter::new(f.alignment()).unwrap();
    w.add_kv("general.architecture", "deepseek4").unwrap();
    add_ds4_mtp(&f, &mut w);
    let side = std::env::temp_dir().join(format!("dsv4-ds4-mtp-{}.gguf", std::process::id()));
    w.write_to_path(&side).unwrap();
    let side_file = std::sync::Arc::new(GgufFile::open(&side).unwrap());
    ds4(&mut m)
        .attach_mtp(side_file)
        .expect("ds4 MTP file attaches");
    assert_ds4_mtp(&mut m);
    assert!(ds4(&mut m).w.mtp.as_ref().unwrap().file.is_some());
    assert_eq!(all_logits(&m, toks), want);

    let not_mtp = std::sync::Arc::new(GgufFile::open(gguf("f32")).unwrap());
    let err = ds4(&mut m).attach_mtp(not_mtp).unwrap_err().to_string();
    assert!(err.contains("mtp.0.e_proj.weight"), "{err}");
    for p in [&trunk, &with, &side] {
        let _ = std::fs::remove_file(p);
    }
}

/// `dwarfstar run` and `dwarfstar bench` work on the tiny model.
#[test]
fn dsv4_cli_run_and_bench() {
    let model = gguf("f32");
    let model = model.to_str().unwrap();
    let out = dwarfstar(&[
        "run",
        "--model",
        model,
        "--prompt",
        "The quick brown fox",
        "-n",
        "16",
        "--temp",
        "0",
        "--ignore-eos",
        "--json",
        "--threads",
        "2",
    ]);
    assert!(
        out.status.success(),
        "run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["tokens"].as_array().map(|t| t.len()), Some(16), "{v}");
    let out = dwarfstar(&[
        "bench",
        "--model",
        model,
        "-p",
        "64",
        "-n",
        "16",
        "-r",
        "1",
        "--json",
        "--threads",
        "2",
    ]);
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    eprintln!("bench: {v}");
}
