//! The keyspace and its deterministic transitions.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};

use crate::history::{Event, EventKind, History};
use crate::{
    Bytes, Command, Expiry, LeaseId, Millis, Outcome, Record, RequestId, Revision, SetCondition,
    Value, WriteReply, WriteRequest,
};

mod leases;
mod sessions;
mod strings;
mod txn;

pub use leases::Lease;
use sessions::{Sessions, SESSION_SWEEP_EVERY};
pub use sessions::{
    DEDUP_WINDOW_MS, MAX_KEPT_REPLIES_BYTES, MAX_KEPT_REPLY_BYTES, MAX_REPLIES_PER_CLIENT,
    MIN_REPLY_AGE_MS,
};

/// The options of a SET.
#[derive(Clone, Copy)]
struct SetOptions {
    condition: SetCondition,
    expiry: Expiry,
    return_previous: bool,
    lease: Option<LeaseId>,
}

/// What a removal addresses inside a collection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ItemKind {
    HashField,
    SetMember,
}

/// A read addressed a key that holds another type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadError;

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WRONGTYPE Operation against a key holding the wrong kind of value")
    }
}

impl std::error::Error for ReadError {}

/// The whole replicated state. Two machines fed the same requests at the same indexes are equal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "MachineImage")]
pub struct Machine {
    /// Records behind an `Arc`, so the map's nodes stay small: a node copied on write (while a
    /// snapshot shares the map) copies pointers, and a record is copied only when it changes.
    keys: OrdMap<Bytes, Arc<Record>>,
    /// The de-duplication table.
    sessions: Sessions,
    /// node id -> incarnation of the data directory it runs on.
    incarnations: BTreeMap<u64, u64>,
    leases: OrdMap<LeaseId, Arc<Lease>>,
    /// Recent change events, for watchers and for WATCH-style comparisons.
    history: History,
    /// The largest stamp applied so far: the machine's notion of "now".
    clock: Millis,
    /// The index of the last entry applied.
    revision: Revision,
    /// (deadline, key) for every key with a TTL; derived from `keys`, rebuilt on load.
    #[serde(skip)]
    deadlines: OrdSet<(Millis, Bytes)>,
}

/// The serialized form of a [`Machine`]: everything but derived indexes.
#[derive(Deserialize)]
struct MachineImage {
    #[serde(deserialize_with = "crate::cautious::ord_map")]
    keys: OrdMap<Bytes, Arc<Record>>,
    sessions: Sessions,
    incarnations: BTreeMap<u64, u64>,
    #[serde(deserialize_with = "crate::cautious::ord_map")]
    leases: OrdMap<LeaseId, Arc<Lease>>,
    history: History,
    clock: Millis,
    revision: Revision,
}

impl From<MachineImage> for Machine {
    fn from(image: MachineImage) -> Self {
        let deadlines = image
            .keys
            .iter()
            .filter_map(|(k, r)| r.expires_at.map(|d| (d, k.clone())))
            .collect();
        Machine {
            keys: image.keys,
            sessions: image.sessions,
            incarnations: image.incarnations,
            leases: image.leases,
            history: image.history,
            clock: image.clock,
            revision: image.revision,
            deadlines,
        }
    }
}

impl Machine {
    /// An empty keyspace at revision 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The index of the last applied entry.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The largest stamp applied so far.
    pub fn clock(&self) -> Millis {
        self.clock
    }

    /// The reply remembered for the write `id`, if it was applied within the de-duplication
    /// window.
    pub fn remembered_reply(&self, id: RequestId) -> Option<WriteReply> {
        self.sessions.reply(id)
    }

    /// This machine as a new cluster starts from it (restoring a backup): the keys, leases and
    /// clock, at a revision `bump` later, so that no revision the old cluster may have given
    /// out after the backup (a lock's fencing token, a lease id, a watch position) is given out
    /// again; the history holds nothing before it. Without what belonged to the old cluster's
    /// processes: their data directories' incarnations, their remembered replies.
    pub fn restored(&self, bump: Revision) -> Machine {
        let revision = self.revision.saturating_add(bump);
        Machine {
            sessions: Sessions::default(),
            incarnations: BTreeMap::new(),
            history: History::starting_after(revision),
            revision,
            ..self.clone()
        }
    }

