//! Several `dwarfstar serve` daemons on loopback forming one mesh: they
//! admit each other by the join secret, plan, load their shares, and the
//! split model answers exactly as one machine does. A daemon with another
//! secret is never admitted.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

/// A running daemon, killed on drop.
pub(crate) struct Daemon {
    child: Child,
    /// Its mesh (libp2p) address, HOST:PORT.
    pub mesh: String,
    /// The HTTP base URL, for coordinators and workers given an address.
    pub http: Option<String>,
    /// The plan line a coordinator printed.
    pub plan: Option<String>,
    /// Its gRPC Control address, http://HOST:PORT.
    pub grpc: String,
    _state: TempDir,
}

impl Daemon {
    /// Its process id (to stop it with a signal).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "dwarfstar-mesh-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn secret_file(dir: &Path, secret: &str) -> PathBuf {
    let p = dir.join("secret");
    std::fs::write(&p, secret).unwrap();
    p
}

/// Reads stdout lines until one contains `what`; panics with stderr when
/// the daemon exits first.
pub(crate) fn wait_line(child: &mut Child, out: &mut BufReader<ChildStdout>, what: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            let mut err = String::new();
            let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
            let _ = child.kill();
            panic!("daemon ended before printing '{what}':\n{err}");
        }
        if line.contains(what) {
            return line;
        }
    }
}

/// Starts a daemon; `model` makes it the coordinator of that model.
fn start(
    tag: &str,
    secret: &str,
    models_dir: &Path,
    model: Option<&Path>,
    extra: &[&str],
) -> Daemon {
    start_in(None, tag, secret, models_dir, model, extra)
}

/// Starts a daemon, inside the v1 memory cgroup `cgroup` when given.
pub(crate) fn start_in(
    cgroup: Option<&Path>,
    tag: &str,
    secret: &str,
    models_dir: &Path,
    model: Option<&Path>,
    extra: &[&str],
) -> Daemon {
    start_logged(cgroup, tag, secret, models_dir, model, extra, None)
}

/// [`start_in`], logging at `log.0` into the file `log.1` when given
/// (else warnings only, to a pipe).
fn start_logged(
    cgroup: Option<&Path>,
    tag: &str,
    secret: &str,
    models_dir: &Path,
    model: Option<&Path>,
    extra: &[&str],
    log: Option<(&str, &Path)>,
) -> Daemon {
    let state = TempDir::new(tag);
    let sf = secret_file(&state.0, secret);
    if cgroup.is_some() {
        // Speeds as if measured before: the memory benchmark's 128 MiB of
        // buffers are not what a memory limit is about.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let bench = json!({
            "key": format!("{}-{cores}", env!("CARGO_PKG_VERSION")),
            "matmul_gflops": 20.0,
            "mem_bw_gbs": 10.0,
            "disk_read_gbs": 1.0,
        });
        std::fs::write(state.0.join("bench.json"), bench.to_string()).unwrap();
    }
    let bin = env!("CARGO_BIN_EXE_dwarfstar");
    let mut cmd = match cgroup {
        Some(cg) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!(
                    "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
                    cg.display()
                ))
                .arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.args([
        "serve",
        "--threads",
        "1",
        "--no-mdns",
        "--grpc-listen",
        "127.0.0.1:0",
    ])
    .args(["--mesh-addr", "127.0.0.1:0", "--quic-addr", "127.0.0.1:0"])
    .arg("--state-dir")
    .arg(&state.0)
    .arg("--secret-file")
    .arg(&sf)
    .arg("--models-dir")
    .arg(models_dir)
    .args(extra)
    .env("DWARFSTAR_LOG", log.map_or("warn", |l| l.0))
    .env_remove("DWARFSTAR_SECRET")
    .stdout(Stdio::piped())
    .stderr(match log {
        Some((_, file)) => Stdio::from(std::fs::File::create(file).unwrap()),
        None => Stdio::piped(),
    });
    if let Some(m) = model {
        cmd.arg("--model")
            .arg(m)
            .args(["--http-addr", "127.0.0.1:0"]);
    }
    let mut child = cmd.spawn().expect("dwarfstar serve starts");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let line = wait_line(&mut child, &mut out, "dwarfstar mesh: node");
    let mesh = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("/ip4/127.0.0.1/tcp/"))
        .map(|port| format!("127.0.0.1:{}", port.trim_end_matches(',')))
        .unwrap_or_else(|| panic!("no mesh address in: {line}"));
    let plan = model.map(|_| wait_line(&mut child, &mut out, "dwarfstar mesh: plan"));
    let ready = match model {
        Some(_) => wait_line(&mut child, &mut out, "listening on http://"),
        None => wait_line(&mut child, &mut out, "mesh worker ready"),
    };
    let http = ready.find("http://").map(|at| {
        ready[at..]
            .split_whitespace()
            .next()
            .unwrap()
            .trim_end_matches(';')
            .to_string()
    });
    let grpc = ready
        .split("gRPC control on ")
        .nth(1)
        .map(|a| format!("http://{}", a.trim()))
        .unwrap_or_else(|| panic!("no gRPC address in: {ready}"));
    // Keep draining stdout so the daemon never blocks on a full pipe.
    std::thread::spawn(move || for _ in out.lines() {});
    Daemon {
        child,
        mesh,
        http,
        plan,
        grpc,
        _state: state,
    }
}

