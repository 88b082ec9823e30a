//! Synthetic deepseek2 MoE files (`dwarfstar synth`): a small one loads,
//! generates finite logits, carries SmolLM2's real tokenizer, routes with
//! Zipf-like expert popularity (and flat popularity with `skew = 0`), a
//! deep one stays finite through 60 layers, and output depends only on
//! the seed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dwarfstar_gguf::GgufFile;
use dwarfstar_kernels::GgmlType;
use dwarfstar_model::sampler::argmax;
use dwarfstar_model::synth::{self, probe, SynthConfig};
use dwarfstar_model::Model;
use dwarfstar_tokenizer::{Tokenizer, TokenizerSpec};

use crate::common::*;

/// A temporary file removed on drop.
pub(crate) struct TempFile(pub PathBuf);

impl TempFile {
    pub(crate) fn new(tag: &str) -> TempFile {
        TempFile(
            std::env::temp_dir().join(format!("dwarfstar-synth-{}-{tag}.gguf", std::process::id())),
        )
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub(crate) fn tokenizer_source() -> GgufFile {
    GgufFile::open(model_path(SMOLLM2)).expect("SmolLM2 opens")
}

fn write(path: &Path, cfg: &SynthConfig) -> synth::SynthReport {
    synth::write(path, cfg, &tokenizer_source()).expect("synthetic file written")
}

const TEXT: &str = "The history of the mountain village begins with a small group of \
shepherds who crossed the pass every summer. Over the centuries they built stone \
houses, a church with a wooden tower, and terraces where barley and potatoes grew \
in the short season. Travellers wrote about the bells and the cold water of the spring.";

fn routing_share(path: &Path) -> (f64, probe::RouteCounts) {
    let (m, file) = Model::open(path, &[]).expect("synthetic model loads");
    let tok = Tokenizer::new(TokenizerSpec::from_gguf(&file).unwrap()).unwrap();
    let ids = tok.encode(TEXT, false, false).unwrap();
    assert!(ids.len() > 40, "{} tokens", ids.len());
    let Model::Deepseek2(d) = &m else {
        panic!("not deepseek2")
    };
    let c = probe::expert_counts(d, &ids).expect("routing counted");
    (c.top_share(0.25), c)
}

#[test]
fn small_synthetic_moe_loads_generates_and_routes_skewed() {
    let f = TempFile::new("small");
    let mut cfg = SynthConfig::new(Some(30 << 20), GgmlType::Q4_K);
    cfg.seed = 7;
    let r = write(&f.0, &cfg);
    let size = std::fs::metadata(&f.0).unwrap().len();
    assert!(
        (20 << 20..40 << 20).contains(&size),
        "{size} bytes: {}",
        r.plan.describe()
    );

    let (m, file) = Model::open(&f.0, &[]).expect("synthetic model loads");
    assert_eq!(m.arch(), "deepseek2");
    let Model::Deepseek2(d) = &m else {
        panic!("not deepseek2")
    };
    let moe = d.hp.moe.as_ref().expect("MoE layers");
    assert_eq!(moe.n_expert, r.plan.n_expert);
    assert_eq!(d.hp.n_layer_dense_lead, r.plan.n_dense);
    assert!(d.hp.n_layer > d.hp.n_layer_dense_lead);
    assert!(d.w.layers[d.hp.n_layer - 1].ffn_norm.len() == d.hp.n_embd);
    // The real tokenizer: SmolLM2's vocabulary and chat template.
    let tok = Tokenizer::new(TokenizerSpec::from_gguf(&file).unwrap()).unwrap();
    assert_eq!(m.n_vocab(), 49152);
    assert!(file.get("tokenizer.chat_template").is_some());
    let prompt = tok.encode("Once upon a time", false, false).unwrap();
    assert_eq!(prompt, vec![6403, 1980, 253, 655]);

    let mut st = m.new_state(64);
    let mut logits = m.forward(&prompt, &mut st, false).unwrap();
    let mut out = Vec::new();
    for _ in 0..8 {
        assert!(logits.iter().all(|v| v.is_finite()), "non-finite logits");
        let t = argmax(&logits);
        out.push(t);
        logits = m.forward(&[t], &mut st, false).unwrap();
    }
    let sd = {
        let mean = logits.iter().sum::<f32>() / logits.len() as f32;
        (logits.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / logits.len() as f32).sqrt()
    };
    assert!((0.5..20.0).contains(&sd), "logit spread {sd}");
    assert!(!tok.decode(&out).is_empty());

    // Zipf-like popularity: the top quarter of experts takes far more than
    // a quarter of the selections; a flat router does not.
    let (skewed, counts) = routing_share(&f.0);
    eprintln!(
        "skew 1: top quarter gets {:.1}%\n{}",
        100.0 * skewed,
        counts.histogram()
    );
    assert!(skewed > 0.45, "top-quarter share {skewed}");
    let flat_f = TempFile::new("flat");
    cfg.skew = 0.0;
    write(&flat_f.0, &cfg);
    let (flat, counts) = routing_share(&flat_f.0);
    eprintln!(
        "skew 0: top quarter gets {:.1}%\n{}",
        100.0 * flat,
        counts.histogram()
    );
    assert!(flat < 0.40, "flat top-quarter share {flat}");
}

#[test]
fn sixty_layers_stay_finite() {
    let f = TempFile::new("deep");
    let mut cfg = SynthConfig::new(None, GgmlType::Q2_K);
    cfg.layers = Some(60);
    cfg.seed = 3;
    let r = write(&f.0, &cfg);
    assert_eq!(r.plan.n_dense, 3);
    let (m, _) = Model::open(&f.0, &[]).unwrap();
    let prompt: Vec<u32> = (0..24u32).map(|i| i * 977 % 49152).collect();
    let mut st = m.new_state(32);
    let all = m.forward(&prompt, &mut st, true).unwrap();
    assert!(all.iter().all(|v| v.is_finite()));
    let max = all.iter().fold(0f32, |a, v| a.max(v.abs()));
    assert!(max < 100.0, "max |logit| {max}");
}

/// Writes `cfg` (seed 11) with the global pool and with a pool of one
/// thread, and with seed 12: the first two must be the same bytes, the
/// third other bytes of the same length. Returns the first file.
pub(crate) fn assert_only_the_seed_decides(
    tag: &str,
    mut cfg: SynthConfig,
    write: impl Fn(&std::path::Path, &SynthConfig) + Sync,
) -> TempFile {
    let (a, b, c) = (
        TempFile::new(&format!("{tag}-seed-a")),
        TempFile::new(&format!("{tag}-seed-b")),
        TempFile::new(&format!("{tag}-seed-c")),
    );
    cfg.seed = 11;
    write(&a.0, &cfg);
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| write(&b.0, &cfg));
    cfg.seed = 12;
    write(&c.0, &cfg);
    let (ba, bb, bc) = (
        std::fs::read(&a.0).unwrap(),
        std::fs::read(&b.0).unwrap(),
        std::fs::read(&c.0).unwrap(),
    );
    assert!(ba == bb, "{tag}: same seed, different bytes");
    assert_eq!(ba.len(), bc.len());
    assert!(ba != bc, "{tag}: another seed, same bytes");
    a
}

#[test]
fn output_depends_only_on_the_seed() {
    let mut cfg = SynthConfig::new(None, GgmlType::Q8_0);
    cfg.layers = Some(2);
    let a = assert_only_the_seed_decides("moe", cfg, |p, c| {
        write(p, c);
    });
    // The loader reads every tensor as llama.cpp names and shapes them.
    let f = Arc::new(GgufFile::open(&a.0).unwrap());
    for name in [
        "blk.0.ffn_gate.weight",
        "blk.1.ffn_gate_exps.weight",
        "blk.1.ffn_down_shexp.weight",
        "blk.1.exp_probs_b.bias",
        "blk.1.attn_k_b.weight",
        "blk.1.attn_kv_a_mqa.weight",
        "output.weight",
    ] {
        assert!(f.tensor(name).is_some(), "{name} missing");
    }
    assert_eq!(f.get_u32("deepseek2.expert_gating_func").unwrap(), 2);
    Model::load(f).expect("loads");
}
