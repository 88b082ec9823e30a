//! A sequence's state between calls, in DeepSeek V4's compressed form.
//!
//! Per layer it keeps:
//! - the raw key/value rows of the last `sliding_window - 1` positions (a
//!   ring; every layer attends to its window);
//! - layers with a compressor: the compressed entries made so far (one per
//!   4 or 128 tokens) and the compressor's running state (the current
//!   block, and the previous one's overlap halves);
//! - CSA layers: the indexer's compressed keys and its compressor state.
//!
//! A layer's window is allocated when the layer first runs, so a pipeline
//! stage's cache holds its own layers' state only.
//!
//! Only the compressed entries and indexer keys grow with the sequence
//! (stored as f16 by default, or f32 or q8_0, see [`KvType`]), plus the token ids (4 bytes
//! a position) that let [`Ds4Cache::truncate`] rewind: the window and the
//! compressor state cannot be read back from what is left, so a cut below
//! what is held goes back into the last pass where that pass was marked
//! ([`rewind`]: exact, what speculative decoding needs), and otherwise
//! drops the state so that the next forward pass recomputes the kept
//! prefix from its tokens before the new ones.
//!
//! [`saved`] turns a cache into bytes and back, for KV files.

use dwarfstar_kernels::{dequantize_row, GgmlType};
use half::f16;

use crate::error::{ModelError, Result};

use super::compressor::CompState;
use super::hparams::{Ds4HParams, LayerKind};

pub mod rewind;
mod saved;

use rewind::{LayerMark, PassMark};

/// How the growing parts of the cache (compressed entries, indexer keys)
/// are stored: f32, f16 (round to nearest) or q8_0 (blocks of 32 values,
/// one f16 scale each, as the dense caches' q8_0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvType {
    F32,
    F16,
    Q8_0,
}

/// Values of one q8_0 block, and its bytes.
const Q8_BLOCK: usize = 32;
const Q8_BYTES: usize = 34;

impl KvType {
    /// Bytes a stored value costs on average.
    pub fn bytes(self) -> f64 {
        match self {
            KvType::F32 => 4.0,
            KvType::F16 => 2.0,
            KvType::Q8_0 => Q8_BYTES as f64 / Q8_BLOCK as f64,
        }
    }

    /// Whether rows of `dim` values can be stored (q8_0: whole blocks).
    pub fn fits(self, dim: usize) -> bool {
        self != KvType::Q8_0 || dim.is_multiple_of(Q8_BLOCK)
    }

    /// The dense caches' type of the same storage.
    pub fn to_kv(self) -> crate::KvType {
        match self {
            KvType::F32 => crate::KvType::F32,
            KvType::F16 => crate::KvType::F16,
            KvType::Q8_0 => crate::KvType::Q8_0,
        }
    }

    /// The V4 storage of a dense caches' type (None: not offered for V4).
    pub fn from_kv(ty: crate::KvType) -> Option<KvType> {
        match ty {
            crate::KvType::F32 => Some(KvType::F32),
            crate::KvType::F16 => Some(KvType::F16),
            crate::KvType::Q8_0 => Some(KvType::Q8_0),
            crate::KvType::Q4_0 => None,
        }
    }
}

/// Rows of `dim` values.
#[derive(Clone, Debug)]
pub enum Rows {
    F32(Vec<f32>),
    F16(Vec<f16>),
    /// q8_0 blocks, `dim / 32` a row.
    Q8(Vec<u8>),
}

impl Rows {
    fn new(ty: KvType) -> Rows {
        match ty {
            KvType::F32 => Rows::F32(Vec::new()),
            KvType::F16 => Rows::F16(Vec::new()),
            KvType::Q8_0 => Rows::Q8(Vec::new()),
        }
    }

