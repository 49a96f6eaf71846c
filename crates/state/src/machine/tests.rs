//! Unit tests of the state machine's transitions.

use super::*;

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

fn set(key: &str, value: &str) -> Command {
    Command::Set {
        key: b(key),
        value: b(value),
        condition: SetCondition::Always,
        expiry: Expiry::Never,
        return_previous: false,
        lease: None,
    }
}

fn set_with(key: &str, value: &str, condition: SetCondition, expiry: Expiry) -> Command {
    Command::Set {
        key: b(key),
        value: b(value),
        condition,
        expiry,
        return_previous: false,
        lease: None,
    }
}

fn string_at(m: &Machine, key: &str, now: Millis) -> Option<Vec<u8>> {
    m.get(key.as_bytes(), now).unwrap().map(|r| match &r.value {
        Value::String(v) => v.to_vec(),
        other => panic!("not a string: {other:?}"),
    })
}

#[test]
fn set_records_create_and_modify_revisions() {
    let mut m = Machine::new();
    m.apply(1, &write(10, set("a", "1")));
    m.apply(2, &write(11, set("a", "2")));
    let r = m.record(b"a", 11).unwrap();
    assert_eq!((r.created, r.modified), (1, 2));
    assert_eq!(m.revision(), 2);
    m.apply(3, &write(12, Command::Delete { keys: vec![b("a")] }));
    m.apply(4, &write(13, set("a", "3")));
    let r = m.record(b"a", 13).unwrap();
    assert_eq!((r.created, r.modified), (4, 4));
}

#[test]
fn nx_and_xx_conditions() {
    let mut m = Machine::new();
    let xx = m.apply(
        1,
        &write(
            1,
            set_with("k", "x", SetCondition::IfPresent, Expiry::Never),
        ),
    );
    assert_eq!(
        xx.outcome,
        Outcome::Set {
            applied: false,
            previous: None
        }
    );
    assert_eq!(string_at(&m, "k", 1), None);
    let nx = m.apply(
        2,
        &write(1, set_with("k", "a", SetCondition::IfAbsent, Expiry::Never)),
    );
    assert_eq!(
        nx.outcome,
        Outcome::Set {
            applied: true,
            previous: None
        }
    );
    let nx2 = m.apply(
        3,
        &write(1, set_with("k", "b", SetCondition::IfAbsent, Expiry::Never)),
    );
    assert_eq!(
        nx2.outcome,
        Outcome::Set {
            applied: false,
            previous: None
        }
    );
    assert_eq!(string_at(&m, "k", 1).unwrap(), b"a");
}

#[test]
fn expired_key_reads_absent_and_nx_succeeds_on_it() {
    let mut m = Machine::new();
    m.apply(
        1,
        &write(
            1000,
            set_with(
                "lock",
                "a",
                SetCondition::IfAbsent,
                Expiry::AfterMillis(500),
            ),
        ),
    );
    assert_eq!(string_at(&m, "lock", 1499).unwrap(), b"a");
    assert_eq!(string_at(&m, "lock", 1500), None, "absent at its deadline");
    // Not yet reaped, but a conditional write at a later stamp treats it as absent.
    let r = m.apply(
        2,
        &write(
            1600,
            set_with("lock", "b", SetCondition::IfAbsent, Expiry::Never),
        ),
    );
    assert_eq!(
        r.outcome,
        Outcome::Set {
            applied: true,
            previous: None
        }
    );
    assert_eq!(m.record(b"lock", 1600).unwrap().created, 2);
}

#[test]
fn stamps_never_go_backwards() {
    let mut m = Machine::new();
    m.apply(
        1,
        &write(
            5000,
            set_with("k", "v", SetCondition::Always, Expiry::AfterMillis(100)),
        ),
    );
    // An entry stamped earlier by a new leader with a slower clock still runs at time 5000+.
    m.apply(2, &write(10, set("other", "v")));
    assert_eq!(m.clock(), 5000);
    let r = m.apply(3, &write(5100, Command::Reap { keys: vec![b("k")] }));
    assert_eq!(r.outcome, Outcome::Count(1));
}

