//! A V4 cache as bytes and back, for KV files ([`crate::kv_file`]): the
//! positions held, then per layer its raw window, its compressor states
//! and its compressed rows, every length checked on the way back.

use half::f16;

use super::{Ds4Cache, Rows, Q8_BYTES};

/// Reads a saved state in order, every length checked.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64) -> std::result::Result<&'a [u8], String> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.at.checked_add(n))
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| format!("the state is cut short at byte {}", self.at))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn len(&mut self) -> std::result::Result<u64, String> {
        let s = self.take(8)?;
        Ok(u64::from_le_bytes([
            s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
        ]))
    }
}

impl Rows {
    /// The stored bytes, little-endian.
    fn to_bytes(&self, out: &mut Vec<u8>) {
        match self {
            Rows::F32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Rows::F16(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Rows::Q8(v) => out.extend_from_slice(v),
        }
    }

    /// Replaces the rows with `b` as [`Rows::to_bytes`] wrote them.
    fn set_bytes(&mut self, b: &[u8]) -> std::result::Result<(), String> {
        let whole = |n: usize| {
            b.len()
                .is_multiple_of(n)
                .then_some(())
                .ok_or_else(|| format!("{} bytes of rows are not whole values", b.len()))
        };
        match self {
            Rows::F32(v) => {
                whole(4)?;
                *v = b
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
            }
            Rows::F16(v) => {
                whole(2)?;
                *v = b
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]))
                    .collect();
            }
            Rows::Q8(v) => {
                whole(Q8_BYTES)?;
                *v = b.to_vec();
            }
        }
        Ok(())
    }
}

impl Ds4Cache {
    /// The state as bytes (see [`crate::kv_file`]): the positions held (a
    /// u64; the others are recomputed from their tokens), then per layer
    /// its raw window (f32), its compressor states (the current
    /// block's values and scores, the previous block's halves; f32, each
    /// a u64 length then values), its compressed entries and indexer keys
    /// (a u64 byte length, then the rows as stored). Little-endian.
    pub fn state_bytes(&self) -> Vec<u8> {
        let mut o = (self.held as u64).to_le_bytes().to_vec();
        let floats = |o: &mut Vec<u8>, v: &[f32]| {
            o.extend_from_slice(&(v.len() as u64).to_le_bytes());
            v.iter().for_each(|x| o.extend_from_slice(&x.to_le_bytes()));
        };
        for l in &self.layers {
            floats(&mut o, &l.raw);
            for c in [&l.comp, &l.idx].into_iter().flatten() {
                for part in c.parts() {
                    floats(&mut o, part);
                }
            }
            for rows in [&l.entries, &l.keys] {
                let mut b = Vec::new();
                rows.to_bytes(&mut b);
                o.extend_from_slice(&(b.len() as u64).to_le_bytes());
                o.extend_from_slice(&b);
            }
        }
        o
    }

    /// Restores the state [`Ds4Cache::state_bytes`] wrote for the token ids
    /// `tokens` into this empty cache. Every length is checked against
    /// the cache's shape and what is left of `b`.
    pub fn restore(&mut self, tokens: &[u32], b: &[u8]) -> std::result::Result<(), String> {
        if !self.tokens.is_empty() {
            return Err("restoring into a cache that holds positions".into());
        }
        if tokens.len() > self.capacity {
            return Err(format!(
                "{} positions, the cache holds at most {}",
                tokens.len(),
                self.capacity
            ));
        }
        let mut cur = Cursor { b, at: 0 };
        let held = cur.len()?;
        if held > tokens.len() as u64 {
            return Err(format!("{held} positions held of {} tokens", tokens.len()));
        }
        let to_f32 = |s: &[u8]| -> Vec<f32> {
            s.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let hd = self.head_dim;
        for (il, l) in self.layers.iter_mut().enumerate() {
            // A window is allocated on its layer's first run (a stage holds
            // only its own): saved whole, or empty where it never ran.
            let n = cur.len()?;
            let full = (l.raw_slots * hd) as u64;
            if n != full && n != 0 {
                return Err(format!(
                    "layer {il}: a window of {n} values, the model's is {full}"
                ));
            }
            l.raw = to_f32(cur.take(4 * n)?);
            for c in [&mut l.comp, &mut l.idx].into_iter().flatten() {
                for part in c.parts_mut() {
                    let n = cur.len()?;
                    *part = to_f32(cur.take(n.saturating_mul(4))?);
                }
                let [kv, score, pk, ps] = c.parts();
                if !kv.len().is_multiple_of(c.row())
                    || kv.len() != score.len()
                    || pk.len() != ps.len()
                {
                    return Err(format!("layer {il}: a compressor state of partial rows"));
                }
            }
            for rows in [&mut l.entries, &mut l.keys] {
                let n = cur.len()?;
                rows.set_bytes(cur.take(n)?)
                    .map_err(|e| format!("layer {il}: {e}"))?;
            }
        }
        if cur.at != b.len() {
            return Err(format!("{} bytes past the state", b.len() - cur.at));
        }
        self.tokens = tokens.to_vec();
        self.held = held as usize;
        Ok(())
    }
}
