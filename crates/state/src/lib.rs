//! The replicated state machine of Conclave.
//!
//! Owns: the data model (binary-safe strings, hashes and sets), per-key revisions, TTLs driven by
//! the leader's stamp on each entry, leases (keys and hash fields deleted when their lease ends),
//! transactions (compare, then one branch of writes, as one entry), the change events every
//! applied entry produces and the bounded history watchers read them from, counters, reads
//! ([`Query`], also inside transactions), request
//! de-duplication by (client id, sequence), the limits every request must respect, and the read
//! helpers that answer from a replica.
//!
//! Does not own: IO of any kind, clocks, async, serialization formats, Raft. The storage crate
//! persists this machine; the consensus crate orders the [`WriteRequest`]s fed to
//! [`Machine::apply`].
//!
//! Determinism: [`Machine::apply`] depends only on the machine and the request. Time comes from
//! [`WriteRequest::stamp`], which the leader sets from its clock; the machine never lets it go
//! backwards. Errors that depend on the input (a wrong type) are replies, never panics.
//!
//! Locks and room state are built by the API layer from these parts (a lock is a key set only if
//! absent, with a TTL or lease, whose creation revision is its fencing token).
//!

mod cautious;
mod command;
mod history;
mod limits;
mod machine;
mod nesting;
mod query;
mod record;

pub use command::{
    Check, CmpOp, Command, Compare, ExpireCondition, Expiry, LeaseId, Outcome, RequestId,
    SetCondition, Transaction, WriteReply, WriteRequest, FORGOTTEN_REPLY, MAX_LEASE_TTL_MS,
    MIN_LEASE_TTL_MS,
};
pub use history::{
    Compacted, Event, EventBatch, EventKind, History, KeyFilter, HISTORY_MAX_BYTES,
    HISTORY_MAX_EVENTS,
};
pub use limits::{InvalidRequest, Limits};
pub use machine::{
    Lease, Machine, ReadError, DEDUP_WINDOW_MS, MAX_KEPT_REPLIES_BYTES, MAX_KEPT_REPLY_BYTES,
    MAX_REPLIES_PER_CLIENT, MIN_REPLY_AGE_MS,
};
pub use query::{Answer, Query};
pub use record::{Record, Value};

/// A key, a hash field, a set member or a value: arbitrary bytes. A `Vec<u8>` that serializes
/// as one byte string (not a sequence of numbers), so large values encode at memcpy speed.
pub type Bytes = serde_bytes::ByteBuf;

/// The index of the log entry that produced a state; every reply carries one.
pub type Revision = u64;

/// Milliseconds since the Unix epoch, as stamped by the leader.
pub type Millis = u64;
