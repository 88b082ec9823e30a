//! Synthetic DeepSeek V4 Flash files (`dwarfstar synth --arch deepseek4`):
//! a small one loads, `inspect --json` shows Flash's structure (ratios,
//! hash layers, four hyper-connection streams, the MTP block), every
//! tensor has the dwarf-q2 recipe's type and the plan's dims and the file
//! its predicted size, greedy generation gives finite varied tokens (also
//! through 43 layers), routing is Zipf-skewed (flat with skew 0), output
//! depends only on the seed, the CLI's `--no-mtp` / `--type` work, and
//! paged logits equal the mapped file's bit for bit.

use dwarfstar_gguf::GgufFile;
use dwarfstar_kernels::GgmlType;
use dwarfstar_model::sampler::argmax;
use dwarfstar_model::synth::{self, ds4::Ds4Plan, probe, SynthConfig, SynthReport};
use dwarfstar_model::Model;
use dwarfstar_tokenizer::{Tokenizer, TokenizerSpec};

use crate::common::*;
use crate::paging_v4::paged_equals_mapped;
use crate::synth_moe::{assert_only_the_seed_decides, tokenizer_source, TempFile};

/// A V4 config: `layers` layers of hidden 256 over `experts` experts.
fn small(layers: usize, experts: usize, seed: u64) -> SynthConfig {
    let mut c = SynthConfig::deepseek4(None);
    c.hidden = Some(256);
    c.layers = Some(layers);
    c.experts = Some(experts);
    c.seed = seed;
    c
}

fn write(path: &std::path::Path, cfg: &SynthConfig) -> SynthReport<Ds4Plan> {
    synth::ds4::write(path, cfg, &tokenizer_source()).expect("synthetic V4 written")
}

/// The type ds4's dwarf-q2 recipe gives a tensor.
fn recipe_type(name: &str) -> GgmlType {
    let ends = |s: &str| name.ends_with(s);
    if ends("ffn_gate_exps.weight") || ends("ffn_up_exps.weight") {
        GgmlType::IQ2_XXS
    } else if ends("ffn_down_exps.weight") {
        GgmlType::Q2_K
    } else if ends("ffn_gate_tid2eid.weight") {
        GgmlType::I32
    } else if name == "token_embd.weight"
        || (name.contains("hc_") && ends("_fn.weight"))
        || [
            "compressor_kv.weight",
            "compressor_gate.weight",
            "compressor_ape.weight",
            ".indexer.proj.weight",
            ".indexer.attn_q_b.weight",
            ".ffn_gate_inp.weight",
        ]
        .iter()
        .any(|s| ends(s))
    {
        GgmlType::F16
    } else if name == "output.weight"
        || [
            ".attn_q_a.weight",
            ".attn_q_b.weight",
            ".attn_kv.weight",
            ".attn_output_a.weight",
            ".attn_output_b.weight",
            "_shexp.weight",
            ".nextn.eh_proj.weight",
        ]
        .iter()
        .any(|s| ends(s))
    {
        GgmlType::Q8_0
    } else {
        GgmlType::F32
    }
}

/// Greedy generation of `n` tokens after `prompt`: the tokens, and the
/// standard deviation of the last logits; every logit checked finite.
fn greedy(m: &Model, prompt: &[u32], n: usize) -> (Vec<u32>, f32) {
    let mut st = m.new_state(prompt.len() + n + 1);
    let mut logits = m.forward(prompt, &mut st, false).expect("prompt");
    let mut out = Vec::new();
    for i in 0..n {
        assert!(
            logits.iter().all(|v| v.is_finite()),
            "non-finite logits at step {i}"
        );
        let t = argmax(&logits) as u32;
        out.push(t);
        logits = m.forward(&[t], &mut st, false).expect("decode");
    }
    let mean = logits.iter().sum::<f32>() / logits.len() as f32;
    let sd = (logits.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / logits.len() as f32).sqrt();
    (out, sd)
}

fn distinct(t: &[u32]) -> usize {
    let mut s = t.to_vec();
    s.sort_unstable();
    s.dedup();
    s.len()
}