    /// Appends a row (for q8_0, of whole blocks: [`KvType::fits`]).
    pub fn push(&mut self, row: &[f32]) {
        match self {
            Rows::F32(v) => v.extend_from_slice(row),
            Rows::F16(v) => v.extend(row.iter().map(|&x| f16::from_f32(x))),
            Rows::Q8(v) => {
                let at = v.len();
                v.resize(at + row.len() / Q8_BLOCK * Q8_BYTES, 0);
                crate::KvType::Q8_0.quantize(row, &mut v[at..]);
            }
        }
    }

    /// Row `i` into `out` (`dim` values).
    pub fn get(&self, i: usize, out: &mut [f32]) {
        let d = out.len();
        match self {
            Rows::F32(v) => out.copy_from_slice(&v[i * d..(i + 1) * d]),
            Rows::F16(v) => {
                for (o, x) in out.iter_mut().zip(&v[i * d..(i + 1) * d]) {
                    *o = x.to_f32();
                }
            }
            Rows::Q8(v) => {
                let rb = d / Q8_BLOCK * Q8_BYTES;
                let _ = dequantize_row(GgmlType::Q8_0, &v[i * rb..(i + 1) * rb], out);
            }
        }
    }

    /// Values held.
    pub fn len(&self) -> usize {
        match self {
            Rows::F32(v) => v.len(),
            Rows::F16(v) => v.len(),
            Rows::Q8(v) => v.len() / Q8_BYTES * Q8_BLOCK,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn bytes(&self) -> usize {
        match self {
            Rows::F32(v) => v.len() * 4,
            Rows::F16(v) => v.len() * 2,
            Rows::Q8(v) => v.len(),
        }
    }

    fn clear(&mut self) {
        match self {
            Rows::F32(v) => v.clear(),
            Rows::F16(v) => v.clear(),
            Rows::Q8(v) => v.clear(),
        }
    }
}

/// One layer's state.
#[derive(Clone, Debug)]
pub struct LayerCache {
    /// Position `p`'s key/value row at slot `p % raw_slots`; empty until
    /// the layer first runs (a pipeline stage holds only its own layers').
    pub raw: Vec<f32>,
    pub raw_slots: usize,
    pub comp: Option<CompState>,
    /// Compressed key/value entries (`head_dim` each).
    pub entries: Rows,
    pub idx: Option<CompState>,
    /// The indexer's compressed keys (`idx_dim` each).
    pub keys: Rows,
    /// What the last pass overwrote, when it was marked ([`rewind`]).
    pub(crate) mark: Option<LayerMark>,
}

/// The compressed blocks one CSA query attended to (see
/// [`Ds4Cache::record_selections`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    pub layer: usize,
    pub pos: usize,
    /// Block ids, ascending.
    pub blocks: Vec<u32>,
}

/// Cache bytes one more position costs on average: the compressed entries
/// (`head_dim` per 4 tokens in CSA layers, per 128 in HCA layers) and the
/// indexer keys (`idx_dim` per 4 tokens in CSA layers) at `ty`, and the
/// token id (4 bytes).
pub fn kv_bytes_per_token(hp: &Ds4HParams, ty: KvType) -> usize {
    let floats: f64 = hp.kinds[..hp.n_layer]
        .iter()
        .map(|k| match k {
            LayerKind::Sliding => 0.0,
            LayerKind::Csa => (hp.head_dim + hp.idx_dim) as f64 / 4.0,
            LayerKind::Hca => hp.head_dim as f64 / 128.0,
        })
        .sum();
    (floats * ty.bytes() + 4.0).ceil() as usize
}

/// Bytes a sequence's cache holds whatever its length: every layer's raw
/// window (f32) and the compressor states at their largest (the current
/// block, `coff·dim` wide, and the previous block's halves, values and
/// scores in f32).
pub fn fixed_kv_bytes(hp: &Ds4HParams) -> usize {
    let window = hp.n_swa.saturating_sub(1) * hp.head_dim * 4;
    hp.kinds[..hp.n_layer]
        .iter()
        .map(|k| {
            window
                + match k {
                    LayerKind::Sliding => 0,
                    LayerKind::Csa => 2 * 4 * (2 + 1) * (hp.head_dim + hp.idx_dim) * 4,
                    LayerKind::Hca => 2 * 128 * hp.head_dim * 4,
                }
        })
        .sum()
}

/// A sequence's DeepSeek V4 cache.
#[derive(Clone, Debug)]
pub struct Ds4Cache {
    layers: Vec<LayerCache>,
    /// Values of a raw window row.
    head_dim: usize,
    /// Values of an indexer key.
    idx_dim: usize,
    /// The last pass, when it was marked ([`rewind`]).
    mark: Option<PassMark>,
    /// Every position's token, held or waiting to be recomputed.
    tokens: Vec<u32>,
    /// Positions whose state the layers hold (`≤ tokens.len()`).
    held: usize,
    capacity: usize,
    /// How the compressed entries and indexer keys are stored.
    ty: KvType,
    /// When set, each pass keeps its positions' final hyper-connection
    /// streams ([`Ds4Cache::hidden`]): what the MTP block drafts from.
    pub keep_hidden: bool,
    hidden: Vec<f32>,
    hidden_pos0: usize,
    hidden_w: usize,
    /// When set, CSA layers append the blocks each query used.
    pub record_selections: bool,
    pub selections: Vec<Selection>,
}

impl Ds4Cache {
    /// An empty cache for up to `capacity` positions.
    pub fn new(hp: &Ds4HParams, capacity: usize, ty: KvType) -> Ds4Cache {
        let slots = hp.n_swa.saturating_sub(1);
        let layers = hp.kinds[..hp.n_layer]
            .iter()
            .map(|&k| LayerCache {
                raw: Vec::new(),
                raw_slots: slots,
                comp: (k != LayerKind::Sliding).then(|| CompState::new(k.ratio(), hp.head_dim)),
                entries: Rows::new(ty),
                idx: (k == LayerKind::Csa).then(|| CompState::new(4, hp.idx_dim)),
                keys: Rows::new(ty),
                mark: None,
            })
            .collect();
        Ds4Cache {
            layers,
            head_dim: hp.head_dim,
            idx_dim: hp.idx_dim,
            mark: None,
            tokens: Vec::new(),
            held: 0,
            capacity,
            ty,
            keep_hidden: false,
            hidden: Vec::new(),
            hidden_pos0: 0,
            hidden_w: 0,
            record_selections: false,
            selections: Vec::new(),
        }
    }

