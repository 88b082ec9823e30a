//! `meshctl`: the command-line client of a DwarfStar daemon's gRPC Control
//! service (`dwarfstar.v1.Control`). It parses flags, makes one call, and
//! prints the answer as a table (or one JSON object with `--json`); the
//! rendering lives in [`render`]. The binary is [`main`]; [`run_args`]
//! runs one command line with its output into any writer (the tests use it
//! against live daemons).

mod render;
mod simulate;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args, Parser, Subcommand};
use dwarfstar_proto::v1::control_client::ControlClient;
use dwarfstar_proto::v1::{
    generate_event, GenerateRequest, LoadRequest, PeersRequest, PlanRequest, StatusRequest,
};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::Request;

/// The local daemon's default gRPC address.
const DEFAULT_ADDR: &str = "http://127.0.0.1:7070";

/// Talk to a DwarfStar daemon (and through it, its mesh).
#[derive(Parser, Debug)]
#[command(name = "meshctl", version, about)]
struct Cli {
    /// The daemon's gRPC address, http://HOST:PORT [default: $MESHCTL_ADDR,
    /// else http://127.0.0.1:7070].
    #[arg(long, global = true)]
    addr: Option<String>,
    /// API key, when the daemon has keys [default: $MESHCTL_API_KEY].
    #[arg(long, global = true)]
    api_key: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug, PartialEq)]
enum Command {
    /// Every node: address, role, layers and experts held, memory, state.
    Status,
    /// Every known peer with its capabilities and link.
    Peers,
    /// The plan in force (or, with --preview, a fresh one not applied; with
    /// --simulate HW.toml, a plan over described machines, offline).
    Plan(PlanArgs),
    /// Load a model: the node asked coordinates it across the mesh (another
    /// model replaces the one served; the same one is re-planned).
    Load(LoadArgs),
    /// Generate text, as `dwarfstar run` does (same flags, same --json).
    Generate(GenerateArgs),
    /// The cluster as a whole: `cluster status`, `cluster peers` and
    /// `cluster plan` are `status`, `peers` and `plan`.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Subcommand, Debug, PartialEq)]
enum ClusterCommand {
    /// Every node: address, role, layers and experts held, memory, state.
    Status,
    /// Every known peer with its capabilities and link.
    Peers,
    /// The plan in force (or a preview, or a simulation; see `plan`).
    Plan(PlanArgs),
}

impl Command {
    /// The command a `cluster` form names (the short forms are themselves).
    fn resolve(self) -> Command {
        match self {
            Command::Cluster { command } => match command {
                ClusterCommand::Status => Command::Status,
                ClusterCommand::Peers => Command::Peers,
                ClusterCommand::Plan(a) => Command::Plan(a),
            },
            c => c,
        }
    }
}

#[derive(Args, Debug, PartialEq)]
#[command(group(ArgGroup::new("mode").args(["preview", "simulate"])))]
struct PlanArgs {
    /// Compute a fresh plan with the options below, without applying it.
    #[arg(long)]
    preview: bool,
    /// Plan over the machines of this hardware file instead of the mesh,
    /// without a daemon (profiles: deploy/hardware/).
    #[arg(long, value_name = "HW.toml")]
    simulate: Option<std::path::PathBuf>,
    /// Preview: model name or path (default: the loaded one). Simulate: a
    /// built-in shape (MODEL:RECIPE) or a simulator model JSON.
    #[arg(long, requires = "mode")]
    model: Option<String>,
    /// Force this many pipeline stages.
    #[arg(long, requires = "mode")]
    stages: Option<u32>,
    /// Spread MoE experts across nodes.
    #[arg(long, requires = "mode")]
    expert_parallel: bool,
    /// Simulate: also predict head-parallel attention.
    #[arg(long, requires = "simulate")]
    head_parallel: bool,
    /// Simulate: prompt tokens for the time to first token.
    #[arg(long, requires = "simulate", default_value_t = 512)]
    prompt_tokens: u64,
    /// Simulate: stream counts for aggregate tokens/s.
    #[arg(
        long,
        requires = "simulate",
        value_delimiter = ',',
        default_value = "1,4,16"
    )]
    streams: Vec<u32>,
    /// Simulate: a folder of extra profile files.
    #[arg(long, requires = "simulate", value_name = "DIR")]
    profiles: Option<std::path::PathBuf>,
}

#[derive(Args, Debug, PartialEq)]
struct LoadArgs {
    /// Model name (in the daemon's models directory) or path.
    #[arg(long, short = 'm')]
    model: String,
    /// Force this many pipeline stages (default: the planner chooses).
    #[arg(long)]
    stages: Option<u32>,
    /// Spread MoE experts across nodes.
    #[arg(long)]
    expert_parallel: bool,
}

