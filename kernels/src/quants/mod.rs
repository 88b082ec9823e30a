//! One module per format family. Each block type is `#[repr(C)]`, derives
//! `bytemuck::Pod`, and carries a compile-time size assert; each family
//! exposes `kernels(ty, level)` for the dispatch table.

pub mod float;
pub mod iquants;
pub mod kquants;
pub mod legacy;
pub mod mxfp4;
pub mod ternary;
