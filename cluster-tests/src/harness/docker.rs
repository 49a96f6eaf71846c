//! The docker harness: the store nodes of `deploy/docker-compose.yml` (image `conclave:latest`,
//! built by `deploy/build-image.sh`), as a compose project of its own (`conclave-chaos`, host
//! ports 27001-27003 for gRPC and 26381-26383 for RESP, so a `conclave dev` cluster or the
//! deploy tests can run beside it). Faults go through Docker: `docker kill -s KILL` and
//! `docker start`, `docker stop`, `docker pause`/`unpause`; a partition is an iptables rule in
//! the receiving container's network namespace (entered with nsenter, so the image needs no
//! iptables) dropping packets from the sender's container address; a node's disk is its volume;
//! its clock offset is a file `docker cp` writes into its data directory.
//!
//! Needs root (nsenter, iptables) and docker-compose.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use super::{Harness, NodeId};

const PROJECT: &str = "conclave-chaos";
/// Where each node reads its clock offset (`cluster-tests/docker-compose.chaos.yml` says so).
const CLOCK_FILE: &str = "/data/clock-offset";

pub struct DockerCluster {
    compose_file: PathBuf,
    /// The chaos suite's additions to it (the clock offset file).
    chaos_file: PathBuf,
    dir: PathBuf,
    ids: Vec<NodeId>,
    /// Nodes paused or stopped by a nemesis (Docker knows too; this saves asking it).
    paused: BTreeMap<NodeId, bool>,
    stopped: BTreeMap<NodeId, bool>,
    starts: BTreeMap<NodeId, u64>,
    /// Offsets last written, so healing writes only the ones that changed.
    clocks: BTreeMap<NodeId, i64>,
    /// Nodes whose network namespace holds partition rules.
    cut: Vec<NodeId>,
    /// Extra environment for compose: the RESP consistency.
    consistency: String,
}

fn run(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn docker(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("docker").args(args))
}

impl DockerCluster {
    /// The three store nodes of `repo/deploy/docker-compose.yml`, none started yet; node logs
    /// are saved under `dir` when the cluster is torn down.
    pub fn new(repo: &Path, dir: &Path, consistency: &str) -> anyhow::Result<DockerCluster> {
        docker(&["image", "inspect", "conclave:latest"])
            .context("no conclave:latest image: run deploy/build-image.sh (run.sh does)")?;
        let ids = vec![1, 2, 3];
        let cluster = DockerCluster {
            compose_file: repo.join("deploy/docker-compose.yml"),
            chaos_file: repo.join("cluster-tests/docker-compose.chaos.yml"),
            dir: dir.to_path_buf(),
            paused: ids.iter().map(|id| (*id, false)).collect(),
            stopped: ids.iter().map(|id| (*id, true)).collect(),
            starts: ids.iter().map(|id| (*id, 0)).collect(),
            clocks: ids.iter().map(|id| (*id, 0)).collect(),
            ids,
            cut: Vec::new(),
            consistency: consistency.to_string(),
        };
        // Left over from a run that died.
        let _ = cluster.compose(&["down", "-v", "--remove-orphans"]);
        Ok(cluster)
    }

    fn compose(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut command = Command::new("docker-compose");
        command
            .arg("-f")
            .arg(&self.compose_file)
            .arg("-f")
            .arg(&self.chaos_file)
            .args(["-p", PROJECT])
            .args(args)
            .env("CONCLAVE_RESP_CONSISTENCY", &self.consistency);
        for id in &self.ids {
            command
                .env(format!("CONCLAVE_GRPC_PORT_{id}"), (27000 + id).to_string())
                .env(format!("CONCLAVE_RESP_PORT_{id}"), (26380 + id).to_string());
        }
        run(&mut command)
    }

    fn container(id: NodeId) -> String {
        format!("{PROJECT}_conclave-{id}_1")
    }

    fn inspect(id: NodeId, format: &str) -> anyhow::Result<String> {
        docker(&["inspect", "-f", format, &Self::container(id)])
    }

    fn address(id: NodeId) -> anyhow::Result<String> {
        Self::inspect(
            id,
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        )
    }

    /// Runs iptables in the node's network namespace.
    fn iptables(id: NodeId, args: &[&str]) -> anyhow::Result<()> {
        let pid = Self::inspect(id, "{{.State.Pid}}")?;
        run(Command::new("nsenter")
            .args(["-t", &pid, "-n", "iptables", "-w", "5"])
            .args(args))
        .map(|_| ())
    }
}

