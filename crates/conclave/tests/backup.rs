//! Backup and restore, as after every disk of a cluster is lost: `ctl snapshot save` from a
//! follower, then a new cluster started with `--restore` on every node serves every key the
//! backup held (strings, hashes, sets, TTLs), nothing written after it, and takes writes at
//! revisions past any the old cluster gave out. `--restore` acts once; a node started empty
//! beside restored ones is not taken for a member of their cluster; a damaged backup and a data
//! directory holding other data are refused with the reason.

mod common;

use std::path::Path;
use std::time::Duration;

use common::resp::{Frame, RespConnection};
use common::{binary, run_to_exit, serial, Cluster};

fn ctl(args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(binary());
    command.arg("ctl").args(args);
    run_to_exit(command, Duration::from_secs(30))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The revision a `saved` or `status` line names.
fn revision_in(line: &str) -> u64 {
    let after = line.split("revision ").nth(1).expect("a revision");
    after.split(',').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_backup_restores_a_new_cluster_with_every_key() {
    let _serial = serial().await;
    let mut old = Cluster::start_with_resp(3, &[]);
    let leader = old.wait_leader(Duration::from_secs(15)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let mut writer = RespConnection::connect(&old.resp(follower));
    for i in 0..300 {
        let key = format!("key{i}");
        assert_eq!(
            writer.call(&[b"SET", key.as_bytes(), format!("value{i}").as_bytes()]),
            Frame::status("OK")
        );
    }
    assert_eq!(writer.cmd("HSET room:1 alice 1 bob 2"), Frame::Integer(2));
    assert_eq!(writer.cmd("SADD nodes n1 n2 n3"), Frame::Integer(3));
    assert_eq!(writer.cmd("SET session token EX 3600"), Frame::status("OK"));
    assert_eq!(writer.cmd("INCRBY counter 41"), Frame::Integer(41));
    let written = old.status(leader).await.unwrap().applied;

    // Saved from a follower once it has applied every write.
    old.wait_applied(follower, written, Duration::from_secs(10))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.backup");
    let file_arg = file.to_str().unwrap();
    let saved = ctl(&[
        "--endpoint",
        &old.endpoint(follower),
        "snapshot",
        "save",
        file_arg,
    ]);
    assert!(saved.status.success(), "{}", text(&saved.stderr));
    let line = text(&saved.stdout);
    assert!(
        line.starts_with(&format!("saved {file_arg}: revision ")),
        "{line}"
    );
    assert!(
        line.contains("304 keys") && line.contains("sha256 "),
        "{line}"
    );
    let revision = revision_in(&line);
    assert!(revision >= written, "{line} (written up to {written})");
    let status = ctl(&["snapshot", "status", file_arg]);
    assert!(status.status.success(), "{}", text(&status.stderr));
    assert_eq!(revision_in(&text(&status.stdout)), revision);
    // Written after the backup: the restored cluster never sees it.
    assert_eq!(writer.cmd("SET later x"), Frame::status("OK"));

    // Every disk is lost.
    for id in 1..=3 {
        old.kill(id);
    }
    drop(old);

    // Node 4 is listed but started empty, as if its operator forgot --restore.
    let restore = ["--restore", file_arg];
    let mut new = Cluster::define(4, &restore, true);
    new.nodes.get_mut(&4).unwrap().extra_args.clear();
    for id in 1..=4 {
        new.restart(id);
    }
    let new_leader = restored_leader(&new).await;
    let mut writer = RespConnection::connect(&new.resp(1));
    assert_eq!(writer.cmd("INCRBY counter 1"), Frame::Integer(42));
    let bump = conclave_consensus::RESTORE_REVISION_BUMP;
    let status = new.status(new_leader).await.unwrap();
    assert!(
        status.applied > revision + bump,
        "revisions go on {bump} past the backup's {revision}: {}",
        status.applied
    );
    for id in 1..=3 {
        new.wait_applied(id, status.applied, Duration::from_secs(10))
            .await;
        let mut reader = RespConnection::connect(&new.resp(id));
        for i in 0..300 {
            let key = format!("key{i}");
            assert_eq!(
                reader.call(&[b"GET", key.as_bytes()]),
                Frame::bulk(&format!("value{i}")),
                "{key} on node {id}"
            );
        }
        assert_eq!(reader.cmd("HGET room:1 bob"), Frame::bulk("2"));
        assert_eq!(reader.cmd("SCARD nodes"), Frame::Integer(3));
        let Frame::Integer(ttl) = reader.cmd("TTL session") else {
            panic!("TTL answers an integer");
        };
        assert!((3000..=3600).contains(&ttl), "the TTL survives: {ttl}");
        assert_eq!(reader.cmd("GET counter"), Frame::bulk("42"));
        assert_eq!(
            reader.cmd("GET later"),
            Frame::Nil,
            "written after the backup"
        );
    }

    // The node started empty never joined the restored cluster: it holds none of it.
    let fourth = new.status(4).await.unwrap();
    assert_ne!(fourth.cluster_id, status.cluster_id);
    assert_eq!(
        (fourth.keys, fourth.leader),
        (0, None),
        "the empty node took nothing from the restored ones, nor they from it"
    );

    // --restore acts once: a restart with it still given is refused, one without it keeps the
    // writes made since.
    assert_eq!(writer.cmd("SET after-restore yes"), Frame::status("OK"));
    let written = new.status(new_leader).await.unwrap().applied;
    let restarted = (1..=3).find(|id| *id != new_leader).unwrap();
    new.kill(restarted);
    let refused = run_to_exit(new.command(restarted), Duration::from_secs(20));
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("was restored from a backup (sha256 "),
        "{}",
        text(&refused.stderr)
    );
    new.nodes.get_mut(&restarted).unwrap().extra_args.clear();
    new.restart(restarted);
    new.wait_applied(restarted, written, Duration::from_secs(20))
        .await;
    let mut reader = RespConnection::connect(&new.resp(restarted));
    assert_eq!(reader.cmd("GET after-restore"), Frame::bulk("yes"));

    // A data directory that holds another node's data is never overwritten by a restore.
    new.kill(4);
    new.nodes.get_mut(&4).unwrap().extra_args = restore.iter().map(|s| s.to_string()).collect();
    let refused = run_to_exit(new.command(4), Duration::from_secs(20));
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("already holds a node's data"),
        "{}",
        text(&refused.stderr)
    );
    damaged_backups_are_refused(&file, dir.path());
}

/// The leader nodes 1 to 3 agree on (node 4, started empty, is not of their cluster).
async fn restored_leader(cluster: &Cluster) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut leaders = Vec::new();
        for id in 1..=3 {
            leaders.push(cluster.status(id).await.and_then(|s| s.leader));
        }
        if let Some(Some(leader)) = leaders.first().filter(|l| leaders.iter().all(|o| o == *l)) {
            return *leader;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no agreed leader among the restored nodes: {leaders:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A backup with one byte changed: `status` and `--restore` refuse it, naming the checksum.
fn damaged_backups_are_refused(good: &Path, dir: &Path) {
    let mut bytes = std::fs::read(good).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    let damaged = dir.join("damaged.backup");
    std::fs::write(&damaged, &bytes).unwrap();
    let status = ctl(&["snapshot", "status", damaged.to_str().unwrap()]);
    assert_eq!(status.status.code(), Some(2));
    assert!(
        text(&status.stderr).contains("checksum"),
        "{}",
        text(&status.stderr)
    );

    let cluster = Cluster::define(1, &["--restore", damaged.to_str().unwrap()], false);
    let refused = run_to_exit(cluster.command(1), Duration::from_secs(20));
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("checksum"),
        "{}",
        text(&refused.stderr)
    );
    assert!(
        !cluster.nodes[&1].data_dir.join("state.snapshot").exists(),
        "nothing was seeded"
    );
}
