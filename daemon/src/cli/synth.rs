//! `dwarfstar synth`: writes a synthetic MoE GGUF with realistic shapes
//! (see `dwarfstar_model::synth`): deepseek2 (V2/V3 layout) or deepseek4
//! (V4 Flash layout); it optionally runs the file's routers on a prompt
//! and prints the expert popularity histogram.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use dwarfstar_gguf::GgufFile;
use dwarfstar_kernels::GgmlType;
use dwarfstar_model::synth::{self, probe, SynthConfig};
use dwarfstar_model::Model;

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// The file to write.
    pub out: PathBuf,
    /// Architecture: deepseek2 (DeepSeek V2/V3 layout) or deepseek4
    /// (DeepSeek V4 Flash layout).
    #[arg(long, default_value = "deepseek2")]
    pub arch: String,
    /// Target file size: 40MiB, 4GiB, 1.5G, 123456789 (the layer count and
    /// dims are chosen to land near it; default 64MiB).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    #[arg(long)]
    pub layers: Option<usize>,
    /// Hidden size (a multiple of 256).
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Routed experts per MoE layer.
    #[arg(long)]
    pub experts: Option<usize>,
    /// Experts each token uses.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Hidden size of one expert (a multiple of 256).
    #[arg(long)]
    pub ffn: Option<usize>,
    /// deepseek4: attention heads (default hidden/64).
    #[arg(long)]
    pub heads: Option<usize>,
    /// deepseek4: the size of a head (default 512, Flash's).
    #[arg(long)]
    pub head_dim: Option<usize>,
    /// deepseek4: leave out the multi-token-prediction block.
    #[arg(long)]
    pub no_mtp: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Zipf exponent of expert popularity; 0: uniform routing.
    #[arg(long, default_value_t = 1.0)]
    pub skew: f32,
    /// deepseek2: the type of the big matrices: q4_k (default), q8_0, q2_k,
    /// f16 (or another type with a quantizer whose block divides 256).
    /// deepseek4: the routed experts' type: dwarf-q2 (default: gate/up
    /// IQ2_XXS, down Q2_K), or one type for all three (q4_k, mxfp4, q8_0,
    /// ...); the other tensors are ds4's (Q8_0, F16, F32).
    #[arg(long = "type")]
    pub ty: Option<String>,
    /// The GGUF whose tokenizer is copied (default: SmolLM2-135M-Instruct
    /// in $DWARFSTAR_MODELS_DIR or ./models).
    #[arg(long)]
    pub tokenizer_from: Option<PathBuf>,
    /// After writing, run this many prompt tokens through the file and
    /// print how often each expert is picked (0: skip).
    #[arg(long, default_value_t = 0)]
    pub probe_tokens: usize,
    /// Worker threads (default: all cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
}

/// Parses `40MiB`, `4GiB`, `1.5G`, `1000000` as `--mem-budget` does; a
/// file needs at least one byte.
pub fn parse_size(s: &str) -> Result<u64, String> {
    match dwarfstar_model::store::parse_size(s)? {
        0 => Err(format!("size {s:?} out of range")),
        b => Ok(b),
    }
}

/// The `--type` of `arch`: the main type and, for deepseek4, the routed
/// experts' down type.
fn parse_type(arch: &str, s: Option<&str>) -> Result<(GgmlType, Option<GgmlType>)> {
    let v4 = arch == synth::ds4::ARCH;
    match s {
        None if v4 => Ok((GgmlType::IQ2_XXS, Some(GgmlType::Q2_K))),
        None => Ok((GgmlType::Q4_K, None)),
        Some("dwarf-q2") if v4 => Ok((GgmlType::IQ2_XXS, Some(GgmlType::Q2_K))),
        Some("dwarf-q2") => {
            bail!("--type dwarf-q2 is for --arch deepseek4; give one type (q4_k, q2_k, ...)")
        }
        Some(name) => match GgmlType::from_name(name) {
            Some(t) => Ok((t, None)),
            None => bail!("unknown --type {name:?}"),
        },
    }
}

