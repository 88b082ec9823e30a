//! Weights paged under a memory budget (`dwarfstar_model::store`): logits
//! bit-identical to the mapped file's for tiny DeepSeek V3 under a budget
//! that forces expert eviction (plain and llama-exact kernels, single and
//! batched) and for SmolLM2 with streamed layers; the store's statistics;
//! `bench --json`'s paging fields; and generation under a memory cgroup
//! limit (v1 or v2, see [`crate::cgroup`]) of half the file's size giving
//! the same tokens as an unlimited run.

use std::path::{Path, PathBuf};
use std::process::Output;

use dwarfstar_gguf::GgufFile;
use dwarfstar_model::sampler::argmax;
use dwarfstar_model::store::{StoreConfig, StoreStats};
use dwarfstar_model::Model;

use crate::cgroup::Cgroup;
use crate::common::*;

fn tiny(label: &str) -> PathBuf {
    fixtures().join(format!("tiny-deepseek-v3/tiny-dsv3-{label}.gguf"))
}

fn prompt() -> Vec<u32> {
    let j = read_json(&fixtures().join("tiny-deepseek-v3/tiny-dsv3.summary.json"));
    ids(&j["tokens"])
}

pub(crate) fn open(path: &Path, exact: bool) -> Model {
    let mut m = Model::open(path, &[]).expect("model loads").0;
    m.set_llama_exact(exact);
    m
}

/// Every prompt position's logits, then `steps` greedy decode steps' logits.
pub(crate) fn trace(m: &Model, toks: &[u32], steps: usize) -> Vec<Vec<f32>> {
    let mut st = m.new_state(toks.len() + steps + 1);
    let mut out = vec![m.forward(toks, &mut st, true).expect("prompt")];
    for _ in 0..steps {
        let last = &out[out.len() - 1];
        let next = argmax(&last[last.len() - m.n_vocab()..]) as u32;
        out.push(m.forward(&[next], &mut st, false).expect("decode"));
    }
    out
}

/// Two sequences in one batched pass.
pub(crate) fn batched(m: &Model, a: &[u32], b: &[u32]) -> Vec<Vec<f32>> {
    let mut sa = m.new_state(a.len() + 1);
    let mut sb = m.new_state(b.len() + 1);
    m.forward_batch(&mut [(a, &mut sa, true), (b, &mut sb, false)])
        .expect("batch")
}

pub(crate) fn assert_bits_equal(what: &str, a: &[Vec<f32>], b: &[Vec<f32>]) {
    assert_eq!(a.len(), b.len(), "{what}: steps");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.len(), y.len(), "{what}: step {i} length");
        let differ = x
            .iter()
            .zip(y)
            .filter(|(p, q)| p.to_bits() != q.to_bits())
            .count();
        assert_eq!(
            differ,
            0,
            "{what}: step {i}: {differ} logits differ (max |Δ| {:e})",
            max_abs_diff(x, y)
        );
    }
}

/// Bytes of the routed-expert stacks in `path`.
pub(crate) fn expert_bytes(path: &Path) -> u64 {
    let f = GgufFile::open(path).expect("gguf");
    f.tensors()
        .iter()
        .filter(|t| t.name.contains("_exps."))
        .map(|t| t.n_bytes)
        .sum()
}

/// The smallest budget (in 16 KiB steps above the non-expert weights)
/// that `m` accepts: the expert cache holds only its minimum.
pub(crate) fn tightest_budget(m: &mut Model, path: &Path) -> StoreConfig {
    let mut b = m.weight_bytes() - expert_bytes(path);
    loop {
        let cfg = StoreConfig::new(b);
        if m.set_memory_budget(&cfg).is_ok() {
            assert!(m.store_stats().paged, "a budget below the weights pages");
            return cfg;
        }
        b += 16 << 10;
        assert!(
            b < m.weight_bytes(),
            "no budget below the weights' size pages"
        );
    }
}

pub(crate) fn sane(s: &StoreStats, what: &str) {
    assert!(s.paged, "{what}: {s:?}");
    assert!(s.resident_bytes <= s.budget_bytes, "{what}: {s:?}");
    assert!(
        s.bytes_read > 0 && s.reads > 0 && s.tokens > 0,
        "{what}: {s:?}"
    );
    assert!(s.io_stall_s >= 0.0 && s.io_read_s > 0.0, "{what}: {s:?}");
    assert!((0.0..=1.0).contains(&s.expert_hit_rate()), "{what}: {s:?}");
}

