//! Leases: a time to live shared by the keys and hash fields attached to it, kept alive by its
//! holder and ended by a replicated entry (expiry proposed by the leader, or a revoke), which
//! deletes everything attached with one delete event each.
//!
//! Unlike a key's TTL, a lease is not treated as ended by reads when its deadline passes: it ends
//! only when its `LeaseExpire` entry is applied. A new leader first proposes `LeaseRenewAll`, so
//! keep-alives that could not be committed during an election do not end a live holder's lease.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Machine;
use crate::command::{MAX_LEASE_TTL_MS, MIN_LEASE_TTL_MS};
use crate::history::EventKind;
use crate::{Bytes, LeaseId, Millis, Outcome, Revision, Value};

/// One lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The time to live granted; each keep-alive restarts it.
    pub ttl_ms: u64,
    /// When the leader may expire the lease (by entry stamps).
    pub deadline: Millis,
    /// String keys attached.
    pub keys: BTreeSet<Bytes>,
    /// (key, field) hash fields attached.
    pub fields: BTreeSet<(Bytes, Bytes)>,
}

impl Machine {
    pub(super) fn grant_lease(&mut self, index: Revision, now: Millis, ttl_ms: u64) -> Outcome {
        let ttl_ms = ttl_ms.clamp(MIN_LEASE_TTL_MS, MAX_LEASE_TTL_MS);
        let lease = Lease {
            ttl_ms,
            deadline: now.saturating_add(ttl_ms),
            keys: BTreeSet::new(),
            fields: BTreeSet::new(),
        };
        self.leases.insert(index, Arc::new(lease));
        Outcome::Lease { id: index, ttl_ms }
    }

    pub(super) fn keep_lease_alive(&mut self, now: Millis, id: LeaseId) -> Outcome {
        match self.leases.get_mut(&id).map(Arc::make_mut) {
            Some(lease) => {
                lease.deadline = lease.deadline.max(now.saturating_add(lease.ttl_ms));
                Outcome::Lease {
                    id,
                    ttl_ms: lease.ttl_ms,
                }
            }
            None => Outcome::LeaseNotFound,
        }
    }

    pub(super) fn expire_leases(
        &mut self,
        index: Revision,
        now: Millis,
        ids: &[LeaseId],
    ) -> Outcome {
        let mut ended = 0;
        for id in ids {
            if self.leases.get(id).is_some_and(|l| l.deadline <= now) {
                self.end_lease(index, *id);
                ended += 1;
            }
        }
        Outcome::Count(ended)
    }

    pub(super) fn renew_all_leases(&mut self, now: Millis) -> Outcome {
        let ids: Vec<LeaseId> = self.leases.keys().copied().collect();
        for id in ids {
            if let Some(lease) = self.leases.get_mut(&id).map(Arc::make_mut) {
                lease.deadline = lease.deadline.max(now.saturating_add(lease.ttl_ms));
            }
        }
        Outcome::Count(self.leases.len() as u64)
    }

    /// Ends lease `id`, deleting the keys and fields still attached to it; None if there is no
    /// such lease, else how many keys and fields were deleted.
    pub(super) fn end_lease(&mut self, index: Revision, id: LeaseId) -> Option<u64> {
        let lease = self.leases.remove(&id)?;
        let mut deleted = 0;
        for key in &lease.keys {
            if self.keys.get(key).is_some_and(|r| r.lease == Some(id)) {
                self.remove(key);
                deleted += 1;
            }
        }
        for (key, field) in &lease.fields {
            let attached = |r: &Arc<crate::Record>| r.field_leases.get(field) == Some(&id);
            if !self.keys.get(key).is_some_and(attached) {
                continue;
            }
            let record = Arc::make_mut(self.keys.get_mut(key).expect("checked above"));
            record.field_leases.remove(field);
            if let Value::Hash(map) = &mut record.value {
                map.remove(field);
            }
            record.modified = index;
            let emptied = record.value.is_empty_collection();
            self.emit(EventKind::Delete, key, Some(field), &Bytes::new());
            if emptied {
                self.remove(key);
            }
            deleted += 1;
        }
        Some(deleted)
    }

    /// Moves hash field `key`/`field` from lease `from` to lease `to` (either may be None).
    pub(super) fn move_field_lease(
        &mut self,
        key: &Bytes,
        field: &Bytes,
        from: Option<LeaseId>,
        to: Option<LeaseId>,
    ) {
        if from == to {
            return;
        }
        if let Some(lease) = from.and_then(|id| self.leases.get_mut(&id).map(Arc::make_mut)) {
            lease.fields.remove(&(key.clone(), field.clone()));
        }
        if let Some(lease) = to.and_then(|id| self.leases.get_mut(&id).map(Arc::make_mut)) {
            lease.fields.insert((key.clone(), field.clone()));
        }
    }

    // ----- Reads -----

    /// The lease `id`, if it has not ended.
    pub fn lease(&self, id: LeaseId) -> Option<&Lease> {
        self.leases.get(&id).map(|l| &**l)
    }

    /// Every lease, by id.
    pub fn leases(&self) -> impl Iterator<Item = (LeaseId, &Lease)> {
        self.leases.iter().map(|(id, l)| (*id, &**l))
    }

    /// Up to `limit` leases whose deadline is at or before `now`: what the leader should expire.
    pub fn expired_leases(&self, now: Millis, limit: usize) -> Vec<LeaseId> {
        self.leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .take(limit)
            .map(|(id, _)| *id)
            .collect()
    }
}
