//! Daemons on separate network stacks, as on separate machines: a LAN of
//! network namespaces on one bridge (made with `ip`, so these tests need
//! root, as CI runs). A node started with `--mesh` prints a one-line join
//! token, and `dwarfstar join TOKEN` in another namespace joins it with
//! no secret file and no address typed; and three daemons that are given
//! no peer at all find each other by mDNS and plan together. Either way
//! the split model answers as one machine does.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::common::*;
use serde_json::{json, Value};

use crate::mesh::{run_greedy, wait_line};

/// The API key the coordinators listen with (they listen off loopback).
const KEY: &str = "lan-test-key";

/// A bridge with `n` namespaces, each with `eth0` at `10.213.K.i` (i from
/// 1), and the host at `10.213.K.254` so the test can reach their HTTP
/// ports. Removed on drop, with every process left inside. The daemons'
/// logs (info level) go to files, printed when the test fails.
struct Lan {
    tag: String,
    subnet: String,
    n: usize,
    logs: PathBuf,
}

static LANS: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("this test needs iproute2's `ip` (and root): {e}"));
    assert!(
        out.status.success(),
        "`ip {}` failed (this test needs root, as CI runs): {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lan {
    fn new(n: usize) -> Lan {
        let k = LANS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("dsn{}{k}", pid % 100_000);
        let subnet = format!("10.213.{}", (pid * 4 + k) % 250);
        let logs = std::env::temp_dir().join(format!("dwarfstar-lan-logs-{tag}"));
        let _ = std::fs::remove_dir_all(&logs);
        std::fs::create_dir_all(&logs).unwrap();
        let lan = Lan {
            tag,
            subnet,
            n,
            logs,
        };
        let br = lan.bridge();
        ip(&["link", "add", &br, "type", "bridge"]);
        // Multicast (mDNS) floods the bridge instead of waiting for joins.
        let _ = Command::new("ip")
            .args(["link", "set", &br, "type", "bridge", "mcast_snooping", "0"])
            .output();
        ip(&["addr", "add", &format!("{}.254/24", lan.subnet), "dev", &br]);
        ip(&["link", "set", &br, "up"]);
        for i in 1..=n {
            let (ns, host_end) = (lan.ns(i), format!("h{}-{i}", lan.tag));
            let ns_end = format!("e{}-{i}", lan.tag);
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
            ]);
            ip(&["link", "set", &host_end, "master", &br, "up"]);
            ip(&["link", "set", &ns_end, "netns", &ns]);
            ip(&["-n", &ns, "link", "set", &ns_end, "name", "eth0"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", lan.addr(i)),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up", "multicast", "on"]);
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
        }
        lan
    }

    fn bridge(&self) -> String {
        format!("b{}", self.tag)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}-{i}", self.tag)
    }

    fn addr(&self, i: usize) -> String {
        format!("{}.{i}", self.subnet)
    }

    /// Takes namespace `i`'s link down or up: the machine drops off the LAN
    /// (its daemon keeps running) or comes back.
    fn link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.ns(i), "link", "set", "eth0", state]);
        if up {
            // Routes that went with the link come back with it, but the
            // multicast one was added by hand.
            let _ = Command::new("ip")
                .args([
                    "-n",
                    &self.ns(i),
                    "route",
                    "add",
                    "224.0.0.0/4",
                    "dev",
                    "eth0",
                ])
                .output();
        }
    }

    /// Where the daemons of namespace `i` log.
    fn log(&self, i: usize) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("node{i}.log")))
            .unwrap()
    }

    /// `dwarfstar ARGS` inside namespace `i`, stdout piped, stderr to the
    /// namespace's log.
    fn dwarfstar(&self, i: usize, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &self.ns(i),
            env!("CARGO_BIN_EXE_dwarfstar"),
        ])
        .args(args)
        .env(
            "DWARFSTAR_LOG",
            std::env::var("LAN_LOG").unwrap_or("info".into()),
        )
        .env_remove("DWARFSTAR_SECRET")
        .env_remove("DWARFSTAR_JOIN")
        .stdout(Stdio::piped())
        .stderr(self.log(i));
        c
    }

    /// The last lines each daemon logged, for a failed test's report.
    fn print_logs(&self) {
        for i in 1..=self.n {
            let text =
                std::fs::read_to_string(self.logs.join(format!("node{i}.log"))).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(80)..];
            eprintln!(
                "---- node {i} ({}), last {} log lines:",
                self.addr(i),
                tail.len()
            );
            for l in tail {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        for i in 1..=self.n {
            let ns = self.ns(i);
            if let Ok(o) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    // The shell's own kill: a fresh machine may lack procps.
                    let _ = Command::new("sh")
                        .args(["-c", &format!("kill -9 {pid}")])
                        .status();
                }
            }
            // Deleting the namespace deletes its veth pair; the host end
            // goes too (quietly, if it went already).
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
            let _ = Command::new("ip")
                .args(["link", "del", &format!("h{}-{i}", self.tag)])
                .output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .output();
        let _ = std::fs::remove_dir_all(&self.logs);
    }
}

