//! What a client asks the replicated state to do, and what it gets back.

use serde::{Deserialize, Serialize};

use crate::{Bytes, Millis, Revision};

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
    },
    /// Delete keys of any type.
    Delete { keys: Vec<Bytes> },
    /// Set hash fields, creating the hash if needed.
    HashSet {
        key: Bytes,
        fields: Vec<(Bytes, Bytes)>,
    },
    /// Remove hash fields; an emptied hash is deleted.
    HashDelete { key: Bytes, fields: Vec<Bytes> },
    /// Add set members, creating the set if needed.
    SetAdd { key: Bytes, members: Vec<Bytes> },
    /// Remove set members; an emptied set is deleted.
    SetRemove { key: Bytes, members: Vec<Bytes> },
    /// Remove keys whose deadline has passed at the entry's stamp. Proposed by the leader; keys
    /// that were rewritten since (and so are no longer expired) are left alone.
    Reap { keys: Vec<Bytes> },
    /// Record which data directory (its incarnation, chosen when the directory was created) node
    /// `node` runs on, so a node that lost its data cannot rejoin under its old id unnoticed.
    RegisterNode { node: u64, incarnation: u64 },
    /// Forget node `node`'s incarnation (it was removed from the cluster).
    ForgetNode { node: u64 },
}

impl Command {
    /// Bytes of keys, fields, members and values the command carries.
    pub fn payload_bytes(&self) -> usize {
        let sum = |items: &[Bytes]| items.iter().map(|i| i.len()).sum::<usize>();
        match self {
            Command::Set { key, value, .. } => key.len() + value.len(),
            Command::Delete { keys } | Command::Reap { keys } => sum(keys),
            Command::HashSet { key, fields } => {
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
            Command::RegisterNode { .. } | Command::ForgetNode { .. } => 16,
        }
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
            Command::Reap { .. } => "reap",
            Command::RegisterNode { .. } => "register-node",
            Command::ForgetNode { .. } => "forget-node",
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
}
