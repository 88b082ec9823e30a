//! Saved KV caches (`kv_file`, `kv_store`, `dwarfstar run --kv-cache-dir`)
//! on SmolLM2: a restored state continues with logits bit-identical to the
//! state that was saved (f32 and q8_0 caches); corrupted, truncated,
//! hostile and foreign files are refused with their reason; the store finds
//! the longest saved prefix of a prompt and stays within its budget.

use std::path::PathBuf;
use std::process::Command;

use dwarfstar_gguf::Value;
use dwarfstar_model::kv_file::{self, KvFileError};
use dwarfstar_model::kv_store::KvStore;
use dwarfstar_model::sampler::argmax;
use dwarfstar_model::{KvType, Model, SeqState};

use crate::common::*;

const TEXT: &str = "You are the team's assistant. You answer questions about our build \
    system, our deployment scripts and our code review rules. Be brief, cite the file \
    you took an answer from, and say so when you do not know. The build uses cargo \
    in release mode; deployments go through the staging cluster first.";

fn model(ty: KvType) -> Model {
    let (mut m, _) = Model::open(&model_path(SMOLLM2), &[]).expect("model loads");
    m.set_kv_type(ty).expect("kv type fits");
    m
}

fn prompt() -> Vec<u32> {
    let p = load(SMOLLM2)
        .tokenizer
        .encode(TEXT, true, true)
        .expect("encodes");
    assert!(p.len() > 48, "{} tokens", p.len());
    p
}

/// Greedy steps from `logits` and `state`: every step's full logits.
fn continue_greedy(
    m: &Model,
    state: &mut SeqState,
    mut logits: Vec<f32>,
    n: usize,
) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let t = argmax(&logits) as u32;
        logits = m.forward(&[t], state, false).expect("forward");
        out.push(logits.clone());
    }
    out
}

fn bits(v: &[Vec<f32>]) -> Vec<Vec<u32>> {
    v.iter()
        .map(|l| l.iter().map(|x| x.to_bits()).collect())
        .collect()
}

fn saved(m: &Model, tokens: &[u32], state: &SeqState) -> Vec<u8> {
    let fp = kv_file::fingerprint(m);
    let mut buf = Vec::new();
    let n = kv_file::save(&fp, tokens, state, &mut buf).expect("saves");
    assert_eq!(n, buf.len() as u64);
    buf
}

fn restore(m: &Model, bytes: &[u8], cap: usize) -> Result<(Vec<u32>, SeqState), KvFileError> {
    kv_file::load(m, &kv_file::fingerprint(m), bytes, bytes.len() as u64, cap)
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dwarfstar-kv-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn restored_state_continues_bit_identically() {
    let p = prompt();
    let cap = p.len() + 16;
    for ty in [KvType::F32, KvType::Q8_0] {
        let m = model(ty);
        // Uninterrupted: prefill, then 8 greedy steps.
        let mut a = m.new_state(cap);
        let l0 = m.forward(&p, &mut a, false).expect("prefill");
        let bytes = saved(&m, &p, &a);
        let want = continue_greedy(&m, &mut a, l0.clone(), 8);

        let (ids, mut b) = restore(&m, &bytes, cap).expect("loads");
        assert_eq!(ids, p);
        assert_eq!(b.len(), p.len());
        let got = continue_greedy(&m, &mut b, l0, 8);
        assert!(
            bits(&got) == bits(&want),
            "{ty}: logits differ after restore"
        );

        // A prefix of a longer state: save 40 of its positions, restore, run
        // the rest of the prompt — as a run that stopped at 40 would.
        let k = 40;
        let mut c = m.new_state(cap);
        m.forward(&p[..k], &mut c, false).expect("prefill");
        let lc = m.forward(&p[k..], &mut c, false).expect("rest");
        let want = continue_greedy(&m, &mut c, lc, 4);
        let (ids, mut d) = restore(&m, &saved(&m, &p[..k], &a), cap).expect("loads");
        assert_eq!(ids, &p[..k]);
        let ld = m.forward(&p[k..], &mut d, false).expect("rest");
        let got = continue_greedy(&m, &mut d, ld, 4);
        assert!(
            bits(&got) == bits(&want),
            "{ty}: logits differ after a prefix restore"
        );
    }
}

#[test]
fn bad_files_are_refused_with_their_reason() {
    let m = model(KvType::F32);
    let p = prompt();
    let mut st = m.new_state(p.len());
    m.forward(&p, &mut st, false).expect("prefill");
    let good = saved(&m, &p, &st);
    let cap = p.len();
    assert!(restore(&m, &good, cap).is_ok());

    // A flipped byte anywhere: in the KV data, a token id, the fingerprint.
    for at in [good.len() / 2, kv_file::HEADER_BYTES as usize + 4, 20] {
        let mut b = good.clone();
        b[at] ^= 0x10;
        let e = restore(&m, &b, cap).expect_err("refused");
        assert!(matches!(e, KvFileError::Checksum), "byte {at}: {e}");
        assert!(e.to_string().contains("checksum"), "{e}");
    }
    // Truncated, padded, empty, wrong magic, another version.
    for b in [&good[..good.len() - 1], &good[..100], &good[..30]] {
        let e = restore(&m, b, cap).expect_err("refused");
        assert!(matches!(e, KvFileError::Length { .. }), "{e}");
        assert!(e.to_string().contains("truncated"), "{e}");
    }
    let mut padded = good.clone();
    padded.push(0);
    assert!(matches!(
        restore(&m, &padded, cap),
        Err(KvFileError::Length { .. })
    ));
    assert!(matches!(restore(&m, &[], cap), Err(KvFileError::BadMagic)));
    let mut b = good.clone();
    b[0] = b'X';
    assert!(matches!(restore(&m, &b, cap), Err(KvFileError::BadMagic)));
    let mut b = good.clone();
    b[4] = 2;
    assert!(matches!(restore(&m, &b, cap), Err(KvFileError::Version(2))));
    // A hostile header claiming 4 billion positions: refused before any
    // allocation (the file is short).
    let mut b = good.clone();
    b[56..60].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        restore(&m, &b, cap),
        Err(KvFileError::Length { .. })
    ));
    // More positions than the sequence may hold.
    assert!(matches!(
        restore(&m, &good, cap - 1),
        Err(KvFileError::TooLong { .. })
    ));

    // Foreign: another architecture, and the same file with one metadata
    // value overridden (same shapes, other numbers).
    let gemma = &load(GEMMA3).model;
    let e = restore(gemma, &good, cap).expect_err("refused");
    assert!(matches!(e, KvFileError::Foreign { .. }), "{e}");
    assert!(e.to_string().contains("another model"), "{e}");
    let over = [("llama.rope.freq_base".to_string(), Value::F32(20000.0))];
    let (twin, _) = Model::open(&model_path(SMOLLM2), &over).expect("loads");
    assert!(matches!(
        restore(&twin, &good, cap),
        Err(KvFileError::Foreign { .. })
    ));
    // Same model, another cache type.
    let q8 = model(KvType::Q8_0);
    let e = restore(&q8, &good, cap).expect_err("refused");
    assert!(matches!(e, KvFileError::Mismatch(_)), "{e}");
}

