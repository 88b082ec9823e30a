//! `dwarfstar quantize` / `imatrix` / `quality` (crate dwarfstar-quantize):
//! recipes on a DeepSeek-shaped model with rows of 256 and on the tiny
//! DeepSeek V3 (rows of 128, so the documented fallback), the written files'
//! structure, importance matrices read from llama.cpp's files of both
//! formats and collected by us on the same text, overrides, the size
//! budget, and the quality measures.

use std::path::{Path, PathBuf};

use dwarfstar_gguf::{GgmlType, GgufFile, GgufWriter, Value};
use dwarfstar_model::sampler::argmax;
use dwarfstar_model::Model;
use dwarfstar_quantize::collect::{collect, CollectOptions};
use dwarfstar_quantize::quality::compare;
use dwarfstar_quantize::recipe::Class;
use dwarfstar_quantize::{
    check_written, plan, write, Imatrix, ImatrixSource, NoProgress, Options, Override, Plan,
    QuantizeError, Recipe, Why,
};
use dwarfstar_tokenizer::Tokenizer;

use crate::common::*;

fn tiny_f16() -> PathBuf {
    fixtures().join("tiny-deepseek-v3/tiny-dsv3-f16.gguf")
}

fn qdir() -> PathBuf {
    fixtures().join("quantize")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dwarfstar-quantize-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn opts(recipe: Recipe) -> Options<'static> {
    Options {
        recipe,
        overrides: &[],
        imatrix: None,
        target_size: None,
        allow_requantize: false,
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        // Roughly normal: a sum of four uniforms.
        let u = |s: u64| ((s >> 40) & 0xffff) as f32 / 65536.0 - 0.5;
        (u(self.0) + u(self.0 << 16) + u(self.0 << 32) + u(self.0 << 48)) * 0.1
    }
}

/// The tiny DeepSeek V3 with its routed and shared experts widened to
/// rows of 256 (random F16), so every routed tensor takes K/IQ types.
fn deepseek_256() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_deepseek_256).clone()
}

fn build_deepseek_256() -> PathBuf {
    let out = tmp("ds256-f16.gguf");
    let src = GgufFile::open(tiny_f16()).unwrap();
    let mut w = GgufWriter::new(src.alignment()).unwrap();
    let mut meta = src.metadata().clone();
    meta.set("deepseek2.expert_feed_forward_length", Value::U32(256));
    w.add_metadata(&meta).unwrap();
    let mut r = Rng(0x2545_f491_4f6c_dd1d);
    for t in src.tensors() {
        if t.name.contains("_exps") || t.name.contains("_shexp") {
            let mut dims = t.dims.clone();
            dims[0] = 256;
            dims[1] = 256;
            let n: u64 = dims.iter().product();
            let data: Vec<u8> = (0..n)
                .flat_map(|_| half::f16::from_f32(r.next()).to_le_bytes())
                .collect();
            w.add_tensor(t.name.clone(), &dims, GgmlType::F16, data)
                .unwrap();
        } else {
            w.add_tensor(t.name.clone(), &t.dims, t.ty, src.tensor_data(t).to_vec())
                .unwrap();
        }
    }
    w.write_to_path(&out).unwrap();
    out
}

fn quantize(
    input: &Path,
    out: &str,
    o: &Options<'_>,
    im: Option<ImatrixSource<'_>>,
) -> (Plan, PathBuf) {
    let file = GgufFile::open(input).unwrap();
    let p = plan(&file, o).unwrap();
    let path = tmp(out);
    write(&file, &p, im, &path, &NoProgress).unwrap();
    check_written(&path, &p).unwrap();
    (p, path)
}

/// Bits per weight of the written tensors that `pick` selects, from the
/// file's own tensor types and sizes.
fn file_bpw(f: &GgufFile, pick: impl Fn(&str, usize) -> bool) -> f64 {
    let (mut bits, mut n) = (0u64, 0u64);
    for t in f.tensors().iter().filter(|t| pick(&t.name, t.dims.len())) {
        assert_eq!(t.n_bytes, t.row_bytes() * t.rows(), "{}", t.name);
        bits += t.n_bytes * 8;
        n += t.n_elements();
    }
    bits as f64 / n as f64
}