    /// Bytes of values held in the replies remembered for retries (at most
    /// [`MAX_KEPT_REPLIES_BYTES`]).
    pub fn kept_reply_bytes(&self) -> usize {
        self.sessions.kept_bytes()
    }

    /// Number of keys held, expired ones included until they are reaped.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Records that an entry without application data was applied at `index`.
    pub fn apply_blank(&mut self, index: Revision) {
        self.revision = index;
    }

    /// Applies a membership entry at log index `index`: the data directories of nodes it leaves
    /// out are forgotten, so a removed node's id can be added back with a fresh directory.
    pub fn apply_membership(&mut self, index: Revision, members: &BTreeSet<u64>) {
        self.revision = index;
        self.incarnations.retain(|node, _| members.contains(node));
    }

    /// Applies one write at log index `index` and returns its reply. A write whose id was
    /// already applied is not applied again: its original reply is returned. So is each write
    /// of a [`Command::Batch`], on its own.
    pub fn apply(&mut self, index: Revision, request: &WriteRequest) -> WriteReply {
        self.revision = index;
        self.clock = self.clock.max(request.stamp);
        let now = self.clock;
        let reply = self.apply_once(index, now, request.id, &request.command);
        if index.is_multiple_of(SESSION_SWEEP_EVERY) {
            self.sessions.forget_idle(now);
        }
        reply
    }

    /// Runs `command` unless the write `id` was applied before, and remembers its reply.
    fn apply_once(
        &mut self,
        index: Revision,
        now: Millis,
        id: Option<RequestId>,
        command: &Command,
    ) -> WriteReply {
        if let Some(id) = id {
            if let Some(reply) = self.sessions.reply(id) {
                return reply;
            }
        }
        let outcome = self.execute(index, now, command);
        let reply = WriteReply {
            revision: index,
            outcome,
        };
        if let Some(id) = id {
            self.sessions.remember(id, now, reply.clone());
        }
        reply
    }

    fn execute(&mut self, index: Revision, now: Millis, command: &Command) -> Outcome {
        match command {
            Command::Set {
                key,
                value,
                condition,
                expiry,
                return_previous,
                lease,
            } => self.set(
                index,
                now,
                key,
                value,
                SetOptions {
                    condition: *condition,
                    expiry: *expiry,
                    return_previous: *return_previous,
                    lease: *lease,
                },
            ),
            Command::Delete { keys } => {
                // Check and remove each key in one step, so a key named twice counts once.
                let mut removed = 0u64;
                for key in keys {
                    if self.live(key, now).is_some() {
                        self.remove(key);
                        removed += 1;
                    }
                }
                Outcome::Count(removed)
            }
            Command::HashSet { key, fields, lease } => {
                self.hash_set(index, now, key, fields, *lease)
            }
            Command::HashDelete { key, fields } => {
                self.remove_items(index, now, key, fields, ItemKind::HashField)
            }
            Command::SetAdd { key, members } => self.set_add(index, now, key, members),
            Command::SetRemove { key, members } => {
                self.remove_items(index, now, key, members, ItemKind::SetMember)
            }
            Command::RegisterNode { node, incarnation } => {
                let changed = self.incarnations.insert(*node, *incarnation) != Some(*incarnation);
                Outcome::Count(u64::from(changed))
            }
            Command::ForgetNode { node } => {
                Outcome::Count(u64::from(self.incarnations.remove(node).is_some()))
            }
            Command::Reap { keys } => {
                let mut expired = 0u64;
                for key in keys {
                    if self.keys.get(key).is_some_and(|r| r.is_expired(now)) {
                        self.remove(key);
                        expired += 1;
                    }
                }
                Outcome::Count(expired)
            }
            Command::HashSetIfAbsent { key, field, value } => {
                self.hash_set_if_absent(index, now, key, field, value)
            }
            Command::IncrBy { key, delta } => self.incr_by(index, now, key, *delta),
            Command::HashIncrBy { key, field, delta } => {
                self.hash_incr_by(index, now, key, field, *delta)
            }
            Command::Append { key, value } => self.append(index, now, key, value),
            Command::Expire {
                key,
                expiry,
                condition,
            } => self.expire(index, now, key, *expiry, *condition),
            Command::Query(query) => match self.query(query, now) {
                Ok(answer) => Outcome::Answer(answer),
                Err(_) => Outcome::WrongType,
            },
            Command::Txn(txn) => self.transaction(index, now, txn),
            Command::LeaseGrant { ttl_ms } => self.grant_lease(index, now, *ttl_ms),
            Command::LeaseKeepAlive { lease } => self.keep_lease_alive(now, *lease),
            Command::LeaseRevoke { lease } => match self.end_lease(index, *lease) {
                Some(deleted) => Outcome::Count(deleted),
                None => Outcome::LeaseNotFound,
            },
            Command::LeaseExpire { leases } => self.expire_leases(index, now, leases),
            Command::LeaseRenewAll => self.renew_all_leases(now),
            // `apply` has advanced the clock to the stamp already.
            Command::Tick => Outcome::None,
            Command::Batch(requests) => Outcome::Batch(
                requests
                    .iter()
                    .map(|r| self.apply_once(index, now, r.id, &r.command))
                    .collect(),
            ),
        }
    }

