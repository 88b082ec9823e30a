//! The mesh node runtime: how a daemon takes part in a model split across
//! machines.
//!
//! - [`pipeline`]: steps, stage hosts and hops, sans I/O;
//! - [`backend`]: the coordinator's scheduler backend over the pipeline;
//! - [`error`]: what goes wrong, typed.

pub mod backend;
pub mod error;
pub mod pipeline;

#[cfg(test)]
mod tests;