fn is_routed(name: &str) -> bool {
    name.contains("_exps.")
}

/// Greedy tokens after the tiny model's prompt.
fn greedy(path: &Path, n: usize) -> Vec<u32> {
    let (m, _) = Model::open(path, &[]).expect("quantized model loads");
    let prompt = [504u32, 2365, 278, 2697, 275, 1324];
    let mut st = m.new_state(prompt.len() + n);
    let mut logits = m.forward(&prompt, &mut st, false).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        assert!(logits.iter().all(|v| v.is_finite()), "{}", path.display());
        let t = argmax(&logits) as u32;
        out.push(t);
        logits = m.forward(&[t], &mut st, false).unwrap();
    }
    out
}

#[test]
fn dwarf_q2_puts_routed_experts_at_two_bits_and_the_rest_at_eight() {
    let (p, path) = quantize(
        &deepseek_256(),
        "ds256-dwarf-q2.gguf",
        &opts(Recipe::DwarfQ2),
        None,
    );
    assert!(
        p.notes.iter().all(|n| !n.contains("falling back")),
        "{:?}",
        p.notes
    );
    let f = GgufFile::open(&path).unwrap();
    for t in f.tensors() {
        let want = if t.name.contains("ffn_down_exps") {
            GgmlType::Q2_K
        } else if is_routed(&t.name) {
            GgmlType::IQ2_XXS
        } else if t.dims.len() == 1 || t.name.contains("ffn_gate_inp") {
            GgmlType::F32
        } else {
            GgmlType::Q8_0
        };
        assert_eq!(t.ty, want, "{}", t.name);
    }
    let routed = file_bpw(&f, |n, _| is_routed(n));
    let rest = f
        .tensors()
        .iter()
        .filter(|t| !is_routed(&t.name))
        .map(|t| t.n_bytes as f64 * 8.0 / t.n_elements() as f64)
        .fold(f64::INFINITY, f64::min);
    eprintln!("dwarf-q2: routed experts {routed:.3} bpw, smallest other tensor {rest:.2} bpw");
    assert!(routed <= 2.6, "routed experts at {routed} bpw");
    assert!(rest >= 8.0, "a non-expert tensor at {rest} bpw");
    assert_eq!(f.get("general.file_type"), Some(&Value::U32(19)));
    assert_eq!(f.get("general.quantization_version"), Some(&Value::U32(2)));
    assert_eq!(
        f.get("dwarfstar.quantize.recipe"),
        Some(&Value::String("dwarf-q2".into()))
    );
    assert!(p.notes.iter().any(|n| n.contains("uniform importance")));
    // It runs in our engine.
    assert_eq!(greedy(&path, 4).len(), 4);
}

#[test]
fn tiny_dsv3_rows_of_128_take_the_fallback_and_still_run() {
    let (p, path) = quantize(
        &tiny_f16(),
        "tiny-dwarf-q2.gguf",
        &opts(Recipe::DwarfQ2),
        None,
    );
    for t in &p.tensors {
        match t.class {
            Class::Routed(_) if t.cols() == 128 => {
                assert_eq!(t.dst, GgmlType::Q4_0, "{}", t.name);
                assert_eq!(t.why, Why::Fallback(GgmlType::Q2_K), "{}", t.name);
            }
            Class::Routed(_) => assert_eq!(t.dst, GgmlType::IQ2_XXS, "{}", t.name),
            _ => {}
        }
    }
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains("blk.1.ffn_down_exps.weight") && n.contains("Q4_0")),
        "{:?}",
        p.notes
    );
    let toks = greedy(&path, 6);
    eprintln!(
        "tiny dwarf-q2 greedy: {toks:?} (f16: {:?})",
        greedy(&tiny_f16(), 6)
    );

    // dwarf-q4: Q4_K where it fits, Q5_0 (llama-quantize's fallback) where not.
    let (p4, path4) = quantize(
        &tiny_f16(),
        "tiny-dwarf-q4.gguf",
        &opts(Recipe::DwarfQ4),
        None,
    );
    let down = p4
        .tensors
        .iter()
        .find(|t| t.name == "blk.2.ffn_down_exps.weight")
        .unwrap();
    assert_eq!(down.dst, GgmlType::Q5_0);
    assert_eq!(greedy(&path4, 6).len(), 6);
}

