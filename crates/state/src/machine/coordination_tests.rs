//! Unit tests of leases, transactions and the event history.

use super::*;
use crate::{Check, CmpOp, Compare, EventKind, KeyFilter, Transaction, MIN_LEASE_TTL_MS};

fn b(text: &str) -> Bytes {
    Bytes::from(text.as_bytes().to_vec())
}

fn write(stamp: Millis, command: Command) -> WriteRequest {
    WriteRequest {
        id: None,
        stamp,
        command,
    }
}

fn set(key: &str, value: &str, lease: Option<LeaseId>) -> Command {
    Command::Set {
        key: b(key),
        value: b(value),
        condition: SetCondition::Always,
        expiry: Expiry::Never,
        return_previous: false,
        lease,
    }
}

fn hset(key: &str, field: &str, value: &str, lease: Option<LeaseId>) -> Command {
    Command::HashSet {
        key: b(key),
        fields: vec![(b(field), b(value))],
        lease,
    }
}

fn grant(m: &mut Machine, index: Revision, stamp: Millis, ttl_ms: u64) -> LeaseId {
    match m
        .apply(index, &write(stamp, Command::LeaseGrant { ttl_ms }))
        .outcome
    {
        Outcome::Lease { id, .. } => id,
        other => panic!("grant answered {other:?}"),
    }
}

fn all_events(m: &Machine) -> Vec<Event> {
    m.history()
        .events_after(0, &KeyFilter::Prefix(Bytes::new()), usize::MAX, usize::MAX)
        .unwrap()
        .events
}

fn field_of(m: &Machine, key: &str, field: &str) -> Option<Vec<u8>> {
    m.hash(key.as_bytes(), 0)
        .unwrap()
        .and_then(|h| h.get(serde_bytes::Bytes::new(field.as_bytes())))
        .map(|v| v.to_vec())
}

#[test]
fn lease_expiry_deletes_attached_keys_and_fields_with_one_event_each() {
    let mut m = Machine::new();
    let lease = grant(&mut m, 1, 1000, 2000);
    assert_eq!(lease, 1, "a lease is named by the revision that granted it");
    m.apply(2, &write(1000, set("node/a", "up", Some(lease))));
    m.apply(
        3,
        &write(1000, hset("participants:r1", "alice", "p", Some(lease))),
    );
    m.apply(4, &write(1000, hset("participants:r1", "bob", "p", None)));

    // Too early: the deadline (3000) has not passed at the entry's stamp.
    let r = m.apply(
        5,
        &write(
            2999,
            Command::LeaseExpire {
                leases: vec![lease],
            },
        ),
    );
    assert_eq!(r.outcome, Outcome::Count(0));
    assert!(m.lease(lease).is_some());

    let r = m.apply(
        6,
        &write(
            3000,
            Command::LeaseExpire {
                leases: vec![lease],
            },
        ),
    );
    assert_eq!(r.outcome, Outcome::Count(1));
    assert!(m.lease(lease).is_none());
    assert!(m.record(b"node/a", 0).is_none());
    assert_eq!(field_of(&m, "participants:r1", "alice"), None);
    assert_eq!(field_of(&m, "participants:r1", "bob"), Some(b"p".to_vec()));

    let deletes: Vec<(Vec<u8>, Option<Vec<u8>>)> = all_events(&m)
        .into_iter()
        .filter(|e| e.revision == 6)
        .inspect(|e| assert_eq!(e.kind, EventKind::Delete))
        .map(|e| (e.key.to_vec(), e.field.map(|f| f.to_vec())))
        .collect();
    assert_eq!(
        deletes,
        vec![
            (b"node/a".to_vec(), None),
            (b"participants:r1".to_vec(), Some(b"alice".to_vec())),
        ]
    );
}

