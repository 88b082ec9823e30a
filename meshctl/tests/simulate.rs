//! `meshctl plan --simulate`: runs without a daemon and predicts what the
//! planner's golden simulation says.

use std::path::PathBuf;
use std::process::Command;

fn planner_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../daemon/planner")
}

#[test]
fn simulate_needs_no_daemon_and_matches_the_golden_prediction() {
    let hw = planner_dir().join("tests/golden/two-m4-pro-2.5gbe.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args([
            "--addr",
            "http://127.0.0.1:1",
            "--json",
            "plan",
            "--simulate",
        ])
        .arg(&hw)
        .args(["--model", "deepseek-v4-flash:dwarf-q2", "--head-parallel"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            planner_dir().join("tests/golden/two-m4-pro-2.5gbe.v4-flash-dwarf-q2.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(got["plan"], golden["plan"]);
    assert_eq!(got["prediction"], golden["prediction"]);
    // Text too, and a GGUF is pointed at dwarfstar.
    let text = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["plan", "--simulate"])
        .arg(&hw)
        .args(["--model", "x.gguf"])
        .output()
        .unwrap();
    assert!(!text.status.success());
    assert!(String::from_utf8_lossy(&text.stderr).contains("dwarfstar plan --simulate"));
}