#[test]
fn an_override_whose_type_cannot_hold_the_rows_is_an_error() {
    let file = GgufFile::open(tiny_f16()).unwrap();
    let ov = [Override::parse("blk.*.ffn_down_exps=q2_k").unwrap()];
    let o = Options {
        overrides: &ov,
        ..opts(Recipe::DwarfQ2)
    };
    let e = plan(&file, &o).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, QuantizeError::OverrideShape { .. }), "{msg}");
    assert!(
        msg.contains("blk.1.ffn_down_exps.weight") && msg.contains("[128, 256, 8]"),
        "{msg}"
    );

    // An override that fits wins over the recipe and the fallback.
    let ov = [
        Override::parse("re:ffn_down_exps=q8_0").unwrap(),
        Override::parse("blk.*=q4_0").unwrap(),
    ];
    let o = Options {
        overrides: &ov,
        ..opts(Recipe::DwarfQ2)
    };
    let p = plan(&file, &o).unwrap();
    let ty = |n: &str| p.tensors.iter().find(|t| t.name == n).unwrap().dst;
    assert_eq!(ty("blk.3.ffn_down_exps.weight"), GgmlType::Q8_0);
    assert_eq!(ty("blk.3.attn_q_b.weight"), GgmlType::Q4_0);
    assert_eq!(ty("output.weight"), GgmlType::Q8_0);
    // Requantizing a quantized source needs the flag.
    let q4 = GgufFile::open(fixtures().join("tiny-deepseek-v3/tiny-dsv3-Q4_K_M.gguf")).unwrap();
    assert!(matches!(
        plan(&q4, &opts(Recipe::DwarfQ2)),
        Err(QuantizeError::Requantize { .. })
    ));
}

fn tokenizer(path: &Path) -> Tokenizer {
    Tokenizer::from_gguf(&GgufFile::open(path).unwrap()).unwrap()
}

