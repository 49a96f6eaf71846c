//! README's "run it" command: `conclave dev` brings up a local cluster that `ctl` can use, with
//! a quiet log (no warning or error while it starts and serves), and stops it cleanly on
//! SIGTERM.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{binary, serial_blocking};

fn ctl(endpoint: &str, args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .args(["ctl", "--endpoint", endpoint])
        .args(args)
        .output()
        .expect("run ctl")
}

#[test]
fn dev_cluster_serves_ctl_and_stops_on_sigterm() {
    let _serial = serial_blocking();
    let dir = tempfile::tempdir().unwrap();
    let base = common::free_ports(3);
    let resp_base = common::free_ports(3);
    let metrics_base = common::free_ports(3);
    let log_path = dir.path().join("dev.log");
    let mut dev = Command::new(binary())
        .args(["dev", "--base-port", &base.to_string()])
        .args(["--resp-base-port", &resp_base.to_string()])
        .args(["--metrics-base-port", &metrics_base.to_string()])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(dev.stdout.take().unwrap());
    let started = Instant::now();
    let mut banner = String::new();
    while !banner.contains("leader is node") {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "dev exited: {banner}"
        );
        banner.push_str(&line);
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    let first = format!("127.0.0.1:{base}");
    let third = format!("127.0.0.1:{}", base + 2);
    assert!(ctl(&first, &["put", "greeting", "hello"]).status.success());
    let got = ctl(
        &third,
        &["get", "greeting", "--consistency", "linearizable"],
    );
    assert!(got.status.success());
    assert_eq!(String::from_utf8_lossy(&got.stdout), "hello\n");
    let missing = ctl(&third, &["get", "nothing-here"]);
    assert_eq!(missing.status.code(), Some(1));
    let status = ctl(&third, &["status"]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    for field in ["id", "leader", "term", "applied", "members"] {
        assert!(json.get(field).is_some(), "status lacks {field}: {json}");
    }
    assert_eq!(json["members"].as_array().unwrap().len(), 3);
    // The value put over gRPC, read over the Redis protocol on another node.
    let mut redis = std::net::TcpStream::connect(("127.0.0.1", resp_base + 1)).unwrap();
    redis.write_all(b"GET greeting\r\n").unwrap();
    let mut reply = [0u8; 11];
    redis.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"$5\r\nhello\r\n");
    // Each node serves its metrics.
    let mut metrics = std::net::TcpStream::connect(("127.0.0.1", metrics_base + 2)).unwrap();
    metrics.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut text = String::new();
    metrics.read_to_string(&mut text).unwrap();
    assert!(text.contains("conclave_node_id 3\n"), "{text}");

    // What a healthy start and a served request logged (stopping the whole cluster makes each
    // node report the others gone, which is true).
    let started_log = std::fs::read_to_string(&log_path).unwrap();
    let _ = Command::new("kill").arg(dev.id().to_string()).status();
    let exit = dev.wait().unwrap();
    assert!(exit.success(), "dev exited with {exit}");
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
    assert!(rest.contains("conclave dev cluster stopped"), "{rest}");
    for id in 1..=3 {
        assert!(
            rest.contains(&format!("node {id} stopped (exit status: 0)")),
            "node {id} did not stop cleanly on SIGTERM: {rest}"
        );
    }
    for port in (base..base + 3).chain(metrics_base..metrics_base + 3) {
        assert!(
            TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} still held after dev stopped"
        );
    }
    // A healthy start says nothing a newcomer would read as a failure.
    let alarming: Vec<&str> = started_log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked"))
        .collect();
    assert!(
        alarming.is_empty(),
        "warnings on a healthy run:\n{}",
        alarming.join("\n")
    );
}
