//! `dwarfstar quantize IN OUT --recipe NAME`: a smaller GGUF by recipe,
//! overrides and an optional size budget, streamed tensor by tensor (the
//! library is dwarfstar-quantize; this module parses flags and prints).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use dwarfstar_gguf::GgufFile;
use dwarfstar_quantize::recipe::Class;
use dwarfstar_quantize::{
    check_written, parse_size, plan, write, Imatrix, ImatrixSource, Options, Override, Plan,
    Progress, Recipe, TensorPlan, Why,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::init_threads;

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Source GGUF: F32, F16, BF16 or Q8_0 tensors (others need
    /// --allow-requantize).
    pub input: PathBuf,
    /// Where to write the quantized GGUF.
    pub output: PathBuf,
    /// dwarf-q2 (routed gate/up IQ2_XXS, down Q2_K, rest Q8_0; dense
    /// models: FFN at ~2 bits), dwarf-q4 (routed experts Q4_K, rest Q8_0),
    /// or one type for everything: q8_0, q4_k, q2_k, ...
    #[arg(long)]
    pub recipe: String,
    /// Importance matrix (llama.cpp GGUF or legacy .dat format).
    #[arg(long)]
    pub imatrix: Option<PathBuf>,
    /// PATTERN=TYPE, applied after the recipe; first match wins. PATTERN is
    /// a glob over the tensor name (`*`, `?`; `.weight` may be left off) or
    /// `re:REGEX` (searched). Repeatable.
    #[arg(long = "override", value_name = "PATTERN=TYPE")]
    pub overrides: Vec<String>,
    /// Fit the file in SIZE (80GiB, 512M, 1.5GB) by choosing each routed
    /// expert tensor's type (dense models: each FFN tensor's).
    #[arg(long)]
    pub target_size: Option<String>,
    /// Worker threads (default: all cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Convert tensors that are already quantized (other than Q8_0).
    #[arg(long)]
    pub allow_requantize: bool,
    /// Print the plan and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// List every tensor's choice.
    #[arg(long, short = 'v')]
    pub verbose: bool,
}

fn class_label(c: Class) -> &'static str {
    match c {
        Class::Vector => "1-D (norms, biases)",
        Class::Router => "router",
        Class::Routed(_) => "routed experts",
        Class::DenseFfn(_) => "dense FFN",
        Class::Mixing => "V4 stream mixing (hc, compressor, indexer)",
        Class::Keep => "kept as is",
        Class::Other => "attention/shared/embed/output",
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

fn why(t: &TensorPlan) -> String {
    match &t.why {
        Why::Recipe => "recipe".into(),
        Why::Kept => "kept".into(),
        Why::Override(o) => format!("--override {o}"),
        Why::Fallback(want) => format!("fallback from {want}"),
        Why::Budget => "target size".into(),
    }
}

fn print_plan(p: &Plan, verbose: bool) {
    let mut groups: BTreeMap<(&str, String), (usize, u64, u64)> = BTreeMap::new();
    for t in &p.tensors {
        let g = groups
            .entry((class_label(t.class), t.dst.name().to_string()))
            .or_default();
        g.0 += 1;
        g.1 += t.dst_bytes();
        g.2 += t.n_elements();
    }
    eprintln!(
        "{:<32} {:<8} {:>7} {:>11} {:>6}",
        "class", "type", "tensors", "MiB", "bpw"
    );
    for ((class, ty), (n, bytes, elems)) in &groups {
        let bpw = *bytes as f64 * 8.0 / (*elems).max(1) as f64;
        eprintln!(
            "{class:<32} {ty:<8} {n:>7} {:>11.2} {bpw:>6.3}",
            mib(*bytes)
        );
    }
    if verbose {
        for t in &p.tensors {
            eprintln!(
                "  {:<40} {:<20} {:>7} -> {:<7} {}",
                t.name,
                format!("{:?}", t.dims),
                t.src.name(),
                t.dst.name(),
                why(t)
            );
        }
    }
    for n in &p.notes {
        eprintln!("note: {n}");
    }
    if let Some(rows) = &p.budget {
        eprintln!("\n--target-size choices (importance = routing frequency x imatrix weight):");
        eprintln!(
            "{:>5}  {:<36} {:<8} {:>10} {:>12} {:>9}",
            "layer", "tensor", "type", "MiB", "importance", "rel.err"
        );
        for r in rows {
            let layer = r.layer.map_or("-".to_string(), |l| l.to_string());
            eprintln!(
                "{layer:>5}  {:<36} {:<8} {:>10.2} {:>12.4e} {:>9.4}",
                r.name,
                r.ty.name(),
                mib(r.bytes),
                r.importance,
                r.rel_error
            );
        }
    }
}

/// indicatif over the source bytes, one message per tensor.
struct Bar(ProgressBar);

impl Progress for Bar {
    fn begin(&self, total: u64) {
        self.0.set_length(total);
    }
    fn tensor(&self, _i: usize, t: &TensorPlan) {
        self.0
            .set_message(format!("{} {} -> {}", t.name, t.src.name(), t.dst.name()));
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
}

pub fn run(a: QuantizeArgs) -> Result<()> {
    init_threads(a.threads)?;
    let file =
        GgufFile::open(&a.input).with_context(|| format!("opening {}", a.input.display()))?;
    let recipe = Recipe::parse(&a.recipe)?;
    let overrides = a
        .overrides
        .iter()
        .map(|s| Override::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let imatrix = match &a.imatrix {
        Some(p) => Some(Imatrix::read(p)?),
        None => None,
    };
    let target_size = a.target_size.as_deref().map(parse_size).transpose()?;
    let opts = Options {
        recipe,
        overrides: &overrides,
        imatrix: imatrix.as_ref(),
        target_size,
        allow_requantize: a.allow_requantize,
    };
    let t0 = std::time::Instant::now();
    let p = plan(&file, &opts)?;
    print_plan(&p, a.verbose);
    eprintln!(
        "plan: {:.2} MiB of tensor data ({:.3} bpw overall) in {:.2}s",
        mib(p.data_bytes()),
        p.bpw(|_| true),
        t0.elapsed().as_secs_f64()
    );
    if a.dry_run {
        return Ok(());
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {wide_msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let im_path = a.imatrix.as_ref().map(|p| p.display().to_string());
    let source = match (&imatrix, &im_path) {
        (Some(data), Some(path)) => Some(ImatrixSource { path, data }),
        _ => None,
    };
    let progress = Bar(bar);
    let report = write(&file, &p, source, &a.output, &progress)?;
    progress.0.finish_and_clear();
    check_written(&a.output, &p)?;
    let routed = |t: &TensorPlan| matches!(t.class, Class::Routed(_));
    let mut line = format!(
        "wrote {}: {:.2} MiB, {:.3} bpw overall",
        report.path.display(),
        mib(report.bytes),
        p.bpw(|_| true)
    );
    if p.tensors.iter().any(routed) {
        line += &format!(
            ", routed experts {:.3} bpw, the rest {:.3} bpw",
            p.bpw(routed),
            p.bpw(|t| !routed(t))
        );
    }
    eprintln!("{line}; {:.1}s", report.seconds);
    Ok(())
}