#[test]
fn imatrix_files_of_llama_cpp_read_and_match_ours() {
    let gguf = Imatrix::read(&qdir().join("tiny-dsv3.imatrix.gguf")).unwrap();
    let dat = Imatrix::read(&qdir().join("tiny-dsv3.imatrix.dat")).unwrap();
    assert!(!gguf.legacy && dat.legacy);
    assert_eq!((gguf.chunk_count, gguf.chunk_size), (12, 64));
    assert_eq!(
        gguf.datasets,
        vec!["tests/fixtures/quantize/calib.txt".to_string()]
    );
    assert_eq!(
        gguf.entries.keys().collect::<Vec<_>>(),
        dat.entries.keys().collect::<Vec<_>>()
    );
    for name in gguf.entries.keys() {
        let (a, b) = (gguf.weights(name).unwrap(), dat.weights(name).unwrap());
        assert_eq!(a.len(), b.len(), "{name}");
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                "{name}: {x} vs {y}"
            );
        }
    }
    // Routed experts: counts per expert, k = 2 of 8 per token.
    let c = gguf.expert_counts("blk.2.ffn_up_exps.weight").unwrap();
    assert_eq!(c.len(), 8);
    assert_eq!(c.iter().sum::<u64>(), 12 * 64 * 2);
    assert_eq!(gguf.entries["blk.0.attn_k_b.weight"].sums.len(), 32 * 4);

    // Ours, over the same text and chunks, from the same file.
    let path = tiny_f16();
    let tok = tokenizer(&path);
    let text = std::fs::read_to_string(qdir().join("calib.txt")).unwrap();
    let tokens = tok.encode(&text, true, false).unwrap();
    let (mut m, _) = Model::open(&path, &[]).unwrap();
    let o = CollectOptions {
        chunk: 64,
        max_chunks: None,
        bos: tok.add_bos().then(|| tok.bos_id()).flatten(),
        process_output: false,
        dataset: "tests/fixtures/quantize/calib.txt".into(),
    };
    let ours = collect(&mut m, &tokens, &o, |_| {}).unwrap();
    assert_eq!(ours.chunk_count, 12);
    assert_eq!(
        ours.entries.keys().collect::<Vec<_>>(),
        gguf.entries.keys().collect::<Vec<_>>()
    );
    let mut worst: f32 = 0.0;
    for (name, theirs) in &gguf.entries {
        let e = &ours.entries[name];
        assert_eq!(e.counts.len(), theirs.counts.len(), "{name}");
        let total = |c: &[u64]| c.iter().sum::<u64>();
        assert_eq!(total(&e.counts), total(&theirs.counts), "{name}");
        // Routing of near-ties may differ by a token or two.
        for (a, b) in e.counts.iter().zip(&theirs.counts) {
            assert!(
                a.abs_diff(*b) <= 4,
                "{name}: counts {:?} vs {:?}",
                e.counts,
                theirs.counts
            );
        }
        let s = |v: &[f32]| v.iter().map(|x| *x as f64).sum::<f64>() as f32;
        let rel = (s(&e.sums) - s(&theirs.sums)).abs() / s(&theirs.sums).abs().max(1e-6);
        worst = worst.max(rel);
        assert!(
            rel < 2e-2,
            "{name}: sums {} vs {}",
            s(&e.sums),
            s(&theirs.sums)
        );
    }
    eprintln!(
        "our imatrix vs llama-imatrix: worst relative difference of a tensor's sum {worst:.2e}"
    );

    // Round trips through both formats.
    let back = Imatrix::read(&{
        let p = tmp("ours.imatrix.gguf");
        ours.write(&p, false).unwrap();
        p
    })
    .unwrap();
    assert_eq!(back, ours);
    let p = tmp("ours.imatrix.dat");
    ours.write(&p, true).unwrap();
    let legacy = Imatrix::read(&p).unwrap();
    for name in ours.entries.keys() {
        let (a, b) = (ours.weights(name).unwrap(), legacy.weights(name).unwrap());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{name}");
        }
    }
}

#[test]
fn imatrix_weights_reach_the_quantizer_and_the_metadata() {
    let im = Imatrix::read(&qdir().join("tiny-dsv3.imatrix.gguf")).unwrap();
    let o = Options {
        imatrix: Some(&im),
        ..opts(Recipe::DwarfQ2)
    };
    let src = ImatrixSource {
        path: "tiny-dsv3.imatrix.gguf",
        data: &im,
    };
    let (p, path) = quantize(&tiny_f16(), "tiny-dwarf-q2-im.gguf", &o, Some(src));
    let iq2: Vec<_> = p
        .tensors
        .iter()
        .filter(|t| t.dst == GgmlType::IQ2_XXS)
        .collect();
    assert!(!iq2.is_empty() && iq2.iter().all(|t| t.weighted));
    assert!(p.notes.iter().all(|n| !n.contains("uniform importance")));
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(
        f.get("quantize.imatrix.file"),
        Some(&Value::String("tiny-dsv3.imatrix.gguf".into()))
    );
    assert_eq!(
        f.get("quantize.imatrix.chunks_count"),
        Some(&Value::U32(12))
    );
    // Weighted and unweighted IQ2_XXS differ.
    let (_, plain) = quantize(
        &tiny_f16(),
        "tiny-dwarf-q2-plain.gguf",
        &opts(Recipe::DwarfQ2),
        None,
    );
    let g = GgufFile::open(&plain).unwrap();
    let name = "blk.1.ffn_up_exps.weight";
    assert_ne!(f.tensor_bytes(name), g.tensor_bytes(name));
    assert_eq!(greedy(&path, 4).len(), 4);
}

