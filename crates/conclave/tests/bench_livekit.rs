//! `conclave bench livekit` runs the same LiveKit workload against a Conclave cluster and a real
//! redis-server: every kind of operation happens, no command fails, and the result line parses.
//! (The figures themselves are not checked: tests never assert on speed.)

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{binary, free_port, serial, Cluster};

/// Runs a short bench against `endpoints`; the report's JSON and the result line's fields.
fn bench(endpoints: &str) -> (serde_json::Value, HashMap<String, String>) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let output = Command::new(binary())
        .args(["bench", "livekit", "--rooms", "6", "--media-nodes", "3"])
        .args(["--warmup", "2s", "--duration", "5s", "--resp", endpoints])
        // Fast enough that every event happens within seconds.
        .args(["--churn-interval", "2s", "--room-lifetime", "4s"])
        .args([
            "--rpc-interval",
            "1s",
            "--participant-update-interval",
            "2s",
        ])
        .arg("--json")
        .arg(&json)
        .stdin(Stdio::null())
        .output()
        .expect("run conclave bench livekit");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result = stdout
        .lines()
        .last()
        .filter(|l| l.starts_with("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line last:\n{stdout}"));
    let fields: HashMap<String, String> = result
        .trim_start_matches("RESULT ")
        .split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("key=value");
            (k.to_string(), v.to_string())
        })
        .collect();
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    (report, fields)
}

fn check(report: &serde_json::Value, fields: &HashMap<String, String>, system: &str) {
    for key in [
        "rooms",
        "deadline_misses",
        "errors",
        "storage_p99_ms",
        "pubsub_p99_ms",
        "claim_p99_ms",
    ] {
        let value = fields
            .get(key)
            .unwrap_or_else(|| panic!("{system}: no {key} in {fields:?}"));
        assert!(value.parse::<f64>().is_ok(), "{system}: {key}={value}");
    }
    assert_eq!(fields["rooms"], "6");
    assert_eq!(
        fields["errors"], "0",
        "{system}: commands failed: {}",
        report["errors"]
    );
    for operation in report["operations"].as_array().unwrap() {
        assert!(
            operation["count"].as_u64().unwrap() > 0,
            "{system}: no {} operation happened: {report}",
            operation["kind"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_livekit_bench_exercises_every_operation_against_conclave_and_redis() {
    let _serial = serial().await;
    let cluster = Cluster::start_with_resp(3, &[]);
    cluster.wait_leader(Duration::from_secs(15)).await;
    let endpoints: Vec<String> = (1..=3).map(|id| cluster.resp(id)).collect();
    let (report, fields) = bench(&endpoints.join(","));
    check(&report, &fields, "conclave");

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (scripts/setup-test-deps.sh installs it)");
    let address = format!("127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&address).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (report, fields) = bench(&address);
    let _ = redis.kill();
    let _ = redis.wait();
    check(&report, &fields, "redis-server");
}