#[test]
fn keep_alive_and_renew_all_push_the_deadline_out() {
    let mut m = Machine::new();
    let lease = grant(&mut m, 1, 0, 1500);
    m.apply(2, &write(1000, Command::LeaseKeepAlive { lease }));
    assert_eq!(m.lease(lease).unwrap().deadline, 2500);
    // A keep-alive never shortens a lease.
    m.apply(3, &write(900, Command::LeaseKeepAlive { lease }));
    assert_eq!(m.lease(lease).unwrap().deadline, 2500);
    // A new leader renews every lease from its own stamp before expiring any.
    m.apply(4, &write(5000, Command::LeaseRenewAll));
    assert_eq!(m.lease(lease).unwrap().deadline, 6500);
    assert_eq!(m.expired_leases(6499, 10), Vec::<LeaseId>::new());
    assert_eq!(m.expired_leases(6500, 10), vec![lease]);
    let missing = m.apply(5, &write(5000, Command::LeaseKeepAlive { lease: 99 }));
    assert_eq!(missing.outcome, Outcome::LeaseNotFound);
}

#[test]
fn grants_are_clamped_to_the_minimum_ttl() {
    let mut m = Machine::new();
    let r = m.apply(1, &write(0, Command::LeaseGrant { ttl_ms: 5 }));
    assert_eq!(
        r.outcome,
        Outcome::Lease {
            id: 1,
            ttl_ms: MIN_LEASE_TTL_MS
        }
    );
}

#[test]
fn rewriting_without_a_lease_detaches_and_revoke_deletes_what_is_left() {
    let mut m = Machine::new();
    let lease = grant(&mut m, 1, 0, 10_000);
    m.apply(2, &write(0, set("a", "1", Some(lease))));
    m.apply(3, &write(0, set("b", "1", Some(lease))));
    m.apply(4, &write(0, hset("h", "f", "1", Some(lease))));
    m.apply(5, &write(0, hset("h", "g", "1", Some(lease))));
    // Detach a and h/f by rewriting them without the lease; delete b outright.
    m.apply(6, &write(0, set("a", "2", None)));
    m.apply(7, &write(0, hset("h", "f", "2", None)));
    m.apply(8, &write(0, Command::Delete { keys: vec![b("b")] }));
    let attached = m.lease(lease).unwrap();
    assert!(attached.keys.is_empty());
    assert_eq!(attached.fields.len(), 1);

    let r = m.apply(9, &write(0, Command::LeaseRevoke { lease }));
    assert_eq!(r.outcome, Outcome::Count(1));
    assert!(m.record(b"a", 0).is_some());
    assert_eq!(field_of(&m, "h", "f"), Some(b"2".to_vec()));
    assert_eq!(field_of(&m, "h", "g"), None);
    let again = m.apply(10, &write(0, Command::LeaseRevoke { lease }));
    assert_eq!(again.outcome, Outcome::LeaseNotFound);
}

#[test]
fn writing_under_an_unknown_lease_is_refused_and_changes_nothing() {
    let mut m = Machine::new();
    let r = m.apply(1, &write(0, set("a", "1", Some(42))));
    assert_eq!(r.outcome, Outcome::LeaseNotFound);
    let r = m.apply(2, &write(0, hset("h", "f", "1", Some(42))));
    assert_eq!(r.outcome, Outcome::LeaseNotFound);
    assert!(m.is_empty());
    assert!(all_events(&m).is_empty());
}