/// Budgets for a paged run of `path`: the tightest one `m` accepts (the
/// expert cache at its minimum, layers streamed too), or the non-expert
/// weights plus half of the experts.
#[derive(Clone, Copy, Debug)]
enum Budget {
    Tightest,
    HalfTheExperts,
}

fn deepseek_paged_matches_mapped(label: &str, exact: bool, budget: Budget) {
    let path = tiny(label);
    let toks = prompt();
    let mapped = open(&path, exact);
    let want = trace(&mapped, &toks, 16);
    let want_batch = batched(&mapped, &toks, &toks[..10]);
    assert!(!mapped.store_stats().paged);

    let mut paged = open(&path, exact);
    let cfg = match budget {
        Budget::Tightest => tightest_budget(&mut paged, &path),
        Budget::HalfTheExperts => {
            let cfg = StoreConfig::new(paged.weight_bytes() - expert_bytes(&path) / 2);
            paged.set_memory_budget(&cfg).expect("budget");
            cfg
        }
    };
    let what = format!("{label} (exact {exact}, {budget:?})");
    let got = trace(&paged, &toks, 16);
    assert_bits_equal(&what, &want, &got);
    assert_bits_equal(
        &format!("{what} batched"),
        &want_batch,
        &batched(&paged, &toks, &toks[..10]),
    );
    let s = paged.store_stats();
    sane(&s, &what);
    assert_eq!(s.budget_bytes, cfg.budget);
    // 24 + 16 + 34 tokens through 3 MoE layers of 8 experts, a cache of
    // a few: experts come and go.
    assert_eq!(s.tokens, 24 + 16 + 34);
    assert!(s.expert_misses > 0 && s.evictions > 0, "{what}: {s:?}");
    assert!(s.expert_hits + s.expert_prefetch_hits > 0, "{what}: {s:?}");
    assert!(s.prefetches > 0, "{what}: pre-gating issued nothing: {s:?}");
    match budget {
        Budget::HalfTheExperts => assert_eq!(s.streamed_layers, 0, "{what}: layers stay resident"),
        Budget::Tightest => assert!(s.streamed_layers > 0, "{what}: layers stream too"),
    }
}

#[test]
fn tiny_deepseek_paged_experts_are_bit_identical() {
    deepseek_paged_matches_mapped("q8_0", false, Budget::HalfTheExperts);
    deepseek_paged_matches_mapped("q8_0", false, Budget::Tightest);
}

#[test]
fn tiny_deepseek_paged_experts_are_bit_identical_in_llama_exact_mode() {
    deepseek_paged_matches_mapped("Q4_K_M", true, Budget::HalfTheExperts);
    deepseek_paged_matches_mapped("Q4_K_M", true, Budget::Tightest);
}

#[test]
fn dense_streamed_layers_are_bit_identical() {
    let path = model_path(SMOLLM2);
    let toks: Vec<u32> = vec![1, 504, 2365, 278, 2697, 275, 1324, 544, 382, 851];
    let mapped = open(&path, false);
    let want = trace(&mapped, &toks, 8);
    let mut paged = open(&path, false);
    // The Q8_0 embedding table (30 MB) plus a few of the 30 layers.
    let cfg = StoreConfig::new(paged.weight_bytes() * 45 / 100);
    paged.set_memory_budget(&cfg).expect("budget");
    assert_bits_equal("smollm2", &want, &trace(&paged, &toks, 8));
    let s = paged.store_stats();
    sane(&s, "smollm2");
    assert!(s.streamed_layers > 0 && s.streamed_layers < 30, "{s:?}");
    assert_eq!(s.expert_misses + s.expert_hits, 0);
    // Every pass reads each streamed layer once, nearly all ahead of time.
    let passes = 1 + 8;
    assert_eq!(
        s.layer_hits + s.layer_prefetch_hits + s.layer_misses,
        passes * s.streamed_layers as u64
    );
    assert!(s.layer_prefetch_hits >= s.layer_misses, "{s:?}");
}

