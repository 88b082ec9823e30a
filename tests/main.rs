//! DwarfStar's integration tests: one binary, one module per area.
//!
//! Fixtures live in `tests/fixtures/` (copied from the reference outputs of
//! llama.cpp and transformers). Tests that need a real model find it in
//! `$DWARFSTAR_MODELS_DIR` (default `<repo>/models`), which
//! `deploy/fetch-models.sh` fills.

mod api;
mod api_extras;
mod cgroup;
mod cli;
mod common;
mod deepseek;
mod deepseek4;
mod inspect;
mod kv_file;
mod kv_quant;
mod kv_v4;
mod lan;
mod liveness;
mod mesh;
mod mtp;
mod paging;
mod paging_mesh;
mod paging_v4;
mod quantize;
mod recovery;
mod reference;
mod spec;
mod stage;
mod synth_moe;
mod synth_v4;
mod synthetic;
mod tools;
