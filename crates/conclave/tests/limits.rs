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
    assert_eq!(connection.call(&mset), Frame::status("OK"));
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