/// `dwarfstar run`'s generation flags; unset ones take its defaults.
#[derive(Args, Debug, PartialEq)]
struct GenerateArgs {
    /// Prompt text (special tokens are parsed, BOS added as the model says).
    #[arg(long, short = 'p', conflicts_with = "prompt_ids")]
    prompt: Option<String>,
    /// Prompt as token ids: 1,2,3.
    #[arg(long)]
    prompt_ids: Option<String>,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Tokens to generate [default: 128].
    #[arg(short = 'n', long = "n-predict")]
    n: Option<u32>,
    /// Temperature; 0 is greedy [default: 0.8].
    #[arg(long)]
    temp: Option<f32>,
    /// [default: 40]
    #[arg(long)]
    top_k: Option<u32>,
    /// [default: 0.95]
    #[arg(long)]
    top_p: Option<f32>,
    /// [default: 0.05]
    #[arg(long)]
    min_p: Option<f32>,
    /// [default: 1.0]
    #[arg(long)]
    repeat_penalty: Option<f32>,
    /// [default: 64]
    #[arg(long)]
    repeat_last_n: Option<u32>,
    /// RNG seed (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Keep generating past end-of-generation tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Stop when the output contains this text. Repeatable.
    #[arg(long)]
    stop: Vec<String>,
    /// With --json: the top-K (id, logit) pairs of every step.
    #[arg(long, default_value_t = 0)]
    logits: u32,
}

/// Adds the API key (if any) to every call.
type Auth = Box<dyn FnMut(Request<()>) -> Result<Request<()>, tonic::Status> + Send>;

type Client = ControlClient<InterceptedService<Channel, Auth>>;

/// `HOST:PORT` or a URL; a bare address gets `http://`.
fn normalize_addr(a: &str) -> String {
    let a = a.trim();
    if a.contains("://") {
        a.to_string()
    } else {
        format!("http://{a}")
    }
}

async fn connect(cli: &Cli) -> Result<Client> {
    let addr = cli
        .addr
        .clone()
        .or_else(|| std::env::var("MESHCTL_ADDR").ok().filter(|s| !s.is_empty()))
        .map(|a| normalize_addr(&a))
        .unwrap_or_else(|| DEFAULT_ADDR.to_string());
    let endpoint = Endpoint::from_shared(addr.clone())
        .with_context(|| format!("bad --addr {addr:?} (want http://HOST:PORT)"))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach a DwarfStar daemon at {addr}: {} (is `dwarfstar serve` running there? \
             its gRPC address is on its first output line)",
            source_chain(&e)
        )
    })?;
    let key = cli
        .api_key
        .clone()
        .or_else(|| std::env::var("MESHCTL_API_KEY").ok())
        .filter(|k| !k.is_empty());
    let auth: Option<MetadataValue<_>> = match key {
        Some(k) => Some(
            format!("Bearer {k}")
                .parse()
                .context("the API key has characters a header can't carry")?,
        ),
        None => None,
    };
    let intercept: Auth = Box::new(move |mut req: Request<()>| {
        if let Some(v) = &auth {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    });
    Ok(ControlClient::with_interceptor(channel, intercept))
}

/// An error and its causes on one line.
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A failed call as the user should read it.
fn call_error(what: &str, s: tonic::Status) -> anyhow::Error {
    use tonic::Code;
    let kind = match s.code() {
        Code::InvalidArgument => "bad request",
        Code::NotFound => "not found",
        Code::FailedPrecondition => "not possible now",
        Code::ResourceExhausted => "too large",
        Code::Unavailable => "unavailable",
        Code::Unauthenticated => "not authorized",
        Code::Unimplemented => "not supported by this daemon",
        _ => "failed",
    };
    anyhow::anyhow!("{what}: {kind}: {}", s.message())
}

fn parse_ids(s: &str) -> Result<Vec<u32>> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .with_context(|| format!("bad token id {t:?}"))
        })
        .collect()
}

