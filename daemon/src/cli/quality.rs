//! `dwarfstar quality A.gguf B.gguf --text FILE`: how far B is from A —
//! perplexity of each (llama-perplexity's chunking: second half of each
//! chunk scored), KL divergence of B from A and top-1 agreement.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use dwarfstar_model::Model;
use dwarfstar_quantize::quality::compare;
use serde_json::json;

use super::load_tokenizer;

#[derive(Args, Debug)]
pub struct QualityArgs {
    /// The reference model (e.g. the source of a quantization).
    pub a: PathBuf,
    /// The model to compare with it.
    pub b: PathBuf,
    /// Text to score (tokenized with A's tokenizer).
    #[arg(long, short = 'f')]
    pub text: PathBuf,
    /// Tokens per chunk.
    #[arg(long, short = 'c', default_value_t = 512)]
    pub ctx: usize,
    /// Use at most this many chunks.
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Worker threads (default: all cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
}

pub fn run(a: QualityArgs) -> Result<()> {
    let open =
        |p: &PathBuf| Model::open(p, &[]).with_context(|| format!("loading {}", p.display()));
    let (ma, fa) = open(&a.a)?;
    let (mb, fb) = open(&a.b)?;
    let tok = load_tokenizer(&fa, &a.a)?;
    let tok_b = load_tokenizer(&fb, &a.b)?;
    if tok.n_vocab() != tok_b.n_vocab() {
        bail!("the two models have different vocabularies");
    }
    let text = std::fs::read_to_string(&a.text)
        .with_context(|| format!("reading {}", a.text.display()))?;
    let tokens = tok.encode(&text, true, false)?;
    let bos = tok.add_bos().then(|| tok.bos_id()).flatten();
    let t0 = std::time::Instant::now();
    let r = compare(&ma, &mb, &tokens, a.ctx, bos, a.chunks, |i, n| {
        if !a.json {
            eprint!("\rchunk {}/{n}", i + 1);
        }
    })?;
    let secs = t0.elapsed().as_secs_f64();
    if a.json {
        println!(
            "{}",
            json!({
                "a": a.a.display().to_string(),
                "b": a.b.display().to_string(),
                "ctx": r.ctx,
                "chunks": r.chunks,
                "positions": r.n_positions,
                "ppl_a": r.ppl_a,
                "ppl_a_err": r.ppl_a_err,
                "ppl_b": r.ppl_b,
                "ppl_b_err": r.ppl_b_err,
                "kl_mean": r.kl_mean,
                "kl_median": r.kl_median,
                "kl_p99": r.kl_p99,
                "kl_max": r.kl_max,
                "top1_agreement": r.top1_agreement,
                "seconds": secs,
            })
        );
    } else {
        eprintln!();
        println!(
            "{} chunks of {} tokens, {} positions scored ({:.1}s)",
            r.chunks, r.ctx, r.n_positions, secs
        );
        println!(
            "PPL(A) = {:.4} +/- {:.4}   {}",
            r.ppl_a,
            r.ppl_a_err,
            a.a.display()
        );
        println!(
            "PPL(B) = {:.4} +/- {:.4}   {}",
            r.ppl_b,
            r.ppl_b_err,
            a.b.display()
        );
        println!(
            "KL(A||B): mean {:.6}, median {:.6}, 99% {:.6}, max {:.6}",
            r.kl_mean, r.kl_median, r.kl_p99, r.kl_max
        );
        println!("top-1 agreement: {:.2}%", 100.0 * r.top1_agreement);
    }
    Ok(())
}
