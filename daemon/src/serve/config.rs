//! `dwarfstar serve` settings: the TOML file (one table per concern:
//! `[http]`, `[grpc]`, `[model]`, `[limits]`, `[mesh]`; later concerns get
//! their own table), command-line flags over it, API keys from
//! `DWARFSTAR_API_KEYS` too, and the checks that turn them into [`Settings`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// The configuration file.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub http: HttpConfig,
    pub grpc: GrpcConfig,
    pub model: ModelConfig,
    pub limits: LimitsConfig,
    pub mesh: MeshFileConfig,
}

/// `[mesh]`: how a mesh node watches the members of its plan.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MeshFileConfig {
    /// A plan member that answers no heartbeat for this long is declared
    /// lost (default 3000; `--lost-after-ms` overrides it).
    pub lost_after_ms: Option<u64>,
}

/// The shortest liveness bound accepted: heartbeats go four times in it.
pub const MIN_LOST_AFTER_MS: u64 = 200;

/// `[http]`: where and for whom the API listens.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port`.
    pub addr: String,
    /// Bearer tokens that may call `/v1/*`. None: loopback only.
    pub api_keys: Vec<String>,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: "127.0.0.1:8080".into(),
            api_keys: Vec::new(),
            max_body_bytes: 4 << 20,
        }
    }
}

/// `[grpc]`: the Control service `meshctl` talks to (same API keys as HTTP).
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// `host:port`, or `off` (default: 127.0.0.1:7070).
    pub listen: Option<String>,
}

/// The gRPC address when neither the file nor a flag gives one.
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:7070";

/// `[model]`: what is served.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    pub path: Option<PathBuf>,
    /// The id in `/v1/models` (default: the file name without `.gguf`).
    pub name: Option<String>,
    /// Kernel worker threads (default: all cores).
    pub threads: Option<usize>,
    /// Positions per sequence (default: the model's, at most 8192).
    pub ctx_size: Option<usize>,
    /// `KEY=TYPE:VALUE` metadata overrides.
    pub override_kv: Vec<String>,
    /// How KV caches store rows: f32, f16, q8_0 or q4_0 (dense models).
    pub kv_type: Option<String>,
    /// Directory of saved KV caches: prompts restore their longest saved
    /// prefix from it when the memory prefix cache misses, and sequences
    /// of at least 64 tokens are saved there (dense and DeepSeek2 models).
    pub kv_cache_dir: Option<PathBuf>,
    /// Disk space for `kv_cache_dir`, e.g. "2GiB" (the default).
    pub kv_cache_size: Option<String>,
    /// A smaller model of the same vocabulary that drafts tokens for
    /// speculative decoding (a lower-bit quantization of this one, say).
    pub draft_model: Option<PathBuf>,
    /// Most tokens drafted per sequence and step (default 3).
    pub spec_tokens: Option<usize>,
    /// Draft on every step, even while drafting measures slower than plain
    /// decoding (default false: draft only while it pays).
    pub spec_always: bool,
    /// Draft with the model's own MTP block (DeepSeek V4). Default: on
    /// where the model has one and no `draft_model` is given; `true`
    /// requires the block, `false` turns it off.
    pub mtp: Option<bool>,
    /// ds4's MTP block in a GGUF of its own (`mtp.0.*`), attached to the
    /// model to draft with (implies `mtp`).
    pub mtp_model: Option<PathBuf>,
}

/// Draft tokens per step when neither the file nor a flag says.
pub const DEFAULT_SPEC_TOKENS: usize = 3;

/// Speculative decoding's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DraftSettings {
    pub source: DraftSource,
    /// Most tokens drafted per sequence and step (at least 1).
    pub tokens: usize,
    /// Draft on every step, paying or not.
    pub always: bool,
}

/// `[limits]`: budgets of the scheduler.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Sequences decoded together.
    pub max_batch: usize,
    /// Requests waiting for a slot before 429.
    pub queue: usize,
    /// Prompt tokens per engine step, all sequences together.
    pub prefill_chunk: usize,
    /// `max_tokens` when a request gives none (default: the rest of the
    /// context).
    pub default_max_tokens: Option<usize>,
    /// Cap on `max_tokens` (requests above are clamped, not refused).
    pub max_tokens: Option<usize>,
    /// States kept for prefix reuse (0 disables).
    pub prefix_cache_entries: usize,
    /// Bytes the prefix cache may hold, in MiB.
    pub prefix_cache_mib: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_batch: 16,
            queue: 64,
            prefill_chunk: 128,
            default_max_tokens: None,
            max_tokens: None,
            prefix_cache_entries: 32,
            prefix_cache_mib: 1024,
        }
    }
}

