//! Quantized KV caches (`--kv-type`) on the real models against
//! llama.cpp's reference continuations (tests/fixtures/{smollm2,gemma3}),
//! which were made with an f32 cache.
//!
//! What is asserted holds on any CPU: the arithmetic of every cache type is
//! the same on every SIMD level (the kernels sum in ggml's x86 order at the
//! scalar level too, and f16 keys are dotted in one fixed order, see
//! `kv_attn`), and the bounds leave margin over what was measured. Per
//! cache type and case:
//! - f32: the logits equal llama.cpp's (|Δ| = 0) at the last prompt
//!   position and at every teacher-forced step, so all 32 greedy tokens
//!   are llama.cpp's;
//! - f16, q8_0, q4_0: logit drift (max |Δ| over the last prompt position's
//!   full logits, and over the reference top-10 of every teacher-forced
//!   step) within the type's [`bounds`], and agreement with the f32 cache
//!   at the first step ([`first_rank_bound`]).
//!
//! How many free-running greedy tokens match the reference is printed as a
//! table, not asserted: after a near-tie (the reference has top-2 gaps of
//! 0.005-0.1 on these prompts) any rounding change picks the other branch,
//! and llama.cpp's own f16 cache moves logits by ~0.8 (reference README).

use dwarfstar_model::sampler::argmax;
use dwarfstar_model::{KvCache, KvType, Model, SeqState};

use crate::common::*;

struct Outcome {
    /// Greedy tokens equal to the reference before the first difference.
    matched: usize,
    total: usize,
    /// Max |Δ| over the last prompt position's logits.
    last: f32,
    /// Max |Δ| over the reference top-10 logits of every step, the
    /// reference tokens fed back (teacher forcing).
    steps: f32,
    /// The rank of llama.cpp's (the f32 cache's) first generated token
    /// among this cache's logits at the last prompt position (0 = argmax).
    first_rank: usize,
    /// llama.cpp's top-2 gap there.
    first_gap: f32,
}

fn state(m: &Model, ty: KvType, capacity: usize) -> SeqState {
    let Model::Dense(d) = m else {
        panic!("a dense model")
    };
    let hp = &d.hp;
    SeqState::Dense(
        KvCache::with_type(
            hp.n_layer,
            (hp.k_dim(), hp.head_dim_k),
            (hp.v_dim(), hp.head_dim_v),
            capacity,
            ty,
        )
        .expect("heads fit the KV type"),
    )
}

fn run_case(model_file: &str, dir: &str, case: &str, ty: KvType) -> Outcome {
    let m = load_exact(model_file);
    let fx = fixtures().join(dir);
    let j = read_json(&fx.join(format!("{case}.json")));
    let prompt = ids(&j["prompt_ids"]);
    let expected = ids(&j["generated_ids"]);
    let steps = j["steps"].as_array().expect("steps");
    let cap = prompt.len() + expected.len() + 1;

    // Teacher-forced: drift of the reference top-10 logits at every step.
    let mut st = state(&m.model, ty, cap);
    let mut logits = m.model.forward(&prompt, &mut st, false).unwrap();
    let last_ref = read_f32(&fx.join(j["last_prompt_logits_file"].as_str().unwrap()));
    let last = max_abs_diff(&logits, &last_ref);
    let first_rank = logits
        .iter()
        .filter(|&&l| l > logits[expected[0] as usize])
        .count();
    let top = steps[0]["top"].as_array().expect("top");
    let first_gap = (top[0][1].as_f64().unwrap() - top[1][1].as_f64().unwrap()) as f32;
    let mut worst = 0f32;
    for (k, &want) in expected.iter().enumerate() {
        for pair in steps[k]["top"].as_array().expect("top") {
            let id = pair[0].as_u64().unwrap() as usize;
            let l = pair[1].as_f64().unwrap() as f32;
            worst = worst.max((logits[id] - l).abs());
        }
        if k + 1 < expected.len() {
            logits = m.model.forward(&[want], &mut st, false).unwrap();
        }
    }

    // Free-running greedy: tokens equal to the reference.
    let mut st = state(&m.model, ty, cap);
    let mut logits = m.model.forward(&prompt, &mut st, false).unwrap();
    let mut matched = 0;
    for &want in &expected {
        let got = argmax(&logits);
        if got != want {
            break;
        }
        matched += 1;
        logits = m.model.forward(&[got], &mut st, false).unwrap();
    }
    Outcome {
        matched,
        total: expected.len(),
        last,
        steps: worst,
        first_rank,
        first_gap,
    }
}

const CASES: [(&str, &str, &str); 6] = [
    (SMOLLM2, "smollm2", "raw_fox"),
    (SMOLLM2, "smollm2", "raw_code"),
    (SMOLLM2, "smollm2", "chat_capital"),
    (SMOLLM2, "smollm2", "chat_system_haiku"),
    (GEMMA3, "gemma3", "raw_history"),
    (GEMMA3, "gemma3", "raw_list"),
];

