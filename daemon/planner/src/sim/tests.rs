//! Simulator tests: the built-in profiles and shapes parse, hardware files
//! resolve (profiles, overrides, errors), the golden prediction, and ds4's
//! published figures.

use super::*;

fn builtin(name: &str) -> SimModel {
    catalog::builtin(name).unwrap()
}

fn hw(text: &str) -> HardwareFile {
    HardwareFile::from_toml(text).unwrap()
}

#[test]
fn every_builtin_profile_and_shape_parses() {
    let p = Profiles::builtin().unwrap();
    for n in [
        "apple-m3-max-128",
        "apple-m4-max-128",
        "apple-m4-max-36",
        "apple-m4-pro-64",
        "amd-ryzen-ai-max-395-128",
        "ddr5-desktop-64",
        "this-machine",
    ] {
        let spec = NodeSpec {
            id: "x".into(),
            profile: Some(n.into()),
            ..NodeSpec::default()
        };
        let r = resolve_node(&spec, &p).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert!(r.caps.mem_bw_gbs > 0.0 && r.caps.matmul_gflops > 0.0, "{n}");
        assert!(r.caps.mem_budget > 0, "{n}");
    }
    for l in ["wifi6", "1gbe", "2_5gbe", "10gbe", "thunderbolt"] {
        assert!(p.links.contains_key(l), "{l}");
    }
    for name in catalog::names() {
        let m = builtin(name);
        assert!(m.shape.weight_bytes() > 50_000_000_000, "{name}");
        assert!(m.head_split.is_some(), "{name}");
    }
}

#[test]
fn a_hardware_file_resolves_profiles_overrides_and_links() {
    let p = Profiles::builtin().unwrap();
    let f = hw(r#"
        coordinator = "b"
        all_links = { profile = "1gbe" }
        [[node]]
        id = "a"
        profile = "apple-m3-max-128"
        mem_budget_gb = 50
        [[node]]
        id = "b"
        ram_gb = 32
        mem_bw_gbs = 100
        gflops = 200
        [[node]]
        id = "c"
        profile = "ddr5-desktop-64"
        [[link]]
        a = "a"
        b = "b"
        bandwidth_gbps = 40
        latency_ms = 0.01
    "#);
    let a = resolve_node(&f.node[0], &p).unwrap();
    assert_eq!(a.caps.mem_budget, 50_000_000_000);
    assert_eq!(a.caps.mem_bw_gbs, 254.0);
    assert!((a.terms.layer_overhead_s - 30e-6).abs() < 1e-12);
    let b = resolve_node(&f.node[1], &p).unwrap();
    // RAM alone: 75% budget; bandwidth alone: 60% through the kernels.
    assert_eq!(b.caps.mem_budget, 24_000_000_000);
    assert!((b.caps.mem_bw_gbs - 60.0).abs() < 1e-9);
    let r = simulate(
        &builtin("deepseek-v4-flash:dwarf-q2"),
        &f,
        &p,
        &SimOptions::default(),
    )
    .unwrap();
    assert_eq!(r.plan.coordinator, "b");
    // The given a–b link, and a–c, b–c from all_links.
    assert_eq!(r.links.len(), 3);
    assert_eq!(r.links[0].bandwidth_bps, 40e9);
    assert!(r.links[1..].iter().all(|l| l.bandwidth_bps == 0.94e9));
}

#[test]
fn bad_hardware_files_say_what_is_wrong() {
    let p = Profiles::builtin().unwrap();
    let m = builtin("deepseek-v3:q4_k_m");
    let o = SimOptions::default();
    let err = |text: &str| simulate(&m, &hw(text), &p, &o).unwrap_err().to_string();
    assert!(err("").contains("no [[node]]"));
    assert!(err("[[node]]\nid = \"a\"\nprofile = \"nope\"").contains("no node profile nope"));
    assert!(err("[[node]]\nid = \"a\"\nram_gb = 8").contains("mem_bw_gbs"));
    let e = err("[[node]]\nid = \"a\"\nprofile = \"ddr5-desktop-64\"\n[[node]]\nid = \"b\"\nprofile = \"ddr5-desktop-64\"\n[[link]]\na = \"a\"\nb = \"b\"\nprofile = \"carrier-pigeon\"");
    assert!(e.contains("no link profile carrier-pigeon"), "{e}");
    // 404 GB of V3 on one 48 GB desktop: only experts page, the rest must fit.
    let e = err("[[node]]\nid = \"a\"\nprofile = \"ddr5-desktop-64\"\nmem_budget_gb = 10");
    assert!(e.contains("no plan fits"), "{e}");
    assert!(HardwareFile::from_toml("[[node]]\nid = \"a\"\nrma_gb = 8").is_err());
}

/// The golden file: one hardware file and a built-in shape give this plan
/// and prediction. Regenerate deliberately with `DWARFSTAR_BLESS=1`.
#[test]
fn golden_two_m4_pro_over_2_5gbe_run_v4_flash() {
    let f = hw(include_str!("../../tests/golden/two-m4-pro-2.5gbe.toml"));
    let opts = SimOptions {
        head_parallel: true,
        ..SimOptions::default()
    };
    let r = simulate(
        &builtin("deepseek-v4-flash:dwarf-q2"),
        &f,
        &Profiles::builtin().unwrap(),
        &opts,
    )
    .unwrap();
    let json = serde_json::to_string_pretty(&r).unwrap() + "\n";
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/two-m4-pro-2.5gbe.v4-flash-dwarf-q2.json"
    );
    if std::env::var("DWARFSTAR_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(path, &json).unwrap();
    }
    let want = std::fs::read_to_string(path).unwrap();
    assert!(
        want == json,
        "the simulation differs from {path}; if the change is meant, rerun with DWARFSTAR_BLESS=1 and review the diff\n{}",
        render(&r)
    );
}