    fn set(
        &mut self,
        index: Revision,
        now: Millis,
        key: &Bytes,
        value: &Bytes,
        options: SetOptions,
    ) -> Outcome {
        if options.lease.is_some_and(|l| !self.leases.contains_key(&l)) {
            return Outcome::LeaseNotFound;
        }
        let existing = self.live(key, now);
        if options.return_previous
            && existing
                .as_ref()
                .is_some_and(|r| !matches!(r.value, Value::String(_)))
        {
            return Outcome::WrongType;
        }
        let present = existing.is_some();
        let previous = match (options.return_previous, existing) {
            (
                true,
                Some(Record {
                    value: Value::String(v),
                    ..
                }),
            ) => Some(v.clone()),
            _ => None,
        };
        let allowed = match options.condition {
            SetCondition::Always => true,
            SetCondition::IfAbsent => !present,
            SetCondition::IfPresent => present,
        };
        if !allowed {
            return Outcome::Set {
                applied: false,
                previous,
            };
        }
        let old = self.keys.get(key);
        let expires_at = match options.expiry {
            Expiry::Never => None,
            Expiry::Keep => old.and_then(|r| r.expires_at),
            Expiry::AfterMillis(ms) => Some(now.saturating_add(ms)),
            Expiry::AtMillis(at) => Some(at),
        };
        let record = Record {
            created: old.map_or(index, |r| r.created),
            expires_at,
            lease: options.lease,
            ..Record::new(Value::String(value.clone()), index)
        };
        self.put(key.clone(), record);
        Outcome::Set {
            applied: true,
            previous,
        }
    }

    fn hash_set(
        &mut self,
        index: Revision,
        now: Millis,
        key: &Bytes,
        fields: &[(Bytes, Bytes)],
        lease: Option<LeaseId>,
    ) -> Outcome {
        if lease.is_some_and(|l| !self.leases.contains_key(&l)) {
            return Outcome::LeaseNotFound;
        }
        let record = self.live_or_insert(key, now, || {
            Record::new(Value::Hash(BTreeMap::new()), index)
        });
        let Value::Hash(map) = &mut record.value else {
            return Outcome::WrongType;
        };
        let mut added = 0;
        let mut moved = Vec::new();
        for (field, value) in fields {
            if map.insert(field.clone(), value.clone()).is_none() {
                added += 1;
            }
            let before = match lease {
                Some(l) => record.field_leases.insert(field.clone(), l),
                None => record.field_leases.remove(field),
            };
            if before != lease {
                moved.push((field.clone(), before));
            }
        }
        record.modified = index;
        for (field, before) in moved {
            self.move_field_lease(key, &field, before, lease);
        }
        for (field, value) in fields {
            self.emit(EventKind::Put, key, Some(field), value);
        }
        Outcome::Count(added)
    }

    fn set_add(&mut self, index: Revision, now: Millis, key: &Bytes, members: &[Bytes]) -> Outcome {
        let record =
            self.live_or_insert(key, now, || Record::new(Value::Set(BTreeSet::new()), index));
        let Value::Set(set) = &mut record.value else {
            return Outcome::WrongType;
        };
        let added: Vec<&Bytes> = members
            .iter()
            .filter(|m| set.insert((*m).clone()))
            .collect();
        if !added.is_empty() {
            record.modified = index;
        }
        for member in &added {
            self.emit(EventKind::Put, key, Some(member), &Bytes::new());
        }
        Outcome::Count(added.len() as u64)
    }