#[test]
fn target_size_fits_the_file_and_spends_the_budget() {
    let input = deepseek_256();
    let file = GgufFile::open(&input).unwrap();
    let low = plan(&file, &opts(Recipe::DwarfQ2)).unwrap();
    let high = plan(&file, &opts(Recipe::Uniform(GgmlType::Q8_0))).unwrap();
    let target = (low.data_bytes() + high.data_bytes()) / 2 + file.data_offset() + 8192;
    let o = Options {
        target_size: Some(target),
        ..opts(Recipe::DwarfQ2)
    };
    let (p, path) = quantize(&input, "ds256-budget.gguf", &o, None);
    let rows = p.budget.as_ref().unwrap();
    assert_eq!(rows.len(), 9, "3 MoE layers x gate/up/down");
    let size = std::fs::metadata(&path).unwrap().len();
    eprintln!("target {target}, written {size}");
    for r in rows {
        eprintln!(
            "  {:<28} {:<8} {:>8} rel.err {:.3}",
            r.name,
            r.ty.name(),
            r.bytes,
            r.rel_error
        );
    }
    assert!(size <= target, "{size} > {target}");
    assert!(size > low.data_bytes(), "the budget was not used");
    assert!(rows.iter().any(|r| r.ty != GgmlType::IQ2_XXS));
    assert!(p
        .tensors
        .iter()
        .filter(|t| matches!(t.class, Class::Routed(_)))
        .all(|t| t.why == Why::Budget));
    let too_small = Options {
        target_size: Some(1 << 20),
        ..opts(Recipe::DwarfQ2)
    };
    assert!(matches!(
        plan(&file, &too_small),
        Err(QuantizeError::TargetTooSmall { .. })
    ));
    assert_eq!(greedy(&path, 3).len(), 3);
}

#[test]
fn quality_of_a_model_against_itself_and_a_quantization() {
    let path = tiny_f16();
    let tok = tokenizer(&path);
    let text = std::fs::read_to_string(qdir().join("calib.txt")).unwrap();
    let tokens = tok.encode(&text, true, false).unwrap();
    let bos = tok.add_bos().then(|| tok.bos_id()).flatten();
    let (a, _) = Model::open(&path, &[]).unwrap();
    let same = compare(&a, &a, &tokens, 64, bos, Some(3), |_, _| {}).unwrap();
    assert_eq!(same.n_positions, 3 * 31);
    assert!(same.kl_max < 1e-9 && same.top1_agreement == 1.0);
    assert_eq!(same.ppl_a, same.ppl_b);
    let (_, q) = quantize(
        &path,
        "tiny-q8_0.gguf",
        &opts(Recipe::Uniform(GgmlType::Q8_0)),
        None,
    );
    let (b, _) = Model::open(&q, &[]).unwrap();
    let r = compare(&a, &b, &tokens, 64, bos, Some(3), |_, _| {}).unwrap();
    eprintln!("{r:?}");
    assert!(r.kl_mean > 0.0 && r.kl_mean < 0.05, "{r:?}");
    assert!(r.kl_p99 >= r.kl_median && r.kl_max >= r.kl_p99);
    assert!(r.top1_agreement > 0.8, "{r:?}");
    assert!((r.ppl_b / r.ppl_a - 1.0).abs() < 0.05, "{r:?}");
}

fn dwarfstar(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_dwarfstar"))
        .args(args)
        .env("DWARFSTAR_LOG", "error")
        .output()
        .expect("dwarfstar runs")
}