pub(crate) fn complete(base: &str, model: &str, prompt: &str, n: usize) -> Value {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into();
    let body = json!({"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0});
    let mut r = agent
        .post(format!("{base}/v1/completions"))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .unwrap();
    let text = r.body_mut().read_to_string().unwrap();
    assert_eq!(r.status().as_u16(), 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

pub(crate) fn run_greedy(model: &Path, prompt: &str, n: usize) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dwarfstar"))
        .args([
            "run",
            "--temp",
            "0",
            "--json",
            "--threads",
            "1",
            "--ignore-eos",
        ])
        .arg("--model")
        .arg(model)
        .args(["-n", &n.to_string(), "--prompt", prompt])
        .env("DWARFSTAR_LOG", "error")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["text"].as_str().unwrap().to_string()
}

/// Pipeline stages in a printed plan line ("layers 0..10 on X, 10..30 on Y; ...").
fn stages(plan: &str) -> usize {
    plan.split(';').next().unwrap().matches(" on ").count()
}

const PROMPT: &str = "The three primary colors are";
const LONG_PROMPT: &str = "You are a helpful assistant for a small team. Answer briefly and \
                           plainly. Question: what are the three primary colors? Answer:";

/// `n_nodes` daemons, the coordinator dialing the others, `extra` flags on
/// the coordinator; the split model's greedy text equals one machine's.
fn mesh_matches_one_machine(model: &Path, n_nodes: usize, extra: &[&str]) -> String {
    mesh_matches_one_machine_and(model, n_nodes, extra, |_| {})
}

/// [`mesh_matches_one_machine`], then `check` on the running coordinator.
fn mesh_matches_one_machine_and(
    model: &Path,
    n_nodes: usize,
    extra: &[&str],
    check: impl FnOnce(&Daemon),
) -> String {
    let dir = model.parent().unwrap();
    let workers: Vec<Daemon> = (1..n_nodes)
        .map(|i| start(&format!("w{i}"), "team-secret", dir, None, &[]))
        .collect();
    let mut args: Vec<String> = vec!["--mesh-nodes".into(), n_nodes.to_string()];
    for w in &workers {
        args.push("--peer".into());
        args.push(w.mesh.clone());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let coord = start("c", "team-secret", dir, Some(model), &args);
    let n = 12;
    let want = run_greedy(model, PROMPT, n);
    let name = model.file_stem().unwrap().to_str().unwrap();
    let got = complete(coord.http.as_ref().unwrap(), name, PROMPT, n);
    let text = got["choices"][0]["text"].as_str().unwrap();
    assert!(
        want.starts_with(text) || text == want,
        "mesh: {text:?}\none machine: {want:?}"
    );
    assert!(!text.is_empty());
    // A long prompt twice: the second time its start comes from the prefix
    // cache, forked on every stage, and the continuation is the same.
    let first = complete(coord.http.as_ref().unwrap(), name, LONG_PROMPT, 6);
    let again = complete(coord.http.as_ref().unwrap(), name, LONG_PROMPT, 6);
    assert_eq!(first["choices"][0]["text"], again["choices"][0]["text"]);
    let cached = |v: &Value| v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64();
    assert_eq!(cached(&first), Some(0), "{first}");
    assert!(cached(&again) >= Some(16), "{again}");
    check_mesh_status(&coord, &workers, n_nodes, model);
    // Control's Generate (`meshctl generate`) on the coordinator runs the
    // plan too: its frame count grows, and the text is one machine's.
    let grpc = coord.grpc.as_str();
    let before = frames_sent(grpc);
    let done = generate_json(grpc, PROMPT, n as u32);
    assert_eq!(done["text"].as_str(), Some(want.as_str()), "{done}");
    assert!(
        frames_sent(grpc) > before,
        "Generate did not go through the mesh"
    );
    check(&coord);
    coord.plan.clone().unwrap()
}

/// The top logits of every greedy step through the mesh (Control's
/// Generate) are within `tol` of one machine's (`dwarfstar run --logits`),
/// token for token.
fn top_logits_match_one_machine(coord: &Daemon, model: &Path, tol: f64) {
    let (n, k) = (8, 5);
    let out = Command::new(env!("CARGO_BIN_EXE_dwarfstar"))
        .args(["run", "--temp", "0", "--json", "--threads", "1"])
        .args(["--ignore-eos", "--logits", &k.to_string()])
        .arg("--model")
        .arg(model)
        .args(["-n", &n.to_string(), "--prompt", PROMPT])
        .env("DWARFSTAR_LOG", "error")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: Value = serde_json::from_slice(&out.stdout).unwrap();
    let req = dwarfstar_proto::v1::GenerateRequest {
        prompt: Some(PROMPT.into()),
        n: Some(n),
        temp: Some(0.0),
        ignore_eos: true,
        logits: k,
        ..Default::default()
    };
    let got = generate_with(&coord.grpc, req);
    assert_eq!(got["tokens"], want["tokens"], "{got}\n{want}");
    let steps = |v: &Value| v["top_logits"].as_array().cloned().unwrap_or_default();
    let (g, w) = (steps(&got), steps(&want));
    assert_eq!(g.len(), n as usize, "{got}");
    assert_eq!(g.len(), w.len());
    let mut worst = 0f64;
    for (gs, ws) in g.iter().zip(&w) {
        for (a, b) in gs.as_array().unwrap().iter().zip(ws.as_array().unwrap()) {
            assert_eq!(a[0], b[0], "top ids differ: {gs} vs {ws}");
            worst = worst.max((a[1].as_f64().unwrap() - b[1].as_f64().unwrap()).abs());
        }
    }
    eprintln!("top-{k} logits over {n} steps: max |Δ| {worst:.3e}");
    assert!(worst <= tol, "max |Δ| {worst} > {tol}");
}

/// Request frames the daemon at `grpc` has sent to its peers.
fn frames_sent(grpc: &str) -> u64 {
    let r = status(grpc);
    let me = r
        .nodes
        .iter()
        .find(|n| n.local)
        .expect("the answering node");
    me.traffic.as_ref().map_or(0, |t| t.frames_sent)
}

/// A greedy Control Generate of `n` tokens: its Done JSON.
fn generate_json(grpc: &str, prompt: &str, n: u32) -> Value {
    let req = dwarfstar_proto::v1::GenerateRequest {
        prompt: Some(prompt.into()),
        n: Some(n),
        temp: Some(0.0),
        ignore_eos: true,
        ..Default::default()
    };
    generate_with(grpc, req)
}

/// Control's Generate to the end: the Done event's JSON.
fn generate_with(grpc: &str, req: dwarfstar_proto::v1::GenerateRequest) -> Value {
    use dwarfstar_proto::v1::generate_event::Event;
    control(grpc, async |c| {
        let mut events = c.generate(req).await?.into_inner();
        while let Some(ev) = events.message().await? {
            if let Some(Event::Done(d)) = ev.event {
                let v: Value = serde_json::from_str(&d.json).unwrap();
                return Ok(tonic::Response::new(v));
            }
        }
        Err(tonic::Status::data_loss("Generate ended without Done"))
    })
}

/// One Control call on a daemon, on a runtime of its own.
pub(crate) fn control<T>(
    grpc: &str,
    call: impl AsyncFnOnce(
        &mut dwarfstar_proto::v1::control_client::ControlClient<tonic::transport::Channel>,
    ) -> Result<tonic::Response<T>, tonic::Status>,
) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = dwarfstar_proto::v1::control_client::ControlClient::connect(grpc.to_string())
            .await
            .unwrap_or_else(|e| panic!("gRPC {grpc}: {e}"));
        call(&mut c).await.unwrap().into_inner()
    })
}

pub(crate) fn status(grpc: &str) -> dwarfstar_proto::v1::StatusReply {
    control(grpc, async |c| {
        c.status(dwarfstar_proto::v1::StatusRequest {}).await
    })
}

/// Every node's status, from the coordinator, from each worker (it knows
/// the plan it accepted) and on the chat page's status: all of them, each
/// ready with its share, the shares covering every layer.
/// `meshctl` against the daemon at `grpc`: stdout, or the error.
pub(crate) fn meshctl(grpc: &str, args: &[&str]) -> Result<String, String> {
    let mut out = Vec::new();
    let head = ["meshctl", "--addr", grpc];
    meshctl::run_args(head.iter().chain(args), &mut out).map_err(|e| e.to_string())?;
    Ok(String::from_utf8(out).unwrap())
}

/// `meshctl cluster status --json` answers what `meshctl status --json`
/// does (all but the memory in use, which moves between two calls), and
/// `cluster peers` / `cluster plan` likewise.
fn meshctl_cluster_status_is_status(grpc: &str) {
    let json = |args: &[&str]| -> Value {
        let mut v: Value = serde_json::from_str(&meshctl(grpc, args).unwrap()).unwrap();
        for n in v["nodes"].as_array_mut().into_iter().flatten() {
            n.as_object_mut().unwrap().remove("mem_used");
        }
        v
    };
    let short = json(&["--json", "status"]);
    assert_eq!(json(&["--json", "cluster", "status"]), short);
    assert!(!short["nodes"].as_array().unwrap().is_empty(), "{short}");
    let plan = json(&["--json", "plan"]);
    assert_eq!(json(&["--json", "cluster", "plan"]), plan);
    let text = meshctl(grpc, &["cluster", "status"]).unwrap();
    assert!(text.contains("NODE") && text.contains("ROLE"), "{text}");
    let peers = meshctl(grpc, &["cluster", "peers"]).unwrap();
    assert_eq!(peers, meshctl(grpc, &["peers"]).unwrap());
    let err = meshctl(grpc, &["cluster", "frobnicate"]).unwrap_err();
    assert!(err.contains("frobnicate"), "{err}");
}

/// The coordinator's `/metrics` counts its calls to the nodes it talks to
/// (the next stage, the expert holders; a later stage is called by the one
/// before it): frames and bytes each way, round trips and their time.
fn peer_metrics_name_each_peer(http: &str, r: &dwarfstar_proto::v1::StatusReply) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let text = agent
        .get(format!("{http}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let value = |name: &str, peer: &str| -> f64 {
        let key = format!("{name}{{peer=\"{peer}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .unwrap_or_else(|| panic!("no {key} in /metrics:\n{text}"))
            .parse()
            .unwrap()
    };
    let called: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("dwarfstar_peer_round_trips_total{peer=\""))
        .filter_map(|l| l.split('"').next())
        .collect();
    assert!(!called.is_empty(), "no peer counted:\n{text}");
    for id in &called {
        assert!(
            r.nodes.iter().any(|n| !n.local && n.id == *id),
            "{id} is not a peer of the plan"
        );
    }
    for n in r.nodes.iter().filter(|n| called.contains(&n.id.as_str())) {
        let trips = value("dwarfstar_peer_round_trips_total", &n.id);
        assert!(trips > 0.0, "{}: {trips}", n.id);
        assert!(value("dwarfstar_peer_bytes_sent_total", &n.id) > 0.0);
        assert!(value("dwarfstar_peer_bytes_received_total", &n.id) > 0.0);
        let secs = value("dwarfstar_peer_round_trip_seconds_total", &n.id);
        assert!(secs > 0.0 && secs / trips < 5.0, "{}: {secs} s", n.id);
    }
    assert!(
        text.contains("dwarfstar_weights_io_stall_seconds_total "),
        "{text}"
    );
}

fn check_mesh_status(coord: &Daemon, workers: &[Daemon], n_nodes: usize, model: &Path) {
    use dwarfstar_proto::v1::{NodeState, Role};
    let n_layer = {
        let f = dwarfstar_gguf::GgufFile::open(model).unwrap();
        let m = f.metadata();
        let arch = m.get_str("general.architecture").unwrap().to_string();
        // An MTP block (llama.cpp's layout) counts as a block but is no
        // stage's layer: the coordinator runs it to draft.
        let nextn = m
            .get_u32(&format!("{arch}.nextn_predict_layers"))
            .unwrap_or(0);
        m.get_u32(&format!("{arch}.block_count")).unwrap() - nextn
    };
    let check = |r: &dwarfstar_proto::v1::StatusReply, who: &str| {
        assert_eq!(r.nodes.len(), n_nodes, "{who}: {r:#?}");
        assert!(
            r.nodes[0].local && r.nodes[0].id == r.node_id,
            "{who}: {r:#?}"
        );
        assert!(r.plan_version > 0 && !r.model.is_empty(), "{who}: {r:#?}");
        let mut covered = vec![false; n_layer as usize];
        for n in &r.nodes {
            assert_eq!(n.state, NodeState::Ready as i32, "{who}: {n:#?}");
            assert_eq!(n.plan_version, r.plan_version, "{who}: {n:#?}");
            let a = n.assignment.clone().unwrap_or_default();
            assert!(
                !a.stages.is_empty() || !a.experts.is_empty(),
                "{who}: a node without a share: {n:#?}"
            );
            for s in &a.stages {
                assert_eq!(s.node, n.id);
                for l in s.layer_start..s.layer_end {
                    assert!(!covered[l as usize], "{who}: layer {l} twice");
                    covered[l as usize] = true;
                }
            }
            assert!(n.mem_used > 0 && n.mem_budget > 0, "{who}: {n:#?}");
            let addr = n.addresses.clone().unwrap_or_default();
            assert!(
                !addr.quic.is_empty() && !addr.grpc.is_empty(),
                "{who}: {n:#?}"
            );
            assert!(!n.roles.is_empty(), "{who}: {n:#?}");
        }
        assert!(
            covered.iter().all(|&c| c),
            "{who}: layers not covered: {r:#?}"
        );
        let coordinators: Vec<_> = r
            .nodes
            .iter()
            .filter(|n| n.roles.contains(&(Role::Coordinator as i32)))
            .collect();
        assert_eq!(coordinators.len(), 1, "{who}: {r:#?}");
    };

    let r = status(&coord.grpc);
    check(&r, "coordinator");
    assert!(r.nodes[0].roles.contains(&(Role::Coordinator as i32)));
    meshctl_cluster_status_is_status(&coord.grpc);
    if let Some(http) = &coord.http {
        peer_metrics_name_each_peer(http, &r);
    }
    // The generation above crossed the data plane.
    let t = r.nodes[0].traffic.unwrap_or_default();
    assert!(t.frames_sent > 0 && t.bytes_sent > 0, "{t:?}");
    assert!(
        t.answers_received > 0 && t.answer_bytes_received > 0,
        "{t:?}"
    );

    for (i, w) in workers.iter().enumerate() {
        // The coordinator tells its members the plan is in force just after
        // it prints the plan: give that message a moment.
        let mut tries = 0;
        let r = loop {
            let r = status(&w.grpc);
            if r.nodes.iter().all(|n| n.state == NodeState::Ready as i32) || tries == 50 {
                break r;
            }
            tries += 1;
            std::thread::sleep(Duration::from_millis(100));
        };
        check(&r, &format!("worker {i}"));
        assert!(!r.nodes[0].roles.contains(&(Role::Coordinator as i32)));
        let t = r.nodes[0].traffic.unwrap_or_default();
        assert!(
            t.frames_served > 0 && t.bytes_served_in > 0,
            "worker {i}: {t:?}"
        );
    }

    // The same mesh through peers and plan.
    let peers = control(&coord.grpc, async |c| {
        c.peers(dwarfstar_proto::v1::PeersRequest {}).await
    });
    assert_eq!(peers.peers.len(), n_nodes, "{peers:#?}");
    assert!(peers
        .peers
        .iter()
        .all(|p| p.connected && p.capabilities.as_ref().is_some_and(|c| c.mem_budget > 0)));
    let plan = control(&coord.grpc, async |c| {
        c.plan(dwarfstar_proto::v1::PlanRequest::default()).await
    });
    let plan = plan.plan.expect("a plan in force");
    assert_eq!(plan.version, r.plan_version);
    assert_eq!(plan.n_layer, n_layer);

    // The chat page's status shows the same nodes.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let text = agent
        .get(format!("{}/v1/status", coord.http.as_ref().unwrap()))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let page: Value = serde_json::from_str(&text).unwrap();
    let nodes = page["mesh"]["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"));
    assert_eq!(nodes.len(), n_nodes, "{page}");
    assert!(nodes.iter().all(|n| n["state"] == "ready"), "{page}");
    assert_eq!(page["mesh"]["plan_version"], r.plan_version, "{page}");
    let layers: u64 = nodes
        .iter()
        .flat_map(|n| n["layers"].as_array().unwrap().clone())
        .map(|l| l["end"].as_u64().unwrap() - l["start"].as_u64().unwrap())
        .sum();
    assert_eq!(layers, n_layer as u64, "{page}");
}