    /// Removes hash fields or set members; deletes the key once it is empty.
    fn remove_items(
        &mut self,
        index: Revision,
        now: Millis,
        key: &Bytes,
        items: &[Bytes],
        kind: ItemKind,
    ) -> Outcome {
        let Some(record) = self.live_mut(key, now) else {
            return Outcome::Count(0);
        };
        let mut removed = Vec::new();
        let mut detached = Vec::new();
        match (&mut record.value, kind) {
            (Value::Hash(map), ItemKind::HashField) => {
                for field in items {
                    if map.remove(field).is_some() {
                        removed.push(field.clone());
                        if let Some(lease) = record.field_leases.remove(field) {
                            detached.push((field.clone(), lease));
                        }
                    }
                }
            }
            (Value::Set(set), ItemKind::SetMember) => {
                removed.extend(items.iter().filter(|m| set.remove(*m)).cloned());
            }
            _ => return Outcome::WrongType,
        }
        if !removed.is_empty() {
            record.modified = index;
        }
        let emptied = record.value.is_empty_collection();
        for (field, lease) in detached {
            self.move_field_lease(key, &field, Some(lease), None);
        }
        for item in &removed {
            self.emit(EventKind::Delete, key, Some(item), &Bytes::new());
        }
        if emptied {
            self.remove(key);
        }
        Outcome::Count(removed.len() as u64)
    }

    /// The record under `key` unless absent or expired at `now`; an expired one is removed.
    fn live(&mut self, key: &Bytes, now: Millis) -> Option<&Record> {
        if self.keys.get(key).is_some_and(|r| r.is_expired(now)) {
            self.remove(key);
        }
        self.keys.get(key).map(|r| &**r)
    }

    /// [`Machine::live`], to change: the record (and the map's path to it) is copied here if a
    /// copy of the machine shares it, so call it only where the record does change.
    fn live_mut(&mut self, key: &Bytes, now: Millis) -> Option<&mut Record> {
        self.live(key, now)?;
        self.keys.get_mut(key).map(Arc::make_mut)
    }

    /// The live record under `key`, created by `empty` if absent.
    fn live_or_insert(
        &mut self,
        key: &Bytes,
        now: Millis,
        empty: impl FnOnce() -> Record,
    ) -> &mut Record {
        if self.live_mut(key, now).is_none() {
            self.keys.insert(key.clone(), Arc::new(empty()));
        }
        Arc::make_mut(self.keys.get_mut(key).expect("just ensured"))
    }

    /// Stores a string under `key`, replacing whatever was there, and records the event.
    fn put(&mut self, key: Bytes, record: Record) {
        let new_deadline = record.expires_at;
        let new_lease = record.lease;
        let Value::String(value) = &record.value else {
            unreachable!("put stores strings; collections are changed in place");
        };
        let value = value.clone();
        if let Some(old) = self.keys.insert(key.clone(), Arc::new(record)) {
            self.forget_bookkeeping(&key, &old, new_deadline, new_lease);
        }
        if let Some(deadline) = new_deadline {
            self.deadlines.insert((deadline, key.clone()));
        }
        if let Some(lease) = new_lease {
            if let Some(l) = self.leases.get_mut(&lease).map(Arc::make_mut) {
                l.keys.insert(key.clone());
            }
        }
        self.emit(EventKind::Put, &key, None, &value);
    }

    /// Removes `key` with its TTL and lease attachments, and records the event.
    fn remove(&mut self, key: &Bytes) {
        if let Some(old) = self.keys.remove(key) {
            self.forget_bookkeeping(key, &old, None, None);
            self.emit(EventKind::Delete, key, None, &Bytes::new());
        }
    }

