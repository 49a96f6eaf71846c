//! Consensus for a Conclave node: openraft wired to Conclave's storage and network.
//!
//! Owns: the openraft type configuration ([`TypeConfig`]), the node-to-node gRPC network
//! ([`network`] as client, [`PeerService`] as server), cluster bootstrap from an initial member
//! list, membership changes, forwarding of writes and read-index requests to the leader, read
//! barriers for the three consistency levels, and the leader's housekeeping (reaping expired keys,
//! renewing every lease after an election, then expiring leases past their deadline).
//!
//! Does not own: client-facing protocols (the API crates sit on top of [`Node`] and know nothing
//! below it but its methods), the data model (the state crate), durability (the storage crate).
//!
//! Write path: any node accepts a write ([`Node::write`]). If it is the leader it stamps the entry
//! with the replicated time (module `clock`: the leader's monotonic clock, slewed toward its wall
//! clock, continuing from the last applied stamp in a new term) and proposes it; otherwise it
//! forwards the request over the `Peer.Forward` RPC. While there is no leader (an election) the
//! write is held and retried until its deadline; a client never sees a redirect. Every write
//! carries a (client id, sequence), assigned here when the client gave none, so a retry after a
//! lost answer is applied once.
//!
//! Known to be missing: snapshot transfer is openraft's chunked transfer of an in-memory snapshot.

mod clock;
mod cluster;
mod codec;
mod formation;
pub mod fuzzing;
mod leader;
pub mod network;
mod node;
mod restore;
mod service;

use std::io::Cursor;

pub use cluster::{ClusterSpec, SpecError};
pub use leader::{AdminRequest, MemberView, MembershipView};
pub use network::MAX_PEER_MESSAGE_BYTES;
pub use node::{Consistency, Node, NodeError, NodeOptions, NodeStatus, StartError, Timing};
pub use restore::{seed_from_backup, RESTORE_REVISION_BUMP};
pub use service::PeerService;

/// Node ids are small integers chosen by the operator.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The openraft configuration of Conclave: log entries carry
    /// [`conclave_state::WriteRequest`]s and produce [`conclave_state::WriteReply`]s.
    pub TypeConfig:
        D = conclave_state::WriteRequest,
        R = conclave_state::WriteReply,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The openraft handle of a Conclave node.
pub type Raft = openraft::Raft<TypeConfig>;

/// A read-only view of this node's replica.
pub type StateView = conclave_storage::StateView<TypeConfig>;