#[test]
fn too_small_a_budget_is_a_clear_error() {
    let mut m = open(&tiny("q8_0"), false);
    let e = m
        .set_memory_budget(&StoreConfig::new(64 << 10))
        .expect_err("64 KiB cannot hold the embeddings");
    assert!(e.to_string().contains("too small"), "{e}");
    // The model still runs from the mapped file.
    assert!(!m.store_stats().paged);
    m.forward(&[1, 2], &mut m.new_state(4), false)
        .expect("runs");
}

#[test]
fn bench_json_reports_paging() {
    let path = tiny("q8_0");
    // The non-expert weights and 1 MiB of experts (of 2.4 MiB).
    let budget = open(&path, false).weight_bytes() - expert_bytes(&path) + (1 << 20);
    let flag = budget.to_string();
    let args = [
        "bench",
        "-m",
        path.to_str().expect("utf-8 path"),
        "-p",
        "8",
        "-n",
        "8",
        "-r",
        "1",
        "--json",
    ];
    let mut paged = args.to_vec();
    paged.extend(["--mem-budget", &flag]);
    let j: serde_json::Value =
        serde_json::from_slice(&ok(dwarfstar(&paged), "bench").stdout).expect("json");
    assert_eq!(j["paged"], true, "{j}");
    let hit = j["expert_hit_rate"].as_f64().expect("expert_hit_rate");
    assert!((0.0..=1.0).contains(&hit), "{j}");
    assert!(
        j["bytes_read_per_token"]
            .as_f64()
            .expect("bytes_read_per_token")
            > 0.0,
        "{j}"
    );
    assert!(j["io_stall_s"].as_f64().expect("io_stall_s") >= 0.0, "{j}");
    let resident = j["resident_bytes"].as_u64().expect("resident_bytes");
    assert!(resident > 0 && resident <= budget, "{j}");
    let mut mapped = args.to_vec();
    mapped.extend(["--mem-budget", "none"]);
    let j: serde_json::Value =
        serde_json::from_slice(&ok(dwarfstar(&mapped), "bench").stdout).expect("json");
    assert_eq!(
        (j["paged"].clone(), j["expert_hit_rate"].as_f64()),
        (false.into(), Some(1.0)),
        "{j}"
    );
    assert_eq!(j["bytes_read_per_token"].as_f64(), Some(0.0), "{j}");
}

pub(crate) fn tokens(out: &Output) -> Vec<u64> {
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
    });
    j["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_u64().expect("id"))
        .collect()
}

/// What `deploy/paging-check.sh` checks, on a small synthetic MoE: the
/// same greedy tokens with a memory cgroup limit of half the file's size
/// (the default budget follows the cgroup) as without a limit.
#[test]
fn generation_under_a_cgroup_limit_of_half_the_file_matches_unlimited() {
    let cg = Cgroup::create(&format!("dwarfstar-paging-test-{}", std::process::id()));
    let dir = std::env::temp_dir().join(format!("dwarfstar-paging-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let model = dir.join("moe.gguf");
    let m = model.to_str().expect("utf-8 path");
    let tok = model_path(SMOLLM2);
    ok(
        dwarfstar(&[
            "synth",
            m,
            "--size",
            "192MiB",
            "--tokenizer-from",
            tok.to_str().expect("utf-8"),
        ]),
        "synth",
    );
    let size = std::fs::metadata(&model).expect("model").len();
    let gen = |budget: &[&str]| {
        let mut a = vec![
            "run",
            "-m",
            m,
            "-p",
            "The capital of France is",
            "-n",
            "24",
            "--temp",
            "0",
        ];
        a.extend(["--ignore-eos", "-c", "64", "--json", "-t", "2"]);
        a.extend(budget);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let free = ok(
        dwarfstar(
            &gen(&["--mem-budget", "none"])
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>(),
        ),
        "unlimited run",
    );

    cg.limit(size / 2);
    let args = gen(&[]);
    let capped = cg.run(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let peak = cg.peak();
    let capped = ok(capped, "run under the cgroup limit");
    let note = String::from_utf8_lossy(&capped.stderr);
    assert!(
        note.contains("paged within a budget"),
        "the default budget did not follow the cgroup: {note}"
    );
    assert_eq!(tokens(&capped), tokens(&free), "tokens under the limit");
    eprintln!(
        "file {size} bytes, limit {}, peak usage {peak:?}; {}",
        size / 2,
        note.trim()
    );
    drop(cg);
    let _ = std::fs::remove_dir_all(&dir);
}
