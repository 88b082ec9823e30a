//! Dense architectures with no downloadable model (qwen2 with its QKV
//! biases, qwen3 with its per-head norms, a llama with a Q8_0 matrix),
//! built as small random GGUFs with our own writer: they load, decode with
//! the cache exactly as a one-pass run, batch several sequences exactly as
//! separate runs, and bad files get errors that name what is wrong.

use std::sync::Arc;

use dwarfstar_gguf::{GgufFile, GgufWriter, Value};
use dwarfstar_kernels::{quantize_row, GgmlType};
use dwarfstar_model::{Model, ModelError};

const E: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HD: usize = 16;
const FF: usize = 96;
const LAYERS: usize = 2;
const VOCAB: usize = 128;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.4
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A small random model of `arch`; `skip` leaves a tensor out, `kv_heads`
/// is what the metadata claims.
fn build(arch: &str, skip: Option<&str>, kv_heads: u32) -> Vec<u8> {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15 ^ arch.len() as u64);
    let mut w = GgufWriter::new(32).unwrap();
    let k = |s: &str| format!("{arch}.{s}");
    w.add_kv("general.architecture", arch).unwrap();
    w.add_kv(k("block_count"), LAYERS as u32).unwrap();
    w.add_kv(k("context_length"), 256u32).unwrap();
    w.add_kv(k("embedding_length"), E as u32).unwrap();
    w.add_kv(k("feed_forward_length"), FF as u32).unwrap();
    w.add_kv(k("attention.head_count"), HEADS as u32).unwrap();
    w.add_kv(k("attention.head_count_kv"), kv_heads).unwrap();
    w.add_kv(k("attention.key_length"), HD as u32).unwrap();
    w.add_kv(k("attention.value_length"), HD as u32).unwrap();
    w.add_kv(k("attention.layer_norm_rms_epsilon"), 1e-6f32)
        .unwrap();
    w.add_kv(k("rope.freq_base"), 10000f32).unwrap();
    w.add_kv(k("vocab_size"), VOCAB as u32).unwrap();
    let mut tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)> = Vec::new();
    let mut mat = |name: String, cols: usize, rows: usize, r: &mut Rng, q8: bool| {
        let v = r.vec(cols * rows);
        if q8 {
            let mut b = vec![0u8; GgmlType::Q8_0.row_bytes(cols * rows).unwrap()];
            quantize_row(GgmlType::Q8_0, &v, &mut b).unwrap();
            tensors.push((name, vec![cols as u64, rows as u64], GgmlType::Q8_0, b));
        } else {
            tensors.push((
                name,
                vec![cols as u64, rows as u64],
                GgmlType::F32,
                f32_bytes(&v),
            ));
        }
    };
    mat("token_embd.weight".into(), E, VOCAB, &mut r, false);
    for il in 0..LAYERS {
        let b = format!("blk.{il}.");
        mat(format!("{b}attn_q.weight"), E, HEADS * HD, &mut r, false);
        mat(format!("{b}attn_k.weight"), E, KV_HEADS * HD, &mut r, false);
        mat(
            format!("{b}attn_v.weight"),
            E,
            KV_HEADS * HD,
            &mut r,
            arch == "llama",
        );
        mat(
            format!("{b}attn_output.weight"),
            HEADS * HD,
            E,
            &mut r,
            false,
        );
        mat(format!("{b}ffn_gate.weight"), E, FF, &mut r, false);
        mat(format!("{b}ffn_up.weight"), E, FF, &mut r, false);
        mat(
            format!("{b}ffn_down.weight"),
            FF,
            E,
            &mut r,
            arch == "llama",
        );
    }
    let mut vecs: Vec<(String, usize)> = vec![("output_norm.weight".into(), E)];
    for il in 0..LAYERS {
        vecs.push((format!("blk.{il}.attn_norm.weight"), E));
        vecs.push((format!("blk.{il}.ffn_norm.weight"), E));
        if arch == "qwen2" {
            vecs.push((format!("blk.{il}.attn_q.bias"), HEADS * HD));
            vecs.push((format!("blk.{il}.attn_k.bias"), KV_HEADS * HD));
            vecs.push((format!("blk.{il}.attn_v.bias"), KV_HEADS * HD));
        }
        if arch == "qwen3" {
            vecs.push((format!("blk.{il}.attn_q_norm.weight"), HD));
            vecs.push((format!("blk.{il}.attn_k_norm.weight"), HD));
        }
    }
    for (name, n) in vecs {
        let v: Vec<f32> = r.vec(n).iter().map(|x| 1.0 + x).collect();
        tensors.push((name, vec![n as u64], GgmlType::F32, f32_bytes(&v)));
    }
    for (name, dims, ty, data) in tensors {
        if Some(name.as_str()) != skip {
            w.add_tensor(name, &dims, ty, data).unwrap();
        }
    }
    w.to_bytes().unwrap()
}

