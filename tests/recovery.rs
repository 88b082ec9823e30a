//! Nothing lost when a node dies: a mesh member is SIGKILLed, or SIGSTOPped
//! (it hangs with its connections open), while a greedy stream runs; the
//! coordinator declares it lost, re-plans over the nodes left, rebuilds the
//! running request's caches by replaying its tokens, and the stream goes
//! on. Its text equals an undisturbed run's, the pause is short, and a new
//! request runs on the new plan.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;
use crate::liveness::signal;
use crate::mesh::{post_completion, start_in, status, Daemon};

const PROMPT: &str = "Once upon a time";

fn body(model: &str, n: usize, stream: bool) -> Value {
    json!({"model": model, "prompt": PROMPT, "max_tokens": n, "temperature": 0,
           "ignore_eos": true, "stream": stream})
}

/// A greedy completion's text, undisturbed.
fn text_of(base: &str, model: &str, n: usize) -> String {
    let (code, b) = post_completion(base, &body(model, n, false));
    assert_eq!(code, 200, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

/// A streamed greedy completion: calls `midway` once `after` chunks came,
/// then reads to the end. The text, the error event if one came, and the
/// longest wait for a chunk after `midway` (the pause a client sees).
fn stream_with(
    base: &str,
    model: &str,
    n: usize,
    after: usize,
    midway: impl FnOnce(),
) -> (String, Option<String>, Duration) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let r = agent
        .post(format!("{base}/v1/completions"))
        .header("Content-Type", "application/json")
        .send(body(model, n, true).to_string())
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let lines = BufReader::new(r.into_body().into_reader()).lines();
    let (mut text, mut chunks, mut midway, mut error) = (String::new(), 0, Some(midway), None);
    let (mut last, mut gap) = (None::<Instant>, Duration::ZERO);
    for line in lines {
        let line = line.unwrap();
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        if let Some(e) = v.get("error") {
            error = Some(e.to_string());
            continue;
        }
        text.push_str(v["choices"][0]["text"].as_str().unwrap_or(""));
        chunks += 1;
        if let Some(t) = last {
            gap = gap.max(t.elapsed());
        }
        if last.is_some() {
            last = Some(Instant::now());
        }
        if chunks == after {
            if let Some(f) = midway.take() {
                f();
                last = Some(Instant::now());
            }
        }
    }
    assert!(midway.is_none(), "the stream ended after {chunks} chunks");
    (text, error, gap)
}

fn metrics(base: &str) -> String {
    ureq::get(format!("{base}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}

/// A mesh of `nodes` daemons serving `model` with `extra` flags; the
/// coordinator last.
fn mesh(model: &Path, nodes: usize, extra: &[&str]) -> (Vec<Daemon>, Daemon) {
    let dir = model.parent().unwrap();
    let workers: Vec<Daemon> = (1..nodes)
        .map(|i| start_in(None, &format!("rw{i}"), "team-secret", dir, None, &[]))
        .collect();
    let mut args: Vec<String> = vec!["--mesh-nodes".into(), nodes.to_string()];
    for w in &workers {
        args.extend(["--peer".into(), w.mesh.clone()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let coord = start_in(None, "rc", "team-secret", dir, Some(model), &args);
    (workers, coord)
}

/// Streams `n` greedy tokens through the mesh and `sig`nals the worker
/// `victim` picks once `after` tokens came: the text equals the
/// undisturbed run's, the pause (from the failed step to the next one) is
/// under 10 s, and a new request runs.
fn survives(
    model: &Path,
    nodes: usize,
    extra: &[&str],
    n: usize,
    after: usize,
    sig: &str,
    victim: impl FnOnce(&Daemon, &[Daemon]) -> usize,
) {
    let (workers, coord) = mesh(model, nodes, extra);
    let base = coord.http.clone().unwrap();
    let name = model.file_stem().unwrap().to_str().unwrap().to_string();
    let want = text_of(&base, &name, n);
    let v = victim(&coord, &workers);
    let victim_id = status(&workers[v].grpc).node_id;
    let version = status(&coord.grpc).plan_version;
    let signalled = std::cell::Cell::new(None);
    let (got, error, gap) = stream_with(&base, &name, n, after, || {
        signal(&workers[v], sig);
        signalled.set(Some(Instant::now()));
    });
    let finished = signalled.get().unwrap().elapsed();
    assert_eq!(error, None, "the stream reported an error");
    assert_eq!(
        got, want,
        "the stream's text differs from an undisturbed run's"
    );
    let m = metrics(&base);
    let recoveries = crate::api::metric(&m, "dwarfstar_recoveries_total");
    let pause = crate::api::metric(&m, "dwarfstar_recovery_seconds_total");
    let replayed = crate::api::metric(&m, "dwarfstar_replayed_tokens_total");
    eprintln!(
        "{name} after SIG{sig}: the stream paused {:.2} s at most (the engine {pause:.2} s from \
         its failed step), {recoveries} recovery, {replayed} tokens replayed; it ended \
         {finished:?} after the signal",
        gap.as_secs_f64()
    );
    assert_eq!(
        recoveries, 1.0,
        "the stream did not go through a recovery (it ended first?):\n{m}"
    );
    assert!(pause < 10.0, "recovery took {pause} s");
    assert!(gap < Duration::from_secs(10), "the stream paused {gap:?}");
    assert!(replayed >= after as f64, "{replayed}");
    // A new plan without the lost node is in force, and a new request runs
    // on it as one machine would.
    let after_loss = status(&coord.grpc);
    assert!(after_loss.plan_version > version, "{after_loss:#?}");
    let held = |nd: &dwarfstar_proto::v1::NodeStatus| {
        nd.assignment
            .as_ref()
            .is_some_and(|a| !a.stages.is_empty() || !a.experts.is_empty())
    };
    assert!(
        !after_loss
            .nodes
            .iter()
            .any(|nd| nd.id == victim_id && held(nd)),
        "the lost node still holds a share: {after_loss:#?}"
    );
    let short = text_of(&base, &name, 16);
    assert!(want.starts_with(&short), "{short:?} / {want:?}");
    if sig == "STOP" {
        signal(&workers[v], "CONT");
    }
}

/// The worker that runs the pipeline stage after the coordinator's.
fn middle_stage(coord: &Daemon, workers: &[Daemon]) -> usize {
    let st = status(&coord.grpc);
    let first_layer = |id: &str| {
        st.nodes
            .iter()
            .find(|n| n.id == id)
            .and_then(|n| n.assignment.as_ref())
            .and_then(|a| a.stages.first())
            .map(|s| s.layer_start)
    };
    let mut by_layer: Vec<(u32, usize)> = workers
        .iter()
        .enumerate()
        .filter_map(|(i, w)| first_layer(&status(&w.grpc).node_id).map(|l| (l, i)))
        .collect();
    by_layer.sort();
    assert_eq!(by_layer.len(), workers.len(), "{st:#?}");
    by_layer[0].1
}

#[test]
fn a_killed_middle_stage_costs_the_stream_a_pause_not_its_text() {
    let model = model_path(SMOLLM2);
    survives(&model, 3, &["--stages", "3"], 128, 8, "KILL", middle_stage);
}

#[test]
fn a_hung_worker_is_declared_lost_and_the_coordinator_finishes_alone() {
    let model = model_path(SMOLLM2);
    survives(&model, 2, &["--stages", "2"], 128, 8, "STOP", |_, _| 0);
}

#[test]
fn a_killed_expert_holder_is_replayed_around() {
    let model = fixtures().join("tiny-deepseek-v3/tiny-dsv3-q8_0.gguf");
    let extra = ["--stages", "1", "--expert-parallel"];
    survives(&model, 2, &extra, 200, 4, "KILL", |_, _| 0);
}
