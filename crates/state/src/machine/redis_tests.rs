//! Unit tests of the commands the Redis front end needs: counters, APPEND, HSETNX, EXPIRE and
//! PERSIST, and reads through [`Query`], alone and inside transactions.

use super::*;
use crate::{Answer, Check, Compare, ExpireCondition, Limits, Query, Transaction};

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

fn set(key: &str, value: &str, expiry: Expiry) -> Command {
    Command::Set {
        key: b(key),
        value: b(value),
        condition: SetCondition::Always,
        expiry,
        return_previous: false,
        lease: None,
    }
}

fn incr(key: &str, delta: i64) -> Command {
    Command::IncrBy { key: b(key), delta }
}

fn expire(key: &str, expiry: Expiry, condition: ExpireCondition) -> Command {
    Command::Expire {
        key: b(key),
        expiry,
        condition,
    }
}

fn query(m: &Machine, q: Query, now: Millis) -> Answer {
    m.query(&q, now).unwrap()
}

#[test]
fn counters_start_at_zero_keep_the_ttl_and_refuse_non_integers() {
    let mut m = Machine::new();
    assert_eq!(
        m.apply(1, &write(10, incr("c", 5))).outcome,
        Outcome::Integer(5)
    );
    assert_eq!(
        m.apply(2, &write(11, incr("c", -7))).outcome,
        Outcome::Integer(-2)
    );
    m.apply(3, &write(12, set("t", "10", Expiry::AfterMillis(1000))));
    assert_eq!(
        m.apply(4, &write(13, incr("t", 1))).outcome,
        Outcome::Integer(11)
    );
    assert_eq!(m.record(b"t", 13).unwrap().expires_at, Some(1012));
    m.apply(5, &write(14, set("s", "abc", Expiry::Never)));
    assert_eq!(
        m.apply(6, &write(15, incr("s", 1))).outcome,
        Outcome::NotAnInteger
    );
    m.apply(
        7,
        &write(16, set("max", &i64::MAX.to_string(), Expiry::Never)),
    );
    assert_eq!(
        m.apply(8, &write(17, incr("max", 1))).outcome,
        Outcome::Overflow
    );
    assert_eq!(
        query(&m, Query::Get { key: b("max") }, 17),
        Answer::Bytes(b(&i64::MAX.to_string()))
    );
    m.apply(
        9,
        &write(
            18,
            Command::SetAdd {
                key: b("set"),
                members: vec![b("x")],
            },
        ),
    );
    assert_eq!(
        m.apply(10, &write(19, incr("set", 1))).outcome,
        Outcome::WrongType
    );
}

#[test]
fn hash_counters_and_set_if_absent() {
    let mut m = Machine::new();
    let hincr = |delta| Command::HashIncrBy {
        key: b("h"),
        field: b("n"),
        delta,
    };
    assert_eq!(m.apply(1, &write(1, hincr(3))).outcome, Outcome::Integer(3));
    assert_eq!(m.apply(2, &write(2, hincr(4))).outcome, Outcome::Integer(7));
    let hsetnx = |field: &str, value: &str| Command::HashSetIfAbsent {
        key: b("h"),
        field: b(field),
        value: b(value),
    };
    assert_eq!(
        m.apply(3, &write(3, hsetnx("n", "x"))).outcome,
        Outcome::Count(0)
    );
    assert_eq!(
        m.apply(4, &write(4, hsetnx("f", "x"))).outcome,
        Outcome::Count(1)
    );
    assert_eq!(
        query(
            &m,
            Query::HashGet {
                key: b("h"),
                fields: vec![b("n"), b("f"), b("none")]
            },
            4
        ),
        Answer::Array(vec![
            Answer::Bytes(b("7")),
            Answer::Bytes(b("x")),
            Answer::Nil
        ])
    );
    let hincr_f = Command::HashIncrBy {
        key: b("h"),
        field: b("f"),
        delta: 1,
    };
    assert_eq!(
        m.apply(5, &write(5, hincr_f)).outcome,
        Outcome::NotAnInteger
    );
}