/// The SmolLM2 file whose tokenizer synthetic models borrow.
pub fn default_tokenizer_source() -> PathBuf {
    let dir = std::env::var_os("DWARFSTAR_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("models"));
    dir.join("SmolLM2-135M-Instruct-Q4_1.gguf")
}

/// Some English to route.
const PROBE_TEXT: &str = "The history of the mountain village begins with a small \
group of shepherds who crossed the pass every summer. Over the centuries they \
built stone houses, a church with a wooden tower, and terraces where barley and \
potatoes grew in the short season. Travellers wrote about the bells, the cold \
water of the spring, and the bread baked once a week in a shared oven. Today the \
road is paved, a school teaches forty children, and in winter the slopes fill \
with skiers from the cities in the valley below. ";

fn probe_file(path: &Path, n_tokens: usize) -> Result<()> {
    let (mut model, file) = Model::open(path, &[])?;
    let tok = super::load_tokenizer(&file, path)?;
    let mut ids = Vec::new();
    while ids.len() < n_tokens {
        ids.extend(tok.encode(PROBE_TEXT, false, false)?);
    }
    ids.truncate(n_tokens);
    let t0 = std::time::Instant::now();
    let c = match &model {
        Model::Deepseek2(m) => probe::expert_counts(m, &ids)?,
        Model::Deepseek4(_) => probe::observed_expert_counts(&mut model, &ids)?,
        _ => bail!("{} has no routed experts to count", path.display()),
    };
    eprintln!(
        "routing over {} tokens, {} MoE layers ({:.1}s): top 10% of experts get {:.1}%, top 25% get {:.1}% of selections",
        ids.len(),
        c.layers.len(),
        t0.elapsed().as_secs_f64(),
        100.0 * c.top_share(0.10),
        100.0 * c.top_share(0.25)
    );
    print!("{}", c.histogram());
    Ok(())
}

pub fn run(a: SynthArgs) -> Result<()> {
    super::init_threads(a.threads)?;
    let tok_path = a
        .tokenizer_from
        .clone()
        .unwrap_or_else(default_tokenizer_source);
    let tok = GgufFile::open(&tok_path).with_context(|| {
        format!(
            "opening the tokenizer source {} (run deploy/fetch-models.sh, set DWARFSTAR_MODELS_DIR, or give --tokenizer-from)",
            tok_path.display()
        )
    })?;
    let (ty, down_ty) = parse_type(&a.arch, a.ty.as_deref())?;
    let cfg = SynthConfig {
        arch: a.arch.clone(),
        size: a.size,
        layers: a.layers,
        hidden: a.hidden,
        experts: a.experts,
        top_k: a.top_k,
        ffn: a.ffn,
        seed: a.seed,
        skew: a.skew,
        ty,
        down_ty,
        heads: a.heads,
        head_dim: a.head_dim,
        mtp: !a.no_mtp,
    };
    let r = synth::write_any(&a.out, &cfg, &tok)
        .with_context(|| format!("writing {}", a.out.display()))?;
    drop(tok);
    eprintln!("{}", r.plan);
    eprintln!(
        "wrote {} ({:.1} MiB) in {:.1}s ({:.1}s quantizing pools, {:.0} MiB/s)",
        a.out.display(),
        r.bytes as f64 / (1u64 << 20) as f64,
        r.total_s,
        r.pool_s,
        r.bytes as f64 / (1u64 << 20) as f64 / r.total_s.max(1e-9)
    );
    if a.probe_tokens > 0 {
        probe_file(&a.out, a.probe_tokens)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("40MiB"), Ok(40 << 20));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("123"), Ok(123));
        assert!(parse_size("4 parsecs").is_err());
        assert!(parse_size("").is_err());
    }
}