/// Flags that override the file (None: not given).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub model: Option<PathBuf>,
    pub model_name: Option<String>,
    pub http_addr: Option<String>,
    pub grpc_listen: Option<String>,
    pub api_keys: Vec<String>,
    pub threads: Option<usize>,
    pub ctx_size: Option<usize>,
    pub max_batch: Option<usize>,
    pub queue: Option<usize>,
    pub prefill_chunk: Option<usize>,
    pub override_kv: Vec<String>,
    pub kv_type: Option<String>,
    pub draft_model: Option<PathBuf>,
    pub spec_tokens: Option<usize>,
    pub spec_always: bool,
    pub mtp: Option<bool>,
    pub mtp_model: Option<PathBuf>,
}

/// What drafts for speculative decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DraftSource {
    /// A smaller model of the same vocabulary.
    Model(PathBuf),
    /// The served model's MTP block; `required`: refuse a model without
    /// one (else it decodes without drafts); `file`: the block's own GGUF
    /// (ds4's layout), attached to the model at load.
    Mtp {
        required: bool,
        file: Option<PathBuf>,
    },
}

/// Everything `serve` runs with, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub addr: SocketAddr,
    /// The gRPC Control address; None: off.
    pub grpc_addr: Option<SocketAddr>,
    /// The gRPC address was given (file or flag): failing to bind it is an
    /// error; the default address being taken only turns gRPC off.
    pub grpc_explicit: bool,
    pub api_keys: Vec<String>,
    pub max_body_bytes: usize,
    /// The HTTP address was given (file or flag). A daemon without a model
    /// (a mesh node) serves HTTP only then.
    pub http_explicit: bool,
    /// The model to serve at start; None: a mesh node waits for a plan
    /// or a `meshctl load`.
    pub model_path: Option<PathBuf>,
    /// Its id for clients (empty without a model).
    pub model_name: String,
    pub threads: Option<usize>,
    pub ctx_size: Option<usize>,
    pub override_kv: Vec<String>,
    /// None: the model's own default (f32; f16 for DeepSeek V4).
    pub kv_type: Option<dwarfstar_model::KvType>,
    pub limits: LimitsConfig,
    /// `[model] kv_cache_dir` and its budget in bytes.
    pub kv_cache: Option<(PathBuf, u64)>,
    /// Speculative decoding with a draft model (the configured model only).
    pub draft: Option<DraftSettings>,
    /// `[mesh] lost_after_ms`, checked.
    pub lost_after: Option<std::time::Duration>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        FileConfig::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<FileConfig> {
        Ok(toml::from_str(text)?)
    }
}

/// Splits `DWARFSTAR_API_KEYS`-style text: comma-separated, blanks skipped.
pub fn split_keys(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect()
}