#[test]
fn small_v4_synth_has_flash_structure_and_generates() {
    let f = TempFile::new("v4-small");
    let r = write(&f.0, &small(5, 16, 7));
    let p = &r.plan;
    eprintln!("{}", p.describe());

    // The file is the plan: its tensors in order, the recipe's types, the
    // predicted size.
    let file = GgufFile::open(&f.0).unwrap();
    let planned = p.tensors();
    assert_eq!(file.tensors().len(), planned.len());
    for (t, want) in file.tensors().iter().zip(&planned) {
        assert_eq!(t.name, want.name);
        assert_eq!(t.dims, want.dims, "{}", t.name);
        assert_eq!(t.ty, want.ty, "{}", t.name);
        assert_eq!(t.ty, recipe_type(&t.name), "{}", t.name);
    }
    assert_eq!(file.len(), r.bytes);
    assert_eq!(file.len(), file.data_offset() + p.total_bytes());
    for name in [
        "blk.0.ffn_gate_tid2eid.weight",
        "blk.2.ffn_gate_tid2eid.weight",
        "blk.3.exp_probs_b.bias",
        "blk.2.indexer.attn_q_b.weight",
        "blk.2.indexer_compressor_ape.weight",
        "blk.3.attn_compressor_kv.weight",
        "blk.5.nextn.eh_proj.weight",
        "blk.5.nextn.shared_head_norm.weight",
        "output_hc_fn.weight",
    ] {
        assert!(file.tensor(name).is_some(), "{name} missing");
    }
    assert!(file.tensor("blk.3.ffn_gate_tid2eid.weight").is_none());
    assert!(file.tensor("blk.1.attn_compressor_kv.weight").is_none());
    assert!(file.tensor("blk.3.indexer.proj.weight").is_none());
    assert_eq!(file.get_u32("deepseek4.block_count").unwrap(), 6);
    assert_eq!(file.get_u32("deepseek4.nextn_predict_layers").unwrap(), 1);
    assert_eq!(file.get_u32("deepseek4.vocab_size").unwrap(), 49152);
    assert_eq!(file.get_u32("deepseek4.expert_gating_func").unwrap(), 4);
    assert_eq!(file.get_u32("general.file_type").unwrap(), 19);
    // The llama.cpp converter's keys (its tiny V4 has no YaRN and no MTP
    // export), and ds4's vocab_size.
    let tiny = GgufFile::open(fixtures().join("tiny-deepseek-v4/tiny-dsv4-f32.gguf")).unwrap();
    let keys = |f: &GgufFile| -> std::collections::BTreeSet<String> {
        f.metadata()
            .iter()
            .map(|(k, _)| k.to_string())
            .filter(|k| !k.starts_with("tokenizer."))
            .collect()
    };
    let mut want = keys(&tiny);
    for k in [
        "vocab_size",
        "nextn_predict_layers",
        "rope.scaling.type",
        "rope.scaling.factor",
        "rope.scaling.original_context_length",
        "rope.scaling.yarn_beta_fast",
        "rope.scaling.yarn_beta_slow",
    ] {
        want.insert(format!("deepseek4.{k}"));
    }
    assert_eq!(keys(&file), want);
    drop(file);

    // inspect --json: Flash's pattern.
    let path = f.0.to_str().unwrap();
    let out = ok(dwarfstar(&["inspect", "--json", path]), "inspect");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(j["architecture"], "deepseek4");
    assert_eq!(
        j["model_error"],
        serde_json::Value::Null,
        "{}",
        j["model_error"]
    );
    let v4 = &j["deepseek4"];
    assert_eq!(
        v4["compress_ratios"],
        serde_json::json!([0, 0, 4, 128, 4, 0])
    );
    assert_eq!(v4["hash_layers"], 3);
    assert_eq!(v4["hc_mult"], 4);
    assert_eq!(v4["sliding_window"], 128);
    assert_eq!(v4["mtp"], true);

    // The loader binds it; greedy generation varies and stays finite.
    let (m, gf) = Model::open(&f.0, &[]).expect("synthetic V4 loads");
    assert_eq!(m.arch(), "deepseek4");
    let Model::Deepseek4(d) = &m else {
        panic!("not deepseek4")
    };
    assert_eq!((d.hp.n_layer, d.hp.n_hash, d.hp.hc_mult), (5, 3, 4));
    assert_eq!((d.hp.head_dim, d.hp.n_rot, d.hp.idx_dim), (512, 64, 128));
    assert!(d.w.mtp.is_some(), "MTP block bound");
    let tok = Tokenizer::new(TokenizerSpec::from_gguf(&gf).unwrap()).unwrap();
    let prompt = tok.encode("Once upon a time", false, false).unwrap();
    let (toks, sd) = greedy(&m, &prompt, 32);
    eprintln!(
        "greedy: {toks:?} ({} distinct), last logit sd {sd}: {:?}",
        distinct(&toks),
        tok.decode(&toks)
    );
    assert!(distinct(&toks) >= 8, "collapsed: {toks:?}");
    assert!((0.5..20.0).contains(&sd), "logit spread {sd}");
}

