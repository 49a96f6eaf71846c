//! Unit tests of the de-duplication table's memory bounds: large replies are remembered as
//! applied without their values, and the values kept over all clients stay within a budget.

use super::*;
use crate::{Query, Transaction};

fn b(text: &str) -> Bytes {
    Bytes::from(text.as_bytes().to_vec())
}

fn id(client_id: u64, sequence: u64) -> Option<RequestId> {
    Some(RequestId {
        client_id,
        sequence,
    })
}

/// A `SET key value GET`.
fn set_get(key: &str, value: Vec<u8>) -> Command {
    Command::Set {
        key: b(key),
        value: Bytes::from(value),
        condition: SetCondition::Always,
        expiry: Expiry::Never,
        return_previous: true,
        lease: None,
    }
}

fn request(id: Option<RequestId>, stamp: Millis, command: Command) -> WriteRequest {
    WriteRequest { id, stamp, command }
}

fn previous_len(reply: &WriteReply) -> Option<usize> {
    match &reply.outcome {
        Outcome::Set { previous, .. } => previous.as_ref().map(|p| p.len()),
        other => panic!("not a SET reply: {other:?}"),
    }
}

#[test]
fn a_reply_too_large_to_keep_is_remembered_as_applied() {
    let mut m = Machine::new();
    let large = MAX_KEPT_REPLY_BYTES + 1;
    m.apply(1, &request(None, 1, set_get("k", vec![b'a'; large])));
    let first = m.apply(2, &request(id(5, 1), 2, set_get("k", b"x".to_vec())));
    assert_eq!(
        previous_len(&first),
        Some(large),
        "the first answer is whole"
    );
    assert_eq!(m.kept_reply_bytes(), 0, "but it is not kept");
    m.apply(3, &request(None, 3, set_get("k", b"y".to_vec())));

    let retry = m.apply(4, &request(id(5, 1), 4, set_get("k", b"x".to_vec())));
    assert_eq!(retry.outcome, Outcome::Forgotten);
    assert_eq!(
        retry.revision, 2,
        "the retry names the revision it was applied at"
    );
    let value = m.get(b"k", 4).unwrap().unwrap().value.clone();
    assert_eq!(
        value,
        Value::String(b("y")),
        "the retry was not applied again"
    );

    // A reply at the limit is kept whole.
    m.apply(
        5,
        &request(None, 5, set_get("k", vec![b'b'; MAX_KEPT_REPLY_BYTES])),
    );
    let kept = m.apply(6, &request(id(5, 2), 6, set_get("k", b"z".to_vec())));
    assert_eq!(m.kept_reply_bytes(), MAX_KEPT_REPLY_BYTES);
    let retry = m.apply(7, &request(id(5, 2), 7, set_get("k", b"z".to_vec())));
    assert_eq!(retry, kept);
}

#[test]
fn transaction_reads_count_against_the_reply_limit() {
    let mut m = Machine::new();
    let half = MAX_KEPT_REPLY_BYTES / 2 + 1;
    m.apply(1, &request(None, 1, set_get("a", vec![b'a'; half])));
    m.apply(2, &request(None, 2, set_get("b", vec![b'b'; half])));
    let exec = Command::Txn(Box::new(Transaction {
        compares: vec![],
        success: vec![Command::Query(Query::MultiGet {
            keys: vec![b("a"), b("b")],
        })],
        failure: vec![],
    }));
    let first = m.apply(3, &request(id(9, 1), 3, exec.clone()));
    assert!(first.outcome.reply_bytes() > MAX_KEPT_REPLY_BYTES);
    let retry = m.apply(4, &request(id(9, 1), 4, exec));
    assert_eq!(retry.outcome, Outcome::Forgotten);
    assert_eq!(retry.revision, 3);
}

