//! The multi-token-prediction (MTP) block of DeepSeek V4: its weights,
//! bound. Speculative decoding drafts with it ([`super::mtp_run`],
//! [`crate::draft_mtp::MtpDrafter`]).
//!
//! Two layouts hold it (see the V4 layout notes):
//! - **llama.cpp's MTP export** appends it as block `blk.{n_layer}`
//!   (counted in `block_count` and `nextn_predict_layers`): a full layer
//!   (attention, hyper-connections, MoE with learned routing) plus
//!   `nextn.eh_proj` (the concatenated `e_proj ‖ h_proj`, input
//!   `2·n_embd`), `nextn.enorm`, `nextn.hnorm`, and optionally
//!   `nextn.shared_head_norm`, `nextn.embed_tokens` and
//!   `nextn.shared_head_head` (else the trunk's norm, embeddings and head
//!   are shared); the trunk's `output_hc_*` is its hyper-connection head.
//!   Like llama.cpp, a file that declares MTP blocks but lacks
//!   `blk.{n_layer}.nextn.eh_proj.weight` is read as a trunk-only file.
//! - **ds4's** names it `mtp.0.*`, usually in a file of its own
//!   ([`bind_ds4_mtp`], [`super::Deepseek4Model::attach_mtp`]): the same
//!   layer tensors under `mtp.0.` instead of `blk.N.`, `e_proj` and
//!   `h_proj` kept apart, `mtp.0.norm` for the shared head norm and its
//!   own `mtp.0.hc_head_*`.
//!
//! Its drafting step, as DeepSeek's reference defines it: embed the next
//! token, `enorm` it, `hnorm` the trunk's last hyper-connection streams,
//! project both (`e_proj`, `h_proj`, summed), run the block, then the
//! hyper-connection head and output.

use std::sync::Arc;

use dwarfstar_gguf::GgufFile;

use crate::error::Result;
use crate::weights::Weight;

use super::hparams::Ds4HParams;
use super::weights::{bind_hc, bind_layer, blk, Bind, Ds4Layer, HcWeights, EMBD, VOCAB};

/// Where ds4 keeps the MTP block's tensors.
pub const DS4_PREFIX: &str = "mtp.0.";

/// The projection of the normalised embedding and hidden stream.
#[derive(Clone, Debug)]
pub enum EhProj {
    /// llama.cpp's `nextn.eh_proj`: `2·n_embd → n_embd`, embedding first.
    Joint(Weight),
    /// ds4's `e_proj` and `h_proj`, each `n_embd → n_embd`.
    Split { e: Weight, h: Weight },
}

/// The MTP block's weights.
#[derive(Clone, Debug)]
pub struct MtpWeights {
    /// Its block index (`n_layer`): its compression ratio's slot.
    pub block: usize,
    pub eh_proj: EhProj,
    pub enorm: Vec<f32>,
    pub hnorm: Vec<f32>,
    /// Final norm before the head (the trunk's `output_norm` if absent).
    pub shared_head_norm: Option<Vec<f32>>,
    /// Its own hyper-connection head (ds4); else the trunk's.
    pub hc_head: Option<HcWeights>,
    /// Own embeddings / head (the trunk's if absent).
    pub embed_tokens: Option<Weight>,
    pub head: Option<Weight>,
    /// The transformer block itself.
    pub layer: Ds4Layer,
    /// The file holding these tensors when it is not the trunk's.
    pub file: Option<Arc<GgufFile>>,
}

/// Binds the first MTP block of the trunk's own file, in either layout,
/// if it has one.
pub(crate) fn bind_mtp(b: &Bind<'_>, hp: &Ds4HParams) -> Result<Option<MtpWeights>> {
    if b.has(&format!("{DS4_PREFIX}e_proj.weight")) {
        return bind_ds4_mtp(b.file, hp).map(Some);
    }
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
        eh_proj: EhProj::Joint(b.matrix(
            &blk(il, "nextn.eh_proj.weight"),
            (2 * hp.n_embd, EMBD),
            e,
        )?),
        enorm: b.vector(&blk(il, "nextn.enorm.weight"), e)?,
        hnorm: b.vector(&blk(il, "nextn.hnorm.weight"), e)?,
        shared_head_norm: opt_vec("nextn.shared_head_norm.weight")?,
        hc_head: None,
        embed_tokens: opt_mat("nextn.embed_tokens.weight")?,
        head: opt_mat("nextn.shared_head_head.weight")?,
        layer: bind_layer(b, hp, il, false)?,
        file: None,
    }))
}

/// Binds ds4's `mtp.0.*` block from `file` (the trunk's or its own MTP
/// GGUF), every dimension checked against the trunk's `hp`.
pub fn bind_ds4_mtp(file: &GgufFile, hp: &Ds4HParams) -> Result<MtpWeights> {
    let il = hp.n_layer;
    let b = Bind {
        file,
        mtp_block: Some(il),
    };
    let e = (hp.n_embd, EMBD);
    let name = |t: &str| format!("{DS4_PREFIX}{t}");
    Ok(MtpWeights {
        block: il,
        eh_proj: EhProj::Split {
            e: b.matrix(&name("e_proj.weight"), e, e)?,
            h: b.matrix(&name("h_proj.weight"), e, e)?,
        },
        enorm: b.vector(&name("enorm.weight"), e)?,
        hnorm: b.vector(&name("hnorm.weight"), e)?,
        shared_head_norm: Some(b.vector(&name("norm.weight"), e)?),
        hc_head: Some(bind_hc(&b, &name("hc_head"), hp, hp.hc_mult)?),
        embed_tokens: None,
        head: None,
        layer: bind_layer(&b, hp, il, false)?,
        file: None,
    })
}
