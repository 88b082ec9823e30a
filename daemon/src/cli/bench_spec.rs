//! `dwarfstar bench --draft-model FILE` or `--mtp`: greedy decode tokens/s
//! with speculative decoding against the same decode without, both through
//! the serving engine's scheduler (the code `serve` runs), and the
//! drafter's counters: tokens drafted, accepted, and the acceptance rate.
//!
//! The prompt is a fixed English paragraph, so the continuation is text a
//! model would write, not the echo of random ids. Each timed run starts
//! from an empty cache (no prefix reuse) and times the decode only: from
//! the first generated token to the last.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use dwarfstar_model::draft::{check_vocab, Drafter, ModelDrafter};
use dwarfstar_model::draft_mtp::MtpDrafter;
use dwarfstar_model::{Model, SamplerConfig};
use dwarfstar_tokenizer::Tokenizer;

use crate::serve::metrics::Metrics;
use crate::serve::scheduler::{self, Event, GenRequest, SchedConfig, Scheduler};
use crate::serve::spec::Speculation;

use super::bench::BenchArgs;

const PROMPT: &str = "The history of the printing press begins in the fifteenth century, when \
    Johannes Gutenberg combined movable metal type, oil-based ink and a wooden screw press. \
    Within fifty years, presses in more than two hundred European cities had printed";

/// What drafts in a speculative bench.
pub enum Drafting {
    Model(std::path::PathBuf),
    Mtp,
}

/// One configuration's decode: tokens/s over the timed runs, and the
/// drafter's counters.
struct Decode {
    tokens_per_s: f64,
    drafted: u64,
    accepted: u64,
}

/// Runs the comparison and returns its JSON (also printed as text unless
/// `a.json`).
pub fn run(a: &BenchArgs, mut model: Model, tok: &Tokenizer, how: Drafting) -> Result<Value> {
    if a.n_gen < 2 {
        bail!("-n must be at least 2 to time a speculative decode");
    }
    let prompt = tok
        .encode(PROMPT, true, false)
        .context("tokenizing the bench prompt")?;
    let ctx = prompt.len() + a.n_gen + a.spec_tokens + 8;
    if let (Drafting::Mtp, Model::Deepseek4(m)) = (&how, &mut model) {
        m.keep_hidden = true;
    }
    let model = Arc::new(model);
    let eog = crate::serve::engine::eog_table(tok, model.n_vocab());
    let drafter = || -> Result<Box<dyn Drafter>> {
        Ok(match &how {
            Drafting::Model(path) => {
                let target = dwarfstar_gguf::GgufFile::open(&a.model.model)?;
                let (draft, file) = Model::open(path, &[])
                    .with_context(|| format!("loading the draft model {}", path.display()))?;
                check_vocab(&target, &file)
                    .with_context(|| format!("draft model {}", path.display()))?;
                Box::new(ModelDrafter::new(Arc::new(draft), ctx))
            }
            Drafting::Mtp => Box::new(MtpDrafter::new(model.clone(), ctx).context("--mtp")?),
        })
    };
    let cfg = SchedConfig {
        max_batch: 1,
        prefill_chunk: 512,
        ctx_size: ctx,
        cache_entries: 0,
        cache_bytes: 0,
        min_prefix: usize::MAX,
        kv_positions: usize::MAX,
    };
    let plain = decode(a, &model, &cfg, &eog, &prompt, None)?;
    let spec = Speculation {
        drafter: drafter()?,
        max_tokens: a.spec_tokens.max(1),
        payoff: None,
    };
    let drafted = decode(a, &model, &cfg, &eog, &prompt, Some(spec))?;
    let rate = drafted.accepted as f64 / drafted.drafted.max(1) as f64;
    let label = match &how {
        Drafting::Model(p) => p.display().to_string(),
        Drafting::Mtp => "mtp".to_string(),
    };
    let v = json!({
        "model": a.model.model.display().to_string(),
        "threads": rayon::current_num_threads(),
        "prompt_tokens": prompt.len(),
        "decode_tokens": a.n_gen,
        "drafter": label,
        "spec_tokens": a.spec_tokens,
        "decode_tokens_per_s": drafted.tokens_per_s,
        "plain_decode_tokens_per_s": plain.tokens_per_s,
        "speedup": drafted.tokens_per_s / plain.tokens_per_s.max(1e-9),
        "drafted_tokens": drafted.drafted,
        "accepted_tokens": drafted.accepted,
        "acceptance_rate": rate,
    });
    if !a.json {
        println!(
            "model: {} ({} threads)",
            a.model.model.display(),
            v["threads"]
        );
        println!(
            "tg{} greedy: {:.2} tokens/s plain, {:.2} tokens/s drafting up to {} with {label} \
             ({:.2}x); drafted {}, accepted {} ({:.1}%)",
            a.n_gen,
            plain.tokens_per_s,
            drafted.tokens_per_s,
            a.spec_tokens,
            drafted.tokens_per_s / plain.tokens_per_s.max(1e-9),
            drafted.drafted,
            drafted.accepted,
            100.0 * rate
        );
    }
    Ok(v)
}