/// A request's id travels with its sequence in the step frames: the client's
/// `x-request-id` comes back in the answer's header and shows in the
/// worker stage's log, and the coordinator logs it too.
#[test]
fn a_request_id_reaches_the_worker_stage_log() {
    let model = model_path("SmolLM2-135M-Instruct-Q4_1.gguf");
    let dir = model.parent().unwrap();
    let logs = TempDir::new("rid-logs");
    let (wlog, clog) = (logs.0.join("worker.log"), logs.0.join("coord.log"));
    let w = start_logged(
        None,
        "rid-w",
        "team-secret",
        dir,
        None,
        &[],
        Some(("info", &wlog)),
    );
    let args = ["--mesh-nodes", "2", "--stages", "2", "--peer", &w.mesh];
    let c = start_logged(
        None,
        "rid-c",
        "team-secret",
        dir,
        Some(&model),
        &args,
        Some(("info", &clog)),
    );
    assert!(stages(c.plan.as_ref().unwrap()) >= 2, "{:?}", c.plan);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into();
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4});
    let mut r = agent
        .post(format!("{}/v1/chat/completions", c.http.as_ref().unwrap()))
        .header("Content-Type", "application/json")
        .header("x-request-id", "abc-123")
        .send(body.to_string())
        .unwrap();
    let text = r.body_mut().read_to_string().unwrap();
    assert_eq!(r.status().as_u16(), 200, "{text}");
    let echoed = r
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok());
    assert_eq!(echoed, Some("abc-123"));
    let logged = |f: &Path| {
        let t = std::fs::read_to_string(f).unwrap_or_default();
        t.contains("request abc-123: seq")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !(logged(&wlog) && logged(&clog)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        logged(&wlog),
        "worker log: {}",
        std::fs::read_to_string(&wlog).unwrap_or_default()
    );
    assert!(logged(&clog), "the coordinator did not log the request");
    // Without a header, the response's id is the request's.
    let mut r = agent
        .post(format!("{}/v1/chat/completions", c.http.as_ref().unwrap()))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .unwrap();
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let id = r
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok());
    assert_eq!(id, v["id"].as_str());
}

