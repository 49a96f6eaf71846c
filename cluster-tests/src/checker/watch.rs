//! The watch checker: every watcher saw every committed change it covered, once, in revision
//! order, and all watchers agree on what each revision held.
//!
//! What a watcher covered is its stream's range: from the revision it asked for to the last
//! revision the node said was complete (`through`). What was committed is known two ways: the
//! revision an acknowledged SDK write was answered at, and the union of every watcher's events
//! (a change one watcher saw was committed; a RESP write's revision is known only so). Each
//! field is put once, so a field names one change.
//!
//! - skipped: a change in a stream's range that the stream did not deliver;
//! - duplicated: a change a stream delivered twice;
//! - out of order: an event with a lower revision than one delivered before it;
//! - diverged: a field seen at two revisions (or at another revision than its write's reply);
//! - phantom: an event no write can explain (never invoked, certainly failed, or a value not
//!   the field's own);
//! - unfinished: a watcher that had not seen the last acknowledged write 30 s after the run.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::history::{Call, Op, Outcome, Seen};

/// At most this many examples are kept per kind of problem.
const EXAMPLES: usize = 20;

#[derive(Debug, Default, Serialize)]
pub struct WatchReport {
    pub writes_acknowledged: usize,
    pub streams: usize,
    pub events: usize,
    pub skipped: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub diverged: u64,
    pub phantom: u64,
    pub unfinished: u64,
    pub examples: Vec<String>,
}

impl WatchReport {
    /// Whether any watcher took part (the workload ran).
    pub fn ran(&self) -> bool {
        self.streams > 0
    }

    pub fn holds(&self) -> bool {
        self.skipped == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.diverged == 0
            && self.phantom == 0
            && self.unfinished == 0
    }

    fn note(&mut self, example: String) {
        if self.examples.len() < EXAMPLES {
            self.examples.push(example);
        }
    }
}

struct Stream<'a> {
    client: usize,
    start: u64,
    through: u64,
    events: &'a [Seen],
}