fn generate_request(a: &GenerateArgs) -> Result<GenerateRequest> {
    let prompt_ids = match &a.prompt_ids {
        Some(ids) => {
            let v = parse_ids(ids)?;
            if v.is_empty() {
                bail!("--prompt-ids has no ids");
            }
            v
        }
        None => Vec::new(),
    };
    if a.prompt.is_none() && prompt_ids.is_empty() {
        bail!("give --prompt or --prompt-ids");
    }
    Ok(GenerateRequest {
        prompt: a.prompt.clone(),
        prompt_ids,
        chat: a.chat,
        system: a.system.clone(),
        n: a.n,
        temp: a.temp,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repeat_penalty: a.repeat_penalty,
        repeat_last_n: a.repeat_last_n,
        seed: a.seed,
        ignore_eos: a.ignore_eos,
        stop: a.stop.clone(),
        logits: a.logits,
    })
}

async fn generate(
    client: &mut Client,
    a: &GenerateArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let req = generate_request(a)?;
    let mut stream = client
        .generate(req)
        .await
        .map_err(|s| call_error("generate", s))?
        .into_inner();
    loop {
        let ev = match stream.message().await {
            Ok(Some(ev)) => ev,
            Ok(None) => bail!("generate: the daemon ended the stream without a result"),
            Err(s) => return Err(call_error("generate", s)),
        };
        match ev.event {
            Some(generate_event::Event::Token(t)) if !json => {
                out.write_all(t.text.as_bytes())?;
                out.flush()?;
            }
            Some(generate_event::Event::Token(_)) => {}
            Some(generate_event::Event::Done(d)) => {
                if json {
                    writeln!(out, "{}", d.json)?;
                } else {
                    writeln!(out, "{}", d.tail)?;
                    let n = (d.n_generated as f64).max(1.0);
                    eprintln!(
                        "prompt: {} tokens in {:.3}s ({:.1} tok/s); generated {} tokens in {:.3}s ({:.1} tok/s); stop: {}",
                        d.n_prompt,
                        d.prefill_s,
                        d.n_prompt as f64 / d.prefill_s.max(1e-9),
                        d.n_generated,
                        d.decode_s,
                        n / d.decode_s.max(1e-9),
                        d.stop_reason
                    );
                }
                return Ok(());
            }
            None => {} // an event kind newer than this meshctl
        }
    }
}

async fn run(mut cli: Cli, out: &mut dyn Write) -> Result<()> {
    cli.command = std::mem::replace(&mut cli.command, Command::Status).resolve();
    // Check what can be checked before connecting.
    if let Command::Generate(a) = &cli.command {
        generate_request(a)?;
    }
    // Simulation needs no daemon.
    if let Command::Plan(a) = &cli.command {
        if let Some(hw) = &a.simulate {
            return simulate::run(
                hw,
                &simulate::SimArgs {
                    model: a.model.clone(),
                    stages: a.stages,
                    expert_parallel: a.expert_parallel,
                    head_parallel: a.head_parallel,
                    prompt_tokens: a.prompt_tokens,
                    streams: a.streams.clone(),
                    profiles: a.profiles.clone(),
                },
                cli.json,
                out,
            );
        }
    }
    let mut client = connect(&cli).await?;
    let json = cli.json;
    match &cli.command {
        Command::Status => {
            let r = client
                .status(StatusRequest {})
                .await
                .map_err(|s| call_error("status", s))?
                .into_inner();
            if json {
                writeln!(out, "{}", render::status_json(&r))?;
            } else {
                write!(out, "{}", render::status_text(&r))?;
            }
        }
        Command::Peers => {
            let r = client
                .peers(PeersRequest {})
                .await
                .map_err(|s| call_error("peers", s))?
                .into_inner();
            if json {
                writeln!(out, "{}", render::peers_json(&r))?;
            } else {
                write!(out, "{}", render::peers_text(&r))?;
            }
        }
        Command::Plan(a) => {
            let r = client
                .plan(PlanRequest {
                    preview: a.preview,
                    model: a.model.clone().unwrap_or_default(),
                    stages: a.stages,
                    expert_parallel: a.expert_parallel,
                })
                .await
                .map_err(|s| call_error("plan", s))?
                .into_inner();
            if json {
                writeln!(out, "{}", render::plan_reply_json(&r))?;
            } else {
                match &r.plan {
                    Some(p) => write!(out, "{}", render::plan_text(p, r.applied))?,
                    None => writeln!(
                        out,
                        "no plan: no model is loaded (meshctl load --model NAME)"
                    )?,
                }
            }
        }
        Command::Load(a) => {
            let r = client
                .load_model(LoadRequest {
                    model: a.model.clone(),
                    stages: a.stages,
                    expert_parallel: a.expert_parallel,
                })
                .await
                .map_err(|s| call_error("load", s))?
                .into_inner();
            if json {
                writeln!(out, "{}", render::load_json(&r))?;
            } else {
                if r.unchanged {
                    writeln!(out, "{} is already loaded", r.model)?;
                } else {
                    writeln!(out, "loaded {} in {} ms", r.model, r.load_ms)?;
                }
                if let Some(p) = &r.plan {
                    write!(out, "{}", render::plan_text(p, true))?;
                }
            }
        }
        Command::Generate(a) => generate(&mut client, a, json, out).await?,
        Command::Cluster { .. } => unreachable!("resolved above"),
    }
    Ok(())
}

