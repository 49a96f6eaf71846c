//! The Redis-with-Sentinel harness, for comparison: three hosts of
//! `cluster-tests/sentinel/docker-compose.yml` (image `conclave-redis-sentinel:latest`, built by
//! `cluster-tests/sentinel/build-image.sh`), each running redis-server (`appendonly yes`,
//! `appendfsync everysec`, as LiveKit runs it) and a Sentinel; redis-1 starts as the master.
//! Clients find the master by asking a Sentinel (their own host's first), as go-redis's failover
//! client does. Faults are the docker harness's: kill, stop, pause, and partitions as iptables
//! rules in a host's network namespace. Redis has no membership changes, wipes or clock offsets
//! that mean anything here, so those nemeses are not run against it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use super::{Harness, NodeId};
use crate::resp::{Connection, Reply};

const PROJECT: &str = "conclave-sentinel";
const MASTER_NAME: &str = "mymaster";

/// How long the Sentinels wait before they call a master down and how long a failover may
/// take: Redis's defaults, or the tuned values the comparison also runs.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub down_after_ms: u64,
    pub failover_timeout_ms: u64,
}

pub struct SentinelCluster {
    compose_file: PathBuf,
    dir: PathBuf,
    ids: Vec<NodeId>,
    timeouts: Timeouts,
    paused: BTreeMap<NodeId, bool>,
    stopped: BTreeMap<NodeId, bool>,
    starts: BTreeMap<NodeId, u64>,
    cut: Vec<NodeId>,
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

/// The fixed address of host `id` on the compose network.
fn ip(id: NodeId) -> String {
    format!("10.213.77.{}", 10 + id)
}

impl SentinelCluster {
    pub fn new(repo: &Path, dir: &Path, timeouts: Timeouts) -> anyhow::Result<SentinelCluster> {
        docker(&["image", "inspect", "conclave-redis-sentinel:latest"]).context(
            "no conclave-redis-sentinel:latest image: run cluster-tests/sentinel/build-image.sh",
        )?;
        let ids = vec![1, 2, 3];
        let cluster = SentinelCluster {
            compose_file: repo.join("cluster-tests/sentinel/docker-compose.yml"),
            // Compose takes a relative path for a volume's name.
            dir: std::path::absolute(dir)?,
            paused: ids.iter().map(|id| (*id, false)).collect(),
            stopped: ids.iter().map(|id| (*id, true)).collect(),
            starts: ids.iter().map(|id| (*id, 0)).collect(),
            ids,
            timeouts,
            cut: Vec::new(),
        };
        let _ = cluster.compose(&["down", "-v", "--remove-orphans"]);
        for id in cluster.ids.clone() {
            cluster.configure(id)?;
        }
        Ok(cluster)
    }

    fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("redis-{id}"))
    }

    /// Writes the host's redis.conf and sentinel.conf (Redis and the Sentinels rewrite them as
    /// roles change, as they do in production).
    fn configure(&self, id: NodeId) -> anyhow::Result<()> {
        let dir = self.data_dir(id);
        std::fs::create_dir_all(&dir)?;
        let me = ip(id);
        let mut redis = format!(
            "bind 0.0.0.0\nprotected-mode no\nport 6379\ndir /data\nappendonly yes\n\
             appendfsync everysec\nreplica-announce-ip {me}\n"
        );
        if id != 1 {
            redis.push_str(&format!("replicaof {} 6379\n", ip(1)));
        }
        let Timeouts {
            down_after_ms,
            failover_timeout_ms,
        } = self.timeouts;
        let sentinel = format!(
            "port 26379\ndir /data\nprotected-mode no\nsentinel announce-ip {me}\n\
             sentinel monitor {MASTER_NAME} {} 6379 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}\n\
             sentinel failover-timeout {MASTER_NAME} {failover_timeout_ms}\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            ip(1)
        );
        std::fs::write(dir.join("redis.conf"), redis)?;
        std::fs::write(dir.join("sentinel.conf"), sentinel)?;
        Ok(())
    }

    fn compose(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut command = Command::new("docker-compose");
        command
            .arg("-f")
            .arg(&self.compose_file)
            .args(["-p", PROJECT])
            .args(args);
        for id in &self.ids {
            command.env(format!("SENTINEL_DATA_{id}"), self.data_dir(*id));
        }
        run(&mut command)
    }

    fn container(id: NodeId) -> String {
        format!("{PROJECT}_redis-{id}_1")
    }

    fn iptables(id: NodeId, args: &[&str]) -> anyhow::Result<()> {
        let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &Self::container(id)])?;
        run(Command::new("nsenter")
            .args(["-t", &pid, "-n", "iptables", "-w", "5"])
            .args(args))
        .map(|_| ())
    }
}