#[test]
fn a_hash_emptied_by_its_lease_disappears() {
    let mut m = Machine::new();
    let lease = grant(&mut m, 1, 0, 1000);
    m.apply(2, &write(0, hset("h", "f", "1", Some(lease))));
    m.apply(
        3,
        &write(
            1000,
            Command::LeaseExpire {
                leases: vec![lease],
            },
        ),
    );
    assert!(m.record(b"h", 0).is_none());
    let kinds: Vec<_> = all_events(&m)
        .iter()
        .filter(|e| e.revision == 3)
        .map(|e| (e.field.is_some(), e.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![(true, EventKind::Delete), (false, EventKind::Delete)]
    );
}

fn txn(compares: Vec<Compare>, success: Vec<Command>, failure: Vec<Command>) -> Command {
    Command::Txn(Box::new(Transaction {
        compares,
        success,
        failure,
    }))
}

fn compare(key: &str, check: Check) -> Compare {
    Compare {
        key: b(key),
        field: None,
        check,
    }
}

#[test]
fn a_transaction_whose_compare_fails_applies_nothing_but_its_failure_branch() {
    let mut m = Machine::new();
    m.apply(1, &write(0, set("lock", "owner-a", None)));
    let r = m.apply(
        2,
        &write(
            0,
            txn(
                vec![compare("lock", Check::Value(CmpOp::Equal, b("owner-b")))],
                vec![
                    Command::Delete {
                        keys: vec![b("lock")],
                    },
                    set("other", "x", None),
                ],
                vec![],
            ),
        ),
    );
    assert_eq!(
        r.outcome,
        Outcome::Txn {
            succeeded: false,
            outcomes: vec![]
        }
    );
    assert!(m.record(b"lock", 0).is_some());
    assert!(m.record(b"other", 0).is_none());
    assert!(all_events(&m).iter().all(|e| e.revision == 1));
}

#[test]
fn a_transaction_applies_its_whole_branch_at_one_revision() {
    let mut m = Machine::new();
    m.apply(1, &write(0, hset("rooms", "r1", "meta", None)));
    m.apply(2, &write(0, hset("participants:r1", "alice", "p", None)));
    let cascade = txn(
        vec![Compare {
            key: b("rooms"),
            field: Some(b("r1")),
            check: Check::Exists(true),
        }],
        vec![
            Command::HashDelete {
                key: b("rooms"),
                fields: vec![b("r1")],
            },
            Command::Delete {
                keys: vec![b("participants:r1")],
            },
        ],
        vec![],
    );
    let r = m.apply(3, &write(0, cascade));
    assert_eq!(
        r.outcome,
        Outcome::Txn {
            succeeded: true,
            outcomes: vec![Outcome::Count(1), Outcome::Count(1)]
        }
    );
    assert!(m.is_empty());
    let at_three = all_events(&m).iter().filter(|e| e.revision == 3).count();
    assert_eq!(
        at_three, 3,
        "field delete, emptied hash delete, participants delete"
    );
}

#[test]
fn compares_see_values_fields_and_revisions() {
    let mut m = Machine::new();
    m.apply(1, &write(0, set("s", "b", None)));
    m.apply(2, &write(0, hset("h", "f", "v", None)));
    let holds = |m: &mut Machine, index, c: Compare| match m
        .apply(index, &write(0, txn(vec![c], vec![], vec![])))
        .outcome
    {
        Outcome::Txn { succeeded, .. } => succeeded,
        other => panic!("{other:?}"),
    };
    assert!(holds(
        &mut m,
        3,
        compare("s", Check::Value(CmpOp::Greater, b("a")))
    ));
    assert!(!holds(
        &mut m,
        4,
        compare("s", Check::Value(CmpOp::Less, b("a")))
    ));
    assert!(holds(
        &mut m,
        5,
        compare("missing", Check::Value(CmpOp::NotEqual, b("a")))
    ));
    assert!(!holds(
        &mut m,
        6,
        compare("missing", Check::Value(CmpOp::Equal, b("")))
    ));
    assert!(holds(
        &mut m,
        7,
        compare("s", Check::Modified(CmpOp::Equal, 1))
    ));
    assert!(holds(
        &mut m,
        8,
        compare("missing", Check::Created(CmpOp::Equal, 0))
    ));
    let field = |f: &str, check| Compare {
        key: b("h"),
        field: Some(b(f)),
        check,
    };
    assert!(holds(
        &mut m,
        9,
        field("f", Check::Value(CmpOp::Equal, b("v")))
    ));
    assert!(holds(&mut m, 10, field("g", Check::Exists(false))));
    assert!(!holds(&mut m, 11, field("f", Check::Exists(false))));
}

#[test]
fn unchanged_since_sees_writes_deletes_and_recreation() {
    let mut m = Machine::new();
    m.apply(1, &write(0, set("k", "1", None)));
    let unchanged = |m: &mut Machine, index, since| match m
        .apply(
            index,
            &write(
                0,
                txn(
                    vec![compare("k", Check::UnchangedSince(since))],
                    vec![],
                    vec![],
                ),
            ),
        )
        .outcome
    {
        Outcome::Txn { succeeded, .. } => succeeded,
        other => panic!("{other:?}"),
    };
    assert!(unchanged(&mut m, 2, 1));
    m.apply(3, &write(0, Command::Delete { keys: vec![b("k")] }));
    assert!(!unchanged(&mut m, 4, 2), "deleted after the watch");
    m.apply(5, &write(0, set("k", "1", None)));
    m.apply(6, &write(0, Command::Delete { keys: vec![b("k")] }));
    // Absent both at the watch (4) and now, but created and deleted in between.
    assert!(!unchanged(&mut m, 7, 4));
    assert!(unchanged(&mut m, 8, 6));
}

#[test]
fn history_keeps_whole_revisions_and_reports_compaction() {
    let mut m = Machine::new();
    let big = "x".repeat(1024 * 1024);
    let mut index = 0;
    // Each entry writes two 1 MiB fields; 32 MiB of history cannot keep them all.
    for round in 0..40 {
        index += 1;
        let r = m.apply(
            index,
            &write(
                0,
                Command::HashSet {
                    key: b("h"),
                    fields: vec![
                        (b(&format!("a{round}")), b(&big)),
                        (b(&format!("b{round}")), b(&big)),
                    ],
                    lease: None,
                },
            ),
        );
        assert_eq!(r.outcome, Outcome::Count(2));
    }
    let history = m.history();
    assert!(history.compacted() > 0);
    let everything = KeyFilter::Key(b("h"));
    let err = history
        .events_after(0, &everything, 10, usize::MAX)
        .unwrap_err();
    assert_eq!(err.compacted, history.compacted());
    let kept = history
        .events_after(history.compacted(), &everything, usize::MAX, usize::MAX)
        .unwrap()
        .events;
    assert_eq!(kept.len() % 2, 0, "never half a revision");
    assert_eq!(kept.first().unwrap().revision, history.compacted() + 1);
    // A limit of one event, or of one byte, still returns the whole of the first revision.
    let by_count = history
        .events_after(history.compacted(), &everything, 1, usize::MAX)
        .unwrap()
        .events;
    assert_eq!(by_count.len(), 2);
    let by_bytes = history
        .events_after(history.compacted(), &everything, usize::MAX, 1)
        .unwrap()
        .events;
    assert_eq!(by_bytes.len(), 2);
}

/// The byte cap counts each event's whole weight (48 bytes of overhead, key, field and value),
/// and the batch names the last revision it covers when it stops there.
#[test]
fn events_after_says_where_it_stopped_at_the_byte_cap() {
    let mut m = Machine::new();
    let value = "v".repeat(100);
    for i in 1..=10u64 {
        m.apply(i, &write(0, hset("h", &format!("f{i:02}"), &value, None)));
    }
    m.apply(11, &write(0, set("other", "x", None)));
    let history = m.history();
    let filter = KeyFilter::Key(b("h"));
    // 48 + "h" + "fNN" + 100 bytes of value.
    let weight = 48 + 1 + 3 + 100;

    let at_cap = history
        .events_after(0, &filter, usize::MAX, 3 * weight)
        .unwrap();
    assert_eq!(at_cap.events.len(), 3);
    assert_eq!(at_cap.stopped_after, Some(3));
    // Keys and values alone are well under the cap: only the weight says the batch is full.
    let payload: usize = at_cap
        .events
        .iter()
        .map(|e| e.key.len() + e.value.len())
        .sum();
    assert!(payload < 3 * weight);

    let past_cap = history
        .events_after(0, &filter, usize::MAX, 3 * weight + 1)
        .unwrap();
    assert_eq!(past_cap.events.len(), 4);
    assert_eq!(past_cap.stopped_after, Some(4));

    // Resuming from where it stopped picks up the next revision.
    let resumed = history
        .events_after(3, &filter, usize::MAX, 3 * weight)
        .unwrap();
    assert_eq!(resumed.events.first().unwrap().revision, 4);

    // Filling up on the last matching event still reports early: a non-matching revision
    // follows, and the batch cannot tell it holds every match.
    let full_at_end = history
        .events_after(7, &filter, usize::MAX, 3 * weight)
        .unwrap();
    assert_eq!(full_at_end.events.len(), 3);
    assert_eq!(full_at_end.stopped_after, Some(10));

    // Under the cap it reaches the end of the history.
    let whole = history
        .events_after(0, &filter, usize::MAX, usize::MAX)
        .unwrap();
    assert_eq!(whole.events.len(), 10);
    assert_eq!(whole.stopped_after, None);
    let by_count = history.events_after(8, &filter, 2, usize::MAX).unwrap();
    assert_eq!(by_count.events.len(), 2);
    assert_eq!(by_count.stopped_after, Some(10));
    let to_end = history.events_after(8, &filter, 3, usize::MAX).unwrap();
    assert_eq!(to_end.events.len(), 2);
    assert_eq!(to_end.stopped_after, None);
}

#[test]
fn events_follow_the_filter() {
    let mut m = Machine::new();
    m.apply(1, &write(0, set("room/1", "a", None)));
    m.apply(2, &write(0, set("room/2", "b", None)));
    m.apply(3, &write(0, set("roomy", "c", None)));
    let prefix = m
        .history()
        .events_after(0, &KeyFilter::Prefix(b("room/")), 100, usize::MAX)
        .unwrap()
        .events;
    assert_eq!(
        prefix.iter().map(|e| e.revision).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let one = m
        .history()
        .events_after(1, &KeyFilter::Key(b("room/2")), 100, usize::MAX)
        .unwrap()
        .events;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].value, b("b"));
}

