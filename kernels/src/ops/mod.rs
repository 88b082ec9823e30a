//! The small f32 operations of a forward pass: RMS norm, RoPE, softmax,
//! attention's dot products and the gated activations.
//!
//! They follow ggml's CPU arithmetic where it changes results measurably:
//! RMS norm sums squares in f64, RoPE builds its angles by repeated f32
//! multiplication, GELU goes through an f16 table as ggml's
//! `GGML_GELU_FP16` path does, exponentials use ggml's polynomial
//! ([`exp`]), and attention sums in ggml's lane order ([`attn`]). An 8-bit
//! activation rounding after each of these turns a last-bit difference
//! into a visible one, so they are worth the care.

mod attn;
mod attn_tile;
mod attn_tile_lanes;
mod dequant_matmul;
mod exp;
pub mod qat;
mod vsum;

use std::sync::OnceLock;

use half::f16;

pub use attn::{dot_kq, dot_kq_f16, weighted_sum_v, VSumOrder};
pub use attn_tile::{attend_tile, tile_rows, F32Rows, TileScratch};
pub use dequant_matmul::matmul_dequant_f32;
pub use exp::{expf, silu, softmax, softmax_aligned, swiglu};
pub use vsum::{weighted_sum_rows, weighted_sum_rows_at, ValueRows};

/// `y = x / sqrt(mean(x²) + eps) * w`, in place on `x`. `w` may be empty
/// (no weight).
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    if w.is_empty() {
        x.iter_mut().for_each(|v| *v *= scale);
    } else {
        for (v, &g) in x.iter_mut().zip(w) {
            *v = (*v * scale) * g;
        }
    }
}

/// Standard layer norm with optional weight and bias (ggml's `norm`).
pub fn layer_norm(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let n = x.len() as f64;
    let mean = (x.iter().map(|&v| v as f64).sum::<f64>() / n) as f32;
    x.iter_mut().for_each(|v| *v -= mean);
    let var = (x.iter().map(|&v| (v * v) as f64).sum::<f64>() / n) as f32;
    let scale = 1.0 / (var + eps).sqrt();
    for (i, v) in x.iter_mut().enumerate() {
        *v *= scale;
        if !w.is_empty() {
            *v *= w[i];
        }
        if !b.is_empty() {
            *v += b[i];
        }
    }
}

/// How RoPE pairs the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i+1)` (ggml's mode 0, llama).
    Normal,
    /// Split halves `(i, i + n_rot/2)` (ggml's NEOX mode: qwen, gemma).
    Neox,
}

/// YaRN parameters; `ext_factor == 0` gives plain (linearly scaled) RoPE.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Yarn {
    pub ext_factor: f32,
    pub attn_factor: f32,
    pub beta_fast: f32,
    pub beta_slow: f32,
    pub n_ctx_orig: u32,
}

impl Default for Yarn {
    fn default() -> Self {
        Yarn {
            ext_factor: 0.0,
            attn_factor: 1.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            n_ctx_orig: 0,
        }
    }
}

/// Rotary position embedding parameters of one layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    pub style: RopeStyle,
    /// Rotated dimensions per head (the rest pass through).
    pub n_rot: usize,
    pub freq_base: f32,
    /// 1 / linear scaling factor.
    pub freq_scale: f32,
    pub yarn: Yarn,
}

fn yarn_corr_dim(n_dims: usize, n_ctx_orig: u32, n_rot: f32, base: f32) -> f32 {
    n_dims as f32 * (n_ctx_orig as f32 / (n_rot * 2.0 * std::f32::consts::PI)).ln()
        / (2.0 * base.ln())
}

impl Rope {
    /// The `(cos, sin)` of every rotated pair at position `pos`, in the
    /// order ggml computes them (angles by repeated multiplication).
    pub fn cos_sin(&self, pos: i64, out: &mut Vec<(f32, f32)>) {
        out.clear();
        let n = self.n_rot;
        let theta_scale = self.freq_base.powf(-2.0 / n as f32);
        let (corr_lo, corr_hi) = if self.yarn.ext_factor != 0.0 {
            let lo = yarn_corr_dim(n, self.yarn.n_ctx_orig, self.yarn.beta_fast, self.freq_base)
                .floor()
                .max(0.0);
            let hi = yarn_corr_dim(n, self.yarn.n_ctx_orig, self.yarn.beta_slow, self.freq_base)
                .ceil()
                .min(n as f32 - 1.0);
            (lo, hi)
        } else {
            (0.0, 0.0)
        };
        let mut theta = pos as f32;
        for i0 in (0..n).step_by(2) {
            let theta_extrap = theta;
            let theta_interp = self.freq_scale * theta_extrap;
            let mut t = theta_interp;
            let mut mscale = self.yarn.attn_factor;
            if self.yarn.ext_factor != 0.0 {
                let y = ((i0 / 2) as f32 - corr_lo) / (corr_hi - corr_lo).max(0.001);
                let ramp_mix = (1.0 - y.clamp(0.0, 1.0)) * self.yarn.ext_factor;
                t = theta_interp * (1.0 - ramp_mix) + theta_extrap * ramp_mix;
                mscale *= 1.0 + 0.1 * (1.0 / self.freq_scale).ln();
            }
            out.push((t.cos() * mscale, t.sin() * mscale));
            theta *= theta_scale;
        }
    }