#[test]
fn a_tick_only_advances_the_clock() {
    let mut m = Machine::new();
    m.apply(
        1,
        &write(
            1000,
            set_with("k", "v", SetCondition::Always, Expiry::AfterMillis(500)),
        ),
    );
    let before = m.history().len();
    let r = m.apply(2, &write(1600, Command::Tick));
    assert_eq!(r.outcome, Outcome::None);
    assert_eq!(m.clock(), 1600);
    assert_eq!(m.revision(), 2);
    // Nothing changed: no event, and the expired key waits for its reap.
    assert_eq!(m.history().len(), before);
    assert_eq!(m.len(), 1);
    assert!(m.record(b"k", m.clock()).is_none());
    // An earlier stamp does not move the clock back.
    m.apply(3, &write(1200, Command::Tick));
    assert_eq!(m.clock(), 1600);
}

#[test]
fn reap_removes_only_keys_still_expired() {
    let mut m = Machine::new();
    m.apply(
        1,
        &write(
            0,
            set_with("a", "1", SetCondition::Always, Expiry::AfterMillis(10)),
        ),
    );
    m.apply(
        2,
        &write(
            0,
            set_with("b", "1", SetCondition::Always, Expiry::AfterMillis(10)),
        ),
    );
    assert_eq!(m.expired_keys(10, 100), vec![b"a".to_vec(), b"b".to_vec()]);
    // "b" is rewritten without a TTL before the reap entry lands.
    m.apply(3, &write(11, set("b", "2")));
    let r = m.apply(
        4,
        &write(
            12,
            Command::Reap {
                keys: vec![b("a"), b("b")],
            },
        ),
    );
    assert_eq!(r.outcome, Outcome::Count(1));
    assert!(m.record(b"a", 12).is_none());
    assert_eq!(string_at(&m, "b", 12).unwrap(), b"2");
    assert!(m.expired_keys(u64::MAX, 100).is_empty());
}

#[test]
fn keepttl_keeps_and_plain_set_clears_the_deadline() {
    let mut m = Machine::new();
    m.apply(
        1,
        &write(
            0,
            set_with("k", "1", SetCondition::Always, Expiry::AfterMillis(100)),
        ),
    );
    m.apply(
        2,
        &write(1, set_with("k", "2", SetCondition::Always, Expiry::Keep)),
    );
    assert_eq!(m.record(b"k", 1).unwrap().expires_at, Some(100));
    m.apply(3, &write(2, set("k", "3")));
    assert_eq!(m.record(b"k", 2).unwrap().expires_at, None);
    assert!(m.expired_keys(u64::MAX, 10).is_empty());
}

#[test]
fn retried_write_is_applied_once_and_answered_with_its_original_reply() {
    let mut m = Machine::new();
    let id = Some(RequestId {
        client_id: 7,
        sequence: 1,
    });
    let hset = Command::HashSet {
        key: b("room"),
        fields: vec![(b("p1"), b("x"))],
        lease: None,
    };
    let first = m.apply(
        1,
        &WriteRequest {
            id,
            stamp: 1,
            command: hset.clone(),
        },
    );
    assert_eq!(first.outcome, Outcome::Count(1));
    m.apply(
        2,
        &write(
            2,
            Command::HashDelete {
                key: b("room"),
                fields: vec![b("p1")],
            },
        ),
    );
    let retry = m.apply(
        3,
        &WriteRequest {
            id,
            stamp: 3,
            command: hset,
        },
    );
    assert_eq!(retry, first, "same reply, same revision");
    assert!(
        m.hash(b"room", 3).unwrap().is_none(),
        "not applied a second time"
    );
    assert_eq!(m.revision(), 3);
}

fn with_id(client_id: u64, sequence: u64, command: Command) -> WriteRequest {
    WriteRequest {
        id: Some(RequestId {
            client_id,
            sequence,
        }),
        stamp: 0,
        command,
    }
}

