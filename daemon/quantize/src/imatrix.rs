//! Importance matrices in llama.cpp's two file formats.
//!
//! An entry per weight tensor (`blk.3.ffn_down_exps.weight`) holds the sum
//! over the calibration tokens of each input column's squared activation,
//! per matrix of the tensor, and how many tokens went in.
//!
//! * GGUF (what `llama-imatrix` writes by default): `general.type =
//!   "imatrix"`, `imatrix.datasets` (string array), `imatrix.chunk_count`
//!   and `imatrix.chunk_size` (u32), and per entry two F32 tensors:
//!   `<name>.in_sum2` of shape `[n_per_row * n_mat / n_count, n_count]`
//!   (the raw sums) and `<name>.counts` of shape `[1, n_count]`. Routed
//!   experts have one count per expert (`n_count = n_expert`); dense weights,
//!   3-D ones included, have one count.
//! * legacy `.dat`: i32 entry count; per entry an i32-length name, i32
//!   `ncall`, i32 `nval`, `nval` f32 values `sum / count * ncall`; then,
//!   optionally, the i32 chunk count and an i32-length dataset name.
//!
//! [`Imatrix::read`] takes either; [`Imatrix::weights`] gives the
//! per-column weights `llama-quantize` derives from them (the mean squared
//! activation, 1 for an expert that saw no token).

use std::collections::BTreeMap;
use std::path::Path;

use dwarfstar_gguf::{Array, GgmlType, GgufFile, GgufWriter, Value};

use crate::error::{io_err, QuantizeError, Result};

/// The keys llama.cpp uses.
pub const KEY_TYPE: &str = "general.type";
pub const KEY_DATASETS: &str = "imatrix.datasets";
pub const KEY_CHUNK_COUNT: &str = "imatrix.chunk_count";
pub const KEY_CHUNK_SIZE: &str = "imatrix.chunk_size";
pub const SUFFIX_SUMS: &str = ".in_sum2";
pub const SUFFIX_COUNTS: &str = ".counts";

/// One weight tensor's statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// `counts.len()` blocks of equal length: sums of squared activations
    /// per column (per matrix for 3-D tensors).
    pub sums: Vec<f32>,
    /// Tokens seen, per expert for routed experts (else one count). For a
    /// legacy file: its `ncall`, and `sums` are `mean * ncall`.
    pub counts: Vec<u64>,
}

/// An importance matrix.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Imatrix {
    pub entries: BTreeMap<String, Entry>,
    pub datasets: Vec<String>,
    pub chunk_count: u32,
    pub chunk_size: u32,
    /// Read from a legacy `.dat` file (sums already divided, see [`Entry`]).
    pub legacy: bool,
}

fn bad(path: &Path, msg: impl Into<String>) -> QuantizeError {
    QuantizeError::Imatrix {
        path: path.display().to_string(),
        msg: msg.into(),
    }
}