#[test]
fn store_restores_the_longest_shared_prefix_and_keeps_its_budget() {
    let m = model(KvType::F32);
    let dir = tmp_dir("store");
    let store = KvStore::open(&dir, 1 << 30, &m).expect("opens");
    let p = prompt();
    let cap = p.len() + 32;
    // Nothing saved yet.
    assert!(store.lookup(&m, &p, cap).restored.is_none());
    let mut st = m.new_state(cap);
    m.forward(&p, &mut st, false).expect("prefill");
    let bytes = store.save(&p, &st).expect("saves").expect("written");
    assert_eq!(store.usage(), (1, bytes));
    // Saving it again, or a prefix of it, writes nothing.
    assert_eq!(store.save(&p, &st).expect("ok"), None);
    assert_eq!(store.save(&p[..40], &st).expect("ok"), None);

    // Another question after the same 45 tokens: those are restored.
    let mut q = p[..45].to_vec();
    q.extend(
        load(SMOLLM2)
            .tokenizer
            .encode(" What is the deploy order?", false, false)
            .expect("enc"),
    );
    let found = store.lookup(&m, &q, cap);
    let r = found.restored.expect("restored");
    assert_eq!(r.tokens, 45);
    assert_eq!(r.state.len(), 45);
    // The restored prefix continues as a fresh prefill of it would.
    let mut fresh = m.new_state(cap);
    m.forward(&q[..45], &mut fresh, false).expect("prefill");
    let mut rs = r.state;
    let a = m.forward(&q[45..], &mut rs, false).expect("rest");
    let b = m.forward(&q[45..], &mut fresh, false).expect("rest");
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));

    // A corrupted file is refused, reported and removed.
    let path = store.path_for(&p).expect("path");
    let mut raw = std::fs::read(&path).expect("reads");
    let mid = raw.len() / 2;
    raw[mid] ^= 1;
    std::fs::write(&path, raw).expect("writes");
    let found = store.lookup(&m, &p, cap);
    assert!(found.restored.is_none());
    assert_eq!(found.rejected.len(), 1);
    assert!(matches!(found.rejected[0].1, KvFileError::Checksum));
    assert!(!path.exists());

    // Budget: room for two files of this prompt; three distinct prompts
    // (different first tokens) leave the two most recently used.
    let small = KvStore::open(&dir, 2 * bytes + bytes / 2, &m).expect("opens");
    let mut paths = Vec::new();
    for i in 0..3u32 {
        let mut v = p.clone();
        v[1] = 100 + i;
        let mut s = m.new_state(cap);
        m.forward(&v, &mut s, false).expect("prefill");
        small.save(&v, &s).expect("saves").expect("written");
        paths.push(small.path_for(&v).expect("path"));
        // Modification times order eviction; keep them apart.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (files, used) = small.usage();
    assert_eq!(files, 2);
    assert!(used <= small.budget());
    assert!(!paths[0].exists() && paths[1].exists() && paths[2].exists());
    let _ = std::fs::remove_dir_all(&dir);
}

