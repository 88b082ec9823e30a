//! Memory cgroups for tests, v1 or v2, and the test that the defaults work
//! in a container: `run`, `bench` and `serve` with default flags inside a
//! cgroup limit of half the default model's size plus 64 MiB.
//!
//! A test that needs a cgroup fails, naming the reason, where none can be
//! made (neither a writable v1 memory hierarchy nor a v2 hierarchy with the
//! memory controller): it never passes without running its check. CI runs
//! as root, where one of the two is writable.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use crate::common::*;

/// Which hierarchy a group lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// A memory cgroup, removed on drop.
#[derive(Debug)]
pub struct Cgroup {
    pub dir: PathBuf,
    pub version: Version,
}

/// The v2 mount that has (or can be given) the memory controller.
fn v2_root() -> Result<PathBuf, String> {
    let mut why = Vec::new();
    for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let root = Path::new(root);
        match std::fs::read_to_string(root.join("cgroup.controllers")) {
            Ok(c) if c.split_whitespace().any(|c| c == "memory") => return Ok(root.into()),
            Ok(c) => why.push(format!(
                "{}: no memory controller (controllers: {:?})",
                root.display(),
                c.trim()
            )),
            Err(e) => why.push(format!(
                "{}: {e}",
                root.join("cgroup.controllers").display()
            )),
        }
    }
    Err(why.join("; "))
}

impl Cgroup {
    /// A new group named `name`: v1 where `/sys/fs/cgroup/memory` is a
    /// writable memory hierarchy, else v2. Panics with the reason when
    /// neither can be made.
    pub fn create(name: &str) -> Cgroup {
        Cgroup::try_create(name).unwrap_or_else(|e| {
            panic!(
                "this test needs a memory cgroup and none can be made here ({e}); \
                 run it as root on a machine with cgroup v1 memory or cgroup v2"
            )
        })
    }

    pub fn try_create(name: &str) -> Result<Cgroup, String> {
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let v1_err = if v1.join("memory.limit_in_bytes").exists() {
            let dir = v1.join(name);
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    return Ok(Cgroup {
                        dir,
                        version: Version::V1,
                    })
                }
                Err(e) => format!("cannot create {}: {e}", dir.display()),
            }
        } else {
            format!("{} is not a cgroup v1 memory hierarchy", v1.display())
        };
        let root = v2_root().map_err(|e| format!("{v1_err}; cgroup v2: {e}"))?;
        // Children get the memory controller only if the parent hands it down.
        let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory");
        let dir = root.join(name);
        std::fs::create_dir(&dir)
            .map_err(|e| format!("{v1_err}; cannot create {}: {e}", dir.display()))?;
        let cg = Cgroup {
            dir,
            version: Version::V2,
        };
        if !cg.dir.join("memory.max").exists() {
            return Err(format!(
                "{v1_err}; {} has no memory.max (the memory controller is not enabled for it)",
                cg.dir.display()
            ));
        }
        Ok(cg)
    }

    fn write(&self, file: &str, v: &str) {
        std::fs::write(self.dir.join(file), v)
            .unwrap_or_else(|e| panic!("{}/{file}: {e}", self.dir.display()));
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    /// Caps the group's memory at `bytes`, swap included.
    pub fn limit(&self, bytes: u64) {
        match self.version {
            Version::V1 => {
                self.write("memory.limit_in_bytes", &bytes.to_string());
                // No swap either, where the kernel accounts it.
                if self.dir.join("memory.memsw.limit_in_bytes").exists() {
                    self.write("memory.memsw.limit_in_bytes", &bytes.to_string());
                }
            }
            Version::V2 => {
                self.write("memory.max", &bytes.to_string());
                if self.dir.join("memory.swap.max").exists() {
                    self.write("memory.swap.max", "0");
                }
            }
        }
    }

    /// The most the group has used, where the kernel reports it.
    pub fn peak(&self) -> Option<u64> {
        let file = match self.version {
            Version::V1 => "memory.max_usage_in_bytes",
            Version::V2 => "memory.peak",
        };
        self.read(file).trim().parse().ok()
    }

    /// Times the group ran into its limit (v1 `failcnt`, v2 `max` events).
    pub fn hits(&self) -> u64 {
        match self.version {
            Version::V1 => self.read("memory.failcnt").trim().parse().unwrap_or(0),
            Version::V2 => self
                .read("memory.events")
                .lines()
                .find_map(|l| l.strip_prefix("max ").and_then(|v| v.trim().parse().ok()))
                .unwrap_or(0),
        }
    }

    /// A command that runs `program args` inside the group.
    pub fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
                self.dir.display()
            ))
            .arg(program)
            .args(args);
        c
    }

    /// Runs `dwarfstar args` inside the group.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(Path::new(env!("CARGO_BIN_EXE_dwarfstar")), args)
            .env("DWARFSTAR_LOG", "error")
            .output()
            .expect("sh runs")
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty once its processes have exited; the kernel may take a moment.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
    })
}