    /// Positions in the sequence (held or to be recomputed).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Positions whose state is held.
    pub fn held(&self) -> usize {
        self.held
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How the compressed entries and indexer keys are stored.
    pub fn kv_type(&self) -> KvType {
        self.ty
    }

    pub fn n_layer(&self) -> usize {
        self.layers.len()
    }

    /// Tokens kept by a truncation that the next pass must recompute.
    pub fn pending(&self) -> &[u32] {
        &self.tokens[self.held..]
    }

    /// Checks that `n` more positions fit.
    pub fn reserve(&self, n: usize) -> Result<()> {
        if self.tokens.len() + n > self.capacity {
            return Err(ModelError::ContextFull {
                needed: self.tokens.len() + n,
                capacity: self.capacity,
            });
        }
        Ok(())
    }

    /// Allocates the raw windows of `layers` that have not run yet.
    pub(crate) fn open_layers(&mut self, layers: std::ops::Range<usize>) {
        let hd = self.head_dim;
        for l in self.layers[layers].iter_mut() {
            if l.raw.is_empty() {
                l.raw = vec![0f32; l.raw_slots * hd];
            }
        }
    }

    pub(crate) fn layer(&self, il: usize) -> &LayerCache {
        &self.layers[il]
    }

    pub(crate) fn layer_mut(&mut self, il: usize) -> &mut LayerCache {
        &mut self.layers[il]
    }

    /// Records that every layer has processed `run` (the pending tokens,
    /// then new ones): the new tokens join the sequence.
    pub fn advance(&mut self, run: &[u32]) {
        let pending = self.tokens.len() - self.held;
        self.tokens
            .extend_from_slice(&run[pending.min(run.len())..]);
        self.held = self.tokens.len();
    }

    /// Keeps the first `len` positions. Below the held state this goes
    /// back into the last pass where it was marked, exactly
    /// ([`rewind`]), and otherwise drops the layers' state: the next pass
    /// recomputes the kept tokens.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.tokens.len() {
            return;
        }
        self.tokens.truncate(len);
        self.selections.retain(|s| s.pos < len);
        if self.hidden_pos0 >= len {
            self.hidden.clear();
        } else {
            self.hidden
                .truncate((len - self.hidden_pos0) * self.hidden_w);
        }
        if len < self.held && !(self.can_rewind(len) && self.rewind(len)) {
            self.drop_state();
        }
    }