fn set_get(key: &str, value: &str) -> Command {
    Command::Set {
        key: b(key),
        value: b(value),
        condition: SetCondition::Always,
        expiry: Expiry::Never,
        return_previous: true,
        lease: None,
    }
}

#[test]
fn a_batch_applies_its_writes_in_order_and_answers_each_with_its_own_outcome() {
    let mut m = Machine::new();
    let batch = Command::Batch(vec![
        with_id(1, 1, set_get("k", "a")),
        with_id(2, 1, set_get("k", "b")),
        write(
            999,
            Command::IncrBy {
                key: b("k"),
                delta: 1,
            },
        ),
        with_id(3, 1, set_get("k", "c")),
    ]);
    let reply = m.apply(5, &write(40, batch));
    let Outcome::Batch(replies) = reply.outcome else {
        panic!("a batch answered {reply:?}");
    };
    let outcomes: Vec<Outcome> = replies.iter().map(|r| r.outcome.clone()).collect();
    let previous = |v: Option<&str>| Outcome::Set {
        applied: true,
        previous: v.map(b),
    };
    assert_eq!(
        outcomes,
        vec![
            previous(None),
            previous(Some("a")),
            Outcome::NotAnInteger,
            previous(Some("b")),
        ]
    );
    assert!(replies.iter().all(|r| r.revision == 5));
    assert_eq!(string_at(&m, "k", 40).as_deref(), Some(&b"c"[..]));
    assert_eq!(m.clock(), 40, "the entry's stamp, not a write's own");
}

#[test]
fn a_write_retried_in_a_batch_is_applied_once_with_its_first_reply() {
    let mut m = Machine::new();
    let add = |member: &str| Command::SetAdd {
        key: b("room"),
        members: vec![b(member)],
    };
    let first = m.apply(1, &with_id(7, 1, add("alice")));
    m.apply(
        2,
        &write(
            2,
            Command::SetRemove {
                key: b("room"),
                members: vec![b("alice")],
            },
        ),
    );
    // The retry of (7, 1) comes in a batch, twice, beside a new write of the same client.
    let batch = Command::Batch(vec![
        with_id(7, 1, add("alice")),
        with_id(7, 2, add("bob")),
        with_id(7, 1, add("alice")),
    ]);
    let reply = m.apply(3, &write(3, batch));
    let Outcome::Batch(replies) = reply.outcome else {
        panic!("a batch answered {reply:?}");
    };
    assert_eq!(replies[0], first, "same reply, same revision");
    assert_eq!(replies[2], first);
    assert_eq!(
        replies[1],
        WriteReply {
            revision: 3,
            outcome: Outcome::Count(1)
        }
    );
    let members = m.set_members(b"room", 3).unwrap().unwrap();
    assert_eq!(
        members,
        &BTreeSet::from([b("bob")]),
        "alice not added again"
    );
    // And a retry of a batched write on its own, later, gets the batch's reply for it.
    let again = m.apply(4, &with_id(7, 2, add("bob")));
    assert_eq!(again, replies[1]);
}

#[test]
fn dedup_window_is_bounded() {
    let mut m = Machine::new();
    let over = MAX_REPLIES_PER_CLIENT as u64 + 10;
    // Young replies are all kept, however many.
    for seq in 0..over {
        let id = Some(RequestId {
            client_id: 1,
            sequence: seq,
        });
        m.apply(
            seq + 1,
            &WriteRequest {
                id,
                stamp: 1,
                command: set("k", "v"),
            },
        );
    }
    assert_eq!(m.sessions.replies_of(1), over as usize);
    // Once they are older than the minimum age, the cap applies, oldest first.
    let later = MIN_REPLY_AGE_MS + 2;
    let id = Some(RequestId {
        client_id: 1,
        sequence: over,
    });
    m.apply(
        over + 1,
        &WriteRequest {
            id,
            stamp: later,
            command: set("k", "v"),
        },
    );
    assert_eq!(m.sessions.replies_of(1), MAX_REPLIES_PER_CLIENT);
    let remembered = |sequence| {
        m.sessions
            .reply(RequestId {
                client_id: 1,
                sequence,
            })
            .is_some()
    };
    assert!(
        !remembered(10) && remembered(11),
        "the oldest are forgotten"
    );
    // Idle clients are forgotten once the window has passed.
    let much_later = DEDUP_WINDOW_MS + MIN_REPLY_AGE_MS + 10;
    let mut index = m.revision();
    while index % 1024 != 1023 {
        index += 1;
    }
    m.apply(index + 1, &write(much_later, set("x", "y")));
    assert_eq!(m.sessions.clients(), 0);
}

