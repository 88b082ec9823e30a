//! A mesh member that stops answering (SIGSTOP: its connections stay open,
//! nothing closes them) is declared lost within the liveness bound, not at
//! the QUIC idle timeout, and the request that waited on it goes on over
//! the nodes left (see `recovery` for what it then gets).

use std::process::Command;
use std::time::{Duration, Instant};

use dwarfstar_proto::v1::NodeState;
use serde_json::json;

use crate::common::*;
use crate::mesh::{post_completion, start_in, status, Daemon};

/// Sends `sig` (STOP, CONT) to the daemon's process, with the shell's
/// built-in `kill` (a fresh machine may lack procps' /bin/kill).
pub(crate) fn signal(d: &Daemon, sig: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -{sig} {}", d.pid()))
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {}", d.pid());
}

/// A completion of `n` tokens: its HTTP status and body.
fn post(base: &str, model: &str, n: usize) -> (u16, String) {
    let body = json!({"model": model, "prompt": "Once upon a time", "max_tokens": n,
                      "temperature": 0, "ignore_eos": true});
    post_completion(base, &body)
}

/// The coordinator's view of its member `id`: its state and detail.
fn member(grpc: &str, id: &str) -> (i32, String) {
    let r = status(grpc);
    let n = r.nodes.iter().find(|n| n.id == id);
    n.map(|n| (n.state, n.state_detail.clone()))
        .unwrap_or_else(|| panic!("no node {id} in {r:#?}"))
}

#[test]
fn a_stopped_worker_is_declared_lost_within_the_bound_and_its_request_goes_on() {
    let model = model_path(SMOLLM2);
    let dir = model.parent().unwrap();
    let worker = start_in(None, "lw", "team-secret", dir, None, &[]);
    let args = ["--mesh-nodes", "2", "--stages", "2", "--peer", &worker.mesh];
    let coord = start_in(None, "lc", "team-secret", dir, Some(&model), &args);
    let base = coord.http.clone().unwrap();
    let name = model.file_stem().unwrap().to_str().unwrap().to_string();
    let (code, body) = post(&base, &name, 4);
    assert_eq!(code, 200, "{body}");
    let worker_id = status(&worker.grpc).node_id;
    assert_eq!(member(&coord.grpc, &worker_id).0, NodeState::Ready as i32);

    // A long generation is under way when the worker stops.
    let long = {
        let (base, name) = (base.clone(), name.clone());
        std::thread::spawn(move || post(&base, &name, 400))
    };
    std::thread::sleep(Duration::from_millis(700));
    signal(&worker, "STOP");
    let stopped = Instant::now();

    // The default bound is 3 s; the coordinator polls nothing, so allow
    // only scheduling slack on top.
    let bound = Duration::from_secs(3) + Duration::from_millis(700);
    let lost_after = loop {
        let (state, detail) = member(&coord.grpc, &worker_id);
        if state == NodeState::Failed as i32 || state == NodeState::Unreachable as i32 {
            assert!(detail.contains("lost"), "{detail}");
            break stopped.elapsed();
        }
        assert!(
            stopped.elapsed() < bound + Duration::from_secs(5),
            "the stopped worker is still {state} after {:?}",
            stopped.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("stopped worker declared lost after {lost_after:?}");
    assert!(lost_after <= bound, "declared lost after {lost_after:?}");

    // The request that was running goes on over the coordinator alone.
    let (code, body) = long.join().unwrap();
    eprintln!(
        "running request ended {:?} after the stop: {code}",
        stopped.elapsed()
    );
    assert_eq!(code, 200, "{body}");

    // A new request runs at once on the new plan.
    let t = Instant::now();
    let (code, body) = post(&base, &name, 8);
    assert_eq!(code, 200, "{body}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    signal(&worker, "CONT");
}