#[test]
fn deep_v4_synth_stays_finite() {
    let f = TempFile::new("v4-deep");
    let r = write(&f.0, &small(43, 8, 3));
    assert_eq!(r.plan.ratios().len(), 44);
    let (m, _) = Model::open(&f.0, &[]).unwrap();
    let prompt: Vec<u32> = (0..24u32).map(|i| i * 977 % 49152).collect();
    let mut st = m.new_state(64);
    let all = m.forward(&prompt, &mut st, true).unwrap();
    assert!(all.iter().all(|v| v.is_finite()));
    let max = all.iter().fold(0f32, |a, v| a.max(v.abs()));
    assert!(max < 100.0, "max |logit| {max}");
    let (toks, sd) = greedy(&m, &prompt, 32);
    assert!(distinct(&toks) >= 8, "collapsed: {toks:?}");
    assert!((0.5..20.0).contains(&sd), "logit spread {sd}");
}

/// Expert popularity over a text, every layer's counts (hash-routed ones
/// included): the share of selections the top quarter of experts takes.
fn top_quarter(path: &std::path::Path, n_layer: usize, top_k: usize) -> f64 {
    let (mut m, file) = Model::open(path, &[]).expect("synthetic V4 loads");
    let tok = Tokenizer::new(TokenizerSpec::from_gguf(&file).unwrap()).unwrap();
    let text = "The history of the mountain village begins with a small group of \
        shepherds who crossed the pass every summer. Over the centuries they built stone \
        houses, a church with a wooden tower, and terraces where barley and potatoes grew \
        in the short season. Travellers wrote about the bells and the cold water of the \
        spring, the bread baked once a week in a shared oven, and the long winters.";
    let ids = tok.encode(text, false, false).unwrap();
    let c = probe::observed_expert_counts(&mut m, &ids).expect("routes counted");
    assert_eq!(c.layers.len(), n_layer, "every trunk layer routes");
    for (il, counts) in &c.layers {
        let total: u64 = counts.iter().sum();
        assert_eq!(total, (ids.len() * top_k) as u64, "layer {il}: {counts:?}");
    }
    eprintln!("{}", c.histogram());
    c.top_share(0.25)
}

#[test]
fn v4_synth_routes_skewed_and_flat() {
    let (a, b) = (TempFile::new("v4-skew"), TempFile::new("v4-flat"));
    let mut cfg = small(6, 16, 2);
    write(&a.0, &cfg);
    cfg.skew = 0.0;
    write(&b.0, &cfg);
    let skewed = top_quarter(&a.0, 6, 6);
    let flat = top_quarter(&b.0, 6, 6);
    eprintln!("top quarter of 16 experts (top-6): skew 1 {skewed:.3}, skew 0 {flat:.3}");
    assert!(skewed > 0.42, "skewed top-quarter share {skewed}");
    assert!(flat < 0.37, "flat top-quarter share {flat}");
}

#[test]
fn v4_synth_depends_only_on_the_seed() {
    assert_only_the_seed_decides("v4", small(3, 8, 11), |p, c| {
        write(p, c);
    });
}