impl Imatrix {
    /// Reads a GGUF or legacy imatrix file (told apart by the GGUF magic).
    pub fn read(path: &Path) -> Result<Imatrix> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        if bytes.starts_with(b"GGUF") {
            let f = GgufFile::from_bytes(&bytes).map_err(|e| bad(path, e.to_string()))?;
            Self::from_gguf(&f).map_err(|e| bad(path, e))
        } else {
            Self::from_legacy(&bytes).map_err(|e| bad(path, e))
        }
    }

    /// The entries of a GGUF imatrix.
    pub fn from_gguf(f: &GgufFile) -> std::result::Result<Imatrix, String> {
        let mut m = Imatrix::default();
        if let Some(Value::Array(Array::String(d))) = f.get(KEY_DATASETS) {
            m.datasets = d.clone();
        }
        let u32_key = |k: &str| f.get(k).and_then(Value::as_integer).unwrap_or(0) as u32;
        m.chunk_count = u32_key(KEY_CHUNK_COUNT);
        m.chunk_size = u32_key(KEY_CHUNK_SIZE);
        let mut sums: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        let mut counts: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for t in f.tensors() {
            let (base, is_sum) = if let Some(b) = t.name.strip_suffix(SUFFIX_SUMS) {
                (b, true)
            } else if let Some(b) = t.name.strip_suffix(SUFFIX_COUNTS) {
                (b, false)
            } else {
                continue;
            };
            if t.ty != GgmlType::F32 {
                return Err(format!("{} is {}, must be F32", t.name, t.ty));
            }
            let v: Vec<f32> = f
                .tensor_data(t)
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if is_sum {
                sums.insert(base.to_string(), v);
            } else {
                if let Some(x) = v.iter().find(|x| !x.is_finite() || **x < 0.0) {
                    return Err(format!("{} holds the count {x}", t.name));
                }
                let c = v.iter().map(|x| x.round() as u64).collect();
                counts.insert(base.to_string(), c);
            }
        }
        for (name, s) in sums {
            let c = counts
                .remove(&name)
                .ok_or_else(|| format!("{name}{SUFFIX_SUMS} has no {name}{SUFFIX_COUNTS}"))?;
            if c.is_empty() || s.len() % c.len() != 0 {
                return Err(format!(
                    "{name}: {} sums do not split into {} counts",
                    s.len(),
                    c.len()
                ));
            }
            m.entries.insert(name, Entry { sums: s, counts: c });
        }
        if let Some(name) = counts.keys().next() {
            return Err(format!("{name}{SUFFIX_COUNTS} has no {name}{SUFFIX_SUMS}"));
        }
        if m.entries.is_empty() {
            return Err("no .in_sum2/.counts tensors: not an imatrix".into());
        }
        Ok(m)
    }

    /// The entries of a legacy `.dat` imatrix.
    pub fn from_legacy(b: &[u8]) -> std::result::Result<Imatrix, String> {
        let mut r = Bytes { b, pos: 0 };
        let n = r.i32().ok_or("file ends before the entry count")?;
        if n < 1 {
            return Err(format!("{n} entries: not an imatrix"));
        }
        let mut m = Imatrix {
            legacy: true,
            ..Default::default()
        };
        for i in 0..n {
            let len = r.i32().ok_or_else(|| format!("entry {i}: file ends"))?;
            let name = usize::try_from(len)
                .ok()
                .and_then(|l| r.take(l))
                .ok_or_else(|| format!("entry {i}: bad name length {len}"))?;
            let name = String::from_utf8(name.to_vec())
                .map_err(|_| format!("entry {i}: name is not UTF-8"))?;
            let (ncall, nval) = r
                .i32()
                .zip(r.i32())
                .ok_or_else(|| format!("{name}: file ends before ncall/nval"))?;
            if nval < 1 || ncall < 0 {
                return Err(format!("{name}: nval {nval}, ncall {ncall}"));
            }
            let vals = r
                .take(nval as usize * 4)
                .ok_or_else(|| format!("{name}: {nval} values run past the end"))?;
            let sums = vals
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let counts = vec![ncall as u64];
            m.entries.insert(name, Entry { sums, counts });
        }
        // Optional trailer: chunk count, dataset name.
        if let Some(c) = r.i32() {
            m.chunk_count = c.max(0) as u32;
            let d = r
                .i32()
                .and_then(|l| usize::try_from(l).ok())
                .and_then(|l| r.take(l));
            if let Some(d) = d.filter(|d| !d.is_empty()) {
                m.datasets.push(String::from_utf8_lossy(d).into_owned());
            }
        }
        Ok(m)
    }

    /// The per-column weights of tensor `name` as llama-quantize derives
    /// them: `n_per_row * n_mat` values (matrix `e`'s at `e * n_per_row`).
    pub fn weights(&self, name: &str) -> Option<Vec<f32>> {
        let e = self.entries.get(name)?;
        if self.legacy {
            let ncall = e.counts.first().copied().unwrap_or(0);
            return Some(if ncall > 0 {
                e.sums.iter().map(|s| s / ncall as f32).collect()
            } else {
                e.sums.clone()
            });
        }
        let block = e.sums.len() / e.counts.len().max(1);
        let mut w = Vec::with_capacity(e.sums.len());
        for (chunk, &c) in e.sums.chunks(block.max(1)).zip(&e.counts) {
            if c > 0 {
                w.extend(chunk.iter().map(|s| s / c as f32));
            } else {
                w.extend(std::iter::repeat_n(1.0, chunk.len()));
            }
        }
        Some(w)
    }

    /// How often each expert of a routed-expert tensor was chosen (None for
    /// a tensor with one count or without an entry).
    pub fn expert_counts(&self, name: &str) -> Option<&[u64]> {
        let e = self.entries.get(name)?;
        (e.counts.len() > 1).then_some(e.counts.as_slice())
    }

    /// The file as llama-imatrix writes it (tensors in name order).
    pub fn to_gguf(&self) -> Result<Vec<u8>> {
        let mut w = GgufWriter::new(32)?;
        w.add_kv(KEY_TYPE, "imatrix")?;
        w.add_kv(
            KEY_DATASETS,
            Value::Array(Array::String(self.datasets.clone())),
        )?;
        w.add_kv(KEY_CHUNK_COUNT, self.chunk_count)?;
        w.add_kv(KEY_CHUNK_SIZE, self.chunk_size)?;
        for (name, e) in &self.entries {
            let n = e.counts.len();
            if n == 0 || e.sums.is_empty() {
                continue;
            }
            let block = (e.sums.len() / n) as u64;
            let sums: Vec<u8> = e.sums.iter().flat_map(|v| v.to_le_bytes()).collect();
            let counts: Vec<u8> = e
                .counts
                .iter()
                .flat_map(|&c| (c as f32).to_le_bytes())
                .collect();
            w.add_tensor(
                format!("{name}{SUFFIX_SUMS}"),
                &[block, n as u64],
                GgmlType::F32,
                sums,
            )?;
            w.add_tensor(
                format!("{name}{SUFFIX_COUNTS}"),
                &[1, n as u64],
                GgmlType::F32,
                counts,
            )?;
        }
        Ok(w.to_bytes()?)
    }

    /// The legacy `.dat` bytes, as llama-imatrix `--output-format dat`
    /// writes them (`ncall` is the largest count over `chunk_size`, rounded
    /// up; matrices that saw no token store 1).
    pub fn to_legacy(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let chunk = u64::from(self.chunk_size.max(1));
        let stored: Vec<(&String, &Entry)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.counts.iter().any(|&c| c > 0))
            .collect();
        out.extend_from_slice(&(stored.len() as i32).to_le_bytes());
        for (name, e) in stored {
            out.extend_from_slice(&(name.len() as i32).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            let ncall = if self.legacy {
                e.counts[0]
            } else {
                e.counts.iter().max().copied().unwrap_or(0).div_ceil(chunk)
            };
            out.extend_from_slice(&(ncall as i32).to_le_bytes());
            out.extend_from_slice(&(e.sums.len() as i32).to_le_bytes());
            let block = e.sums.len() / e.counts.len().max(1);
            for (i, s) in e.sums.iter().enumerate() {
                let v = if self.legacy {
                    *s
                } else {
                    match e.counts[i / block.max(1)] {
                        0 => ncall as f32,
                        c => s / c as f32 * ncall as f32,
                    }
                };
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out.extend_from_slice(&(self.chunk_count as i32).to_le_bytes());
        let d = self.datasets.last().map(String::as_str).unwrap_or("");
        out.extend_from_slice(&(d.len() as i32).to_le_bytes());
        out.extend_from_slice(d.as_bytes());
        out
    }

    /// Writes GGUF, or the legacy format when `legacy`.
    pub fn write(&self, path: &Path, legacy: bool) -> Result<()> {
        let bytes = if legacy {
            self.to_legacy()
        } else {
            self.to_gguf()?
        };
        std::fs::write(path, bytes).map_err(io_err(path))
    }
}

/// A little-endian reader over the legacy format's bytes.
struct Bytes<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len())?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Some(s)
    }

    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|s| i32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Imatrix {
        let mut m = Imatrix {
            datasets: vec!["calib.txt".into()],
            chunk_count: 3,
            chunk_size: 4,
            ..Default::default()
        };
        m.entries.insert(
            "blk.0.attn_q.weight".into(),
            Entry {
                sums: vec![1.0, 2.0, 3.0, 4.0],
                counts: vec![12],
            },
        );
        m.entries.insert(
            "blk.1.ffn_up_exps.weight".into(),
            Entry {
                sums: vec![2.0, 4.0, 0.0, 0.0, 9.0, 3.0],
                counts: vec![2, 0, 3],
            },
        );
        m
    }

    #[test]
    fn gguf_round_trip_and_weights() {
        let m = sample();
        let f = GgufFile::from_bytes(m.to_gguf().unwrap()).unwrap();
        let t = f.tensor("blk.1.ffn_up_exps.weight.in_sum2").unwrap();
        assert_eq!(t.dims, vec![2, 3]);
        assert_eq!(
            f.tensor("blk.1.ffn_up_exps.weight.counts").unwrap().dims,
            vec![1, 3]
        );
        let back = Imatrix::from_gguf(&f).unwrap();
        assert_eq!(back, m);
        let w = back.weights("blk.1.ffn_up_exps.weight").unwrap();
        assert_eq!(w, vec![1.0, 2.0, 1.0, 1.0, 3.0, 1.0]);
        assert_eq!(
            back.expert_counts("blk.1.ffn_up_exps.weight"),
            Some(&[2, 0, 3][..])
        );
        assert_eq!(back.expert_counts("blk.0.attn_q.weight"), None);
    }

    #[test]
    fn legacy_round_trip_gives_the_same_weights() {
        let m = sample();
        let back = Imatrix::from_legacy(&m.to_legacy()).unwrap();
        assert!(back.legacy);
        assert_eq!(back.chunk_count, 3);
        assert_eq!(back.datasets, vec!["calib.txt".to_string()]);
        for name in m.entries.keys() {
            assert_eq!(back.weights(name), m.weights(name), "{name}");
        }
        // Re-written legacy files are stable.
        assert_eq!(back.to_legacy(), m.to_legacy());
    }

    #[test]
    fn bad_files_are_errors() {
        assert!(Imatrix::from_legacy(&[1, 0]).is_err());
        assert!(Imatrix::from_legacy(&5i32.to_le_bytes()).is_err());
        let mut b = 1i32.to_le_bytes().to_vec();
        b.extend_from_slice(&1000i32.to_le_bytes());
        assert!(Imatrix::from_legacy(&b).is_err());
        let mut w = GgufWriter::new(32).unwrap();
        w.add_tensor("x.in_sum2", &[2, 1], GgmlType::F32, vec![0u8; 8])
            .unwrap();
        let f = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
        assert!(Imatrix::from_gguf(&f).unwrap_err().contains("no x.counts"));
    }
}