fn ok(args: &[&str]) -> std::process::Output {
    let out = dwarfstar(args);
    assert!(
        out.status.success(),
        "dwarfstar {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn cli_imatrix_quantize_and_quality_end_to_end() {
    let model = tiny_f16();
    let model = model.to_str().unwrap();
    let calib = qdir().join("calib.txt");
    let calib = calib.to_str().unwrap();
    let im = tmp("cli.imatrix.dat");
    ok(&[
        "imatrix",
        model,
        "--text",
        calib,
        "-c",
        "64",
        "--chunks",
        "2",
        "-o",
        im.to_str().unwrap(),
        "--output-format",
        "dat",
        "-t",
        "2",
    ]);
    let m = Imatrix::read(&im).unwrap();
    assert!(m.legacy && m.chunk_count == 2 && m.entries.contains_key("blk.1.ffn_up_exps.weight"));

    let out = tmp("cli-dwarf-q4.gguf");
    let o = ok(&[
        "quantize",
        model,
        out.to_str().unwrap(),
        "--recipe",
        "dwarf-q4",
        "--imatrix",
        im.to_str().unwrap(),
        "--override",
        "blk.0.ffn_*=q4_0",
        "-t",
        "2",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("fall back to Q5_0") && err.contains("wrote"),
        "{err}"
    );
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.tensor("blk.0.ffn_up.weight").unwrap().ty, GgmlType::Q4_0);
    assert_eq!(
        f.tensor("blk.1.ffn_up_exps.weight").unwrap().ty,
        GgmlType::Q4_K
    );
    assert_eq!(f.get("general.file_type"), Some(&Value::U32(15)));
    assert!(f.get("quantize.imatrix.entries_count").is_some());

    let o = ok(&[
        "quality",
        model,
        out.to_str().unwrap(),
        "--text",
        calib,
        "--ctx",
        "64",
        "--chunks",
        "2",
        "--json",
        "-t",
        "2",
    ]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["positions"], 2 * 31);
    let kl = j["kl_mean"].as_f64().unwrap();
    assert!(kl > 0.0 && kl < 0.5, "{j}");

    // A bad override fails with the tensor named, and leaves no file.
    let bad = tmp("cli-bad.gguf");
    let o = dwarfstar(&[
        "quantize",
        model,
        bad.to_str().unwrap(),
        "--recipe",
        "q8_0",
        "--override",
        "*ffn_down_exps*=q6_k",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("blk.1.ffn_down_exps.weight"), "{err}");
    assert!(!bad.exists());
}

/// `dwarf-q2` on a DeepSeek V4 source gives ds4's layout: the stream-mixing
/// matrices (hyper-connections, compressors, indexer), the router and the
/// token embedding F16; attention, shared expert and head Q8_0; norms,
/// sinks and hyper-connection bases F32; `tid2eid` kept I32; routed
/// experts at two bits where their rows allow (the tiny model's rows of
/// 128 and 64 take llama-quantize's fallbacks). The result runs.
#[test]
fn dwarf_q2_on_deepseek_v4_gives_ds4s_layout() {
    let src = fixtures().join("tiny-deepseek-v4/tiny-dsv4-f32.gguf");
    let o = Options {
        allow_requantize: true, // the source's experts are MXFP4
        ..opts(Recipe::DwarfQ2)
    };
    let (_, path) = quantize(&src, "dsv4-dwarf-q2.gguf", &o, None);
    let f = GgufFile::open(&path).unwrap();
    for t in f.tensors() {
        let n = t.name.as_str();
        let want = if n.contains("tid2eid") {
            GgmlType::I32
        } else if t.dims.len() == 1 {
            GgmlType::F32
        } else if n.contains("_exps") {
            // IQ2_XXS / Q2_K need rows of 256: gate/up (128) → IQ4_NL,
            // down (64) → Q4_0.
            if n.contains("ffn_down_exps") {
                GgmlType::Q4_0
            } else {
                GgmlType::IQ4_NL
            }
        } else if n.contains("hc_")
            || n.contains("compressor")
            || n.contains("indexer")
            || n.contains("ffn_gate_inp")
            || n == "token_embd.weight"
        {
            GgmlType::F16
        } else {
            GgmlType::Q8_0
        };
        assert_eq!(t.ty, want, "{n}");
    }
    let (m, _) = Model::open(&path, &[]).expect("ds4-layout file loads");
    let toks = [5u32, 17, 300, 41, 9, 1200, 77, 3];
    let mut st = m.new_state(16);
    let logits = m.forward(&toks, &mut st, true).unwrap();
    assert!(logits.iter().all(|v| v.is_finite()));
}