#[test]
fn wrong_type_is_a_reply_not_a_failure() {
    let mut m = Machine::new();
    m.apply(1, &write(0, set("s", "v")));
    let r = m.apply(
        2,
        &write(
            0,
            Command::SetAdd {
                key: b("s"),
                members: vec![b("m")],
            },
        ),
    );
    assert_eq!(r.outcome, Outcome::WrongType);
    assert_eq!(m.hash(b"s", 0), Err(ReadError));
    assert_eq!(string_at(&m, "s", 0).unwrap(), b"v");
    let r = m.apply(
        3,
        &write(
            0,
            Command::HashSet {
                key: b("s"),
                fields: vec![(b("f"), b("v"))],
                lease: None,
            },
        ),
    );
    assert_eq!(r.outcome, Outcome::WrongType);
}

#[test]
fn emptied_collections_are_deleted() {
    let mut m = Machine::new();
    m.apply(
        1,
        &write(
            0,
            Command::SetAdd {
                key: b("s"),
                members: vec![b("a"), b("b"), b("a")],
            },
        ),
    );
    assert_eq!(m.set_members(b"s", 0).unwrap().unwrap().len(), 2);
    let r = m.apply(
        2,
        &write(
            0,
            Command::SetRemove {
                key: b("s"),
                members: vec![b("a"), b("b"), b("c")],
            },
        ),
    );
    assert_eq!(r.outcome, Outcome::Count(2));
    assert!(m.record(b"s", 0).is_none());
    m.apply(
        3,
        &write(
            0,
            Command::HashSet {
                key: b("h"),
                fields: vec![(b("f"), b("1"))],
                lease: None,
            },
        ),
    );
    m.apply(
        4,
        &write(
            0,
            Command::HashDelete {
                key: b("h"),
                fields: vec![b("f")],
            },
        ),
    );
    assert!(m.is_empty());
}

#[test]
fn binary_keys_and_values_round_trip() {
    let mut m = Machine::new();
    let key = vec![0u8, 255, 10, 13, 0];
    let value = (0..=255u8).collect::<Vec<_>>();
    m.apply(
        1,
        &write(
            0,
            Command::Set {
                key: Bytes::from(key.clone()),
                value: Bytes::from(value.clone()),
                condition: SetCondition::Always,
                expiry: Expiry::Never,
                return_previous: false,
                lease: None,
            },
        ),
    );
    assert_eq!(
        m.record(&key, 0).unwrap().value,
        Value::String(Bytes::from(value))
    );
}

#[test]
fn prefix_scan_skips_expired_keys() {
    let mut m = Machine::new();
    m.apply(1, &write(0, set("room/1", "a")));
    m.apply(
        2,
        &write(
            0,
            set_with("room/2", "b", SetCondition::Always, Expiry::AfterMillis(5)),
        ),
    );
    m.apply(3, &write(0, set("rooms", "c")));
    m.apply(4, &write(0, set("roon", "d")));
    let keys: Vec<_> = m
        .keys_with_prefix(b"room/", 10)
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(keys, vec![b"room/1".to_vec()]);
}

