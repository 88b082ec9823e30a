//! `dwarfstar bench`: prompt-processing and decode tokens/s, measured the
//! way llama-bench does: a batch of `-p` tokens on an empty cache, then
//! `-n` single-token decode steps on an empty cache, averaged over runs.

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::ModelArgs;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens per prompt-processing run.
    #[arg(short = 'p', long, default_value_t = 64)]
    pub prompt: usize,
    /// Tokens per decode run.
    #[arg(short = 'n', long, default_value_t = 32)]
    pub n_gen: usize,
    /// Timed repetitions (after one warm-up).
    #[arg(short = 'r', long, default_value_t = 3)]
    pub reps: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn tokens(n: usize, n_vocab: usize, salt: usize) -> Vec<u32> {
    // Deterministic pseudo-random ids, away from the special tokens.
    (0..n)
        .map(|i| (1000 + (i * 7919 + salt * 104729) % (n_vocab.max(1001) - 1000)) as u32)
        .collect()
}

pub fn run(a: BenchArgs) -> Result<()> {
    let m = a.model.load()?;
    let model = &m.model;
    let nv = model.n_vocab();
    let ctx = a.prompt.max(a.n_gen) + 1;
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    for rep in 0..=a.reps {
        if a.prompt > 0 {
            let mut st = model.new_state(ctx);
            let toks = tokens(a.prompt, nv, rep);
            let t = Instant::now();
            model.forward(&toks, &mut st, false)?;
            let s = t.elapsed().as_secs_f64();
            if rep > 0 {
                pp.push(a.prompt as f64 / s);
            }
        }
        if a.n_gen > 0 {
            let mut st = model.new_state(ctx);
            let toks = tokens(a.n_gen, nv, rep + 17);
            let t = Instant::now();
            for tk in &toks {
                model.forward(std::slice::from_ref(tk), &mut st, false)?;
            }
            let s = t.elapsed().as_secs_f64();
            if rep > 0 {
                tg.push(a.n_gen as f64 / s);
            }
        }
    }
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let threads = rayon::current_num_threads();
    if a.json {
        println!(
            "{}",
            json!({
                "model": a.model.model.display().to_string(),
                "threads": threads,
                "prompt_tokens": a.prompt,
                "decode_tokens": a.n_gen,
                "prompt_tokens_per_s": mean(&pp),
                "decode_tokens_per_s": mean(&tg),
            })
        );
    } else {
        println!("model: {} ({} threads)", a.model.model.display(), threads);
        println!("pp{}: {:.2} tokens/s", a.prompt, mean(&pp));
        println!("tg{}: {:.2} tokens/s", a.n_gen, mean(&tg));
    }
    Ok(())
}
