//! Interest routing: which channels and patterns each node's local clients subscribe to, so a
//! message is relayed only to the members where someone will receive it.
//!
//! Sending side ([`Outbox`], one per peer): a node tells each peer its own interest on its relay
//! stream to that peer: a full copy at the start of every stream the peer answered, then the
//! changes, numbered across streams. The peer acknowledges each number once it applied the
//! change. Subscribing waits (bounded by [`SETTLE_WAIT`]) until every peer that may hold a copy
//! of this node's interest has acknowledged the new one: a peer whose stream is open, or ended
//! less than [`RECEIVER_LEASE`] ago. So a message published anywhere after SUBSCRIBE answered
//! reaches the subscriber, as with one Redis server.
//!
//! Receiving side ([`Remote`], one per origin): what a peer said it is interested in. Unknown
//! until the peer's stream sent its full copy, and again once that stream ends or stays silent
//! for [`RECEIVER_LEASE`] (an idle stream carries an empty batch every [`KEEPALIVE`]): a node
//! relays every message to a peer whose interest it does not know, so a lost or late interest
//! stream costs traffic, never messages.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use conclave_proto::peer::Interest;
use tokio::sync::{watch, Notify};

use crate::glob;

/// A receiver that hears nothing on a stream for this long ends it and forgets the origin's
/// interest.
pub const RECEIVER_LEASE: Duration = Duration::from_secs(1);
/// How often an otherwise idle stream carries an empty batch, well inside the receiver's lease.
pub const KEEPALIVE: Duration = Duration::from_millis(250);
/// Longest a subscription waits for the peers to acknowledge its interest: past the receivers'
/// lease, so a peer that has not answered by then (slow, or cut off on our side only) has
/// forgotten the interest it held, and relays everything to us until our next stream's copy.
pub const SETTLE_WAIT: Duration = Duration::from_millis(1500);
/// Most interest entries in one batch, so a large interest (a SUBSCRIBE of thousands of
/// channels, or a whole copy) travels in batches well below the peers' message size limit.
pub const MAX_INTEREST_PER_BATCH: usize = 8192;

/// A channel or a pattern, as one node's interest names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Name {
    pub pattern: bool,
    pub name: Vec<u8>,
}

/// This node's interest changes not yet sent to one peer, and what the peer acknowledged.
pub(crate) struct Outbox {
    state: Mutex<Pending>,
    /// Woken when a change is queued.
    pub wake: Notify,
    acked: watch::Sender<u64>,
}

#[derive(Default)]
struct Pending {
    /// The latest subscriber count of each name changed since the last batch (kept only while a
    /// stream is open: the next stream's whole copy covers the rest).
    changes: HashMap<Name, u64>,
    /// The number of the last change queued.
    queued: u64,
    stream: Stream,
}

/// Whether the peer may hold a copy of this node's interest.
#[derive(Clone, Copy, Default)]
enum Stream {
    /// No stream was ever answered.
    #[default]
    Never,
    /// A stream was answered and its copy sent.
    Open,
    /// The last stream ended then: the peer forgets within its lease.
    Ended(Instant),
}

/// Time a receiver may take beyond its lease to notice the silence and forget.
const LEASE_MARGIN: Duration = Duration::from_millis(200);

/// What a subscriber waits for on one peer: `acked` reaching `target`, or, for a peer whose
/// stream ended, `until` (by then it has forgotten this node's interest).
pub(crate) struct Unsettled {
    pub acked: watch::Receiver<u64>,
    pub target: u64,
    pub until: Option<Instant>,
}

/// Interest to send in one batch: a whole copy's first part when `reset`, and acknowledged up to
/// number `seq` (0: a part with more to follow, not acknowledged on its own).
pub(crate) struct Outgoing {
    pub interest: Vec<Interest>,
    pub reset: bool,
    pub seq: u64,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            state: Mutex::default(),
            wake: Notify::new(),
            acked: watch::Sender::new(0),
        }
    }
}

impl Outbox {
    /// Queues "`subscribers` local subscribers listen on `name`" (0: none left).
    pub fn record(&self, name: &Name, subscribers: u64) {
        let mut state = self.state.lock().expect("outbox poisoned");
        state.queued += 1;
        if matches!(state.stream, Stream::Open) {
            state.changes.insert(name.clone(), subscribers);
            drop(state);
            self.wake.notify_one();
        }
    }

