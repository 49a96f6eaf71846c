//! A harness that runs real `conclave server` processes on loopback ports, kills them with
//! SIGKILL and restarts them from their data directories.

#![allow(dead_code)]

pub mod compose;
pub mod resp;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use conclave_client::{v1, Client};

/// Clusters share two cores: scenarios run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Retries `attempt` until it gives Some, for up to `within`; panics naming `what` after that.
pub async fn eventually<T>(
    within: Duration,
    what: &str,
    mut attempt: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Holds the scenario lock in an async test.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// Holds the scenario lock in a plain test.
pub fn serial_blocking() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.blocking_lock()
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_conclave")
}

/// The media-node simulator (`examples/media_node.rs`), which `cargo test` builds beside the
/// binary.
pub fn media_node_binary() -> PathBuf {
    let bin = PathBuf::from(binary());
    let path = bin
        .parent()
        .expect("binary has a directory")
        .join("examples")
        .join("media_node");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test` (which builds examples)",
        path.display()
    );
    path
}

/// A free loopback port for a node to take (see [`free_ports`]).
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `count` consecutive loopback ports that are free now and that this test
/// process has not handed out before. They come from below the kernel's ephemeral range
/// (32768-60999 by default), never from `bind(0)`: a port that `bind(0)` picked and released can
/// be picked again by the next `bind(0)` or taken by any outgoing connection before the node
/// binds it (CI once saw two nodes of one cluster handed one port, and one of them talk to
/// itself as its peer).
pub fn free_ports(count: u16) -> u16 {
    const FIRST: u32 = 10_000;
    const END: u32 = 32_000;
    static NEXT: std::sync::Mutex<Option<u32>> = std::sync::Mutex::new(None);
    let mut next = NEXT.lock().expect("port lock poisoned");
    let count = u32::from(count);
    // Test processes run one after another; starting where the pid says keeps two that overlap
    // (a leftover node, another checkout's tests) apart too.
    let mut base = next.unwrap_or(FIRST + std::process::id() * 7919 % (END - FIRST));
    for _ in 0..(END - FIRST) {
        if base + count > END {
            base = FIRST;
        }
        let free =
            (base..base + count).all(|port| TcpListener::bind(("127.0.0.1", port as u16)).is_ok());
        if free {
            *next = Some(base + count);
            return base as u16;
        }
        base += 1;
    }
    panic!("no {count} free consecutive ports between {FIRST} and {END}");
}

pub struct NodeProcess {
    pub id: u64,
    pub address: String,
    pub data_dir: PathBuf,
    pub extra_args: Vec<String>,
    pub join: bool,
    /// Where the node serves the Redis protocol, if it does.
    pub resp: Option<String>,
    child: Option<Child>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub initial_cluster: String,
    pub nodes: BTreeMap<u64, NodeProcess>,
    /// What the harness's own clients (status, leader waits) authenticate with.
    pub credentials: Option<conclave_client::Credentials>,
}

impl Cluster {
    /// Starts `size` nodes (ids 1..=size) that bootstrap one cluster; `extra` goes to each.
    pub fn start(size: u64, extra: &[&str]) -> Cluster {
        Self::start_with(size, extra, false)
    }

    /// Starts `size` nodes that also serve the Redis protocol, each on a port of its own.
    pub fn start_with_resp(size: u64, extra: &[&str]) -> Cluster {
        Self::start_with(size, extra, true)
    }

    fn start_with(size: u64, extra: &[&str], resp: bool) -> Cluster {
        let mut cluster = Self::define(size, extra, resp);
        for id in 1..=size {
            cluster.restart(id);
        }
        cluster
    }

    /// Defines `size` nodes (ids 1..=size) listed in one `--initial-cluster`, none started.
    pub fn define(size: u64, extra: &[&str], resp: bool) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let addresses: BTreeMap<u64, String> = (1..=size)
            .map(|id| (id, format!("127.0.0.1:{}", free_port())))
            .collect();
        let initial_cluster = addresses
            .iter()
            .map(|(id, a)| format!("{id}={a}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            dir,
            initial_cluster,
            nodes: BTreeMap::new(),
            credentials: None,
        };
        for (id, address) in addresses {
            cluster.add_process(id, address, extra, false);
            if resp {
                let node = cluster.nodes.get_mut(&id).expect("just added");
                node.resp = Some(format!("127.0.0.1:{}", free_port()));
            }
        }
        cluster
    }

    /// Registers a node process (not started) with its own data directory.
    pub fn add_process(&mut self, id: u64, address: String, extra: &[&str], join: bool) {
        let data_dir = self.dir.path().join(format!("node{id}"));
        self.nodes.insert(
            id,
            NodeProcess {
                id,
                address,
                data_dir,
                extra_args: extra.iter().map(|s| s.to_string()).collect(),
                join,
                resp: None,
                child: None,
            },
        );
    }

    /// The command line that runs node `id`.
    pub fn command(&self, id: u64) -> Command {
        let node = &self.nodes[&id];
        let mut initial = self.initial_cluster.clone();
        if !initial.split(',').any(|m| m.starts_with(&format!("{id}="))) {
            initial.push_str(&format!(",{id}={}", node.address));
        }
        let mut command = Command::new(binary());
        // Settings come from this command line only, not from the environment tests run in.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CONCLAVE_") {
                command.env_remove(key);
            }
        }
        command
            .arg("server")
            .args(["--id", &id.to_string()])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--listen", &node.address])
            .args(["--initial-cluster", &initial])
            .args(&node.extra_args);
        if let Some(resp) = &node.resp {
            command.args(["--resp", resp]);
        }
        if node.join {
            command.arg("--join");
        }
        command
    }

    /// Starts (or restarts) node `id` from its data directory; its output goes to a log file.
    pub fn restart(&mut self, id: u64) {
        let log_path = self.dir.path().join(format!("node{id}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file");
        let child = self
            .command(id)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn conclave server");
        self.nodes.get_mut(&id).unwrap().child = Some(child);
    }

    /// SIGKILL node `id` and reap it.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes.get_mut(&id).unwrap().child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits up to `timeout` for node `id`'s process to exit by itself; returns how it ended.
    pub fn wait_exit(&mut self, id: u64, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let node = self.nodes.get_mut(&id).unwrap();
            let child = node.child.as_mut()?;
            if let Some(status) = child.try_wait().expect("try_wait") {
                node.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends node `id` SIGTERM without waiting for it to exit.
    pub fn terminate(&self, id: u64) {
        self.signal(id, "-TERM");
    }

    /// Stops node `id` the way an operator does (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self, id: u64) {
        self.signal(id, "-TERM");
        if let Some(mut child) = self.nodes.get_mut(&id).unwrap().child.take() {
            let _ = child.wait();
        }
    }

    /// Freezes node `id` (SIGSTOP): it holds its connections but processes nothing, like a
    /// node stalled by its host.
    pub fn pause(&self, id: u64) {
        self.signal(id, "-STOP");
    }

    /// Lets a paused node go on (SIGCONT).
    pub fn resume(&self, id: u64) {
        self.signal(id, "-CONT");
    }

    fn signal(&self, id: u64, signal: &str) {
        let child = self.nodes[&id].child.as_ref().expect("node is running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} node {id}");
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.nodes[&id].child.is_some()
    }

    /// Node `id`'s RESP address (the cluster was started with [`Cluster::start_with_resp`]).
    pub fn resp(&self, id: u64) -> String {
        self.nodes[&id].resp.clone().expect("the node serves RESP")
    }

    pub fn endpoint(&self, id: u64) -> String {
        self.nodes[&id].address.clone()
    }

    /// A client bound to node `id` only (no failover).
    pub async fn client(&self, id: u64) -> Client {
        self.connect([self.endpoint(id)]).await
    }

    /// A client of `endpoints` with the harness's credentials.
    async fn connect<I: IntoIterator<Item = String>>(&self, endpoints: I) -> Client {
        let options = conclave_client::ConnectOptions {
            tls: None,
            credentials: self.credentials.clone(),
        };
        Client::connect_with(endpoints, options)
            .await
            .expect("client")
    }

    /// A client preferring node `id` and failing over to the others.
    pub async fn client_preferring(&self, id: u64) -> Client {
        let mut endpoints = vec![self.endpoint(id)];
        endpoints.extend(
            self.nodes
                .keys()
                .filter(|other| **other != id)
                .map(|other| self.endpoint(*other)),
        );
        self.connect(endpoints).await
    }

    /// Every endpoint, comma-separated, node `id`'s first.
    pub fn endpoints_preferring(&self, id: u64) -> String {
        let mut endpoints = vec![self.endpoint(id)];
        endpoints.extend(
            self.nodes
                .keys()
                .filter(|other| **other != id)
                .map(|other| self.endpoint(*other)),
        );
        endpoints.join(",")
    }

    /// Node `id`'s status, if it answers.
    pub async fn status(&self, id: u64) -> Option<v1::StatusResponse> {
        let client = self.client(id).await;
        tokio::time::timeout(Duration::from_secs(1), client.status())
            .await
            .ok()?
            .ok()
    }

    /// Waits until every running node agrees on one leader that is running; returns it.
    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        let started = Instant::now();
        loop {
            let mut leaders = Vec::new();
            for id in self.nodes.keys().copied().filter(|id| self.is_running(*id)) {
                leaders.push(self.status(id).await.and_then(|s| s.leader));
            }
            if let Some(Some(first)) = leaders.first() {
                if leaders.iter().all(|l| *l == Some(*first)) && self.is_running(*first) {
                    return *first;
                }
            }
            assert!(
                started.elapsed() < timeout,
                "no agreed leader within {timeout:?}: {leaders:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until node `id` has applied at least `revision`.
    pub async fn wait_applied(&self, id: u64, revision: u64, timeout: Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.status(id).await {
                if status.applied >= revision {
                    return;
                }
            }
            assert!(
                started.elapsed() < timeout,
                "node {id} did not apply revision {revision} within {timeout:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The tail of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for id in self.nodes.keys() {
            let path = self.dir.path().join(format!("node{id}.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            // A panic explains what follows it, however far back it is.
            let lines: Vec<&str> = text.lines().collect();
            for (at, _) in lines
                .iter()
                .enumerate()
                .filter(|(_, l)| l.contains("panicked at"))
            {
                out.push_str(&format!("--- node {id} panicked ---\n"));
                for line in lines.iter().skip(at).take(3) {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- node {id} log (last lines) ---\n"));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }
}

/// A linearizable read of a string through node `id`'s client.
pub async fn read_linearizable(client: &Client, key: &str) -> Option<Vec<u8>> {
    client
        .get_with(key, conclave_client::Consistency::Linearizable)
        .await
        .expect("linearizable read")
        .map(|kv| kv.value)
}

/// Runs `command`, expecting it to exit by itself within `timeout`; a process still running then
/// is killed and reported as having started instead of exiting.
pub fn run_to_exit(mut command: Command, timeout: Duration) -> std::process::Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > timeout {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "the process kept running instead of exiting: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// Starts `size` nodes, each reading its wall clock's offset from a file of its own (returned
/// by node id); writing milliseconds into a file steps that node's clock while it runs.
pub fn start_with_clock_offsets(
    size: u64,
    extra: &[&str],
    resp: bool,
) -> (Cluster, BTreeMap<u64, PathBuf>) {
    let mut cluster = Cluster::define(size, extra, resp);
    let mut offsets = BTreeMap::new();
    for id in 1..=size {
        let path = cluster.dir.path().join(format!("node{id}.clock-offset"));
        std::fs::write(&path, "0").unwrap();
        let node = cluster.nodes.get_mut(&id).unwrap();
        node.extra_args.extend([
            "--clock-offset-file".to_string(),
            path.display().to_string(),
        ]);
        offsets.insert(id, path);
    }
    for id in 1..=size {
        cluster.restart(id);
    }
    (cluster, offsets)
}

/// Scrapes `url` with `cluster-tests/scrape_metrics.py` (the Prometheus project's own text
/// parser; one JSON line per sample), checking an HTTPS server against `ca`.
pub fn run_metrics_scraper(url: &str, ca: Option<&Path>) -> std::process::Output {
    let repo = compose::repo();
    let python = repo.join(".test-env/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-test-deps.sh (scripts/test.sh does)",
        python.display()
    );
    Command::new(python)
        .arg(repo.join("cluster-tests/scrape_metrics.py"))
        .arg(url)
        .args(ca)
        .output()
        .expect("run scrape_metrics.py")
}
