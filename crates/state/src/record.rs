//! What the keyspace holds under one key.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{Bytes, Millis, Revision};

/// A value of one of the supported types.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    String(Bytes),
    Hash(BTreeMap<Bytes, Bytes>),
    Set(BTreeSet<Bytes>),
}

impl Value {
    /// The Redis name of the type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::String(_) => "string",
            Value::Hash(_) => "hash",
            Value::Set(_) => "set",
        }
    }
}

/// A key's value and its bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub value: Value,
    /// Revision of the entry that created the key (since it was last absent).
    pub created: Revision,
    /// Revision of the last entry that changed the key.
    pub modified: Revision,
    /// When the key stops existing, if ever.
    pub expires_at: Option<Millis>,
}

impl Record {
    /// Whether the key is past its deadline at `now`.
    pub fn is_expired(&self, now: Millis) -> bool {
        self.expires_at.is_some_and(|deadline| deadline <= now)
    }
}