#[test]
fn append_creates_extends_and_is_bounded() {
    let mut m = Machine::new();
    let append = |value: &[u8]| Command::Append {
        key: b("a"),
        value: Bytes::from(value.to_vec()),
    };
    assert_eq!(
        m.apply(1, &write(1, append(b"ab"))).outcome,
        Outcome::Integer(2)
    );
    assert_eq!(
        m.apply(2, &write(2, append(b"\0c"))).outcome,
        Outcome::Integer(4)
    );
    assert_eq!(
        query(&m, Query::StrLen { key: b("a") }, 2),
        Answer::Integer(4)
    );
    let big = vec![b'x'; Limits::DEFAULT.max_value_bytes];
    assert_eq!(
        m.apply(3, &write(3, append(&big))).outcome,
        Outcome::TooLarge
    );
    assert_eq!(
        query(&m, Query::Get { key: b("a") }, 3),
        Answer::Bytes(Bytes::from(b"ab\0c".to_vec()))
    );
}

#[test]
fn expire_persist_and_their_conditions() {
    let mut m = Machine::new();
    let ttl = |m: &Machine, now| query(m, Query::TimeToLive { key: b("k") }, now);
    assert_eq!(
        m.apply(
            1,
            &write(
                100,
                expire("k", Expiry::AfterMillis(50), ExpireCondition::Always)
            )
        )
        .outcome,
        Outcome::Count(0),
        "an absent key has no TTL to set"
    );
    m.apply(
        2,
        &write(
            100,
            Command::HashSet {
                key: b("k"),
                fields: vec![(b("f"), b("v"))],
                lease: None,
            },
        ),
    );
    assert_eq!(ttl(&m, 100), Answer::Integer(-1));
    let nx = expire("k", Expiry::AfterMillis(500), ExpireCondition::NoTtl);
    assert_eq!(
        m.apply(3, &write(100, nx.clone())).outcome,
        Outcome::Count(1)
    );
    assert_eq!(ttl(&m, 150), Answer::Integer(450));
    assert_eq!(m.apply(4, &write(150, nx)).outcome, Outcome::Count(0));
    let gt = expire("k", Expiry::AfterMillis(100), ExpireCondition::Later);
    assert_eq!(m.apply(5, &write(150, gt)).outcome, Outcome::Count(0));
    let lt = expire("k", Expiry::AfterMillis(100), ExpireCondition::Earlier);
    assert_eq!(m.apply(6, &write(150, lt)).outcome, Outcome::Count(1));
    assert_eq!(
        m.expired_keys(250, 10),
        vec![b("k")],
        "the deadline index follows the TTL"
    );
    assert!(m.expired_keys(249, 10).is_empty());
    // PERSIST.
    assert_eq!(
        m.apply(
            7,
            &write(160, expire("k", Expiry::Never, ExpireCondition::Always))
        )
        .outcome,
        Outcome::Count(1)
    );
    assert_eq!(ttl(&m, 10_000), Answer::Integer(-1));
    assert!(m.expired_keys(u64::MAX, 10).is_empty());
    assert_eq!(
        m.apply(
            8,
            &write(160, expire("k", Expiry::Never, ExpireCondition::Always))
        )
        .outcome,
        Outcome::Count(0)
    );
    // A deadline in the past deletes the key.
    assert_eq!(
        m.apply(
            9,
            &write(
                170,
                expire("k", Expiry::AtMillis(1), ExpireCondition::Always)
            )
        )
        .outcome,
        Outcome::Count(1)
    );
    assert_eq!(ttl(&m, 170), Answer::Integer(-2));
    assert!(m.record(b"k", 170).is_none());
}

