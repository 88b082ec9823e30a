//! Wire messages of the mesh, hand-written with `prost` derives (no protoc needed).
//!
//! These mirror `proto/mesh.proto` (package `dwarfstar.v1`): the data-plane [`FrameHeader`] and the
//! [`Capabilities`] a node advertises over `/dwarfstar/caps/1`. Field numbers are the wire contract.

/// What a data-plane frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum FrameKind {
    /// Hidden-state rows sent to the next pipeline stage.
    Activation = 0,
    /// Output logits returned to the coordinator.
    Logits = 1,
    /// Rows of an MoE FFN input sent to the node holding the selected experts.
    ExpertRequest = 2,
    /// Weighted partial sums coming back from an expert node.
    ExpertResult = 3,
    /// Frees a request's state (KV) on the receiver.
    Release = 4,
    /// An error report; `error` holds the text.
    Error = 5,
}

/// Element type of a frame payload (little-endian numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum DType {
    F32 = 0,
    F16 = 1,
    Bf16 = 2,
    I32 = 3,
    U32 = 4,
    U8 = 5,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::Bf16 => 2,
            DType::U8 => 1,
        }
    }
}

/// Header of one data-plane frame; the payload (`payload_len` bytes) follows it on the stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FrameHeader {
    #[prost(uint64, tag = "1")]
    pub request_id: u64,
    #[prost(uint64, tag = "2")]
    pub plan_version: u64,
    #[prost(enumeration = "FrameKind", tag = "3")]
    pub kind: i32,
    #[prost(uint32, tag = "4")]
    pub layer: u32,
    #[prost(uint32, repeated, tag = "5")]
    pub positions: Vec<u32>,
    #[prost(enumeration = "DType", tag = "6")]
    pub dtype: i32,
    #[prost(uint64, repeated, tag = "7")]
    pub shape: Vec<u64>,
    #[prost(uint64, tag = "8")]
    pub payload_len: u64,
    #[prost(string, tag = "9")]
    pub error: String,
}

/// A model file a node holds.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelInfo {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, tag = "2")]
    pub size: u64,
    /// Content hash, e.g. `blake3:<hex>`.
    #[prost(string, tag = "3")]
    pub hash: String,
}

/// What a node offers the mesh: the planner's `NodeCaps` fields, the models it holds and its addresses.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Capabilities {
    /// libp2p PeerId (base58). Filled in by the mesh for the local node.
    #[prost(string, tag = "1")]
    pub peer_id: String,
    #[prost(uint64, tag = "2")]
    pub mem_budget: u64,
    #[prost(uint64, tag = "3")]
    pub free_ram: u64,
    #[prost(uint64, tag = "4")]
    pub total_ram: u64,
    #[prost(uint32, tag = "5")]
    pub cores: u32,
    #[prost(double, tag = "6")]
    pub matmul_gflops: f64,
    #[prost(double, tag = "7")]
    pub mem_bw_gbs: f64,
    #[prost(double, tag = "8")]
    pub disk_read_gbs: f64,
    #[prost(uint64, tag = "9")]
    pub free_disk: u64,
    #[prost(message, repeated, tag = "10")]
    pub models: Vec<ModelInfo>,
    /// QUIC data-plane address `ip:port`. Filled in by the mesh for the local node.
    #[prost(string, tag = "11")]
    pub quic_addr: String,
    #[prost(string, tag = "12")]
    pub grpc_addr: String,
    #[prost(string, tag = "13")]
    pub http_addr: String,
    /// Software version of the node.
    #[prost(string, tag = "14")]
    pub version: String,
}