impl Harness for SentinelCluster {
    fn name(&self) -> &'static str {
        "sentinel"
    }

    fn ids(&self) -> Vec<NodeId> {
        self.ids.clone()
    }

    fn grpc(&self, _id: NodeId) -> String {
        String::new()
    }

    /// `sentinel:` and every host's Sentinel, this host's first: clients ask them for the master.
    fn resp(&self, id: NodeId) -> String {
        let mut sentinels = vec![format!("{}:26379", ip(id))];
        sentinels.extend(
            self.ids
                .iter()
                .filter(|other| **other != id)
                .map(|other| format!("{}:26379", ip(*other))),
        );
        format!("sentinel:{}", sentinels.join(","))
    }

    fn sentinel(&self, id: NodeId) -> Option<String> {
        Some(format!("{}:26379", ip(id)))
    }

    fn node_at(&self, address: &str) -> Option<NodeId> {
        let host = address.split(':').next()?;
        self.ids.iter().copied().find(|id| ip(*id) == host)
    }

    fn start(&mut self, id: NodeId) -> anyhow::Result<()> {
        if !self.stopped[&id] {
            return Ok(());
        }
        // `up` creates the container the first time; `start` keeps its network namespace and
        // name after a kill.
        if docker(&["start", &Self::container(id)]).is_err() {
            self.compose(&["up", "-d", "--no-deps", &format!("redis-{id}")])?;
        }
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

    fn wipe(&mut self, _id: NodeId) -> anyhow::Result<()> {
        bail!("the sentinel harness does not wipe hosts")
    }

    fn cut(&mut self, links: &[(NodeId, NodeId)]) -> anyhow::Result<()> {
        for (from, to) in links {
            Self::iptables(*to, &["-A", "INPUT", "-s", &ip(*from), "-j", "DROP"])?;
            if !self.cut.contains(to) {
                self.cut.push(*to);
            }
        }
        Ok(())
    }

    fn heal(&mut self) -> anyhow::Result<()> {
        for id in std::mem::take(&mut self.cut) {
            let _ = Self::iptables(id, &["-F", "INPUT"]);
        }
        Ok(())
    }

    /// Clocks stay as they are (healing sets every offset back to 0, which is a no-op here).
    fn set_clock_offset(&mut self, _id: NodeId, offset_ms: i64) -> anyhow::Result<()> {
        if offset_ms != 0 {
            bail!("the sentinel harness does not move clocks");
        }
        Ok(())
    }
}

impl Drop for SentinelCluster {
    fn drop(&mut self) {
        for id in self.ids.clone() {
            let logs = Command::new("docker")
                .args(["logs", "--tail", "5000", &Self::container(id)])
                .output();
            if let Ok(logs) = logs {
                let mut text = logs.stdout;
                text.extend_from_slice(&logs.stderr);
                let _ = std::fs::write(self.dir.join(format!("host{id}.log")), text);
            }
        }
        let _ = self.compose(&["down", "-v", "--remove-orphans"]);
    }
}

/// Where the Sentinel at `sentinel` says the master is (`ip:port`).
pub async fn ask_master(sentinel: &str) -> Option<String> {
    let within = Duration::from_millis(500);
    let mut connection = Connection::connect(sentinel, within).await.ok()?;
    let reply = connection
        .call(&[
            b"SENTINEL",
            b"get-master-addr-by-name",
            MASTER_NAME.as_bytes(),
        ])
        .await
        .ok()?;
    let Reply::Array(Some(items)) = reply else {
        return None;
    };
    let [Reply::Bulk(Some(host)), Reply::Bulk(Some(port))] = items.as_slice() else {
        return None;
    };
    Some(format!(
        "{}:{}",
        String::from_utf8_lossy(host),
        String::from_utf8_lossy(port)
    ))
}

/// The `INFO replication` fields of the Redis at `address`.
async fn replication(address: &str) -> Option<Vec<(String, String)>> {
    let within = Duration::from_millis(500);
    let mut connection = Connection::connect(address, within).await.ok()?;
    let Ok(Reply::Bulk(Some(info))) = connection.call(&[b"INFO", b"replication"]).await else {
        return None;
    };
    let info = String::from_utf8_lossy(&info);
    Some(
        info.lines()
            .filter_map(|line| line.trim().split_once(':'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn field<'a>(info: &'a [(String, String)], name: &str) -> Option<&'a str> {
    info.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Whether the Redis at `address` says it is a master.
pub async fn is_master(address: &str) -> bool {
    replication(address)
        .await
        .is_some_and(|info| field(&info, "role") == Some("master"))
}

/// Whether the Redis at `address` is a replica in sync with its master (directly or through
/// another replica). One still in its first full sync holds nothing yet: a failover to it then
/// loses everything, which would say more about the harness than about Redis.
pub async fn is_replica_in_sync(address: &str) -> bool {
    replication(address).await.is_some_and(|info| {
        field(&info, "role") == Some("slave")
            && field(&info, "master_link_status") == Some("up")
            && field(&info, "master_sync_in_progress") == Some("0")
    })
}
