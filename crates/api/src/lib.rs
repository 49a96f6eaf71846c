//! Client-facing gRPC services of a Conclave node: `conclave.v1.Kv` and `conclave.v1.Cluster`.
//!
//! Owns: translating wire requests into state-machine commands and read barriers, checking them
//! against [`conclave_state::Limits`], and mapping failures to gRPC status codes
//! (`INVALID_ARGUMENT` for bad input and for a membership change naming an unknown node,
//! `FAILED_PRECONDITION` for a key of the wrong type, `UNAVAILABLE` with a reason when no leader answered or the replica could not
//! catch up in time, `DEADLINE_EXCEEDED` never: a request that runs out of time is `UNAVAILABLE`).
//!
//! Does not own: Raft, forwarding, storage (all behind [`conclave_consensus::Node`]); the RESP
//! front end (a later issue).

mod cluster;
mod convert;
mod gateway;
mod kv;
mod lease;
mod lock;
mod pubsub;
mod rooms;
mod watch;

pub use cluster::ClusterService;
pub use kv::KvService;
pub use lease::LeaseService;
pub use lock::{lock_key, LockService};
pub use pubsub::PubSubService;
pub use rooms::{participants_key, RoomsService, MEDIA_NODES_KEY, ROOMS_KEY};
pub use watch::WatchService;

/// Largest request message a client service decodes: the command limit and room for the
/// message's own framing, so a request within the command limit is judged by the node (and
/// refused with the limit named), never cut off by the transport's 4 MiB default.
pub const MAX_REQUEST_BYTES: usize =
    conclave_state::Limits::DEFAULT.max_command_bytes + 1024 * 1024;
