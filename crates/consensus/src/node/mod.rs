//! A running Conclave node: openraft plus storage, bootstrap, forwarding and read barriers.
//!
//! [`Node`] is one handle on one [`Inner`]; each file below adds the methods of one topic, as
//! `impl Node` blocks over the same state:
//!
//! - `mod.rs`: the handle, its options and errors, [`Node::open`] and small accessors.
//! - `lifecycle.rs`: forming, taking part, stopping, handing over, as one value ([`Lifecycle`]).
//! - `forming.rs`: how a fresh node comes into its cluster ([`Node::form`]); the decision itself
//!   is the pure `crate::formation`.
//! - `elections.rs`: elections off at start and on once a leader is heard (or a grace passes),
//!   off for good when stopping.
//! - `handover.rs`: a leader handing its leadership to a caught-up voter, before it stops or
//!   when asked ([`Node::transfer_leadership`]); the choice of successor is pure.
//! - `routing.rs`: a request's way to the leader, here or over `Peer.Forward`, held through
//!   elections until its deadline ([`Node::write`]).
//! - `leading.rs`: a request executed by this node as leader, stamped with the replicated time.
//! - `proposing.rs`: the leader's proposer, which puts the writes queued meanwhile into one
//!   entry while earlier ones are in flight.
//! - `reads.rs`: read barriers for the three [`Consistency`] levels, the acknowledged revision
//!   and the startup floor.
//! - `admission.rs`: which node-to-node calls are admitted, and whether this node answers Raft
//!   messages and votes.
//! - `housekeeping.rs`: the leader's reaping, lease renewal and idle ticks; registering this
//!   node's incarnation.
//! - `status.rs`: [`NodeStatus`], the node's view of the cluster.
//!
//! Lifecycle: [`Node::open`] starts Raft with elections off. A node with Raft state takes part at
//! once and turns elections on when a leader reaches it (`elections.rs`); a fresh one refuses
//! Raft messages until [`Node::form`] has decided how it joins. [`Node::stop_elections`] turns
//! elections off for good, [`Node::hand_over`] then hands a leader's leadership over, and
//! [`Node::shutdown`] stops Raft. The flags behind this live in `lifecycle.rs`, with a diagram.

mod admission;
mod disk;
mod elections;
mod forming;
mod handover;
mod housekeeping;
mod leading;
mod lifecycle;
mod metrics;
mod proposing;
mod reads;
mod routing;
mod status;

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use conclave_state::Revision;
use conclave_storage::{Identity, IdentityError, LogStats, StorageOptions};
use openraft::{BasicNode, SnapshotPolicy};

use crate::clock::{LeaderTime, WallClock};
use crate::cluster::ClusterSpec;
use crate::network::{NetworkFactory, Peers};
use crate::{NodeId, Raft, StateView};
use lifecycle::Lifecycle;

pub use reads::Consistency;
pub use status::NodeStatus;