/// Replicas that apply the same log, one of them restored from a snapshot halfway, end equal.
#[test]
fn replicas_are_deterministic_across_snapshot_restore() {
    let log: Vec<WriteRequest> = (0..500u64)
        .map(|i| {
            let key = format!("k{}", i % 37);
            let command = match i % 5 {
                0 => set_with(
                    &key,
                    "v",
                    SetCondition::IfAbsent,
                    Expiry::AfterMillis(i % 50),
                ),
                1 => Command::HashSet {
                    key: b(&format!("h{}", i % 7)),
                    fields: vec![(b(&key), Bytes::from(vec![i as u8]))],
                    lease: None,
                },
                2 => Command::SetAdd {
                    key: b(&format!("s{}", i % 3)),
                    members: vec![b(&key)],
                },
                3 => Command::Reap {
                    keys: vec![b(&key)],
                },
                _ => Command::Delete {
                    keys: vec![b(&key)],
                },
            };
            WriteRequest {
                id: Some(RequestId {
                    client_id: i % 4,
                    sequence: i,
                }),
                stamp: i * 3 % 1000,
                command,
            }
        })
        .collect();
    let mut a = Machine::new();
    let mut b = Machine::new();
    for (i, req) in log.iter().enumerate() {
        let index = i as u64 + 1;
        let ra = a.apply(index, req);
        let rb = b.apply(index, req);
        assert_eq!(ra, rb);
        if index == 250 {
            let bytes = bincode::serialize(&b).unwrap();
            b = bincode::deserialize(&bytes).unwrap();
        }
    }
    assert_eq!(a, b);
}

#[test]
fn a_retry_after_the_dedup_window_is_applied_again() {
    let mut m = Machine::new();
    let old = Some(RequestId {
        client_id: 3,
        sequence: 1,
    });
    let add = Command::SetAdd {
        key: b("s"),
        members: vec![b("a")],
    };
    m.apply(
        1,
        &WriteRequest {
            id: old,
            stamp: 0,
            command: add.clone(),
        },
    );
    m.apply(2, &write(1, Command::Delete { keys: vec![b("s")] }));
    // A later write of the same client moves the window past the first reply.
    let next = Some(RequestId {
        client_id: 3,
        sequence: 2,
    });
    m.apply(
        3,
        &WriteRequest {
            id: next,
            stamp: DEDUP_WINDOW_MS + 1,
            command: set("x", "y"),
        },
    );
    assert_eq!(m.sessions.replies_of(3), 1, "the old reply is forgotten");
    let retry = m.apply(
        4,
        &WriteRequest {
            id: old,
            stamp: DEDUP_WINDOW_MS + 2,
            command: add,
        },
    );
    assert_eq!(retry.revision, 4, "applied anew");
    assert_eq!(
        m.set_members(b"s", DEDUP_WINDOW_MS + 2)
            .unwrap()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_membership_without_a_node_forgets_its_incarnation() {
    let mut m = Machine::new();
    let r = m.apply(
        1,
        &write(
            0,
            Command::RegisterNode {
                node: 2,
                incarnation: 77,
            },
        ),
    );
    assert_eq!(r.outcome, Outcome::Count(1));
    let again = m.apply(
        2,
        &write(
            0,
            Command::RegisterNode {
                node: 2,
                incarnation: 77,
            },
        ),
    );
    assert_eq!(again.outcome, Outcome::Count(0));
    assert_eq!(m.incarnation(2), Some(77));
    let restored: Machine = bincode::deserialize(&bincode::serialize(&m).unwrap()).unwrap();
    assert_eq!(restored.incarnation(2), Some(77));
    m.apply(
        3,
        &write(
            0,
            Command::RegisterNode {
                node: 3,
                incarnation: 78,
            },
        ),
    );
    m.apply_membership(4, &BTreeSet::from([1, 2, 3]));
    assert_eq!((m.incarnation(2), m.incarnation(3)), (Some(77), Some(78)));
    m.apply_membership(5, &BTreeSet::from([1, 3]));
    assert_eq!((m.incarnation(2), m.incarnation(3)), (None, Some(78)));
    assert_eq!(m.revision(), 5);
    // Logs written before membership entries did this still replay the same.
    m.apply(6, &write(0, Command::ForgetNode { node: 3 }));
    assert_eq!(m.incarnation(3), None);
    assert!(m.is_empty(), "registrations are not keys");
}
