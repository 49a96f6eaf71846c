//! What an operator watches: the Prometheus endpoint (scraped over HTTP and parsed with the
//! Prometheus project's own Python text parser, `cluster-tests/scrape_metrics.py`), the
//! standard gRPC health and reflection services, and `ctl status --cluster`.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::resp::{Frame, RespConnection};
use common::{binary, free_port, serial, Cluster};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One parsed sample.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: serde_json::Map<String, serde_json::Value>,
    value: f64,
}

/// Scrapes `address`'s /metrics through the maintained parser; panics if it does not parse.
fn scrape(address: &str) -> Vec<Sample> {
    let output = common::run_metrics_scraper(&format!("http://{address}/metrics"), None);
    assert!(
        output.status.success(),
        "the metrics did not parse: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            Sample {
                name: v["name"].as_str().expect("name").to_string(),
                labels: v["labels"].as_object().expect("labels").clone(),
                value: v["value"].as_f64().expect("value"),
            }
        })
        .collect()
}

/// The value of the sample `name` whose labels include `labels`, if there is one.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).and_then(|x| x.as_str()) == Some(*v))
        })
        .map(|s| s.value)
}

/// The metric names in a dashboard's queries (`conclave_*` and `process_*` identifiers).
fn metric_names(dashboard: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = dashboard.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &dashboard[at..];
        let starts = rest.starts_with("conclave_") || rest.starts_with("process_");
        let boundary = at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        if starts && boundary {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.push(rest[..len].to_string());
            at += len;
        } else {
            at += 1;
        }
    }
    names.sort();
    names.dedup();
    names
}

