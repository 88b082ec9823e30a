//! Final hidden rows of a split model, for embeddings: one step down the
//! pipeline that asks every row back ([`Want::All`]) and keeps the rows the
//! output head would read (after the final norm) instead of logits. Only a
//! coordinator that holds the output head gets hidden rows back; on other
//! plans the last stage answers with logits, so embeddings are refused.

use super::{DistBackend, DistSeq};
use crate::node::pipeline::Want;

impl DistBackend {
    /// Each `(tokens, state)`'s final-norm rows, one per token.
    pub(super) fn final_rows_step(
        &self,
        items: &mut [(&[u32], &mut DistSeq)],
    ) -> Result<Vec<Vec<f32>>, String> {
        if !self.holds_output {
            return Err(
                "embeddings need the output head on the coordinating node, and \
                        this mesh's plan puts it on another stage"
                    .into(),
            );
        }
        let wants = vec![Want::All; items.len()];
        let (runs, rows) = self.pass(items, &wants)?;
        let e = self.model.n_embd();
        let want: usize = runs.iter().map(Vec::len).sum();
        if rows.len() != want * e {
            return Err(format!(
                "the pipeline returned {} values for {want} rows of {e}",
                rows.len()
            ));
        }
        let h = self.model.final_norm(&rows).map_err(|e| e.to_string())?;
        let d = h.len() / want;
        let mut out = Vec::with_capacity(items.len());
        let mut off = 0;
        for ((t, _), run) in items.iter().zip(&runs) {
            let skip = run.len() - t.len();
            out.push(h[(off + skip) * d..(off + run.len()) * d].to_vec());
            off += run.len();
        }
        Ok(out)
    }
}
