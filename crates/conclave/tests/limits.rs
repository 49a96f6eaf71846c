//! The size limits at the edges of what they allow: a command as large as the command limit
//! goes through either protocol, through a follower, replicates to every node and leaves the
//! cluster writing; one byte over is refused with the documented error.

mod common;

use std::time::{Duration, Instant};

use common::resp::{Frame, RespConnection};
use common::{serial, Cluster};
use conclave_client::v1;
use tonic::Code;

const MIB: usize = 1024 * 1024;

/// `count` values of `size` bytes, each a different byte, for one MSET or HSET.
fn values(count: usize, size: usize) -> Vec<Vec<u8>> {
    (0..count).map(|i| vec![b'a' + i as u8; size]).collect()
}

/// `count` hash fields named `prefix0`, `prefix1`... with values of `size` bytes.
fn hash_fields(prefix: &str, count: usize, size: usize) -> Vec<v1::HashField> {
    values(count, size)
        .into_iter()
        .enumerate()
        .map(|(i, value)| v1::HashField {
            field: format!("{prefix}{i}").into_bytes(),
            value,
        })
        .collect()
}

/// 17 values of 1 MiB less a little: over the 16 MiB command limit together.
fn super_values() -> Vec<Vec<u8>> {
    values(17, MIB - 64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_at_the_command_limit_replicates_and_the_cluster_keeps_writing() {
    let _serial = serial().await;
    let cluster = Cluster::start_with_resp(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let term = cluster.status(leader).await.unwrap().term;

    // 15 values of 1 MiB less a little, 15 MiB in all: one log entry, sent to each follower
    // in one AppendEntries, far longer to move than a heartbeat interval.
    let mut connection = RespConnection::connect(&cluster.resp(follower));
    let values = values(15, MIB - 64);
    let keys: Vec<String> = (0..values.len()).map(|i| format!("big{i}")).collect();
    let mut mset: Vec<&[u8]> = vec![b"MSET"];
    for (key, value) in keys.iter().zip(&values) {
        mset.push(key.as_bytes());
        mset.push(value);
    }
    let started = Instant::now();
    assert_eq!(
        connection.call(&mset),
        Frame::status("OK"),
        "{}",
        cluster.logs()
    );
    let took = started.elapsed();

    // Writes go on, through every node.
    for id in 1..=3 {
        let mut small = RespConnection::connect(&cluster.resp(id));
        for i in 0..5 {
            assert_eq!(
                small.cmd(&format!("SET after{id}.{i} v")),
                Frame::status("OK"),
                "a write after the large one (it took {took:?})"
            );
        }
    }
    // Every node holds the large values.
    let revision = cluster.status(leader).await.unwrap().applied;
    for id in 1..=3 {
        cluster
            .wait_applied(id, revision, Duration::from_secs(20))
            .await;
        let mut reader = RespConnection::connect(&cluster.resp(id));
        assert_eq!(
            reader.call(&[b"GET", keys[14].as_bytes()]),
            Frame::Bulk(values[14].clone()),
            "node {id}"
        );
    }
    // And the leader never lost its place over it.
    let after = cluster.status(leader).await.unwrap();
    assert_eq!(
        (after.leader, after.term),
        (Some(leader), term),
        "{}",
        cluster.logs()
    );

    // 17 such values in one MSET: over the command limit, refused, nothing applied.
    let over_values = super_values();
    let over_keys: Vec<String> = (0..over_values.len()).map(|i| format!("over{i}")).collect();
    let mut over: Vec<&[u8]> = vec![b"MSET"];
    for (key, value) in over_keys.iter().zip(&over_values) {
        over.push(key.as_bytes());
        over.push(value);
    }
    let reply = connection.call(&over);
    assert!(
        reply.error_text().contains("16777216"),
        "an MSET over 16 MiB: {reply:?}"
    );
    assert_eq!(connection.cmd("EXISTS over0"), Frame::Integer(0));
    assert_eq!(connection.cmd("PING"), Frame::status("PONG"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_request_within_the_command_limit_is_never_cut_off_by_the_transport() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let client = cluster.client(follower).await;
    let mut kv = client.kv();

    // 6 MiB: more than gRPC's default 4 MiB message limit, within the 16 MiB command limit.
    let fields = hash_fields("f", 6, MIB - 64);
    kv.h_set(v1::HSetRequest {
        key: b"room".to_vec(),
        fields: fields.clone(),
        write: None,
        lease: 0,
    })
    .await
    .expect("a 6 MiB HSET through a follower");
    let all = kv
        .h_get_all(v1::KeyReadRequest {
            key: b"room".to_vec(),
            read: None,
        })
        .await
        .expect("its 6 MiB read back")
        .into_inner();
    assert_eq!(all.fields.len(), 6);

    // 16 fields of 1 MiB and their names: just over the command limit, refused by the node
    // with the limit named (not cut off by the transport).
    let fields = hash_fields("g", 16, MIB);
    let status = kv
        .h_set(v1::HSetRequest {
            key: b"room2".to_vec(),
            fields,
            write: None,
            lease: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("16777216"),
        "{}",
        status.message()
    );
    client.set("still", "serving").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_whose_first_reply_was_too_large_to_keep_is_refused_as_applied() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let client = cluster.client(follower).await;
    let mut kv = client.kv();
    let set_get = |value: Vec<u8>, write: Option<v1::WriteOptions>| v1::SetRequest {
        key: b"k".to_vec(),
        value,
        return_previous: true,
        write,
        ..Default::default()
    };
    let id = |sequence| {
        Some(v1::WriteOptions {
            client_id: 77,
            sequence,
            min_revision: 0,
        })
    };
    let large = conclave_state::MAX_KEPT_REPLY_BYTES + 1;

    // A small reply is kept: the retry gets it again, nothing applied twice.
    kv.set(set_get(b"small".to_vec(), None)).await.unwrap();
    let first = kv.set(set_get(vec![b'a'; large], id(1))).await.unwrap();
    let retry = kv.set(set_get(vec![b'a'; large], id(1))).await.unwrap();
    assert_eq!(retry.get_ref(), first.get_ref(), "the first reply, again");

    // A SET ... GET that answers with more than the limit: its retry is refused with an error
    // that says it was applied, and at which revision; the write is not applied again.
    let first = kv
        .set(set_get(b"x".to_vec(), id(2)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.previous.map(|p| p.len()), Some(large));
    client.set("k", "later").await.unwrap();
    let status = kv
        .set(set_get(b"x".to_vec(), id(2)))
        .await
        .expect_err("a retry of a write whose reply was not kept");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let revision = first.header.unwrap().revision;
    assert!(
        status.message().contains("applied once before")
            && status.message().contains(&format!("revision {revision}")),
        "{}",
        status.message()
    );
    assert_eq!(
        client.get("k").await.unwrap().as_deref(),
        Some(&b"later"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_size_limit_is_answered_with_the_limit_named_over_both_protocols() {
    let _serial = serial().await;
    let cluster = Cluster::start_with_resp(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let mut connection = RespConnection::connect(&cluster.resp(follower));
    let refused = |reply: Frame, expected: &str| {
        assert!(
            reply.error_text().starts_with("ERR") && reply.error_text().contains(expected),
            "expected an ERR naming {expected:?}, got {reply:?}"
        );
    };

    let key = vec![b'k'; 64 * 1024 + 1];
    refused(
        connection.call(&[b"SET", &key, b"v"]),
        "key is 65537 bytes; the limit is 65536",
    );
    let value = vec![b'v'; MIB + 1];
    refused(
        connection.call(&[b"SET", b"k", &value]),
        "value is 1048577 bytes; the limit is 1048576",
    );
    let members: Vec<Vec<u8>> = (0..10_001).map(|i| format!("m{i}").into_bytes()).collect();
    let mut sadd: Vec<&[u8]> = vec![b"SADD", b"set"];
    sadd.extend(members.iter().map(Vec::as_slice));
    refused(
        connection.call(&sadd),
        "the command names 10001 items; the limit is 10000",
    );
    // MSET is one transaction of one SET per pair.
    let mut mset: Vec<&[u8]> = vec![b"MSET"];
    for member in &members[..1001] {
        mset.extend([member.as_slice(), b"v"]);
    }
    refused(
        connection.call(&mset),
        "the command names 1001 items; the limit is 1000",
    );
    assert_eq!(connection.cmd("EXISTS set m0"), Frame::Integer(0));

    let client = cluster.client(follower).await;
    let mut kv = client.kv();
    let status = kv
        .s_add(v1::SAddRequest {
            key: b"set".to_vec(),
            members: members.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("the limit is 10000"),
        "{status:?}"
    );
    let op = v1::TxnOp {
        op: Some(v1::txn_op::Op::Delete(v1::DeleteRequest {
            keys: vec![b"k".to_vec()],
            write: None,
        })),
    };
    let status = kv
        .txn(v1::TxnRequest {
            success: vec![op; 1001],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("the limit is 1000"), "{status:?}");

    assert_eq!(connection.cmd("SET after limits"), Frame::status("OK"));
    assert_eq!(
        client.get("after").await.unwrap().as_deref(),
        Some(&b"limits"[..])
    );
}

/// The INFO field `name` of `connection`'s node, as a number.
fn info_number(connection: &mut RespConnection, name: &str) -> u64 {
    let Frame::Bulk(info) = connection.cmd("INFO stats") else {
        panic!("INFO did not answer a bulk string");
    };
    let info = String::from_utf8(info).expect("INFO is text");
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("INFO has no {name}: {info}"))
        .trim()
        .parse()
        .expect("a number")
}

/// Whole-keyspace walks run two at a time per node: eight KEYS sent at once over 100,000 keys
/// all get the whole answer, and the ones that came while both turns were taken waited
/// (`conclave_keyspace_walks_waited`); the node keeps serving writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_walks_beyond_two_at_once_wait_for_a_turn() {
    const KEYS: usize = 100_000;
    const WALKERS: usize = 8;
    let _serial = serial().await;
    let cluster = Cluster::start_with_resp(1, &[]);
    cluster.wait_leader(Duration::from_secs(20)).await;
    let address = cluster.resp(1);
    let mut connection = RespConnection::connect(&address);
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(1_000) {
        let mut args: Vec<Vec<u8>> = vec![b"MSET".to_vec()];
        for i in chunk {
            args.push(format!("walk:{i:06}").into_bytes());
            args.push(b"v".to_vec());
        }
        let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        assert_eq!(connection.call(&args), Frame::status("OK"));
    }
    let waited_before = info_number(&mut connection, "conclave_keyspace_walks_waited");

    let start = std::sync::Arc::new(std::sync::Barrier::new(WALKERS + 1));
    let walkers: Vec<_> = (0..WALKERS)
        .map(|_| {
            let (address, start) = (address.clone(), start.clone());
            std::thread::spawn(move || {
                let mut walker = RespConnection::connect(&address);
                start.wait();
                match walker.cmd("KEYS walk:*") {
                    Frame::Array(keys) => keys.len(),
                    other => panic!("KEYS answered {other:?}"),
                }
            })
        })
        .collect();
    start.wait();
    assert_eq!(connection.cmd("SET during walks"), Frame::status("OK"));
    for walker in walkers {
        assert_eq!(
            walker.join().expect("walker"),
            KEYS,
            "every walk answers whole"
        );
    }
    let waited = info_number(&mut connection, "conclave_keyspace_walks_waited") - waited_before;
    eprintln!("{waited} of {WALKERS} walks waited for a turn");
    assert!(
        waited >= 1,
        "{WALKERS} walks sent at once all ran without waiting: no limit on walks at once"
    );
    assert!(
        waited <= (WALKERS - 2) as u64,
        "{waited} waited: fewer than two turns"
    );
    assert_eq!(connection.cmd("GET during"), Frame::bulk("walks"));
}
