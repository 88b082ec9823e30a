//! Watching the inputs of weight products: the hook that importance-matrix
//! collection (`dwarfstar imatrix`) uses.
//!
//! A model with an observer set ([`crate::Model::set_observer`]) calls
//! [`MatmulObserver::observe`] with the input rows of every product with a
//! weight of the file, before the product runs, naming the weight as the
//! file does. Without one, each product pays one `Option` test.

/// Which matrix of a weight tensor a product used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatIndex {
    /// A 2-D weight: the whole tensor.
    Whole,
    /// Routed expert `id` of the `of` experts stacked in a 3-D tensor; only
    /// the rows of the tokens routed to it are passed (llama.cpp's
    /// `MUL_MAT_ID`, counted per expert).
    Expert { id: u32, of: u32 },
    /// Matrix `id` of the `of` stacked in a 3-D tensor that every token uses
    /// (the per-head MLA projections `attn_k_b`/`attn_v_b`; llama.cpp's
    /// `MUL_MAT` on a 3-D weight, counted once per token).
    Slice { id: u32, of: u32 },
}

/// Receives the input of each weight product.
pub trait MatmulObserver: Send + Sync {
    /// `rows` holds `rows.len() / n_cols` input rows of `n_cols` values
    /// (the weight's row length) multiplied by `tensor` (e.g.
    /// `blk.3.ffn_down_exps.weight`), matrix `mat` of it.
    fn observe(&self, tensor: &str, rows: &[f32], n_cols: usize, mat: MatIndex);
}