impl Harness for DockerCluster {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn ids(&self) -> Vec<NodeId> {
        self.ids.clone()
    }

    fn grpc(&self, id: NodeId) -> String {
        format!("127.0.0.1:{}", 27000 + id)
    }

    fn resp(&self, id: NodeId) -> String {
        format!("127.0.0.1:{}", 26380 + id)
    }

    fn peer_address(&self, id: NodeId) -> String {
        format!("conclave-{id}:7000")
    }

    fn start(&mut self, id: NodeId) -> anyhow::Result<()> {
        if !self.stopped[&id] {
            return Ok(());
        }
        self.compose(&["up", "-d", "--no-deps", &format!("conclave-{id}")])?;
        self.stopped.insert(id, false);
        self.paused.insert(id, false);
        *self.starts.entry(id).or_default() += 1;
        Ok(())
    }

    fn starts(&self, id: NodeId) -> u64 {
        self.starts[&id]
    }

    fn kill(&mut self, id: NodeId) {
        if self.paused[&id] {
            self.resume(id);
        }
        let _ = docker(&["kill", "-s", "KILL", &Self::container(id)]);
        self.stopped.insert(id, true);
    }

    fn stop(&mut self, id: NodeId) {
        if self.paused[&id] {
            self.resume(id);
        }
        let _ = docker(&["stop", "-t", "10", &Self::container(id)]);
        self.stopped.insert(id, true);
    }

    fn pause(&mut self, id: NodeId) {
        if !self.stopped[&id] && docker(&["pause", &Self::container(id)]).is_ok() {
            self.paused.insert(id, true);
        }
    }

    fn resume(&mut self, id: NodeId) {
        if self.paused[&id] {
            let _ = docker(&["unpause", &Self::container(id)]);
            self.paused.insert(id, false);
        }
    }

    fn running(&self, id: NodeId) -> bool {
        !self.stopped[&id] && !self.paused[&id]
    }

    fn log_tail(&self, id: NodeId, lines: usize) -> Option<String> {
        // The node logs to stderr; `docker logs` replays it on its own stderr.
        let output = Command::new("docker")
            .args(["logs", "--tail", &lines.to_string(), &Self::container(id)])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        Some(
            String::from_utf8_lossy(&output.stderr)
                .trim_end()
                .to_string(),
        )
    }

    fn wipe(&mut self, id: NodeId) -> anyhow::Result<()> {
        self.kill(id);
        self.compose(&["rm", "-f", "-s", &format!("conclave-{id}")])?;
        docker(&["volume", "rm", &format!("{PROJECT}_data-{id}")])?;
        self.clocks.insert(id, 0);
        Ok(())
    }

    fn cut(&mut self, links: &[(NodeId, NodeId)]) -> anyhow::Result<()> {
        for (from, to) in links {
            let source = Self::address(*from)?;
            Self::iptables(*to, &["-A", "INPUT", "-s", &source, "-j", "DROP"])?;
            if !self.cut.contains(to) {
                self.cut.push(*to);
            }
        }
        Ok(())
    }

    fn heal(&mut self) -> anyhow::Result<()> {
        for id in std::mem::take(&mut self.cut) {
            // A node restarted since has a new namespace without the rules.
            let _ = Self::iptables(id, &["-F", "INPUT"]);
        }
        Ok(())
    }

    fn set_clock_offset(&mut self, id: NodeId, offset_ms: i64) -> anyhow::Result<()> {
        if self.clocks[&id] == offset_ms {
            return Ok(());
        }
        let staged = self.dir.join(format!("clock{id}"));
        std::fs::write(&staged, offset_ms.to_string())?;
        let target = format!("{}:{CLOCK_FILE}", Self::container(id));
        // Works on a stopped container too (the file lands in its volume).
        docker(&["cp", &staged.to_string_lossy(), &target])?;
        self.clocks.insert(id, offset_ms);
        Ok(())
    }
}

impl Drop for DockerCluster {
    fn drop(&mut self) {
        for id in self.ids.clone() {
            let logs = Command::new("docker")
                .args(["logs", "--tail", "5000", &Self::container(id)])
                .output();
            if let Ok(logs) = logs {
                let mut text = logs.stdout;
                text.extend_from_slice(&logs.stderr);
                let _ = std::fs::write(self.dir.join(format!("node{id}.log")), text);
            }
        }
        let _ = self.compose(&["down", "-v", "--remove-orphans"]);
    }
}
