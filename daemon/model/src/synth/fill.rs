//! The values of a synthetic file, cheap and deterministic.
//!
//! Quantizing gigabytes with reference quantizers would take long, so each
//! (type, standard deviation) gets a [`Pool`] of [`POOL_CHUNKS`] random
//! 256-value chunks quantized once, in parallel; a tensor is then a
//! sequence of pool chunks, chunk `c` of tensor `t` chosen by a hash of
//! `(seed, t, c)`. Output depends only on the seed, never on thread count.
//! Small tensors (norms, routers, biases, hyper-connection bases, hash
//! routing tables) are drawn directly.

use dwarfstar_kernels::quantize::{quantize, quantize_requires_imatrix};
use dwarfstar_kernels::{quantize_row, GgmlType};
use rayon::prelude::*;

use super::SynthError;

/// Values per pool chunk: one K-quant super-block, eight Q8_0 blocks.
pub const CHUNK: usize = 256;
/// Chunks per pool (a power of two).
pub const POOL_CHUNKS: usize = 4096;

/// SplitMix64: a full-period hash of a counter.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A small deterministic generator (SplitMix64 stream).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(mix(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u = self.uniform().max(1e-7);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

/// A stable 64-bit key of a name (FNV-1a).
pub fn name_key(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Pre-quantized random chunks of one type and standard deviation.
pub struct Pool {
    pub ty: GgmlType,
    pub sigma: f32,
    chunk_bytes: usize,
    data: Vec<u8>,
}

impl Pool {
    /// Quantizes [`POOL_CHUNKS`] chunks of normal values `× sigma`. Types
    /// ggml quantizes only against an importance matrix (IQ2_XXS, IQ2_XS,
    /// IQ1_S) get uniform importance, as `dwarfstar quantize` gives them.
    pub fn build(ty: GgmlType, sigma: f32, seed: u64) -> Result<Pool, SynthError> {
        let chunk_bytes = ty
            .row_bytes(CHUNK)
            .ok_or_else(|| SynthError::Config(format!("{ty} does not tile {CHUNK} values")))?;
        let mut data = vec![0u8; chunk_bytes * POOL_CHUNKS];
        let key = seed ^ mix(ty.id() as u64) ^ mix(sigma.to_bits() as u64 + 1);
        let ones = [1f32; CHUNK];
        let weighted = quantize_requires_imatrix(ty);
        data.par_chunks_mut(chunk_bytes)
            .enumerate()
            .try_for_each(|(i, out)| {
                let mut r = Rng::new(key ^ mix(i as u64));
                let vals: Vec<f32> = (0..CHUNK).map(|_| r.normal() * sigma).collect();
                if weighted {
                    quantize(ty, &vals, CHUNK, Some(&ones), out)
                        .map(|_| ())
                        .map_err(|e| SynthError::Config(format!("quantizing a {ty} pool: {e}")))
                } else {
                    quantize_row(ty, &vals, out).map_err(SynthError::from)
                }
            })?;
        Ok(Pool {
            ty,
            sigma,
            chunk_bytes,
            data,
        })
    }

    pub fn chunk_bytes(&self) -> usize {
        self.chunk_bytes
    }

    /// Fills `out` with chunks `first..` of the tensor keyed `key`. A
    /// last partial chunk gets the head of its pick (whole blocks when the
    /// tensor is whole blocks).
    pub fn fill(&self, key: u64, first: u64, out: &mut [u8]) {
        let cb = self.chunk_bytes;
        const PER_TASK: usize = 256;
        let pick = |c: u64| {
            let i = mix(key ^ c.wrapping_mul(0xd6e8_feb8_6659_fd93)) as usize & (POOL_CHUNKS - 1);
            &self.data[i * cb..(i + 1) * cb]
        };
        out.par_chunks_mut(cb * PER_TASK)
            .enumerate()
            .for_each(|(task, part)| {
                let c0 = first + (task * PER_TASK) as u64;
                for (j, dst) in part.chunks_mut(cb).enumerate() {
                    let src = pick(c0 + j as u64);
                    dst.copy_from_slice(&src[..dst.len()]);
                }
            });
    }
}

/// An RMS-norm weight: `1 + 0.05·u`, `u` uniform in `[-1, 1)`.
pub fn norm(n: usize, key: u64) -> Vec<f32> {
    let mut r = Rng::new(key);
    (0..n).map(|_| 1.0 + 0.1 * (r.uniform() - 0.5)).collect()
}

/// Normal values `× sigma`.
pub fn normal(n: usize, sigma: f32, key: u64) -> Vec<f32> {
    let mut r = Rng::new(key);
    (0..n).map(|_| r.normal() * sigma).collect()
}

/// Typical spread of the sigmoid router scores: logits of standard
/// deviation ~1 give sigmoid scores of deviation ~0.2.
pub const SCORE_SPREAD: f32 = 0.2;

/// The `exp_probs_b` selection bias of one MoE layer: expert `e` of
/// popularity rank `r` (a per-layer random permutation) gets
/// `-skew · SCORE_SPREAD · ln(1 + r)`, so selection odds fall roughly as
/// `(1 + r)^-skew` — Zipf-like, as measured on real DeepSeek routers. The
/// bias only steers selection; gate weights stay the raw scores.
pub fn bias(n_expert: usize, skew: f32, key: u64) -> Vec<f32> {
    let mut rank: Vec<usize> = (0..n_expert).collect();
    let mut r = Rng::new(key);
    for i in (1..n_expert).rev() {
        let j = (r.next_u64() % (i as u64 + 1)) as usize;
        rank.swap(i, j);
    }
    rank.iter()
        .map(|&k| -skew * SCORE_SPREAD * (1.0 + k as f32).ln())
        .collect()
}

/// One layer's hash routing table (`ffn_gate_tid2eid`, `n_vocab` rows of
/// `k` distinct expert ids): each token draws its experts without
/// replacement, expert `e` of popularity rank `r` (a per-layer random
/// permutation) with weight `(1 + r)^-skew` — Zipf-like as [`bias`] makes
/// the learned layers, uniform at `skew` 0.
pub fn hash_ids(n_vocab: usize, k: usize, n_expert: usize, skew: f32, key: u64) -> Vec<i32> {
    let mut r = Rng::new(key);
    let mut rank: Vec<usize> = (0..n_expert).collect();
    for i in (1..n_expert).rev() {
        let j = (r.next_u64() % (i as u64 + 1)) as usize;
        rank.swap(i, j);
    }
    let weight: Vec<f32> = rank.iter().map(|&k| (1.0 + k as f32).powf(-skew)).collect();
    let mut out = Vec::with_capacity(n_vocab * k);
    let mut w = weight.clone();
    for _ in 0..n_vocab {
        w.copy_from_slice(&weight);
        for _ in 0..k {
            let total: f32 = w.iter().sum();
            let mut u = r.uniform() * total;
            // The last expert still in the draw if rounding runs past the end.
            let mut pick = w.iter().rposition(|&x| x > 0.0).unwrap_or(0);
            for (e, &x) in w.iter().enumerate() {
                if x > 0.0 && u < x {
                    pick = e;
                    break;
                }
                u -= x;
            }
            w[pick] = 0.0;
            out.push(pick as i32);
        }
    }
    out
}

/// The `base` of a hyper-connection mix (`(2 + hc)·hc` values: pre, post,
/// comb): pre and post near 0 (each stream feeds the sub-block about
/// half, takes its output about once), comb `+2` on the diagonal so the
/// Sinkhorn mix mostly keeps each stream — near the identity, never exactly
/// — each value with a little noise.
pub fn hc_base(hc: usize, key: u64) -> Vec<f32> {
    let mut r = Rng::new(key);
    (0..(2 + hc) * hc)
        .map(|i| {
            let diag = i >= 2 * hc && (i - 2 * hc).is_multiple_of(hc + 1);
            (if diag { 2.0 } else { 0.0 }) + 0.1 * r.normal()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dwarfstar_kernels::dequantize_row;

    #[test]
    fn pool_values_have_the_asked_spread() {
        for ty in [
            GgmlType::Q4_K,
            GgmlType::Q8_0,
            GgmlType::Q2_K,
            GgmlType::F16,
        ] {
            let p = Pool::build(ty, 0.05, 7).unwrap();
            let mut bytes = vec![0u8; p.chunk_bytes() * 64];
            p.fill(3, 0, &mut bytes);
            let mut v = vec![0f32; CHUNK * 64];
            dequantize_row(ty, &bytes, &mut v).unwrap();
            let rms = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
            assert!((0.04..0.06).contains(&rms), "{ty}: rms {rms}");
            // Same key and chunk index, same bytes; another key, others.
            let mut again = vec![0u8; bytes.len()];
            p.fill(3, 0, &mut again);
            assert_eq!(bytes, again);
            p.fill(4, 0, &mut again);
            assert_ne!(bytes, again);
        }
    }

    #[test]
    fn iq2_pools_and_partial_chunks() {
        let p = Pool::build(GgmlType::IQ2_XXS, 0.05, 1).unwrap();
        let cb = p.chunk_bytes();
        let mut whole = vec![0u8; cb * 3];
        p.fill(9, 0, &mut whole);
        let mut v = vec![0f32; CHUNK * 3];
        dequantize_row(GgmlType::IQ2_XXS, &whole, &mut v).unwrap();
        let rms = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        assert!((0.03..0.07).contains(&rms), "rms {rms}");
        // A tensor of 2.5 chunks (F16): the tail is the head of chunk 2.
        let f = Pool::build(GgmlType::F16, 1.0, 1).unwrap();
        let mut a = vec![0u8; f.chunk_bytes() * 3];
        f.fill(4, 0, &mut a);
        let mut b = vec![0u8; f.chunk_bytes() * 5 / 2];
        f.fill(4, 0, &mut b);
        assert_eq!(a[..b.len()], b[..]);
    }

    #[test]
    fn hash_ids_are_distinct_in_range_and_skewed() {
        let (n, k, e) = (4000, 6, 32);
        let ids = hash_ids(n, k, e, 1.0, 5);
        assert_eq!(ids.len(), n * k);
        let mut count = vec![0usize; e];
        for row in ids.chunks_exact(k) {
            for (i, &x) in row.iter().enumerate() {
                assert!((0..e as i32).contains(&x));
                assert!(!row[..i].contains(&x), "{row:?}");
                count[x as usize] += 1;
            }
        }
        count.sort_unstable_by(|a, b| b.cmp(a));
        assert!(count[0] > 3 * count[e - 1], "{count:?}");
        assert!(count[e - 1] > 0, "every expert is used: {count:?}");
        let flat = hash_ids(n, k, e, 0.0, 5);
        let mut c = vec![0usize; e];
        flat.iter().for_each(|&x| c[x as usize] += 1);
        let (lo, hi) = (c.iter().min().unwrap(), c.iter().max().unwrap());
        assert!(*hi < 2 * *lo, "{c:?}");
        assert_eq!(ids, hash_ids(n, k, e, 1.0, 5));
    }

    #[test]
    fn bias_is_a_permuted_zipf_ladder() {
        let b = bias(16, 1.0, 9);
        let mut s = b.clone();
        s.sort_by(|a, b| b.total_cmp(a));
        assert_eq!(s[0], 0.0);
        assert!((s[15] + SCORE_SPREAD * 16f32.ln()).abs() < 1e-6);
        assert_ne!(b, s, "ranks are permuted");
        assert!(bias(16, 0.0, 9).iter().all(|&x| x == 0.0));
    }
}