    /// Positions whose state a truncation to `len` keeps.
    pub fn kept_by_truncate(&self, len: usize) -> usize {
        if len >= self.held {
            self.held
        } else if self.can_rewind(len) {
            len
        } else {
            0
        }
    }

    /// Drops every layer's state, keeping the tokens: the next pass
    /// recomputes them (after a truncation, or a pass that failed midway
    /// and left some layers ahead of the others).
    pub fn drop_state(&mut self) {
        self.held = 0;
        self.hidden.clear();
        self.unmark();
        for l in &mut self.layers {
            l.raw.iter_mut().for_each(|v| *v = 0.0);
            if let Some(c) = &mut l.comp {
                c.clear();
            }
            if let Some(c) = &mut l.idx {
                c.clear();
            }
            l.entries.clear();
            l.keys.clear();
        }
    }

    /// The final hyper-connection streams (`hc × n_embd` a position) of
    /// the last pass's positions that are still held, and the first one's
    /// position; None unless [`Ds4Cache::keep_hidden`].
    pub fn hidden(&self) -> Option<(usize, &[f32])> {
        (self.keep_hidden && !self.hidden.is_empty()).then_some((self.hidden_pos0, &self.hidden))
    }

    /// Keeps the streams (`width` values a position) of a pass that
    /// started at position `pos0`.
    pub(crate) fn set_hidden(&mut self, pos0: usize, rows: &[f32], width: usize) {
        if self.keep_hidden {
            self.hidden_pos0 = pos0;
            self.hidden_w = width;
            self.hidden.clear();
            self.hidden.extend_from_slice(rows);
        }
    }

