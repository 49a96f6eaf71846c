//! A running Conclave node: openraft plus storage, bootstrap, forwarding and read barriers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use conclave_proto::peer::{IdentifyResponse, TimeoutNowRequest};
use conclave_state::{Command, Millis, RequestId, Revision, WriteReply, WriteRequest};
use conclave_storage::{Identity, IdentityError, LogStats, StorageOptions};
use openraft::{BasicNode, ServerState, SnapshotPolicy};
use tonic::Status;

use crate::clock::{LeaderTime, WallClock};
use crate::cluster::ClusterSpec;
use crate::formation::{self, Decision, PeerState, Refusal};
use crate::leader::{self, AdminRequest, LeaderError, LeaderReply, LeaderRequest, MembershipView};
use crate::network::{NetworkFactory, Peers};
use crate::{MemberView, NodeId, Raft, StateView};

/// Pause between attempts while a request waits for a leader.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// How often the leader looks for expired keys and leases.
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(100);
/// An idle leader commits a `Tick` once the replicated clock lags its time by this much, so
/// replicated time (and with it expiry on every replica) advances without writes.
const IDLE_TICK_AFTER_MS: Millis = 1000;
/// A linearizable read commits a `Tick` first when the replicated clock lags the leader's time
/// by more than this, so every replica judges TTLs at about the same, current, time.
const READ_CLOCK_LAG_MS: Millis = 20;
/// Most keys (or leases) ended by one entry.
const REAP_BATCH: usize = 1000;
/// How long bootstrap waits for each peer to answer an identity probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a requested leadership transfer may take on the leader.
const TRANSFER_WITHIN: Duration = Duration::from_secs(2);
/// How long a stopping leader waits for a successor to answer `Peer.TimeoutNow`.
const TIMEOUT_NOW_WITHIN: Duration = Duration::from_millis(500);
/// Pause between surveys while a fresh node waits for a majority of the listed nodes.
const FORM_RETRY: Duration = Duration::from_millis(200);

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
        // election maximum) plus a random election timeout: 500-600 ms without heartbeats.
        Timing {
            heartbeat_ms: 50,
            election_min_ms: 200,
            election_max_ms: 300,
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
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Whatever this replica has applied.
    Local,
    /// At least `min_revision` (read-your-writes for a client that passes its last revision),
    /// every write this node has acknowledged to anyone, and everything committed before this
    /// node's process started (see `Node::read_barrier`).
    Session { min_revision: Revision },
    /// Everything committed before the read began, confirmed with a quorum.
    Linearizable,
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
}

/// A snapshot of the node's view of the cluster.
#[derive(Clone, Debug)]
pub struct NodeStatus {
    pub id: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub applied: Revision,
    pub last_log_index: u64,
    pub role: &'static str,
    pub members: Vec<MemberView>,
    pub cluster_id: Option<u64>,
    pub snapshot_index: u64,
    pub purged_index: u64,
    pub keys: u64,
    /// Log entries appended and log flushes since start: their ratio is the group-commit batch.
    pub log_entries_appended: u64,
    pub log_flushes: u64,
}

/// A handle on the running node; cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    raft: Raft,
    view: StateView,
    peers: Peers,
    identity: Identity,
    log_stats: Arc<LogStats>,
    /// The incarnation of this node's data directory.
    incarnation: u64,
    timing: Timing,
    /// Identifies this process's own writes for de-duplication across its internal retries.
    client_id: u64,
    sequence: AtomicU64,
    /// Signalled by each AppendEntries received (see `enable_elections`).
    leader_heard: tokio::sync::Notify,
    /// Set while this leader hands its leadership over (see [`Node::hand_over`]): it proposes
    /// nothing more, so the successor it picked keeps holding its whole log.
    handing_over: AtomicBool,
    /// Requests being executed by this node as leader (see [`Node::lead`]).
    leading: AtomicU64,
    /// Set by [`Node::stop_elections`]: elections stay off until the process exits.
    stopping: AtomicBool,
    /// The term this node last led in and when it was first seen leading in it (by the
    /// housekeeping loop, so a little late: see [`Node::hand_over`]).
    led_since: std::sync::Mutex<Option<(u64, Instant)>>,
    /// Set once the node answers Raft messages (see [`Node::takes_part`]).
    takes_part: AtomicBool,
    /// The `--initial-cluster` list, and whether this node joins rather than creates.
    cluster: ClusterSpec,
    join: Joining,
    /// The stamps this node puts on entries while it leads.
    time: LeaderTime,
    /// Held while a linearizable read commits a `Tick`: concurrent reads share it.
    read_tick: tokio::sync::Mutex<()>,
    /// The newest revision this process has acknowledged to anyone (a write's or membership
    /// change's reply), on any front end: session reads here never see less.
    acknowledged: AtomicU64,
    /// A leader's read index obtained after this process started (see [`Node::startup_floor`]):
    /// at least every revision acknowledged anywhere before, this node's own acknowledgements
    /// before a crash included. Session reads wait for it.
    startup_floor: tokio::sync::OnceCell<Revision>,
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

