//! A node whose disk fills up: each node's data directory is a small tmpfs of its own, and a
//! ballast file stands for whatever else filled the disk. A full leader makes every write
//! refused with the disk's reason (RESP `MISCONF`, gRPC RESOURCE_EXHAUSTED) while reads go on; a
//! full follower falls behind while the others take writes; both recover by themselves once the
//! ballast is gone, with nothing acknowledged lost and no election. Needs root (mount).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::resp::{Frame, RespConnection};
use common::{eventually, serial, Cluster};
use tonic::Code;

const MIB: u64 = 1024 * 1024;

/// Each node's data directory as a tmpfs of its own, unmounted when dropped.
struct Mounts(Vec<PathBuf>);

impl Mounts {
    fn new(cluster: &Cluster, megabytes: u64) -> Mounts {
        let mut mounts = Mounts(Vec::new());
        for node in cluster.nodes.values() {
            std::fs::create_dir_all(&node.data_dir).unwrap();
            let status = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
                .arg(&node.data_dir)
                .status()
                .expect("run mount");
            assert!(
                status.success(),
                "mounting a tmpfs needs root (this test fills a node's disk)"
            );
            mounts.0.push(node.data_dir.clone());
        }
        mounts
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for path in &self.0 {
            // Lazy: the nodes may still hold files there.
            let _ = Command::new("umount").arg("-l").arg(path).status();
        }
    }
}

fn available(path: &Path) -> u64 {
    let output = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    text.lines().nth(1).unwrap().trim().parse().unwrap()
}

/// Fills `dir`'s filesystem until `leave` bytes are available; returns the ballast file.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let ballast = dir.join("ballast");
    let size = available(dir).saturating_sub(leave);
    std::fs::write(&ballast, vec![0u8; size as usize]).unwrap();
    ballast
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_loses_nothing_and_recovers_when_space_returns() {
    let _serial = serial().await;
    // 160 MiB each: a 64 MiB log segment and the node's files leave about 90 MiB, above the
    // 64 MiB reserve.
    let mut cluster = Cluster::define(3, &["--disk-reserve", "64mb"], true);
    let _mounts = Mounts::new(&cluster, 160);
    for id in 1..=3 {
        cluster.restart(id);
    }
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let term = cluster.status(leader).await.unwrap().term;
    let mut connections: Vec<RespConnection> = (1..=3)
        .map(|id| RespConnection::connect(&cluster.resp(id)))
        .collect();
    let mut acknowledged = Vec::new();
    let mut write = |connection: &mut RespConnection, key: String| -> Frame {
        let reply = connection.call(&[b"SET", key.as_bytes(), key.as_bytes()]);
        if reply == Frame::status("OK") {
            acknowledged.push(key);
        }
        reply
    };
    for i in 0..30 {
        let connection = &mut connections[i % 3];
        assert_eq!(write(connection, format!("before{i}")), Frame::status("OK"));
    }

    // The leader's disk fills: every node refuses writes with the leader's reason.
    let leader_dir = cluster.nodes[&leader].data_dir.clone();
    let ballast = fill(&leader_dir, 32 * MIB);
    let follower = followers[0];
    let refused = eventually(Duration::from_secs(5), "a write refused", async || {
        let reply = write(&mut connections[follower as usize - 1], "probe".into());
        (reply != Frame::status("OK")).then_some(reply)
    })
    .await;
    assert!(
        refused
            .error_text()
            .starts_with("MISCONF the node's disk is nearly full"),
        "{refused:?}"
    );
    let reply = write(&mut connections[leader as usize - 1], "on-leader".into());
    assert!(reply.error_text().starts_with("MISCONF"), "{reply:?}");
    let client = cluster.client(followers[1]).await;
    let status = client.set("grpc", "v").await.unwrap_err();
    let conclave_client::Error::Rpc(status) = status else {
        panic!("expected a status, got {status:?}");
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // Reads go on everywhere.
    for connection in &mut connections {
        assert_eq!(connection.cmd("GET before7"), Frame::bulk("before7"));
    }

    // Space returns: writes resume on every node by themselves.
    std::fs::remove_file(&ballast).unwrap();
    eventually(
        Duration::from_secs(5),
        "writes after the leader's disk",
        async || {
            (write(
                &mut connections[follower as usize - 1],
                "after-leader".into(),
            ) == Frame::status("OK"))
            .then_some(())
        },
    )
    .await;
    for i in 0..9 {
        let connection = &mut connections[i % 3];
        assert_eq!(
            write(connection, format!("resumed{i}")),
            Frame::status("OK")
        );
    }

    // A follower's disk fills: it refuses its own clients' writes and falls behind, while the
    // leader and the other follower go on taking writes.
    let full = followers[1];
    let full_dir = cluster.nodes[&full].data_dir.clone();
    let ballast = fill(&full_dir, 32 * MIB);
    eventually(
        Duration::from_secs(5),
        "the full follower refusing",
        async || {
            let reply = write(&mut connections[full as usize - 1], "on-full".into());
            matches!(reply, Frame::Error(e) if e.starts_with("MISCONF")).then_some(())
        },
    )
    .await;
    let behind_at = cluster.status(full).await.unwrap().applied;
    for i in 0..20 {
        let id = [leader, followers[0]][i % 2];
        let reply = write(&mut connections[id as usize - 1], format!("during{i}"));
        assert_eq!(reply, Frame::status("OK"), "a write through node {id}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let lagging = cluster.status(full).await.unwrap();
    let leading = cluster.status(leader).await.unwrap();
    assert!(
        lagging.applied < leading.applied,
        "the full follower took no entries: it applied {} (from {behind_at}), the leader {}",
        lagging.applied,
        leading.applied
    );

    // Space returns: it catches up and serves what it missed, and nobody started an election.
    std::fs::remove_file(&ballast).unwrap();
    cluster
        .wait_applied(full, leading.applied, Duration::from_secs(15))
        .await;
    assert_eq!(
        connections[full as usize - 1].cmd("GET during19"),
        Frame::bulk("during19")
    );
    eventually(
        Duration::from_secs(5),
        "writes on the recovered follower",
        async || {
            (write(&mut connections[full as usize - 1], "after-follower".into())
                == Frame::status("OK"))
            .then_some(())
        },
    )
    .await;
    let after = cluster.status(leader).await.unwrap();
    assert_eq!(
        (after.leader, after.term),
        (Some(leader), term),
        "the leadership never moved (leader {leader}, full follower {full}): {}",
        cluster.logs()
    );

    // What was refused was not applied, and nothing acknowledged was lost, on any node.
    let revision = cluster.status(leader).await.unwrap().applied;
    for id in 1..=3 {
        cluster
            .wait_applied(id, revision, Duration::from_secs(15))
            .await;
        let connection = &mut connections[id as usize - 1];
        for refused in ["on-leader", "grpc"] {
            assert_eq!(connection.call(&[b"GET", refused.as_bytes()]), Frame::Nil);
        }
        for key in &acknowledged {
            assert_eq!(
                connection.call(&[b"GET", key.as_bytes()]),
                Frame::Bulk(key.clone().into_bytes()),
                "{key} on node {id}"
            );
        }
    }
}