    /// Rotates every head of `x` (`n_heads × head_dim`, rotated part first)
    /// with angles from [`Rope::cos_sin`]. Each rotated value is
    /// `fma(x0, cos, -(x1·sin))` / `fma(x0, sin, x1·cos)`: the contraction
    /// ggml's compiled C makes, so results agree to the bit.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, cs: &[(f32, f32)]) {
        #[cfg(target_arch = "x86_64")]
        {
            if exp::fma_available() {
                // SAFETY: FMA was detected at run time.
                unsafe { self.apply_fma(x, head_dim, cs) };
                return;
            }
        }
        self.apply_portable(x, head_dim, cs)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "fma")]
    unsafe fn apply_fma(&self, x: &mut [f32], head_dim: usize, cs: &[(f32, f32)]) {
        self.apply_portable(x, head_dim, cs)
    }

    #[inline(always)]
    fn apply_portable(&self, x: &mut [f32], head_dim: usize, cs: &[(f32, f32)]) {
        let (stride, offset) = match self.style {
            RopeStyle::Normal => (2, 1),
            RopeStyle::Neox => (1, self.n_rot / 2),
        };
        for head in x.chunks_exact_mut(head_dim) {
            for (i, &(c, s)) in cs.iter().enumerate() {
                let (ia, ib) = (i * stride, i * stride + offset);
                let (a, b) = (head[ia], head[ib]);
                head[ia] = a.mul_add(c, -(b * s));
                head[ib] = a.mul_add(s, b * c);
            }
        }
    }
}

/// The tanh GELU approximation, in f32 as ggml computes it.
#[inline]
pub fn gelu_f32(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF_A: f32 = 0.044715;
    // `1 + a·x·x` is one fused multiply-add in ggml's compiled C.
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (COEF_A * x).mul_add(x, 1.0)).tanh())
}

fn gelu_table() -> &'static [f16] {
    static TABLE: OnceLock<Vec<f16>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| f16::from_f32(gelu_f32(f16::from_bits(bits).to_f32())))
            .collect()
    })
}

/// GELU as ggml's CPU backend evaluates it: through an f16 table, exact
/// for |x| ≥ 10.
#[inline]
pub fn gelu(x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        gelu_table()[f16::from_f32(x).to_bits() as usize].to_f32()
    }
}

/// `gate[i] = gelu(gate[i]) * up[i]` (GeGLU).
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    let table = gelu_table();
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        let a = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x
        } else {
            table[f16::from_f32(x).to_bits() as usize].to_f32()
        };
        *g = a * u;
    }
}

/// `y += x`.
pub fn add_assign(y: &mut [f32], x: &[f32]) {
    for (a, &b) in y.iter_mut().zip(x) {
        *a += b;
    }
}

/// Dot product of two f32 slices, accumulated in f32 lanes of 8.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// `y += a * x`.
#[inline]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (v, &b) in y.iter_mut().zip(x) {
        *v += a * b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_unit_weight() {
        let mut x = vec![3.0, 4.0];
        rms_norm(&mut x, &[1.0, 1.0], 0.0);
        let r = (12.5f32).sqrt();
        assert!((x[0] - 3.0 / r).abs() < 1e-6 && (x[1] - 4.0 / r).abs() < 1e-6);
    }

    #[test]
    fn softmax_sums_to_one_and_handles_masks() {
        let mut x = vec![1.0, 2.0, f32::NEG_INFINITY, 0.5];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(x[2], 0.0);
    }

    #[test]
    fn rope_at_zero_is_identity_and_preserves_norm() {
        let rope = Rope {
            style: RopeStyle::Neox,
            n_rot: 8,
            freq_base: 10000.0,
            freq_scale: 1.0,
            yarn: Yarn::default(),
        };
        let mut cs = Vec::new();
        rope.cos_sin(0, &mut cs);
        let orig: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let mut x = orig.clone();
        rope.apply(&mut x, 8, &cs);
        assert_eq!(x, orig);
        rope.cos_sin(17, &mut cs);
        rope.apply(&mut x, 8, &cs);
        let n0: f32 = orig.iter().map(|v| v * v).sum();
        let n1: f32 = x.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-3);
    }

    #[test]
    fn expf_is_close_to_exp() {
        for i in -2000..2000 {
            let x = i as f32 * 0.0437;
            let (a, b) = (expf(x), x.exp());
            assert!(((a - b) / b).abs() < 4e-7, "{x}: {a} vs {b}");
        }
        assert_eq!(expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(expf(-200.0), 0.0);
        assert_eq!(expf(200.0), f32::INFINITY);
        // A value ggml's polynomial rounds differently from libm.
        assert_eq!(expf(0.0), 1.0);
    }

    #[test]
    fn gelu_table_matches_formula() {
        for &x in &[-3.0f32, -0.5, 0.0, 0.3, 1.7, 9.9] {
            assert!((gelu(x) - gelu_f32(x)).abs() < 1e-2 * (1.0 + x.abs()));
        }
        assert_eq!(gelu(12.0), 12.0);
        assert_eq!(gelu(-12.0), 0.0);
    }
}