fn load(bytes: Vec<u8>) -> Result<Model, ModelError> {
    Model::load(Arc::new(GgufFile::from_bytes(bytes)?))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn qwen2_qwen3_llama_run_and_cache_equals_recompute() {
    for arch in ["qwen2", "qwen3", "llama"] {
        let m = load(build(arch, None, KV_HEADS as u32)).unwrap();
        let seq: Vec<u32> = (0..12u32).map(|i| (i * 29 + 3) % VOCAB as u32).collect();
        let mut full = m.new_state(32);
        let all = m.forward(&seq, &mut full, true).unwrap();
        assert!(all.iter().all(|v| v.is_finite()), "{arch}");
        assert!(
            max_diff(&all[..VOCAB], &all[VOCAB..2 * VOCAB]) > 1e-4,
            "{arch}: logits do not depend on input"
        );
        let mut inc = m.new_state(32);
        let a = m.forward(&seq[..5], &mut inc, true).unwrap();
        let b = m.forward(&seq[5..], &mut inc, true).unwrap();
        assert_eq!(max_diff(&a, &all[..5 * VOCAB]), 0.0, "{arch}");
        assert_eq!(max_diff(&b, &all[5 * VOCAB..]), 0.0, "{arch}");
        // Single-token steps sum attention in decode order: equal to rounding.
        let mut one = m.new_state(32);
        m.forward(&seq[..11], &mut one, false).unwrap();
        let last = m.forward(&seq[11..], &mut one, false).unwrap();
        assert!(max_diff(&last, &all[11 * VOCAB..]) < 1e-4, "{arch}");
    }
}

#[test]
fn batched_sequences_equal_separate_runs() {
    let m = load(build("qwen3", None, KV_HEADS as u32)).unwrap();
    let a: Vec<u32> = vec![5, 9, 17, 33];
    let b: Vec<u32> = vec![7, 1, 2];
    let (mut sa, mut sb) = (m.new_state(16), m.new_state(16));
    let la = m.forward(&a, &mut sa, false).unwrap();
    let lb = m.forward(&b, &mut sb, false).unwrap();
    let (mut ta, mut tb) = (m.new_state(16), m.new_state(16));
    let out = m
        .forward_batch(&mut [(&a[..], &mut ta, false), (&b[..], &mut tb, false)])
        .unwrap();
    assert_eq!(out[0], la);
    assert_eq!(out[1], lb);
}

#[test]
fn bad_models_name_what_is_wrong() {
    let err = load(build(
        "qwen3",
        Some("blk.1.attn_k_norm.weight"),
        KV_HEADS as u32,
    ))
    .err()
    .expect("missing tensor is an error")
    .to_string();
    assert!(err.contains("blk.1.attn_k_norm.weight"), "{err}");
    let err = load(build("qwen2", None, 3))
        .err()
        .expect("3 KV heads for 4")
        .to_string();
    assert!(err.contains("head_count_kv"), "{err}");
    let mut bytes = build("llama", None, KV_HEADS as u32);
    let mut f = GgufFile::from_bytes(&bytes).unwrap();
    f.set("llama.embedding_length", Value::U32(48));
    let err = Model::load(Arc::new(f))
        .err()
        .expect("shape mismatch")
        .to_string();
    assert!(
        err.contains("token_embd.weight") || err.contains("expected shape"),
        "{err}"
    );
    bytes.truncate(bytes.len() / 2);
    assert!(load(bytes).is_err());
    let m = load(build("llama", None, KV_HEADS as u32)).unwrap();
    let mut st = m.new_state(4);
    assert!(m.forward(&[VOCAB as u32], &mut st, false).is_err());
    assert!(
        m.forward(&[1, 2, 3, 4, 5], &mut st, false).is_err(),
        "context overflow is an error"
    );
}