/// A 3-node cluster with RESP, each node serving metrics on a port of its own.
fn cluster_with_metrics() -> (Cluster, Vec<String>) {
    let mut cluster = Cluster::define(3, &[], true);
    let mut metrics = Vec::new();
    for id in 1..=3 {
        let address = format!("127.0.0.1:{}", free_port());
        let node = cluster.nodes.get_mut(&id).expect("defined");
        node.extra_args
            .extend(["--metrics".to_string(), address.clone()]);
        metrics.push(address);
        cluster.restart(id);
    }
    (cluster, metrics)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_what_was_sent_and_show_a_leader_change() {
    let _serial = serial().await;
    let (mut cluster, metrics) = cluster_with_metrics();
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    // Scrape a node that will survive the leader's death.
    let watched = (1..=3).find(|id| *id != leader).expect("a follower");
    let endpoint = &metrics[(watched - 1) as usize];

    // Known traffic to the watched node: 37 SETs and 5 GETs over RESP, 11 Sets over gRPC.
    let mut resp = RespConnection::connect(&cluster.resp(watched));
    for i in 0..37 {
        let key = format!("k{i}");
        assert_eq!(
            resp.call(&[b"SET", key.as_bytes(), b"v"]),
            Frame::status("OK")
        );
    }
    for _ in 0..5 {
        assert_eq!(resp.call(&[b"GET", b"k1"]), Frame::bulk("v"));
    }
    let client = cluster.client(watched).await;
    let mut last = 0;
    for i in 0..11 {
        last = client.set(format!("g{i}"), "v").await.expect("gRPC set");
    }
    cluster
        .wait_applied(watched, last, Duration::from_secs(10))
        .await;

    let before = scrape(endpoint);
    let count = |samples: &[Sample], api: &str, method: &str| {
        value(
            samples,
            "conclave_request_duration_seconds_count",
            &[("api", api), ("method", method)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(count(&before, "resp", "set"), 37.0);
    assert_eq!(count(&before, "resp", "get"), 5.0);
    assert_eq!(count(&before, "grpc", "/conclave.v1.Kv/Set"), 11.0);
    assert_eq!(
        value(&before, "conclave_resp_commands_total", &[]),
        Some(42.0)
    );
    assert_eq!(value(&before, "conclave_resp_connections", &[]), Some(1.0));
    assert_eq!(
        value(&before, "conclave_raft_role", &[("role", "follower")]),
        Some(1.0)
    );
    assert_eq!(
        value(&before, "conclave_raft_leader_id", &[]),
        Some(leader as f64)
    );
    let applied = value(&before, "conclave_raft_applied_index", &[]).expect("applied");
    assert!(
        applied >= last as f64,
        "applied index {applied}, last write {last}"
    );
    assert!(value(&before, "process_resident_memory_bytes", &[]).expect("rss") > 1e6);
    let changes_before =
        value(&before, "conclave_raft_leader_changes_total", &[]).expect("leader changes");
    let term_before = value(&before, "conclave_raft_term", &[]).expect("term");
    // The leader reports how far behind each member is.
    let led = scrape(&metrics[(leader - 1) as usize]);
    for id in 1..=3 {
        let lag = value(
            &led,
            "conclave_raft_replication_lag_entries",
            &[("member", &id.to_string())],
        );
        assert!(lag.is_some(), "no replication lag for member {id}");
    }
    assert_eq!(
        value(&led, "conclave_raft_role", &[("role", "leader")]),
        Some(1.0)
    );

    // Every metric the Grafana dashboard in deploy/ charts is one the nodes serve.
    let dashboard = std::fs::read_to_string(repo().join("deploy/grafana/conclave.json"))
        .expect("the dashboard");
    let served: std::collections::HashSet<&str> = before
        .iter()
        .chain(led.iter())
        .map(|s| s.name.as_str())
        .collect();
    for name in metric_names(&dashboard) {
        assert!(
            served.contains(name.as_str()),
            "the dashboard charts {name}, which no node serves"
        );
    }

    cluster.kill(leader);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = scrape(endpoint);
        let leader_now = value(&now, "conclave_raft_leader_id", &[]).unwrap_or(0.0);
        let changes = value(&now, "conclave_raft_leader_changes_total", &[]).unwrap_or(0.0);
        let term = value(&now, "conclave_raft_term", &[]).unwrap_or(0.0);
        if leader_now != 0.0 && leader_now != leader as f64 {
            assert!(changes > changes_before, "{changes} after {changes_before}");
            assert!(term > term_before, "term {term} after {term_before}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the metrics never showed a new leader\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metrics_endpoint_answers_other_paths_and_methods_in_http() {
    let _serial = serial().await;
    let (cluster, metrics) = cluster_with_metrics();
    cluster.wait_leader(Duration::from_secs(20)).await;
    let ask = |request: &str| {
        use std::io::{Read, Write};
        let mut socket = std::net::TcpStream::connect(&metrics[0]).expect("connect");
        socket.write_all(request.as_bytes()).expect("send");
        let mut answer = String::new();
        socket.read_to_string(&mut answer).expect("read");
        answer
    };
    assert!(ask("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(ask("POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 405"));
    let head = ask("HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.ends_with("\r\n\r\n"),
        "HEAD must carry no body: {head}"
    );
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    assert!(ask(&huge).starts_with("HTTP/1.1 431"));
    // Eight scrapes at once: eight connections that send nothing hold every turn, and the
    // next scrape is told to come back.
    let silent: Vec<std::net::TcpStream> = (0..8)
        .map(|_| std::net::TcpStream::connect(&metrics[0]).expect("connect"))
        .collect();
    let busy = ask("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
    drop(silent);
    // Still serving, once the silent ones are gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ask("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 200") {
        assert!(
            Instant::now() < deadline,
            "no scrape answered after the silent ones closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!scrape(&metrics[0]).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_health_service_follows_the_node_and_reflection_lists_the_api() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let _serial = serial().await;
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let survivor = (1..=3).find(|id| *id != leader).expect("a follower");
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.endpoint(survivor)))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
    let mut health = HealthClient::new(channel.clone());
    let status = |health: &mut HealthClient<tonic::transport::Channel>| {
        let mut health = health.clone();
        async move {
            health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .expect("health check")
                .into_inner()
                .status()
        }
    };
    // NOT_SERVING until the node has been seen to know its leader (polled every 250 ms).
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(&mut health).await != ServingStatus::Serving {
        assert!(Instant::now() < deadline, "never SERVING with a leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Without a quorum the node knows no leader for long: it reports NOT_SERVING.
    let other = (1..=3)
        .find(|id| *id != leader && *id != survivor)
        .expect("third");
    cluster.kill(leader);
    cluster.kill(other);
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&mut health).await != ServingStatus::NotServing {
        assert!(Instant::now() < deadline, "still SERVING without a quorum");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("answer")
        .expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["conclave.v1.Kv", "conclave.v1.Cluster", "conclave.v1.Rooms"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not in {names:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ctl_status_cluster_shows_every_member_and_which_one_is_down() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let survivor = (1..=3).find(|id| *id != leader).expect("a follower");
    let endpoint = cluster.endpoint(survivor);
    let ctl = |args: &[&str]| {
        Command::new(binary())
            .args(["ctl", "--endpoint", &endpoint, "status", "--cluster"])
            .args(args)
            .output()
            .expect("run ctl")
    };
    let table = ctl(&[]);
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    let text = String::from_utf8_lossy(&table.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].contains("ROLE") && lines[0].contains("HEALTH"),
        "{text}"
    );
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(
        lines.iter().filter(|l| l.contains(" leader ")).count(),
        1,
        "{text}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.trim_end().ends_with("ok"))
            .count(),
        3,
        "{text}"
    );

    cluster.kill(leader);
    cluster.wait_leader(Duration::from_secs(20)).await;
    let json = ctl(&["--json"]);
    assert_eq!(json.status.code(), Some(1), "a member is down: exit 1");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&json.stdout).expect("a JSON array");
    assert_eq!(rows.len(), 3);
    for row in &rows {
        let id = row["id"].as_u64().expect("id");
        let health = row["health"].as_str().expect("health");
        if id == leader {
            assert_eq!(health, "unreachable", "{row}");
            assert!(row["role"].is_null());
        } else {
            assert_eq!(health, "ok", "{row}");
            assert!(row["lag"].as_u64().is_some());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_json_logs_every_line_a_node_writes_is_one_json_object() {
    let _serial = serial().await;
    // Three nodes, started one after another: the first logs that it waits for the others.
    let mut cluster = Cluster::define(3, &["--log-format", "json"], false);
    for id in 1..=3 {
        cluster.restart(id);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    cluster.wait_leader(Duration::from_secs(20)).await;
    cluster.stop(1);
    let log = std::fs::read_to_string(cluster.dir.path().join("node1.log")).expect("log");
    let mut messages = Vec::new();
    for line in log.lines() {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        assert!(event["level"].is_string(), "{line}");
        messages.push(event["message"].as_str().unwrap_or_default().to_string());
    }
    for expected in ["node serving gRPC (clients and peers)", "node stopped"] {
        assert!(
            messages.iter().any(|m| m == expected),
            "no {expected:?} in {messages:?}"
        );
    }
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("node 1: waiting for 2 of the 3 nodes")),
        "{messages:?}"
    );
}
