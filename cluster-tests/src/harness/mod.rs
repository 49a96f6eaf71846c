//! Harnesses: where the cluster under test runs and how faults reach it. The workloads,
//! nemeses and checkers are the same for every harness.

pub mod docker;
pub mod local;
pub mod sentinel;

use std::time::{Duration, Instant};

use conclave_client::Client;

pub type NodeId = u64;

/// A cluster whose nodes a nemesis can kill, pause, cut off and skew.
pub trait Harness: Send {
    fn name(&self) -> &'static str;
    /// Every node id, started or not.
    fn ids(&self) -> Vec<NodeId>;
    /// The node's gRPC (client and peer) address.
    fn grpc(&self, id: NodeId) -> String;
    /// The node's Redis-protocol address.
    fn resp(&self, id: NodeId) -> String;
    /// The node's address as its peers reach it (what a membership change names).
    fn peer_address(&self, id: NodeId) -> String {
        self.grpc(id)
    }
    /// Starts the node from its data directory (no-op if it runs).
    fn start(&mut self, id: NodeId) -> anyhow::Result<()>;
    /// How many times the node has been started (so a checker can tell one process of it from
    /// the next).
    fn starts(&self, id: NodeId) -> u64;
    /// Stops the node (SIGTERM) and starts it again on the build under test, for a run whose
    /// cluster started on an earlier build (`--upgrade-from`).
    fn upgrade(&mut self, _id: NodeId) -> anyhow::Result<()> {
        anyhow::bail!("the {} harness runs one build only", self.name())
    }
    /// SIGKILL.
    fn kill(&mut self, id: NodeId);
    /// SIGTERM, and wait for the node to exit.
    fn stop(&mut self, id: NodeId);
    /// SIGSTOP / SIGCONT.
    fn pause(&mut self, id: NodeId);
    fn resume(&mut self, id: NodeId);
    /// Started and not paused.
    fn running(&self, id: NodeId) -> bool;
    /// Kills the node and deletes its data directory.
    fn wipe(&mut self, id: NodeId) -> anyhow::Result<()>;
    /// Drops every packet from `from` to `to`, for each pair (one direction each).
    fn cut(&mut self, links: &[(NodeId, NodeId)]) -> anyhow::Result<()>;
    /// Removes every cut.
    fn heal(&mut self) -> anyhow::Result<()>;
    /// Sets the node's wall clock offset (milliseconds, either sign), at once.
    fn set_clock_offset(&mut self, id: NodeId, offset_ms: i64) -> anyhow::Result<()>;
    /// Where the node's Redis Sentinel listens, for a Redis-with-Sentinel cluster (None for
    /// Conclave, whose nodes answer status calls over gRPC).
    fn sentinel(&self, _id: NodeId) -> Option<String> {
        None
    }
    /// The node whose Redis listens at `address` (Sentinels name the master by address).
    fn node_at(&self, _address: &str) -> Option<NodeId> {
        None
    }
    /// The last `lines` lines the node logged, where the harness keeps its logs.
    fn log_tail(&self, _id: NodeId, _lines: usize) -> Option<String> {
        None
    }
    /// Whether the nodes serve Conclave's gRPC API (SDK clients, status calls).
    fn speaks_grpc(&self) -> bool {
        self.ids()
            .first()
            .is_none_or(|id| self.sentinel(*id).is_none())
    }
}

/// A gRPC client of one node only (no failover), for status calls.
pub async fn node_client(address: &str) -> Option<Client> {
    Client::connect([address]).await.ok()
}