/// A daemon in a namespace, killed on drop.
struct Node {
    child: Child,
    out: Option<BufReader<std::process::ChildStdout>>,
    _state: PathBuf,
}

impl Node {
    fn start(mut cmd: Command, state: PathBuf) -> Node {
        let mut child = cmd.spawn().expect("ip netns exec dwarfstar starts");
        let out = Some(BufReader::new(child.stdout.take().unwrap()));
        Node {
            child,
            out,
            _state: state,
        }
    }

    fn wait(&mut self, what: &str) -> String {
        let out = self.out.as_mut().expect("stdout is still read here");
        wait_line(&mut self.child, out, what)
    }

    /// Keeps draining stdout, so the daemon never blocks on a full pipe.
    fn drain(&mut self) {
        if let Some(out) = self.out.take() {
            std::thread::spawn(move || {
                use std::io::BufRead;
                for _ in out.lines() {}
            });
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._state);
    }
}

fn state_dir(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("dwarfstar-lan-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

const PROMPT: &str = "The three primary colors are";

/// A greedy completion from the API at `http`, with the key.
fn complete(http: &str, model: &str, n: usize) -> Value {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(300)))
        .build()
        .into();
    let body = json!({"model": model, "prompt": PROMPT, "max_tokens": n, "temperature": 0});
    let mut r = agent
        .post(format!("{http}/v1/completions"))
        .header("Content-Type", "application/json")
        .header("Authorization", format!("Bearer {KEY}"))
        .send(body.to_string())
        .unwrap();
    let text = r.body_mut().read_to_string().unwrap();
    assert_eq!(r.status().as_u16(), 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// The coordinator's greedy completion equals one machine's.
fn answers_as_one_machine(http: &str, model: &Path) {
    let n = 10;
    let want = run_greedy(model, PROMPT, n);
    let name = model.file_stem().unwrap().to_str().unwrap();
    let got = complete(http, name, n);
    let text = got["choices"][0]["text"].as_str().unwrap();
    assert!(
        !text.is_empty() && (want.starts_with(text) || text == want),
        "mesh: {text:?}\none machine: {want:?}"
    );
}

/// Namespace 1 starts a mesh (`serve --mesh`, no mDNS) that will split
/// `model` into two stages once a second node joins: its node, the join
/// token it printed, and its HTTP address.
fn start_mesh(lan: &Lan, tag: &str, model: &Path) -> (Node, String, String) {
    let http = format!("{}:8080", lan.addr(1));
    let state = state_dir(tag);
    let args = [
        "serve",
        "--mesh",
        "--no-mdns",
        "--threads",
        "1",
        "--mesh-nodes",
        "2",
        "--stages",
        "2",
        "--http-addr",
        &http,
        "--api-key",
        KEY,
        "--model",
        model.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let mut first = Node::start(lan.dwarfstar(1, &args), state);
    let line = first.wait("dwarfstar join ");
    let token = line
        .split_whitespace()
        .find(|w| w.starts_with("dsj1."))
        .unwrap_or_else(|| panic!("no token in: {line}"))
        .to_string();
    (first, token, http)
}

/// A second node has joined `first`'s mesh: it plans two stages and its
/// API answers as one machine does.
fn two_stages_answer(first: &mut Node, http: &str, model: &Path) {
    let plan = first.wait("dwarfstar mesh: plan");
    assert_eq!(
        plan.split(';').next().unwrap().matches(" on ").count(),
        2,
        "{plan}"
    );
    first.wait("listening on http://");
    first.drain();
    answers_as_one_machine(&format!("http://{http}"), model);
}

/// The first machine runs `serve --mesh`, the second pastes the token it
/// printed into `dwarfstar join`: no secret file, no address typed, no
/// mDNS. The two plan two pipeline stages and serve the model.
#[test]
fn a_join_token_joins_a_second_machine() {
    let lan = Lan::new(2);
    let model = model_path(SMOLLM2);
    let models = model.parent().unwrap().to_str().unwrap().to_string();
    let (mut first, token, http) = start_mesh(&lan, "join1", &model);
    let s2 = state_dir("join2");
    let mut second = Node::start(
        lan.dwarfstar(
            2,
            &[
                "join",
                &token,
                "--no-mdns",
                "--threads",
                "1",
                "--models-dir",
                &models,
                "--state-dir",
                s2.to_str().unwrap(),
            ],
        ),
        s2,
    );
    second.wait("mesh worker ready");
    second.drain();
    two_stages_answer(&mut first, &http, &model);
    // A damaged token is refused with the reason, before any network.
    let out = lan
        .dwarfstar(2, &["join", &token[..token.len() - 3], "--no-mdns"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cut short"), "{err}");
}

/// Three daemons that share a secret and are given no peer address find
/// each other by mDNS alone, and the coordinator plans over all three. The
/// third machine is off the LAN while the coordinator starts (its first
/// mDNS queries, which stop at the first answer, reach only the second):
/// once it is back it is found by the queries every node keeps sending.
#[test]
fn three_machines_find_each_other_by_mdns_alone() {
    let lan = Lan::new(3);
    let model = model_path(SMOLLM2);
    let models = model.parent().unwrap().to_str().unwrap().to_string();
    let secret_dir = state_dir("mdns-secret");
    let secret = secret_dir.join("secret");
    std::fs::write(&secret, "mdns-team-secret-0123456789").unwrap();
    let secret = secret.to_str().unwrap().to_string();
    let mut workers = Vec::new();
    for i in 2..=3 {
        let s = state_dir(&format!("mdns{i}"));
        let mut w = Node::start(
            lan.dwarfstar(
                i,
                &[
                    "serve",
                    "--secret-file",
                    &secret,
                    "--threads",
                    "1",
                    "--models-dir",
                    &models,
                    "--state-dir",
                    s.to_str().unwrap(),
                ],
            ),
            s,
        );
        w.wait("mesh worker ready");
        w.drain();
        workers.push(w);
    }
    lan.link(3, false);
    let http = format!("{}:8080", lan.addr(1));
    let s1 = state_dir("mdns1");
    let mut coord = Node::start(
        lan.dwarfstar(
            1,
            &[
                "serve",
                "--secret-file",
                &secret,
                "--threads",
                "1",
                "--mesh-nodes",
                "3",
                "--stages",
                "3",
                "--mesh-wait",
                "60",
                "--http-addr",
                &http,
                "--api-key",
                KEY,
                "--model",
                model.to_str().unwrap(),
                "--state-dir",
                s1.to_str().unwrap(),
            ],
        ),
        s1,
    );
    std::thread::sleep(std::time::Duration::from_secs(4));
    lan.link(3, true);
    let plan = coord.wait("dwarfstar mesh: plan");
    assert_eq!(
        plan.split(';').next().unwrap().matches(" on ").count(),
        3,
        "{plan}"
    );
    coord.wait("listening on http://");
    coord.drain();
    answers_as_one_machine(&format!("http://{http}"), &model);
    drop(workers);
    let _ = std::fs::remove_dir_all(&secret_dir);
}

/// `deploy/install.sh --join TOKEN` writes the token where only its owner
/// reads it and a unit whose command line, run as systemd would run it
/// (the credential and state folders filled in), joins the mesh.
#[test]
fn the_installed_unit_joins_with_the_token() {
    use std::os::unix::fs::PermissionsExt;
    let lan = Lan::new(2);
    let model = model_path(SMOLLM2);
    let models = model.parent().unwrap().to_str().unwrap().to_string();
    let (mut first, token, http) = start_mesh(&lan, "unit1", &model);
    let root = state_dir("unit-root");
    let install = |args: &[&str]| {
        Command::new(repo_root().join("deploy/install.sh"))
            .arg("--root")
            .arg(&root)
            .args(["--bin", env!("CARGO_BIN_EXE_dwarfstar")])
            .args(args)
            .output()
            .unwrap()
    };
    let refused = install(&["--join", "not-a-token"]);
    assert!(!refused.status.success());
    let out = install(&["--join", &token, "--models-dir", &models]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let etc = root.join("etc/dwarfstar");
    let kept = etc.join("join-token");
    let mode = std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the token file is readable by its owner only");
    assert_eq!(std::fs::read_to_string(&kept).unwrap().trim(), token);
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/dwarfstar.service")).unwrap();
    assert!(
        !unit.contains(&token),
        "the secret stays off the command line"
    );
    assert!(unit.contains("LoadCredential=join-token:/etc/dwarfstar/join-token"));
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    // What systemd does: the credential and state folders in the
    // environment, the command run from the installed path.
    let s2 = state_dir("unit2");
    let argv: Vec<String> = exec
        .split_whitespace()
        .map(|w| {
            w.replace("${CREDENTIALS_DIRECTORY}", etc.to_str().unwrap())
                .replace("${STATE_DIRECTORY}", s2.to_str().unwrap())
        })
        .collect();
    let installed = format!("{}{}", root.display(), argv[0]);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lan.ns(2), &installed])
        .args(&argv[1..])
        .args(["--threads", "1"])
        .env("DWARFSTAR_LOG", "info")
        .env_remove("DWARFSTAR_SECRET")
        .env_remove("DWARFSTAR_JOIN")
        .stdout(Stdio::piped())
        .stderr(lan.log(2));
    let mut second = Node::start(cmd, s2);
    second.wait("mesh worker ready");
    second.drain();
    two_stages_answer(&mut first, &http, &model);
    let _ = std::fs::remove_dir_all(&root);
}
