//! DeepSeek V4 speculation: a state cut back into its last pass is the
//! state of a run that never drafted (bit for bit, across compression
//! boundaries of ratio 4 and 128 and the sliding window); the MTP block
//! (random weights, in llama.cpp's and ds4's layouts, in the trunk's file
//! or its own) drafts through `dwarfstar serve`, and greedy text is the
//! text without drafts, alone and batched.

use std::path::Path;

use dwarfstar_model::sampler::argmax;
use dwarfstar_model::{Model, SeqState};
use serde_json::{json, Value};

use crate::api::{metric, Server};
use crate::common::*;

/// Greedy decoding one token a pass from `prompt` up to `total` positions:
/// the tokens, and the logits after each position from the prompt's last
/// on (`logits[i]` follows position `prompt.len() - 1 + i`).
fn plain(m: &Model, prompt: &[u32], total: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut st = m.new_state(total + 8);
    let mut l = m.forward(prompt, &mut st, false).expect("prompt");
    let mut toks = prompt.to_vec();
    let mut logits = vec![l.clone()];
    while toks.len() < total {
        let t = argmax(&l) as u32;
        toks.push(t);
        l = m.forward(&[t], &mut st, false).expect("decode");
        logits.push(l.clone());
    }
    (toks, logits)
}

#[test]
fn v4_cut_back_into_a_verify_pass_is_exact() {
    let m = tiny_v4();
    let p = tiny_v4_prompt();
    // From position 100 to 160: the HCA layer's first block completes at
    // 127, the CSA layers' every 4, the 15-slot window wraps many times.
    let (start, total) = (100, 160);
    let (toks, want) = plain(&m, &p[..start], total);
    let nv = m.n_vocab();
    let mut st: SeqState = m.new_state(total + 8);
    m.forward(&toks[..start - 1], &mut st, false)
        .expect("prompt");
    // The state holds `h` positions; the next input is `toks[h]`.
    let mut h = start - 1;
    let mut round = 0usize;
    let mut cut_inside = 0;
    while h + 1 < total {
        // k drafts of which the first `a` are right, then wrong tokens.
        let k = 1 + round % 6;
        let a = (round / 6 + round) % (k + 1);
        round += 1;
        let k = k.min(total - h - 1);
        let a = a.min(k);
        let mut pass = vec![toks[h]];
        pass.extend_from_slice(&toks[h + 1..h + 1 + a]);
        while pass.len() < k + 1 {
            // A wrong draft: anything but the right token.
            let right = toks.get(h + pass.len()).copied().unwrap_or(0);
            pass.push((right + 1 + round as u32) % nv as u32);
        }
        let got = m.forward(&pass, &mut st, true).expect("verify pass");
        // Every position up to the first wrong draft sees the plain run's
        // state, and the first position after the kept ones too.
        for i in 0..=a {
            let row = &got[i * nv..(i + 1) * nv];
            let pos = h + i;
            assert!(
                row == want[pos + 1 - start].as_slice(),
                "logits after position {pos} in a pass of {} from {h}",
                k + 1
            );
        }
        let keep = h + 1 + a;
        if keep < h + pass.len() {
            cut_inside += 1;
        }
        st.truncate(keep);
        assert_eq!(st.len(), keep);
        assert_eq!(
            st.held(),
            keep,
            "the cut went back into the pass, no recompute"
        );
        h = keep;
    }
    assert!(cut_inside > 10, "only {cut_inside} passes were cut back");
}

