//! `dwarfstar`: the DwarfStar command-line tool and daemon.
//!
//! Subcommands: `run` (one-shot generation), `tokenize`, `inspect`,
//! `bench`, `serve` and `join` (the daemon), `plan --simulate` (the offline simulator), and more. Each lives in its own module under [`cli`].

mod cli;
mod node;
mod serve;

use clap::{Parser, Subcommand};

/// DwarfStar: frontier-size MoE models on the machines people already own.
#[derive(Parser, Debug)]
#[command(name = "dwarfstar", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate text from a prompt, streamed to stdout.
    Run(cli::run::RunArgs),
    /// Print the token ids of a text as JSON.
    Tokenize(cli::tokenize::TokenizeArgs),
    /// Describe a model file: architecture, tensors, bytes per token.
    Inspect(cli::inspect::InspectArgs),
    /// Measure prompt-processing and decode speed.
    Bench(cli::bench::BenchArgs),
    /// Quantize a GGUF by recipe (dwarf-q2, dwarf-q4, ...), streamed.
    Quantize(cli::quantize::QuantizeArgs),
    /// Collect an importance matrix (llama.cpp's format) over a text.
    Imatrix(cli::imatrix::ImatrixArgs),
    /// Perplexity, KL divergence and top-1 agreement of two models.
    Quality(cli::quality::QualityArgs),
    /// Serve the OpenAI-compatible HTTP API and chat page (continuous batching).
    Serve(Box<serve::ServeArgs>),
    /// Join a mesh with the token its first node printed (`serve --mesh`):
    /// `serve --join TOKEN`, with every flag of serve.
    Join(Box<serve::JoinArgs>),
    /// Write a synthetic MoE GGUF (deepseek2 or deepseek4) of realistic shape and size.
    Synth(cli::synth::SynthArgs),
    /// Plan and predict a model on machines described in a hardware file (offline).
    Plan(cli::plan::PlanArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DWARFSTAR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        // Generation runs on a worker of the kernel pool, so the matmuls it
        // starts fork there instead of waking the pool from outside.
        Command::Run(a) => {
            cli::init_threads(a.model.threads)?;
            rayon::scope(|_| cli::run::run(a))
        }
        Command::Bench(a) => {
            cli::init_threads(a.model.threads)?;
            if a.draft_model.is_some() || a.mtp {
                // Through the serving engine: its thread forks into the
                // pool as serve's does, so this one must stay outside it.
                cli::bench::run(a)
            } else {
                rayon::scope(|_| cli::bench::run(a))
            }
        }
        Command::Imatrix(a) => {
            cli::init_threads(a.threads)?;
            rayon::scope(|_| cli::imatrix::run(a))
        }
        Command::Quality(a) => {
            cli::init_threads(a.threads)?;
            rayon::scope(|_| cli::quality::run(a))
        }
        Command::Quantize(a) => cli::quantize::run(a),
        Command::Tokenize(a) => cli::tokenize::run(a),
        Command::Inspect(a) => cli::inspect::run(a),
        Command::Serve(a) => serve::run(*a),
        Command::Join(a) => serve::run(a.into_serve()?),
        Command::Synth(a) => cli::synth::run(a),
        Command::Plan(a) => cli::plan::run(a),
    }
}
