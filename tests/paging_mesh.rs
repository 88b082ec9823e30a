//! Mesh nodes page their share: two daemons, each inside a v1 memory
//! cgroup limited below the share of a synthetic MoE (deepseek2, and
//! DeepSeek V4 Flash's structure) that the plan gives it, with a node
//! budget below that, serve the model through their weight stores and
//! answer as one machine does. Each reports its
//! resident bytes, expert hit rate and bytes read per token in its status
//! (gRPC, as `meshctl status` shows it), the coordinator's `/v1/status`
//! and `/metrics`. Without a writable cgroup v1 memory hierarchy the test
//! fails and says so.

use std::time::Duration;

use dwarfstar_proto::v1::StatusReply;
use serde_json::Value;

use crate::cgroup::Cgroup;
use crate::common::*;
use crate::mesh::{complete, run_greedy, start_in, status};

fn get(url: &str) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    agent
        .get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .body_mut()
        .read_to_string()
        .unwrap()
}

/// The answering node's paging figures are those of a paged share within
/// `budget`; the other node's share (as the plan's members report it) is
/// larger than the cgroup `limit`.
fn check_paged(r: &StatusReply, who: &str, budget: u64, limit: u64) {
    assert_eq!(r.nodes.len(), 2, "{who}: {r:#?}");
    let me = &r.nodes[0];
    assert!(me.local, "{who}: {r:#?}");
    let p = me
        .paging
        .as_ref()
        .unwrap_or_else(|| panic!("{who}: no paging figures: {me:#?}"));
    assert!(p.paged, "{who}: the share was not paged: {p:?}");
    assert!(
        p.budget_bytes <= budget && p.resident_bytes <= p.budget_bytes,
        "{who}: {p:?}"
    );
    assert!(p.tokens > 0 && p.bytes_read > 0, "{who}: {p:?}");
    assert!(
        (0.0..=1.0).contains(&p.expert_hit_rate) && p.bytes_read_per_token > 0.0,
        "{who}: {p:?}"
    );
    let other = &r.nodes[1];
    assert!(
        other.mem_used > limit,
        "{who}: the other node's share ({} bytes) is not above the cgroup limit {limit}",
        other.mem_used
    );
    eprintln!(
        "{who}: resident {} of budget {} bytes, expert hit rate {:.3}, {:.0} bytes read per token over {} tokens; the other node's share {} bytes",
        p.resident_bytes, p.budget_bytes, p.expert_hit_rate, p.bytes_read_per_token, p.tokens, other.mem_used
    );
}

#[test]
fn two_daemons_page_their_shares_under_cgroup_limits() {
    // 350 MB, nearly all routed experts: each node's share is above a
    // third of the file (checked below; 36% to 68% in the plans seen), the
    // cgroups allow 32%, the weights 15% (the rest is the daemon's own
    // memory: the coordinator peaked at 29% of the file).
    let synth = [
        "--layers",
        "12",
        "--hidden",
        "512",
        "--experts",
        "64",
        "--top-k",
        "6",
        "--ffn",
        "512",
    ];
    two_daemons_page("moe", &synth, (8, 25), (3, 20));
}

/// DeepSeek V4's structure (hyper-connection streams, hash-routed first
/// layers, compressed attention, dwarf-q2 experts) paged by two nodes.
/// About 590 MB, 80% routed experts: the embedding and head (77 MB) and
/// every layer's attention stay resident, so the weights get 20% and the
/// cgroups 32%.
#[test]
fn two_daemons_page_a_deepseek_v4_share_under_cgroup_limits() {
    let synth = [
        "--arch",
        "deepseek4",
        "--layers",
        "8",
        "--hidden",
        "512",
        "--experts",
        "128",
        "--top-k",
        "6",
        "--ffn",
        "1024",
    ];
    two_daemons_page("v4moe", &synth, (8, 25), (1, 5));
}

/// Synthesizes `name` with `synth` flags, then runs the two-daemon mesh
/// with cgroups limited to `limit.0/limit.1` of the file and node budgets
/// of `budget.0/budget.1`.
fn two_daemons_page(name: &str, synth: &[&str], limit: (u64, u64), budget: (u64, u64)) {
    let id = std::process::id();
    let cg = |n: &str| Cgroup::create(&format!("dwarfstar-mesh-paging-{name}-{n}-{id}"));
    let (cg_c, cg_w) = (cg("c"), cg("w"));
    let dir = std::env::temp_dir().join(format!("dwarfstar-mesh-paging-{name}-{id}"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let model = dir.join(format!("{name}.gguf"));
    let tok = model_path(SMOLLM2);
    let m = model.to_str().expect("utf-8 path");
    let mut args = vec!["synth", m];
    args.extend(synth);
    args.extend(["--tokenizer-from", tok.to_str().expect("utf-8")]);
    ok(dwarfstar(&args), "synth");
    let size = std::fs::metadata(&model).expect("model").len();
    eprintln!("{name}: {size} bytes");
    let limit = size * limit.0 / limit.1;
    let budget = size * budget.0 / budget.1;
    cg_c.limit(limit);
    cg_w.limit(limit);
    let b = budget.to_string();
    let common = ["--node-budget", b.as_str(), "--ctx-size", "128"];
    let worker = start_in(Some(&cg_w.dir), "pw", "team-secret", &dir, None, &common);
    // Two stages, experts spread over both: each node holds a good part
    // of the experts (the coordinator's layers alone would be little).
    let mut args = vec![
        "--mesh-nodes",
        "2",
        "--peer",
        &worker.mesh,
        "--stages",
        "2",
        "--expert-parallel",
    ];
    args.extend(common);
    let coord = start_in(
        Some(&cg_c.dir),
        "pc",
        "team-secret",
        &dir,
        Some(&model),
        &args,
    );

    let n = 12;
    let prompt = "The three primary colors are";
    let want = run_greedy(&model, prompt, n);
    let http = coord.http.clone().expect("coordinator HTTP");
    let got = complete(&http, name, prompt, n);
    let text = got["choices"][0]["text"].as_str().expect("text");
    assert!(
        !text.is_empty() && (want.starts_with(text) || text == want),
        "mesh: {text:?}\none machine: {want:?}"
    );

    check_paged(&status(&coord.grpc), "coordinator", budget, limit);
    check_paged(&status(&worker.grpc), "worker", budget, limit);
    let page: Value = serde_json::from_str(&get(&format!("{http}/v1/status"))).expect("json");
    let me = &page["mesh"]["nodes"][0];
    assert_eq!(me["paging"]["paged"], true, "{page}");
    assert!(
        me["paging"]["bytes_read_per_token"].as_f64() > Some(0.0),
        "{page}"
    );
    let metrics = get(&format!("{http}/metrics"));
    for want in [
        "dwarfstar_weights_paged 1",
        "dwarfstar_weights_resident_bytes ",
        "dwarfstar_expert_hit_rate ",
        "dwarfstar_weights_read_bytes_total ",
    ] {
        assert!(metrics.contains(want), "{want:?} in\n{metrics}");
    }
    for (who, g) in [("coordinator", &cg_c), ("worker", &cg_w)] {
        eprintln!("{who}: cgroup limit {limit}, peak usage {:?}", g.peak());
    }
    drop((coord, worker));
    drop((cg_c, cg_w));
    let _ = std::fs::remove_dir_all(&dir);
}