/// The leader as the running nodes report it, if a majority of those answering agree.
pub async fn leader(harness: &dyn Harness) -> Option<NodeId> {
    let mut votes = std::collections::BTreeMap::new();
    for id in harness.ids() {
        if !harness.running(id) {
            continue;
        }
        if let Some(sentinel) = harness.sentinel(id) {
            if let Some(master) = sentinel::ask_master(&sentinel).await {
                if let Some(leader) = harness.node_at(&master) {
                    *votes.entry(leader).or_insert(0) += 1;
                }
            }
            continue;
        }
        let Some(client) = node_client(&harness.grpc(id)).await else {
            continue;
        };
        let status = tokio::time::timeout(Duration::from_millis(500), client.status()).await;
        if let Ok(Ok(status)) = status {
            if let Some(leader) = status.leader {
                *votes.entry(leader).or_insert(0) += 1;
            }
        }
    }
    votes.into_iter().max_by_key(|(_, n)| *n).map(|(id, _)| id)
}

/// Waits until every running node answers a status call and knows one leader, which has
/// applied an entry of its term (so it serves writes).
pub async fn wait_healthy(harness: &dyn Harness, within: Duration) -> anyhow::Result<NodeId> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(leader) = agreed_leader(harness).await {
            return Ok(leader);
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the cluster did not agree on a leader within {within:?}\n{}",
                describe_nodes(harness).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What each node says of itself (or that it does not answer) and the end of its log: what a
/// reader of a failed run needs first.
pub async fn describe_nodes(harness: &dyn Harness) -> String {
    let mut out = String::new();
    for id in harness.ids() {
        let state = if !harness.running(id) {
            "stopped or paused".to_string()
        } else if let Some(sentinel) = harness.sentinel(id) {
            match sentinel::ask_master(&sentinel).await {
                Some(master) => format!("its Sentinel names master {master}"),
                None => "its Sentinel does not answer".to_string(),
            }
        } else {
            match node_client(&harness.grpc(id)).await {
                None => "does not accept connections".to_string(),
                Some(client) => {
                    match tokio::time::timeout(Duration::from_millis(500), client.status()).await {
                        Ok(Ok(status)) => format!("{status:?}"),
                        Ok(Err(e)) => format!("status call failed: {e}"),
                        Err(_) => "status call timed out".to_string(),
                    }
                }
            }
        };
        out.push_str(&format!("  node {id}: {state}\n"));
        if let Some(tail) = harness.log_tail(id, 8) {
            for line in tail.lines() {
                out.push_str(&format!("    | {line}\n"));
            }
        }
    }
    out
}

async fn agreed_leader(harness: &dyn Harness) -> Option<NodeId> {
    if !harness.speaks_grpc() {
        return agreed_master(harness).await;
    }
    let mut agreed = None;
    for id in harness.ids() {
        if !harness.running(id) {
            continue;
        }
        let client = node_client(&harness.grpc(id)).await?;
        let status = tokio::time::timeout(Duration::from_millis(500), client.status())
            .await
            .ok()?
            .ok()?;
        let leader = status.leader?;
        if agreed.is_some_and(|l| l != leader) {
            return None;
        }
        agreed = Some(leader);
    }
    agreed
}

/// For Redis with Sentinel: every running host's Sentinel names one master, which runs, says it
/// is the master, and every other running host is a replica in sync.
async fn agreed_master(harness: &dyn Harness) -> Option<NodeId> {
    let mut agreed: Option<String> = None;
    for id in harness.ids() {
        if !harness.running(id) {
            continue;
        }
        let master = sentinel::ask_master(&harness.sentinel(id)?).await?;
        if agreed.as_ref().is_some_and(|m| *m != master) {
            return None;
        }
        agreed = Some(master);
    }
    let master = agreed?;
    let id = harness.node_at(&master)?;
    if !harness.running(id) || !sentinel::is_master(&master).await {
        return None;
    }
    let port = master.rsplit_once(':').map_or("6379", |(_, p)| p);
    for other in harness.ids() {
        let host = harness.sentinel(other)?;
        let address = format!("{}:{port}", host.rsplit_once(':')?.0);
        if other != id && harness.running(other) && !sentinel::is_replica_in_sync(&address).await {
            return None;
        }
    }
    Some(id)
}