/// Greedy decodes of `a.n_gen` tokens after `prompt`, one warm-up and
/// `a.reps` timed, through a scheduler of its own.
fn decode(
    a: &BenchArgs,
    model: &Arc<Model>,
    cfg: &SchedConfig,
    eog: &[bool],
    prompt: &[u32],
    spec: Option<Speculation>,
) -> Result<Decode> {
    let metrics = Arc::new(Metrics::new());
    let (submit, rx) = scheduler::queue(2, metrics.clone());
    let mut s = Scheduler::new(
        model.clone(),
        cfg.clone(),
        eog.to_vec(),
        rx,
        metrics.clone(),
    );
    if let Some(spec) = spec {
        s = s.with_speculation(spec);
    }
    let engine = std::thread::spawn(move || s.run());
    let mut rates = Vec::new();
    let mut counted = (0, 0);
    for rep in 0..=a.reps.max(1) {
        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        submit
            .submit(GenRequest {
                prompt: prompt.to_vec(),
                max_tokens: a.n_gen,
                sampler: SamplerConfig::greedy(),
                presence_penalty: 0.0,
                frequency_penalty: 0.0,
                ignore_eos: true,
                constraint: None,
                logprobs: None,
                request_id: None,
                events: tx,
            })
            .map_err(|e| anyhow::anyhow!("the bench engine refused a request: {e:?}"))?;
        let before = (
            metrics.spec_drafted.load(Relaxed),
            metrics.spec_accepted.load(Relaxed),
        );
        let (mut first, mut n) = (None, 0usize);
        loop {
            match events.blocking_recv() {
                Some(Event::Token(_)) => {
                    n += 1;
                    first.get_or_insert_with(Instant::now);
                }
                Some(Event::Done(_)) => break,
                Some(Event::Failed(e)) => bail!("the bench decode failed: {e}"),
                Some(_) => {}
                None => bail!("the bench engine stopped"),
            }
        }
        let Some(t0) = first.filter(|_| n >= 2) else {
            bail!("the bench decode gave {n} tokens");
        };
        if rep > 0 {
            rates.push((n - 1) as f64 / t0.elapsed().as_secs_f64());
            counted.0 += metrics.spec_drafted.load(Relaxed) - before.0;
            counted.1 += metrics.spec_accepted.load(Relaxed) - before.1;
        }
    }
    drop(submit);
    engine
        .join()
        .map_err(|_| anyhow::anyhow!("the bench engine panicked"))?;
    Ok(Decode {
        tokens_per_s: rates.iter().sum::<f64>() / rates.len() as f64,
        drafted: counted.0,
        accepted: counted.1,
    })
}
