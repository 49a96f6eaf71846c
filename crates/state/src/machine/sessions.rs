//! The de-duplication table: the replies remembered per client, so that a retried write is
//! answered with its first reply instead of being applied again, and the bounds on its memory.
//!
//! Every bound is decided by entry stamps and by the replies themselves, never by this replica's
//! history (when it restarted, which snapshot it loaded): two replicas fed the same entries hold
//! the same table. The derived index of payload-carrying replies is rebuilt from the table when
//! a snapshot is loaded.

use std::collections::BTreeMap;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Millis, RequestId, WriteReply};

/// How long (by entry stamps) the reply to a de-duplicated write is kept. A retry arriving later
/// than this is applied again.
pub const DEDUP_WINDOW_MS: Millis = 5 * 60 * 1000;

/// Most replies kept per client; the oldest sequence numbers are forgotten first, but never one
/// younger than [`MIN_REPLY_AGE_MS`].
pub const MAX_REPLIES_PER_CLIENT: usize = 4096;

/// A reply is kept at least this long (by entry stamps), however many writes the client sends:
/// far longer than any request deadline, within which retries happen.
pub const MIN_REPLY_AGE_MS: Millis = 60 * 1000;

/// A reply carrying more than this many bytes of values ([`crate::Outcome::reply_bytes`]: a
/// `SET ... GET` of a large value, the reads of a transaction) is not kept whole: only that it
/// was applied, at which revision, is remembered ([`crate::Outcome::Forgotten`]).
pub const MAX_KEPT_REPLY_BYTES: usize = 64 * 1024;

/// At most this many bytes of values are kept in remembered replies, over all clients. Past it,
/// the oldest replies that carry values are reduced to [`crate::Outcome::Forgotten`].
pub const MAX_KEPT_REPLIES_BYTES: usize = 8 * 1024 * 1024;

/// Every this many revisions, clients idle for longer than [`DEDUP_WINDOW_MS`] are forgotten.
pub(super) const SESSION_SWEEP_EVERY: u64 = 1024;

/// Replies remembered for one client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ClientSession {
    /// The stamp of the client's latest write.
    last_seen: Millis,
    /// sequence -> (stamp, reply)
    replies: BTreeMap<u64, (Millis, WriteReply)>,
}

/// The remembered replies of every client. Serialized as the per-client table alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Sessions {
    /// Behind an `Arc`, so a client's remembered replies are copied only when that client writes
    /// while a copy of the machine (a snapshot) is alive.
    clients: OrdMap<u64, Arc<ClientSession>>,
    /// (stamp, client, sequence) of every reply kept whole that carries values: the order in
    /// which they are reduced when [`MAX_KEPT_REPLIES_BYTES`] is passed. Derived from `clients`.
    carrying: OrdSet<(Millis, u64, u64)>,
    /// The sum of [`crate::Outcome::reply_bytes`] over `carrying`. Derived from `clients`.
    kept_bytes: usize,
}

impl Sessions {
    /// The reply remembered for the write `id`, if it was applied within the window.
    pub(super) fn reply(&self, id: RequestId) -> Option<WriteReply> {
        let session = self.clients.get(&id.client_id)?;
        session.replies.get(&id.sequence).map(|(_, r)| r.clone())
    }