#[test]
fn expire_counts_as_a_change_for_watch() {
    let mut m = Machine::new();
    m.apply(1, &write(100, set("k", "v", Expiry::Never)));
    m.apply(
        2,
        &write(
            100,
            expire("k", Expiry::AfterMillis(10_000), ExpireCondition::Always),
        ),
    );
    let watched = Command::Txn(Box::new(Transaction {
        compares: vec![Compare {
            key: b("k"),
            field: None,
            check: Check::UnchangedSince(1),
        }],
        success: vec![set("k", "mine", Expiry::Never)],
        failure: vec![],
    }));
    match m.apply(3, &write(100, watched)).outcome {
        Outcome::Txn { succeeded, .. } => assert!(!succeeded, "EXPIRE after WATCH must abort EXEC"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn reads_inside_a_transaction_see_the_writes_before_them() {
    let mut m = Machine::new();
    m.apply(1, &write(1, set("s", "old", Expiry::Never)));
    let txn = Command::Txn(Box::new(Transaction {
        compares: vec![],
        success: vec![
            Command::Query(Query::Get { key: b("s") }),
            set("s", "new", Expiry::Never),
            Command::Query(Query::Get { key: b("s") }),
            Command::Query(Query::HashGetAll { key: b("s") }),
            incr("n", 2),
            Command::Query(Query::Type { key: b("n") }),
        ],
        failure: vec![],
    }));
    let Outcome::Txn {
        succeeded: true,
        outcomes,
    } = m.apply(2, &write(2, txn)).outcome
    else {
        panic!("the transaction has no comparisons");
    };
    assert_eq!(
        outcomes,
        vec![
            Outcome::Answer(Answer::Bytes(b("old"))),
            Outcome::Set {
                applied: true,
                previous: None
            },
            Outcome::Answer(Answer::Bytes(b("new"))),
            Outcome::WrongType,
            Outcome::Integer(2),
            Outcome::Answer(Answer::Status("string".into())),
        ]
    );
}

#[test]
fn queries_answer_like_redis() {
    let mut m = Machine::new();
    m.apply(1, &write(1, set("s", "v", Expiry::AfterMillis(1500))));
    m.apply(
        2,
        &write(
            1,
            Command::HashSet {
                key: b("h"),
                fields: vec![(b("b"), b("2")), (b("a"), b("1"))],
                lease: None,
            },
        ),
    );
    m.apply(
        3,
        &write(
            1,
            Command::SetAdd {
                key: b("set"),
                members: vec![b("y"), b("x")],
            },
        ),
    );
    let q = |q| query(&m, q, 2);
    assert_eq!(
        q(Query::MultiGet {
            keys: vec![b("s"), b("h"), b("none")]
        }),
        Answer::Array(vec![Answer::Bytes(b("v")), Answer::Nil, Answer::Nil])
    );
    assert_eq!(
        q(Query::Exists {
            keys: vec![b("s"), b("s"), b("none")]
        }),
        Answer::Integer(2)
    );
    assert_eq!(q(Query::TimeToLive { key: b("s") }), Answer::Integer(1499));
    assert_eq!(
        q(Query::Type { key: b("set") }),
        Answer::Status("set".into())
    );
    assert_eq!(
        q(Query::Type { key: b("none") }),
        Answer::Status("none".into())
    );
    assert_eq!(
        q(Query::HashGetAll { key: b("h") }),
        Answer::Array(vec![
            Answer::Bytes(b("a")),
            Answer::Bytes(b("1")),
            Answer::Bytes(b("b")),
            Answer::Bytes(b("2"))
        ])
    );
    assert_eq!(
        q(Query::HashKeys { key: b("h") }),
        Answer::Array(vec![Answer::Bytes(b("a")), Answer::Bytes(b("b"))])
    );
    assert_eq!(
        q(Query::HashValues { key: b("none") }),
        Answer::Array(vec![])
    );
    assert_eq!(q(Query::HashLen { key: b("h") }), Answer::Integer(2));
    assert_eq!(
        q(Query::HashExists {
            key: b("h"),
            field: b("z")
        }),
        Answer::Integer(0)
    );
    assert_eq!(q(Query::SetCard { key: b("set") }), Answer::Integer(2));
    assert_eq!(
        q(Query::SetIsMember {
            key: b("set"),
            member: b("x")
        }),
        Answer::Integer(1)
    );
    assert_eq!(
        m.query(&Query::SetMembers { key: b("h") }, 2),
        Err(ReadError)
    );
    assert_eq!(m.query(&Query::Get { key: b("h") }, 2), Err(ReadError));
    assert_eq!(
        query(&m, Query::Get { key: b("s") }, 1501),
        Answer::Nil,
        "expired at the reader's clock"
    );
}

#[test]
fn delete_of_duplicate_keys_counts_each_key_once() {
    let mut m = Machine::new();
    m.apply(1, &write(100, set("k", "v", Expiry::Never)));
    m.apply(2, &write(100, set("j", "v", Expiry::Never)));
    let delete = Command::Delete {
        keys: vec![b("k"), b("k"), b("j"), b("absent"), b("j")],
    };
    assert_eq!(m.apply(3, &write(100, delete)).outcome, Outcome::Count(2));
    assert!(m.record(b"k", 100).is_none());
    assert!(m.record(b"j", 100).is_none());

    m.apply(4, &write(100, set("t", "v", Expiry::AfterMillis(10))));
    let reap = Command::Reap {
        keys: vec![b("t"), b("t")],
    };
    assert_eq!(m.apply(5, &write(200, reap)).outcome, Outcome::Count(1));
}
