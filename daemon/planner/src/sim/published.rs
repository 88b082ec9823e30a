//! The simulator against ds4's published DeepSeek V4 Flash (dwarf-q2)
//! figures, on the profiles of `deploy/hardware/`. Run with `--nocapture`
//! to see the table:
//!
//! ```text
//! cargo test --release -p dwarfstar-planner published -- --nocapture
//! ```
//!
//! Two of the three are within 30%. The Thunderbolt pair is not: see
//! [`two_m4_max_over_thunderbolt`].

use super::*;

const FLASH: &str = "deepseek-v4-flash:dwarf-q2";

fn run(text: &str, opts: &SimOptions) -> SimReport {
    simulate(
        &catalog::builtin(FLASH).unwrap(),
        &HardwareFile::from_toml(text).unwrap(),
        &Profiles::builtin().unwrap(),
        opts,
    )
    .unwrap()
}

fn row(what: &str, predicted: f64, published: f64) -> f64 {
    let r = predicted / published;
    eprintln!("| {what:<48} | {published:>6.1} | {predicted:>6.2} | {r:>5.2} |");
    r
}

#[test]
fn one_m3_max() {
    let r = run(
        "[[node]]\nid = \"m3\"\nprofile = \"apple-m3-max-128\"",
        &SimOptions::default(),
    );
    assert_eq!(r.prediction.decode.paging, 0.0, "it fits in memory");
    let ratio = row(
        "V4 Flash q2, one M3 Max 128 GB",
        r.prediction.tokens_per_s,
        26.7,
    );
    assert!((0.7..1.3).contains(&ratio), "{ratio}");
}

#[test]
fn ssd_streaming_on_a_36_gb_m4_max() {
    let r = run(
        "[[node]]\nid = \"m4\"\nprofile = \"apple-m4-max-36\"",
        &SimOptions::default(),
    );
    assert!(r.prediction.nodes[0].experts_paged > 50_000_000_000);
    let ratio = row(
        "V4 Flash q2, SSD streaming, one M4 Max 36 GB",
        r.prediction.tokens_per_s,
        3.2,
    );
    assert!((0.7..1.3).contains(&ratio), "{ratio}");
}

/// ds4's tensor parallelism splits attention and experts over both Macs;
/// here that is expert parallelism plus head-parallel attention. The
/// prediction is about 1.4× ds4's figure: the model charges each of the
/// per-layer exchanges (43 layers × attention and experts) the link's
/// 0.05 ms one-way latency, and nothing for the synchronisation each
/// exchange costs the GPUs (a command buffer ended, waited for, and a
/// new one begun on both sides). ds4's 22.7 tokens/s implies about 0.15
/// ms more per exchange. The term that is wrong is the per-exchange cost;
/// the link's bandwidth does not matter (16 KiB rows). This test holds
/// the miss where it is, so that fixing the term means revisiting it.
#[test]
fn two_m4_max_over_thunderbolt() {
    let text = "[[node]]\nid = \"a\"\nprofile = \"apple-m4-max-128\"\n\
        [[node]]\nid = \"b\"\nprofile = \"apple-m4-max-128\"\n\
        [[link]]\na = \"a\"\nb = \"b\"\nprofile = \"thunderbolt\"";
    let r = run(
        text,
        &SimOptions {
            expert_parallel: true,
            head_parallel: true,
            ..SimOptions::default()
        },
    );
    let tp = r.prediction.head_parallel.as_ref().unwrap();
    let ratio = row(
        "V4 Flash q2, 2× M4 Max over Thunderbolt, TP",
        tp.tokens_per_s,
        22.7,
    );
    assert!((1.3..1.5).contains(&ratio), "{ratio}");
    // Exchanges per token: one attention and one expert round trip per layer.
    let per_exchange = (1.0 / 22.7 - 1.0 / tp.tokens_per_s) / (2.0 * 43.0);
    eprintln!(
        "  missing per exchange to match ds4: {:.3} ms",
        per_exchange * 1e3
    );
}

/// Head-parallel attention for V4 Flash on two nodes over 10 GbE (two
/// 64 GB M4 Pro minis: Flash does not fit one): the gain over the best
/// plan without it, which decides whether the runtime gets it (≥ 1.3×).
#[test]
fn head_parallel_on_two_m4_pro_over_10gbe() {
    let text = "[[node]]\nid = \"a\"\nprofile = \"apple-m4-pro-64\"\n\
        [[node]]\nid = \"b\"\nprofile = \"apple-m4-pro-64\"\n\
        [[link]]\na = \"a\"\nb = \"b\"\nprofile = \"10gbe\"";
    let hp_opts = SimOptions {
        head_parallel: true,
        ..SimOptions::default()
    };
    let best = run(text, &hp_opts);
    let ep = run(
        text,
        &SimOptions {
            expert_parallel: true,
            ..hp_opts.clone()
        },
    );
    let base = best.prediction.tokens_per_s;
    let on_best = best.prediction.head_parallel.as_ref().unwrap();
    let on_ep = ep.prediction.head_parallel.as_ref().unwrap();
    let hp = if on_best.tokens_per_s >= on_ep.tokens_per_s {
        on_best
    } else {
        on_ep
    };
    eprintln!(
        "head-parallel, 2× M4 Pro 64 GB over 10 GbE: best plan {base:.2} t/s ({} stages) -> {:.2} with heads split; expert parallel {:.2} -> {:.2}; best {:.2}×",
        best.plan.stages.len(),
        on_best.tokens_per_s,
        ep.prediction.tokens_per_s,
        on_ep.tokens_per_s,
        hp.tokens_per_s / base
    );
    assert!(hp.tokens_per_s / base < 1.3, "{}", hp.tokens_per_s / base);
}
