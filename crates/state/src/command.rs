//! What a client asks the replicated state to do, and what it gets back.

use serde::{Deserialize, Serialize};

use crate::{Answer, Bytes, Millis, Query, Revision};

/// Identifies one write of one client, so that a retry is applied once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId {
    /// Chosen by the client (or by the node on its behalf), unique per client process.
    pub client_id: u64,
    /// Grows with every write the client sends.
    pub sequence: u64,
}

/// One entry of application data in the Raft log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WriteRequest {
    /// Set when the write must be de-duplicated across retries.
    pub id: Option<RequestId>,
    /// The leader's clock when it accepted the write. The machine never lets time go backwards:
    /// the effective time of an entry is the largest stamp seen so far.
    pub stamp: Millis,
    /// What to do.
    pub command: Command,
}

/// When a SET should apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SetCondition {
    /// Always (plain SET).
    #[default]
    Always,
    /// Only if the key is absent (NX).
    IfAbsent,
    /// Only if the key is present (XX).
    IfPresent,
}

/// What a write does to a key's time to live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Expiry {
    /// The key lives until deleted; a previous TTL is cleared.
    #[default]
    Never,
    /// The key keeps whatever TTL it had (KEEPTTL).
    Keep,
    /// The key expires this many milliseconds after the entry's stamp.
    AfterMillis(u64),
    /// The key expires at this absolute time (ms since the epoch).
    AtMillis(Millis),
}

/// A mutation of the keyspace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Set a string value.
    Set {
        key: Bytes,
        value: Bytes,
        condition: SetCondition,
        expiry: Expiry,
        /// Reply with the previous string value (SET ... GET).
        return_previous: bool,
        /// Delete the key when this lease ends. A write without a lease detaches the key.
        lease: Option<LeaseId>,
    },
    /// Delete keys of any type.
    Delete { keys: Vec<Bytes> },
    /// Set hash fields, creating the hash if needed.
    HashSet {
        key: Bytes,
        fields: Vec<(Bytes, Bytes)>,
        /// Delete these fields when this lease ends. A write without a lease detaches them.
        lease: Option<LeaseId>,
    },
    /// Remove hash fields; an emptied hash is deleted.
    HashDelete { key: Bytes, fields: Vec<Bytes> },
    /// Add set members, creating the set if needed.
    SetAdd { key: Bytes, members: Vec<Bytes> },
    /// Remove set members; an emptied set is deleted.
    SetRemove { key: Bytes, members: Vec<Bytes> },
    /// Set a hash field only if the hash does not have it (HSETNX). Counts 1 if it was set.
    HashSetIfAbsent {
        key: Bytes,
        field: Bytes,
        value: Bytes,
    },
    /// Add `delta` to the integer in a string (INCRBY), creating it from 0; the TTL is kept.
    IncrBy { key: Bytes, delta: i64 },
    /// Add `delta` to the integer in a hash field (HINCRBY), creating it from 0.
    HashIncrBy {
        key: Bytes,
        field: Bytes,
        delta: i64,
    },
    /// Append to a string (APPEND), creating it if absent; the TTL is kept. Replies its length.
    Append { key: Bytes, value: Bytes },
    /// Change the time to live of an existing key of any type (EXPIRE, PEXPIREAT, PERSIST with
    /// [`Expiry::Never`]). A deadline at or before the entry's stamp deletes the key. Counts 1
    /// if the key's TTL changed (or it was deleted), 0 if it is absent or `condition` refused.
    Expire {
        key: Bytes,
        expiry: Expiry,
        condition: ExpireCondition,
    },
    /// Read inside a transaction, at the transaction's revision (a read in Redis's MULTI).
    Query(Query),
    /// Remove keys whose deadline has passed at the entry's stamp. Proposed by the leader; keys
    /// that were rewritten since (and so are no longer expired) are left alone.
    Reap { keys: Vec<Bytes> },
    /// Record which data directory (its incarnation, chosen when the directory was created) node
    /// `node` runs on, so a node that lost its data cannot rejoin under its old id unnoticed.
    RegisterNode { node: u64, incarnation: u64 },
    /// Forget node `node`'s incarnation. No longer proposed (applying a membership entry forgets
    /// the nodes it leaves out); kept, with its effect, so logs written before still decode and
    /// replay the same.
    ForgetNode { node: u64 },
    /// Check every comparison, then run `success` if all hold, else `failure`, as one entry.
    Txn(#[serde(deserialize_with = "crate::nesting::bounded")] Box<Transaction>),
    /// Start a lease that lives `ttl_ms` (at least [`MIN_LEASE_TTL_MS`]) unless kept alive.
    /// Its id is the revision of this entry.
    LeaseGrant { ttl_ms: u64 },
    /// Restart a lease's time to live from the entry's stamp.
    LeaseKeepAlive { lease: LeaseId },
    /// End a lease now, deleting what is attached to it.
    LeaseRevoke { lease: LeaseId },
    /// End the listed leases whose deadline has passed at the entry's stamp (proposed by the
    /// leader; leases kept alive since are left alone).
    LeaseExpire { leases: Vec<LeaseId> },
    /// Give every lease its full time to live again from the entry's stamp. A new leader proposes
    /// this before it expires any lease, so keep-alives lost to an election do not end leases.
    LeaseRenewAll,
    /// Does nothing but carry the leader's stamp, so replicated time advances while no client
    /// writes (proposed by the leader when idle, and before a linearizable read whose replica
    /// clock lags).
    Tick,
    /// Writes proposed together by the leader as one entry (see `conclave-consensus`'s
    /// proposer), applied one after the other at the entry's index and stamp. Each keeps its own
    /// request id, so each is de-duplicated on its own, and gets its own reply in
    /// [`Outcome::Batch`]; their own stamps are ignored. New variants go last: the variants
    /// before keep their encoding, so logs written before still decode.
    Batch(#[serde(deserialize_with = "crate::nesting::bounded")] Vec<WriteRequest>),
}

/// When an [`Command::Expire`] applies (Redis's EXPIRE options).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ExpireCondition {
    #[default]
    Always,
    /// Only if the key has no TTL (NX).
    NoTtl,
    /// Only if the key has a TTL (XX).
    HasTtl,
    /// Only if the new deadline is later than the current one; no TTL counts as infinite (GT).
    Later,
    /// Only if the new deadline is earlier than the current one (LT).
    Earlier,
}