/// Replicas that apply a log full of leases and transactions, one restored from a snapshot
/// halfway, end equal, history included.
#[test]
fn leases_and_transactions_are_deterministic_across_snapshot_restore() {
    let log: Vec<WriteRequest> = (0..600u64)
        .map(|i| {
            let key = format!("k{}", i % 13);
            let lease = if i > 10 {
                Some(1 + (i % 40) / 8 * 8)
            } else {
                None
            };
            let command = match i % 8 {
                0 => Command::LeaseGrant { ttl_ms: 1000 + i },
                1 => set(&key, "v", lease),
                2 => hset(&format!("h{}", i % 3), &key, "v", lease),
                3 => Command::LeaseKeepAlive {
                    lease: lease.unwrap_or(1),
                },
                4 => Command::LeaseExpire {
                    leases: (0..i).step_by(8).map(|l| l + 1).collect(),
                },
                5 => txn(
                    vec![compare(&key, Check::Exists(true))],
                    vec![Command::Delete {
                        keys: vec![b(&key)],
                    }],
                    vec![hset("h0", &key, "t", None)],
                ),
                6 => Command::LeaseRenewAll,
                _ => Command::LeaseRevoke {
                    lease: lease.unwrap_or(1),
                },
            };
            write(i * 37 % 5000, command)
        })
        .collect();
    let mut a = Machine::new();
    let mut b = Machine::new();
    for (i, req) in log.iter().enumerate() {
        let index = i as u64 + 1;
        let reply = a.apply(index, req);
        assert_eq!(reply, b.apply(index, req));
        if index == 300 {
            b = bincode::deserialize(&bincode::serialize(&b).unwrap()).unwrap();
        }
    }
    assert_eq!(a, b);
    assert!(!a.history().is_empty());
    // Every attachment a lease records points back at it, and nothing points at a lease that is
    // gone.
    for (id, lease) in a.leases() {
        for key in &lease.keys {
            assert_eq!(a.keys[key].lease, Some(id));
        }
        for (key, field) in &lease.fields {
            assert_eq!(a.keys[key].field_leases.get(field), Some(&id));
        }
    }
    for (key, record) in &a.keys {
        if let Some(l) = record.lease {
            assert!(a.lease(l).unwrap().keys.contains(key));
        }
        for (field, l) in &record.field_leases {
            assert!(a
                .lease(*l)
                .unwrap()
                .fields
                .contains(&(key.clone(), field.clone())));
        }
    }
}
