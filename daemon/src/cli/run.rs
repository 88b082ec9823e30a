//! `dwarfstar run`: one-shot local generation, streamed to stdout, or one
//! JSON object with `--json` that other engines' outputs compare against.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use dwarfstar_model::generate::{generate, GenerateParams, Generation};
use dwarfstar_model::kv_store::KvStore;
use dwarfstar_model::SamplerConfig;
use dwarfstar_tokenizer::{ChatMessage, Tokenizer};
use serde_json::json;

use super::{parse_ids, ModelArgs};

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt text (special tokens are parsed, BOS added as the model says).
    #[arg(long, short = 'p', conflicts_with = "prompt_ids")]
    pub prompt: Option<String>,
    /// Prompt as token ids: 1,2,3.
    #[arg(long)]
    pub prompt_ids: Option<String>,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    pub n: usize,
    /// Temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temp: f32,
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// RNG seed (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep generating past end-of-generation tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Stop when the output contains this text. Repeatable.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Context size (default: 4096, or the model's if shorter). KV memory
    /// grows with the positions used.
    #[arg(long, short = 'c')]
    pub ctx_size: Option<usize>,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// With --json: the top-K (id, logit) pairs of every step.
    #[arg(long, default_value_t = 0)]
    pub logits: usize,
    /// Write the logits of every prompt position (raw little-endian f32,
    /// [n_prompt][n_vocab]) to FILE.
    #[arg(long)]
    pub dump_logits: Option<PathBuf>,
    /// Directory of saved KV caches: the longest saved prefix of the prompt
    /// is restored instead of prefilled, and the prompt's KV is saved after
    /// (prompts of at least 32 tokens). Files are checked on load.
    #[arg(long, value_name = "DIR")]
    pub kv_cache_dir: Option<PathBuf>,
    /// Disk space for --kv-cache-dir; least recently used files go first.
    #[arg(long, value_name = "SIZE", default_value = "2GiB")]
    pub kv_cache_size: String,
}

pub fn run(a: RunArgs) -> Result<()> {
    let m = a.model.load_for(a.ctx_size)?;
    let prompt: Vec<u32> = match (&a.prompt, &a.prompt_ids) {
        (_, Some(ids)) => parse_ids(ids)?,
        (Some(text), None) => encode_prompt(&m.tokenizer, text, a.chat, a.system.as_deref())?,
        (None, None) => bail!("give --prompt or --prompt-ids"),
    };
    if prompt.is_empty() {
        bail!("the prompt has no tokens");
    }
    let ctx = a
        .ctx_size
        .unwrap_or_else(|| super::default_ctx(&m.model))
        .max(prompt.len() + a.n);
    let mut state = m.model.new_state(ctx);
    let store = match &a.kv_cache_dir {
        Some(dir) => Some(open_kv_store(dir, &a.kv_cache_size, &m.model)?),
        None => None,
    };
    if let (Some(store), None) = (&store, &a.dump_logits) {
        let t = std::time::Instant::now();
        let found = store.lookup(&m.model, &prompt, ctx);
        for (p, e) in &found.rejected {
            eprintln!("kv cache: refused {}: {e}", p.display());
        }
        match found.restored {
            Some(r) => {
                eprintln!(
                    "kv cache: restored {} of {} prompt tokens from {} in {:.3}s",
                    r.tokens,
                    prompt.len(),
                    r.path.display(),
                    t.elapsed().as_secs_f64()
                );
                state = r.state;
            }
            None => eprintln!(
                "kv cache: restored 0 of {} prompt tokens (no saved prefix)",
                prompt.len()
            ),
        }
    }

    if let Some(path) = &a.dump_logits {
        let logits = m.model.forward(&prompt, &mut state, true)?;
        let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
        // Keep the prompt's cache: generation continues from it.
        state.truncate(prompt.len() - 1);
    }

    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let params = GenerateParams {
        max_tokens: a.n,
        sampler: SamplerConfig {
            temperature: a.temp,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            repeat_penalty: a.repeat_penalty,
            repeat_last_n: a.repeat_last_n,
            seed,
        },
        ignore_eos: a.ignore_eos,
        stop: a.stop.clone(),
        top_logits: a.logits,
    };
    let stdout = std::io::stdout();
    let g = generate(
        &m.model,
        &m.tokenizer,
        &mut state,
        &prompt,
        &params,
        |step| {
            if !a.json {
                let mut out = stdout.lock();
                let _ = out.write_all(step.text.as_bytes());
                let _ = out.flush();
            }
            true
        },
    )?;
    if let Some(store) = &store {
        // The state holds the prompt, then what was generated: save the
        // prompt's positions.
        match store.save(&prompt, &state) {
            Ok(Some(bytes)) => eprintln!(
                "kv cache: saved {} prompt tokens ({})",
                prompt.len(),
                dwarfstar_model::store::format_size(bytes)
            ),
            Ok(None) => {}
            Err(e) => eprintln!("kv cache: not saved: {e}"),
        }
    }
    if a.json {
        println!("{}", json_output(&prompt, &g, a.logits));
    } else {
        println!();
        let n = g.tokens.len().max(1) as f64;
        eprintln!(
            "prompt: {} tokens in {:.3}s ({:.1} tok/s); generated {} tokens in {:.3}s ({:.1} tok/s)",
            g.n_prompt,
            g.prefill_s,
            g.n_prompt as f64 / g.prefill_s.max(1e-9),
            g.tokens.len(),
            g.decode_s,
            n / g.decode_s.max(1e-9)
        );
    }
    Ok(())
}

/// Opens the KV cache directory `dir` for `model` within `size` (e.g. 2GiB).
pub fn open_kv_store(
    dir: &std::path::Path,
    size: &str,
    model: &dwarfstar_model::Model,
) -> Result<KvStore> {
    let budget = dwarfstar_model::store::parse_size(size)
        .map_err(|e| anyhow::anyhow!("--kv-cache-size {e}"))?;
    KvStore::open(dir, budget, model).with_context(|| format!("--kv-cache-dir {}", dir.display()))
}

/// The prompt's token ids for `text` (special tokens parsed, BOS as the model
/// says), wrapped first in the chat template as a user message with `chat`.
pub fn encode_prompt(
    tok: &Tokenizer,
    text: &str,
    chat: bool,
    system: Option<&str>,
) -> Result<Vec<u32>> {
    let text = if chat {
        let mut msgs = Vec::new();
        if let Some(s) = system {
            msgs.push(ChatMessage::new("system", s));
        }
        msgs.push(ChatMessage::new("user", text));
        tok.apply_chat_template(&msgs, true)?
    } else {
        text.to_string()
    };
    Ok(tok.encode(&text, true, true)?)
}

/// The object `--json` prints: prompt and generated token ids, the text, and
/// with `logits > 0` the top-K `[id, logit]` pairs of every step. The gRPC
/// Generate call ends with the same object.
pub fn json_output(prompt: &[u32], g: &Generation, logits: usize) -> serde_json::Value {
    let mut obj = json!({
        "prompt_tokens": prompt,
        "tokens": g.tokens,
        "text": g.text,
    });
    if logits > 0 {
        obj["top_logits"] = json!(g
            .top_logits
            .iter()
            .map(|s| s.iter().map(|&(id, l)| json!([id, l])).collect::<Vec<_>>())
            .collect::<Vec<_>>());
    }
    obj
}
