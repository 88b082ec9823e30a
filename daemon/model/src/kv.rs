//! The KV cache of a dense model: per layer, the keys and values of every
//! position so far, stored token-major (`[pos][kv_head][head_dim]`).
//!
//! Rows are kept as f32 (the default, and what llama.cpp-exact logits
//! need) or rounded to a [`KvType`] as llama.cpp's `--cache-type-k/v` do:
//! f16 (round to nearest), q8_0 (ggml's run-time x86 quantizer, the one
//! its `SET_ROWS` uses) or q4_0 (ggml's reference quantizer). Each head's
//! slice of a row is a whole number of blocks, so attention can dot a
//! query against one head's key bytes directly (see `kv_attn`).

use dwarfstar_kernels::quants::{float, legacy};
use dwarfstar_kernels::{dequantize_row, quantize_row, type_kernels, GgmlType};

use crate::error::{ModelError, Result};

/// How a cache stores its rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    #[default]
    F32,
    F16,
    Q8_0,
    Q4_0,
}

impl KvType {
    pub const ALL: [KvType; 4] = [KvType::F32, KvType::F16, KvType::Q8_0, KvType::Q4_0];

    /// The ggml type of a stored row.
    pub fn ggml(self) -> GgmlType {
        match self {
            KvType::F32 => GgmlType::F32,
            KvType::F16 => GgmlType::F16,
            KvType::Q8_0 => GgmlType::Q8_0,
            KvType::Q4_0 => GgmlType::Q4_0,
        }
    }

    /// The name on the command line (`f32`, `f16`, `q8_0`, `q4_0`).
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
        }
    }

    /// Parses a name, case-insensitively.
    pub fn parse(s: &str) -> Option<KvType> {
        KvType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s.trim()))
    }

    /// A stable one-byte id (cache files record it).
    pub fn id(self) -> u8 {
        match self {
            KvType::F32 => 0,
            KvType::F16 => 1,
            KvType::Q8_0 => 8,
            KvType::Q4_0 => 2,
        }
    }

    pub fn from_id(id: u8) -> Option<KvType> {
        KvType::ALL.into_iter().find(|t| t.id() == id)
    }

    /// Bytes of `n` values, or `None` when `n` is not whole blocks.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        self.ggml().row_bytes(n)
    }

    /// Checks that heads of `head_dim_k`/`head_dim_v` values are whole
    /// blocks of this type.
    pub fn check_heads(self, head_dim_k: usize, head_dim_v: usize) -> Result<()> {
        for (what, d) in [("key", head_dim_k), ("value", head_dim_v)] {
            if self.row_bytes(d).is_none() {
                return Err(ModelError::Invalid(format!(
                    "KV cache type {self}: {what} heads of {d} values are not whole {}-value blocks",
                    self.ggml().block_size()
                )));
            }
        }
        Ok(())
    }

    /// Rounds `x` (whole blocks) to this type into `dst`, as llama.cpp
    /// writes its cache.
    pub(crate) fn quantize(self, x: &[f32], dst: &mut [u8]) {
        match self {
            KvType::F32 => {
                for (d, v) in dst.chunks_exact_mut(4).zip(x) {
                    d.copy_from_slice(&v.to_le_bytes());
                }
            }
            KvType::F16 => float::quantize_f16(x, dst),
            KvType::Q8_0 => legacy::act::quantize_q8_0_bytes(x, dst),
            KvType::Q4_0 => {
                // Lengths were checked when the cache was made.
                let _ = quantize_row(GgmlType::Q4_0, x, dst);
            }
        }
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<KvType, String> {
        KvType::parse(s)
            .ok_or_else(|| format!("unknown KV cache type {s:?} (f32, f16, q8_0, q4_0)"))
    }
}

/// Keys and values of one layer: f32 rows in `k`/`v` for an f32 cache,
/// rows of the cache's type in `kq`/`vq` otherwise.
#[derive(Clone, Debug, Default)]
pub struct LayerKv {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub kq: Vec<u8>,
    pub vq: Vec<u8>,
}

/// A sequence's KV cache: fixed capacity, filled from position 0.
#[derive(Clone, Debug)]
pub struct KvCache {
    pub layers: Vec<LayerKv>,
    k_dim: usize,
    v_dim: usize,
    capacity: usize,
    len: usize,
    ty: KvType,
    /// Bytes of one position's key / value row (quantized types).
    k_row: usize,
    v_row: usize,
}

impl KvCache {
    /// An empty f32 cache for `n_layer` layers of `k_dim`/`v_dim` floats
    /// per token, holding at most `capacity` positions. Memory grows as
    /// positions are written, not up front.
    pub fn new(n_layer: usize, k_dim: usize, v_dim: usize, capacity: usize) -> KvCache {
        KvCache {
            layers: vec![LayerKv::default(); n_layer],
            k_dim,
            v_dim,
            capacity,
            len: 0,
            ty: KvType::F32,
            k_row: k_dim * 4,
            v_row: v_dim * 4,
        }
    }

