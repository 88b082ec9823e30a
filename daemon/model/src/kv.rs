//! The KV cache of a dense model: per layer, the keys and values of every
//! position so far, stored token-major (`[pos][kv_head][head_dim]`).

use crate::error::{ModelError, Result};

/// Keys and values of one layer.
#[derive(Clone, Debug, Default)]
pub struct LayerKv {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

/// A sequence's KV cache: fixed capacity, filled from position 0.
#[derive(Clone, Debug)]
pub struct KvCache {
    pub layers: Vec<LayerKv>,
    k_dim: usize,
    v_dim: usize,
    capacity: usize,
    len: usize,
}

impl KvCache {
    /// An empty cache for `n_layer` layers of `k_dim`/`v_dim` floats per
    /// token, holding at most `capacity` positions. Memory grows as
    /// positions are written, not up front.
    pub fn new(n_layer: usize, k_dim: usize, v_dim: usize, capacity: usize) -> KvCache {
        KvCache {
            layers: vec![LayerKv::default(); n_layer],
            k_dim,
            v_dim,
            capacity,
            len: 0,
        }
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

    /// Writes keys and values of positions `len..len+n` of layer `il`.
    pub fn write(&mut self, il: usize, pos0: usize, k: &[f32], v: &[f32]) {
        let n = k.len() / self.k_dim;
        let l = &mut self.layers[il];
        let (kd, vd) = (self.k_dim, self.v_dim);
        l.k.resize((pos0 + n) * kd, 0.0);
        l.v.resize((pos0 + n) * vd, 0.0);
        l.k[pos0 * kd..(pos0 + n) * kd].copy_from_slice(k);
        l.v[pos0 * vd..(pos0 + n) * vd].copy_from_slice(v);
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
            }
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| (l.k.len() + l.v.len()) * 4)
            .sum()
    }
}