    /// Bytes of the parts that grow with the sequence: compressed entries,
    /// indexer keys and token ids.
    pub fn compressed_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| l.entries.bytes() + l.keys.bytes())
            .sum();
        layers + self.tokens.len() * 4
    }

    /// Bytes held now: windows, compressor states, compressed entries,
    /// indexer keys and token ids.
    pub fn bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                l.raw.len() * 4
                    + l.comp.as_ref().map_or(0, |c| c.bytes())
                    + l.idx.as_ref().map_or(0, |c| c.bytes())
                    + l.entries.bytes()
                    + l.keys.bytes()
            })
            .sum();
        layers + self.tokens.len() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dwarfstar_gguf::{Array, GgufFile, Value};

    /// Metadata of the real DeepSeek V4 Flash (its `config.json` as
    /// llama.cpp's converter writes it; trunk only).
    fn v4_flash() -> Ds4HParams {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        let mut f = GgufFile::from_bytes(b).expect("empty gguf");
        let mut ratios = vec![0i32, 0];
        for _ in 0..20 {
            ratios.extend([4, 128]);
        }
        ratios.extend([4, 0]);
        assert_eq!(ratios.len(), 44);
        let u = |v: u32| Value::U32(v);
        let kv: Vec<(&str, Value)> = vec![
            ("block_count", u(43)),
            ("context_length", u(1048576)),
            ("embedding_length", u(4096)),
            ("vocab_size", u(129280)),
            ("attention.head_count", u(64)),
            ("attention.head_count_kv", u(1)),
            ("attention.key_length", u(512)),
            ("attention.value_length", u(512)),
            ("rope.dimension_count", u(64)),
            ("rope.freq_base", Value::F32(10000.0)),
            ("rope.scaling.type", Value::String("yarn".into())),
            ("rope.scaling.factor", Value::F32(16.0)),
            ("rope.scaling.original_context_length", u(65536)),
            ("attention.layer_norm_rms_epsilon", Value::F32(1e-6)),
            ("attention.q_lora_rank", u(1024)),
            ("attention.sliding_window", u(128)),
            ("attention.output_group_count", u(8)),
            ("attention.output_lora_rank", u(1024)),
            (
                "attention.compress_ratios",
                Value::Array(Array::I32(ratios)),
            ),
            ("attention.compress_rope_freq_base", Value::F32(160000.0)),
            ("attention.indexer.head_count", u(64)),
            ("attention.indexer.key_length", u(128)),
            ("attention.indexer.top_k", u(512)),
            ("expert_count", u(256)),
            ("expert_used_count", u(6)),
            ("expert_feed_forward_length", u(2048)),
            ("expert_shared_count", u(1)),
            ("expert_weights_scale", Value::F32(1.5)),
            ("expert_weights_norm", Value::Bool(true)),
            ("expert_gating_func", u(4)),
            ("swiglu_clamp_exp", Value::Array(Array::F32(vec![10.0; 44]))),
            ("hyper_connection.count", u(4)),
            ("hyper_connection.sinkhorn_iterations", u(20)),
            ("hyper_connection.epsilon", Value::F32(1e-6)),
            ("hash_layer_count", u(3)),
        ];
        for (k, v) in kv {
            f.set(crate::deepseek4::hparams::key(k), v);
        }
        Ds4HParams::from_gguf(&f).expect("V4 Flash metadata")
    }

    #[test]
    fn v4_flash_kv_per_token_is_near_the_design() {
        let hp = v4_flash();
        let kinds = &hp.kinds[..hp.n_layer];
        assert_eq!(kinds.iter().filter(|k| **k == LayerKind::Csa).count(), 21);
        assert_eq!(kinds.iter().filter(|k| **k == LayerKind::Hca).count(), 20);
        // 21 CSA layers × (512 + 128) / 4 + 20 HCA layers × 512 / 128 =
        // 3440 values a token, + 4 bytes of token id.
        assert_eq!(kv_bytes_per_token(&hp, KvType::F16), 3440 * 2 + 4);
        assert_eq!(kv_bytes_per_token(&hp, KvType::F32), 3440 * 4 + 4);
        // Windows (43 × 127 × 512 f32) and compressor states, per sequence.
        let fixed = fixed_kv_bytes(&hp);
        assert_eq!(
            fixed,
            43 * 127 * 512 * 4 + 21 * 24 * (512 + 128) * 4 + 20 * 256 * 512 * 4
        );
        let yarn = hp.rope_compress.yarn.expect("compress layers use YaRN");
        assert_eq!((yarn.factor, yarn.orig_ctx), (16.0, 65536));
        assert!(hp.rope_main.yarn.is_none());
    }

    #[test]
    fn rows_round_trip_in_both_types() {
        for ty in [KvType::F32, KvType::F16] {
            let mut r = Rows::new(ty);
            r.push(&[1.0, -2.5, 0.125]);
            r.push(&[3.0, 4.0, 5.0]);
            let mut out = [0f32; 3];
            r.get(1, &mut out);
            assert_eq!(out, [3.0, 4.0, 5.0]);
            assert_eq!(r.bytes() as f64, 6.0 * ty.bytes());
        }
    }
}
