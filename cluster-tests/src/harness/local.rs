//! The local harness: real `conclave server` processes on this machine, each on a loopback
//! address of its own (127.77.S.ID, S a slot per run), so that iptables rules on the source and
//! destination address cut exactly the links a partition names. A node's peer connections leave
//! from its listen address, which makes this work; clients connect from 127.0.0.1 and are never
//! cut off (as in Jepsen, a client keeps talking to the node it was given).
//!
//! Needs root for iptables (partitions only); every other fault is a signal or a file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use super::{Harness, NodeId};

/// Where this run's nodes live and how they are started.
pub struct LocalCluster {
    binary: PathBuf,
    /// The build the nodes run until each is upgraded (`--upgrade-from`; None: `binary`).
    earlier_binary: Option<PathBuf>,
    dir: PathBuf,
    slot: u16,
    initial_cluster: String,
    server_args: Vec<String>,
    nodes: BTreeMap<NodeId, Process>,
    /// The iptables chain holding this run's partition rules, once made.
    chain: Option<String>,
}

struct Process {
    child: Option<Child>,
    paused: bool,
    starts: u64,
    /// Runs `binary` from now on, not the earlier build.
    upgraded: bool,
}

impl LocalCluster {
    /// Defines `size` nodes under `dir`, started by `binary` with `server_args` added (none is
    /// started yet).
    pub fn new(binary: PathBuf, dir: &Path, size: u64, server_args: Vec<String>) -> LocalCluster {
        let slot = (std::process::id() % 200) as u16 + 20;
        let mut cluster = LocalCluster {
            binary,
            earlier_binary: None,
            dir: dir.to_path_buf(),
            slot,
            initial_cluster: String::new(),
            server_args,
            nodes: BTreeMap::new(),
            chain: None,
        };
        cluster.initial_cluster = (1..=size)
            .map(|id| format!("{id}={}", cluster.grpc(id)))
            .collect::<Vec<_>>()
            .join(",");
        for id in 1..=size {
            cluster.nodes.insert(
                id,
                Process {
                    child: None,
                    paused: false,
                    starts: 0,
                    upgraded: false,
                },
            );
        }
        cluster
    }

    /// Starts every node on `earlier` until [`Harness::upgrade`] moves it to the build under
    /// test.
    pub fn upgrading_from(mut self, earlier: PathBuf) -> LocalCluster {
        self.earlier_binary = Some(earlier);
        self
    }

    /// The build node `id` starts on.
    fn binary_of(&self, id: NodeId) -> &Path {
        match &self.earlier_binary {
            Some(earlier) if !self.nodes[&id].upgraded => earlier,
            _ => &self.binary,
        }
    }

    fn ip(&self, id: NodeId) -> String {
        format!("127.77.{}.{id}", self.slot)
    }

    fn port(&self) -> u16 {
        20000 + self.slot * 10
    }

    fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node{id}"))
    }

    fn clock_file(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("clock{id}"))
    }

    fn pid(&self, id: NodeId) -> Option<i32> {
        self.nodes[&id].child.as_ref().map(|c| c.id() as i32)
    }

    fn signal(&self, id: NodeId, signal: i32) {
        if let Some(pid) = self.pid(id) {
            // SAFETY: kill(2) on a child of ours; no memory is touched.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    fn reap(&mut self, id: NodeId) {
        let process = self.nodes.get_mut(&id).expect("known node");
        if let Some(mut child) = process.child.take() {
            let _ = child.wait();
        }
        process.paused = false;
    }

    fn iptables(args: &[&str]) -> anyhow::Result<()> {
        let status = Command::new("iptables")
            .args(["-w", "5"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running iptables (partitions need it, and root)")?;
        if !status.success() {
            bail!("iptables {} failed ({status})", args.join(" "));
        }
        Ok(())
    }

    /// This run's chain, made (and hooked into INPUT) on first use.
    fn chain(&mut self) -> anyhow::Result<String> {
        if let Some(chain) = &self.chain {
            return Ok(chain.clone());
        }
        let chain = format!("CONCLAVE-CHAOS-{}", self.slot);
        // Left over from a run that died: start clean.
        let _ = Self::iptables(&["-D", "INPUT", "-j", &chain]);
        let _ = Self::iptables(&["-F", &chain]);
        let _ = Self::iptables(&["-X", &chain]);
        Self::iptables(&["-N", &chain])?;
        Self::iptables(&["-I", "INPUT", "-j", &chain])?;
        self.chain = Some(chain.clone());
        Ok(chain)
    }
}

impl Harness for LocalCluster {
    fn name(&self) -> &'static str {
        "local"
    }

    fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    fn grpc(&self, id: NodeId) -> String {
        format!("{}:{}", self.ip(id), self.port())
    }

    fn resp(&self, id: NodeId) -> String {
        format!("{}:{}", self.ip(id), self.port() + 1)
    }

    fn start(&mut self, id: NodeId) -> anyhow::Result<()> {
        if self.nodes[&id].child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node{id}.log")))
            .context("node log")?;
        let binary = self.binary_of(id).to_path_buf();
        if self.earlier_binary.is_some() {
            // Which build each process of the node was, for a reader of an upgrade run.
            writeln!(&log, "chaos: starting {}", binary.display()).context("node log")?;
        }
        let child = Command::new(&binary)
            .arg("server")
            .args(["--id", &id.to_string()])
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .args(["--listen", &self.grpc(id)])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--resp", &self.resp(id)])
            .args(&self.server_args)
            .env("CONCLAVE_CLOCK_OFFSET_FILE", self.clock_file(id))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let process = self.nodes.get_mut(&id).expect("known node");
        process.child = Some(child);
        process.paused = false;
        process.starts += 1;
        Ok(())
    }

    fn starts(&self, id: NodeId) -> u64 {
        self.nodes[&id].starts
    }

    fn upgrade(&mut self, id: NodeId) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.earlier_binary.is_some(),
            "the cluster started on the build under test: there is nothing to upgrade from"
        );
        self.stop(id);
        self.nodes.get_mut(&id).expect("known node").upgraded = true;
        self.start(id)
    }

    fn kill(&mut self, id: NodeId) {
        self.signal(id, libc::SIGKILL);
        self.reap(id);
    }

    fn stop(&mut self, id: NodeId) {
        if self.nodes[&id].paused {
            self.signal(id, libc::SIGCONT);
        }
        self.signal(id, libc::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let process = self.nodes.get_mut(&id).expect("known node");
            match process.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(None)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Some(Ok(None)) => {
                    self.kill(id);
                    return;
                }
                _ => break,
            }
        }
        self.reap(id);
    }

    fn pause(&mut self, id: NodeId) {
        self.signal(id, libc::SIGSTOP);
        if let Some(process) = self.nodes.get_mut(&id) {
            process.paused = process.child.is_some();
        }
    }

    fn resume(&mut self, id: NodeId) {
        self.signal(id, libc::SIGCONT);
        if let Some(process) = self.nodes.get_mut(&id) {
            process.paused = false;
        }
    }

    fn running(&self, id: NodeId) -> bool {
        self.nodes[&id].child.is_some() && !self.nodes[&id].paused
    }

    fn log_tail(&self, id: NodeId, lines: usize) -> Option<String> {
        let log = std::fs::read_to_string(self.dir.join(format!("node{id}.log"))).ok()?;
        let kept: Vec<&str> = log.lines().rev().take(lines).collect();
        Some(kept.into_iter().rev().collect::<Vec<_>>().join("\n"))
    }

    fn wipe(&mut self, id: NodeId) -> anyhow::Result<()> {
        self.kill(id);
        let dir = self.data_dir(id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("wiping {}", dir.display()))?;
        }
        Ok(())
    }

    fn cut(&mut self, links: &[(NodeId, NodeId)]) -> anyhow::Result<()> {
        let chain = self.chain()?;
        for (from, to) in links {
            let (source, destination) = (self.ip(*from), self.ip(*to));
            Self::iptables(&[
                "-A",
                &chain,
                "-s",
                &source,
                "-d",
                &destination,
                "-j",
                "DROP",
            ])?;
        }
        Ok(())
    }

    fn heal(&mut self) -> anyhow::Result<()> {
        if let Some(chain) = &self.chain {
            Self::iptables(&["-F", chain])?;
        }
        Ok(())
    }

    fn set_clock_offset(&mut self, id: NodeId, offset_ms: i64) -> anyhow::Result<()> {
        let file = self.clock_file(id);
        let staged = file.with_extension("new");
        std::fs::write(&staged, offset_ms.to_string())?;
        std::fs::rename(&staged, &file)?;
        Ok(())
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for id in self.ids() {
            self.kill(id);
        }
        if let Some(chain) = self.chain.take() {
            let _ = Self::iptables(&["-D", "INPUT", "-j", &chain]);
            let _ = Self::iptables(&["-F", &chain]);
            let _ = Self::iptables(&["-X", &chain]);
        }
    }
}
