//! Format versions: a node refuses a node-to-node call in a later format than its own, a data
//! directory written in a later format, and a snapshot file of a later version, each with an
//! error naming both versions, and keeps serving (or does not start) accordingly.

mod common;

use std::time::Duration;

use common::{run_to_exit, serial, Cluster};
use conclave_proto::peer::peer_client::PeerClient;
use conclave_proto::peer::IdentifyRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_a_peer_call_in_a_later_wire_format() {
    let _serial = serial().await;
    let cluster = Cluster::start(1, &[]);
    cluster.wait_leader(Duration::from_secs(15)).await;
    let cluster_id = cluster.status(1).await.unwrap().cluster_id;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.endpoint(1)))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut peer = PeerClient::new(channel);
    let identify = |version: Option<u32>| {
        let mut request = tonic::Request::new(IdentifyRequest { caller_id: 9 });
        request.metadata_mut().insert(
            conclave_proto::CLUSTER_ID_HEADER,
            cluster_id.parse().unwrap(),
        );
        if let Some(version) = version {
            request.metadata_mut().insert(
                conclave_proto::WIRE_VERSION_HEADER,
                version.to_string().parse().unwrap(),
            );
        }
        request
    };
    let later = conclave_proto::WIRE_VERSION + 1;
    let status = peer.identify(identify(Some(later))).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains(&format!(
            "speaks node-to-node format {later}; node 1 (format {})",
            conclave_proto::WIRE_VERSION
        )),
        "{}",
        status.message()
    );
    // Its own format, and a build from before versions (no header), are answered.
    peer.identify(identify(Some(conclave_proto::WIRE_VERSION)))
        .await
        .expect("the same format");
    peer.identify(identify(None)).await.expect("format 1");
    cluster
        .client(1)
        .await
        .set("still", "serving")
        .await
        .unwrap();
}

#[test]
fn a_node_refuses_a_data_directory_or_snapshot_of_a_later_format() {
    let _serial = common::serial_blocking();
    let cluster = Cluster::define(1, &[], false);
    let data_dir = cluster.nodes[&1].data_dir.clone();
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::write(data_dir.join("FORMAT"), "99\n").unwrap();
    let refused = run_to_exit(cluster.command(1), Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("the data directory is in format 99, written by a later Conclave"),
        "{stderr}"
    );

    // A snapshot file of a later version: refused before anything in it is decoded.
    std::fs::write(data_dir.join("FORMAT"), "1\n").unwrap();
    let mut snapshot = b"CSNP".to_vec();
    snapshot.extend_from_slice(&99u32.to_le_bytes());
    snapshot.extend_from_slice(&[0; 20]);
    std::fs::write(data_dir.join("state.snapshot"), &snapshot).unwrap();
    let refused = run_to_exit(cluster.command(1), Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("format version 99; this build reads versions 1 to"),
        "{stderr}"
    );
}
