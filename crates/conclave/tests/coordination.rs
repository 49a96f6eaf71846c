//! Leases, locks, transactions, watch and room state on real clusters.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::{media_node_binary, serial, start_with_clock_offsets, Cluster};
use conclave_client::{cmp, op, room_keys, v1, Error, LockOptions, WatchTarget};

const DELETE: i32 = v1::EventType::EventDelete as i32;
const PUT: i32 = v1::EventType::EventPut as i32;

/// Starts the media-node simulator and waits until it prints `ready`; its remaining output
/// lines arrive on the returned channel.
fn start_media_node(
    cluster: &Cluster,
    prefer: u64,
    id: &str,
    ttl_ms: u64,
) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = Command::new(media_node_binary())
        .args([
            "--id",
            id,
            "--endpoints",
            &cluster.endpoints_preferring(prefer),
        ])
        .args(["--rooms", "2", "--participants", "3", "--tick-ms", "200"])
        .args(["--ttl-ms", &ttl_ms.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("media node starts");
    let stdout = child.stdout.take().expect("stdout");
    let (lines, output) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match output.recv_timeout(remaining) {
            Ok(line) if line == "ready" => return (child, output),
            Ok(_) => {}
            Err(_) => panic!("media node {id} did not get ready\n{}", cluster.logs()),
        }
    }
}

