//! What a node holds under a plan ([`Holding`]) and whether it fits its
//! budget ([`MemFit`]): the bytes that must stay resident, the routed
//! experts that page, and the paging time with uniform or skewed
//! ([`hit_rate`]) expert popularity.

use super::Node;

/// What a node holds under a plan.
#[derive(Clone, Debug, Default)]
pub(crate) struct Holding {
    pub weights: u64,
    pub kv: u64,
    pub embed: u64,
    pub output: u64,
    /// Routed-expert bytes held (`X`).
    pub experts: u64,
    /// Routed-expert bytes a token touches here (`T`), expected.
    pub touched: f64,
    /// The largest single layer's active experts held here.
    pub working: u64,
    /// The most experts any layer held here has (for the skewed hit rate).
    pub n_exp: u32,
}

/// Memory verdict for one node.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MemFit {
    /// Bytes over budget that cannot page.
    pub overflow: u64,
    /// Expert bytes paged from disk.
    pub paged: u64,
    /// Seconds per token of paging.
    pub page_time: f64,
}

impl Holding {
    pub fn resident(&self) -> u64 {
        self.weights
            .saturating_add(self.kv)
            .saturating_add(self.embed)
            .saturating_add(self.output)
    }

    /// Bytes that must be in RAM whatever pages.
    pub fn required(&self, node: &Node) -> u64 {
        let ex = if node.disk > 0.0 {
            self.working.min(self.experts)
        } else {
            self.experts
        };
        self.resident().saturating_add(ex)
    }

    /// The memory verdict on `node` with expert popularity Zipf(`skew`).
    pub fn fit(&self, node: &Node, skew: f64) -> MemFit {
        let overflow = self.required(node).saturating_sub(node.budget);
        if node.disk <= 0.0 {
            return MemFit {
                overflow,
                ..MemFit::default()
            };
        }
        let room = node.budget.saturating_sub(self.resident());
        let paged = self.experts.saturating_sub(room);
        let page_time = if paged > 0 && self.experts > 0 {
            let cached = room.min(self.experts) as f64 / self.experts as f64;
            self.touched * (1.0 - hit_rate(self.n_exp, cached, skew)) / node.disk
        } else {
            0.0
        };
        MemFit {
            overflow,
            paged,
            page_time,
        }
    }
}

/// The share of routed picks that land on the most popular `frac` of `e`
/// experts when popularity is Zipf(`skew`): `frac` itself when `skew` is
/// 0; otherwise `H(frac·e)/H(e)` with `H` the continuous generalised
/// harmonic number (Euler–Maclaurin: `1 + ∫₁ᵐ x^−s dx + (m^−s − 1)/2`,
/// linear below one expert).
pub fn hit_rate(e: u32, frac: f64, skew: f64) -> f64 {
    let frac = frac.clamp(0.0, 1.0);
    if skew <= 0.0 || e <= 1 {
        return frac;
    }
    let h = |m: f64| -> f64 {
        if m <= 1.0 {
            return m;
        }
        let integral = if (skew - 1.0).abs() < 1e-9 {
            m.ln()
        } else {
            (m.powf(1.0 - skew) - 1.0) / (1.0 - skew)
        };
        1.0 + integral + (m.powf(-skew) - 1.0) / 2.0
    };
    (h(frac * e as f64) / h(e as f64)).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::hit_rate;

    #[test]
    fn skewed_hit_rate_beats_the_cached_fraction() {
        // Uniform routing: the hit rate is the fraction cached.
        assert_eq!(hit_rate(256, 0.25, 0.0), 0.25);
        // Skewed: the most popular quarter takes more than a quarter of
        // the picks, more the steeper the skew; all cached is all hits.
        let (a, b) = (hit_rate(256, 0.25, 0.5), hit_rate(256, 0.25, 1.0));
        assert!(a > 0.3 && b > a && b < 1.0, "{a} {b}");
        assert!((hit_rate(256, 1.0, 1.0) - 1.0).abs() < 1e-12);
        assert_eq!(hit_rate(256, 0.0, 1.0), 0.0);
        // Zipf(1) over 256: the top 64 take H(64)/H(256) ≈ 4.74/6.12.
        assert!((b - 0.775).abs() < 0.02, "{b}");
        // Monotone in the fraction cached.
        let mut last = 0.0;
        for i in 0..=20 {
            let h = hit_rate(256, i as f64 / 20.0, 0.8);
            assert!(h >= last, "{i}: {h} < {last}");
            last = h;
        }
    }
}