    /// An empty cache storing rows as `ty`; heads of `head_dim_k` /
    /// `head_dim_v` must be whole blocks of it ([`KvType::check_heads`]).
    pub fn with_type(
        n_layer: usize,
        (k_dim, head_dim_k): (usize, usize),
        (v_dim, head_dim_v): (usize, usize),
        capacity: usize,
        ty: KvType,
    ) -> Result<KvCache> {
        ty.check_heads(head_dim_k, head_dim_v)?;
        if head_dim_k == 0 || head_dim_v == 0 || k_dim % head_dim_k != 0 || v_dim % head_dim_v != 0
        {
            return Err(ModelError::Invalid(format!(
                "KV rows of {k_dim}/{v_dim} values do not split into heads of {head_dim_k}/{head_dim_v}"
            )));
        }
        if ty != KvType::F32 && !type_kernels(ty.ggml()).is_ok_and(|k| k.vec_dot.is_some()) {
            return Err(ModelError::Invalid(format!(
                "KV cache type {ty}: no dot product kernel"
            )));
        }
        let mut c = KvCache::new(n_layer, k_dim, v_dim, capacity);
        c.ty = ty;
        c.k_row = ty.row_bytes(k_dim).unwrap_or(0);
        c.v_row = ty.row_bytes(v_dim).unwrap_or(0);
        Ok(c)
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn k_dim(&self) -> usize {
        self.k_dim
    }

    pub fn v_dim(&self) -> usize {
        self.v_dim
    }

    pub fn ty(&self) -> KvType {
        self.ty
    }

    /// Bytes of one position's key row, value row.
    pub fn row_bytes(&self) -> (usize, usize) {
        (self.k_row, self.v_row)
    }

    /// Checks that `n` more positions fit.
    pub fn reserve(&self, n: usize) -> Result<()> {
        if self.len + n > self.capacity {
            return Err(ModelError::ContextFull {
                needed: self.len + n,
                capacity: self.capacity,
            });
        }
        Ok(())
    }

    /// Writes keys and values of positions `pos0..pos0+n` of layer `il`.
    pub fn write(&mut self, il: usize, pos0: usize, k: &[f32], v: &[f32]) {
        let n = k.len() / self.k_dim;
        let l = &mut self.layers[il];
        let (kd, vd) = (self.k_dim, self.v_dim);
        if self.ty == KvType::F32 {
            l.k.resize((pos0 + n) * kd, 0.0);
            l.v.resize((pos0 + n) * vd, 0.0);
            l.k[pos0 * kd..(pos0 + n) * kd].copy_from_slice(k);
            l.v[pos0 * vd..(pos0 + n) * vd].copy_from_slice(v);
            return;
        }
        let (kr, vr) = (self.k_row, self.v_row);
        l.kq.resize((pos0 + n) * kr, 0);
        l.vq.resize((pos0 + n) * vr, 0);
        for t in 0..n {
            let p = pos0 + t;
            self.ty
                .quantize(&k[t * kd..(t + 1) * kd], &mut l.kq[p * kr..(p + 1) * kr]);
            self.ty
                .quantize(&v[t * vd..(t + 1) * vd], &mut l.vq[p * vr..(p + 1) * vr]);
        }
    }

    /// The stored key bytes of layer `il` (quantized caches).
    pub fn k_bytes(&self, il: usize) -> &[u8] {
        &self.layers[il].kq
    }

    /// The values of positions `pos` of layer `il` as f32, into `out`
    /// (`pos.len() × v_dim`).
    pub fn values_f32(&self, il: usize, pos: std::ops::Range<usize>, out: &mut [f32]) {
        let l = &self.layers[il];
        let vd = self.v_dim;
        if self.ty == KvType::F32 {
            out.copy_from_slice(&l.v[pos.start * vd..pos.end * vd]);
        } else {
            let src = &l.vq[pos.start * self.v_row..pos.end * self.v_row];
            // Whole blocks by construction.
            let _ = dequantize_row(self.ty.ggml(), src, out);
        }
    }

    /// Marks `n` more positions as filled (after every layer wrote them).
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Drops every position from `len` on (to rewind a sequence).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            self.len = len;
            for l in &mut self.layers {
                l.k.truncate(len * self.k_dim);
                l.v.truncate(len * self.v_dim);
                l.kq.truncate(len * self.k_row);
                l.vq.truncate(len * self.v_row);
            }
        }
    }

    /// Releases spare capacity (before a state is kept for later).
    pub fn shrink_to_fit(&mut self) {
        for l in &mut self.layers {
            l.k.shrink_to_fit();
            l.v.shrink_to_fit();
            l.kq.shrink_to_fit();
            l.vq.shrink_to_fit();
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| (l.k.len() + l.v.len()) * 4 + l.kq.len() + l.vq.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse_and_round_trip_ids() {
        for t in KvType::ALL {
            assert_eq!(KvType::parse(t.name()), Some(t));
            assert_eq!(KvType::from_id(t.id()), Some(t));
            assert_eq!(t.name().parse::<KvType>(), Ok(t));
        }
        assert_eq!(KvType::parse("Q8_0"), Some(KvType::Q8_0));
        assert!("q5_1".parse::<KvType>().is_err());
    }

    #[test]
    fn quantized_rows_are_close_and_smaller() {
        let k: Vec<f32> = (0..128)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        for (ty, tol, bytes) in [
            (KvType::F16, 1e-3, 256),
            (KvType::Q8_0, 2e-2, 136),
            (KvType::Q4_0, 0.3, 72),
        ] {
            let mut c = KvCache::with_type(1, (128, 64), (128, 64), 4, ty).unwrap();
            c.write(0, 0, &k, &k);
            c.advance(1);
            assert_eq!(c.row_bytes(), (bytes, bytes));
            assert_eq!(c.bytes(), 2 * bytes);
            let mut v = vec![0f32; 128];
            c.values_f32(0, 0..1, &mut v);
            let err = k
                .iter()
                .zip(&v)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err < tol, "{ty}: {err}");
            c.truncate(0);
            assert_eq!(c.bytes(), 0);
        }
        let e = KvCache::with_type(1, (48, 24), (48, 24), 4, KvType::Q8_0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("24 values"), "{e}");
    }
}
