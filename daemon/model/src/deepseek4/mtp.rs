//! The multi-token-prediction (MTP) block of DeepSeek V4, bound but not
//! run: it is what speculative decoding will draft with.
//!
//! llama.cpp's MTP export appends it as block `blk.{n_layer}` (counted in
//! `nextn_predict_layers`): a full layer (attention, hyper-connections,
//! MoE with learned routing) plus `nextn.eh_proj` (the concatenated
//! `e_proj ‖ h_proj`, input `2·n_embd`), `nextn.enorm`, `nextn.hnorm`, and
//! optionally `nextn.shared_head_norm`, `nextn.embed_tokens` and
//! `nextn.shared_head_head` (else the trunk's norm, embeddings and head are
//! shared). Its drafting step, as DeepSeek's reference defines it: embed
//! the next token, `enorm` it, `hnorm` the trunk's last hyper-connection
//! streams, project both through `eh_proj`, run the block, then the
//! trunk's hyper-connection head and output.
//!
//! Like llama.cpp, a file that declares MTP blocks but lacks
//! `blk.{n_layer}.nextn.eh_proj.weight` is read as a trunk-only file. The
//! ds4 tool's separate `mtp.0.*` files are not read.

use crate::error::Result;
use crate::weights::Weight;

use super::hparams::Ds4HParams;
use super::weights::{bind_layer, blk, Bind, Ds4Layer, EMBD, VOCAB};

/// The MTP block's weights.
#[derive(Clone, Debug)]
pub struct MtpWeights {
    /// Its block index in the file (`n_layer`).
    pub block: usize,
    /// `2·n_embd → n_embd`: the normalised embedding ‖ the normalised
    /// hidden stream.
    pub eh_proj: Weight,
    pub enorm: Vec<f32>,
    pub hnorm: Vec<f32>,
    /// Final norm before the head (the trunk's `output_norm` if absent).
    pub shared_head_norm: Option<Vec<f32>>,
    /// Own embeddings / head (the trunk's if absent).
    pub embed_tokens: Option<Weight>,
    pub head: Option<Weight>,
    /// The transformer block itself.
    pub layer: Ds4Layer,
}

/// Binds the first MTP block, if the file has one.
pub(crate) fn bind_mtp(b: &Bind<'_>, hp: &Ds4HParams) -> Result<Option<MtpWeights>> {
    let il = hp.n_layer;
    if hp.n_nextn == 0 || !b.has(&blk(il, "nextn.eh_proj.weight")) {
        return Ok(None);
    }
    let e = (hp.n_embd, EMBD);
    let opt_vec = |name: &str| -> Result<Option<Vec<f32>>> {
        let n = blk(il, name);
        if b.has(&n) {
            b.vector(&n, e).map(Some)
        } else {
            Ok(None)
        }
    };
    let opt_mat = |name: &str| -> Result<Option<Weight>> {
        let n = blk(il, name);
        if b.has(&n) {
            b.matrix(&n, e, (hp.n_vocab, VOCAB)).map(Some)
        } else {
            Ok(None)
        }
    };
    Ok(Some(MtpWeights {
        block: il,
        eh_proj: b.matrix(&blk(il, "nextn.eh_proj.weight"), (2 * hp.n_embd, EMBD), e)?,
        enorm: b.vector(&blk(il, "nextn.enorm.weight"), e)?,
        hnorm: b.vector(&blk(il, "nextn.hnorm.weight"), e)?,
        shared_head_norm: opt_vec("nextn.shared_head_norm.weight")?,
        embed_tokens: opt_mat("nextn.embed_tokens.weight")?,
        head: opt_mat("nextn.shared_head_head.weight")?,
        layer: bind_layer(b, hp, il, false)?,
    }))
}