/// The shortest lease a grant hands out; shorter requests are raised to it.
pub const MIN_LEASE_TTL_MS: u64 = 1000;
/// The longest lease a grant hands out; longer requests are lowered to it.
pub const MAX_LEASE_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// A lease is named by the revision of the entry that granted it.
pub type LeaseId = u64;

/// An atomic compare-then-write: all comparisons are checked against the state as of the entry,
/// then one branch runs. Commands inside a branch are applied in order; like Redis's EXEC, a
/// command that fails (a wrong type) reports it and the others still apply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub compares: Vec<Compare>,
    pub success: Vec<Command>,
    pub failure: Vec<Command>,
}

/// One comparison of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: Bytes,
    /// Compare a hash field (or set member) instead of the key: `Exists` and `Value` then look at
    /// the field; revisions are always the key's.
    pub field: Option<Bytes>,
    pub check: Check,
}

/// What a comparison checks. An absent key (or field) has no value and revisions 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Check {
    /// The key (or field) exists, or does not.
    Exists(bool),
    /// The string value (or field value) compared bytewise; an absent one only satisfies
    /// `NotEqual`.
    Value(CmpOp, Bytes),
    /// The revision that last changed the key.
    Modified(CmpOp, Revision),
    /// The revision that created the key.
    Created(CmpOp, Revision),
    /// Nothing changed the key (any field, a delete or an expiry included) after this revision.
    /// Fails when the history no longer reaches back that far. This is Redis's WATCH.
    UnchangedSince(Revision),
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmpOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

impl CmpOp {
    /// Whether `actual <op> expected` holds.
    pub fn holds<T: Ord + ?Sized>(self, actual: &T, expected: &T) -> bool {
        match self {
            CmpOp::Equal => actual == expected,
            CmpOp::NotEqual => actual != expected,
            CmpOp::Less => actual < expected,
            CmpOp::Greater => actual > expected,
        }
    }
}