/// Pause between attempts while a request waits for a leader.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Raft timing, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Leader heartbeat; also the timeout of each AppendEntries RPC.
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a random time in this range starts an election.
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// How long a request may wait for a leader (elections included) before failing.
    pub request_timeout: Duration,
}
impl Default for Timing {
    fn default() -> Self {
        // A follower that knew a leader starts an election after openraft's leader lease (the
        // election maximum) plus a random election timeout: 320-400 ms without heartbeats. `scripts/failover-probe.sh 10` measured writes
        // resuming after a SIGKILL of the leader in 0.345 s median, 0.427 s max (200-300 ms:
        // 0.540 and 0.583 s, same run).
        Timing {
            heartbeat_ms: 50,
            election_min_ms: 120,
            election_max_ms: 200,
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Everything needed to start a node.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub id: NodeId,
    pub data_dir: PathBuf,
    /// The members the cluster was created with; a node not among them joins (see `join`).
    pub cluster: ClusterSpec,
    /// Start without bootstrapping: the node waits to be added by `members add`.
    pub join: bool,
    pub timing: Timing,
    /// Build a snapshot (and purge the log before it) every this many entries.
    pub snapshot_every: u64,
    /// A file holding a signed offset in milliseconds added to this node's wall clock (absent:
    /// none), for tests that step or skew one node's clock.
    pub clock_offset_file: Option<PathBuf>,
    /// The address this node listens on, which its connections to peers leave from too (none:
    /// any address, as the system picks).
    pub source_ip: Option<std::net::IpAddr>,
    /// How this node's connections to peers authenticate: the cluster's CA and this node's
    /// certificate (None: plaintext). Changed later with [`Node::set_peer_tls`].
    pub peer_tls: Option<tonic::transport::ClientTlsConfig>,
    /// Bytes the data directory's filesystem must keep available; below it the node is low on
    /// disk and refuses writes (see `disk.rs`). 0: never.
    pub disk_reserve: u64,
}

impl NodeOptions {
    /// Checks the options as [`Node::open`] would, without opening anything (for
    /// `conclave server --check-config`).
    pub fn check(&self) -> Result<(), StartError> {
        raft_config(self).map(|_| ())
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] conclave_storage::OpenError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("the data directory belongs to cluster {recorded:016x}, but --initial-cluster describes cluster {requested:016x}; use the directory with its own cluster or start from an empty one")]
    OtherCluster { recorded: u64, requested: u64 },
    #[error("peer {peer} at {address} belongs to cluster {theirs:016x}, not {ours:016x}; check --initial-cluster")]
    PeerInOtherCluster {
        peer: NodeId,
        address: String,
        theirs: u64,
        ours: u64,
    },
    #[error("node {peer} remembers node {id} with another data directory: node {id}'s data was lost. Remove it (`conclave ctl members remove {id}`), then start it again with an empty data directory and add it back (`ctl members add`)")]
    DataLost { id: NodeId, peer: NodeId },
    #[error("invalid raft configuration: {0}")]
    Config(String),
    #[error("raft failed to start: {0}")]
    Raft(String),
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// No leader answered in time, or this node cannot serve the read yet. Retrying may succeed.
    /// For a write: it was never handed to a leader, so it was not applied and will not be.
    #[error("{0}")]
    Unavailable(String),
    /// A write's deadline passed after it was handed to a leader, which may still commit it:
    /// whether it was applied is unknown. A client must not retry it blindly (unless it carries
    /// a request id, which makes the retry apply at most once).
    #[error("{0}")]
    Indeterminate(String),
    /// The request is invalid for the cluster as it is (e.g. removing an unknown member).
    #[error("{0}")]
    Rejected(String),
    /// A node's disk is nearly full (this one's, or the leader's): the write was refused before
    /// it was proposed, so it was not applied. Retrying succeeds once space returns.
    #[error("{0}")]
    NoSpace(String),
}

/// A handle on the running node; cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

/// The state every `impl Node` block works on.
struct Inner {
    id: NodeId,
    raft: Raft,
    view: StateView,
    peers: Peers,
    identity: Identity,
    log_stats: Arc<LogStats>,
    metrics: Arc<metrics::NodeMetrics>,
    /// The incarnation of this node's data directory.
    incarnation: u64,
    timing: Timing,
    /// Identifies this process's own writes for de-duplication across its internal retries.
    client_id: u64,
    sequence: AtomicU64,
    /// Signalled by each AppendEntries received (see `enable_elections`).
    leader_heard: tokio::sync::Notify,
    /// Whether this node may start elections once it is not stopping or low on disk (see
    /// `elections.rs`).
    elections_open: std::sync::atomic::AtomicBool,
    /// AppendEntries from a leader that openraft has handled (see `elections.rs`).
    leader_appends: AtomicU64,
    /// The room on the data directory's disk (see `disk.rs`).
    disk: disk::DiskWatch,
    /// Forming or taking part, stopping or not, handing over or not (see `lifecycle.rs`).
    lifecycle: Lifecycle,
    /// The term this node last led in and when it was first seen leading in it (by the
    /// housekeeping loop, so a little late: see [`Node::hand_over`]).
    led_since: std::sync::Mutex<Option<(u64, Instant)>>,
    /// The `--initial-cluster` list, and whether this node joins rather than creates.
    cluster: ClusterSpec,
    join: Joining,
    /// The stamps this node puts on entries while it leads.
    time: LeaderTime,
    /// Held while a linearizable read commits a `Tick`: concurrent reads share it.
    read_tick: tokio::sync::Mutex<()>,
    /// The term in which this process, as leader, has committed an entry of its own (see
    /// `Node::settle_term`), and the lock that makes concurrent first requests share one.
    settled_term: std::sync::atomic::AtomicU64,
    settling: tokio::sync::Mutex<()>,
    /// The newest revision this process has acknowledged to anyone (a write's or membership
    /// change's reply), on any front end: session reads here never see less.
    acknowledged: AtomicU64,
    /// A leader's read index obtained after this process started (see [`Node::startup_floor`]):
    /// at least every revision acknowledged anywhere before, this node's own acknowledgements
    /// before a crash included. Session reads wait for it.
    startup_floor: tokio::sync::OnceCell<Revision>,
    /// The queue of writes this node proposes as leader (see `proposing.rs`).
    proposals: proposing::ProposalQueue,
}

/// How a node without Raft state comes into the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Joining {
    /// Listed in `--initial-cluster`: creates the cluster with the others, or waits for its
    /// leader if the cluster exists.
    No,
    /// `--join`: waits to be added.
    Asked,
    /// Not listed, so it cannot have created the cluster: waits to be added.
    Unlisted,
}

