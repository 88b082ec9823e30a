//! DeepSeek V4's rotary embedding: interleaved pairs on the trailing
//! `n_rot` dims of a head, the base per layer family (`rope.freq_base`
//! for sliding-only layers, `compress_rope_freq_base` with optional YaRN
//! for the rest), and its inverse, which the attention output goes through
//! because keys double as values.
//!
//! Angles follow DeepSeek's `precompute_freqs_cis` (f32 inverse
//! frequencies `1 / base^(2i/d)`, YaRN blended by its linear ramp, angle =
//! position × frequency); in llama-exact mode they come from ggml's RoPE
//! ([`dwarfstar_kernels::ops::Rope`]), built by repeated multiplication.

use dwarfstar_kernels::ops::{self, RopeStyle};

use super::hparams::RopeSpec;

/// One layer family's rotation.
#[derive(Clone, Debug)]
pub struct Rotary {
    /// Per rotated pair: the angle per position.
    freqs: Vec<f32>,
    /// ggml's parameters (its angles in llama-exact mode; and the pair
    /// rotation itself, which is the same in both modes).
    ggml: ops::Rope,
    exact: bool,
}

impl Rotary {
    pub fn new(spec: &RopeSpec, n_rot: usize, exact: bool) -> Rotary {
        let d = n_rot as f32;
        let mut freqs: Vec<f32> = (0..n_rot / 2)
            .map(|i| 1.0 / spec.base.powf((2 * i) as f32 / d))
            .collect();
        let mut yarn = ops::Yarn::default();
        let mut freq_scale = 1.0;
        if let Some(y) = spec.yarn {
            let corr = |rot: f32| {
                n_rot as f64 * (y.orig_ctx as f64 / (rot as f64 * 2.0 * std::f64::consts::PI)).ln()
                    / (2.0 * (spec.base as f64).ln())
            };
            let lo = corr(y.beta_fast).floor().max(0.0);
            let mut hi = corr(y.beta_slow).ceil().min(n_rot as f64 - 1.0);
            if lo == hi {
                hi += 0.001;
            }
            for (i, f) in freqs.iter_mut().enumerate() {
                let ramp = (((i as f64 - lo) / (hi - lo)) as f32).clamp(0.0, 1.0);
                let smooth = 1.0 - ramp;
                *f = *f / y.factor * (1.0 - smooth) + *f * smooth;
            }
            freq_scale = 1.0 / y.factor;
            yarn = ops::Yarn {
                ext_factor: 1.0,
                // Cancels the magnitude ggml's YaRN applies (as llama.cpp's
                // deepseek4 graph does): DeepSeek rotates without scaling.
                attn_factor: 1.0 / (1.0 + 0.1 * y.factor.ln()),
                beta_fast: y.beta_fast,
                beta_slow: y.beta_slow,
                n_ctx_orig: u32::try_from(y.orig_ctx).unwrap_or(u32::MAX),
            };
        }
        Rotary {
            freqs,
            ggml: ops::Rope {
                style: RopeStyle::Normal,
                n_rot,
                freq_base: spec.base,
                freq_scale,
                yarn,
            },
            exact,
        }
    }

    pub fn n_rot(&self) -> usize {
        self.ggml.n_rot
    }

    /// The `(cos, sin)` of every pair at position `pos`.
    pub fn cos_sin(&self, pos: usize, out: &mut Vec<(f32, f32)>) {
        if self.exact {
            self.ggml.cos_sin(pos as i64, out);
            return;
        }
        out.clear();
        let p = pos as f32;
        out.extend(self.freqs.iter().map(|&f| {
            let a = p * f;
            (a.cos(), a.sin())
        }));
    }

    /// Rotates the trailing `n_rot` dims of every `head`-wide head of `x`.
    pub fn apply(&self, x: &mut [f32], head: usize, cs: &[(f32, f32)]) {
        let nope = head - self.ggml.n_rot;
        for h in x.chunks_exact_mut(head) {
            self.ggml.apply(&mut h[nope..], self.ggml.n_rot, cs);
        }
    }

    /// The inverse rotation of [`Rotary::apply`] at the same angles.
    pub fn apply_inverse(&self, x: &mut [f32], head: usize, cs: &[(f32, f32)]) {
        let inv: Vec<(f32, f32)> = cs.iter().map(|&(c, s)| (c, -s)).collect();
        self.apply(x, head, &inv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deepseek4::hparams::Yarn;

    #[test]
    fn inverse_undoes_and_nope_dims_stay() {
        let spec = RopeSpec {
            base: 10000.0,
            yarn: None,
        };
        let r = Rotary::new(&spec, 4, false);
        let orig: Vec<f32> = (0..16).map(|i| i as f32 * 0.3 - 2.0).collect();
        let mut x = orig.clone();
        let mut cs = Vec::new();
        r.cos_sin(37, &mut cs);
        r.apply(&mut x, 8, &cs);
        assert_eq!(&x[..4], &orig[..4]);
        assert_eq!(&x[8..12], &orig[8..12]);
        assert_ne!(&x[4..8], &orig[4..8]);
        r.apply_inverse(&mut x, 8, &cs);
        for (a, b) in x.iter().zip(&orig) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn both_angle_paths_agree() {
        for yarn in [
            None,
            Some(Yarn {
                factor: 16.0,
                orig_ctx: 65536,
                beta_fast: 32.0,
                beta_slow: 1.0,
            }),
        ] {
            let spec = RopeSpec {
                base: 160000.0,
                yarn,
            };
            let (a, b) = (Rotary::new(&spec, 64, false), Rotary::new(&spec, 64, true));
            let (mut ca, mut cb) = (Vec::new(), Vec::new());
            a.cos_sin(1234, &mut ca);
            b.cos_sin(1234, &mut cb);
            for (x, y) in ca.iter().zip(&cb) {
                assert!(
                    (x.0 - y.0).abs() < 2e-3 && (x.1 - y.1).abs() < 2e-3,
                    "{x:?} {y:?}"
                );
            }
        }
    }
}
