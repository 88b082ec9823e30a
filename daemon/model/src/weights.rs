//! Binding GGUF tensors to their roles, with every shape checked against
//! the hyper-parameters before the first forward pass.

use std::sync::Arc;

use dwarfstar_gguf::{GgufFile, TensorInfo};
use dwarfstar_kernels::{dequantize_row, GgmlType, MatRef};

use crate::arch::{ArchSpec, Role};
use crate::error::{ModelError, Result};
use crate::hparams::HParams;
use crate::store::{tensor_bytes, WeightBytes};

/// A 2-D weight matrix in the file: `rows` outputs of `cols` inputs.
#[derive(Clone, Debug)]
pub struct Weight {
    pub info: TensorInfo,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
}

impl Weight {
    /// The matrix view of this weight's bytes in `src` (the mapped file,
    /// or a [`crate::store`] source; empty when `src` does not hold them).
    pub fn mat<'a, S: WeightBytes + ?Sized>(&self, src: &'a S) -> MatRef<'a> {
        MatRef {
            ty: self.ty,
            data: tensor_bytes(src, &self.info),
            rows: self.rows,
            cols: self.cols,
        }
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.cols).unwrap_or(0)
    }

    /// Dequantizes row `r` into `out` (`cols` floats).
    pub fn dequantize_row<S: WeightBytes + ?Sized>(
        &self,
        src: &S,
        r: usize,
        out: &mut [f32],
    ) -> Result<()> {
        if r >= self.rows {
            return Err(ModelError::Tensor {
                name: self.info.name.clone(),
                msg: format!("row {r} of {}", self.rows),
            });
        }
        let rb = self.row_bytes();
        let row = src
            .range(self.info.offset + (r * rb) as u64, rb as u64)
            .ok_or_else(|| ModelError::Tensor {
                name: self.info.name.clone(),
                msg: "bytes not held by the weight store".into(),
            })?;
        dequantize_row(self.ty, row, out)?;
        Ok(())
    }
}

/// Looks up tensors by role and checks their shapes.
pub struct Binder<'a> {
    pub file: &'a GgufFile,
}

impl<'a> Binder<'a> {
    fn info(&self, name: &str) -> Option<&'a TensorInfo> {
        self.file.tensor(name)
    }

    fn check_align(&self, info: &TensorInfo) -> Result<()> {
        let data = self.file.tensor_data(info);
        if !(data.as_ptr() as usize).is_multiple_of(4) {
            return Err(ModelError::Tensor {
                name: info.name.clone(),
                msg: "data is not 4-byte aligned".into(),
            });
        }
        Ok(())
    }

    /// A matrix `[cols, rows]` in ggml order.
    pub fn matrix(&self, name: &str, cols: usize, rows: usize) -> Result<Weight> {
        let info = self
            .info(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let expected = vec![cols as u64, rows as u64];
        if info.dims != expected {
            return Err(ModelError::TensorShape {
                name: name.to_string(),
                expected,
                found: info.dims.clone(),
            });
        }
        self.check_align(info)?;
        Ok(Weight {
            info: info.clone(),
            ty: info.ty,
            rows,
            cols,
        })
    }

    /// A vector of `n` values, dequantized to f32.
    pub fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        let info = self
            .info(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        if info.dims != [n as u64] {
            return Err(ModelError::TensorShape {
                name: name.to_string(),
                expected: vec![n as u64],
                found: info.dims.clone(),
            });
        }
        self.check_align(info)?;
        let mut out = vec![0f32; n];
        dequantize_row(info.ty, self.file.tensor_data(info), &mut out)?;
        Ok(out)
    }

    pub fn has(&self, name: &str) -> bool {
        self.info(name).is_some()
    }
}

/// The weights of one dense transformer block.
#[derive(Clone, Debug)]
pub struct DenseLayer {
    pub attn_norm: Vec<f32>,
    pub wq: Weight,
    pub wk: Weight,
    pub wv: Weight,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub wo: Weight,
    pub attn_post_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub gate: Weight,
    pub up: Weight,
    pub down: Weight,
    pub ffn_post_norm: Option<Vec<f32>>,
}

/// The weights outside the blocks.
#[derive(Clone, Debug)]
pub struct DenseWeights {
    pub tok_embd: Weight,
    pub output_norm: Vec<f32>,
    pub output: Weight,
    pub layers: Vec<DenseLayer>,
}

impl DenseWeights {
    /// Binds every tensor a dense model of `spec` needs.
    pub fn bind(file: &Arc<GgufFile>, spec: &ArchSpec, hp: &HParams) -> Result<DenseWeights> {
        let b = Binder { file };
        let tok_embd = b.matrix(&Role::TokenEmbd.name(0), hp.n_embd, hp.n_vocab)?;
        let output_norm = b.vector(&Role::OutputNorm.name(0), hp.n_embd)?;
        let output = if b.has(&Role::Output.name(0)) {
            b.matrix(&Role::Output.name(0), hp.n_embd, hp.n_vocab)?
        } else {
            tok_embd.clone()
        };
        let has_role = |r: Role| spec.required.contains(&r) || spec.optional.contains(&r);
        let mut layers = Vec::with_capacity(hp.n_layer);
        for il in 0..hp.n_layer {
            let opt_vec = |r: Role, n: usize| -> Result<Option<Vec<f32>>> {
                if !has_role(r) {
                    return Ok(None);
                }
                let name = r.name(il);
                if spec.required.contains(&r) || b.has(&name) {
                    b.vector(&name, n).map(Some)
                } else {
                    Ok(None)
                }
            };
            let (e, q, k, v) = (hp.n_embd, hp.q_dim(), hp.k_dim(), hp.v_dim());
            layers.push(DenseLayer {
                attn_norm: b.vector(&Role::AttnNorm.name(il), e)?,
                wq: b.matrix(&Role::AttnQ.name(il), e, q)?,
                wk: b.matrix(&Role::AttnK.name(il), e, k)?,
                wv: b.matrix(&Role::AttnV.name(il), e, v)?,
                bq: opt_vec(Role::AttnQBias, q)?,
                bk: opt_vec(Role::AttnKBias, k)?,
                bv: opt_vec(Role::AttnVBias, v)?,
                q_norm: opt_vec(Role::AttnQNorm, hp.head_dim_k)?,
                k_norm: opt_vec(Role::AttnKNorm, hp.head_dim_k)?,
                wo: b.matrix(&Role::AttnOut.name(il), hp.n_head * hp.head_dim_v, e)?,
                attn_post_norm: opt_vec(Role::AttnPostNorm, e)?,
                ffn_norm: b.vector(&Role::FfnNorm.name(il), e)?,
                gate: b.matrix(&Role::FfnGate.name(il), e, hp.n_ff)?,
                up: b.matrix(&Role::FfnUp.name(il), e, hp.n_ff)?,
                down: b.matrix(&Role::FfnDown.name(il), hp.n_ff, e)?,
                ffn_post_norm: opt_vec(Role::FfnPostNorm, e)?,
            });
        }
        Ok(DenseWeights {
            tok_embd,
            output_norm,
            output,
            layers,
        })
    }
}
