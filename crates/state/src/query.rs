//! Reads of the keyspace, answered from a replica or inside a transaction.
//!
//! One place for what a read returns: the RESP front end answers GET, HGETALL, TTL and the rest
//! through [`Machine::query`] on its local replica, and a MULTI that contains reads carries the
//! same [`Query`] into the log ([`crate::Command::Query`]) so the read happens at the
//! transaction's revision.

use serde::{Deserialize, Serialize};

use crate::command::REPLY_ITEM_BYTES;
use crate::{Bytes, Machine, Millis, ReadError, Record, Value};

/// A read of one or more keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// A string value, nil if absent (GET).
    Get { key: Bytes },
    /// Several string values; absent keys and keys of other types read as nil (MGET).
    MultiGet { keys: Vec<Bytes> },
    /// The length of a string, 0 if absent (STRLEN).
    StrLen { key: Bytes },
    /// How many of the keys exist, counting repeats (EXISTS).
    Exists { keys: Vec<Bytes> },
    /// Milliseconds left: -2 if absent, -1 without a TTL (PTTL; TTL rounds it).
    TimeToLive { key: Bytes },
    /// The Redis type name, "none" if absent (TYPE).
    Type { key: Bytes },
    /// Values of hash fields, nil for absent ones (HGET, HMGET).
    HashGet { key: Bytes, fields: Vec<Bytes> },
    /// Fields and values, alternating (HGETALL).
    HashGetAll { key: Bytes },
    /// Field names (HKEYS).
    HashKeys { key: Bytes },
    /// Values (HVALS).
    HashValues { key: Bytes },
    /// Number of fields (HLEN).
    HashLen { key: Bytes },
    /// Whether a field exists, 1 or 0 (HEXISTS).
    HashExists { key: Bytes, field: Bytes },
    /// Members (SMEMBERS).
    SetMembers { key: Bytes },
    /// Whether a member is present, 1 or 0 (SISMEMBER).
    SetIsMember { key: Bytes, member: Bytes },
    /// Number of members (SCARD).
    SetCard { key: Bytes },
}

/// What a [`Query`] read, in Redis's reply vocabulary (the RESP layer picks the frame types).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Nil,
    Bytes(Bytes),
    Integer(i64),
    /// A fixed word, such as a type name.
    Status(String),
    Array(#[serde(deserialize_with = "crate::nesting::bounded")] Vec<Answer>),
}

impl Answer {
    /// Bytes of values the answer carries, as [`crate::Outcome::reply_bytes`] counts them.
    pub fn reply_bytes(&self) -> usize {
        match self {
            Answer::Nil | Answer::Integer(_) => 0,
            Answer::Bytes(b) => b.len(),
            Answer::Status(s) => s.len(),
            Answer::Array(items) => items
                .iter()
                .map(|i| REPLY_ITEM_BYTES + i.reply_bytes())
                .sum(),
        }
    }
}

impl Query {
    /// Bytes of keys and fields the query names.
    pub fn payload_bytes(&self) -> usize {
        match self {
            Query::MultiGet { keys } | Query::Exists { keys } => keys.iter().map(|k| k.len()).sum(),
            Query::HashGet { key, fields } => {
                key.len() + fields.iter().map(|f| f.len()).sum::<usize>()
            }
            Query::HashExists { key, field } | Query::SetIsMember { key, member: field } => {
                key.len() + field.len()
            }
            Query::Get { key }
            | Query::StrLen { key }
            | Query::TimeToLive { key }
            | Query::Type { key }
            | Query::HashGetAll { key }
            | Query::HashKeys { key }
            | Query::HashValues { key }
            | Query::HashLen { key }
            | Query::SetMembers { key }
            | Query::SetCard { key } => key.len(),
        }
    }

    /// Every key the query names.
    pub fn keys(&self) -> Vec<&Bytes> {
        match self {
            Query::MultiGet { keys } | Query::Exists { keys } => keys.iter().collect(),
            Query::Get { key }
            | Query::StrLen { key }
            | Query::TimeToLive { key }
            | Query::Type { key }
            | Query::HashGet { key, .. }
            | Query::HashGetAll { key }
            | Query::HashKeys { key }
            | Query::HashValues { key }
            | Query::HashLen { key }
            | Query::HashExists { key, .. }
            | Query::SetMembers { key }
            | Query::SetIsMember { key, .. }
            | Query::SetCard { key } => vec![key],
        }
    }
}

fn bytes(value: &Bytes) -> Answer {
    Answer::Bytes(value.clone())
}

fn count(n: usize) -> Answer {
    Answer::Integer(n as i64)
}

impl Machine {
    /// Answers `query` as of this replica, at the reader's clock `now`.
    pub fn query(&self, query: &Query, now: Millis) -> Result<Answer, ReadError> {
        let hash = |key: &Bytes| self.hash(key, now);
        let set = |key: &Bytes| self.set_members(key, now);
        Ok(match query {
            Query::Get { key } => match self.get(key, now)? {
                Some(Record {
                    value: Value::String(v),
                    ..
                }) => bytes(v),
                _ => Answer::Nil,
            },
            Query::MultiGet { keys } => Answer::Array(
                keys.iter()
                    .map(|k| match self.record(k, now).map(|r| &r.value) {
                        Some(Value::String(v)) => bytes(v),
                        _ => Answer::Nil,
                    })
                    .collect(),
            ),
            Query::StrLen { key } => match self.get(key, now)? {
                Some(Record {
                    value: Value::String(v),
                    ..
                }) => count(v.len()),
                _ => Answer::Integer(0),
            },
            Query::Exists { keys } => count(
                keys.iter()
                    .filter(|k| self.record(k, now).is_some())
                    .count(),
            ),
            Query::TimeToLive { key } => Answer::Integer(match self.record(key, now) {
                None => -2,
                Some(Record {
                    expires_at: None, ..
                }) => -1,
                Some(Record {
                    expires_at: Some(deadline),
                    ..
                }) => deadline.saturating_sub(now) as i64,
            }),
            Query::Type { key } => Answer::Status(
                self.record(key, now)
                    .map_or("none", |r| r.value.type_name())
                    .to_string(),
            ),
            Query::HashGet { key, fields } => {
                let map = hash(key)?;
                let values = fields
                    .iter()
                    .map(|f| map.and_then(|m| m.get(f)).map_or(Answer::Nil, bytes));
                Answer::Array(values.collect())
            }
            Query::HashGetAll { key } => Answer::Array(
                hash(key)?
                    .into_iter()
                    .flatten()
                    .flat_map(|(f, v)| [bytes(f), bytes(v)])
                    .collect(),
            ),
            Query::HashKeys { key } => Answer::Array(
                hash(key)?
                    .into_iter()
                    .flat_map(|m| m.keys())
                    .map(bytes)
                    .collect(),
            ),
            Query::HashValues { key } => Answer::Array(
                hash(key)?
                    .into_iter()
                    .flat_map(|m| m.values())
                    .map(bytes)
                    .collect(),
            ),
            Query::HashLen { key } => count(hash(key)?.map_or(0, |m| m.len())),
            Query::HashExists { key, field } => count(usize::from(
                hash(key)?.is_some_and(|m| m.contains_key(field)),
            )),
            Query::SetMembers { key } => {
                Answer::Array(set(key)?.into_iter().flatten().map(bytes).collect())
            }
            Query::SetIsMember { key, member } => {
                count(usize::from(set(key)?.is_some_and(|s| s.contains(member))))
            }
            Query::SetCard { key } => count(set(key)?.map_or(0, |s| s.len())),
        })
    }
}