/// The CLI: `--no-mtp` drops the MTP block (the ratios keep their trailing
/// 0), `--type q4_k` types all routed experts Q4_K.
#[test]
fn v4_synth_cli_no_mtp_and_expert_type() {
    let f = TempFile::new("v4-cli");
    let tok = model_path(SMOLLM2);
    let args = [
        "synth",
        f.0.to_str().unwrap(),
        "--arch",
        "deepseek4",
        "--hidden",
        "256",
        "--layers",
        "3",
        "--experts",
        "8",
        "--top-k",
        "2",
        "--no-mtp",
        "--type",
        "q4_k",
        "-t",
        "2",
        "--tokenizer-from",
        tok.to_str().unwrap(),
    ];
    ok(dwarfstar(&args), "synth");
    let file = GgufFile::open(&f.0).unwrap();
    assert_eq!(file.get_u32("deepseek4.block_count").unwrap(), 3);
    assert!(file.get("deepseek4.nextn_predict_layers").is_none());
    assert_eq!(file.get_u32("deepseek4.expert_used_count").unwrap(), 2);
    assert_eq!(
        file.get_array("deepseek4.attention.compress_ratios")
            .unwrap()
            .len(),
        4
    );
    assert!(file.tensor("blk.3.attn_norm.weight").is_none());
    for t in file.tensors() {
        if t.name.contains("_exps.") {
            assert_eq!(t.ty, GgmlType::Q4_K, "{}", t.name);
        }
    }
    assert_eq!(
        file.get_u32("deepseek4.attention.output_group_count")
            .unwrap(),
        4
    );
    drop(file);
    let out = ok(
        dwarfstar(&["inspect", "--json", f.0.to_str().unwrap()]),
        "inspect",
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(j["deepseek4"]["mtp"], false);
    assert_eq!(
        j["deepseek4"]["compress_ratios"],
        serde_json::json!([0, 0, 4])
    );
    assert_eq!(j["deepseek4"]["hash_layers"], 2);
}

/// Paged under the tightest budget (experts evicted, layers streamed), the
/// synthetic V4 gives the mapped file's logits to the bit, with plain and
/// llama-exact kernels.
#[test]
fn v4_synth_paged_is_bit_identical() {
    let f = TempFile::new("v4-paged");
    write(&f.0, &small(5, 16, 5));
    let toks: Vec<u32> = (0..24u32).map(|i| (i * 7919 + 13) % 49152).collect();
    for exact in [false, true] {
        paged_equals_mapped(&f.0, &toks, "synthetic V4 paged", exact);
    }
}

/// `quantize --recipe dwarf-q2` on a V4 source whose experts are F16 gives
/// exactly ds4's layout, tensor by tensor the types `synth` writes for
/// dwarf-q2 (routed gate/up IQ2_XXS, down Q2_K, attention, shared expert
/// and head Q8_0, stream mixing, router and embedding F16, the rest F32,
/// `tid2eid` I32), and the result runs.
#[test]
fn dwarf_q2_quantize_of_a_v4_source_gives_ds4s_layout() {
    use dwarfstar_quantize::{check_written, plan, write as qwrite, NoProgress, Options, Recipe};
    let src = TempFile::new("v4-f16-experts.gguf");
    let mut cfg = small(4, 8, 11);
    cfg.ty = GgmlType::F16;
    cfg.down_ty = Some(GgmlType::F16);
    write(&src.0, &cfg);
    let out = TempFile::new("v4-f16-experts-dwarf-q2.gguf");
    let file = GgufFile::open(&src.0).expect("source");
    let opts = Options {
        recipe: Recipe::DwarfQ2,
        overrides: &[],
        imatrix: None,
        target_size: None,
        allow_requantize: false,
    };
    let p = plan(&file, &opts).expect("plan");
    qwrite(&file, &p, None, &out.0, &NoProgress).expect("quantized");
    check_written(&out.0, &p).expect("written as planned");
    let q = GgufFile::open(&out.0).expect("output");
    assert_eq!(q.tensors().len(), file.tensors().len());
    for t in q.tensors() {
        assert_eq!(t.ty, recipe_type(&t.name), "{}", t.name);
    }
    let (m, _) = Model::open(&out.0, &[]).expect("quantized V4 loads");
    let (toks, _) = greedy(&m, &[1, 2, 3, 4], 8);
    assert_eq!(toks.len(), 8);
}