impl Command {
    /// Bytes of keys, fields, members and values the command carries.
    pub fn payload_bytes(&self) -> usize {
        let sum = |items: &[Bytes]| items.iter().map(|i| i.len()).sum::<usize>();
        match self {
            Command::Set { key, value, .. } => key.len() + value.len(),
            Command::Delete { keys } | Command::Reap { keys } => sum(keys),
            Command::HashSet { key, fields, .. } => {
                key.len() + fields.iter().map(|(f, v)| f.len() + v.len()).sum::<usize>()
            }
            Command::HashDelete { key, fields: items }
            | Command::SetAdd {
                key,
                members: items,
            }
            | Command::SetRemove {
                key,
                members: items,
            } => key.len() + sum(items),
            Command::Txn(txn) => {
                let compares: usize = txn
                    .compares
                    .iter()
                    .map(|c| c.key.len() + c.field.as_ref().map_or(0, |f| f.len()) + 16)
                    .sum();
                let branches: usize = txn
                    .success
                    .iter()
                    .chain(&txn.failure)
                    .map(Command::payload_bytes)
                    .sum();
                compares + branches
            }
            Command::HashSetIfAbsent { key, field, value } => key.len() + field.len() + value.len(),
            Command::IncrBy { key, .. } | Command::Expire { key, .. } => key.len() + 8,
            Command::HashIncrBy { key, field, .. } => key.len() + field.len() + 8,
            Command::Append { key, value } => key.len() + value.len(),
            Command::Query(query) => query.payload_bytes(),
            Command::LeaseExpire { leases } => 8 * leases.len(),
            Command::RegisterNode { .. }
            | Command::ForgetNode { .. }
            | Command::LeaseGrant { .. }
            | Command::LeaseKeepAlive { .. }
            | Command::LeaseRevoke { .. }
            | Command::LeaseRenewAll => 16,
            Command::Tick => 0,
            Command::Batch(requests) => requests
                .iter()
                .map(|r| r.command.payload_bytes() + 16)
                .sum(),
        }
    }

    /// The keys the command reads or changes, or None when it changes keys it cannot name
    /// (ending a lease deletes whatever is attached to it).
    pub fn keys(&self) -> Option<Vec<&Bytes>> {
        let mut keys = Vec::new();
        self.collect_keys(&mut keys).then_some(keys)
    }

    fn collect_keys<'a>(&'a self, keys: &mut Vec<&'a Bytes>) -> bool {
        match self {
            Command::Set { key, .. }
            | Command::HashSet { key, .. }
            | Command::HashDelete { key, .. }
            | Command::SetAdd { key, .. }
            | Command::SetRemove { key, .. }
            | Command::HashSetIfAbsent { key, .. }
            | Command::IncrBy { key, .. }
            | Command::HashIncrBy { key, .. }
            | Command::Append { key, .. }
            | Command::Expire { key, .. } => keys.push(key),
            Command::Delete { keys: named } | Command::Reap { keys: named } => keys.extend(named),
            Command::Query(query) => keys.extend(query.keys()),
            Command::Txn(txn) => {
                keys.extend(txn.compares.iter().map(|c| &c.key));
                for command in txn.success.iter().chain(&txn.failure) {
                    if !command.collect_keys(keys) {
                        return false;
                    }
                }
            }
            Command::Batch(requests) => {
                for request in requests {
                    if !request.command.collect_keys(keys) {
                        return false;
                    }
                }
            }
            Command::RegisterNode { .. }
            | Command::ForgetNode { .. }
            | Command::LeaseGrant { .. }
            | Command::LeaseKeepAlive { .. }
            | Command::LeaseRenewAll
            | Command::Tick => {}
            Command::LeaseRevoke { .. } | Command::LeaseExpire { .. } => return false,
        }
        true
    }

    /// Whether a client may put this command in a transaction: keyspace reads and writes only.
    pub fn allowed_in_transaction(&self) -> bool {
        matches!(
            self,
            Command::Set { .. }
                | Command::Delete { .. }
                | Command::HashSet { .. }
                | Command::HashDelete { .. }
                | Command::SetAdd { .. }
                | Command::SetRemove { .. }
                | Command::HashSetIfAbsent { .. }
                | Command::IncrBy { .. }
                | Command::HashIncrBy { .. }
                | Command::Append { .. }
                | Command::Expire { .. }
                | Command::Query(_)
        )
    }

    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Set { .. } => "set",
            Command::Delete { .. } => "delete",
            Command::HashSet { .. } => "hset",
            Command::HashDelete { .. } => "hdel",
            Command::SetAdd { .. } => "sadd",
            Command::SetRemove { .. } => "srem",
            Command::HashSetIfAbsent { .. } => "hsetnx",
            Command::IncrBy { .. } => "incrby",
            Command::HashIncrBy { .. } => "hincrby",
            Command::Append { .. } => "append",
            Command::Expire { .. } => "expire",
            Command::Query(_) => "query",
            Command::Reap { .. } => "reap",
            Command::RegisterNode { .. } => "register-node",
            Command::ForgetNode { .. } => "forget-node",
            Command::Txn(_) => "txn",
            Command::LeaseGrant { .. } => "lease-grant",
            Command::LeaseKeepAlive { .. } => "lease-keepalive",
            Command::LeaseRevoke { .. } => "lease-revoke",
            Command::LeaseExpire { .. } => "lease-expire",
            Command::LeaseRenewAll => "lease-renew-all",
            Command::Tick => "tick",
            Command::Batch(_) => "batch",
        }
    }
}