#[test]
fn smollm2_in_two_pipeline_stages_matches_one_machine() {
    let plan = mesh_matches_one_machine(&model_path(SMOLLM2), 2, &["--stages", "2"]);
    assert_eq!(stages(&plan), 2, "{plan}");
}

#[test]
fn smollm2_in_three_pipeline_stages_matches_one_machine() {
    let plan = mesh_matches_one_machine(&model_path(SMOLLM2), 3, &["--stages", "3"]);
    assert_eq!(stages(&plan), 3, "{plan}");
}

/// Speculative decoding through the pipeline: the coordinator drafts with
/// a dwarf-q2 SmolLM2, the stages verify each step's drafted positions in
/// one pass, and the text is still one machine's.
#[test]
fn smollm2_with_a_draft_model_in_two_pipeline_stages_matches_one_machine() {
    let draft = crate::spec::draft_of(SMOLLM2);
    let args = [
        "--stages",
        "2",
        "--draft-model",
        draft.to_str().unwrap(),
        "--spec-always",
    ];
    let plan = mesh_matches_one_machine_and(&model_path(SMOLLM2), 2, &args, |coord| {
        let (drafted, accepted) = spec_counts(coord);
        eprintln!("2-stage mesh with a draft: drafted {drafted}, accepted {accepted}");
        assert!(drafted > 0.0 && accepted > 0.0);
    });
    assert_eq!(stages(&plan), 2, "{plan}");
}

