//! A harness for the docker-compose deployment in `deploy/`: the image built by
//! `deploy/build-image.sh`, a compose project of its own on free loopback ports, the operation
//! scripts run as an operator runs them, and a writer that keeps writing through all of it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use conclave_client::{Client, Consistency};

use super::free_port;

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether a Docker engine and compose answer here; if not, says why the test is skipped.
pub fn docker_available(test: &str) -> bool {
    let engine = Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    if !engine {
        eprintln!("SKIPPED {test}: no Docker engine answers (`docker info` failed)");
        return false;
    }
    if compose_command().is_none() {
        eprintln!("SKIPPED {test}: neither `docker compose` nor `docker-compose` is installed");
        return false;
    }
    true
}

/// `docker compose` (v2) if present, else `docker-compose` (v1).
fn compose_command() -> Option<Vec<&'static str>> {
    static FOUND: OnceLock<Option<Vec<&'static str>>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let works = |program: &str, args: &[&str]| {
                Command::new(program)
                    .args(args)
                    .output()
                    .is_ok_and(|o| o.status.success())
            };
            if works("docker", &["compose", "version"]) {
                Some(vec!["docker", "compose"])
            } else if works("docker-compose", &["version"]) {
                Some(vec!["docker-compose"])
            } else {
                None
            }
        })
        .clone()
}

