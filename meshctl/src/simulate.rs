//! `meshctl plan --simulate HW.toml --model M`: the planner's simulator run
//! here, without a daemon (the planner is pure, so meshctl links it; the
//! model is a built-in shape or a simulator model JSON — a GGUF's shape
//! needs the model code, which `dwarfstar plan --simulate` has).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use dwarfstar_planner::sim::{self, HardwareFile, Profiles, SimModel, SimOptions};

/// The simulation's options, from `meshctl plan`'s flags.
pub struct SimArgs {
    pub model: Option<String>,
    pub stages: Option<u32>,
    pub expert_parallel: bool,
    pub head_parallel: bool,
    pub prompt_tokens: u64,
    pub streams: Vec<u32>,
    pub profiles: Option<PathBuf>,
}

fn load_model(spec: &str) -> Result<SimModel> {
    let path = Path::new(spec);
    if path.extension().is_some_and(|x| x == "json") {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        return serde_json::from_str(&text).with_context(|| format!("parsing {spec}"));
    }
    if path.extension().is_some_and(|x| x == "gguf") {
        bail!("{spec}: meshctl simulates built-in shapes and model JSON; for a GGUF run `dwarfstar plan --simulate HW.toml --model {spec}`");
    }
    Ok(sim::catalog::builtin(spec)?)
}

fn load_profiles(dir: Option<&Path>) -> Result<Profiles> {
    let mut p = Profiles::builtin()?;
    let Some(dir) = dir else { return Ok(p) };
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
    Ok(p)
}

/// Simulates and prints (text, or JSON with `json`).
pub fn run(hw_path: &Path, a: &SimArgs, json: bool, out: &mut dyn std::io::Write) -> Result<()> {
    let Some(model) = &a.model else {
        bail!(
            "--simulate needs --model (built-in: {})",
            sim::catalog::names().join(", ")
        );
    };
    let text = std::fs::read_to_string(hw_path)
        .with_context(|| format!("reading {}", hw_path.display()))?;
    let hw = HardwareFile::from_toml(&text).with_context(|| hw_path.display().to_string())?;
    let report = sim::simulate(
        &load_model(model)?,
        &hw,
        &load_profiles(a.profiles.as_deref())?,
        &SimOptions {
            force_stages: a.stages,
            expert_parallel: a.expert_parallel,
            head_parallel: a.head_parallel,
            prompt_tokens: a.prompt_tokens,
            streams: a.streams.clone(),
            ..SimOptions::default()
        },
    )?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write!(out, "{}", sim::render(&report))?;
    }
    Ok(())
}
