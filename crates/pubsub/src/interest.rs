//! Interest routing: which channels and patterns each node's local clients subscribe to, so a
//! message is relayed only to the members where someone will receive it.
//!
//! Sending side ([`Outbox`], one per peer): a node tells each peer its own interest on its relay
//! stream to that peer: a full copy as the first batch of every stream, then the changes,
//! numbered across streams. The peer acknowledges each number once it applied the change.
//! Subscribing waits until every peer whose stream is up has acknowledged the new interest
//! (bounded by [`SETTLE_WAIT`]), so a message published anywhere after SUBSCRIBE answered reaches
//! the subscriber, as with one Redis server.
//!
//! Receiving side ([`Remote`], one per origin): what a peer said it is interested in. Unknown
//! until the peer's stream sent its full copy, and again once that stream ends: a node relays
//! every message to a peer whose interest it does not know, so a lost or late interest stream
//! costs traffic, never messages.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use conclave_proto::peer::Interest;
use tokio::sync::{watch, Notify};

use crate::glob;

/// Longest a subscription waits for the peers to acknowledge its interest. A peer that has not
/// answered by then is slow or cut off; its stream's next reset carries the interest anyway.
pub const SETTLE_WAIT: Duration = Duration::from_millis(500);

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
    /// The peer acknowledged on the current stream; subscribers wait for it only then.
    up: AtomicBool,
}

#[derive(Default)]
struct Pending {
    /// The latest subscriber count of each name changed since the last batch.
    changes: HashMap<Name, u64>,
    /// The number of the last change queued.
    queued: u64,
}

/// Interest changes ready to go in one batch, up to number `seq`.
pub(crate) struct Outgoing {
    pub interest: Vec<Interest>,
    pub seq: u64,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            state: Mutex::default(),
            wake: Notify::new(),
            acked: watch::Sender::new(0),
            up: AtomicBool::new(false),
        }
    }
}

impl Outbox {
    /// Queues "`subscribers` local subscribers listen on `name`" (0: none left).
    pub fn record(&self, name: &Name, subscribers: u64) {
        let mut state = self.state.lock().expect("outbox poisoned");
        state.changes.insert(name.clone(), subscribers);
        state.queued += 1;
        drop(state);
        self.wake.notify_one();
    }

    /// The changes queued since the last call, if any.
    pub fn take(&self) -> Option<Outgoing> {
        let mut state = self.state.lock().expect("outbox poisoned");
        if state.changes.is_empty() {
            return None;
        }
        let interest = state.changes.drain().map(to_wire).collect();
        Some(Outgoing {
            interest,
            seq: state.queued,
        })
    }

    /// Replaces the queued changes by `full`, this node's whole interest, for a new stream's
    /// first batch. The caller holds the registry, so no change slips between the two.
    pub fn reset(&self, full: impl Iterator<Item = (Name, u64)>) -> Outgoing {
        let mut state = self.state.lock().expect("outbox poisoned");
        state.changes.clear();
        Outgoing {
            interest: full.map(to_wire).collect(),
            seq: state.queued,
        }
    }

    /// The peer applied every change up to `seq`.
    pub fn acknowledged(&self, seq: u64) {
        self.up.store(true, Ordering::Relaxed);
        self.acked.send_if_modified(|acked| {
            let newer = seq > *acked;
            if newer {
                *acked = seq;
            }
            newer
        });
    }

    /// The stream to the peer ended: subscribers stop waiting for it until a new one answers.
    pub fn down(&self) {
        self.up.store(false, Ordering::Relaxed);
    }

    /// What a subscriber must wait for: the peer's acknowledgement of everything queued so far,
    /// unless the peer's stream is down or it has acknowledged it already.
    pub fn unsettled(&self) -> Option<(watch::Receiver<u64>, u64)> {
        if !self.up.load(Ordering::Relaxed) {
            return None;
        }
        let queued = self.state.lock().expect("outbox poisoned").queued;
        let acked = self.acked.subscribe();
        let settled = *acked.borrow() >= queued;
        (!settled).then_some((acked, queued))
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

    #[test]
    fn only_the_latest_count_of_a_name_is_sent_and_numbers_keep_growing() {
        let outbox = Outbox::default();
        let room = Name {
            pattern: false,
            name: b"room".to_vec(),
        };
        outbox.record(&room, 1);
        outbox.record(&room, 2);
        let first = outbox.take().unwrap();
        assert_eq!(first.seq, 2);
        assert_eq!(first.interest, vec![channel("room", 2)]);
        assert!(outbox.take().is_none());
        outbox.record(&room, 0);
        let reset = outbox.reset(std::iter::empty());
        assert_eq!(reset.seq, 3, "a reset covers the changes it replaced");
        assert!(outbox.take().is_none());
    }

    #[test]
    fn subscribers_wait_only_for_a_peer_that_answers() {
        let outbox = Outbox::default();
        let room = Name {
            pattern: false,
            name: b"room".to_vec(),
        };
        outbox.record(&room, 1);
        assert!(outbox.unsettled().is_none(), "no stream answered yet");
        outbox.acknowledged(1);
        assert!(outbox.unsettled().is_none(), "acknowledged already");
        outbox.record(&room, 2);
        let (_, target) = outbox.unsettled().expect("the peer is up");
        assert_eq!(target, 2);
        outbox.down();
        assert!(outbox.unsettled().is_none());
    }
}
