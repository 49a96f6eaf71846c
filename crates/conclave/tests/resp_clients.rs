//! Real Redis clients against a real cluster: redis-cli, and redis-py running a LiveKit-like
//! session (`cluster-tests/resp_session.py`) in RESP2 and RESP3, also while the leader is killed.
//! `scripts/setup-test-deps.sh` (run by `scripts/test.sh`) installs both.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{serial, Cluster};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> PathBuf {
    let python = repo().join(".test-env/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-test-deps.sh (scripts/test.sh does)",
        python.display()
    );
    python
}

fn redis_cli() -> &'static str {
    assert!(
        Command::new("redis-cli").arg("--version").output().is_ok(),
        "redis-cli is missing: run scripts/setup-test-deps.sh (scripts/test.sh does)"
    );
    "redis-cli"
}

/// Runs the session script; panics with the tail of its output unless it succeeds.
fn run_session(nodes: &[String], extra: &[&str]) -> String {
    let output = Command::new(python())
        .arg(repo().join("cluster-tests/resp_session.py"))
        .args(["--nodes", &nodes.join(",")])
        .args(extra)
        .output()
        .expect("run resp_session.py");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail = &stderr[stderr.len().saturating_sub(4000)..];
    assert!(
        output.status.success(),
        "resp_session.py {extra:?} failed ({}):\n{tail}\n{stdout}",
        output.status
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_runs_a_livekit_session_in_resp2_and_resp3() {
    let _serial = serial().await;
    let cluster = Cluster::start_with_resp(3, &[]);
    cluster.wait_leader(Duration::from_secs(15)).await;
    let nodes: Vec<String> = (1..=3).map(|id| cluster.resp(id)).collect();
    for protocol in ["2", "3"] {
        let summary = tokio::task::block_in_place(|| {
            run_session(&nodes, &["--protocol", protocol, "--rounds", "2"])
        });
        assert!(summary.contains("\"rounds\": 2"), "{summary}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_session_on_surviving_nodes_keeps_working_while_the_leader_is_killed() {
    let _serial = serial().await;
    let mut cluster = Cluster::start_with_resp(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    // LiveKit talks to its own host's node: the session uses the two that survive.
    let nodes: Vec<String> = (1..=3)
        .filter(|id| *id != leader)
        .map(|id| cluster.resp(id))
        .collect();
    let session = std::thread::spawn(move || {
        run_session(&nodes, &["--protocol", "3", "--duration", "8", "--steps",
            "node_registry,room_lock,room_stores,participants,watch_multi_exec,nx_races,strings,pubsub"])
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.kill(leader);
    let summary = tokio::task::spawn_blocking(move || session.join().expect("session thread"))
        .await
        .unwrap();
    eprintln!("{summary}");
    assert_ne!(cluster.wait_leader(Duration::from_secs(15)).await, leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_sees_redis_replies() {
    let _serial = serial().await;
    let cluster = Cluster::start_with_resp(3, &[]);
    cluster.wait_leader(Duration::from_secs(15)).await;
    let address = cluster.resp(2);
    let (host, port) = address.rsplit_once(':').unwrap();
    let cli = |args: &[&str]| -> String {
        let output = Command::new(redis_cli())
            .args(["-h", host, "-p", port])
            .args(args)
            .output()
            .expect("run redis-cli");
        assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    // Output without a terminal is redis-cli's raw form: one value per line.
    for (args, expected) in [
        (&["PING"][..], "PONG\n"),
        (&["SET", "room:1", "hello world"], "OK\n"),
        (&["GET", "room:1"], "hello world\n"),
        (&["GET", "missing"], "\n"),
        (&["--no-raw", "GET", "missing"], "(nil)\n"),
        (&["HSET", "h", "a", "1", "b", "2"], "2\n"),
        (&["HGETALL", "h"], "a\n1\nb\n2\n"),
        (&["-3", "HGETALL", "h"], "a 1\nb 2\n"),
        (&["EXISTS", "room:1", "h", "nope"], "2\n"),
        (&["TTL", "room:1"], "-1\n"),
        (&["CONFIG", "GET", "maxmemory"], "maxmemory\n0\n"),
        (
            &["GET"],
            "ERR wrong number of arguments for 'get' command\n\n",
        ),
        (
            &["FOO", "bar"],
            "ERR unknown command 'FOO', with args beginning with: 'bar' \n\n",
        ),
    ] {
        assert_eq!(cli(args), expected, "redis-cli {args:?}");
    }
    // Commands piped on stdin run in order on one connection.
    let mut child = Command::new(redis_cli())
        .args(["-h", host, "-p", port])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run redis-cli");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"SET x 1\nINCR x\nINCRBY x 40\nGET x\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8(output.stdout).unwrap(), "OK\n2\n42\n42\n");
    assert!(cli(&["INFO", "replication"]).contains("role:master"));
    assert!(cli(&["INFO"]).contains("conclave_raft_role:"));
    let mut scanned: Vec<String> = cli(&["--scan", "--pattern", "*"])
        .lines()
        .map(String::from)
        .collect();
    scanned.sort();
    assert_eq!(scanned, ["h", "room:1", "x"]);
}
