//! Crash scenarios on real processes: a leader killed mid-write, every node killed mid-write.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{read_linearizable, run_to_exit, serial, Cluster};

/// Acknowledged writes: key -> value, and when each was sent and acknowledged.
#[derive(Default)]
struct Ledger {
    acked: BTreeMap<String, String>,
    /// (sent, acknowledged) for every acknowledged write.
    times: Vec<(Instant, Instant)>,
    /// Writes answered with an error.
    failed: u64,
}

/// Asserts that no write in `ledger` failed and that every acknowledged one reads back through
/// `client`; returns how many were acknowledged.
async fn assert_none_failed_and_all_present(
    ledger: &Mutex<Ledger>,
    client: &conclave_client::Client,
    during: &str,
) -> usize {
    let (acked, failed) = {
        let ledger = ledger.lock().unwrap();
        (ledger.acked.clone(), ledger.failed)
    };
    assert_eq!(failed, 0, "writes failed while {during}");
    for (key, value) in &acked {
        assert_eq!(
            read_linearizable(client, key).await.as_deref(),
            Some(value.as_bytes()),
            "{key}"
        );
    }
    acked.len()
}

/// Writes `prefix/N` keys through one node until `stop`, recording what was acknowledged.
fn spawn_writer(
    client: conclave_client::Client,
    prefix: String,
    ledger: Arc<Mutex<Ledger>>,
    stop: Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut i = 0u64;
        while Instant::now() < stop {
            let key = format!("{prefix}/{i}");
            let value = format!("v{i}");
            let sent = Instant::now();
            let written = client.set(&key, &value).await;
            let mut ledger = ledger.lock().unwrap();
            if written.is_ok() {
                ledger.acked.insert(key, value);
                ledger.times.push((sent, Instant::now()));
            } else {
                ledger.failed += 1;
            }
            i += 1;
        }
    })
}