/// The answer to one applied entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteReply {
    /// The log index of the entry; reading at this revision or later sees the write.
    pub revision: Revision,
    /// What the write did.
    pub outcome: Outcome,
}

/// What a write did, per command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// An entry without application data (a leader's blank entry, a membership change).
    None,
    /// A SET: whether it was applied (NX/XX may refuse), and the previous value if asked for.
    Set {
        applied: bool,
        previous: Option<Bytes>,
    },
    /// Keys, fields or members newly created / removed by the command.
    Count(u64),
    /// The command addressed a key holding another type.
    WrongType,
    /// A transaction: which branch ran, and the outcome of each of its commands.
    Txn {
        succeeded: bool,
        #[serde(deserialize_with = "crate::nesting::bounded")]
        outcomes: Vec<Outcome>,
    },
    /// A lease granted or kept alive, with the time to live it now has.
    Lease { id: LeaseId, ttl_ms: u64 },
    /// The command named a lease that does not exist (never granted, expired or revoked).
    LeaseNotFound,
    /// The new value of a counter (INCRBY, HINCRBY) or the new length of a string (APPEND).
    Integer(i64),
    /// A counter's current value is not a 64-bit integer; nothing changed.
    NotAnInteger,
    /// A counter would overflow 64 bits; nothing changed.
    Overflow,
    /// The string would grow past the value limit ([`crate::Limits::DEFAULT`]); nothing changed.
    TooLarge,
    /// What a [`Command::Query`] read.
    Answer(Answer),
    /// The reply to each write of a [`Command::Batch`], in order. A write applied before (a
    /// retry) has its first reply, with that reply's revision.
    Batch(#[serde(deserialize_with = "crate::nesting::bounded")] Vec<WriteReply>),
    /// A retry of a write applied before, whose reply carried too many values to be kept (see
    /// [`crate::MAX_KEPT_REPLY_BYTES`]): the write was applied once, at the reply's revision,
    /// and what it answered is no longer known. Front ends answer it with [`FORGOTTEN_REPLY`].
    Forgotten,
}

/// What a client is told for an [`Outcome::Forgotten`]: an error, so that it is not taken for a
/// fresh answer, that says the write took effect, so that it is not sent again.
pub const FORGOTTEN_REPLY: &str = "the write was applied once before (this is a retry), but its \
     reply carried too many values to be kept for retries";

/// What one element of a read's answer counts, beyond its bytes, in [`Outcome::reply_bytes`].
pub(crate) const REPLY_ITEM_BYTES: usize = 32;

impl Outcome {
    /// Bytes of values the outcome carries (previous values, the reads of a transaction, each
    /// element of a read counting [`REPLY_ITEM_BYTES`] more): what keeping it costs the
    /// de-duplication table beyond a fixed size. 0 for an outcome without values, however many
    /// commands it answers (a batch of SETs). A fixed function of the outcome, the same on every
    /// replica.
    pub fn reply_bytes(&self) -> usize {
        match self {
            Outcome::Set {
                previous: Some(value),
                ..
            } => value.len(),
            Outcome::Answer(answer) => answer.reply_bytes(),
            Outcome::Txn { outcomes, .. } => outcomes.iter().map(Outcome::reply_bytes).sum(),
            Outcome::Batch(replies) => replies.iter().map(|r| r.outcome.reply_bytes()).sum(),
            _ => 0,
        }
    }
}

impl WriteReply {
    /// The reply remembered in place of this one when it is too large to keep.
    pub fn forgotten(&self) -> WriteReply {
        WriteReply {
            revision: self.revision,
            outcome: Outcome::Forgotten,
        }
    }
}