/// Greedy completions of a few slices of the tiny prompt through
/// `dwarfstar serve`, one at a time and all together.
fn completions(s: &Server, prompts: &[Vec<u32>]) -> (Vec<Value>, Vec<Value>) {
    let complete = |p: &Vec<u32>| {
        let (st, v) = s.post(
            "/v1/completions",
            &json!({"prompt": p, "max_tokens": 24, "temperature": 0, "ignore_eos": true}),
        );
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["usage"]["completion_tokens"], json!(24), "{v}");
        v["choices"][0]["text"].clone()
    };
    let alone = prompts.iter().map(complete).collect();
    let together = std::thread::scope(|sc| {
        let hs: Vec<_> = prompts
            .iter()
            .map(|p| sc.spawn(move || complete(p)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    (alone, together)
}

/// Serving `path` with MTP drafting (the default for a model with an MTP
/// block) gives the greedy text of serving it without, alone and
/// batched; the block drafts and some drafts are accepted or rejected.
fn mtp_keeps_greedy_text(path: &Path, label: &str) {
    mtp_keeps_greedy_text_with(path, &[], label)
}

/// [`mtp_keeps_greedy_text`] with `extra` flags on the drafting servers.
fn mtp_keeps_greedy_text_with(path: &Path, extra: &[&str], label: &str) {
    let p = tiny_v4_prompt();
    // Across the HCA boundary (127) and within the first window.
    let prompts: Vec<Vec<u32>> = vec![p[..9].to_vec(), p[..60].to_vec(), p[..118].to_vec()];
    let plain = Server::start_model(path, &["--mtp=false"], None);
    let (want, want_together) = completions(&plain, &prompts);
    let m = plain.metrics();
    assert_eq!(metric(&m, "dwarfstar_spec_drafted_tokens_total"), 0.0);
    drop(plain);
    assert_eq!(want, want_together, "{label}: batching changed greedy text");
    for k in ["1", "3"] {
        let mut args = vec!["--spec-tokens", k, "--spec-always"];
        args.extend_from_slice(extra);
        let spec = Server::start_model(path, &args, None);
        let (alone, together) = completions(&spec, &prompts);
        assert_eq!(alone, want, "{label}, {k} drafts: alone");
        assert_eq!(together, want, "{label}, {k} drafts: batched");
        let m = spec.metrics();
        let drafted = metric(&m, "dwarfstar_spec_drafted_tokens_total");
        let accepted = metric(&m, "dwarfstar_spec_accepted_tokens_total");
        eprintln!(
            "{label}, up to {k} MTP drafts: drafted {drafted}, accepted {accepted} ({:.1}%)",
            100.0 * accepted / drafted.max(1.0)
        );
        assert!(drafted > 0.0, "{label}: the MTP block drafted nothing\n{m}");
    }
}

#[test]
fn v4_llama_cpp_mtp_block_drafts_and_keeps_greedy_text() {
    let path = crate::deepseek4::with_mtp_tagged("serve");
    mtp_keeps_greedy_text(&path, "llama.cpp layout");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn v4_ds4_mtp_block_drafts_and_keeps_greedy_text() {
    let path = crate::deepseek4::ds4_trunk_tagged(true, "serve");
    mtp_keeps_greedy_text(&path, "ds4 layout");
    let _ = std::fs::remove_file(&path);
}

/// `--mtp` refuses a model without an MTP block, naming the file.
#[test]
fn mtp_on_a_model_without_the_block_is_refused() {
    let path = fixtures().join("tiny-deepseek-v4/tiny-dsv4-Q8_0.gguf");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_dwarfstar"))
        .arg("serve")
        .arg("--model")
        .arg(&path)
        .args([
            "--mtp",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-listen",
            "off",
        ])
        .env("DWARFSTAR_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("no MTP block"), "{err}");
}

/// ds4's MTP block in a file of its own, attached to the trunk, drafts
/// what the same block in the trunk's file drafts.
#[test]
fn v4_ds4_mtp_file_attached_drafts_as_in_file() {
    use dwarfstar_gguf::GgufFile;
    use dwarfstar_model::draft::{DraftAsk, Drafter, Observed};
    use dwarfstar_model::draft_mtp::MtpDrafter;
    use std::sync::Arc;

    let side = ds4_mtp_side_file("side");
    let trunk = crate::deepseek4::ds4_trunk_tagged(false, "side");
    let inside = crate::deepseek4::ds4_trunk_tagged(true, "inside");
    let open = |p: &Path, attach: bool| {
        let mut m = Model::open(p, &[]).expect("loads").0;
        let Model::Deepseek4(d) = &mut m else {
            panic!("not deepseek4")
        };
        if attach {
            d.attach_mtp(Arc::new(GgufFile::open(&side).unwrap()))
                .expect("attaches");
        }
        d.keep_hidden = true;
        Arc::new(m)
    };
    let drafts = |m: Arc<Model>| {
        let mut d = MtpDrafter::new(m.clone(), 256).expect("MTP drafter");
        let mut hist = tiny_v4_prompt()[..40].to_vec();
        let mut st = m.new_state(256);
        let mut out = Vec::new();
        for step in 0..6 {
            let l = if step == 0 {
                m.forward(&hist, &mut st, false).unwrap()
            } else {
                m.forward(&hist[hist.len() - 1..], &mut st, false).unwrap()
            };
            hist.push(argmax(&l));
            let SeqState::Ds4(c) = &st else { panic!() };
            let (pos0, hidden) = c.hidden().expect("hidden kept");
            d.observe(&[Observed {
                seq: 1,
                pos0,
                hidden,
                history: &hist,
            }])
            .unwrap();
            let got = d
                .draft(&[DraftAsk {
                    seq: 1,
                    history: &hist,
                    k: 3,
                }])
                .unwrap();
            assert_eq!(got[0].len(), 3, "step {step}: three chained drafts");
            out.push(got[0].clone());
        }
        out
    };
    let a = drafts(open(&trunk, true));
    let b = drafts(open(&inside, false));
    for p in [&side, &trunk, &inside] {
        let _ = std::fs::remove_file(p);
    }
    assert_eq!(a, b);
}

/// ds4's MTP block of the tiny model in a file of its own (`mtp.0.*`).
fn ds4_mtp_side_file(tag: &str) -> std::path::PathBuf {
    use dwarfstar_gguf::{GgufFile, GgufWriter};
    let f = GgufFile::open(crate::deepseek4::gguf("f32")).unwrap();
    let mut w = GgufWriter::new(f.alignment()).unwrap();
    w.add_kv("general.architecture", "deepseek4").unwrap();
    crate::deepseek4::add_ds4_mtp(&f, &mut w);
    let side = std::env::temp_dir().join(format!("dsv4-mtp-{tag}-{}.gguf", std::process::id()));
    w.write_to_path(&side).unwrap();
    side
}

/// `--mtp-model`: ds4's trunk file served with its MTP file of its own
/// drafts, and keeps the greedy text; a file that is no MTP block, or one
/// given to a model of another architecture, is refused with the reason.
#[test]
fn v4_ds4_mtp_file_given_by_flag_drafts_and_keeps_greedy_text() {
    let side = ds4_mtp_side_file("flag");
    let trunk = crate::deepseek4::ds4_trunk_tagged(false, "flag");
    let s = side.to_str().unwrap();
    mtp_keeps_greedy_text_with(&trunk, &["--mtp-model", s], "ds4 MTP file by flag");
    let refused = |model: &Path, mtp: &Path| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_dwarfstar"))
            .arg("serve")
            .arg("--model")
            .arg(model)
            .arg("--mtp-model")
            .arg(mtp)
            .args(["--http-addr", "127.0.0.1:0", "--grpc-listen", "off"])
            .env("DWARFSTAR_LOG", "warn")
            .output()
            .unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let err = refused(&trunk, &trunk);
    assert!(err.contains("not a ds4 MTP file"), "{err}");
    let err = refused(&model_path(SMOLLM2), &side);
    assert!(err.contains("only DeepSeek V4"), "{err}");
    for p in [&side, &trunk] {
        let _ = std::fs::remove_file(p);
    }
}

/// `bench --mtp` drafts with the block (in the trunk's file, or ds4's file
/// of its own given by `--mtp-model`) and counts the drafts.
#[test]
fn bench_mtp_counts_the_blocks_drafts() {
    let inside = crate::deepseek4::with_mtp_tagged("bench");
    let v = crate::spec::bench_spec(&inside, &["--mtp"]);
    assert_eq!(v["drafter"], json!("mtp"), "{v}");
    let side = ds4_mtp_side_file("bench");
    let trunk = crate::deepseek4::ds4_trunk_tagged(false, "bench");
    let s = side.to_str().unwrap();
    crate::spec::bench_spec(&trunk, &["--mtp", "--mtp-model", s]);
    for p in [&inside, &side, &trunk] {
        let _ = std::fs::remove_file(p);
    }
}

/// A request whose prompt comes from the prefix cache drafts from its
/// first decode step: the MTP block's state is cached with the model's and
/// restored with it, and the greedy text is the text of the first run.
#[test]
fn v4_mtp_drafts_after_a_prefix_cache_hit() {
    let path = crate::deepseek4::with_mtp_tagged("prefix");
    let s = Server::start_model(&path, &["--spec-tokens", "2", "--spec-always"], None);
    let prompt = tiny_v4_prompt()[..60].to_vec();
    let body = json!({"prompt": prompt, "max_tokens": 16, "temperature": 0, "ignore_eos": true});
    let drafted = || metric(&s.metrics(), "dwarfstar_spec_drafted_tokens_total");
    let (st, first) = s.post("/v1/completions", &body);
    assert_eq!(st, 200, "{first}");
    let before = drafted();
    let first_drafts = before;
    let (st, again) = s.post("/v1/completions", &body);
    assert_eq!(st, 200, "{again}");
    let cached = again["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64();
    assert!(
        cached > Some(0),
        "the prompt did not come from the cache: {again}"
    );
    assert_eq!(first["choices"][0]["text"], again["choices"][0]["text"]);
    let after = drafted();
    eprintln!(
        "first run: {first_drafts} drafts; after a prefix hit: {} drafts",
        after - before
    );
    // The restored block drafts what it drafted the first time.
    assert!(first_drafts > 0.0);
    assert_eq!(after - before, first_drafts, "drafts after the prefix hit");
    drop(s);
    let _ = std::fs::remove_file(&path);
}
