//! What the keyspace holds under one key.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{Bytes, LeaseId, Millis, Revision};

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

    /// Whether this is a hash or set with nothing left in it.
    pub fn is_empty_collection(&self) -> bool {
        match self {
            Value::Hash(map) => map.is_empty(),
            Value::Set(set) => set.is_empty(),
            Value::String(_) => false,
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
    /// The lease whose end deletes the key (strings only).
    pub lease: Option<LeaseId>,
    /// The leases whose end deletes individual hash fields.
    pub field_leases: BTreeMap<Bytes, LeaseId>,
}

impl Record {
    /// A new key created at `revision`, with no TTL and no lease.
    pub fn new(value: Value, revision: Revision) -> Self {
        Record {
            value,
            created: revision,
            modified: revision,
            expires_at: None,
            lease: None,
            field_leases: BTreeMap::new(),
        }
    }

    /// Whether the key is past its deadline at `now`.
    pub fn is_expired(&self, now: Millis) -> bool {
        self.expires_at.is_some_and(|deadline| deadline <= now)
    }
}