    /// Remembers the reply to the write `id`, applied at stamp `now`, and forgets what the
    /// bounds no longer allow.
    pub(super) fn remember(&mut self, id: RequestId, now: Millis, reply: WriteReply) {
        let reply = if reply.outcome.reply_bytes() > MAX_KEPT_REPLY_BYTES {
            reply.forgotten()
        } else {
            reply
        };
        let session = Arc::make_mut(self.clients.entry(id.client_id).or_default());
        session.last_seen = now;
        let carried = reply.outcome.reply_bytes();
        let replaced = session.replies.insert(id.sequence, (now, reply));
        // Forget from the oldest sequence number on: replies older than the window, and replies
        // beyond the cap that are old enough. Sequence numbers grow with time, so this stops at
        // the first one to keep instead of scanning every remembered reply on each write.
        let window = now.saturating_sub(DEDUP_WINDOW_MS);
        let young = now.saturating_sub(MIN_REPLY_AGE_MS);
        let mut forgotten = Vec::new();
        while let Some((_, (stamp, _))) = session.replies.first_key_value() {
            let expired = *stamp < window;
            let evictable = session.replies.len() > MAX_REPLIES_PER_CLIENT && *stamp < young;
            if !expired && !evictable {
                break;
            }
            forgotten.extend(session.replies.pop_first());
        }
        for (sequence, (stamp, reply)) in replaced
            .map(|r| (id.sequence, r))
            .into_iter()
            .chain(forgotten)
        {
            self.uncount(id.client_id, sequence, stamp, &reply);
        }
        if carried > 0 {
            self.carrying.insert((now, id.client_id, id.sequence));
            self.kept_bytes += carried;
        }
        self.reduce_to_budget();
    }

    /// Forgets the clients that have not written for longer than [`DEDUP_WINDOW_MS`].
    pub(super) fn forget_idle(&mut self, now: Millis) {
        let idle: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, s)| s.last_seen.saturating_add(DEDUP_WINDOW_MS) < now)
            .map(|(id, _)| *id)
            .collect();
        for client in idle {
            if let Some(session) = self.clients.remove(&client) {
                for (sequence, (stamp, reply)) in &session.replies {
                    self.uncount(client, *sequence, *stamp, reply);
                }
            }
        }
    }

    /// Bytes of values held in remembered replies.
    pub(super) fn kept_bytes(&self) -> usize {
        self.kept_bytes
    }

    /// Number of replies remembered for `client`.
    #[cfg(test)]
    pub(super) fn replies_of(&self, client: u64) -> usize {
        self.clients.get(&client).map_or(0, |s| s.replies.len())
    }

    /// Number of clients with remembered replies.
    #[cfg(test)]
    pub(super) fn clients(&self) -> usize {
        self.clients.len()
    }

    /// Takes a reply that leaves the table out of the derived index.
    fn uncount(&mut self, client: u64, sequence: u64, stamp: Millis, reply: &WriteReply) {
        let carried = reply.outcome.reply_bytes();
        if carried > 0 {
            self.carrying.remove(&(stamp, client, sequence));
            self.kept_bytes -= carried;
        }
    }

    /// Reduces the oldest value-carrying replies to [`crate::Outcome::Forgotten`] until the values
    /// kept fit in [`MAX_KEPT_REPLIES_BYTES`].
    fn reduce_to_budget(&mut self) {
        while self.kept_bytes > MAX_KEPT_REPLIES_BYTES {
            let Some((stamp, client, sequence)) = self.carrying.remove_min() else {
                break;
            };
            let session = self
                .clients
                .get_mut(&client)
                .map(Arc::make_mut)
                .expect("an indexed reply belongs to a remembered client");
            let (_, reply) = session
                .replies
                .get_mut(&sequence)
                .filter(|(s, _)| *s == stamp)
                .expect("an indexed reply is remembered");
            self.kept_bytes -= reply.outcome.reply_bytes();
            *reply = reply.forgotten();
        }
    }

    fn from_clients(clients: OrdMap<u64, Arc<ClientSession>>) -> Self {
        let mut sessions = Sessions {
            clients,
            ..Sessions::default()
        };
        for (client, session) in &sessions.clients {
            for (sequence, (stamp, reply)) in &session.replies {
                let carried = reply.outcome.reply_bytes();
                if carried > 0 {
                    sessions.carrying.insert((*stamp, *client, *sequence));
                    sessions.kept_bytes += carried;
                }
            }
        }
        sessions
    }
}

impl Serialize for Sessions {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.clients.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Sessions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::cautious::ord_map(deserializer).map(Sessions::from_clients)
    }
}
