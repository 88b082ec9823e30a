//! Final hidden rows of a split model, for embeddings: one step down the
//! pipeline that asks every row back ([`Want::All`]) and keeps the rows the
//! output head would read (after the final norm) instead of logits. Only a
//! coordinator that holds the output head gets hidden rows back; on other
//! plans the last stage answers with logits, so embeddings are refused.

use super::{DistBackend, DistSeq};
use crate::node::pipeline::{Span, Step, Want};

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
        if items.iter().any(|(t, _)| t.is_empty()) {
            return Err("a sequence in the batch has no tokens".into());
        }
        let runs: Vec<Vec<u32>> = items
            .iter()
            .map(|(t, s)| [s.local.pending(), t].concat())
            .collect();
        let spans: Vec<Span> = items
            .iter()
            .zip(&runs)
            .map(|((_, s), run)| Span {
                seq: s.id,
                rows: run.len() as u32,
                pos0: s.local.held() as u32,
                want: Want::All,
                fork: s.fork,
                request: s.request.clone(),
            })
            .collect();
        let tokens: Vec<u32> = runs.concat();
        let states = items.iter_mut().map(|(_, s)| &mut s.local).collect();
        let x = self.local_pass(&tokens, &runs, states)?;
        let rows = match &self.next {
            Some(next) => {
                let step = Step {
                    plan_version: self.plan_version,
                    layer: self.local.end as u32,
                    spans,
                    tokens,
                    x,
                };
                let r = next.call(step).map_err(|e| e.to_string());
                self.flush_released();
                if r.is_err() {
                    for (_, s) in items.iter_mut() {
                        s.local.truncate(s.len);
                    }
                }
                r?
            }
            None => x,
        };
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
        for ((t, s), run) in items.iter_mut().zip(&runs) {
            let skip = run.len() - t.len();
            out.push(h[(off + skip) * d..(off + run.len()) * d].to_vec());
            off += run.len();
            s.len = s.local.len();
            s.fork = None;
        }
        Ok(out)
    }
}