    /// The changes queued since the last call, at most [`MAX_INTEREST_PER_BATCH`] of them.
    pub fn take(&self) -> Option<Outgoing> {
        let mut state = self.state.lock().expect("outbox poisoned");
        if state.changes.is_empty() {
            return None;
        }
        let names: Vec<Name> = state
            .changes
            .keys()
            .take(MAX_INTEREST_PER_BATCH)
            .cloned()
            .collect();
        let interest = names
            .into_iter()
            .map(|name| {
                let subscribers = state.changes.remove(&name).expect("listed above");
                to_wire((name, subscribers))
            })
            .collect();
        let more = !state.changes.is_empty();
        let seq = if more { 0 } else { state.queued };
        drop(state);
        if more {
            self.wake.notify_one();
        }
        Some(Outgoing {
            interest,
            reset: false,
            seq,
        })
    }

    /// A newly answered stream's first batches: `full`, this node's whole interest, replacing
    /// the queued changes. The caller holds the registry, so no change slips between the two.
    pub fn reset(&self, full: impl Iterator<Item = (Name, u64)>) -> Vec<Outgoing> {
        let mut state = self.state.lock().expect("outbox poisoned");
        state.changes.clear();
        state.stream = Stream::Open;
        let full: Vec<Interest> = full.map(to_wire).collect();
        let mut parts: Vec<Outgoing> = full
            .chunks(MAX_INTEREST_PER_BATCH)
            .map(|part| Outgoing {
                interest: part.to_vec(),
                reset: false,
                seq: 0,
            })
            .collect();
        if parts.is_empty() {
            parts.push(Outgoing {
                interest: Vec::new(),
                reset: false,
                seq: 0,
            });
        }
        parts[0].reset = true;
        parts.last_mut().expect("one at least").seq = state.queued;
        parts
    }

    /// The peer applied every change up to `seq`.
    pub fn acknowledged(&self, seq: u64) {
        self.acked.send_if_modified(|acked| {
            let newer = seq > *acked;
            if newer {
                *acked = seq;
            }
            newer
        });
    }

    /// The stream to the peer ended: the peer forgets this node's interest within its lease.
    pub fn ended(&self) {
        let mut state = self.state.lock().expect("outbox poisoned");
        if matches!(state.stream, Stream::Open) {
            state.stream = Stream::Ended(Instant::now());
            state.changes.clear();
        }
    }

    /// What a subscriber must wait for: the peer's acknowledgement of everything queued so far,
    /// unless the peer holds no copy of this node's interest (no stream was answered, or the
    /// last ended longer than the receiver's lease ago) or has acknowledged it already.
    pub fn unsettled(&self) -> Option<Unsettled> {
        let (target, until) = {
            let state = self.state.lock().expect("outbox poisoned");
            let until = match state.stream {
                Stream::Never => return None,
                Stream::Open => None,
                // The peer heard from the ended stream last before it ended here.
                Stream::Ended(at) => Some(at + RECEIVER_LEASE + LEASE_MARGIN),
            };
            (state.queued, until)
        };
        if until.is_some_and(|until| until <= Instant::now()) {
            return None;
        }
        let acked = self.acked.subscribe();
        let settled = *acked.borrow() >= target;
        (!settled).then_some(Unsettled {
            acked,
            target,
            until,
        })
    }
}

fn to_wire((name, subscribers): (Name, u64)) -> Interest {
    Interest {
        name: name.name,
        pattern: name.pattern,
        subscribers,
    }
}

/// What one peer said its local subscribers listen on.
#[derive(Default)]
pub(crate) struct Remote {
    known: bool,
    channels: HashMap<Vec<u8>, u64>,
    patterns: HashMap<Vec<u8>, u64>,
}

impl Remote {
    /// Applies a batch's interest: a full copy when `reset`, else changes.
    pub fn apply(&mut self, reset: bool, interest: Vec<Interest>) {
        if reset {
            self.channels.clear();
            self.patterns.clear();
            self.known = true;
        }
        for Interest {
            name,
            pattern,
            subscribers,
        } in interest
        {
            let names = if pattern {
                &mut self.patterns
            } else {
                &mut self.channels
            };
            if subscribers == 0 {
                names.remove(&name);
            } else {
                names.insert(name, subscribers);
            }
        }
    }

    /// The peer's stream ended: its interest is unknown until the next one says it again.
    pub fn forget(&mut self) {
        *self = Remote::default();
    }

