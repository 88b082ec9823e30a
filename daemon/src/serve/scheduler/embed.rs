//! Embeddings through the engine: an [`EmbedRequest`]'s inputs run through
//! the whole model between generation steps (the scheduler owns the
//! backend), each on a fresh state dropped after, in chunks of at most
//! `prefill_chunk` tokens, and each becomes one vector ([`Pool`]): the mean
//! of its final-norm rows over its positions, L2-normalised (llama.cpp's
//! `--pooling mean` with its default `embd_normalize=2`).

use tokio::sync::oneshot;

use super::{Backend, Scheduler};

/// Inputs to embed, each already tokenized; the reply holds one vector per
/// input, in order, or why they could not be computed.
#[derive(Debug)]
pub struct EmbedRequest {
    pub inputs: Vec<Vec<u32>>,
    pub reply: oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

/// A running mean of rows, normalised at the end.
#[derive(Debug, Default)]
pub struct Pool {
    sum: Vec<f64>,
    rows: usize,
}

impl Pool {
    /// Adds `n` rows laid end to end in `rows`.
    pub fn add(&mut self, rows: &[f32], n: usize) -> Result<(), String> {
        if n == 0 || !rows.len().is_multiple_of(n) || rows.is_empty() {
            return Err(format!("{} values do not make {n} rows", rows.len()));
        }
        let d = rows.len() / n;
        if self.sum.is_empty() {
            self.sum = vec![0.0; d];
        } else if self.sum.len() != d {
            return Err(format!(
                "rows of {d} values after rows of {}",
                self.sum.len()
            ));
        }
        for r in rows.chunks_exact(d) {
            for (s, &v) in self.sum.iter_mut().zip(r) {
                *s += f64::from(v);
            }
        }
        self.rows += n;
        Ok(())
    }

    /// The mean row scaled to unit length (left as is when it is zero).
    pub fn finish(self) -> Vec<f32> {
        let n = self.rows.max(1) as f64;
        let mean: Vec<f64> = self.sum.iter().map(|s| s / n).collect();
        let norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
        let scale = if norm > 0.0 { 1.0 / norm } else { 1.0 };
        mean.iter().map(|v| (v * scale) as f32).collect()
    }
}

impl<B: Backend> Scheduler<B> {
    /// Answers `r` (nothing when its asker is gone).
    pub(super) fn embed(&mut self, r: EmbedRequest) {
        if r.reply.is_closed() {
            return;
        }
        let out = r.inputs.iter().map(|t| self.embed_one(t)).collect();
        let _ = r.reply.send(out);
    }

    fn embed_one(&self, tokens: &[u32]) -> Result<Vec<f32>, String> {
        let n = tokens.len();
        if n == 0 || n > self.cfg.ctx_size {
            return Err(format!(
                "an input has {n} tokens; this server embeds 1 to {}",
                self.cfg.ctx_size
            ));
        }
        let mut state = self.backend.new_state(n);
        let mut pool = Pool::default();
        for chunk in tokens.chunks(self.cfg.prefill_chunk.max(1)) {
            let rows = self
                .backend
                .final_rows(&mut [(chunk, &mut state)])?
                .pop()
                .ok_or("the model returned no rows")?;
            pool.add(&rows, chunk.len())?;
        }
        Ok(pool.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::Pool;

    #[test]
    fn pool_is_the_normalised_mean_over_chunks() {
        let mut p = Pool::default();
        p.add(&[1.0, 0.0, 3.0, 0.0], 2).unwrap();
        p.add(&[2.0, 4.0], 1).unwrap();
        // mean (2, 4/3) over three rows
        let v = p.finish();
        let n = (4.0f64 + 16.0 / 9.0).sqrt();
        assert!((f64::from(v[0]) - 2.0 / n).abs() < 1e-6);
        assert!((f64::from(v[1]) - 4.0 / 3.0 / n).abs() < 1e-6);
        let mut bad = Pool::default();
        bad.add(&[1.0, 2.0], 1).unwrap();
        assert!(bad.add(&[1.0, 2.0, 3.0], 1).is_err());
        assert!(bad.add(&[1.0, 2.0, 3.0], 2).is_err());
    }
}
