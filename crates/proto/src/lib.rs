//! Wire types generated from `proto/`, the single source of truth for every message.
//!
//! Owns: the client API (`conclave.v1`: `Kv`, `Cluster`, `Lease`, `Lock`, `Watch`, `PubSub`,
//! `Rooms`) and the node-to-node services (`conclave.peer.v1`: `Peer`, `Mesh`). Does not own: any conversion to or from the state machine's types
//! (the API and consensus crates do that) or any behaviour.

/// The client-facing API.
pub mod v1 {
    tonic::include_proto!("conclave.v1");
}

/// The node-to-node service.
pub mod peer {
    tonic::include_proto!("conclave.peer.v1");
}

/// Every proto file's descriptor (an encoded `FileDescriptorSet`), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// The metadata header carrying the sender's cluster id on every node-to-node call.
pub const CLUSTER_ID_HEADER: &str = "conclave-cluster-id";

/// The metadata header carrying the sender's node-to-node format version ([`WIRE_VERSION`]) on
/// every node-to-node call; a call without it comes from a build before version 2.
pub const WIRE_VERSION_HEADER: &str = "conclave-wire-version";

/// The version of the node-to-node format this build speaks: the Peer and Mesh messages and the
/// encoded Raft messages, forwarded requests and replies inside them. A node reads every
/// version up to its own and refuses a call in a later one, naming both.
/// - 1: before versions were announced.
/// - 2: replies may say a retried write's reply was not kept (`Outcome::Forgotten`), and a
///   leader may refuse a write for its disk (`LeaderError::NoSpace`).
pub const WIRE_VERSION: u32 = 2;

/// The metadata header naming the node a node-to-node call is meant for, where the sender knows
/// it: a node refuses a call meant for another (two members listed at one address, or an address
/// that moved), which would otherwise have it take its own messages for a peer's.
pub const TARGET_NODE_HEADER: &str = "conclave-target-node";

/// The trailer naming the compacted revision when a watch asks for history already dropped.
pub const COMPACTED_REVISION_TRAILER: &str = "conclave-compacted-revision";