async fn assert_all_present(cluster: &Cluster, through: u64, acked: &BTreeMap<String, String>) {
    let client = cluster.client(through).await;
    for (key, value) in acked {
        let got = read_linearizable(&client, key).await;
        assert_eq!(
            got.as_deref(),
            Some(value.as_bytes()),
            "acknowledged write {key}={value} is missing through node {through}\n{}",
            cluster.logs()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_writes_resume_through_survivors_and_nothing_acknowledged_is_lost() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Instant::now() + Duration::from_secs(5);
    let mut writers = Vec::new();
    for (w, id) in survivors.iter().enumerate() {
        for lane in 0..2 {
            let client = cluster.client(*id).await;
            let prefix = format!("w{w}-{lane}");
            writers.push(spawn_writer(client, prefix, ledger.clone(), stop));
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_kill = ledger.lock().unwrap().acked.len();
    assert!(
        before_kill > 0,
        "no write succeeded before the kill\n{}",
        cluster.logs()
    );
    let killed_at = Instant::now();
    cluster.kill(leader);
    for writer in writers {
        writer.await.unwrap();
    }

    let (times, acked) = {
        let ledger = ledger.lock().unwrap();
        (ledger.times.clone(), ledger.acked.clone())
    };
    let first_after = times
        .iter()
        .filter(|(sent, _)| *sent >= killed_at)
        .map(|(_, acked)| *acked)
        .min()
        .expect("no write sent after the kill was acknowledged");
    let outage = first_after.duration_since(killed_at);
    println!("writes resumed {outage:?} after the leader was killed");
    assert!(
        outage < Duration::from_secs(2),
        "writes through the survivors resumed only after {outage:?}\n{}",
        cluster.logs()
    );
    let new_leader = cluster.wait_leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);
    assert_all_present(&cluster, survivors[0], &acked).await;

    // The killed leader restarts from its data directory and catches up.
    cluster.restart(leader);
    let applied = cluster.status(new_leader).await.unwrap().applied;
    cluster
        .wait_applied(leader, applied, Duration::from_secs(15))
        .await;
    assert_all_present(&cluster, leader, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_killed_mid_write_keeps_every_acknowledged_write() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3, &[]);
    cluster.wait_leader(Duration::from_secs(15)).await;

    // A moment between 0.5 s and 1.5 s into the writes, chosen from the clock's nanoseconds.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let kill_after = Duration::from_millis(500 + u64::from(nanos % 1000));

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Instant::now() + Duration::from_secs(30);
    let mut writers = Vec::new();
    for id in 1..=3 {
        for lane in 0..3 {
            let client = cluster.client(id).await;
            writers.push(spawn_writer(
                client,
                format!("n{id}-{lane}"),
                ledger.clone(),
                stop,
            ));
        }
    }
    tokio::time::sleep(kill_after).await;
    for id in 1..=3 {
        cluster.kill(id);
    }
    // Snapshot what was acknowledged before the crash; writes still in flight cannot succeed.
    let acked = ledger.lock().unwrap().acked.clone();
    for writer in &writers {
        writer.abort();
    }
    assert!(
        !acked.is_empty(),
        "no write succeeded before the crash\n{}",
        cluster.logs()
    );

    for id in 1..=3 {
        cluster.restart(id);
    }
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    assert_all_present(&cluster, leader, &acked).await;
    let other = (1..=3).find(|id| *id != leader).unwrap();
    assert_all_present(&cluster, other, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_fails_over_to_the_next_endpoint_when_its_node_dies() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let preferred = (1..=3).find(|id| *id != leader).unwrap();
    let fallback = (1..=3)
        .find(|id| *id != leader && *id != preferred)
        .unwrap();
    let client =
        conclave_client::Client::connect([cluster.endpoint(preferred), cluster.endpoint(fallback)])
            .await
            .unwrap();
    client.set("before", "1").await.unwrap();
    assert_eq!(client.endpoint(), cluster.endpoint(preferred));

    cluster.kill(preferred);
    client.set("after", "2").await.unwrap();
    assert_eq!(client.endpoint(), cluster.endpoint(fallback));
    // Session reads on the fallback node see both writes.
    assert_eq!(
        client.get("before").await.unwrap().as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(
        client.get("after").await.unwrap().as_deref(),
        Some(&b"2"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_data_was_lost_refuses_to_rejoin_under_its_old_id() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3, &[]);
    // The victim is the leader: once it is gone, the new leader has never replicated to it, so
    // only the registered incarnation of its data directory can tell that its data was lost.
    let victim = cluster.wait_leader(Duration::from_secs(15)).await;
    let survivor = (1..=3).find(|id| *id != victim).unwrap();
    let client = cluster.client(survivor).await;
    client.set("k", "v").await.unwrap();
    // Nodes register their data directory a few hundred ms after a leader is known.
    tokio::time::sleep(Duration::from_secs(3)).await;

    cluster.kill(victim);
    std::fs::remove_dir_all(&cluster.nodes[&victim].data_dir).unwrap();
    let new_leader = cluster.wait_leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, victim);
    let output = run_to_exit(cluster.command(victim), Duration::from_secs(15));
    assert!(
        !output.status.success(),
        "a wiped node rejoined under its old id"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("data was lost"), "{stderr}");
    assert!(stderr.contains("members remove"), "{stderr}");

    // The cluster is unharmed and keeps serving. Removing the lost node lets it come back under
    // its old id with an empty directory, started as before: it sees that the cluster exists,
    // does not bootstrap, and waits to be added.
    client.set("still", "serving").await.unwrap();
    assert_eq!(
        read_linearizable(&client, "k").await.as_deref(),
        Some(&b"v"[..])
    );
    let mut admin = client.cluster();
    admin
        .remove_member(conclave_client::v1::RemoveMemberRequest { id: victim })
        .await
        .expect("remove the lost node");
    std::fs::remove_dir_all(&cluster.nodes[&victim].data_dir).ok();
    cluster.restart(victim);
    add_back_and_read_k(&cluster, &mut admin, victim, survivor).await;
}

/// An operator removes a node whose disk was lost and starts it again, empty, at once: a peer
/// that has not applied the removal yet still remembers the old data directory. The node asks
/// again rather than exit, and joins once it is added. (Before, it exited: the chaos suite's
/// `wipe` fault met this after a partition had left a peer behind.) The lagging peer is made so
/// by pausing it through the removal and pausing the leader as it resumes, so that it catches up
/// only after an election (slowed down to a second here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_empty_right_after_its_removal_waits_for_peers_to_apply_it() {
    let _serial = serial().await;
    let slow_elections = ["--election-min-ms", "1000", "--election-max-ms", "1500"];
    let mut cluster = Cluster::start(5, &slow_elections);
    let leader = cluster.wait_leader(Duration::from_secs(30)).await;
    let others: Vec<u64> = (1..=5).filter(|id| *id != leader).collect();
    let (victim, laggard) = (others[0], others[1]);
    let client = cluster.client(leader).await;
    client.set("k", "v").await.unwrap();
    // Nodes register their data directory a few hundred ms after a leader is known.
    tokio::time::sleep(Duration::from_secs(3)).await;

    cluster.pause(laggard);
    let mut admin = client.cluster();
    admin
        .remove_member(conclave_client::v1::RemoveMemberRequest { id: victim })
        .await
        .expect("remove the node");
    cluster.kill(victim);
    std::fs::remove_dir_all(&cluster.nodes[&victim].data_dir).unwrap();
    // The laggard answers again but hears of the removal only from the next leader.
    cluster.pause(leader);
    cluster.resume(laggard);
    cluster.restart(victim);
    let exit = cluster.wait_exit(victim, Duration::from_secs(3));
    assert!(
        exit.is_none(),
        "the node gave up while its removal was being applied: {exit:?}\n{}",
        cluster.logs()
    );
    cluster.resume(leader);

    // The node waits to be added (it is no member, so it knows no leader): add it back.
    let survivor = others[2];
    let mut admin = cluster.client(survivor).await.cluster();
    add_back_and_read_k(&cluster, &mut admin, victim, survivor).await;
}

/// Adds `victim` back through `admin`, waits until it has applied what `survivor` has, and checks
/// that it serves `k = v` from its own replica.
async fn add_back_and_read_k(
    cluster: &Cluster,
    admin: &mut conclave_client::v1::cluster_client::ClusterClient<conclave_client::Transport>,
    victim: u64,
    survivor: u64,
) {
    admin
        .add_member(conclave_client::v1::AddMemberRequest {
            id: victim,
            address: cluster.endpoint(victim),
            learner_only: false,
        })
        .await
        .expect("add the node back");
    let applied = cluster.status(survivor).await.unwrap().applied;
    cluster
        .wait_applied(victim, applied, Duration::from_secs(15))
        .await;
    let back = cluster.client(victim).await;
    assert_eq!(
        back.get_with("k", conclave_client::Consistency::Local)
            .await
            .unwrap()
            .map(|kv| kv.value),
        Some(b"v".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_started_one_after_another_form_one_cluster() {
    let _serial = serial().await;
    let mut cluster = Cluster::define(3, &[], false);
    // Node 1 alone waits for a second empty node before creating the cluster.
    cluster.restart(1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cluster.status(1).await.unwrap().leader, None);
    assert!(cluster
        .logs()
        .contains("node 1: waiting for 2 of the 3 nodes"));
    // With node 2 they create it; node 3 finds it formed, does not bootstrap it again, and is
    // brought in by whichever node wins.
    cluster.restart(2);
    cluster.wait_leader(Duration::from_secs(15)).await;
    cluster.restart(3);
    cluster.wait_leader(Duration::from_secs(15)).await;
    let client = cluster.client(3).await;
    let written = client.set("formed", "yes").await.unwrap();
    for id in 1..=3 {
        cluster
            .wait_applied(id, written, Duration::from_secs(10))
            .await;
        let status = cluster.status(id).await.unwrap();
        assert_eq!(status.members.iter().filter(|m| m.voter).count(), 3);
        assert_eq!(
            status.cluster_id,
            cluster.status(1).await.unwrap().cluster_id
        );
    }
    let logs = cluster.logs();
    assert!(
        logs.contains("node 3: the cluster already exists"),
        "node 3 did not see the formed cluster:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_a_follower_leaves_the_leader_in_place() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let term = cluster.status(leader).await.unwrap().term;
    let client = cluster.client(leader).await;
    // openraft has no pre-vote: a follower that started an election while winding down, or
    // before its leader reached it after a restart, would raise the term and depose the leader.
    for round in 0..3 {
        for follower in (1..=3).filter(|id| *id != leader) {
            if round % 2 == 0 {
                cluster.stop(follower);
            } else {
                cluster.kill(follower);
            }
            let written = client.set("k", format!("{round}")).await.unwrap();
            cluster.restart(follower);
            cluster
                .wait_applied(follower, written, Duration::from_secs(10))
                .await;
            let status = cluster.status(leader).await.unwrap();
            assert_eq!(
                (status.leader, status.term),
                (Some(leader), term),
                "round {round}: restarting node {follower} changed the leadership"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_leader_hands_its_leadership_to_a_caught_up_follower() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let term = cluster.status(leader).await.unwrap().term;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Instant::now() + Duration::from_secs(3);
    let mut writers = Vec::new();
    for id in &followers {
        let client = cluster.client(*id).await;
        writers.push(spawn_writer(
            client,
            format!("via{id}"),
            ledger.clone(),
            stop,
        ));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    cluster.stop(leader);
    // Asked as soon as the old leader has exited: it went on sending heartbeats until then, so
    // without a handover the others would still follow it here, and elect a successor only
    // after its lease and an election timeout.
    for id in &followers {
        let status = cluster.status(*id).await.unwrap();
        assert!(
            status.leader.is_some_and(|l| followers.contains(&l)),
            "node {id} follows {:?} right after node {leader} stopped\n{}",
            status.leader,
            cluster.logs()
        );
        assert_eq!(
            status.term,
            term + 1,
            "node {id}: the successor was elected in the next term\n{}",
            cluster.logs()
        );
    }

    for writer in writers {
        writer.await.unwrap();
    }
    let client = cluster.client(followers[0]).await;
    let acked = assert_none_failed_and_all_present(&ledger, &client, "the leader stopped").await;
    assert!(acked > 10, "writes went on: {acked}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_cut_off_from_its_quorum_is_not_ready() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let endpoint = cluster.endpoint(leader);
    let ready = || {
        std::process::Command::new(common::binary())
            .args(["ctl", "--endpoint", &endpoint, "ready"])
            .output()
            .unwrap()
    };
    assert!(ready().status.success());

    for follower in (1..=3).filter(|id| *id != leader) {
        cluster.kill(follower);
    }
    // It still names itself leader (openraft 0.9 does not step down on its own), so "knows a
    // leader" is no health check: its readiness must need the quorum.
    let status = cluster.status(leader).await.unwrap();
    assert_eq!(status.leader, Some(leader));
    let refused = ready();
    assert!(
        !refused.status.success(),
        "a leader without a quorum is ready"
    );
    let reason = String::from_utf8_lossy(&refused.stderr);
    assert!(reason.contains("did not confirm"), "{reason}");
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_site_restart_an_empty_node_waits_for_its_peers_and_is_refused() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3, &[]);
    cluster.wait_leader(Duration::from_secs(15)).await;
    let client = cluster.client(1).await;
    let first = client.set("before", "1").await.unwrap();
    for id in 1..=3 {
        cluster
            .wait_applied(id, first, Duration::from_secs(10))
            .await;
    }
    // Every node has registered its data directory by now (each does once it knows a leader).
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Node 2 falls behind: writes are acknowledged by nodes 1 and 3 only.
    cluster.kill(2);
    let client = cluster.client_preferring(1).await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let key = format!("while-2-was-down/{i}");
        client.set(&key, "yes").await.unwrap();
        acked.push(key);
    }
    // The whole site goes down; node 3 comes back without its disk, and first.
    cluster.kill(1);
    cluster.kill(3);
    std::fs::remove_dir_all(&cluster.nodes[&3].data_dir).unwrap();
    cluster.restart(3);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logs = cluster.logs();
    assert!(
        logs.contains("node 3: waiting for 2 of the 3 nodes"),
        "an empty node alone created the cluster:\n{logs}"
    );

    // Node 2, which missed the writes, comes back: it remembers node 3's old directory, so node
    // 3 refuses to go on rather than give node 2 the vote it needs to lead without them.
    cluster.restart(2);
    let exit = cluster.wait_exit(3, Duration::from_secs(20));
    assert!(
        exit.is_some_and(|status| !status.success()),
        "node 3 went on with an empty disk: {exit:?}\n{}",
        cluster.logs()
    );
    assert!(cluster.logs().contains("node 3's data was lost"));

    // With node 1 back, the cluster has every acknowledged write.
    cluster.restart(1);
    cluster.wait_leader(Duration::from_secs(15)).await;
    let client = cluster.client_preferring(2).await;
    for key in &acked {
        assert_eq!(
            read_linearizable(&client, key).await.as_deref(),
            Some(&b"yes"[..]),
            "{key}"
        );
    }
}

/// Makes node 3 create the cluster counting node 1, and stops it (SIGSTOP) before any entry:
/// node 3 then holds Raft state and no entry, while node 1 never created the cluster. Node 1
/// first runs with `--join` (it answers that it is empty, and waits to be added instead of
/// creating the cluster itself), then is restarted as a listed node with the same directory.
/// None if node 1 has Raft state after all (the caller tries again).
async fn a_founder_cut_off_before_the_first_entry() -> Option<Cluster> {
    let mut cluster = Cluster::define(3, &[], false);
    cluster.nodes.get_mut(&1).expect("node 1").join = true;
    cluster.restart(1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let three = cluster.client(3).await;
    cluster.restart(3);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if three.status().await.is_ok_and(|s| !s.members.is_empty()) {
            cluster.pause(3);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 never created the cluster\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    cluster.kill(1);
    cluster.nodes.get_mut(&1).expect("node 1").join = false;
    cluster.restart(1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let one = cluster.status(1).await?;
    one.members.is_empty().then_some(cluster)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_founder_cut_off_before_the_first_entry_never_forms_a_cluster_with_a_node_that_lost_its_disk(
) {
    let _serial = serial().await;
    let mut attempts = 0;
    let mut cluster = loop {
        attempts += 1;
        if let Some(cluster) = a_founder_cut_off_before_the_first_entry().await {
            break cluster;
        }
        assert!(attempts < 6, "node 1 kept creating the cluster with node 3");
    };
    // Nodes 1 and 2 form the cluster (node 3 is stopped) and acknowledge writes.
    cluster.restart(2);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let one = cluster.status(1).await.and_then(|s| s.leader);
        let two = cluster.status(2).await.and_then(|s| s.leader);
        if one.is_some() && one == two {
            break;
        }
        assert!(Instant::now() < deadline, "nodes 1 and 2 elected no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = cluster.client_preferring(1).await;
    let mut acked = Vec::new();
    for i in 0..10 {
        let key = format!("acknowledged/{i}");
        client.set(&key, "yes").await.unwrap();
        acked.push(key);
    }
    for id in [1, 2] {
        let applied = cluster.status(id).await.unwrap().applied;
        cluster
            .wait_applied(id, applied, Duration::from_secs(10))
            .await;
    }
    // Every node that knows a leader has registered its data directory by now.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A site restart: node 2 comes back without its disk, node 3 with its state (no entry), node
    // 1 stays down. Node 3 counted node 1, not this new directory of node 2, when it created the
    // cluster: the two must not form one without the acknowledged writes.
    for id in 1..=3 {
        cluster.kill(id);
    }
    std::fs::remove_dir_all(&cluster.nodes[&2].data_dir).unwrap();
    cluster.restart(3);
    cluster.restart(2);
    tokio::time::sleep(Duration::from_secs(4)).await;
    for id in [2, 3] {
        let status = cluster.status(id).await;
        assert!(
            status.as_ref().is_none_or(|s| s.leader.is_none()),
            "nodes 2 (empty) and 3 (never saw an entry) elected a leader: {status:?}\n{}",
            cluster.logs()
        );
    }
    assert!(
        cluster
            .logs()
            .contains("node 2: waiting for 2 of the 3 nodes"),
        "{}",
        cluster.logs()
    );

    // Node 1 returns: it remembers node 2's old directory, so node 2 refuses to go on, and
    // nodes 1 and 3 serve every acknowledged write.
    cluster.restart(1);
    let exit = cluster.wait_exit(2, Duration::from_secs(20));
    assert!(
        exit.is_some_and(|status| !status.success()),
        "node 2 went on with an empty disk: {exit:?}\n{}",
        cluster.logs()
    );
    cluster.wait_leader(Duration::from_secs(15)).await;
    let client = cluster.client_preferring(3).await;
    for key in &acked {
        assert_eq!(
            read_linearizable(&client, key).await.as_deref(),
            Some(&b"yes"[..]),
            "{key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leadership_moves_on_request_and_no_write_fails() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let term = cluster.status(leader).await.unwrap().term;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Instant::now() + Duration::from_secs(3);
    let mut writers = Vec::new();
    for id in 1..=3 {
        let client = cluster.client_preferring(id).await;
        writers.push(spawn_writer(
            client,
            format!("via{id}"),
            ledger.clone(),
            stop,
        ));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ctl = |via: u64, args: &[&str]| {
        std::process::Command::new(common::binary())
            .args([
                "ctl",
                "--endpoint",
                &cluster.endpoint(via),
                "transfer-leader",
            ])
            .args(args)
            .output()
            .unwrap()
    };
    let answer = |output: &std::process::Output| -> (u64, u64) {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        (
            json["leader"].as_u64().unwrap(),
            json["term"].as_u64().unwrap(),
        )
    };

    // Asked through a follower, to the other follower.
    let target = followers[1];
    let moved = answer(&ctl(followers[0], &["--to", &target.to_string()]));
    assert_eq!(moved, (target, term + 1));
    assert_eq!(cluster.wait_leader(Duration::from_secs(10)).await, target);
    // To whichever voter holds the whole log.
    let (next, next_term) = answer(&ctl(leader, &[]));
    assert_ne!(next, target, "{}", cluster.logs());
    assert_eq!(next_term, term + 2, "{}", cluster.logs());
    // Only to a voter.
    let refused = ctl(leader, &["--to", "9"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("node 9 is not a voter"));

    for writer in writers {
        writer.await.unwrap();
    }
    let client = cluster.client(next).await;
    assert_none_failed_and_all_present(&ledger, &client, "the leadership moved").await;
}