/// Builds the image once per test run with `deploy/build-image.sh`; returns how long it took.
pub fn build_image() -> Duration {
    static BUILT: OnceLock<Duration> = OnceLock::new();
    *BUILT.get_or_init(|| {
        let started = Instant::now();
        let output = Command::new(repo().join("deploy/build-image.sh"))
            .output()
            .expect("run deploy/build-image.sh");
        assert!(
            output.status.success(),
            "deploy/build-image.sh failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        started.elapsed()
    })
}

/// One compose project of `deploy/docker-compose.yml` (and, with TLS, its TLS overlay), taken
/// down with its volumes on drop.
pub struct Compose {
    pub project: String,
    grpc: [u16; 5],
    resp: [u16; 5],
    metrics: [u16; 5],
    /// The compose files, `deploy/docker-compose.yml` first.
    files: Vec<PathBuf>,
    /// With TLS: where the cluster's CA is copied out of the project's certs volume.
    tls_dir: Option<tempfile::TempDir>,
}

impl Compose {
    /// A project named after the test, with ports of its own; nothing is started.
    pub fn new(test: &str) -> Compose {
        Self::with_files(test, &["deploy/docker-compose.yml"], None)
    }

    /// Like [`Compose::new`], with `deploy/docker-compose.tls.yml` on top: TLS on every port.
    pub fn with_tls(test: &str) -> Compose {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::with_files(
            test,
            &["deploy/docker-compose.yml", "deploy/docker-compose.tls.yml"],
            Some(dir),
        )
    }

    fn with_files(test: &str, files: &[&str], tls_dir: Option<tempfile::TempDir>) -> Compose {
        let compose = Compose {
            project: format!("conclave-test-{test}").replace('_', "-"),
            grpc: std::array::from_fn(|_| free_port()),
            resp: std::array::from_fn(|_| free_port()),
            metrics: std::array::from_fn(|_| free_port()),
            files: files.iter().map(|file| repo().join(file)).collect(),
            tls_dir,
        };
        // Leftovers of an earlier run that was killed before it could clean up.
        compose.compose(&["down", "-v", "--remove-orphans"]);
        compose
    }

    /// The environment the compose file and the operation scripts read.
    fn env(&self) -> Vec<(String, String)> {
        let files: Vec<String> = self.files.iter().map(|f| f.display().to_string()).collect();
        let mut env = vec![
            ("COMPOSE_PROJECT_NAME".to_string(), self.project.clone()),
            ("CONCLAVE_COMPOSE_FILE".to_string(), files.join(":")),
        ];
        for i in 0..5 {
            env.push((
                format!("CONCLAVE_GRPC_PORT_{}", i + 1),
                self.grpc[i].to_string(),
            ));
            env.push((
                format!("CONCLAVE_RESP_PORT_{}", i + 1),
                self.resp[i].to_string(),
            ));
            env.push((
                format!("CONCLAVE_METRICS_PORT_{}", i + 1),
                self.metrics[i].to_string(),
            ));
        }
        env
    }

    /// Runs compose with `args` on this project, every profile visible (so nodes 4 and 5 can be
    /// listed, stopped and removed).
    pub fn compose(&self, args: &[&str]) -> Output {
        self.run_compose(&["--profile", "five"], args)
    }

    fn run_compose(&self, options: &[&str], args: &[&str]) -> Output {
        let base = compose_command().expect("compose is installed");
        let mut command = Command::new(base[0]);
        command.args(&base[1..]);
        for file in &self.files {
            command.arg("-f").arg(file);
        }
        command
            .args(options)
            .args(args)
            .envs(self.env())
            .output()
            .expect("run compose")
    }

    /// Like [`Compose::compose`], failing the test if compose fails.
    pub fn compose_ok(&self, args: &[&str]) -> String {
        let output = self.compose(args);
        assert!(
            output.status.success(),
            "compose {args:?} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `compose up -d` as an operator types it: three nodes and their media nodes.
    pub fn up(&self) {
        let output = self.run_compose(&[], &["up", "-d"]);
        if !output.status.success() {
            // What each node's health check said, and the end of its log.
            let mut nodes = String::new();
            for id in 1..=3 {
                let service = format!("conclave-{id}");
                let health = self.inspect(&service, "{{json .State.Health}}");
                let logs = self.logs(&service);
                let tail: Vec<&str> = logs.lines().rev().take(30).collect();
                nodes.push_str(&format!("--- {service} health: {health}\n"));
                for line in tail.into_iter().rev() {
                    nodes.push_str(line);
                    nodes.push('\n');
                }
            }
            panic!(
                "compose up -d failed:\n{}\n{nodes}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    /// Runs `deploy/ops/<script>` with `args` on this project, failing the test if it fails.
    pub fn script(&self, script: &str, args: &[&str]) -> String {
        let started = Instant::now();
        let output = Command::new(repo().join("deploy/ops").join(script))
            .args(args)
            .envs(self.env())
            .output()
            .expect("run the operation script");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{script} {args:?} failed:\n{stderr}"
        );
        eprintln!(
            "{script} {args:?} took {:.1} s:\n{stderr}",
            started.elapsed().as_secs_f64()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The container of `service`.
    pub fn container(&self, service: &str) -> String {
        let id = self.compose_ok(&["ps", "-q", service]).trim().to_string();
        assert!(!id.is_empty(), "{service} has no container");
        id
    }

    /// `docker inspect -f FORMAT` of `service`'s container.
    pub fn inspect(&self, service: &str, format: &str) -> String {
        let output = Command::new("docker")
            .args(["inspect", "-f", format, &self.container(service)])
            .output()
            .expect("docker inspect");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// What `service` has printed.
    pub fn logs(&self, service: &str) -> String {
        let output = self.compose(&["logs", "--no-color", service]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Node `id`'s gRPC endpoint on loopback.
    pub fn endpoint(&self, id: usize) -> String {
        format!("127.0.0.1:{}", self.grpc[id - 1])
    }

    /// Node `id`'s metrics endpoint (HOST:PORT, serving /metrics) on loopback.
    pub fn metrics(&self, id: usize) -> String {
        format!("127.0.0.1:{}", self.metrics[id - 1])
    }

    /// Node `id`'s RESP address on loopback.
    pub fn resp(&self, id: usize) -> String {
        format!("127.0.0.1:{}", self.resp[id - 1])
    }

    /// With TLS: the cluster's CA (PEM file), copied out of node 1's container the first time.
    pub fn ca(&self) -> PathBuf {
        let dir = self.tls_dir.as_ref().expect("a TLS project");
        let ca = dir.path().join("ca.pem");
        if !ca.exists() {
            let source = format!("{}:/certs/ca.pem", self.container("conclave-1"));
            let output = Command::new("docker")
                .args(["cp", &source])
                .arg(&ca)
                .output()
                .expect("docker cp");
            assert!(
                output.status.success(),
                "docker cp {source}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        ca
    }

    /// A client of the listed nodes (the first preferred), over TLS in a TLS project.
    pub async fn client(&self, ids: &[usize]) -> Client {
        let endpoints: Vec<String> = ids.iter().map(|id| self.endpoint(*id)).collect();
        let tls = self.tls_dir.as_ref().map(|_| {
            let ca = std::fs::read(self.ca()).expect("read the CA");
            conclave_client::ClientTlsConfig::new()
                .ca_certificate(conclave_client::Certificate::from_pem(ca))
        });
        let options = conclave_client::ConnectOptions {
            tls,
            credentials: None,
        };
        Client::connect_with(&endpoints, options)
            .await
            .expect("client")
    }

    /// Node `id`'s status, if it answers.
    pub async fn status(&self, id: usize) -> Option<conclave_client::v1::StatusResponse> {
        let client = self.client(&[id]).await;
        tokio::time::timeout(Duration::from_secs(2), client.status())
            .await
            .ok()?
            .ok()
    }

    /// Waits until every listed node names the same leader; returns it.
    pub async fn wait_leader(&self, ids: &[usize], timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaders = Vec::new();
            for id in ids {
                leaders.push(self.status(*id).await.and_then(|s| s.leader));
            }
            if let Some(Some(leader)) = leaders.first() {
                if leaders.iter().all(|l| *l == Some(*leader)) {
                    return *leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no common leader within {timeout:?}: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// What Docker still holds of this project: containers, volumes, networks.
    pub fn leftovers(&self) -> Vec<String> {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let mut left = Vec::new();
        for (kind, args) in [
            ("container", vec!["ps", "-aq", "--filter", &label]),
            ("volume", vec!["volume", "ls", "-q", "--filter", &label]),
            ("network", vec!["network", "ls", "-q", "--filter", &label]),
        ] {
            let output = Command::new("docker").args(&args).output().expect("docker");
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                left.push(format!("{kind} {line}"));
            }
        }
        left
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Keep what failed readable in the test output.
            let output = self.compose(&["logs", "--no-color", "--tail", "40"]);
            eprintln!("{}", String::from_utf8_lossy(&output.stdout));
        }
        self.compose(&["down", "-v", "--remove-orphans", "-t", "2"]);
    }
}

/// Writes `<prefix>/<n>` keys one after another until stopped, recording what was acknowledged
/// and what failed, as a client application would see it.
pub struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<LoadReport>,
}

/// What a [`Load`] saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub acked: BTreeMap<String, String>,
    pub failures: Vec<String>,
    pub slowest: Duration,
}

impl Load {
    pub fn start(client: Client) -> Load {
        Self::start_named(client, "load")
    }

    pub fn start_named(client: Client, prefix: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let mut report = LoadReport::default();
            let mut n = 0u64;
            while !stopping.load(Ordering::Relaxed) {
                n += 1;
                let (key, value) = (format!("{prefix}/{n:06}"), format!("value-{n}"));
                let started = Instant::now();
                let result = client.set(&key, &value).await;
                report.slowest = report.slowest.max(started.elapsed());
                match result {
                    Ok(_) => {
                        report.acked.insert(key, value);
                    }
                    Err(e) => report.failures.push(format!("{key}: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            report
        });
        Load { stop, task }
    }

    /// Stops writing; what was acknowledged and what failed.
    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("load task")
    }
}

/// Asserts that every acknowledged write reads back from `client` at `consistency`.
pub async fn assert_all_present(
    client: &Client,
    consistency: Consistency,
    acked: &BTreeMap<String, String>,
) {
    for (key, value) in acked {
        let got = client
            .get_with(key, consistency)
            .await
            .expect("read")
            .map(|kv| kv.value);
        assert_eq!(
            got.as_deref(),
            Some(value.as_bytes()),
            "acknowledged write {key} is missing"
        );
    }
}
