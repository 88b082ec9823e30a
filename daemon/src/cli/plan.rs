//! `dwarfstar plan --simulate HW.toml --model M`: plan a model over
//! machines described in a hardware file, offline (no daemon, no peers),
//! and print the plan and its prediction (`dwarfstar_planner::sim`).
//!
//! The model is a built-in shape (`deepseek-v4-flash:dwarf-q2`, ...), a
//! GGUF file (only its header is read) or a simulator model JSON. Node and
//! link profiles are those of `deploy/hardware/`, compiled in; `--profiles
//! DIR` adds (or replaces) profiles from a folder of the same format.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use dwarfstar_gguf::GgufFile;
use dwarfstar_planner::sim::{self, HardwareFile, Profiles, SimModel, SimOptions};

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Hardware file (TOML: [[node]] and [[link]] tables; see deploy/hardware/).
    #[arg(long, value_name = "HW.toml")]
    pub simulate: PathBuf,
    /// A built-in shape (MODEL:RECIPE, e.g. deepseek-v4-flash:dwarf-q2), a GGUF
    /// path (header only) or a simulator model JSON.
    #[arg(long, short = 'm')]
    pub model: String,
    /// Exactly this many pipeline stages.
    #[arg(long)]
    pub stages: Option<u32>,
    /// Spread routed experts over the nodes even when that is not faster.
    #[arg(long)]
    pub expert_parallel: bool,
    /// Also predict head-parallel attention (heads split across the nodes).
    #[arg(long)]
    pub head_parallel: bool,
    /// Prompt tokens for the time to first token.
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: u64,
    /// Positions of KV cache to reserve.
    #[arg(long, default_value_t = dwarfstar_planner::DEFAULT_KV_TOKENS)]
    pub kv_tokens: u64,
    /// Stream counts for aggregate tokens/s.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub streams: Vec<u32>,
    /// A folder of extra profile files (NAME.toml with [node], or [link.NAME]).
    #[arg(long, value_name = "DIR")]
    pub profiles: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// The built-in profiles plus those of `dir`.
pub fn load_profiles(dir: Option<&Path>) -> Result<Profiles> {
    let mut p = Profiles::builtin()?;
    if let Some(dir) = dir {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        for f in files {
            let stem = f
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text =
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            p.add(&stem, &text)?;
        }
    }
    Ok(p)
}

/// The model `spec` names: a built-in shape, a simulator JSON or a GGUF.
fn load_model(spec: &str) -> Result<SimModel> {
    let path = Path::new(spec);
    if !path.exists() {
        if spec.contains(':') {
            return Ok(sim::catalog::builtin(spec)?);
        }
        bail!(
            "{spec}: no such file, and not a built-in model (known: {})",
            sim::catalog::names().join(", ")
        );
    }
    if path.extension().is_some_and(|x| x == "json") {
        let text = std::fs::read_to_string(path)?;
        return serde_json::from_str(&text).with_context(|| format!("parsing {spec}"));
    }
    let f = GgufFile::open(path).with_context(|| format!("reading the header of {spec}"))?;
    let shape = dwarfstar_model::shape::model_shape(&f).with_context(|| spec.to_string())?;
    let head_split = dwarfstar_model::shape::builtin::head_split(&f, f.tensors(), shape.n_layer);
    Ok(SimModel { shape, head_split })
}

pub fn run(a: PlanArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.simulate)
        .with_context(|| format!("reading {}", a.simulate.display()))?;
    let hw = HardwareFile::from_toml(&text).with_context(|| a.simulate.display().to_string())?;
    let profiles = load_profiles(a.profiles.as_deref())?;
    let model = load_model(&a.model)?;
    let opts = SimOptions {
        force_stages: a.stages,
        expert_parallel: a.expert_parallel,
        head_parallel: a.head_parallel,
        kv_tokens: a.kv_tokens,
        prompt_tokens: a.prompt_tokens,
        streams: a.streams,
    };
    let report = sim::simulate(&model, &hw, &profiles, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", sim::render(&report));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> PathBuf {
        let dir = std::env::var_os("DWARFSTAR_MODELS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"));
        let p = dir.join("SmolLM2-135M-Instruct-Q4_1.gguf");
        assert!(
            p.exists(),
            "{} is missing: run deploy/fetch-models.sh (or set DWARFSTAR_MODELS_DIR)",
            p.display()
        );
        p
    }

    #[test]
    fn models_come_from_files_or_the_catalog() {
        let m = load_model(smollm2().to_str().unwrap()).unwrap();
        assert_eq!(m.shape.n_layer, 30);
        // 9 heads of 64, 3 KV heads: the projections split over 3 groups.
        let h = m.head_split.as_ref().unwrap();
        assert_eq!(h.groups, 3);
        assert!(h.per_layer_bytes.iter().all(|&b| b > 0));
        let v4 = load_model("deepseek-v4-flash:dwarf-q2").unwrap();
        assert_eq!(v4.shape.n_layer, 43);
        let e = load_model("nope:q1").unwrap_err().to_string();
        assert!(e.contains("no built-in model nope:q1"), "{e}");
        let e = load_model("/no/such.gguf").unwrap_err().to_string();
        assert!(e.contains("no such file"), "{e}");
    }

    #[test]
    fn smollm2_on_this_machine_is_simulated() {
        let m = load_model(smollm2().to_str().unwrap()).unwrap();
        let hw = HardwareFile::from_toml(
            "all_links = { profile = \"loopback\" }\n\
             [[node]]\nid = \"a\"\nprofile = \"this-machine\"\n\
             [[node]]\nid = \"b\"\nprofile = \"this-machine\"",
        )
        .unwrap();
        let p = load_profiles(None).unwrap();
        let one = sim::simulate(&m, &hw, &p, &SimOptions::default()).unwrap();
        // It fits one node: the planner keeps it there.
        assert_eq!(one.plan.stages.len(), 1);
        let two = sim::simulate(
            &m,
            &hw,
            &p,
            &SimOptions {
                force_stages: Some(2),
                ..SimOptions::default()
            },
        )
        .unwrap();
        assert_eq!(two.plan.stages.len(), 2);
        assert!(two.prediction.decode.hops > 0.0);
        let text = sim::render(&two);
        assert!(text.contains("predicted decode"), "{text}");
    }
}
