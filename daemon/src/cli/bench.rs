//! `dwarfstar bench`: prompt-processing and decode tokens/s, measured the
//! way llama-bench does: a batch of `-p` tokens on an empty cache, then
//! `-n` single-token decode steps on an empty cache, averaged over runs.
//! With `--depth D` both start after `D` untimed prompt tokens already in
//! the cache (llama-bench's `-d`), to time attention over a long context.
//! With weights paged under `--mem-budget`, the decode runs' expert hit
//! rate, bytes read per token and I/O stall time are printed too. With
//! `--draft-model` or `--mtp` it times speculative decoding instead
//! ([`super::bench_spec`]).

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use dwarfstar_model::store::{format_size, StoreStats};

use super::bench_spec::Drafting;
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
    /// Positions already in the cache (an untimed prompt) before each
    /// prompt-processing and decode run.
    #[arg(short = 'd', long, default_value_t = 0)]
    pub depth: usize,
    /// Timed repetitions (after one warm-up).
    #[arg(short = 'r', long, default_value_t = 3)]
    pub reps: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Time greedy decoding with this draft model's speculation against
    /// the same decode without (through the serving engine), with the
    /// drafted and accepted token counts.
    #[arg(long, value_name = "FILE", conflicts_with = "mtp")]
    pub draft_model: Option<std::path::PathBuf>,
    /// The same with the model's own MTP block drafting (DeepSeek V4).
    #[arg(long)]
    pub mtp: bool,
    /// ds4's MTP block in a file of its own, attached for `--mtp`.
    #[arg(long, value_name = "FILE", requires = "mtp")]
    pub mtp_model: Option<std::path::PathBuf>,
    /// Most tokens drafted a step, with `--draft-model` or `--mtp`.
    #[arg(long, default_value_t = 3)]
    pub spec_tokens: usize,
}

/// Weight-store counters summed over decode runs.
#[derive(Default)]
struct Decode {
    tokens: u64,
    served: u64,
    uses: u64,
    bytes: u64,
    stall_s: f64,
}

impl Decode {
    fn add(&mut self, d: &StoreStats) {
        self.tokens += d.tokens;
        self.served += d.expert_hits + d.expert_prefetch_hits;
        self.uses += d.expert_hits + d.expert_prefetch_hits + d.expert_misses;
        self.bytes += d.bytes_read;
        self.stall_s += d.io_stall_s;
    }

    /// Expert uses served without a demand read (1 with no experts paged).
    fn hit_rate(&self) -> f64 {
        if self.uses == 0 {
            1.0
        } else {
            self.served as f64 / self.uses as f64
        }
    }

    fn bytes_per_token(&self) -> f64 {
        if self.tokens == 0 {
            0.0
        } else {
            self.bytes as f64 / self.tokens as f64
        }
    }
}

fn tokens(n: usize, n_vocab: usize, salt: usize) -> Vec<u32> {
    // Deterministic pseudo-random ids, away from the special tokens.
    (0..n)
        .map(|i| (1000 + (i * 7919 + salt * 104729) % (n_vocab.max(1001) - 1000)) as u32)
        .collect()
}

pub fn run(a: BenchArgs) -> Result<()> {
    let how = match (&a.draft_model, a.mtp) {
        (Some(f), _) => Some(Drafting::Model(f.clone())),
        (None, true) => Some(Drafting::Mtp),
        (None, false) => None,
    };
    if let Some(how) = how {
        let mut m = a.model.load_for(None)?;
        if let Some(f) = &a.mtp_model {
            m.model
                .attach_mtp_file(f)
                .with_context(|| format!("--mtp-model {}", f.display()))?;
        }
        let v = super::bench_spec::run(&a, m.model, &m.tokenizer, how)?;
        if a.json {
            println!("{v}");
        }
        return Ok(());
    }
    let ctx = a.depth + a.prompt.max(a.n_gen) + 1;
    let m = a.model.load_for(Some(ctx))?;
    let model = &m.model;
    let nv = model.n_vocab();
    // A fresh state holding `depth` positions (untimed).
    let filled = |salt: usize| -> Result<_> {
        let mut st = model.new_state(ctx);
        if a.depth > 0 {
            model.forward(&tokens(a.depth, nv, salt + 31), &mut st, false)?;
        }
        Ok(st)
    };
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    // The weight store's counters over the timed decode runs.
    let mut io = Decode::default();
    for rep in 0..=a.reps {
        if a.prompt > 0 {
            let mut st = filled(rep)?;
            let toks = tokens(a.prompt, nv, rep);
            let t = Instant::now();
            model.forward(&toks, &mut st, false)?;
            let s = t.elapsed().as_secs_f64();
            if rep > 0 {
                pp.push(a.prompt as f64 / s);
            }
        }
        if a.n_gen > 0 {
            let mut st = filled(rep)?;
            let toks = tokens(a.n_gen, nv, rep + 17);
            let before = model.store_stats();
            let t = Instant::now();
            for tk in &toks {
                model.forward(std::slice::from_ref(tk), &mut st, false)?;
            }
            let s = t.elapsed().as_secs_f64();
            if rep > 0 {
                tg.push(a.n_gen as f64 / s);
                io.add(&model.store_stats().since(&before));
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
    let store = model.store_stats();
    if a.json {
        println!(
            "{}",
            json!({
                "model": a.model.model.display().to_string(),
                "threads": threads,
                "prompt_tokens": a.prompt,
                "decode_tokens": a.n_gen,
                "depth": a.depth,
                "prompt_tokens_per_s": mean(&pp),
                "decode_tokens_per_s": mean(&tg),
                "paged": store.paged,
                "expert_hit_rate": io.hit_rate(),
                "bytes_read_per_token": io.bytes_per_token(),
                "io_stall_s": io.stall_s,
                "resident_bytes": store.resident_bytes,
                "budget_bytes": store.budget_bytes,
            })
        );
    } else {
        println!("model: {} ({} threads)", a.model.model.display(), threads);
        let at = if a.depth > 0 {
            format!(" @ d{}", a.depth)
        } else {
            String::new()
        };
        println!("pp{}{at}: {:.2} tokens/s", a.prompt, mean(&pp));
        println!("tg{}{at}: {:.2} tokens/s", a.n_gen, mean(&tg));
        if store.paged {
            println!(
                "paged within {}: {} resident; decode: expert hit rate {:.3}, {} read per token, {:.3}s stalled on I/O",
                format_size(store.budget_bytes),
                format_size(store.resident_bytes),
                io.hit_rate(),
                format_size(io.bytes_per_token() as u64),
                io.stall_s,
            );
        }
    }
    Ok(())
}
