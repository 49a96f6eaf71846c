//! Bad input gets a clear gRPC error or a clear refusal at start-up; the node keeps serving.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::{binary, free_port, run_to_exit, serial, serial_blocking, Cluster};
use conclave_client::v1;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_malformed_and_unknown_requests_get_clear_errors() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &[]);
    cluster.wait_leader(Duration::from_secs(15)).await;
    let client = cluster.client(2).await;
    let mut kv = client.kv();

    let too_long_key = vec![b'k'; 64 * 1024 + 1];
    let status = kv
        .set(v1::SetRequest {
            key: too_long_key.clone(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("key is 65537 bytes"),
        "{}",
        status.message()
    );

    let status = kv
        .get(v1::GetRequest {
            key: too_long_key,
            read: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let status = kv
        .set(v1::SetRequest {
            key: b"big".to_vec(),
            value: vec![0; 1024 * 1024 + 1],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("value is"),
        "{}",
        status.message()
    );

    let status = kv.set(v1::SetRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "empty key");

    let status = kv
        .set(v1::SetRequest {
            key: b"k".to_vec(),
            condition: 42,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "unknown condition");

    let status = kv
        .h_set(v1::HSetRequest {
            key: b"k".to_vec(),
            fields: vec![],
            write: None,
            lease: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "no fields");

    // A key of the wrong type.
    let revision = client.set("plain", "v").await.unwrap();
    let status = kv
        .h_get_all(v1::KeyReadRequest {
            key: b"plain".to_vec(),
            read: Some(v1::ReadOptions {
                consistency: v1::Consistency::Session as i32,
                min_revision: revision,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().starts_with("WRONGTYPE"));
    let status = kv
        .s_add(v1::SAddRequest {
            key: b"plain".to_vec(),
            members: vec![b"m".to_vec()],
            write: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    // Unknown node ids in membership changes.
    let mut admin = client.cluster();
    let status = admin
        .remove_member(v1::RemoveMemberRequest { id: 99 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("99"), "{}", status.message());
    let status = admin
        .promote_member(v1::PromoteMemberRequest { id: 99 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = admin
        .add_member(v1::AddMemberRequest {
            id: 0,
            address: "127.0.0.1:1".into(),
            learner_only: true,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // A newcomer at a member's address: that member would take the messages meant for the
    // newcomer for its own (the leader's replication to itself panics openraft).
    for member in 1..=3 {
        let status = admin
            .add_member(v1::AddMemberRequest {
                id: 4,
                address: cluster.endpoint(member),
                learner_only: true,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("already a member at"),
            "{}",
            status.message()
        );
    }

    // Garbage on the listener: the connection is dropped, the node keeps serving.
    let mut raw = std::net::TcpStream::connect(cluster.endpoint(2)).unwrap();
    raw.write_all(b"\x00\x00\xffGARBAGE not http2 at all\r\n\r\n")
        .unwrap();
    drop(raw);

    // The node still serves, and nothing above changed the keyspace but "plain".
    assert_eq!(
        client.get("plain").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(cluster.status(2).await.unwrap().keys, 1);
}

/// Runs `conclave server` with these flags, expecting it to refuse to start; returns its stderr.
fn refused_start(id: &str, listen: &str, data_dir: &Path, initial_cluster: &str) -> String {
    let output = run_to_exit(
        server(id, listen, data_dir, initial_cluster),
        Duration::from_secs(15),
    );
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "the server started: {stderr}");
    stderr
}

fn server(id: &str, listen: &str, data_dir: &Path, initial_cluster: &str) -> std::process::Command {
    let mut command = std::process::Command::new(binary());
    command
        .args(["server", "--id", id, "--listen", listen])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--initial-cluster", initial_cluster]);
    command
}

#[test]
fn a_node_refuses_a_data_dir_of_another_cluster_and_an_unlisted_id_only_joins() {
    let _serial = serial_blocking();
    let dir = tempfile::tempdir().unwrap();
    let a = format!("127.0.0.1:{}", free_port());
    let b = format!("127.0.0.1:{}", free_port());
    let pair = format!("1={a},2={b}");

    // A node missing from the list cannot have created the cluster: it starts as a joining node,
    // says so, and knows no leader until it is added.
    let c = format!("127.0.0.1:{}", free_port());
    let log = dir.path().join("unlisted.log");
    let mut unlisted = server("3", &c, &dir.path().join("x"), &pair)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("node 3: not in --initial-cluster, so it joins")
    {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready = std::process::Command::new(binary())
        .args(["ctl", "--endpoint", &c, "ready", "--wait-s", "1"])
        .output()
        .unwrap();
    assert!(!ready.status.success(), "an unlisted node found a leader");
    assert!(String::from_utf8_lossy(&ready.stderr).contains("knows no leader"));
    unlisted.kill().unwrap();
    unlisted.wait().unwrap();

    // A one-node cluster creates its data directory...
    let data = dir.path().join("one");
    let mut first = server("1", &a, &data, &format!("1={a}"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Serving (and so bootstrapped) once it names itself leader.
    let started = std::time::Instant::now();
    loop {
        let status = std::process::Command::new(binary())
            .args(["ctl", "--endpoint", &a, "status"])
            .output()
            .unwrap();
        let leader = serde_json::from_slice::<serde_json::Value>(&status.stdout)
            .ok()
            .and_then(|json| json["leader"].as_u64());
        if leader == Some(1) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the one-node cluster did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    first.kill().unwrap();
    first.wait().unwrap();

    // ...which another cluster's node list cannot take over, nor another node id.
    let stderr = refused_start("1", &a, &data, &pair);
    assert!(stderr.contains("belongs to cluster"), "{stderr}");
    let stderr = refused_start("2", &b, &data, &pair);
    assert!(stderr.contains("belongs to node 1"), "{stderr}");

    // Malformed lists are refused, and so is one naming two nodes at one address.
    let stderr = refused_start("1", &a, &dir.path().join("y"), "1=nowhere");
    assert!(stderr.contains("invalid --initial-cluster"), "{stderr}");
    let stderr = refused_start("1", &a, &dir.path().join("z"), &format!("1={a},2={a}"));
    assert!(stderr.contains("both listed at"), "{stderr}");
}

/// Node-to-node calls must announce their cluster: a Raft message or a pub/sub relay stream
/// without the cluster id header is refused before it reaches Raft or the hub. Only the identity
/// probe, which a `--join` node sends before it knows its cluster, is answered without one. A
/// call meant for another node is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_calls_without_the_cluster_id_header_or_for_another_node_are_refused() {
    use conclave_proto::peer::mesh_client::MeshClient;
    use conclave_proto::peer::peer_client::PeerClient;
    use conclave_proto::peer::{IdentifyRequest, RaftMessage, RelayBatch, RelayedMessage};

    let _serial = serial().await;
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let url = format!("http://{}", cluster.endpoint(follower));
    let mut peer = PeerClient::connect(url.clone()).await.unwrap();

    let refused = |status: tonic::Status, what: &str| {
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert!(
            status.message().contains("conclave-cluster-id"),
            "{what}: {}",
            status.message()
        );
    };
    let status = peer
        .vote(RaftMessage { payload: vec![] })
        .await
        .unwrap_err();
    refused(status, "vote");
    let status = peer
        .append_entries(RaftMessage { payload: vec![] })
        .await
        .unwrap_err();
    refused(status, "append_entries");
    let mut request = tonic::Request::new(RaftMessage { payload: vec![] });
    request
        .metadata_mut()
        .insert(conclave_proto::TARGET_NODE_HEADER, "99".parse().unwrap());
    let status = peer.vote(request).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("meant for node 99"),
        "{}",
        status.message()
    );

    // The probe a joining node sends before it has a cluster id is still answered.
    let answer = peer
        .identify(IdentifyRequest { caller_id: 99 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.node_id, follower);

    let batch = RelayBatch {
        origin_node: leader,
        messages: vec![RelayedMessage {
            channel: b"c".to_vec(),
            payload: b"forged".to_vec(),
            revision: 0,
        }],
        ..Default::default()
    };
    let status = MeshClient::connect(url)
        .await
        .unwrap()
        .relay(tokio_stream::iter(vec![batch]))
        .await
        .unwrap_err();
    refused(status, "relay");

    // The node keeps serving.
    let client = cluster.client(follower).await;
    client.set("after", "v").await.unwrap();
}

#[test]
fn a_request_deadline_longer_than_the_de_dup_window_allows_is_refused_at_start() {
    // A write is re-sent under its id until its deadline; past the minute the state machine
    // keeps replies, a re-sent copy could apply twice.
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    for flag in ["--resp-deadline-ms", "--request-timeout-ms"] {
        let mut command = server("1", &listen, dir.path(), &format!("1={listen}"));
        command.args([flag, "90000"]);
        let output = run_to_exit(command, Duration::from_secs(15));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flag} 90000 was accepted");
        assert!(stderr.contains("not in 1..=30000"), "{stderr}");
    }
}