/// A `dwarfstar serve` inside the group; killed on drop.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Posts a greedy completion and returns its text.
fn complete(base: &str, prompt: &str, n: usize) -> String {
    let body = serde_json::json!({
        "prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": true
    });
    let mut r = ureq::post(format!("{base}/v1/completions"))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .expect("completion");
    let v: serde_json::Value =
        serde_json::from_str(&r.body_mut().read_to_string().expect("body")).expect("json");
    v["choices"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text: {v}"))
        .to_string()
}

#[test]
fn defaults_work_in_a_cgroup_of_half_the_model_plus_64_mib() {
    let model = model_path(SMOLLM2);
    let m = model.to_str().expect("utf-8 path");
    let size = std::fs::metadata(&model).expect("model").len();
    let limit = size / 2 + (64 << 20);
    let prompt = "The capital of France is";
    let run_args = ["run", "-m", m, "-p", prompt, "-n", "16", "--temp", "0"];
    let run_args = [&run_args[..], &["--ignore-eos", "--json"]].concat();
    let free = json(&ok(dwarfstar(&run_args), "unlimited run"));

    let cg = Cgroup::create(&format!("dwarfstar-defaults-{}", std::process::id()));
    cg.limit(limit);

    // run: same tokens as without a limit, paged.
    let out = ok(cg.run(&run_args), "run in the cgroup");
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(
        note.contains("paged within a budget"),
        "the default budget did not follow the cgroup: {note}"
    );
    assert_eq!(json(&out)["tokens"], free["tokens"], "run's tokens");

    // bench with default flags.
    let out = ok(cg.run(&["bench", "-m", m, "--json"]), "bench in the cgroup");
    let b = json(&out);
    assert_eq!(b["paged"], true, "{b}");
    assert!(
        b["decode_tokens_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{b}"
    );

    // serve with default flags answers as the unlimited run does.
    let mut child = cg
        .command(
            Path::new(env!("CARGO_BIN_EXE_dwarfstar")),
            &["serve", "--model", m, "--http-addr", "127.0.0.1:0"],
        )
        .env("DWARFSTAR_LOG", "warn")
        .env_remove("DWARFSTAR_API_KEYS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("serve's first line");
    let Some(at) = line.find("http://") else {
        let mut err = String::new();
        let _ = child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err);
        let _ = child.kill();
        panic!("serve did not start in the cgroup: {line}{err}");
    };
    let served = Served(child);
    let base = line[at..]
        .split_whitespace()
        .next()
        .expect("url")
        .to_string();
    let text = complete(&base, prompt, 16);
    assert_eq!(text, free["text"].as_str().expect("text"), "serve's text");
    drop(served);
    eprintln!(
        "{:?} limit {limit} (file {size}); peak {:?}, limit hits {}",
        cg.version,
        cg.peak(),
        cg.hits()
    );
}
