//! DeepSeek V4 paged under a memory budget: the tiny V4 files
//! (`tests/fixtures/tiny-deepseek-v4`) give logits bit-identical to the
//! mapped file's with the expert cache at its minimum and layers streamed
//! (plain and llama-exact kernels, single and batched), hash-routed layers'
//! experts are read ahead exactly, and `run --json` / `bench --json` report
//! sane paging fields.

use std::path::{Path, PathBuf};

use dwarfstar_model::store::StoreStats;

use crate::common::*;
use crate::paging::{
    assert_bits_equal, batched, expert_bytes, open, sane, tightest_budget, tokens, trace,
};

fn tiny(label: &str) -> PathBuf {
    fixtures().join(format!("tiny-deepseek-v4/tiny-dsv4-{label}.gguf"))
}

/// The first 24 tokens of the reference prompt.
fn prompt() -> Vec<u32> {
    let j = read_json(&fixtures().join("tiny-deepseek-v4/tiny-dsv4.topk_all.summary.json"));
    ids(&j["tokens"])[..24].to_vec()
}

/// Runs `toks` (12 greedy steps, and a batch) through `path` mapped and
/// paged at the tightest budget (the expert cache at its minimum, layers
/// streamed): the logits must be the same bits. Returns the paged run's
/// store figures, checked for sanity, experts missed and evicted, layers
/// streamed.
pub(crate) fn paged_equals_mapped(
    path: &Path,
    toks: &[u32],
    what: &str,
    exact: bool,
) -> StoreStats {
    let mapped = open(path, exact);
    let want = trace(&mapped, toks, 12);
    let want_batch = batched(&mapped, toks, &toks[..10]);
    assert!(!mapped.store_stats().paged);
    let mut paged = open(path, exact);
    let cfg = tightest_budget(&mut paged, path);
    let what = format!("{what} (exact {exact})");
    assert_bits_equal(&what, &want, &trace(&paged, toks, 12));
    assert_bits_equal(
        &format!("{what} batched"),
        &want_batch,
        &batched(&paged, toks, &toks[..10]),
    );
    let s = paged.store_stats();
    eprintln!(
        "{what}: budget {} of {} bytes: {s:?}",
        cfg.budget,
        paged.weight_bytes()
    );
    sane(&s, &what);
    assert_eq!(s.budget_bytes, cfg.budget);
    assert!(s.streamed_layers > 0, "{what}: layers stream too: {s:?}");
    assert!(s.expert_misses > 0 && s.evictions > 0, "{what}: {s:?}");
    s
}

fn v4_paged_matches_mapped(label: &str, exact: bool) {
    let what = format!("V4 {label}");
    let s = paged_equals_mapped(&tiny(label), &prompt(), &what, exact);
    assert_eq!(s.tokens, 24 + 12 + 34);
    assert!(s.expert_hits + s.expert_prefetch_hits > 0, "{what}: {s:?}");
    assert!(s.prefetches > 0, "{what}: nothing read ahead: {s:?}");
}

#[test]
fn tiny_v4_paged_is_bit_identical() {
    v4_paged_matches_mapped("Q8_0", false);
}

#[test]
fn tiny_v4_paged_is_bit_identical_in_llama_exact_mode() {
    v4_paged_matches_mapped("f32", true);
}

/// `run --json` gives the same tokens paged as mapped, and `bench --json`
/// reports the V4 store's paging: a hit rate, bytes read per token, the
/// resident bytes within the budget.
#[test]
fn tiny_v4_cli_pages() {
    let path = tiny("Q8_0");
    let m = path.to_str().expect("utf-8 path");
    // The non-expert weights and a third of the experts.
    let budget = open(&path, false).weight_bytes() - expert_bytes(&path) * 2 / 3;
    let flag = budget.to_string();
    let run = |b: &str| {
        let a = [
            "run",
            "-m",
            m,
            "-p",
            "The quick brown fox",
            "-n",
            "12",
            "--temp",
            "0",
            "--ignore-eos",
            "--json",
            "-t",
            "2",
            "--mem-budget",
            b,
        ];
        let out = ok(dwarfstar(&a), "run");
        let note = String::from_utf8_lossy(&out.stderr).into_owned();
        (tokens(&out), note)
    };
    let (free, _) = run("none");
    let (paged, note) = run(&flag);
    assert!(note.contains("paged within a budget"), "{note}");
    assert_eq!(paged, free, "tokens paged vs mapped");

    let bench = [
        "bench",
        "-m",
        m,
        "-p",
        "8",
        "-n",
        "8",
        "-r",
        "1",
        "--json",
        "--mem-budget",
        &flag,
    ];
    let j: serde_json::Value =
        serde_json::from_slice(&ok(dwarfstar(&bench), "bench").stdout).expect("json");
    assert_eq!(j["paged"], true, "{j}");
    let hit = j["expert_hit_rate"].as_f64().expect("expert_hit_rate");
    assert!((0.0..=1.0).contains(&hit), "{j}");
    let per_token = j["bytes_read_per_token"]
        .as_f64()
        .expect("bytes_read_per_token");
    assert!(per_token > 0.0, "{j}");
    let resident = j["resident_bytes"].as_u64().expect("resident_bytes");
    assert!(resident > 0 && resident <= budget, "{j}");
}