    /// How many of the peer's subscribers a message on `channel` reaches, counted as PUBLISH
    /// counts them (each channel subscriber and each matching pattern subscription); None when
    /// the peer's interest is unknown.
    pub fn receivers(&self, channel: &[u8]) -> Option<u64> {
        if !self.known {
            return None;
        }
        let direct = self.channels.get(channel).copied().unwrap_or(0);
        let by_pattern: u64 = self
            .patterns
            .iter()
            .filter(|(pattern, _)| glob::matches(pattern, channel))
            .map(|(_, subscribers)| subscribers)
            .sum();
        Some(direct + by_pattern)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(name: &str, subscribers: u64) -> Interest {
        Interest {
            name: name.as_bytes().to_vec(),
            pattern: false,
            subscribers,
        }
    }

    #[test]
    fn a_peer_whose_interest_is_unknown_gets_everything() {
        let mut remote = Remote::default();
        assert_eq!(remote.receivers(b"anything"), None);
        remote.apply(true, vec![channel("room", 2)]);
        assert_eq!(remote.receivers(b"room"), Some(2));
        assert_eq!(remote.receivers(b"other"), Some(0));
        remote.forget();
        assert_eq!(remote.receivers(b"other"), None);
    }

    #[test]
    fn receivers_count_channel_subscribers_and_matching_patterns() {
        let mut remote = Remote::default();
        let pattern = Interest {
            name: b"room.*".to_vec(),
            pattern: true,
            subscribers: 3,
        };
        remote.apply(true, vec![channel("room.a", 1), pattern]);
        assert_eq!(remote.receivers(b"room.a"), Some(4));
        assert_eq!(remote.receivers(b"room.b"), Some(3));
        remote.apply(false, vec![channel("room.a", 0)]);
        assert_eq!(remote.receivers(b"room.a"), Some(3));
        remote.apply(true, vec![]);
        assert_eq!(remote.receivers(b"room.a"), Some(0), "a reset replaces all");
    }

    fn room() -> Name {
        Name {
            pattern: false,
            name: b"room".to_vec(),
        }
    }

    #[test]
    fn only_the_latest_count_of_a_name_is_sent_and_numbers_keep_growing() {
        let outbox = Outbox::default();
        outbox.record(&room(), 1);
        assert!(
            outbox.take().is_none(),
            "no stream: the next copy carries it"
        );
        let reset = outbox.reset(std::iter::once((room(), 1)));
        assert_eq!(reset.len(), 1);
        assert!(reset[0].reset);
        assert_eq!(reset[0].seq, 1, "a copy covers the changes it replaced");
        outbox.record(&room(), 2);
        outbox.record(&room(), 3);
        let changes = outbox.take().unwrap();
        assert_eq!((changes.reset, changes.seq), (false, 3));
        assert_eq!(changes.interest, vec![channel("room", 3)]);
        assert!(outbox.take().is_none());
    }

    #[test]
    fn a_large_interest_travels_in_parts_acknowledged_at_the_last() {
        let outbox = Outbox::default();
        let names = (0..MAX_INTEREST_PER_BATCH * 2 + 1).map(|i| Name {
            pattern: false,
            name: format!("channel:{i}").into_bytes(),
        });
        outbox.record(&room(), 1);
        let parts = outbox.reset(names.clone().map(|name| (name, 1)));
        assert_eq!(parts.len(), 3);
        assert!(parts[0].reset && !parts[1].reset && !parts[2].reset);
        assert_eq!(
            parts.iter().map(|p| p.seq).collect::<Vec<_>>(),
            [0, 0, 1],
            "only the last part acknowledges"
        );
        for name in names {
            outbox.record(&name, 2);
        }
        let seqs: Vec<u64> = std::iter::from_fn(|| outbox.take().map(|c| c.seq)).collect();
        assert_eq!(seqs.len(), 3);
        assert_eq!(seqs.last(), Some(&(MAX_INTEREST_PER_BATCH as u64 * 2 + 2)));
        assert!(seqs[..2].iter().all(|s| *s == 0));
    }

    #[test]
    fn subscribers_wait_for_a_peer_that_may_hold_this_nodes_interest() {
        let outbox = Outbox::default();
        outbox.record(&room(), 1);
        assert!(
            outbox.unsettled().is_none(),
            "no stream answered: the peer holds nothing"
        );
        outbox.reset(std::iter::once((room(), 1)));
        let waiting = outbox.unsettled().expect("a copy is on its way");
        assert_eq!((waiting.target, waiting.until), (1, None));
        outbox.acknowledged(1);
        assert!(outbox.unsettled().is_none(), "acknowledged already");
        outbox.record(&room(), 2);
        outbox.ended();
        let waiting = outbox
            .unsettled()
            .expect("the peer may still hold the old copy within its lease");
        assert_eq!(waiting.target, 2);
        assert!(waiting.until.is_some(), "but not beyond it");
    }
}
