//! The simulator's report as text: the nodes, the plan table, per-node
//! memory, the per-token time split, and the predicted rates.

use std::fmt::Write;

use super::SimReport;
use crate::cost::Split;

fn gb(b: u64) -> String {
    format!("{:.2} GB", b as f64 / 1e9)
}

fn ms(s: f64) -> String {
    format!("{:.2} ms", s * 1e3)
}

fn split_line(s: &Split) -> String {
    let mut parts = vec![
        format!("compute {}", ms(s.compute)),
        format!("paging {}", ms(s.paging)),
        format!("hops {}", ms(s.hops)),
        format!("expert round trips {}", ms(s.expert_round_trips)),
        format!("fixed {}", ms(s.overhead)),
    ];
    if s.head_round_trips > 0.0 {
        parts.push(format!("attention round trips {}", ms(s.head_round_trips)));
    }
    format!("{} = {}", ms(s.total()), parts.join(" + "))
}

/// The report as text.
pub fn render(r: &SimReport) -> String {
    let mut o = String::new();
    let p = &r.prediction;
    let _ = writeln!(
        o,
        "model {}: {} of weights, {} read per token",
        r.model,
        gb(r.weight_bytes),
        gb(r.active_bytes_per_token)
    );
    let _ = writeln!(o, "\nnodes:");
    for n in &r.nodes {
        let _ = writeln!(
            o,
            "  {:<12} {:<26} budget {:>9}  kernels {:>6.1} GB/s  {:>7.0} GFLOP/s  disk {:>4.1} GB/s",
            n.id,
            n.profile.as_deref().unwrap_or("-"),
            gb(n.caps.mem_budget),
            n.caps.mem_bw_gbs,
            n.caps.matmul_gflops,
            n.caps.disk_read_gbs
        );
    }
    for l in &r.links {
        let _ = writeln!(
            o,
            "  link {}–{}: {:.2} Gbit/s, {:.3} ms",
            l.a,
            l.b,
            l.bandwidth_bps / 1e9,
            l.latency_s * 1e3
        );
    }
    let _ = writeln!(
        o,
        "\nplan (coordinator {}, activations {:?}):",
        r.plan.coordinator, r.plan.activation_dtype
    );
    let _ = writeln!(o, "  {:<12} {:<10} {:>8}  extra", "node", "layers", "count");
    for s in &r.plan.stages {
        let mut extra = Vec::new();
        if s.holds_embed {
            extra.push("embedding");
        }
        if s.holds_output {
            extra.push("output");
        }
        let _ = writeln!(
            o,
            "  {:<12} {:<10} {:>8}  {}",
            s.node,
            format!("{}..{}", s.layers.start, s.layers.end),
            s.layers.end - s.layers.start,
            extra.join(", ")
        );
    }
    let _ = writeln!(o, "\nmemory per node:");
    for m in &p.nodes {
        let _ = writeln!(
            o,
            "  {:<12} weights {:>9}  kv {:>9}  embed+output {:>9}  experts {:>9} (paged {:>9})  budget {:>9}",
            m.node,
            gb(m.weights),
            gb(m.kv),
            gb(m.embed + m.output),
            gb(m.experts),
            gb(m.experts_paged),
            gb(m.budget)
        );
    }
    let _ = writeln!(o, "\nper token (1 stream): {}", split_line(&p.decode));
    let _ = writeln!(o, "predicted decode: {:.2} tokens/s", p.tokens_per_s);
    let _ = writeln!(
        o,
        "time to first token ({} prompt tokens): {:.2} s ({})",
        p.prompt_tokens,
        p.ttft_s,
        split_line(&p.prefill)
    );
    for s in &p.streams {
        let _ = writeln!(
            o,
            "aggregate at {:>2} streams: {:>8.2} tokens/s (step {})",
            s.streams,
            s.tokens_per_s,
            ms(s.step_s)
        );
    }
    if let Some(h) = &p.head_parallel {
        let _ = writeln!(
            o,
            "\nhead-parallel attention: {:.2} tokens/s ({:.2}× the plan); per token {}",
            h.tokens_per_s,
            if p.tokens_per_s > 0.0 {
                h.tokens_per_s / p.tokens_per_s
            } else {
                0.0
            },
            split_line(&h.split)
        );
        for (stage, g) in &h.groups {
            let gs: Vec<String> = g.iter().map(|(n, c)| format!("{n} {c}")).collect();
            let _ = writeln!(o, "  layers of {stage}: groups {}", gs.join(", "));
        }
        for (n, b) in &h.extra_bytes {
            let _ = writeln!(o, "  {n} also holds {} of attention", gb(*b));
        }
    }
    o
}
