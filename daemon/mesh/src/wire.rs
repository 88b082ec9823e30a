//! Wire messages of the mesh, from the `dwarfstar-proto` crate (`proto/dwarfstar/v1/mesh.proto`,
//! package `dwarfstar.v1`): the data-plane [`FrameHeader`] and the [`Capabilities`] a node
//! advertises over `/dwarfstar/caps/1`. Re-exported here so users of the mesh need one import.

pub use dwarfstar_proto::v1::{Addresses, Capabilities, DType, FrameHeader, FrameKind, ModelInfo};
pub use dwarfstar_proto::PROTOCOL_VERSION;