fn raft_config(options: &NodeOptions) -> Result<openraft::Config, StartError> {
    let keep = options.snapshot_every.min(1000);
    let config = openraft::Config {
        cluster_name: "conclave".into(),
        heartbeat_interval: options.timing.heartbeat_ms,
        election_timeout_min: options.timing.election_min_ms,
        election_timeout_max: options.timing.election_max_ms,
        install_snapshot_timeout: 10_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(options.snapshot_every),
        max_in_snapshot_log_to_keep: keep,
        // Enabled by `Node::open` once the node knows whether it is restarting (see
        // `enable_elections`).
        enable_elect: false,
        ..Default::default()
    };
    config
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))
}

impl Node {
    /// Opens the data directory and starts Raft. A node that has Raft state rejoins its cluster
    /// by itself; a fresh one is brought into it by [`Node::form`], which needs this node's
    /// listener to be serving (the listed nodes ask each other whether they are fresh too).
    pub async fn open(options: NodeOptions) -> Result<Node, StartError> {
        let id = options.id;
        let join = match (options.join, options.cluster.address(id)) {
            (true, _) => Joining::Asked,
            (false, None) => Joining::Unlisted,
            (false, Some(_)) => Joining::No,
        };
        std::fs::create_dir_all(&options.data_dir).map_err(|source| StartError::DataDir {
            path: options.data_dir.clone(),
            source,
        })?;
        let storage = conclave_storage::open(&options.data_dir, StorageOptions::default())?;
        storage.identity.claim_node(id).await?;
        let incarnation = storage.identity.incarnation().await?;

        let requested = options.cluster.cluster_id();
        let recorded = storage.identity.cluster_id().map_err(IdentityError::from)?;
        if let (Joining::No, Some(recorded)) = (join, recorded) {
            if recorded != requested {
                return Err(StartError::OtherCluster {
                    recorded,
                    requested,
                });
            }
        }
        let cluster_id = if join == Joining::No {
            Some(requested)
        } else {
            recorded
        };
        let peers = Peers::new(cluster_id).leaving_from(options.source_ip);
        peers.set_tls(options.peer_tls.clone());
        let view = storage.state.view();
        let log_stats = storage.log.stats();
        let node_metrics = Arc::new(metrics::NodeMetrics::new(storage.state.snapshot_stats()));
        let raft = Raft::new(
            id,
            Arc::new(raft_config(&options)?),
            NetworkFactory {
                peers: peers.clone(),
            },
            storage.log,
            storage.state,
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;

        let (proposals, proposed) = tokio::sync::mpsc::unbounded_channel();
        let node = Node {
            inner: Arc::new(Inner {
                id,
                raft,
                view,
                peers,
                identity: storage.identity,
                log_stats,
                metrics: node_metrics,
                incarnation,
                timing: options.timing,
                client_id: random_client_id(id),
                sequence: AtomicU64::new(1),
                leader_heard: tokio::sync::Notify::new(),
                elections_open: std::sync::atomic::AtomicBool::new(false),
                leader_appends: AtomicU64::new(0),
                disk: disk::DiskWatch::new(options.data_dir.clone(), options.disk_reserve),
                lifecycle: Lifecycle::new(),
                led_since: std::sync::Mutex::new(None),
                time: LeaderTime::new(WallClock::new(options.clock_offset_file.clone())),
                read_tick: tokio::sync::Mutex::new(()),
                settled_term: std::sync::atomic::AtomicU64::new(0),
                settling: tokio::sync::Mutex::new(()),
                cluster: options.cluster,
                join,
                acknowledged: AtomicU64::new(0),
                startup_floor: tokio::sync::OnceCell::new(),
                proposals,
            }),
        };
        proposing::start(&node, proposed);
        tokio::spawn(
            node.inner
                .metrics
                .clone()
                .count_leader_changes(node.inner.raft.metrics()),
        );
        if node.initialized().await? {
            node.inner.lifecycle.take_part();
            tokio::spawn(node.clone().enable_elections());
        } else {
            node.open_elections();
        }
        tokio::spawn(node.clone().leader_housekeeping());
        tokio::spawn(node.clone().watch_disk());
        tokio::spawn(node.clone().register_incarnation());
        tokio::spawn(node.clone().learn_startup_floor());
        Ok(node)
    }

    async fn initialized(&self) -> Result<bool, StartError> {
        self.inner
            .raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft(e.to_string()))
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The node-to-node service to mount on this node's listener.
    /// Connections to peers (Raft, forwarding, the pub/sub mesh) authenticate with `tls` from
    /// now on (after a certificate was renewed, say).
    pub fn set_peer_tls(&self, tls: Option<tonic::transport::ClientTlsConfig>) {
        self.inner.peers.set_tls(tls);
    }

    pub fn peer_service(&self) -> crate::PeerService {
        crate::PeerService::new(self.clone())
    }

    /// Clients of the other nodes.
    pub fn peers(&self) -> &Peers {
        &self.inner.peers
    }

    /// Every other member (voter or learner) with its address, as this node knows them.
    pub fn other_members(&self) -> Vec<(NodeId, String)> {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        metrics
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.inner.id)
            .map(|(id, node)| (*id, node.addr.clone()))
            .collect()
    }

    /// The openraft handle.
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// The local replica, for reads.
    pub fn view(&self) -> &StateView {
        &self.inner.view
    }

    /// The default time a request may wait for a leader.
    pub fn request_timeout(&self) -> Duration {
        self.inner.timing.request_timeout
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
    }
}

/// Whether a node has Raft state: a membership from its own bootstrap or from a leader.
fn has_raft_state(metrics: &openraft::RaftMetrics<NodeId, BasicNode>) -> bool {
    metrics.membership_config.log_id().is_some()
}

/// A client id for this process's own writes: distinct across nodes and restarts.
fn random_client_id(node: NodeId) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (node << 48) ^ nanos ^ u64::from(std::process::id()).rotate_left(24)
}