/// The cluster id a node-to-node call announces in its header, if it has one.
fn announced_cluster<T>(request: &tonic::Request<T>) -> Result<Option<u64>, Status> {
    let Some(value) = request.metadata().get(conclave_proto::CLUSTER_ID_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .map(Some)
        .ok_or_else(|| Status::invalid_argument("malformed cluster id header"))
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
        let view = storage.state.view();
        let log_stats = storage.log.stats();
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

        let node = Node {
            inner: Arc::new(Inner {
                id,
                raft,
                view,
                peers,
                identity: storage.identity,
                log_stats,
                incarnation,
                timing: options.timing,
                client_id: random_client_id(id),
                sequence: AtomicU64::new(1),
                leader_heard: tokio::sync::Notify::new(),
                handing_over: AtomicBool::new(false),
                leading: AtomicU64::new(0),
                stopping: AtomicBool::new(false),
                led_since: std::sync::Mutex::new(None),
                takes_part: AtomicBool::new(false),
                time: LeaderTime::new(WallClock::new(options.clock_offset_file.clone())),
                read_tick: tokio::sync::Mutex::new(()),
                cluster: options.cluster,
                join,
                acknowledged: AtomicU64::new(0),
                startup_floor: tokio::sync::OnceCell::new(),
            }),
        };
        if node.initialized().await? {
            node.inner.takes_part.store(true, Ordering::SeqCst);
            tokio::spawn(node.clone().enable_elections());
        } else {
            node.inner.raft.runtime_config().elect(true);
        }
        tokio::spawn(node.clone().leader_housekeeping());
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

    /// Brings a fresh node into its cluster; returns at once for a node with Raft state. Call it
    /// once the node's listener serves `Peer`.
    ///
    /// A listed node first asks the other listed nodes about themselves (`Peer.Identify`). It
    /// refuses to go on if one belongs to another cluster or remembers this node with another
    /// data directory (this node's data was lost: with an empty log it could vote for a leader
    /// missing acknowledged writes). If one already belongs to the cluster, it waits for the
    /// leader (it is a member the leader has not reached yet, or a replacement waiting for
    /// `ctl members add`), unless no leader has been elected there yet. Otherwise it creates the
    /// cluster (`Raft::initialize` with the listed members; every listed node does the same with
    /// the same list) once a majority of the listed nodes, itself included, answer that they are
    /// fresh too or have just created it, and keeps asking until then. A fresh node alone never
    /// creates the cluster: after a whole-site restart it may be the one whose disk was lost,
    /// asking before the nodes that would recognise it are back. A joining node asks once, for
    /// the same refusals, then waits to be added.
    ///
    /// Until it has decided, the node refuses Raft messages (see [`Node::takes_part`]): a leader
    /// replicating to it meanwhile would make it look like a node the cluster already knew.
    pub async fn form(&self) -> Result<(), StartError> {
        let decided = self.decide_how_to_join().await;
        if decided.is_ok() {
            self.inner.takes_part.store(true, Ordering::SeqCst);
        }
        decided
    }

    async fn decide_how_to_join(&self) -> Result<(), StartError> {
        if self.initialized().await? {
            return Ok(());
        }
        let id = self.inner.id;
        let cluster = &self.inner.cluster;
        let needed = cluster.members().len() / 2 + 1;
        let mut said_waiting = false;
        loop {
            let survey = self.survey_peers().await?;
            match self.inner.join {
                Joining::Unlisted => {
                    eprintln!(
                        "node {id}: not in --initial-cluster, so it joins an existing cluster; \
                         waiting to be added (`conclave ctl members add {id} ADDRESS`)"
                    );
                    return Ok(());
                }
                Joining::Asked => {
                    eprintln!(
                        "node {id}: joining; waiting to be added (`conclave ctl members add {id} ADDRESS`)"
                    );
                    return Ok(());
                }
                Joining::No => {}
            }
            let founders = match formation::decide(&survey, cluster.members().len()) {
                Decision::Create { founders } => return self.bootstrap(cluster, &founders).await,
                Decision::Wait { founders } => founders,
                Decision::AwaitLeader => {
                    self.inner
                        .identity
                        .claim_cluster(cluster.cluster_id())
                        .await?;
                    eprintln!(
                        "node {id}: the cluster already exists, so this empty node does not bootstrap it; \
                         it waits for the leader (add it with `conclave ctl members add {id} ADDRESS` \
                         if it is not a member)"
                    );
                    return Ok(());
                }
            };
            if !said_waiting {
                eprintln!(
                    "node {id}: waiting for {needed} of the {} nodes in --initial-cluster to be up \
                     and empty (or to have counted this one when creating the cluster) before \
                     creating the cluster ({founders} so far, this one included)",
                    cluster.members().len(),
                );
                said_waiting = true;
            }
            tokio::time::sleep(FORM_RETRY).await;
        }
    }

    /// A restarted node first gives the leader time to reach it: openraft has no pre-vote, so an
    /// election started by a node that merely restarted raises the term, and the healthy leader
    /// steps down when it hears of it. Elections are enabled once a leader's AppendEntries
    /// arrives, or after the grace (no leader: the whole cluster is starting, or it is gone).
    async fn enable_elections(self) {
        let grace = Duration::from_millis((4 * self.inner.timing.election_max_ms).max(1000));
        let _ = tokio::time::timeout(grace, self.inner.leader_heard.notified()).await;
        // A node told to stop during its grace never turns elections back on (the second check
        // covers a stop that lands between the first and `elect(true)`).
        if !self.inner.stopping.load(Ordering::SeqCst) {
            self.inner.raft.runtime_config().elect(true);
            if self.inner.stopping.load(Ordering::SeqCst) {
                self.inner.raft.runtime_config().elect(false);
            }
        }
    }

    /// Stops this node from starting elections: it is about to stop. Once its listener closes
    /// the leader cannot reach it, and an election it started while winding down would raise
    /// the term and depose the healthy leader.
    pub fn stop_elections(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.raft.runtime_config().elect(false);
    }

    /// If this node leads, hands its leadership to a voter that holds its whole log, before the
    /// node stops: new requests are held (and then forwarded to the successor), the first voter
    /// caught up is told to start an election at once (`Peer.TimeoutNow`), and this node grants
    /// it its vote. Without it the others would wait out the leader's lease and an election
    /// timeout, holding every write meanwhile. Returns the new leader, or None if this node did
    /// not lead or no successor took over within `within` (the others then elect one as if it
    /// had failed).
    ///
    /// In a cluster of three the successor wins at once (its vote and the old leader's). In a
    /// larger one the other voters refuse until their lease on the old leader runs out, and the
    /// successor wins its next attempt.
    pub async fn hand_over(&self, within: Duration) -> Option<NodeId> {
        self.hand_over_to(None, within).await
    }

    /// [`Node::hand_over`] to voter `to` only, if given.
    async fn hand_over_to(&self, to: Option<NodeId>, within: Duration) -> Option<NodeId> {
        let me = self.inner.id;
        if self.inner.raft.metrics().borrow().current_leader != Some(me) {
            return None;
        }
        self.inner.handing_over.store(true, Ordering::SeqCst);
        let successor = tokio::time::timeout(within, self.hand_over_to_caught_up_voter(to)).await;
        self.inner.handing_over.store(false, Ordering::SeqCst);
        match successor {
            Ok(Some(successor)) => Some(successor),
            Ok(None) => None,
            Err(_) => {
                tracing::warn!("node {me}: no successor took over within {within:?}");
                None
            }
        }
    }

    async fn hand_over_to_caught_up_voter(&self, to: Option<NodeId>) -> Option<NodeId> {
        let me = self.inner.id;
        // A leader's own vote carries a lease from its election (the election maximum): until it
        // has run out this node would refuse its successor the vote it needs.
        let term = self.inner.raft.metrics().borrow().current_term;
        let lease = Duration::from_millis(self.inner.timing.election_max_ms + 20);
        let led_since = match *self.inner.led_since.lock().expect("lock poisoned") {
            Some((led_term, since)) if led_term == term => since,
            _ => Instant::now(),
        };
        tokio::time::sleep_until((led_since + lease).into()).await;
        // Requests that began before the handover finish first: after them the log stays put.
        while self.inner.leading.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut metrics = self.inner.raft.metrics();
        let mut declined = BTreeSet::new();
        loop {
            // The first voter, not yet asked, whose log matches this leader's last entry.
            let (successor, address, term) = loop {
                {
                    let m = metrics.borrow_and_update();
                    if m.current_leader != Some(me) {
                        return m.current_leader;
                    }
                    let membership = m.membership_config.membership();
                    let mut others = membership
                        .voter_ids()
                        .filter(|id| *id != me && !declined.contains(id))
                        .filter(|id| to.is_none_or(|to| to == *id))
                        .peekable();
                    others.peek()?;
                    let last = m.last_log_index;
                    let matched = |id: &NodeId| {
                        m.replication
                            .as_ref()
                            .and_then(|r| r.get(id))
                            .is_some_and(|log_id| log_id.map(|l| l.index) == last)
                    };
                    if let Some(id) = others.find(matched) {
                        let address = membership.get_node(&id)?.addr.clone();
                        break (id, address, m.current_term);
                    }
                }
                metrics.changed().await.ok()?;
            };
            let request = TimeoutNowRequest {
                leader_id: me,
                term,
            };
            match self
                .inner
                .peers
                .timeout_now(&address, request, TIMEOUT_NOW_WITHIN)
                .await
            {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!("node {me}: node {successor} did not take the leadership: {e}");
                    declined.insert(successor);
                }
            }
        }
        loop {
            if let Some(leader) = metrics.borrow_and_update().current_leader {
                if leader != me {
                    return Some(leader);
                }
            }
            metrics.changed().await.ok()?;
        }
    }

    /// Starts an election at once, on behalf of `leader` in `term` (see [`Node::hand_over`]).
    /// Refused unless `leader` is this node's current leader in that term: a stale or foreign
    /// request must not unseat a healthy leader.
    pub(crate) async fn timeout_now(&self, leader: NodeId, term: u64) -> Result<(), Status> {
        let (known_leader, known_term, voter) = {
            let m = self.inner.raft.metrics().borrow().clone();
            let voter = m
                .membership_config
                .membership()
                .voter_ids()
                .any(|id| id == self.inner.id);
            (m.current_leader, m.current_term, voter)
        };
        if self.inner.stopping.load(Ordering::SeqCst) {
            return Err(Status::unavailable(format!(
                "node {} is stopping too",
                self.inner.id
            )));
        }
        if known_leader != Some(leader) || known_term != term || !voter {
            return Err(Status::failed_precondition(format!(
                "node {} follows {known_leader:?} in term {known_term} (voter: {voter}), \
                 not node {leader} in term {term}",
                self.inner.id
            )));
        }
        self.inner
            .raft
            .trigger()
            .elect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))
    }

    /// Records that a leader reached this node.
    pub(crate) fn heard_from_leader(&self) {
        self.inner.leader_heard.notify_one();
    }

    /// For a node with no Raft state: asks the other listed nodes, all at once, about
    /// themselves. Fails if one belongs to another cluster, or remembers this node id with
    /// another data directory or has replicated to it as leader (its data was lost). Nodes that
    /// do not answer are counted as neither formed nor fresh.
    async fn survey_peers(&self) -> Result<Vec<(NodeId, PeerState)>, StartError> {
        let ours = self.inner.peers.cluster_id();
        let mut probes = tokio::task::JoinSet::new();
        for (peer, address) in self.inner.cluster.members() {
            if *peer == self.inner.id {
                continue;
            }
            let (peers, peer, address, me) = (
                self.inner.peers.clone(),
                *peer,
                address.clone(),
                self.inner.id,
            );
            probes.spawn(async move {
                let answer = peers.identify(&address, me, PROBE_TIMEOUT).await;
                (peer, address, answer)
            });
        }
        let mut survey = Vec::new();
        while let Some(probe) = probes.join_next().await {
            let Ok((peer, address, Ok(answer))) = probe else {
                continue;
            };
            match formation::classify(&answer, ours, self.inner.incarnation) {
                Ok(state) => survey.push((peer, state)),
                Err(Refusal::OtherCluster { theirs }) => {
                    return Err(StartError::PeerInOtherCluster {
                        peer,
                        address,
                        theirs,
                        ours: ours.unwrap_or(0),
                    })
                }
                Err(Refusal::DataLost) => {
                    return Err(StartError::DataLost {
                        id: self.inner.id,
                        peer,
                    })
                }
            }
        }
        Ok(survey)
    }

    /// Records the cluster id and the fellow founders counted, then initializes Raft with the
    /// listed members.
    async fn bootstrap(
        &self,
        cluster: &ClusterSpec,
        founders: &[(NodeId, u64)],
    ) -> Result<(), StartError> {
        let ours = cluster.cluster_id();
        self.inner.identity.claim_cluster(ours).await?;
        self.inner.identity.record_founders(founders).await?;
        let members: BTreeMap<NodeId, BasicNode> = cluster
            .members()
            .iter()
            .map(|(id, address)| (*id, BasicNode::new(address)))
            .collect();
        match self.inner.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(openraft::error::RaftError::APIError(
                openraft::error::InitializeError::NotAllowed(_),
            )) => Ok(()),
            Err(e) => Err(StartError::Raft(e.to_string())),
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The node-to-node service to mount on this node's listener.
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

    /// The leader this node currently knows of, with its address.
    fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        let address = metrics
            .membership_config
            .membership()
            .get_node(&leader)?
            .addr
            .clone();
        Some((leader, address))
    }

    /// A request id of this node's own, for a write that will be sent again after an
    /// [`NodeError::Indeterminate`] answer (the retry then applies at most once).
    pub fn next_request_id(&self) -> RequestId {
        RequestId {
            client_id: self.inner.client_id,
            sequence: self.inner.sequence.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Applies a write through the leader and returns its reply, waiting through elections until
    /// `deadline`. A request without an id gets one, so internal retries apply it once. At the
    /// deadline the error says whether the write may still be applied
    /// ([`NodeError::Indeterminate`]) or certainly will not be ([`NodeError::Unavailable`]).
    pub async fn write(
        &self,
        mut request: WriteRequest,
        deadline: Instant,
    ) -> Result<WriteReply, NodeError> {
        if request.id.is_none() {
            request.id = Some(self.next_request_id());
        }
        match self
            .on_leader(LeaderRequest::Write(request), deadline)
            .await?
        {
            LeaderReply::Write(reply) => {
                self.record_acknowledged(reply.revision);
                Ok(reply)
            }
            other => unreachable!("a write answered with {other:?}"),
        }
    }

    /// Changes the membership through the leader.
    pub async fn change_membership(
        &self,
        request: AdminRequest,
        deadline: Instant,
    ) -> Result<MembershipView, NodeError> {
        match self
            .on_leader(LeaderRequest::Admin(request), deadline)
            .await?
        {
            LeaderReply::Admin(view) => {
                self.record_acknowledged(view.revision);
                Ok(view)
            }
            other => unreachable!("a membership change answered with {other:?}"),
        }
    }

    /// The newest revision this process has acknowledged to anyone, on any front end: a write
    /// (or membership change) answered here, even before this replica has applied it (a
    /// follower's write returns when the leader answers).
    pub fn acknowledged(&self) -> Revision {
        self.inner.acknowledged.load(Ordering::Acquire)
    }

    /// Records a reply at `revision` about to be returned to a client.
    fn record_acknowledged(&self, revision: Revision) {
        self.inner
            .acknowledged
            .fetch_max(revision, Ordering::AcqRel);
    }

    /// The revision every session read in this process must reach: a leader's read index,
    /// obtained once after the process started (by [`Node::learn_startup_floor`], or by the first
    /// read that finds it missing). An entry committed before then, such as a write this node
    /// acknowledged before it crashed, is at or below it; a restarted node has forgotten what it
    /// acknowledged and may not have applied it yet. Until a leader answers, session reads fail
    /// Unavailable rather than answer from a replica that may be behind them.
    async fn startup_floor(&self, deadline: Instant) -> Result<Revision, NodeError> {
        if let Some(floor) = self.inner.startup_floor.get() {
            return Ok(*floor);
        }
        self.read_index(deadline).await.map_err(|e| match e {
            NodeError::Unavailable(reason) => NodeError::Unavailable(format!(
                "node {} has not yet learned what was committed before it started: {reason}",
                self.inner.id
            )),
            other => other,
        })
    }

    /// The leader's read index: everything committed before this call. It also serves as this
    /// process's startup floor if it has none yet.
    async fn read_index(&self, deadline: Instant) -> Result<Revision, NodeError> {
        match self.on_leader(LeaderRequest::ReadIndex, deadline).await? {
            LeaderReply::ReadIndex(index) => {
                let _ = self.inner.startup_floor.set(index);
                Ok(index)
            }
            other => unreachable!("a read index answered with {other:?}"),
        }
    }

    /// Obtains the startup floor as soon as a leader answers, so the first session read does
    /// not wait for it; retried until then (a fresh node waits to be added).
    async fn learn_startup_floor(self) {
        while self.inner.startup_floor.get().is_none() {
            if self.inner.raft.metrics().borrow().state == ServerState::Shutdown {
                return;
            }
            let deadline = Instant::now() + self.inner.timing.request_timeout;
            if let Err(e) = self.read_index(deadline).await {
                tracing::debug!("learning the startup floor failed: {e}");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }

    /// Waits until a read at `consistency` may be served from this replica, then returns the
    /// revision applied here. A session read waits for the newest of its `min_revision`, what
    /// this node has acknowledged (so every front end and connection of one node is one
    /// session), and the startup floor (so a restarted node never answers below what it
    /// acknowledged before it crashed).
    pub async fn read_barrier(
        &self,
        consistency: Consistency,
        deadline: Instant,
    ) -> Result<Revision, NodeError> {
        let wanted = match consistency {
            Consistency::Local => return Ok(self.inner.view.applied()),
            Consistency::Session { min_revision } => min_revision
                .max(self.acknowledged())
                .max(self.startup_floor(deadline).await?),
            Consistency::Linearizable => self.read_index(deadline).await?,
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if self.inner.view.wait_applied(wanted, remaining).await {
            Ok(self.inner.view.applied())
        } else {
            Err(NodeError::Unavailable(format!(
                "node {} has applied revision {}, and did not reach revision {wanted} in time",
                self.inner.id,
                self.inner.view.applied()
            )))
        }
    }

    /// Runs `request` on the leader: here if this node leads, else over `Peer.Forward`. Holds it
    /// through elections and retries until `deadline`.
    async fn on_leader(
        &self,
        request: LeaderRequest,
        deadline: Instant,
    ) -> Result<LeaderReply, NodeError> {
        let mut problem = String::from("no leader is known");
        // Whether a leader may have been handed this request (then a write may commit later,
        // even after this call gave up on it).
        let mut handed_over = false;
        let writes = matches!(request, LeaderRequest::Write(_));
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(if writes && handed_over {
                    NodeError::Indeterminate(format!(
                        "no leader confirmed the write in time, and it may still be applied: {problem}"
                    ))
                } else {
                    NodeError::Unavailable(format!("no leader answered in time: {problem}"))
                });
            }
            let outcome = match self.leader() {
                Some((leader, _)) if leader == self.inner.id => {
                    handed_over = true;
                    match tokio::time::timeout(remaining, self.execute_here(request.clone())).await
                    {
                        Ok(result) => Ok(result),
                        Err(_) => Err("the leader (this node) did not commit in time".to_string()),
                    }
                }
                Some((leader, address)) => {
                    let forwarded = self.inner.peers.forward(&address, &request, remaining);
                    // A leader that vanished without closing its connections (its host or
                    // container gone) never answers: give up on it once the others replace it,
                    // and send the request again (a write with its id applies once).
                    tokio::select! {
                        answer = forwarded => answer.map_err(|status| {
                            handed_over |= !never_sent(&status);
                            format!("leader {leader} at {address}: {}", status.message())
                        }),
                        () = self.leader_replaced(leader) => {
                            handed_over = true;
                            Err(format!("leader {leader} was replaced before it answered"))
                        }
                    }
                }
                None => Err("no leader is known (election in progress)".to_string()),
            };
            if outcome.is_ok() {
                handed_over = true;
            }
            match outcome {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(LeaderError::Rejected(reason))) => return Err(NodeError::Rejected(reason)),
                Ok(Err(LeaderError::NotLeader)) => problem = "leadership moved".into(),
                Ok(Err(LeaderError::Unavailable(reason))) => problem = reason,
                Err(reason) => problem = reason,
            }
            tokio::time::sleep(RETRY_PAUSE.min(remaining)).await;
        }
    }

    /// Resolves once this node no longer takes `leader` for the leader.
    async fn leader_replaced(&self, leader: NodeId) {
        let mut metrics = self.inner.raft.metrics();
        while metrics.borrow_and_update().current_leader == Some(leader) {
            if metrics.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Executes a request forwarded by another node, if this node leads.
    pub(crate) async fn execute_as_leader(
        &self,
        request: LeaderRequest,
    ) -> Result<LeaderReply, LeaderError> {
        let leads = self.inner.raft.metrics().borrow().current_leader == Some(self.inner.id);
        if !leads {
            return Err(LeaderError::NotLeader);
        }
        self.execute_here(request).await
    }

    /// Executes `request` on this node, the leader.
    async fn execute_here(&self, request: LeaderRequest) -> Result<LeaderReply, LeaderError> {
        match request {
            LeaderRequest::Transfer { to, asked_in } => self.transfer(to, asked_in).await,
            request => self.lead(request).await,
        }
    }

    /// Hands this leader's leadership to `to` (or to any caught-up voter, unless it has moved
    /// since term `asked_in`: the request is a retry of one that did it).
    async fn transfer(
        &self,
        to: Option<NodeId>,
        asked_in: u64,
    ) -> Result<LeaderReply, LeaderError> {
        let me = self.inner.id;
        let (term, voters) = {
            let m = self.inner.raft.metrics().borrow().clone();
            let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
            (m.current_term, voters)
        };
        match to {
            Some(to) if to == me => return Ok(LeaderReply::Transferred { leader: me, term }),
            None if term > asked_in => return Ok(LeaderReply::Transferred { leader: me, term }),
            Some(to) if !voters.contains(&to) => {
                return Err(LeaderError::Rejected(format!("node {to} is not a voter")));
            }
            None if voters.len() == 1 => {
                return Err(LeaderError::Rejected(
                    "this node is the only voter: there is no one to hand the leadership to".into(),
                ));
            }
            _ => {}
        }
        match self.hand_over_to(to, TRANSFER_WITHIN).await {
            Some(leader) => Ok(LeaderReply::Transferred {
                leader,
                term: self.inner.raft.metrics().borrow().current_term,
            }),
            None => Err(LeaderError::Unavailable(
                "no voter took the leadership in time".into(),
            )),
        }
    }

    /// Moves the leadership to voter `to` (or to any caught-up voter), through the leader:
    /// returns the leader afterwards and its term. Writes are held meanwhile, not failed.
    pub async fn transfer_leadership(
        &self,
        to: Option<NodeId>,
        deadline: Instant,
    ) -> Result<(NodeId, u64), NodeError> {
        let asked_in = self.inner.raft.metrics().borrow().current_term;
        match self
            .on_leader(LeaderRequest::Transfer { to, asked_in }, deadline)
            .await?
        {
            LeaderReply::Transferred { leader, term } => Ok((leader, term)),
            other => unreachable!("a leadership transfer answered with {other:?}"),
        }
    }

    /// Executes `request` as leader, unless a handover has begun; counted while it runs, so a
    /// handover can wait until nothing more is being appended.
    async fn lead(&self, request: LeaderRequest) -> Result<LeaderReply, LeaderError> {
        struct Leading<'a>(&'a AtomicU64);
        impl Drop for Leading<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.inner.leading.fetch_add(1, Ordering::SeqCst);
        let _leading = Leading(&self.inner.leading);
        if self.inner.handing_over.load(Ordering::SeqCst) {
            return Err(LeaderError::Unavailable(
                "the leader is handing its leadership over".into(),
            ));
        }
        match request {
            LeaderRequest::ReadIndex => self.read_index_as_leader().await,
            LeaderRequest::Write(write) => {
                let stamp = self.leader_time().await?;
                leader::execute(&self.inner.raft, LeaderRequest::Write(write), stamp).await
            }
            request => leader::execute(&self.inner.raft, request, 0).await,
        }
    }

    /// The replicated time this node stamps now, as leader of its current term. The first stamp
    /// of a term waits until this replica has applied every entry committed before the term
    /// (`ensure_linearizable`): the term's time continues from their largest stamp.
    async fn leader_time(&self) -> Result<Millis, LeaderError> {
        let term = self.inner.raft.metrics().borrow().current_term;
        if !self.inner.time.started(term) {
            self.inner
                .raft
                .ensure_linearizable()
                .await
                .map_err(leader::read_error)?;
        }
        let floor = self.inner.view.read(|m| m.clock());
        Ok(self.inner.time.stamp(term, floor))
    }

    /// How far the replicated clock of this replica lags the leader's time.
    async fn clock_lag(&self) -> Result<Millis, LeaderError> {
        let now = self.leader_time().await?;
        Ok(now.saturating_sub(self.inner.view.read(|m| m.clock())))
    }

    /// The index a linearizable read waits for. If the replicated clock lags this leader's time
    /// by more than [`READ_CLOCK_LAG_MS`], the index of a `Tick` committed now (in this term,
    /// so it confirms the leadership too), so the read judges TTLs at the current time on any
    /// replica; reads arriving meanwhile wait for that `Tick` rather than commit their own.
    async fn read_index_as_leader(&self) -> Result<LeaderReply, LeaderError> {
        if self.clock_lag().await? > READ_CLOCK_LAG_MS {
            let _tick = self.inner.read_tick.lock().await;
            if self.clock_lag().await? > READ_CLOCK_LAG_MS {
                let tick = LeaderRequest::Write(WriteRequest {
                    id: None,
                    stamp: 0,
                    command: Command::Tick,
                });
                let stamp = self.leader_time().await?;
                return match leader::execute(&self.inner.raft, tick, stamp).await? {
                    LeaderReply::Write(reply) => Ok(LeaderReply::ReadIndex(reply.revision)),
                    other => unreachable!("a tick answered with {other:?}"),
                };
            }
        }
        leader::execute(&self.inner.raft, LeaderRequest::ReadIndex, 0).await
    }

    /// Admits a node-to-node call: refuses one that does not announce its cluster (UNAUTHENTICATED)
    /// or comes from another cluster; a node that does not know its cluster yet (it was started
    /// with `--join`) adopts the first cluster id it hears.
    pub async fn admit<T>(&self, request: &tonic::Request<T>) -> Result<(), Status> {
        match announced_cluster(request)? {
            Some(theirs) => self.admit_cluster(theirs).await,
            None => Err(Status::unauthenticated(format!(
                "node {} refuses a node-to-node call without the {} header",
                self.inner.id,
                conclave_proto::CLUSTER_ID_HEADER
            ))),
        }
    }

    /// Admits an identity probe: like [`Node::admit`], except that one without the header is
    /// answered (a `--join` node probes before it knows its cluster; the answer is read-only).
    pub async fn admit_probe<T>(&self, request: &tonic::Request<T>) -> Result<(), Status> {
        match announced_cluster(request)? {
            Some(theirs) => self.admit_cluster(theirs).await,
            None => Ok(()),
        }
    }

    /// Admits a call from a node announcing `cluster_id`.
    async fn admit_cluster(&self, cluster_id: u64) -> Result<(), Status> {
        match self.inner.peers.cluster_id() {
            Some(ours) if ours != cluster_id => Err(Status::failed_precondition(format!(
                "node {} belongs to cluster {ours:016x}, the caller to cluster {cluster_id:016x}",
                self.inner.id
            ))),
            Some(_) => Ok(()),
            None => {
                self.inner
                    .identity
                    .claim_cluster(cluster_id)
                    .await
                    .map_err(|e| Status::failed_precondition(e.to_string()))?;
                self.inner.peers.set_cluster_id(cluster_id);
                Ok(())
            }
        }
    }

    /// Answers another node's identity probe.
    pub(crate) fn identify(&self, caller: NodeId) -> IdentifyResponse {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let replicated_to_caller = metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(&caller).cloned().flatten())
            .map(|log_id| log_id.index);
        IdentifyResponse {
            node_id: self.inner.id,
            cluster_id: self.inner.peers.cluster_id().unwrap_or(0),
            replicated_to_caller,
            recorded_incarnation: self.inner.view.read(|m| m.incarnation(caller)),
            last_log_index: has_raft_state(&metrics).then(|| metrics.last_log_index.unwrap_or(0)),
            incarnation: self.inner.incarnation,
            founded_with_caller: self
                .inner
                .identity
                .founders()
                .ok()
                .flatten()
                .and_then(|f| f.iter().find(|(id, _)| *id == caller).map(|(_, i)| *i)),
        }
    }

    /// Whether this node answers Raft messages: it had Raft state when it started, or
    /// [`Node::form`] has decided how it comes into the cluster.
    pub(crate) fn takes_part(&self) -> bool {
        self.inner.takes_part.load(Ordering::SeqCst)
    }

    /// Whether this node has Raft state: it created the cluster or a leader brought it in. One
    /// without must not vote: it may be a node whose data was lost, not yet refused, and its
    /// vote could elect a leader missing acknowledged writes.
    pub(crate) fn may_vote(&self) -> bool {
        self.takes_part() && has_raft_state(&self.inner.raft.metrics().borrow())
    }

    /// The node's view of the cluster.
    pub fn status(&self) -> NodeStatus {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let role = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let membership = metrics.membership_config.membership();
        NodeStatus {
            id: self.inner.id,
            leader: metrics.current_leader,
            term: metrics.current_term,
            applied: self.inner.view.applied(),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            role,
            members: MembershipView::of(0, membership).members,
            cluster_id: self.inner.peers.cluster_id(),
            snapshot_index: metrics.snapshot.map_or(0, |id| id.index),
            purged_index: metrics.purged.map_or(0, |id| id.index),
            keys: self.inner.view.read(|m| m.len() as u64),
            log_entries_appended: self.inner.log_stats.appended(),
            log_flushes: self.inner.log_stats.flushes(),
        }
    }

    /// While this node leads: first renews every lease once per term (keep-alives sent during the
    /// election could not commit), then proposes the removal of keys and the end of leases whose
    /// deadline has passed, so every replica removes them at the same log position.
    async fn leader_housekeeping(self) {
        let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renewed_in_term = None;
        loop {
            tick.tick().await;
            let metrics = self.inner.raft.metrics().borrow().clone();
            if metrics.state == ServerState::Shutdown {
                return;
            }
            if metrics.current_leader != Some(self.inner.id) {
                continue;
            }
            {
                let mut led_since = self.inner.led_since.lock().expect("lock poisoned");
                if led_since.is_none_or(|(term, _)| term != metrics.current_term) {
                    *led_since = Some((metrics.current_term, Instant::now()));
                }
            }
            if renewed_in_term != Some(metrics.current_term) {
                match self.propose_as_leader(Command::LeaseRenewAll).await {
                    Ok(()) => renewed_in_term = Some(metrics.current_term),
                    Err(e) => tracing::debug!("renewing leases after the election failed: {e}"),
                }
                continue;
            }
            // Expired at the replicated time this leader would stamp now, not at its wall clock.
            let timeout = self.inner.timing.request_timeout;
            let now = match tokio::time::timeout(timeout, self.leader_time()).await {
                Ok(Ok(now)) => now,
                Ok(Err(e)) => {
                    tracing::debug!("reading the replicated time failed: {e:?}");
                    continue;
                }
                Err(_) => continue,
            };
            let (keys, leases, lag) = self.inner.view.read(|m| {
                (
                    m.expired_keys(now, REAP_BATCH),
                    m.expired_leases(now, REAP_BATCH),
                    now.saturating_sub(m.clock()),
                )
            });
            if keys.is_empty() && leases.is_empty() && lag >= IDLE_TICK_AFTER_MS {
                if let Err(e) = self.propose_as_leader(Command::Tick).await {
                    tracing::debug!("advancing the replicated clock failed: {e}");
                }
            }
            if !keys.is_empty() {
                if let Err(e) = self.propose_as_leader(Command::Reap { keys }).await {
                    tracing::debug!("reaping expired keys failed: {e}");
                }
            }
            if !leases.is_empty() {
                if let Err(e) = self
                    .propose_as_leader(Command::LeaseExpire { leases })
                    .await
                {
                    tracing::debug!("expiring leases failed: {e}");
                }
            }
        }
    }

    /// Proposes a housekeeping command if this node leads; never forwarded. A deposed leader's
    /// expiry must not reach the next leader before that one has renewed the leases.
    async fn propose_as_leader(&self, command: Command) -> Result<(), NodeError> {
        let request = WriteRequest {
            id: None,
            stamp: 0,
            command,
        };
        let proposed = tokio::time::timeout(
            self.inner.timing.request_timeout,
            self.execute_as_leader(LeaderRequest::Write(request)),
        )
        .await;
        match proposed {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(NodeError::Unavailable(format!("{e:?}"))),
            Err(_) => Err(NodeError::Unavailable("not committed in time".into())),
        }
    }

    /// Writes one of the node's own commands, within the request timeout.
    async fn propose(&self, command: Command) -> Result<(), NodeError> {
        let request = WriteRequest {
            id: None,
            stamp: 0,
            command,
        };
        let deadline = Instant::now() + self.inner.timing.request_timeout;
        self.write(request, deadline).await.map(|_| ())
    }

    /// Records this node's incarnation in the replicated state once the node is a member that
    /// can reach a leader; retried until it is there.
    async fn register_incarnation(self) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let id = self.inner.id;
            if self.inner.raft.metrics().borrow().state == ServerState::Shutdown {
                return;
            }
            if self.inner.view.read(|m| m.incarnation(id)) == Some(self.inner.incarnation) {
                return;
            }
            let is_member = {
                let metrics = self.inner.raft.metrics();
                let metrics = metrics.borrow();
                metrics.current_leader.is_some()
                    && metrics
                        .membership_config
                        .membership()
                        .get_node(&id)
                        .is_some()
            };
            if !is_member {
                continue;
            }
            let command = Command::RegisterNode {
                node: id,
                incarnation: self.inner.incarnation,
            };
            if let Err(e) = self.propose(command).await {
                tracing::debug!("registering this node's incarnation failed: {e}");
            }
        }
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
    }
}

/// Whether a failed call certainly never reached its peer: no TCP connection to it could be
/// made (refused, or timed out connecting), so nothing was sent.
fn never_sent(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        let refused = error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
        // hyper-util's connector reports every failure to connect so (its `ConnectError`).
        if refused || error.to_string().starts_with("tcp connect error") {
            return true;
        }
        source = error.source();
    }
    false
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