#[test]
fn values_kept_over_all_clients_stay_within_the_budget() {
    let mut m = Machine::new();
    let value = MAX_KEPT_REPLY_BYTES - 100;
    let writes = 2 * (MAX_KEPT_REPLIES_BYTES / value) as u64;
    let mut replies = Vec::new();
    for n in 0..writes {
        // Each write answers with the value the one before it wrote, from two clients in turn.
        let index = n + 1;
        let command = set_get("k", vec![b'v'; value]);
        replies.push(m.apply(index, &request(id(n % 2, n), index, command)));
        assert!(m.kept_reply_bytes() <= MAX_KEPT_REPLIES_BYTES);
    }
    assert!(m.kept_reply_bytes() > MAX_KEPT_REPLIES_BYTES - value);

    // The oldest replies are reduced, the newest kept whole; every retry is answered without
    // applying the write again.
    let mut index = writes;
    let mut retry = |m: &mut Machine, n: u64| {
        index += 1;
        m.apply(
            index,
            &request(id(n % 2, n), index, set_get("k", vec![b'v'; value])),
        )
    };
    let oldest = retry(&mut m, 1);
    assert_eq!(oldest, replies[1].forgotten());
    let newest = retry(&mut m, writes - 1);
    assert_eq!(newest, replies[writes as usize - 1]);
    assert_eq!(m.revision(), writes + 2);
    let loaded: Machine = bincode::deserialize(&bincode::serialize(&m).unwrap()).unwrap();
    assert_eq!(loaded.kept_reply_bytes(), m.kept_reply_bytes());

    // Idle clients take their values with them.
    let mut index = m.revision();
    while !(index + 1).is_multiple_of(SESSION_SWEEP_EVERY) {
        index += 1;
    }
    let late = writes + DEDUP_WINDOW_MS + 1;
    m.apply(index + 1, &request(None, late, set_get("k", b"x".to_vec())));
    assert_eq!(m.kept_reply_bytes(), 0);
}

#[test]
fn a_loaded_snapshot_bounds_replies_as_the_replica_that_wrote_it() {
    let log: Vec<WriteRequest> = (0..600u64)
        .map(|n| {
            let value = 1000 + (n as usize * 7919) % (MAX_KEPT_REPLY_BYTES + 5000);
            let key = format!("k{}", n % 5);
            request(id(n % 3, n / 2), n, set_get(&key, vec![b'v'; value]))
        })
        .collect();
    let mut a = Machine::new();
    let mut b = Machine::new();
    for (i, req) in log.iter().enumerate() {
        let index = i as u64 + 1;
        assert_eq!(a.apply(index, req), b.apply(index, req), "at {index}");
        if index.is_multiple_of(150) {
            b = bincode::deserialize(&bincode::serialize(&b).unwrap()).unwrap();
            assert_eq!(a, b, "the derived index is rebuilt as it was, at {index}");
        }
    }
    assert_eq!(a, b);
    assert!(a.kept_reply_bytes() <= MAX_KEPT_REPLIES_BYTES);
}

#[test]
fn replies_without_values_never_count_against_the_budget() {
    let mut m = Machine::new();
    // A batch of plain SETs, as a RESP pipeline sends them: one transaction of many commands.
    let sets = Command::Txn(Box::new(Transaction {
        compares: vec![],
        success: (0..256)
            .map(|i| Command::Set {
                key: b(&format!("k{i}")),
                value: b("v"),
                condition: SetCondition::Always,
                expiry: Expiry::Never,
                return_previous: false,
                lease: None,
            })
            .collect(),
        failure: vec![],
    }));
    let writes = 2 * MAX_KEPT_REPLIES_BYTES as u64 / (256 * 32);
    let mut first = None;
    for n in 0..writes {
        let reply = m.apply(n + 1, &request(id(1, n), n + 1, sets.clone()));
        first.get_or_insert(reply);
    }
    assert_eq!(m.kept_reply_bytes(), 0);
    let retry = m.apply(writes + 1, &request(id(1, 0), writes + 1, sets));
    assert_eq!(Some(retry), first, "the oldest batch's reply, whole");
}