/// A command line that failed: bad flags, or a call that failed; the
/// message names the cause chain.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(String);

/// Runs one command line (`args[0]` is the program name) with its output
/// into `out`, on a runtime of its own.
pub fn run_args<I, T>(args: I, out: &mut dyn Write) -> Result<(), Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(args).map_err(|e| Error(e.to_string()))?;
    block_on(cli, out)
}

fn block_on(cli: Cli, out: &mut dyn Write) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error(format!("starting the async runtime: {e}")))?;
    rt.block_on(run(cli, out))
        .map_err(|e| Error(format!("{e:#}")))
}

/// The `meshctl` binary: the process's arguments, output to stdout.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    match block_on(cli, &mut stdout.lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshctl: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_get_a_scheme() {
        assert_eq!(normalize_addr("127.0.0.1:7070"), "http://127.0.0.1:7070");
        assert_eq!(normalize_addr(" http://h:1 "), "http://h:1");
    }

    #[test]
    fn generate_flags_mirror_dwarfstar_run() {
        let cli = Cli::try_parse_from([
            "meshctl",
            "generate",
            "--prompt-ids",
            "1, 2,3",
            "-n",
            "8",
            "--temp",
            "0",
            "--seed",
            "7",
            "--ignore-eos",
            "--json",
            "--logits",
            "3",
            "--stop",
            "a",
            "--stop",
            "b",
        ])
        .unwrap();
        assert!(cli.json);
        let Command::Generate(a) = &cli.command else {
            panic!("not generate")
        };
        let r = generate_request(a).unwrap();
        assert_eq!(r.prompt_ids, vec![1, 2, 3]);
        assert_eq!((r.n, r.temp, r.seed), (Some(8), Some(0.0), Some(7)));
        assert!(r.ignore_eos);
        assert_eq!(r.logits, 3);
        assert_eq!(r.stop, vec!["a", "b"]);
        assert_eq!(
            r.top_p, None,
            "unset flags stay unset: the daemon applies run's defaults"
        );
        assert!(
            Cli::try_parse_from(["meshctl", "generate", "--prompt", "x", "--prompt-ids", "1"])
                .is_err()
        );
        let none = Cli::try_parse_from(["meshctl", "generate"]).unwrap();
        let Command::Generate(a) = &none.command else {
            panic!("not generate")
        };
        assert!(generate_request(a).is_err());
        let bad = Cli::try_parse_from(["meshctl", "generate", "--prompt-ids", "1,x"]).unwrap();
        let Command::Generate(a) = &bad.command else {
            panic!("not generate")
        };
        assert!(generate_request(a).is_err());
    }

    #[test]
    fn plan_options_need_preview() {
        assert!(Cli::try_parse_from(["meshctl", "plan", "--stages", "2"]).is_err());
        assert!(Cli::try_parse_from(["meshctl", "plan", "--preview", "--stages", "2"]).is_ok());
        assert!(
            Cli::try_parse_from(["meshctl", "plan", "--simulate", "hw.toml", "--stages", "2"])
                .is_ok()
        );
        assert!(Cli::try_parse_from(["meshctl", "plan", "--head-parallel"]).is_err());
        assert!(
            Cli::try_parse_from(["meshctl", "plan", "--preview", "--simulate", "hw.toml"]).is_err()
        );
        assert!(Cli::try_parse_from(["meshctl", "load"]).is_err());
    }

    #[test]
    fn cluster_forms_are_the_short_commands() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("meshctl").chain(args.iter().copied()))
                .unwrap()
                .command
                .resolve()
        };
        assert_eq!(parse(&["cluster", "status"]), parse(&["status"]));
        assert_eq!(parse(&["cluster", "peers"]), parse(&["peers"]));
        assert_eq!(
            parse(&["cluster", "plan", "--preview", "--stages", "2"]),
            parse(&["plan", "--preview", "--stages", "2"])
        );
        assert_ne!(parse(&["cluster", "status"]), parse(&["peers"]));
        assert!(Cli::try_parse_from(["meshctl", "cluster"]).is_err());
        assert!(Cli::try_parse_from(["meshctl", "cluster", "load"]).is_err());
    }
}