/// Per type: the largest drift allowed at the last prompt position and at
/// any teacher-forced step (max |Δ| against llama.cpp's logits, which are
/// of order 20).
///
/// Measured (the same on scalar, AVX2 and AVX-512), worst over the six
/// prompts, last prompt / steps: f16 1.59 / 1.91, q8_0 1.99 / 2.51, q4_0
/// 6.58 / 8.31 (llama.cpp's own f16 cache moves these logits by 0.8-1.0,
/// reference README). The bounds sit about 1.5× above: they catch a broken
/// cache (a wrong block, scale or head offset drifts by tens), not the
/// rounding the types are for. f32 is held to exact bits.
fn bounds(ty: KvType) -> (f32, f32) {
    match ty {
        KvType::F32 => (0.0, 0.0),
        KvType::F16 => (2.5, 3.0),
        KvType::Q8_0 => (3.0, 4.0),
        KvType::Q4_0 => (10.0, 12.5),
    }
}

/// The worst rank this cache type may give the f32 cache's (llama.cpp's)
/// first token at the first step, where llama.cpp's top-2 logits are `gap`
/// apart: f16 and q8_0 must pick it where the gap is at least 1 (raw_fox,
/// raw_code) and have it in their top 2 after a near-tie (gaps of 0.06 to
/// 0.5 in the other prompts); q4_0, which moves logits by several units,
/// in its top 5. Measured: rank 0 for f16 and q8_0 on every prompt, up to
/// 2 for q4_0.
fn first_rank_bound(ty: KvType, gap: f32) -> usize {
    match ty {
        KvType::F32 => 0,
        KvType::F16 | KvType::Q8_0 if gap >= 1.0 => 0,
        KvType::F16 | KvType::Q8_0 => 1,
        KvType::Q4_0 => 4,
    }
}

#[test]
fn quantized_kv_caches_stay_close_to_llama_cpp() {
    let mut table = String::from(
        "| model / prompt | KV type | greedy tokens = reference | last-prompt max |Δ| | step top-10 max |Δ| | rank of f32's first token |\n|---|---|---|---|---|---|\n",
    );
    let mut failures = Vec::new();
    for ty in KvType::ALL {
        let (max_last, max_steps) = bounds(ty);
        for (file, dir, case) in CASES {
            let o = run_case(file, dir, case, ty);
            table.push_str(&format!(
                "| {dir}/{case} | {ty} | {}/{} | {:.3} | {:.3} | {} (gap {:.3}) |\n",
                o.matched, o.total, o.last, o.steps, o.first_rank, o.first_gap
            ));
            if o.last > max_last || o.steps > max_steps {
                failures.push(format!(
                    "{dir}/{case} {ty}: drift {} at the last prompt position, {} over the steps (bounds {max_last}, {max_steps})",
                    o.last, o.steps
                ));
            }
            let max_rank = first_rank_bound(ty, o.first_gap);
            if o.first_rank > max_rank {
                failures.push(format!(
                    "{dir}/{case} {ty}: the f32 cache's first token ranks {} here (bound {max_rank}, llama.cpp's top-2 gap {})",
                    o.first_rank, o.first_gap
                ));
            }
            if ty == KvType::F32 && o.matched != o.total {
                failures.push(format!("{dir}/{case} f32: {} tokens match", o.matched));
            }
        }
    }
    eprintln!("{table}");
    assert!(failures.is_empty(), "{failures:#?}\n{table}");
}

/// `--kv-type` on a model: caches of that type, smaller per position, and
/// decode through the cache equals one pass over the sequence (the same
/// rows are rounded either way).
#[test]
fn kv_type_applies_to_new_states_and_cache_equals_recompute() {
    let (mut m, _) = Model::open(&model_path(SMOLLM2), &[]).unwrap();
    let f32_bytes = m.kv_bytes_per_token();
    for ty in [KvType::F16, KvType::Q8_0, KvType::Q4_0] {
        m.set_kv_type(ty).unwrap();
        assert_eq!(m.kv_type(), ty);
        let b = m.kv_bytes_per_token();
        assert!(b < f32_bytes, "{ty}: {b} bytes per token");
        let seq: Vec<u32> = (0..20u32).map(|i| 300 + i * 37).collect();
        let nv = m.n_vocab();
        let mut full = m.new_state(32);
        let all = m.forward(&seq, &mut full, true).unwrap();
        assert_eq!(full.bytes(), 20 * b, "{ty}");
        let mut inc = m.new_state(32);
        let mut at = 0;
        for chunk in [6usize, 9, 5] {
            let l = m.forward(&seq[at..at + chunk], &mut inc, true).unwrap();
            let d = max_abs_diff(&l, &all[at * nv..(at + chunk) * nv]);
            assert!(d < 1e-5, "{ty}: positions {at}.. differ by {d}");
            at += chunk;
        }
    }
    // DeepSeek's latent cache refuses quantized types with a clear error.
    let p = fixtures().join("tiny-deepseek-v3/tiny-dsv3-f32.gguf");
    let (mut ds, _) = Model::open(&p, &[]).unwrap();
    let e = ds.set_kv_type(KvType::Q8_0).unwrap_err().to_string();
    assert!(e.contains("latent cache stays f32"), "{e}");
    ds.set_kv_type(KvType::F32).unwrap();
}