/// The coordinator's drafted and accepted token counters.
fn spec_counts(coord: &Daemon) -> (f64, f64) {
    let base = coord.http.as_ref().unwrap();
    let text = ureq::get(format!("{base}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let drafted = crate::api::metric(&text, "dwarfstar_spec_drafted_tokens_total");
    let accepted = crate::api::metric(&text, "dwarfstar_spec_accepted_tokens_total");
    (drafted, accepted)
}

/// DeepSeek V4's MTP block drafts through the pipeline: the coordinator
/// runs the block on the final hidden rows the stages send back, the stages
/// verify each step's drafts in one pass, and the text is one machine's.
#[test]
fn deepseek_v4_with_mtp_in_two_pipeline_stages_matches_one_machine() {
    let plan = v4_mtp_mesh("v4-mtp", &["--stages", "2"]);
    assert_eq!(stages(&plan), 2, "{plan}");
}

/// The same with the experts spread: each verify pass's one round trip
/// per MoE layer carries every drafted position.
#[test]
fn deepseek_v4_with_mtp_and_experts_on_two_daemons_matches_one_machine() {
    let plan = v4_mtp_mesh("v4-mtp-ep", &["--stages", "1", "--expert-parallel"]);
    assert!(plan.contains("experts on 2 node(s)"), "{plan}");
}

/// The tiny V4 with an MTP block served by two daemons split by `split`,
/// drafting 3 tokens every step: one machine's text, and drafts made.
fn v4_mtp_mesh(tag: &str, split: &[&str]) -> String {
    let dir = TempDir::new(tag);
    let m = dir.0.join("tiny-dsv4-mtp.gguf");
    let made = crate::deepseek4::with_mtp_tagged(tag);
    std::fs::copy(&made, &m).unwrap();
    let _ = std::fs::remove_file(&made);
    let mut args = split.to_vec();
    args.extend(["--spec-tokens", "3", "--spec-always"]);
    mesh_matches_one_machine_and(&m, 2, &args, |coord| {
        let (drafted, accepted) = spec_counts(coord);
        eprintln!("{tag}: V4 mesh with MTP drafted {drafted}, accepted {accepted}");
        assert!(
            drafted > 0.0,
            "the MTP block drafted nothing through the mesh"
        );
    })
}

#[test]
fn deepseek_v3_with_experts_on_two_daemons_matches_one_machine() {
    let m = fixtures().join("tiny-deepseek-v3/tiny-dsv3-q8_0.gguf");
    let plan = mesh_matches_one_machine(&m, 2, &["--stages", "1", "--expert-parallel"]);
    assert!(plan.contains("experts on 2 node(s)"), "{plan}");
}

fn tiny_v4() -> PathBuf {
    fixtures().join("tiny-deepseek-v4/tiny-dsv4-Q8_0.gguf")
}

/// DeepSeek V4 over two daemons' pipeline stages: the hyper-connection
/// streams and token ids travel, the prefix cache's fork replays on every
/// stage, and the text is one machine's.
#[test]
fn deepseek_v4_in_two_pipeline_stages_matches_one_machine() {
    let m = tiny_v4();
    let check = |c: &Daemon| top_logits_match_one_machine(c, &m, 1e-5);
    let plan = mesh_matches_one_machine_and(&m, 2, &["--stages", "2"], check);
    assert_eq!(stages(&plan), 2, "{plan}");
}

#[test]
fn deepseek_v4_with_experts_on_two_daemons_matches_one_machine() {
    let m = tiny_v4();
    let check = |c: &Daemon| top_logits_match_one_machine(c, &m, 1e-5);
    let extra = ["--stages", "1", "--expert-parallel"];
    let plan = mesh_matches_one_machine_and(&m, 2, &extra, check);
    assert!(plan.contains("experts on 2 node(s)"), "{plan}");
}

/// A V4 worker with an empty models folder fetches its stage's layers.
#[test]
fn a_deepseek_v4_worker_without_the_model_fetches_only_its_share() {
    stage_share_is_fetched(&tiny_v4());
}

#[test]
fn a_daemon_with_the_wrong_secret_is_not_admitted() {
    let model = model_path(SMOLLM2);
    let dir = model.parent().unwrap();
    let stranger = start("x", "some-other-secret", dir, None, &[]);
    let state = TempDir::new("c-wrong");
    let sf = secret_file(&state.0, "team-secret");
    let out = Command::new(env!("CARGO_BIN_EXE_dwarfstar"))
        .args([
            "serve",
            "--threads",
            "1",
            "--no-mdns",
            "--grpc-listen",
            "off",
        ])
        .args(["--mesh-addr", "127.0.0.1:0", "--quic-addr", "127.0.0.1:0"])
        .args([
            "--http-addr",
            "127.0.0.1:0",
            "--mesh-nodes",
            "2",
            "--mesh-wait",
            "4",
        ])
        .arg("--state-dir")
        .arg(&state.0)
        .arg("--secret-file")
        .arg(&sf)
        .arg("--model")
        .arg(&model)
        .args(["--peer", &stranger.mesh])
        .env("DWARFSTAR_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success(), "planned with a stranger");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 of 2 nodes joined"), "{err}");
}

/// Starts a worker whose models folder is empty and a coordinator of `model`
/// (with `extra` flags) dialing it; checks the worker's partial file and
/// that the split model answers as one machine does. Returns the plan line,
/// the bytes the worker fetched and the file's size.
fn worker_fetches_its_share(
    model: &Path,
    extra: &[&str],
    worker_extra: &[&str],
) -> (String, u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let dir = model.parent().unwrap();
    let name = model.file_name().unwrap().to_str().unwrap();
    let empty = TempDir::new("empty-models");
    let worker = start("wf", "team-secret", &empty.0, None, worker_extra);
    let t0 = std::time::Instant::now();
    let mut args = vec!["--mesh-nodes", "2", "--peer", &worker.mesh];
    args.extend(extra);
    let coord = start("cf", "team-secret", dir, Some(model), &args);
    let loaded_s = t0.elapsed().as_secs_f64();
    let plan = coord.plan.clone().unwrap();

    let size = std::fs::metadata(model).unwrap().len();
    let shards = empty.0.join(".shards");
    let side = std::fs::read(shards.join(format!("{name}.ranges.json"))).unwrap();
    let side: Value = serde_json::from_slice(&side).unwrap();
    let fetched = side["bytes"].as_u64().unwrap();
    let part = std::fs::metadata(shards.join(name)).unwrap();
    eprintln!(
        "{name}: fetched {fetched} of {size} bytes ({:.0}%), {} bytes on disk; plan to ready in {loaded_s:.2} s",
        100.0 * fetched as f64 / size as f64,
        part.blocks() * 512
    );
    assert!(fetched > 0 && fetched < size, "{fetched} of {size}");
    assert_eq!(part.len(), size, "the partial file keeps the layout");
    assert!(part.blocks() * 512 < size, "the partial file is sparse");
    assert!(
        !empty.0.join(name).exists(),
        "a partial file is never a model of the folder"
    );

    let n = 12;
    let want = run_greedy(model, PROMPT, n);
    let stem = model.file_stem().unwrap().to_str().unwrap();
    let got = complete(coord.http.as_ref().unwrap(), stem, PROMPT, n);
    let text = got["choices"][0]["text"].as_str().unwrap();
    assert!(!text.is_empty());
    assert!(
        want.starts_with(text) || text == want,
        "mesh: {text:?}\none machine: {want:?}"
    );
    (plan, fetched, size)
}

/// A worker whose models folder is empty fetches, from the coordinator, only
/// the pieces of the file its stage reads (BLAKE3-checked, into a sparse file
/// under `.shards/`), and the split model still answers as one machine does.
#[test]
fn a_worker_without_the_model_fetches_only_its_share() {
    stage_share_is_fetched(&model_path(SMOLLM2));
}

/// A 2-stage mesh of `model` whose worker starts without it: it fetches
/// at least its layers and less than the file.
fn stage_share_is_fetched(model: &Path) {
    let (plan, fetched, size) = worker_fetches_its_share(model, &["--stages", "2"], &[]);
    assert_eq!(stages(&plan), 2, "{plan}");
    // At least the header and the worker's layers (the second stage), less
    // than the file (the first stage's layers are never fetched).
    let layers = plan
        .split(", ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|r| r.split_once(".."))
        .map(|(a, b)| a.parse::<u32>().unwrap()..b.parse::<u32>().unwrap())
        .unwrap_or_else(|| panic!("no second stage in {plan}"));
    let f = dwarfstar_gguf::GgufFile::open(model).unwrap();
    let of_layers: u64 = f
        .tensors()
        .iter()
        .filter(|t| {
            let l = t
                .name
                .strip_prefix("blk.")
                .and_then(|n| n.split('.').next());
            l.and_then(|l| l.parse().ok())
                .is_some_and(|l: u32| layers.contains(&l))
        })
        .map(|t| t.n_bytes)
        .sum();
    assert!(
        fetched >= f.data_offset() + of_layers,
        "{fetched} of {size}; layers {layers:?} are {of_layers} bytes"
    );
}

/// An expert holder without the model fetches its routed experts' slices of
/// the stacked expert tensors, not the layers the coordinator runs.
#[test]
fn an_expert_holder_without_the_model_fetches_only_its_experts() {
    let m = fixtures().join("tiny-deepseek-v3/tiny-dsv3-q8_0.gguf");
    // The worker has room for experts, not for the stage: the planner
    // would otherwise weigh two equal machines' benchmark noise.
    let (plan, fetched, size) = worker_fetches_its_share(
        &m,
        &["--stages", "1", "--expert-parallel"],
        &["--node-budget", "2MB"],
    );
    assert!(plan.contains("experts on 2 node(s)"), "{plan}");
    assert!(fetched < size / 2, "{fetched} of {size}");
}

/// A V4 expert holder with an empty models folder fetches its routed
/// experts' slices, not the layers the coordinator runs.
#[test]
fn a_deepseek_v4_expert_holder_without_the_model_fetches_only_its_experts() {
    let (plan, fetched, size) = worker_fetches_its_share(
        &tiny_v4(),
        &["--stages", "1", "--expert-parallel"],
        &["--node-budget", "2MB"],
    );
    assert!(plan.contains("experts on 2 node(s)"), "{plan}");
    assert!(fetched < size / 2, "{fetched} of {size}");
}

/// `meshctl load` of the model in force with another split re-plans the
/// running mesh: a newer plan version, the worker takes a stage, and the
/// API's and Control's output stay one machine's.
#[test]
fn a_load_with_another_split_replans_the_running_mesh() {
    let model = model_path(SMOLLM2);
    let (w, coord) = worker_then_coordinator("1", &model, 1, &[]);
    assert_eq!(stages(coord.plan.as_deref().unwrap()), 1);
    let name = model.file_stem().unwrap().to_str().unwrap();
    let n = 8;
    let want = run_greedy(&model, PROMPT, n);
    let first = complete(coord.http.as_ref().unwrap(), name, PROMPT, n);
    let old = status(&coord.grpc).plan_version;
    let load = |stages: u32| load_model(&coord.grpc, SMOLLM2, stages);
    let reply = load(2);
    assert!(!reply.unchanged, "{reply:?}");
    let plan = reply.plan.unwrap();
    assert_eq!(plan.stages.len(), 2, "{plan:?}");
    assert!(plan.version > old, "v{} after v{old}", plan.version);
    // Every node serves the new plan, and the worker runs a stage of it.
    for d in [&coord, &w] {
        let s = status(&d.grpc);
        assert_eq!(s.plan_version, plan.version, "{s:?}");
    }
    let worker = status(&w.grpc);
    let me = worker.nodes.iter().find(|n| n.local).unwrap();
    let held = me.assignment.as_ref().map_or(0, |a| a.stages.len());
    assert_eq!(held, 1, "{me:?}");
    // The same answers through the new pipeline.
    let again = complete(coord.http.as_ref().unwrap(), name, PROMPT, n);
    assert_eq!(again["choices"][0]["text"], first["choices"][0]["text"]);
    let text = again["choices"][0]["text"].as_str().unwrap();
    assert!(
        want.starts_with(text),
        "mesh: {text:?}\none machine: {want:?}"
    );
    let done = generate_json(&coord.grpc, PROMPT, n as u32);
    assert_eq!(done["text"].as_str(), Some(want.as_str()), "{done}");
    // The same split again changes nothing.
    assert!(load(2).unchanged);
}

/// A worker (with `worker_extra` flags), then a coordinator of `model` in
/// `stages` stages over both, each with the models folder of `model`.
fn worker_then_coordinator(
    tag: &str,
    model: &Path,
    stages: u32,
    worker_extra: &[&str],
) -> (Daemon, Daemon) {
    let dir = model.parent().unwrap();
    let w = start(&format!("w{tag}"), "team-secret", dir, None, worker_extra);
    let n = stages.to_string();
    let args = ["--mesh-nodes", "2", "--peer", &w.mesh, "--stages", &n];
    let c = start(&format!("c{tag}"), "team-secret", dir, Some(model), &args);
    (w, c)
}

/// `meshctl load -m FILE --stages N` on the daemon at `grpc`.
fn load_model(grpc: &str, file: &str, stages: u32) -> dwarfstar_proto::v1::LoadReply {
    let file = file.to_string();
    control(grpc, async move |c| {
        c.load_model(dwarfstar_proto::v1::LoadRequest {
            model: file,
            stages: Some(stages),
            expert_parallel: false,
        })
        .await
    })
}

/// A greedy completion of `n` tokens from the API at `base`, serving
/// `model`, is not empty and begins one machine's text, which it returns.
fn answers_as_one_machine(base: &str, model: &Path, n: usize) -> String {
    let want = run_greedy(model, PROMPT, n);
    let name = model.file_stem().unwrap().to_str().unwrap();
    let got = complete(base, name, PROMPT, n);
    let text = got["choices"][0]["text"].as_str().unwrap();
    assert!(
        !text.is_empty() && want.starts_with(text),
        "mesh: {text:?}\none machine: {want:?}"
    );
    want
}

/// A two-token completion of `model` (greedy unless the server differs).
fn two_tokens(model: &str) -> Value {
    json!({"model": model, "prompt": PROMPT, "max_tokens": 2})
}

/// A completion request's status and body.
pub(crate) fn post_completion(base: &str, body: &Value) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let mut r = agent
        .post(format!("{base}/v1/completions"))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

/// A load asked of any node makes it the coordinator of that model: a
/// worker takes the mesh over with another model, then the first daemon
/// takes it back. Each time the new coordinator's API answers as one
/// machine does, and the node that gave up answers 503.
#[test]
fn a_load_on_any_node_makes_it_the_coordinator_of_another_model() {
    let smol = model_path(SMOLLM2);
    let gemma = model_path(GEMMA3);
    let (w, c) = worker_then_coordinator("3", &smol, 2, &["--http-addr", "127.0.0.1:0"]);
    let w_http = w
        .http
        .clone()
        .expect("the worker serves HTTP at its address");
    let c_http = c.http.clone().unwrap();
    let (code, body) = post_completion(&w_http, &two_tokens(""));
    assert_eq!(code, 503, "a worker serves no model: {body}");
    let load = |grpc: &str, file: &str| load_model(grpc, file, 2);
    let n = 8;
    let stem = |p: &Path| p.file_stem().unwrap().to_str().unwrap().to_string();
    let v1 = status(&c.grpc).plan_version;

    // The worker, asked for Gemma, coordinates it over both daemons.
    let reply = load(&w.grpc, GEMMA3);
    assert!(!reply.unchanged, "{reply:?}");
    let plan = reply.plan.unwrap();
    let w_id = status(&w.grpc).node_id;
    assert_eq!(plan.coordinator, w_id, "{plan:?}");
    assert_eq!(plan.stages.len(), 2, "{plan:?}");
    assert!(plan.version > v1);
    let want = answers_as_one_machine(&w_http, &gemma, n);
    let done = generate_json(&w.grpc, PROMPT, n as u32);
    assert_eq!(done["text"].as_str(), Some(want.as_str()), "{done}");
    // The first daemon gave its model up and runs a stage of the new plan.
    let (code, body) = post_completion(&c_http, &two_tokens(&stem(&smol)));
    assert_eq!(code, 503, "{body}");
    let cs = status(&c.grpc);
    assert_eq!(cs.plan_version, plan.version, "{cs:?}");
    let me = cs.nodes.iter().find(|n| n.local).unwrap();
    assert_eq!(
        me.assignment.as_ref().map_or(0, |a| a.stages.len()),
        1,
        "{me:?}"
    );

    // Back: the first daemon, asked for SmolLM2, takes over again.
    let reply = load(&c.grpc, SMOLLM2);
    let back = reply.plan.unwrap();
    assert_eq!(back.coordinator, status(&c.grpc).node_id);
    assert!(back.version > plan.version);
    answers_as_one_machine(&c_http, &smol, n);
    let (code, body) = post_completion(&w_http, &two_tokens(&stem(&gemma)));
    assert_eq!(code, 503, "{body}");
    assert_eq!(status(&w.grpc).plan_version, back.version);
}

/// Every node announces the models it holds with their BLAKE3 hashes, and a
/// worker whose file has the plan's name and size but other bytes refuses
/// the plan, naming both hashes, while the coordinator keeps serving.
#[test]
fn nodes_announce_model_hashes_and_a_worker_with_other_bytes_refuses_the_plan() {
    use dwarfstar_mesh::shard::hash_file;
    let model = model_path(SMOLLM2);
    let odd = TempDir::new("odd-models");
    let copy = odd.0.join(SMOLLM2);
    let mut bytes = std::fs::read(&model).unwrap();
    *bytes.last_mut().unwrap() ^= 0x55;
    std::fs::write(&copy, &bytes).unwrap();
    drop(bytes);
    // The coordinator plans alone; the worker joins after.
    let c = start(
        "c4",
        "team-secret",
        model.parent().unwrap(),
        Some(&model),
        &[],
    );
    let w = start("w4", "team-secret", &odd.0, None, &["--peer", &c.mesh]);
    let (good, bad) = (hash_file(&model).unwrap(), hash_file(&copy).unwrap());
    assert_ne!(good, bad);
    // The coordinator sees both announcements once the worker hashed its file.
    let announced = |id: &str| -> Option<String> {
        let peers = control(&c.grpc, async |cl| {
            cl.peers(dwarfstar_proto::v1::PeersRequest {}).await
        });
        let p = peers.peers.into_iter().find(|p| p.id == id)?;
        let m = p
            .capabilities?
            .models
            .into_iter()
            .find(|m| m.name == SMOLLM2)?;
        (m.size == std::fs::metadata(&model).unwrap().len()).then_some(m.blake3)
    };
    let (c_id, w_id) = (status(&c.grpc).node_id, status(&w.grpc).node_id);
    let mut seen = None;
    for _ in 0..100 {
        seen = announced(&w_id);
        if seen.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seen.as_deref(), Some(bad.as_str()));
    assert_eq!(announced(&c_id).as_deref(), Some(good.as_str()));
    // A plan that gives the worker a stage is refused, and says why.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt.block_on(async {
        let mut cl = dwarfstar_proto::v1::control_client::ControlClient::connect(c.grpc.clone())
            .await
            .unwrap();
        cl.load_model(dwarfstar_proto::v1::LoadRequest {
            model: SMOLLM2.into(),
            stages: Some(2),
            expert_parallel: false,
        })
        .await
        .unwrap_err()
    });
    let msg = err.message();
    assert!(msg.contains(&bad) && msg.contains(&good), "{msg}");
    // The coordinator still answers on its own.
    let name = model.file_stem().unwrap().to_str().unwrap();
    let got = complete(c.http.as_ref().unwrap(), name, PROMPT, 4);
    assert!(!got["choices"][0]["text"].as_str().unwrap().is_empty());
}