fn run_cli(dir: &std::path::Path, prompt: &str) -> (serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dwarfstar"))
        .args(["run", "-m"])
        .arg(model_path(SMOLLM2))
        .args([
            "-p",
            prompt,
            "-n",
            "12",
            "--temp",
            "0",
            "--json",
            "--kv-cache-dir",
        ])
        .arg(dir)
        .env("DWARFSTAR_LOG", "error")
        .output()
        .expect("dwarfstar runs");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    let j = serde_json::from_slice(&out.stdout).expect("JSON");
    (j, err)
}

#[test]
fn run_with_a_kv_cache_dir_restores_the_prompt_on_the_second_run() {
    let dir = tmp_dir("cli");
    let (first, e1) = run_cli(&dir, TEXT);
    let n = first["prompt_tokens"].as_array().expect("ids").len();
    assert!(e1.contains(&format!("restored 0 of {n}")), "{e1}");
    assert!(e1.contains(&format!("saved {n} prompt tokens")), "{e1}");
    let (second, e2) = run_cli(&dir, TEXT);
    assert!(e2.contains(&format!("restored {n} of {n}")), "{e2}");
    assert_eq!(first["tokens"], second["tokens"]);
    // A different question after the same system text reuses its prefix.
    let other = format!("{TEXT} Which cluster comes first?");
    let (_, e3) = run_cli(&dir, &other);
    assert!(e3.contains("kv cache: restored "), "{e3}");
    assert!(!e3.contains("restored 0 of"), "{e3}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `dwarfstar serve --config CFG` on a free port; its base URL.
fn serve(cfg: &std::path::Path) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_dwarfstar"))
        .args([
            "serve",
            "--http-addr",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--config",
        ])
        .arg(cfg)
        .env("DWARFSTAR_LOG", "warn")
        .env_remove("DWARFSTAR_API_KEYS")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("serve starts");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("reads");
    let at = line
        .find("http://")
        .unwrap_or_else(|| panic!("no address: {line}"));
    let base = line[at..]
        .split_whitespace()
        .next()
        .expect("url")
        .to_string();
    (child, base)
}

/// A greedy completion of `prompt`: (text, cached prompt tokens).
fn complete(base: &str, prompt: &str) -> (String, u64) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(300)))
        .build()
        .into();
    let body = serde_json::json!({"prompt": prompt, "max_tokens": 8, "temperature": 0});
    let mut r = agent
        .post(format!("{base}/v1/completions"))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .expect("answered");
    let v: serde_json::Value =
        serde_json::from_str(&r.body_mut().read_to_string().expect("body")).expect("JSON");
    let text = v["choices"][0]["text"].as_str().expect("text").to_string();
    let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .expect("cached_tokens");
    (text, cached)
}

#[test]
fn serve_restores_a_saved_prompt_after_a_restart() {
    let dir = tmp_dir("serve");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let cfg = dir.join("serve.toml");
    let kv = dir.join("kv");
    // No memory prefix cache: a hit can only come from disk.
    std::fs::write(
        &cfg,
        format!(
            "[model]\npath = {:?}\nkv_cache_dir = {:?}\nkv_cache_size = \"256MiB\"\n[limits]\nprefix_cache_entries = 0\n",
            model_path(SMOLLM2),
            kv
        ),
    )
    .expect("writes");
    let (mut a, base) = serve(&cfg);
    let (first, cached) = complete(&base, TEXT);
    assert_eq!(cached, 0);
    // Saving runs on its own thread: wait for the file.
    let t = std::time::Instant::now();
    let saved = || {
        std::fs::read_dir(&kv).map_or(0, |d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                // A write in progress is a hidden `.tmp-…` file until renamed.
                .filter(|n| n.ends_with(".dskv") && !n.starts_with('.'))
                .count()
        })
    };
    while saved() == 0 {
        assert!(t.elapsed().as_secs() < 60, "no KV file saved");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = a.kill();
    let _ = a.wait();
    let (mut b, base) = serve(&cfg);
    let (second, cached) = complete(&base, TEXT);
    let _ = b.kill();
    let _ = b.wait();
    assert!(cached >= 48, "{cached} tokens restored");
    assert_eq!(first, second);
    let _ = std::fs::remove_dir_all(&dir);
}