/// Merges file, flags and the environment's keys, and checks the result.
pub fn resolve(file: FileConfig, o: Overrides, env_keys: Option<&str>) -> Result<Settings> {
    let FileConfig {
        http,
        grpc,
        model,
        mut limits,
        mesh,
    } = file;
    let http_explicit = o.http_addr.is_some() || http.addr != HttpConfig::default().addr;
    let addr_text = o.http_addr.unwrap_or(http.addr);
    let addr = addr_text
        .to_socket_addrs()
        .with_context(|| format!("listen address {addr_text:?}"))?
        .next()
        .with_context(|| format!("listen address {addr_text:?} resolves to nothing"))?;
    let mut api_keys = http.api_keys;
    api_keys.extend(o.api_keys);
    api_keys.extend(env_keys.map(split_keys).unwrap_or_default());
    api_keys.retain(|k| !k.trim().is_empty());
    api_keys.dedup();
    if api_keys.is_empty() && !addr.ip().is_loopback() {
        bail!(
            "refusing to listen on {addr} without API keys: anyone who can reach it could use the model. \
             Give --api-key (or [http] api_keys, or DWARFSTAR_API_KEYS), or listen on a loopback address \
             such as 127.0.0.1:{}",
            addr.port()
        );
    }
    let grpc_given = o.grpc_listen.or(grpc.listen);
    let grpc_explicit = grpc_given.is_some();
    let grpc_text = grpc_given.unwrap_or_else(|| DEFAULT_GRPC_LISTEN.to_string());
    let grpc_addr = if grpc_text.trim() == "off" {
        None
    } else {
        let a = grpc_text
            .to_socket_addrs()
            .with_context(|| format!("gRPC listen address {grpc_text:?}"))?
            .next()
            .with_context(|| format!("gRPC listen address {grpc_text:?} resolves to nothing"))?;
        if api_keys.is_empty() && !a.ip().is_loopback() {
            bail!(
                "refusing to serve gRPC on {a} without API keys: anyone who can reach it could use \
                 and reload the model. Give --api-key, or a loopback --grpc-listen such as 127.0.0.1:{}",
                a.port()
            );
        }
        Some(a)
    };
    let model_path = o.model.or(model.path);
    let model_name = o.model_name.or(model.name).unwrap_or_else(|| {
        model_path
            .as_deref()
            .map(super::engine::stem)
            .unwrap_or_default()
    });
    if let Some(v) = o.max_batch {
        limits.max_batch = v;
    }
    if let Some(v) = o.queue {
        limits.queue = v;
    }
    if let Some(v) = o.prefill_chunk {
        limits.prefill_chunk = v;
    }
    for (name, v) in [
        ("max_batch", limits.max_batch),
        ("queue", limits.queue),
        ("prefill_chunk", limits.prefill_chunk),
    ] {
        if v == 0 {
            bail!("[limits] {name} must be at least 1");
        }
    }
    if limits.default_max_tokens == Some(0) || limits.max_tokens == Some(0) {
        bail!("[limits] default_max_tokens and max_tokens must be at least 1");
    }
    let ctx_size = o.ctx_size.or(model.ctx_size);
    if ctx_size.is_some_and(|c| c < 2) {
        bail!("the context size must be at least 2");
    }
    let mut override_kv = model.override_kv;
    override_kv.extend(o.override_kv);
    let kv_type = match o.kv_type.or(model.kv_type) {
        Some(t) => Some(
            t.parse::<dwarfstar_model::KvType>()
                .map_err(|e| anyhow::anyhow!("kv_type: {e}"))?,
        ),
        None => None,
    };
    let kv_cache = match model.kv_cache_dir {
        Some(dir) => {
            let size = model.kv_cache_size.as_deref().unwrap_or("2GiB");
            let bytes = dwarfstar_model::store::parse_size(size)
                .map_err(|e| anyhow::anyhow!("[model] kv_cache_size: {e}"))?;
            Some((dir, bytes))
        }
        None => None,
    };
    let spec_tokens = o.spec_tokens.or(model.spec_tokens);
    if spec_tokens == Some(0) {
        bail!("spec_tokens must be at least 1 (leave draft_model unset to decode without drafts)");
    }
    let mtp = o.mtp.or(model.mtp);
    let mtp_file = o.mtp_model.or(model.mtp_model);
    let source = match (o.draft_model.or(model.draft_model), mtp, mtp_file) {
        (Some(_), Some(true), _) | (Some(_), _, Some(_)) => {
            bail!("mtp and a draft model both asked for: choose one drafter")
        }
        (Some(m), _, None) => Some(DraftSource::Model(m)),
        (None, Some(false), Some(_)) => {
            bail!("mtp_model given with mtp off: drop one of them")
        }
        (None, Some(false), None) if spec_tokens.is_some() => {
            bail!("spec_tokens needs a drafter: give --draft-model, or leave mtp on")
        }
        (None, Some(false), None) => None,
        (None, mtp, file) => Some(DraftSource::Mtp {
            required: mtp == Some(true) || file.is_some(),
            file,
        }),
    };
    let draft = source.map(|source| DraftSettings {
        source,
        tokens: spec_tokens.unwrap_or(DEFAULT_SPEC_TOKENS),
        always: o.spec_always || model.spec_always,
    });
    let lost_after = mesh.lost_after_ms.map(lost_after).transpose()?;
    Ok(Settings {
        lost_after,
        kv_cache,
        draft,
        addr,
        http_explicit,
        grpc_addr,
        grpc_explicit,
        api_keys,
        max_body_bytes: http.max_body_bytes.max(1024),
        model_path,
        model_name,
        threads: o.threads.or(model.threads),
        ctx_size,
        override_kv,
        kv_type,
        limits,
    })
}

