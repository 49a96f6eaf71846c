//! The docker-compose deployment in `deploy/`, driven the way an operator drives it: the image
//! built from local files by `deploy/build-image.sh`, `compose up`, `docker kill`, and the
//! operation scripts in `deploy/ops/`, with a client writing throughout. Each test is skipped,
//! with a message saying so, where no Docker engine answers.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::compose::{assert_all_present, build_image, docker_available, Compose, Load};
use common::resp::{Frame, RespConnection};
use common::serial;
use conclave_client::{Client, Consistency};

/// Waits until node `id` has applied everything the leader had committed (a linearizable read
/// through it alone answers).
async fn wait_caught_up(compose: &Compose, id: usize, timeout: Duration) {
    let client = compose.client(&[id]).await;
    let deadline = Instant::now() + timeout;
    loop {
        let read = tokio::time::timeout(
            Duration::from_secs(3),
            client.get_with("probe", Consistency::Linearizable),
        )
        .await;
        if matches!(read, Ok(Ok(_))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} did not catch up within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_cluster_elects_serves_and_leaves_nothing_behind() {
    if !docker_available("a_compose_cluster_elects_serves_and_leaves_nothing_behind") {
        return;
    }
    let _serial = serial().await;
    let built = build_image();
    eprintln!("image ready in {:.1} s", built.as_secs_f64());
    let compose = Compose::new("up");
    let started = Instant::now();
    compose.up();

    // A leader and a write within 30 s of `up`, read back over RESP on another node.
    compose
        .wait_leader(&[1, 2, 3], Duration::from_secs(30))
        .await;
    let client = compose.client(&[1, 2, 3]).await;
    client.set("greeting", "hello from compose").await.unwrap();
    let serving = started.elapsed();
    eprintln!(
        "compose up -> leader and first write: {:.1} s",
        serving.as_secs_f64()
    );
    assert!(serving < Duration::from_secs(30), "took {serving:?}");
    let mut redis = RespConnection::connect(&compose.resp(3));
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.cmd("GET greeting") != Frame::bulk("hello from compose") {
        assert!(Instant::now() < deadline, "node 3 never read the write");
        std::thread::sleep(Duration::from_millis(50));
    }

    wait_healthy_and_hosting(&compose, &client).await;
    for id in 1..=3 {
        let args = compose.inspect(&format!("media-{id}"), "{{json .Args}}");
        let args: Vec<String> = serde_json::from_str(&args).unwrap();
        let endpoints = args.iter().skip_while(|a| *a != "--endpoints").nth(1);
        assert_eq!(
            endpoints.map(String::as_str),
            Some(format!("conclave-{id}:7000").as_str()),
            "media-{id} must talk to its own node only: {args:?}"
        );
    }

    // Every node's metrics endpoint is published on the host.
    for id in 1..=3 {
        let metrics = http_get(&compose.metrics(id), "/metrics");
        assert!(metrics.starts_with("HTTP/1.1 200"), "node {id}: {metrics}");
        assert!(
            metrics.contains(&format!("conclave_node_id {id}\n")),
            "node {id}: {metrics}"
        );
    }

    compose.compose_ok(&["down", "-v", "--remove-orphans"]);
    assert_eq!(compose.leftovers(), Vec::<String>::new());
}

/// Waits until each node reports healthy (its health check passes: a leader exists and it has
/// caught up) and each media node, which talks to its own node only, has registered and hosts its
/// two rooms.
async fn wait_healthy_and_hosting(compose: &Compose, client: &conclave_client::Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let healthy: Vec<String> = (1..=3)
            .map(|id| compose.inspect(&format!("conclave-{id}"), "{{.State.Health.Status}}"))
            .collect();
        let media = client.media_nodes(false).await.unwrap();
        let mut hosting: Vec<(String, u64)> =
            media.iter().map(|n| (n.id.clone(), n.rooms)).collect();
        hosting.sort();
        let want: Vec<(String, u64)> = (1..=3).map(|i| (format!("media-{i}"), 2)).collect();
        if healthy.iter().all(|h| h == "healthy") && hosting == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health {healthy:?}, media nodes {hosting:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The TLS overlay: the `certs` service makes the certificates, peers talk over mutual TLS, the
/// health check, the operation scripts and the media nodes talk TLS to their nodes, and gRPC,
/// RESP and the metrics answer over TLS only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_cluster_with_tls_serves_over_tls_only() {
    if !docker_available("a_compose_cluster_with_tls_serves_over_tls_only") {
        return;
    }
    let _serial = serial().await;
    build_image();
    let compose = Compose::with_tls("tls");
    compose.up();
    compose
        .wait_leader(&[1, 2, 3], Duration::from_secs(30))
        .await;
    let client = compose.client(&[1, 2, 3]).await;
    client.set("greeting", "hello over tls").await.unwrap();
    wait_healthy_and_hosting(&compose, &client).await;
    let certs = compose.logs("certs");
    for id in 1..=5 {
        assert!(
            certs.contains(&format!("made /ca/conclave-{id}.pem")),
            "{certs}"
        );
    }
    // Each file only where it is needed: the CA's key in no node or media node, the node keys
    // in no media node.
    let has = |service: &str, file: &str| {
        let source = format!("{}:/certs/{file}", compose.container(service));
        let copy = tempfile::tempdir().expect("temp dir");
        Command::new("docker")
            .args(["cp", &source])
            .arg(copy.path().join(file))
            .output()
            .expect("docker cp")
            .status
            .success()
    };
    assert!(has("conclave-1", "conclave-2-key.pem") && has("media-1", "ca.pem"));
    assert!(
        !has("conclave-1", "ca-key.pem"),
        "a node holds the CA's key"
    );
    assert!(
        !has("media-1", "ca-key.pem"),
        "a media node holds the CA's key"
    );
    assert!(
        !has("media-1", "conclave-1-key.pem"),
        "a media node holds a node key"
    );

    // gRPC: a plaintext client gets nothing.
    let plain = Client::connect(&[compose.endpoint(1)]).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), plain.get("greeting")).await;
    assert!(
        !matches!(answer, Ok(Ok(Some(_)))),
        "a plaintext gRPC client read the value"
    );

    // RESP with redis-cli: over TLS with the CA, nothing in plaintext.
    let ca = compose.ca().display().to_string();
    let resp = compose.resp(3);
    let port = resp.rsplit_once(':').expect("port").1;
    let cli = |args: &[&str]| {
        Command::new("redis-cli")
            .args(["-p", port])
            .args(args)
            .output()
            .expect("redis-cli is missing: run scripts/setup-test-deps.sh")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let get = cli(&["--tls", "--cacert", &ca, "get", "greeting"]);
        if String::from_utf8_lossy(&get.stdout).trim() == "hello over tls" {
            break;
        }
        assert!(Instant::now() < deadline, "GET over TLS: {get:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let plain = cli(&["get", "greeting"]);
    assert!(
        !String::from_utf8_lossy(&plain.stdout).contains("hello over tls"),
        "a plaintext RESP client read the value: {plain:?}"
    );

    // Metrics: HTTPS with the CA, parsed; plain HTTP gets no metrics.
    let ca_path = compose.ca();
    for id in 1..=3 {
        let url = format!("https://{}/metrics", compose.metrics(id));
        let scraped = common::run_metrics_scraper(&url, Some(&ca_path));
        assert!(
            scraped.status.success(),
            "node {id}: {}",
            String::from_utf8_lossy(&scraped.stderr)
        );
        assert!(
            String::from_utf8_lossy(&scraped.stdout).contains("\"conclave_raft_term\""),
            "node {id}"
        );
    }
    let plain = http_get(&compose.metrics(1), "/metrics");
    assert!(!plain.contains("conclave_node_id"), "plain HTTP: {plain}");

    // The operation scripts reach every node through its own container, over TLS.
    let status = compose.script("status.sh", &[]);
    let views: Vec<serde_json::Value> = status
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(views.len(), 3, "{status}");
    assert!(views[0]["leader"].is_u64(), "{status}");
    assert!(
        views
            .iter()
            .all(|view| view.get("error").is_none() && view["leader"] == views[0]["leader"]),
        "{status}"
    );

    compose.compose_ok(&["down", "-v", "--remove-orphans"]);
    assert_eq!(compose.leftovers(), Vec::<String>::new());
}

/// One HTTP/1.1 GET, answered whole (the endpoint closes the connection after its answer).
fn http_get(address: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(address).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(socket, "GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").expect("send");
    let mut answer = String::new();
    // A TLS port closes (or resets) a plaintext request: what came before that is the answer.
    let _ = socket.read_to_string(&mut answer);
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_container_is_replaced_and_catches_up_when_started() {
    if !docker_available("a_killed_leader_container_is_replaced_and_catches_up_when_started") {
        return;
    }
    let _serial = serial().await;
    build_image();
    let compose = Compose::new("kill");
    compose.up();
    let old = compose
        .wait_leader(&[1, 2, 3], Duration::from_secs(30))
        .await as usize;
    // One client talks to the leader (its connection goes dead with the container, which
    // closes nothing), one to a follower (whose forwarded writes went to the leader).
    let survivors: Vec<usize> = (1..=3).filter(|id| *id != old).collect();
    let via_leader = Load::start_named(
        compose.client(&[old, survivors[0], survivors[1]]).await,
        "via-leader",
    );
    let load = Load::start(compose.client(&[survivors[0], survivors[1], old]).await);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let killed = Command::new("docker")
        .args(["kill", &compose.container(&format!("conclave-{old}"))])
        .output()
        .unwrap();
    assert!(killed.status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let leader = compose
            .wait_leader(&survivors, Duration::from_secs(15))
            .await as usize;
        if leader != old {
            eprintln!("node {leader} leads after node {old} was killed");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the survivors kept the dead leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = compose.client(&survivors).await;
    let written_while_down = client.set("while-down", "yes").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Started again, the old leader rejoins as a follower and catches up from its volume.
    compose.compose_ok(&["start", &format!("conclave-{old}")]);
    wait_caught_up(&compose, old, Duration::from_secs(30)).await;
    let back = compose.client(&[old]).await;
    let status = back.status().await.unwrap();
    assert!(status.applied >= written_while_down);
    assert_eq!(
        back.get_with("while-down", Consistency::Local)
            .await
            .unwrap()
            .map(|kv| kv.value),
        Some(b"yes".to_vec())
    );

    // The last writes may have been acknowledged after the catch-up above.
    for (name, load) in [("via a follower", load), ("via the leader", via_leader)] {
        let report = load.stop().await;
        eprintln!(
            "leader kill, client {name}: {} writes acknowledged, {} failed, slowest {} ms",
            report.acked.len(),
            report.failures.len(),
            report.slowest.as_millis()
        );
        assert!(report.failures.is_empty(), "{name}: {:?}", report.failures);
        assert!(report.acked.len() > 20);
        wait_caught_up(&compose, old, Duration::from_secs(30)).await;
        assert_all_present(&back, Consistency::Local, &report.acked).await;
    }

    // A node whose process dies (rather than being stopped by an operator, as `docker kill`
    // does) is brought back by the restart policy.
    let service = format!("conclave-{}", survivors[0]);
    let pid = compose.inspect(&service, "{{.State.Pid}}");
    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        eprintln!("restart policy not checked: the containers' processes are not visible here");
        return;
    }
    let crashed = Command::new("kill").args(["-9", &pid]).status().unwrap();
    if !crashed.success() {
        eprintln!("restart policy not checked: not allowed to kill the container's process");
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while compose.inspect(&service, "{{.RestartCount}} {{.State.Running}}") != "1 true" {
        assert!(Instant::now() < deadline, "{service} was not restarted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_caught_up(&compose, survivors[0], Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_fails_no_request_and_keeps_every_write() {
    if !docker_available("a_rolling_restart_fails_no_request_and_keeps_every_write") {
        return;
    }
    let _serial = serial().await;
    build_image();
    let compose = Compose::new("rolling");
    compose.up();
    compose
        .wait_leader(&[1, 2, 3], Duration::from_secs(30))
        .await;
    let client = compose.client(&[1, 2, 3]).await;
    let load = Load::start(client.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarts_before: Vec<String> = (1..=3)
        .map(|id| compose.inspect(&format!("conclave-{id}"), "{{.State.StartedAt}}"))
        .collect();

    compose.script("rolling-restart.sh", &[]);

    let report = load.stop().await;
    eprintln!(
        "rolling restart: {} writes acknowledged, {} failed, slowest {} ms",
        report.acked.len(),
        report.failures.len(),
        report.slowest.as_millis()
    );
    for (id, before) in (1..=3).zip(restarts_before) {
        let after = compose.inspect(&format!("conclave-{id}"), "{{.State.StartedAt}}");
        assert_ne!(after, before, "conclave-{id} was not restarted");
    }
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(report.acked.len() > 20);
    assert_all_present(&client, Consistency::Linearizable, &report.acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_volume_was_lost_is_replaced_and_catches_up() {
    if !docker_available("a_node_whose_volume_was_lost_is_replaced_and_catches_up") {
        return;
    }
    let _serial = serial().await;
    build_image();
    let compose = Compose::new("replace");
    compose.up();
    compose
        .wait_leader(&[1, 2, 3], Duration::from_secs(30))
        .await;
    let load = Load::start(compose.client(&[1, 3]).await);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Node 2's disk is lost: its container and volume go, and it comes back empty. It refuses
    // to rejoin as it was (it could vote with an empty log) and says what to do.
    compose.compose_ok(&["rm", "-sf", "conclave-2"]);
    let volume = format!("{}_data-2", compose.project);
    let removed = Command::new("docker")
        .args(["volume", "rm", &volume])
        .output()
        .unwrap();
    assert!(removed.status.success(), "volume {volume}");
    compose.compose_ok(&["up", "-d", "--no-deps", "conclave-2"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !compose.logs("conclave-2").contains("data was lost") {
        assert!(
            Instant::now() < deadline,
            "the emptied node did not refuse to rejoin:\n{}",
            compose.logs("conclave-2")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    compose.script("replace-node.sh", &["2"]);

    let report = load.stop().await;
    eprintln!(
        "node replacement: {} writes acknowledged, {} failed, slowest {} ms",
        report.acked.len(),
        report.failures.len(),
        report.slowest.as_millis()
    );
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(report.acked.len() > 20);
    // The new node 2 holds every acknowledged write in its own replica.
    wait_caught_up(&compose, 2, Duration::from_secs(30)).await;
    let replaced = compose.client(&[2]).await;
    assert_all_present(&replaced, Consistency::Local, &report.acked).await;
    let status = replaced.status().await.unwrap();
    assert_eq!(status.members.iter().filter(|m| m.voter).count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_grows_to_five_and_shrinks_back_online() {
    if !docker_available("the_cluster_grows_to_five_and_shrinks_back_online") {
        return;
    }
    let _serial = serial().await;
    build_image();
    let compose = Compose::new("scale");
    compose.up();
    compose
        .wait_leader(&[1, 2, 3], Duration::from_secs(30))
        .await;
    let client = compose.client(&[1, 2, 3]).await;
    let load = Load::start(client.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    compose.script("scale.sh", &["5"]);
    let status = compose.status(4).await.expect("node 4 answers");
    let voters: Vec<u64> = status
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.id)
        .collect();
    assert_eq!(voters, [1, 2, 3, 4, 5]);
    // The new nodes serve reads from their own replicas, and their media nodes registered.
    let mid = client.set("at-five", "5").await.unwrap();
    for id in [4, 5] {
        let node = compose.client(&[id]).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.status().await.unwrap().applied < mid {
            assert!(Instant::now() < deadline, "node {id} did not apply {mid}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let got = node.get_with("at-five", Consistency::Local).await.unwrap();
        assert_eq!(got.map(|kv| kv.value), Some(b"5".to_vec()));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.media_nodes(false).await.unwrap().len() < 5 {
        assert!(
            Instant::now() < deadline,
            "media-4 and media-5 never registered"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    compose.script("scale.sh", &["3"]);
    let report = load.stop().await;
    eprintln!(
        "grow to 5 and shrink to 3: {} writes acknowledged, {} failed, slowest {} ms",
        report.acked.len(),
        report.failures.len(),
        report.slowest.as_millis()
    );
    let status = compose.status(1).await.unwrap();
    let members: Vec<(u64, bool)> = status.members.iter().map(|m| (m.id, m.voter)).collect();
    assert_eq!(members, [(1, true), (2, true), (3, true)]);
    for service in ["conclave-4", "conclave-5", "media-4", "media-5"] {
        assert_eq!(compose.compose_ok(&["ps", "-q", service]).trim(), "");
    }
    assert!(compose
        .leftovers()
        .iter()
        .all(|l| !l.ends_with("_data-4") && !l.ends_with("_data-5")));
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_all_present(&client, Consistency::Linearizable, &report.acked).await;
}
