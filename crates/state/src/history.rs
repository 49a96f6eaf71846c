//! The change events produced by applied entries, and the bounded history watchers read from.
//!
//! Every change to the keyspace (a key or hash field or set member written or removed, by a
//! client, a transaction, an expiry or a lease) becomes an [`Event`] stamped with the revision of
//! the entry that caused it. Every replica derives the same events at the same revisions, so a
//! watcher can resume on any node from the last revision it saw. The most recent events are kept
//! (bounded by count and bytes, trimmed deterministically) and travel in snapshots; a watcher
//! asking for older events gets [`Compacted`].

use imbl::Vector;
use serde::{Deserialize, Serialize};

use crate::{Bytes, Revision};

/// Most events the history keeps.
pub const HISTORY_MAX_EVENTS: usize = 50_000;
/// Most bytes of event weight (a fixed overhead plus key, field and value) the history keeps.
pub const HISTORY_MAX_BYTES: usize = 32 * 1024 * 1024;

/// Bookkeeping bytes counted per event on top of its payload.
const EVENT_OVERHEAD: usize = 48;

/// Whether something was written or removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change to the keyspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The entry that made the change.
    pub revision: Revision,
    pub kind: EventKind,
    pub key: Bytes,
    /// The hash field or set member changed; None when the whole key changed (a string written,
    /// or any key removed).
    pub field: Option<Bytes>,
    /// The new value of a put string or hash field; empty for set members and deletes.
    pub value: Bytes,
}

impl Event {
    fn weight(&self) -> usize {
        EVENT_OVERHEAD
            + self.key.len()
            + self.field.as_ref().map_or(0, |f| f.len())
            + self.value.len()
    }
}

/// The events a watch wants: one key, or every key starting with a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyFilter {
    Key(Bytes),
    Prefix(Bytes),
}

impl KeyFilter {
    pub fn matches(&self, key: &[u8]) -> bool {
        match self {
            KeyFilter::Key(k) => k.as_slice() == key,
            KeyFilter::Prefix(p) => key.starts_with(p),
        }
    }
}

/// What [`History::events_after`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventBatch {
    /// The matching events, oldest first, whole revisions only.
    pub events: Vec<Event>,
    /// Some(r) when the batch stopped early at its bounds: every matching event up to and
    /// including revision r is in `events`, and later ones are not. None when it reached the end
    /// of the history, so every matching event after the requested revision is in `events`.
    pub stopped_after: Option<Revision>,
}

/// Events at or before this revision are no longer kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compacted {
    /// The history holds every event after this revision.
    pub compacted: Revision,
}

impl std::fmt::Display for Compacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the requested revision has been compacted; history starts after revision {}",
            self.compacted
        )
    }
}

impl std::error::Error for Compacted {}

/// The most recent events, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "HistoryImage")]
pub struct History {
    events: Vector<Event>,
    /// The sum of the events' weights. Encoded, but recomputed on load: a snapshot whose
    /// figure disagreed with its events made the next trim underflow.
    bytes: usize,
    /// Every event after this revision is kept.
    compacted: Revision,
}

/// The serialized form of a [`History`] (the same fields; `bytes` is not trusted).
#[derive(Deserialize)]
struct HistoryImage {
    #[serde(deserialize_with = "crate::cautious::vector")]
    events: Vector<Event>,
    #[allow(dead_code)] // kept in the encoding, recomputed from the events
    bytes: usize,
    compacted: Revision,
}

impl From<HistoryImage> for History {
    fn from(image: HistoryImage) -> Self {
        History {
            bytes: image.events.iter().map(Event::weight).sum(),
            events: image.events,
            compacted: image.compacted,
        }
    }
}

impl History {
    /// Appends an event (revisions never decrease) and trims the oldest revisions past the bounds.
    pub(crate) fn record(&mut self, event: Event) {
        self.bytes += event.weight();
        self.events.push_back(event);
        while self.events.len() > HISTORY_MAX_EVENTS || self.bytes > HISTORY_MAX_BYTES {
            let Some(oldest) = self.events.front().map(|e| e.revision) else {
                break;
            };
            // Drop whole revisions, so what is kept of a revision is all of it.
            while self.events.front().is_some_and(|e| e.revision == oldest) {
                let dropped = self.events.pop_front().expect("front exists");
                self.bytes -= dropped.weight();
            }
            self.compacted = oldest;
        }
    }

    /// An empty history that holds nothing at or before `revision` (a watch from before it
    /// is told so).
    pub(crate) fn starting_after(revision: Revision) -> History {
        History {
            compacted: revision,
            ..History::default()
        }
    }

    /// The revision after which every event is kept.
    pub fn compacted(&self) -> Revision {
        self.compacted
    }

    /// Index of the first event with a revision greater than `revision`.
    fn first_after(&self, revision: Revision) -> usize {
        let found = self.events.binary_search_by(|e| {
            if e.revision <= revision {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            }
        });
        found.unwrap_or_else(|first| first)
    }

    /// Events after revision `after` that match `filter`, whole revisions only, stopping once at
    /// least `limit` events or `max_bytes` of event weight (a fixed overhead plus key, field and
    /// value) are collected. The batch says how far it got, so a reader resumes from there rather
    /// than recomputing the weights. Fails when events after `after` were already dropped.
    pub fn events_after(
        &self,
        after: Revision,
        filter: &KeyFilter,
        limit: usize,
        max_bytes: usize,
    ) -> Result<EventBatch, Compacted> {
        if after < self.compacted {
            return Err(Compacted {
                compacted: self.compacted,
            });
        }
        let mut events: Vec<Event> = Vec::new();
        let mut bytes = 0;
        // A focus reads the range in place (`Vector::skip` would copy the shared chunks).
        let start = self.first_after(after);
        for event in self.events.focus().narrow(start..) {
            let full = events.len() >= limit || bytes >= max_bytes;
            if full {
                if let Some(last) = events.last().map(|l| l.revision) {
                    if last != event.revision {
                        return Ok(EventBatch {
                            events,
                            stopped_after: Some(last),
                        });
                    }
                }
            }
            if filter.matches(&event.key) {
                bytes += event.weight();
                events.push(event.clone());
            }
        }
        Ok(EventBatch {
            events,
            stopped_after: None,
        })
    }

    /// Whether any event touched `key` after revision `after`; None when that cannot be known
    /// because those events were dropped.
    pub fn touched_since(&self, key: &[u8], after: Revision) -> Option<bool> {
        if after < self.compacted {
            return None;
        }
        let start = self.first_after(after);
        let mut events = self.events.focus().narrow(start..).into_iter();
        Some(events.any(|e| e.key.as_slice() == key))
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loaded_history_counts_its_bytes_from_its_events_not_from_the_encoding() {
        let mut history = History::default();
        for revision in 1..=3 {
            history.record(Event {
                revision,
                kind: EventKind::Put,
                key: Bytes::from(b"key".to_vec()),
                field: None,
                value: Bytes::from(vec![b'v'; 100]),
            });
        }
        let mut encoded = bincode::serialize(&history).unwrap();
        // The encoding ends with `bytes` then `compacted`, 8 bytes each: claim 0 bytes.
        let at = encoded.len() - 16;
        encoded[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
        let loaded: History = bincode::deserialize(&encoded).unwrap();
        assert_eq!(loaded, history, "the byte count is recomputed");
    }
}