    /// Drops the deadline and lease attachments of a replaced or removed record, except those the
    /// new record keeps.
    fn forget_bookkeeping(
        &mut self,
        key: &Bytes,
        old: &Record,
        kept_deadline: Option<Millis>,
        kept_lease: Option<LeaseId>,
    ) {
        if let Some(deadline) = old.expires_at.filter(|d| Some(*d) != kept_deadline) {
            self.deadlines.remove(&(deadline, key.clone()));
        }
        if let Some(lease) = old.lease.filter(|l| Some(*l) != kept_lease) {
            if let Some(l) = self.leases.get_mut(&lease).map(Arc::make_mut) {
                l.keys.remove(key);
            }
        }
        for (field, lease) in &old.field_leases {
            self.move_field_lease(key, field, Some(*lease), None);
        }
    }

    /// Records one change at the revision being applied.
    fn emit(&mut self, kind: EventKind, key: &Bytes, field: Option<&Bytes>, value: &Bytes) {
        self.history.record(Event {
            revision: self.revision,
            kind,
            key: key.clone(),
            field: field.cloned(),
            value: value.clone(),
        });
    }

    // ----- Reads. `now` is the reader's clock: a key past its deadline reads as absent. -----

    /// The live record under `key`.
    pub fn record(&self, key: &[u8], now: Millis) -> Option<&Record> {
        self.keys
            .get(serde_bytes::Bytes::new(key))
            .map(|r| &**r)
            .filter(|r| !r.is_expired(now))
    }

    /// A string value.
    pub fn get(&self, key: &[u8], now: Millis) -> Result<Option<&Record>, ReadError> {
        match self.record(key, now) {
            Some(r) if matches!(r.value, Value::String(_)) => Ok(Some(r)),
            Some(_) => Err(ReadError),
            None => Ok(None),
        }
    }

    /// A hash, or None if absent.
    pub fn hash(
        &self,
        key: &[u8],
        now: Millis,
    ) -> Result<Option<&BTreeMap<Bytes, Bytes>>, ReadError> {
        match self.record(key, now).map(|r| &r.value) {
            Some(Value::Hash(map)) => Ok(Some(map)),
            Some(_) => Err(ReadError),
            None => Ok(None),
        }
    }

    /// A set, or None if absent.
    pub fn set_members(
        &self,
        key: &[u8],
        now: Millis,
    ) -> Result<Option<&BTreeSet<Bytes>>, ReadError> {
        match self.record(key, now).map(|r| &r.value) {
            Some(Value::Set(set)) => Ok(Some(set)),
            Some(_) => Err(ReadError),
            None => Ok(None),
        }
    }

    /// Live keys starting with `prefix`, in order.
    pub fn keys_with_prefix<'a>(
        &'a self,
        prefix: &'a [u8],
        now: Millis,
    ) -> impl Iterator<Item = (&'a Bytes, &'a Record)> + 'a {
        let start: (Bound<&serde_bytes::Bytes>, Bound<&serde_bytes::Bytes>) = (
            Bound::Included(serde_bytes::Bytes::new(prefix)),
            Bound::Unbounded,
        );
        self.keys
            .range::<_, serde_bytes::Bytes>(start)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, r)| (k, &**r))
            .filter(move |(_, r)| !r.is_expired(now))
    }

    /// Live keys after `after` (from the first key if None), in order: for cursor scans.
    pub fn keys_after<'a>(
        &'a self,
        after: Option<&'a [u8]>,
        now: Millis,
    ) -> impl Iterator<Item = (&'a Bytes, &'a Record)> + 'a {
        let start = match after {
            Some(key) => Bound::Excluded(serde_bytes::Bytes::new(key)),
            None => Bound::Unbounded,
        };
        self.keys
            .range::<_, serde_bytes::Bytes>((start, Bound::Unbounded))
            .map(|(k, r)| (k, &**r))
            .filter(move |(_, r)| !r.is_expired(now))
    }

    /// The recent change events.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The incarnation recorded for `node`'s data directory, if it registered one.
    pub fn incarnation(&self, node: u64) -> Option<u64> {
        self.incarnations.get(&node).copied()
    }

    /// Up to `limit` keys whose deadline is at or before `now`: what the leader should reap.
    pub fn expired_keys(&self, now: Millis, limit: usize) -> Vec<Bytes> {
        self.deadlines
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .take(limit)
            .map(|(_, k)| k.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod coordination_tests;

#[cfg(test)]
mod redis_tests;

#[cfg(test)]
mod dedup_tests;