pub fn check(ops: &[Op]) -> WatchReport {
    let mut report = WatchReport::default();
    // field -> (may have happened, acknowledged revision if any)
    let mut writes: HashMap<&str, (bool, Option<u64>)> = HashMap::new();
    let mut streams = Vec::new();
    for op in ops {
        match &op.call {
            Call::Put { field, revision } => {
                let entry = writes.entry(field).or_insert((false, None));
                entry.0 |= !matches!(op.outcome, Outcome::Fail(_));
                if op.is_ok() {
                    report.writes_acknowledged += 1;
                    if *revision > 0 {
                        entry.1 = Some(*revision);
                    }
                }
            }
            Call::Watch {
                start,
                through,
                events,
                caught_up,
            } => {
                // A stream the node ended as compacted is checked like any other; only the
                // last stream of a watcher must have caught up.
                if op.is_ok() && !caught_up {
                    report.unfinished += 1;
                    report.note(format!(
                        "watcher {} did not catch up (through {through})",
                        op.client
                    ));
                }
                streams.push(Stream {
                    client: op.client,
                    start: *start,
                    through: *through,
                    events,
                });
            }
            _ => {}
        }
    }
    report.streams = streams.len();

    // Every committed change: field -> revision, from the writes' replies and the watchers.
    let mut committed: HashMap<&str, u64> = HashMap::new();
    for (field, (_, revision)) in &writes {
        if let Some(revision) = revision {
            committed.insert(field, *revision);
        }
    }
    for stream in &streams {
        for event in stream.events {
            report.events += 1;
            let explained = writes
                .get(event.field.as_str())
                .is_some_and(|(may, _)| *may)
                && event.tag == event.field;
            if !explained {
                report.phantom += 1;
                report.note(format!(
                    "watcher {}: revision {} {}/{} (value {:?}) was never written",
                    stream.client, event.revision, event.key, event.field, event.tag
                ));
            }
            match committed.get(event.field.as_str()) {
                Some(&revision) if revision != event.revision => {
                    report.diverged += 1;
                    report.note(format!(
                        "watcher {}: {} at revision {}, elsewhere at {revision}",
                        stream.client, event.field, event.revision
                    ));
                }
                Some(_) => {}
                None => {
                    committed.insert(&event.field, event.revision);
                }
            }
        }
    }
    let by_revision: BTreeMap<u64, Vec<&str>> =
        committed
            .iter()
            .fold(BTreeMap::new(), |mut map, (field, revision)| {
                map.entry(*revision).or_insert_with(Vec::new).push(*field);
                map
            });

    for stream in &streams {
        let mut delivered: HashSet<&str> = HashSet::new();
        let mut last = 0;
        for event in stream.events {
            if !delivered.insert(&event.field) {
                report.duplicated += 1;
                report.note(format!(
                    "watcher {}: {} (revision {}) delivered twice",
                    stream.client, event.field, event.revision
                ));
            }
            if event.revision < last {
                report.out_of_order += 1;
                report.note(format!(
                    "watcher {}: revision {} after {last}",
                    stream.client, event.revision
                ));
            }
            last = last.max(event.revision);
        }
        for (revision, fields) in by_revision.range(stream.start..=stream.through) {
            for field in fields {
                if !delivered.contains(field) {
                    report.skipped += 1;
                    report.note(format!(
                        "watcher {}: {field} (revision {revision}) skipped in its stream {}..={}",
                        stream.client, stream.start, stream.through
                    ));
                }
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, call: Call, outcome: Outcome) -> Op {
        Op {
            client,
            node: 1,
            protocol: "test",
            key: "watched:0".into(),
            call,
            outcome,
            invoked_us: 0,
            completed_us: 1,
        }
    }
    fn put(field: &str, revision: u64) -> Op {
        op(
            1,
            Call::Put {
                field: field.into(),
                revision,
            },
            Outcome::Ok,
        )
    }
    fn seen(revision: u64, field: &str) -> Seen {
        Seen {
            revision,
            key: "watched:0".into(),
            field: field.into(),
            tag: field.into(),
        }
    }
    fn watch(client: usize, start: u64, through: u64, events: Vec<Seen>) -> Op {
        op(
            client,
            Call::Watch {
                start,
                through,
                events,
                caught_up: true,
            },
            Outcome::Ok,
        )
    }

    #[test]
    fn watchers_that_saw_every_change_in_order_pass() {
        let ops = vec![
            put("a", 3),
            put("b", 5),
            watch(10, 1, 6, vec![seen(3, "a"), seen(5, "b")]),
            watch(11, 4, 6, vec![seen(5, "b")]),
        ];
        let report = check(&ops);
        assert!(report.holds(), "{report:?}");
        assert_eq!(report.events, 3);
    }

    #[test]
    fn a_change_left_out_of_a_stream_that_covered_it_is_skipped() {
        // "c" was written over RESP (no revision known): another watcher saw it at 7.
        let mut resp = put("c", 0);
        resp.protocol = "resp";
        let ops = vec![
            put("a", 3),
            resp,
            watch(10, 1, 9, vec![seen(3, "a"), seen(7, "c")]),
            watch(11, 1, 9, vec![seen(3, "a")]),
            watch(12, 1, 6, vec![seen(3, "a")]),
        ];
        let report = check(&ops);
        assert_eq!(report.skipped, 1, "{report:?}");
        let ops = vec![put("a", 3), watch(10, 1, 9, vec![])];
        assert_eq!(check(&ops).skipped, 1);
    }

    #[test]
    fn repeats_reordering_and_phantoms_are_found() {
        let ops = vec![
            put("a", 3),
            put("b", 5),
            watch(10, 1, 6, vec![seen(3, "a"), seen(5, "b"), seen(3, "a")]),
        ];
        let report = check(&ops);
        assert_eq!(report.duplicated, 1, "{report:?}");
        assert_eq!(report.out_of_order, 1, "{report:?}");
        let mut corrupt = seen(5, "b");
        corrupt.tag = "a".into();
        let ops = vec![
            put("a", 3),
            put("b", 5),
            watch(10, 1, 6, vec![seen(3, "a"), corrupt, seen(6, "z")]),
        ];
        assert_eq!(check(&ops).phantom, 2);
    }

    #[test]
    fn a_field_seen_at_two_revisions_diverges() {
        let ops = vec![put("a", 3), watch(10, 1, 6, vec![seen(4, "a")])];
        assert_eq!(check(&ops).diverged, 1);
    }

    #[test]
    fn a_watcher_that_never_caught_up_is_reported() {
        let mut stuck = watch(10, 1, 2, vec![]);
        if let Call::Watch { caught_up, .. } = &mut stuck.call {
            *caught_up = false;
        }
        assert_eq!(check(&[stuck]).unfinished, 1);
    }
}