/// Identities of the participants in every room of media node `id` (as the simulator names them).
fn simulator_participants(id: &str) -> BTreeSet<(Vec<u8>, Vec<u8>)> {
    (0..2)
        .flat_map(|r| {
            let room = format!("{id}-room-{r}");
            (0..3).map(move |p| {
                (
                    room_keys::participants(&room),
                    format!("{room}-p{p}").into_bytes(),
                )
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_media_node_loses_its_participants_within_its_lease_and_watchers_see_each_delete() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &[]);
    cluster.wait_leader(Duration::from_secs(15)).await;
    let ttl = Duration::from_millis(2000);
    let (mut media, _output) = start_media_node(&cluster, 1, "m1", ttl.as_millis() as u64);

    // A watcher on another node, started before the death.
    let observer = cluster.client(2).await;
    let mut watcher = observer.watch(
        WatchTarget::Prefix(b"conclave:participants:".to_vec()),
        None,
    );
    watcher.next_batch().await.expect("watch created");
    let expected = simulator_participants("m1");
    // Registered through node 1: node 2, where the observer reads, may apply it a little later.
    for room in ["m1-room-0", "m1-room-1"] {
        common::eventually(
            Duration::from_secs(5),
            "3 participants seen on node 2",
            async || (observer.participants(room).await.unwrap().len() == 3).then_some(()),
        )
        .await;
    }

    media.kill().expect("kill -9 the media node");
    media.wait().ok();
    let killed = Instant::now();

    let mut deleted = BTreeSet::new();
    let mut last_delete = 0;
    while deleted.len() < expected.len() {
        let batch = tokio::time::timeout(ttl * 3, watcher.next())
            .await
            .unwrap_or_else(|_| panic!("deletes seen so far: {deleted:?}\n{}", cluster.logs()))
            .expect("watch");
        for event in batch.events.into_iter().filter(|e| e.r#type == DELETE) {
            last_delete = last_delete.max(event.revision);
            if let Some(field) = event.field {
                assert!(
                    deleted.insert((event.key, field)),
                    "a delete event was repeated"
                );
            }
        }
    }
    let gone_after = killed.elapsed();
    assert_eq!(deleted, expected);
    // The lease was last renewed at most a TTL before the kill; the leader expires it within a
    // housekeeping tick of its deadline.
    assert!(
        gone_after < ttl + Duration::from_millis(1500),
        "participants outlived the lease: {gone_after:?}"
    );
    for id in 1..=3 {
        // A node may apply the expiry a heartbeat after the watcher's node did: a fresh
        // client's read there waits for nothing it has not seen.
        cluster
            .wait_applied(id, last_delete, Duration::from_secs(10))
            .await;
        let client = cluster.client(id).await;
        for room in ["m1-room-0", "m1-room-1"] {
            assert!(client.participants(room).await.unwrap().is_empty());
        }
        assert!(client.media_nodes(true).await.unwrap().is_empty());
        // The rooms themselves stay: they are not on the lease.
        assert_eq!(client.rooms().await.unwrap().len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_kept_alive_survives_the_loss_of_the_leader() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let ttl = Duration::from_millis(1500);
    let (mut media, _output) = start_media_node(&cluster, follower, "m2", ttl.as_millis() as u64);

    cluster.kill(leader);
    let new_leader = cluster.wait_leader(Duration::from_secs(15)).await;
    assert_ne!(new_leader, leader);
    // Well past the TTL: keep-alives go through the new leader, which renewed every lease when
    // it took over.
    tokio::time::sleep(ttl * 3).await;
    let client = cluster.client(follower).await;
    assert_eq!(client.media_nodes(false).await.unwrap().len(), 1);
    assert_eq!(client.participants("m2-room-0").await.unwrap().len(), 3);

    // Without keep-alives it ends.
    media.kill().ok();
    media.wait().ok();
    let deadline = Instant::now() + ttl * 4;
    while !client.media_nodes(true).await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_step_on_the_leader_ends_no_kept_lease_and_no_ttl_lock() {
    let _serial = serial().await;
    let (cluster, offsets) = start_with_clock_offsets(3, &[], false);
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let a = cluster.client(leader).await;
    let b = cluster.client(follower).await;
    let lease = a.grant_lease(Duration::from_secs(5)).await.unwrap();
    let _keeper = a.keep_alive(lease);
    let on_lease = LockOptions {
        lease: Some(lease.id),
        ..Default::default()
    };
    let with_ttl = LockOptions {
        ttl: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    a.lock("job", "a", on_lease).await.unwrap().expect("free");
    a.lock("ttl-job", "a", with_ttl)
        .await
        .unwrap()
        .expect("free");

    // The leader's wall clock jumps a minute ahead.
    std::fs::write(&offsets[&leader], "60000").unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cluster.wait_leader(Duration::from_secs(15)).await, leader);
    let ttl = a.lease_time_to_live(lease.id).await.unwrap();
    assert!(ttl.found, "the lease kept alive ended at the clock step");
    assert!(ttl.remaining_ms <= 5000, "{}", ttl.remaining_ms);
    let attempt = LockOptions {
        ttl: Some(Duration::from_secs(10)),
        wait: Duration::from_millis(300),
        ..Default::default()
    };
    for name in ["job", "ttl-job"] {
        assert!(
            b.lock(name, "b", attempt).await.unwrap().is_none(),
            "{name}: a second holder took the lock after the clock step\n{}",
            cluster.logs()
        );
    }

    // A step back (two minutes) does not stop time either: a 2 s TTL still runs out.
    std::fs::write(&offsets[&leader], "-60000").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.set_with(v1::SetRequest {
        key: b"short".to_vec(),
        value: b"lived".to_vec(),
        ttl_ms: 2000,
        ..Default::default()
    })
    .await
    .unwrap();
    let set = Instant::now();
    while b.get("short").await.unwrap().is_some() {
        assert!(
            set.elapsed() < Duration::from_secs(5),
            "a 2 s TTL key outlived the backward clock step"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        set.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        set.elapsed()
    );
    // The lease and the TTL lock survived the step back as well.
    assert!(a.lease_time_to_live(lease.id).await.unwrap().found);
    assert!(b.lock("ttl-job", "b", attempt).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_attachments_go_with_a_revoke_and_unknown_leases_are_refused() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &[]);
    cluster.wait_leader(Duration::from_secs(15)).await;
    let client = cluster.client(1).await;
    let lease = client.grant_lease(Duration::from_secs(60)).await.unwrap();
    client
        .set_with(v1::SetRequest {
            key: b"session/a".to_vec(),
            value: b"1".to_vec(),
            lease: lease.id,
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .hset_with(v1::HSetRequest {
            key: b"presence".to_vec(),
            fields: vec![v1::HashField {
                field: b"a".to_vec(),
                value: b"here".to_vec(),
            }],
            lease: lease.id,
            ..Default::default()
        })
        .await
        .unwrap();
    client.hset("presence", &[("b", "here")]).await.unwrap();
    let ttl = client.lease_time_to_live(lease.id).await.unwrap();
    assert!(ttl.found);
    assert_eq!(ttl.attached.len(), 2);
    assert!(ttl.remaining_ms > 50_000);

    assert_eq!(client.revoke_lease(lease.id).await.unwrap(), 2);
    let other = cluster.client(3).await;
    let session = client.session_revision();
    let _ = session;
    assert_eq!(client.get("session/a").await.unwrap(), None);
    assert_eq!(client.hget("presence", "a").await.unwrap(), None);
    assert_eq!(
        client.hget("presence", "b").await.unwrap().as_deref(),
        Some(&b"here"[..])
    );
    let refused = other
        .set_with(v1::SetRequest {
            key: b"session/b".to_vec(),
            value: b"1".to_vec(),
            lease: lease.id,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(tonic::Code::NotFound));
    assert!(matches!(
        client.keep_alive_once(lease.id).await,
        Err(Error::LeaseLost(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_racing_for_a_lock_across_nodes_hold_it_one_at_a_time_with_growing_tokens() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &[]);
    cluster.wait_leader(Duration::from_secs(15)).await;
    let in_section = Arc::new(AtomicBool::new(false));
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let mut racers = Vec::new();
    for (node, owner) in [(1, "alice"), (2, "bob"), (3, "carol")] {
        let client = cluster.client(node).await;
        let in_section = in_section.clone();
        let tokens = tokens.clone();
        racers.push(tokio::spawn(async move {
            for _ in 0..10 {
                let options = LockOptions {
                    ttl: Some(Duration::from_secs(10)),
                    wait: Duration::from_secs(4),
                    ..Default::default()
                };
                let guard = client
                    .lock("room-42", owner, options)
                    .await
                    .unwrap()
                    .expect("acquired within the wait");
                assert!(
                    !in_section.swap(true, Ordering::SeqCst),
                    "two holders at once"
                );
                tokens.lock().unwrap().push(guard.token);
                tokio::time::sleep(Duration::from_millis(5)).await;
                in_section.store(false, Ordering::SeqCst);
                client.unlock(&guard).await.unwrap();
            }
        }));
    }
    for racer in racers {
        racer.await.unwrap();
    }
    let tokens = tokens.lock().unwrap().clone();
    assert_eq!(tokens.len(), 30);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens must grow with every acquisition: {tokens:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_holder_is_fenced_and_only_the_holder_may_release() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &[]);
    cluster.wait_leader(Duration::from_secs(15)).await;
    let a = cluster.client(1).await;
    let b = cluster.client(2).await;
    let short = LockOptions {
        ttl: Some(Duration::from_millis(500)),
        ..Default::default()
    };
    let old = a.lock("job", "a", short).await.unwrap().expect("free");
    // b cannot take it yet, nor release it.
    assert!(b.lock("job", "b", short).await.unwrap().is_none());
    let refused = b
        .unlock(&conclave_client::LockGuard {
            owner: b"b".to_vec(),
            ..old.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(tonic::Code::FailedPrecondition));
    // a pauses past its TTL; b takes over with a larger token.
    let wait = LockOptions {
        wait: Duration::from_secs(3),
        ..short
    };
    let new = b.lock("job", "b", wait).await.unwrap().expect("expired");
    assert!(new.token > old.token);
    // a's write guarded by its token is refused; b's goes through.
    let stale = a
        .txn()
        .when(cmp::create_revision_eq(old.key(), old.token))
        .then(op::set("protected", "from a"))
        .commit()
        .await
        .unwrap();
    assert!(!stale.succeeded);
    let fresh = b
        .txn()
        .when(cmp::create_revision_eq(new.key(), new.token))
        .then(op::set("protected", "from b"))
        .commit()
        .await
        .unwrap();
    assert!(fresh.succeeded);
    assert_eq!(
        b.get("protected").await.unwrap().as_deref(),
        Some(&b"from b"[..])
    );
    // a's late release is refused: it no longer holds the lock.
    assert_eq!(
        a.unlock(&old).await.unwrap_err().code(),
        Some(tonic::Code::FailedPrecondition)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_compare_fails_applies_nothing() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &[]);
    cluster.wait_leader(Duration::from_secs(15)).await;
    let client = cluster.client(2).await;
    client.set("room/state", "open").await.unwrap();
    let before = client
        .get_with("room/state", Default::default())
        .await
        .unwrap()
        .unwrap();

    let failed = client
        .txn()
        .when(cmp::value_eq("room/state", "closed"))
        .then(op::delete("room/state"))
        .then(op::set("room/closed-by", "me"))
        .then(op::hset("rooms", "r1", "gone"))
        .otherwise(op::hset("audit", "failed-close", "1"))
        .commit()
        .await
        .unwrap();
    assert!(!failed.succeeded);
    assert_eq!(failed.results.len(), 1, "only the failure branch ran");
    let after = client
        .get_with("room/state", Default::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.mod_revision, before.mod_revision);
    assert_eq!(client.get("room/closed-by").await.unwrap(), None);
    assert_eq!(client.hget("rooms", "r1").await.unwrap(), None);
    assert_eq!(
        client
            .hget("audit", "failed-close")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"1"[..])
    );

    // The same transaction whose compare holds applies every write at one revision.
    let done = client
        .txn()
        .when(cmp::value_eq("room/state", "open"))
        .then(op::set("room/state", "closed"))
        .then(op::set("room/closed-by", "me"))
        .commit()
        .await
        .unwrap();
    assert!(done.succeeded);
    let revision = done.header.unwrap().revision;
    for key in ["room/state", "room/closed-by"] {
        let kv = client
            .get_with(key, Default::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kv.mod_revision, revision);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumed_after_its_node_is_killed_misses_and_repeats_nothing() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let watched = (1..=3).find(|id| *id != leader).unwrap();
    let watching = cluster.client_preferring(watched).await;
    let mut watcher = watching.watch(WatchTarget::Prefix(b"w/".to_vec()), None);
    watcher.next_batch().await.expect("watch created");

    let writer = cluster.client(leader).await;
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let writes = {
        let acked = acked.clone();
        tokio::spawn(async move {
            for i in 0..300u32 {
                let key = format!("w/{i:04}");
                let revision = writer.set(&key, i.to_string()).await.expect("write");
                acked.lock().unwrap().insert(key.into_bytes(), revision);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    let mut seen: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if !killed && seen.len() >= 100 {
            cluster.kill(watched);
            killed = true;
        }
        let done = writes.is_finished() && seen.len() >= acked.lock().unwrap().len();
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "watch stalled at {} events",
            seen.len()
        );
        let Ok(batch) = tokio::time::timeout(Duration::from_secs(1), watcher.next()).await else {
            continue;
        };
        for event in batch.expect("the watch resumes by itself").events {
            assert_eq!(event.r#type, PUT);
            seen.push((event.revision, event.key));
        }
    }
    assert!(killed);
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "events repeated or out of order"
    );
    let seen: BTreeMap<Vec<u8>, u64> = seen.into_iter().map(|(r, k)| (k, r)).collect();
    assert_eq!(
        seen,
        *acked.lock().unwrap(),
        "every write once, at its revision"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_compacted_history_is_refused_with_the_compacted_revision() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &[]);
    cluster.wait_leader(Duration::from_secs(15)).await;
    let client = cluster.client(1).await;
    let first = client.set("big", "start").await.unwrap();
    // 36 MiB of values overflow the 32 MiB history.
    let value = vec![b'x'; 1024 * 1024];
    let mut written = Vec::new();
    for _ in 0..36 {
        written.push(client.set("big", &value).await.unwrap());
    }
    let last = *written.last().unwrap();
    // A session read makes the watching node catch up with the writes first, so the compaction
    // point does not move between the two watches.
    client.get("big").await.unwrap();
    let mut old = client.watch(WatchTarget::Key(b"big".to_vec()), Some(first));
    let compacted = match old.next_batch().await {
        Err(Error::Compacted { compacted }) => compacted,
        other => panic!("expected a compaction error, got {other:?}"),
    };
    assert!(compacted > first);
    // Watching from just after the compaction point delivers every write made after it. Not
    // every revision is a write here (an election's blank entry takes a revision too), so the
    // events are compared with the revisions the writes were acknowledged at.
    let mut kept = client.watch(WatchTarget::Key(b"big".to_vec()), Some(compacted + 1));
    let mut seen = Vec::new();
    while seen.last().is_none_or(|&r| r < last) {
        let batch = kept.next().await.unwrap();
        seen.extend(batch.events.iter().map(|e| e.revision));
    }
    let expected: Vec<u64> = written.into_iter().filter(|&r| r > compacted).collect();
    assert!(!expected.is_empty());
    assert_eq!(
        seen, expected,
        "every write after the compaction point, once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_state_assigns_joins_drains_and_cascades() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &[]);
    cluster.wait_leader(Duration::from_secs(15)).await;
    let client = cluster.client_preferring(1).await;
    let _n1 = client
        .register_media_node("n1", "10.0.0.1:7880", "load=1", Duration::from_secs(30))
        .await
        .unwrap();
    let n2 = client
        .register_media_node("n2", "10.0.0.2:7880", "load=1", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(client.media_nodes(false).await.unwrap().len(), 2);

    let (room, created) = client.create_room("standup", "meta-1").await.unwrap();
    assert!(created && room.node_id.is_empty());
    let (again, created) = client.create_room("standup", "other").await.unwrap();
    assert!(!created);
    assert_eq!(again.metadata, b"meta-1");

    let assigned = client.assign_room("standup", None).await.unwrap();
    let first_node = assigned.node_id.clone();
    assert!(first_node == "n1" || first_node == "n2");
    // Assignment is sticky while the node is registered.
    assert_eq!(
        client.assign_room("standup", None).await.unwrap().node_id,
        first_node
    );
    // The least loaded node gets the next room.
    client.create_room("retro", "").await.unwrap();
    let second = client.assign_room("retro", None).await.unwrap();
    assert_ne!(second.node_id, first_node);
    // A draining node gets nothing new.
    client.drain_media_node("n2").await.unwrap();
    client.create_room("planning", "").await.unwrap();
    assert_eq!(
        client.assign_room("planning", None).await.unwrap().node_id,
        "n1"
    );
    let refused = client.assign_room("retro", Some("n2")).await;
    assert_eq!(
        client.room("retro").await.unwrap().unwrap().node_id,
        second.node_id,
        "an assigned room stays put: {refused:?}"
    );

    let mut watcher = client.watch(WatchTarget::Key(room_keys::participants("standup")), None);
    watcher.next_batch().await.unwrap();
    client.join("standup", "alice", "n1", "a").await.unwrap();
    client.join("standup", "bob", "n2", "b").await.unwrap();
    client
        .update_participant("standup", "alice", "a2")
        .await
        .unwrap();
    let joined_missing = client.join("nowhere", "carol", "n1", "").await.unwrap_err();
    assert_eq!(joined_missing.code(), Some(tonic::Code::FailedPrecondition));
    let unknown_node = client.join("standup", "dave", "n9", "").await.unwrap_err();
    assert_eq!(unknown_node.code(), Some(tonic::Code::FailedPrecondition));
    let participants = client.participants("standup").await.unwrap();
    assert_eq!(participants.len(), 2);
    assert_eq!(
        participants
            .iter()
            .find(|p| p.identity == "alice")
            .unwrap()
            .payload,
        b"a2"
    );

    // n2 unregisters: bob leaves with its lease, alice stays.
    n2.shutdown().await.unwrap();
    let names: Vec<String> = client
        .participants("standup")
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.identity)
        .collect();
    assert_eq!(names, vec!["alice".to_string()]);

    assert!(client.delete_room("standup").await.unwrap());
    assert!(!client.delete_room("standup").await.unwrap());
    assert!(client.participants("standup").await.unwrap().is_empty());
    assert!(client.room("standup").await.unwrap().is_none());

    // The watcher saw the joins, the update, bob's lease delete and the cascade.
    let mut kinds = Vec::new();
    while kinds.len() < 5 {
        let batch = tokio::time::timeout(Duration::from_secs(5), watcher.next())
            .await
            .expect("events")
            .unwrap();
        for e in batch.events {
            let field = e.field.map(|f| String::from_utf8(f).unwrap());
            kinds.push((e.r#type == DELETE, field));
        }
    }
    assert_eq!(
        kinds,
        vec![
            (false, Some("alice".into())),
            (false, Some("bob".into())),
            (false, Some("alice".into())),
            (true, Some("bob".into())),
            (true, None),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_watch_hears_progress_and_the_keepalive_stream_answers_each_request() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &[]);
    cluster.wait_leader(Duration::from_secs(15)).await;
    let client = cluster.client(2).await;
    let mut watcher = client
        .watch(WatchTarget::Key(b"quiet".to_vec()), None)
        .progress_interval(Duration::from_millis(200));
    let created = watcher.next_batch().await.unwrap();
    // Writes elsewhere in the keyspace: no event for this watch, but progress past them.
    let written = client.set("noisy", "1").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let batch = watcher.next_batch().await.unwrap();
        assert!(batch.events.is_empty(), "no event matches the watch");
        assert!(batch.revision >= created.revision);
        if batch.revision >= written {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "progress never passed revision {written}"
        );
    }

    // The KeepAlive stream: one answer per request, TTL 0 once the lease is gone.
    let lease = client.grant_lease(Duration::from_secs(30)).await.unwrap();
    let endpoint = format!("http://{}", cluster.endpoint(3));
    let mut raw = v1::lease_client::LeaseClient::connect(endpoint)
        .await
        .unwrap();
    let (requests, outgoing) = tokio::sync::mpsc::unbounded_channel();
    let mut answers = raw
        .keep_alive(tokio_stream::wrappers::UnboundedReceiverStream::new(
            outgoing,
        ))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        requests
            .send(v1::LeaseKeepAliveRequest { id: lease.id })
            .unwrap();
        let answer = answers.message().await.unwrap().unwrap();
        assert_eq!((answer.id, answer.ttl_ms), (lease.id, lease.ttl_ms));
    }
    client.revoke_lease(lease.id).await.unwrap();
    requests
        .send(v1::LeaseKeepAliveRequest { id: lease.id })
        .unwrap();
    assert_eq!(answers.message().await.unwrap().unwrap().ttl_ms, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_watcher_of_large_participant_writes_misses_none() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &[]);
    cluster.wait_leader(Duration::from_secs(15)).await;
    let client = cluster.client(1).await;
    let key = room_keys::participants("lag");
    let before = client.set("lag-start", "x").await.unwrap();
    // 1000 participants of 2.2 KB each, 10 to a write: more event weight than one watch response
    // holds (2 MiB), all written before the watch starts.
    let value = vec![b'p'; 2200];
    for write in 0..100 {
        let fields: Vec<(String, &[u8])> = (0..10)
            .map(|i| (format!("p{:04}", write * 10 + i), value.as_slice()))
            .collect();
        assert_eq!(client.hset(&key, &fields).await.unwrap(), 10);
    }
    // A session read makes the watching node catch up with every write first.
    assert_eq!(client.hgetall(&key).await.unwrap().len(), 1000);

    let mut watcher = client.watch(WatchTarget::Key(key), Some(before + 1));
    let mut seen: Vec<(u64, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 1000 {
        assert!(
            Instant::now() < deadline,
            "watch stalled at {} of 1000 participants, through revision {}",
            seen.len(),
            watcher.revision()
        );
        let Ok(batch) = tokio::time::timeout(Duration::from_secs(1), watcher.next()).await else {
            continue;
        };
        for event in batch.expect("watch").events {
            assert_eq!(event.r#type, PUT);
            assert_eq!(event.value.len(), 2200);
            seen.push((
                event.revision,
                String::from_utf8(event.field.unwrap()).unwrap(),
            ));
        }
    }
    assert!(
        seen.windows(2).all(|w| w[0].0 <= w[1].0),
        "events in revision order"
    );
    let fields: Vec<String> = seen.into_iter().map(|(_, f)| f).collect();
    let expected: Vec<String> = (0..1000).map(|i| format!("p{i:04}")).collect();
    assert_eq!(fields, expected, "every participant once, in order");
}