/// A liveness bound in milliseconds, checked.
pub fn lost_after(ms: u64) -> Result<std::time::Duration> {
    if ms < MIN_LOST_AFTER_MS {
        bail!("[mesh] lost_after_ms must be at least {MIN_LOST_AFTER_MS} (got {ms})");
    }
    Ok(std::time::Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(model: &str) -> Overrides {
        Overrides {
            model: Some(model.into()),
            ..Default::default()
        }
    }

    #[test]
    fn the_liveness_bound_comes_from_mesh_and_is_checked() {
        let s = resolve(FileConfig::default(), flags("/m/x.gguf"), None).unwrap();
        assert_eq!(s.lost_after, None);
        let c = FileConfig::parse("[mesh]\nlost_after_ms = 1500\n").unwrap();
        let s = resolve(c, flags("/m/x.gguf"), None).unwrap();
        assert_eq!(s.lost_after, Some(std::time::Duration::from_millis(1500)));
        let c = FileConfig::parse("[mesh]\nlost_after_ms = 50\n").unwrap();
        let e = resolve(c, flags("/m/x.gguf"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 200"), "{e}");
        assert!(FileConfig::parse("[mesh]\nheartbeat = 1\n").is_err());
    }

    #[test]
    fn the_drafter_is_mtp_unless_a_draft_model_is_given() {
        let draft = |file: &str, mtp: Option<bool>, model: Option<&str>| {
            let mut o = flags("/m/x.gguf");
            o.mtp = mtp;
            o.draft_model = model.map(Into::into);
            resolve(FileConfig::parse(file).unwrap(), o, None).map(|s| s.draft.map(|d| d.source))
        };
        let mtp = |required| {
            Some(DraftSource::Mtp {
                required,
                file: None,
            })
        };
        assert_eq!(draft("", None, None).unwrap(), mtp(false));
        assert_eq!(draft("", Some(true), None).unwrap(), mtp(true));
        assert_eq!(
            draft("[model]\nmtp = true\n", None, None).unwrap(),
            mtp(true)
        );
        assert_eq!(draft("[model]\nmtp = false\n", None, None).unwrap(), None);
        assert_eq!(
            draft("[model]\nmtp = false\n", Some(true), None).unwrap(),
            mtp(true)
        );
        assert_eq!(
            draft("", None, Some("/d.gguf")).unwrap(),
            Some(DraftSource::Model("/d.gguf".into()))
        );
        let e = draft("", Some(true), Some("/d.gguf"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("choose one"), "{e}");
        // ds4's MTP file of its own: MTP, required, with the file.
        let side = |file: &str, mtp: Option<bool>, model: Option<&str>| {
            let mut o = flags("/m/x.gguf");
            o.mtp = mtp;
            o.mtp_model = Some("/m/mtp.gguf".into());
            o.draft_model = model.map(Into::into);
            resolve(FileConfig::parse(file).unwrap(), o, None).map(|s| s.draft.map(|d| d.source))
        };
        let attached = Some(DraftSource::Mtp {
            required: true,
            file: Some("/m/mtp.gguf".into()),
        });
        assert_eq!(side("", None, None).unwrap(), attached);
        let e = side("", Some(false), None).unwrap_err().to_string();
        assert!(e.contains("mtp off"), "{e}");
        let e = side("", None, Some("/d.gguf")).unwrap_err().to_string();
        assert!(e.contains("choose one"), "{e}");
        let from_file = FileConfig::parse("[model]\nmtp_model = \"/m/mtp.gguf\"\n").unwrap();
        let s = resolve(from_file, flags("/m/x.gguf"), None).unwrap();
        assert_eq!(s.draft.map(|d| d.source), attached);
        let e = draft("[model]\nmtp = false\nspec_tokens = 2\n", None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs a drafter"), "{e}");
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../../deploy/dwarfstar.example.toml");
        let c = FileConfig::parse(text).unwrap();
        assert_ne!(c, FileConfig::default());
        assert!(c.model.path.is_some());
    }

    #[test]
    fn flags_override_the_file_and_keys_add_up() {
        let c = FileConfig::parse(
            "[http]\naddr = \"127.0.0.1:9000\"\napi_keys = [\"a\"]\n[model]\npath = \"/m/x.gguf\"\nthreads = 3\n\
             [limits]\nmax_batch = 4\nqueue = 2\n",
        )
        .unwrap();
        let s = resolve(
            c,
            Overrides {
                api_keys: vec!["b".into()],
                queue: Some(9),
                ..Default::default()
            },
            Some(" c, ,d "),
        )
        .unwrap();
        assert_eq!(s.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(s.api_keys, vec!["a", "b", "c", "d"]);
        assert_eq!(s.model_name, "x");
        assert_eq!(s.threads, Some(3));
        assert_eq!((s.limits.max_batch, s.limits.queue), (4, 9));
    }

    #[test]
    fn no_keys_means_loopback_only() {
        let o = Overrides {
            http_addr: Some("0.0.0.0:8080".into()),
            ..flags("m.gguf")
        };
        let e = resolve(FileConfig::default(), o.clone(), None).unwrap_err();
        assert!(
            e.to_string()
                .contains("refusing to listen on 0.0.0.0:8080 without API keys"),
            "{e}"
        );
        assert!(resolve(FileConfig::default(), o, Some("k")).is_ok());
        assert!(resolve(FileConfig::default(), flags("m.gguf"), None).is_ok());
        let v6 = Overrides {
            http_addr: Some("[::1]:8080".into()),
            ..flags("m.gguf")
        };
        assert!(resolve(FileConfig::default(), v6, None).is_ok());
    }

    #[test]
    fn grpc_defaults_to_7070_and_can_be_moved_or_off() {
        let s = resolve(FileConfig::default(), flags("m.gguf"), None).unwrap();
        assert_eq!(s.grpc_addr, Some("127.0.0.1:7070".parse().unwrap()));
        assert!(!s.grpc_explicit);
        let c = FileConfig::parse("[grpc]\nlisten = \"127.0.0.1:7171\"\n").unwrap();
        let s = resolve(c, flags("m.gguf"), None).unwrap();
        assert_eq!(s.grpc_addr, Some("127.0.0.1:7171".parse().unwrap()));
        assert!(s.grpc_explicit);
        let off = Overrides {
            grpc_listen: Some("off".into()),
            ..flags("m.gguf")
        };
        assert_eq!(
            resolve(FileConfig::default(), off, None).unwrap().grpc_addr,
            None
        );
        let open = Overrides {
            grpc_listen: Some("0.0.0.0:7070".into()),
            ..flags("m.gguf")
        };
        let e = resolve(FileConfig::default(), open.clone(), None).unwrap_err();
        assert!(e.to_string().contains("without API keys"), "{e}");
        assert!(resolve(FileConfig::default(), open, Some("k")).is_ok());
        assert!(FileConfig::parse("[grpc]\naddr = \"x\"\n").is_err());
    }

    #[test]
    fn mistakes_are_reported() {
        assert!(FileConfig::parse("[http]\nadress = \"x\"\n").is_err());
        assert!(FileConfig::parse("[limits]\nqueue = \"many\"\n").is_err());
        // No model is a mesh node's start; `serve` refuses it alone.
        let bare = resolve(FileConfig::default(), Overrides::default(), None).unwrap();
        assert_eq!((bare.model_path, bare.model_name.as_str()), (None, ""));
        assert!(!bare.http_explicit);
        let file = FileConfig::parse("[http]\naddr = \"127.0.0.1:9\"\n").unwrap();
        assert!(
            resolve(file, Overrides::default(), None)
                .unwrap()
                .http_explicit
        );
        let zero = Overrides {
            max_batch: Some(0),
            ..flags("m.gguf")
        };
        assert!(resolve(FileConfig::default(), zero, None).is_err());
    }

    #[test]
    fn kv_cache_dir_and_size_come_from_the_model_section() {
        let with = |extra: &str| {
            let f = FileConfig::parse(&format!("[model]\npath = \"m.gguf\"\n{extra}")).unwrap();
            resolve(f, Overrides::default(), None)
        };
        let s = with("kv_cache_dir = \"/var/kv\"\nkv_cache_size = \"1MiB\"\n").unwrap();
        assert_eq!(s.kv_cache, Some((PathBuf::from("/var/kv"), 1 << 20)));
        let s = with("kv_cache_dir = \"/var/kv\"\n").unwrap();
        assert_eq!(s.kv_cache.map(|k| k.1), Some(2 << 30));
        assert_eq!(with("").unwrap().kv_cache, None);
        assert!(with("kv_cache_dir = \"d\"\nkv_cache_size = \"lots\"\n").is_err());
    }
}
