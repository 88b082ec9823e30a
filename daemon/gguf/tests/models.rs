//! The reader on the two real models (found through DWARFSTAR_MODELS_DIR, default
//! <repo>/models): metadata and directory sanity, and a streamed re-write through
//! GgufWriter compared byte for byte with the original without buffering it.

use std::io::Write;
use std::path::PathBuf;

use dwarfstar_gguf::{GgmlType, GgufFile, GgufWriter};

fn model(name: &str) -> GgufFile {
    let dir = std::env::var_os("DWARFSTAR_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "model {} is missing: run deploy/fetch-models.sh (or set DWARFSTAR_MODELS_DIR)",
        path.display()
    );
    GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A `Write` that compares everything written with `expected`.
struct Compare<'a> {
    expected: &'a [u8],
    pos: usize,
    first_diff: Option<usize>,
}

impl Write for Compare<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let end = self.pos + buf.len();
        let want = self
            .expected
            .get(self.pos..end.min(self.expected.len()))
            .unwrap_or(&[]);
        if self.first_diff.is_none() && (want.len() != buf.len() || want != buf) {
            let i = want
                .iter()
                .zip(buf)
                .position(|(a, b)| a != b)
                .unwrap_or(want.len());
            self.first_diff = Some(self.pos + i);
        }
        self.pos = end;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn rewrite_matches(f: &GgufFile) {
    let mut w = GgufWriter::new(f.alignment()).unwrap();
    w.add_metadata(f.metadata()).unwrap();
    for t in f.tensors() {
        w.add_tensor_info(t.name.clone(), &t.dims, t.ty).unwrap();
    }
    let mut out = Compare {
        expected: f.bytes(),
        pos: 0,
        first_diff: None,
    };
    w.write_header(&mut out).unwrap();
    for t in f.tensors() {
        w.write_tensor_data(&mut out, &t.name, f.tensor_data(t))
            .unwrap();
    }
    w.finish(&mut out).unwrap();
    assert_eq!(out.first_diff, None, "first differing byte");
    assert_eq!(out.pos as u64, f.len());
}

#[test]
fn smollm2_q4_1() {
    let f = model("SmolLM2-135M-Instruct-Q4_1.gguf");
    assert_eq!(f.version(), 3);
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(f.get_u64("llama.embedding_length").unwrap(), 576);
    assert!(f.get_f32("llama.rope.freq_base").unwrap() > 1.0);
    assert_eq!(
        f.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        49152
    );
    assert_eq!(
        f.get_i32_array("tokenizer.ggml.token_type").unwrap().len(),
        49152
    );
    assert_eq!(
        f.get_str_array("tokenizer.ggml.merges").unwrap().len(),
        48900
    );
    assert_eq!(f.opt_f32_array("tokenizer.ggml.scores").unwrap(), None);
    assert!(!f.get_bool("tokenizer.ggml.add_bos_token").unwrap());
    assert_eq!(f.metadata().len(), 33);
    assert_eq!(f.tensors().len(), 272);
    assert_eq!(f.data_offset(), 1_785_664);
    let emb = f.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.dims, vec![576, 49152]);
    assert_eq!(emb.ty, GgmlType::Q8_0);
    assert_eq!(emb.n_bytes, 49152 * 18 * 34);
    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!((q.ty, q.rows(), q.cols()), (GgmlType::Q4_1, 576, 576));
    rewrite_matches(&f);
}

#[test]
fn gemma3_q4_k_m() {
    let f = model("gemma-3-270m-q4_k_m.gguf");
    assert_eq!(f.get_str("general.architecture").unwrap(), "gemma3");
    assert_eq!(f.get_u32("gemma3.attention.sliding_window").unwrap(), 512);
    assert_eq!(
        f.get_f32_array("tokenizer.ggml.scores").unwrap().len(),
        262144
    );
    assert_eq!(
        f.get_str_array("tokenizer.ggml.tokens").unwrap()[2],
        "<bos>"
    );
    assert!(f.get_bool("tokenizer.ggml.add_bos_token").unwrap());
    assert_eq!(f.tensors().len(), 236);
    assert_eq!(f.data_offset(), 6_525_120);
    let total: u64 = f
        .tensors()
        .iter()
        .map(|t| t.n_bytes.div_ceil(32) * 32)
        .sum();
    assert_eq!(f.data_offset() + total, f.len());
    rewrite_matches(&f);
}
