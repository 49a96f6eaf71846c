//! The node-to-node network: gRPC clients of other nodes' `Peer` service.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conclave_proto::peer::peer_client::PeerClient;
use conclave_proto::peer::{
    ForwardRequest, IdentifyRequest, IdentifyResponse, RaftMessage, TimeoutNowRequest,
};
use conclave_proto::{CLUSTER_ID_HEADER, TARGET_NODE_HEADER, WIRE_VERSION, WIRE_VERSION_HEADER};
use openraft::error::{
    Infallible, InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError,
    RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

use crate::codec::{decode, encode};
use crate::leader::{LeaderReply, LeaderRequest, LeaderResult};
use crate::{NodeId, TypeConfig};

/// Largest node-to-node message accepted, either way. A log entry holds at most one command
/// (16 MiB, [`conclave_state::Limits`]), AppendEntries batches stop at [`MAX_APPEND_BYTES`]
/// plus one entry, snapshot chunks at openraft's 3 MiB: four commands' worth leaves room and
/// still bounds what a peer can make a node allocate.
pub const MAX_PEER_MESSAGE_BYTES: usize = 4 * conclave_state::Limits::DEFAULT.max_command_bytes;

/// Largest AppendEntries batch sent in one RPC, in bytes of application data.
const MAX_APPEND_BYTES: u64 = 4 * 1024 * 1024;

/// The application bytes an entry carries (keys and values), which dominate its encoded size.
fn entry_bytes(entry: &openraft::Entry<TypeConfig>) -> u64 {
    match &entry.payload {
        openraft::EntryPayload::Normal(request) => request.command.payload_bytes() as u64,
        _ => 64,
    }
}

/// How long to wait for a TCP connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Lazily connected clients of every peer, two per address (see [`Lane`]), shared by Raft
/// replication and request forwarding. The cluster id goes out on every call.
#[derive(Clone)]
pub struct Peers {
    cluster_id: Arc<Mutex<Option<u64>>>,
    channels: Arc<Mutex<HashMap<(String, Lane), Channel>>>,
    /// Whether each peer answered its last Raft RPC (absent: never asked yet).
    reach: Arc<Mutex<HashMap<NodeId, Reach>>>,
    /// How connections to peers authenticate (None: plaintext).
    tls: Arc<Mutex<Option<ClientTlsConfig>>>,
    /// The address connections to peers leave from (see [`Peers::leaving_from`]).
    source: Option<IpAddr>,
}

impl Peers {
    /// Clients that announce `cluster_id` (None while a joining node has not learned it yet).
    pub fn new(cluster_id: Option<u64>) -> Self {
        Peers {
            cluster_id: Arc::new(Mutex::new(cluster_id)),
            channels: Arc::default(),
            reach: Arc::default(),
            tls: Arc::default(),
            source: None,
        }
    }

    /// Connections to peers leave from `source` (the node's listen address, when it names
    /// one): peers and firewalls then see each node under one address, whichever way a
    /// connection goes (the chaos suite cuts links by address).
    pub fn leaving_from(mut self, source: Option<IpAddr>) -> Self {
        self.source = source.filter(|ip| !ip.is_unspecified());
        self
    }

    /// Whether each peer asked so far answered its last Raft RPC, by node id.
    pub fn reachability(&self) -> Vec<(NodeId, bool)> {
        let mut all: Vec<_> = self
            .reach
            .lock()
            .expect("lock poisoned")
            .iter()
            .map(|(id, reach)| (*id, *reach != Reach::Down))
            .collect();
        all.sort();
        all
    }

    /// Notes how a Raft RPC to `target` went. A peer going from answering to unreachable is
    /// logged once, as a warning, and its return once: openraft's own per-RPC reports of an
    /// unreachable peer (every heartbeat) are left out of the log (see the binary's log
    /// filter). A peer not reached yet since this node started is normal while a cluster
    /// starts, in any order: that is not logged.
    fn noted(&self, target: NodeId, address: &str, failure: Option<&Status>) {
        let now = if failure.is_some() {
            Reach::Down
        } else {
            Reach::Up
        };
        let before = self
            .reach
            .lock()
            .expect("lock poisoned")
            .insert(target, now);
        match (before, failure) {
            (Some(Reach::Up), Some(status)) => tracing::warn!(
                "node {target} at {address} is unreachable: {}",
                status.message()
            ),
            (Some(Reach::Down), None) => {
                tracing::info!("node {target} at {address} is reachable again")
            }
            _ => {}
        }
    }

    /// Connections to peers use `tls` (the cluster's CA and this node's certificate) from now
    /// on; open connections are dropped so the next call connects with it.
    pub fn set_tls(&self, tls: Option<ClientTlsConfig>) {
        *self.tls.lock().expect("lock poisoned") = tls;
        self.channels.lock().expect("lock poisoned").clear();
    }

    /// The cluster id announced on calls.
    pub fn cluster_id(&self) -> Option<u64> {
        *self.cluster_id.lock().expect("lock poisoned")
    }

    /// Sets the cluster id once a joining node has learned it.
    pub fn set_cluster_id(&self, id: u64) {
        *self.cluster_id.lock().expect("lock poisoned") = Some(id);
    }

    fn client(&self, address: &str, lane: Lane) -> Result<PeerClient<Channel>, Status> {
        let mut channels = self.channels.lock().expect("lock poisoned");
        let key = (address.to_string(), lane);
        let channel = match channels.get(&key) {
            Some(channel) => channel.clone(),
            None => {
                let channel = self.connect(address)?;
                channels.insert(key, channel.clone());
                channel
            }
        };
        Ok(PeerClient::new(channel).max_decoding_message_size(MAX_PEER_MESSAGE_BYTES))
    }

    /// A channel of its own to the node at `address` (not shared with Raft traffic, so a busy
    /// stream cannot delay heartbeats behind it on one connection).
    pub fn dedicated_channel(&self, address: &str) -> Result<Channel, Status> {
        self.connect(address)
    }

    /// Adds the cluster id and format version headers to a request of any node-to-node service.
    pub fn stamp<T>(&self, mut request: Request<T>) -> Request<T> {
        request.metadata_mut().insert(
            WIRE_VERSION_HEADER,
            WIRE_VERSION
                .to_string()
                .parse()
                .expect("digits are valid metadata"),
        );
        if let Some(id) = self.cluster_id() {
            request.metadata_mut().insert(
                CLUSTER_ID_HEADER,
                format!("{id:016x}").parse().expect("hex is valid metadata"),
            );
        }
        request
    }

    fn connect(&self, address: &str) -> Result<Channel, Status> {
        let tls = self.tls.lock().expect("lock poisoned").clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| Status::invalid_argument(format!("bad peer address {address}: {e}")))?;
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Status::invalid_argument(format!("TLS to {address}: {e}")))?;
        }
        let endpoint = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(1))
            // An idle Bulk lane finds a vanished peer before the next large send needs it.
            .keep_alive_while_idle(true)
            .local_address(self.source);
        Ok(endpoint.connect_lazy())
    }

    fn request<T>(&self, message: T, timeout: Duration) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(timeout);
        self.stamp(request)
    }

    /// A request meant for node `target` only (see [`TARGET_NODE_HEADER`]).
    fn request_to<T>(&self, target: NodeId, message: T, timeout: Duration) -> Request<T> {
        let mut request = self.request(message, timeout);
        request.metadata_mut().insert(
            TARGET_NODE_HEADER,
            target
                .to_string()
                .parse()
                .expect("digits are valid metadata"),
        );
        request
    }

    /// Sends a request to be executed by node `leader`, at `address`, as leader.
    pub(crate) async fn forward(
        &self,
        leader: NodeId,
        address: &str,
        request: &LeaderRequest,
        timeout: Duration,
    ) -> Result<Result<LeaderReply, crate::leader::LeaderError>, Status> {
        let message = ForwardRequest {
            request: encode(request),
        };
        let mut client = self.client(address, Lane::for_bytes(message.request.len() as u64))?;
        let response = client
            .forward(self.request_to(leader, message, timeout))
            .await?;
        decode::<LeaderResult>(&response.into_inner().reply)
    }

    /// Asks the node at `address` who it is.
    pub async fn identify(
        &self,
        address: &str,
        caller_id: NodeId,
        timeout: Duration,
    ) -> Result<IdentifyResponse, Status> {
        let mut client = self.client(address, Lane::Control)?;
        let response = client
            .identify(self.request(IdentifyRequest { caller_id }, timeout))
            .await?;
        Ok(response.into_inner())
    }

    /// Asks node `successor`, at `address`, to start an election now (see
    /// [`crate::Node::hand_over`]).
    pub(crate) async fn timeout_now(
        &self,
        successor: NodeId,
        address: &str,
        request: TimeoutNowRequest,
        timeout: Duration,
    ) -> Result<(), Status> {
        let mut client = self.client(address, Lane::Control)?;
        client
            .timeout_now(self.request_to(successor, request, timeout))
            .await?;
        Ok(())
    }
}

/// Which of the two connections to a peer a call goes on. Large messages have one of their own:
/// HTTP/2 gives a connection's flow-control window to its streams in turn, so a heartbeat
/// queued behind a 16 MiB AppendEntries on one connection waited for all of it to be sent, and
/// the followers, hearing nothing meanwhile, deposed the healthy leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Lane {
    /// Heartbeats, votes, small entries and forwarded writes, handover.
    Control,
    /// AppendEntries and forwarded writes of [`LARGE_MESSAGE_BYTES`] or more, snapshots.
    Bulk,
}

impl Lane {
    fn for_bytes(bytes: u64) -> Lane {
        if bytes >= LARGE_MESSAGE_BYTES {
            Lane::Bulk
        } else {
            Lane::Control
        }
    }
}

/// Messages of at least this many bytes go on the [`Lane::Bulk`] connection; AppendEntries
/// this large are also sent on a task of their own (see [`InFlight`]).
const LARGE_MESSAGE_BYTES: u64 = 256 * 1024;

/// Whether a peer answered its last Raft RPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reach {
    Up,
    Down,
}

/// Builds one [`PeerNetwork`] per replication target.
#[derive(Clone)]
pub struct NetworkFactory {
    pub(crate) peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerNetwork {
            link: Link {
                target,
                address: node.addr.clone(),
                peers: self.peers.clone(),
            },
            in_flight: None,
        }
    }
}

/// openraft's connection to one peer.
pub struct PeerNetwork {
    link: Link,
    /// A large AppendEntries still on its way (see [`PeerNetwork::append_entries`]).
    in_flight: Option<InFlight>,
}

/// Where one peer is, and the node's connections to it.
#[derive(Clone)]
struct Link {
    target: NodeId,
    address: String,
    peers: Peers,
}

/// An AppendEntries sent on a task of its own: openraft cuts every attempt at one heartbeat
/// interval, far less than a large entry takes to move, and asks again with the same entries;
/// the asks wait for this one send instead of starting over. The task also keeps the follower's
/// election timer from running out meanwhile (see [`Link::send_with_pulse`]).
struct InFlight {
    vote: openraft::Vote<NodeId>,
    prev: Option<openraft::LogId<NodeId>>,
    last: Option<openraft::LogId<NodeId>>,
    entries: u64,
    task: tokio::task::JoinHandle<RpcResult<AppendEntriesResponse<NodeId>, Infallible>>,
}

impl Drop for PeerNetwork {
    fn drop(&mut self) {
        if let Some(in_flight) = self.in_flight.take() {
            in_flight.task.abort();
        }
    }
}

/// The slowest rate a peer link is given to move an AppendEntries (bytes per second), on top
/// of [`APPEND_BASE_TIMEOUT`]: 16 MiB get 2.5 s.
const APPEND_BYTES_PER_SECOND: u64 = 8 * 1024 * 1024;
const APPEND_BASE_TIMEOUT: Duration = Duration::from_millis(500);

/// How long an AppendEntries of `bytes` may take.
fn append_timeout(bytes: u64) -> Duration {
    APPEND_BASE_TIMEOUT + Duration::from_millis(bytes * 1000 / APPEND_BYTES_PER_SECOND)
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl Link {
    /// Classifies a transport failure the way openraft expects: unreachable peers back off,
    /// other failures are retried.
    fn transport_error<E: std::error::Error>(
        status: Status,
    ) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        match status.code() {
            Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
            _ => RPCError::Network(NetworkError::new(&status)),
        }
    }

    /// Sends one Raft RPC, on the lane its size asks for; the answer is an encoded
    /// `Result<Resp, RaftError<NodeId, E>>`.
    async fn call<Req, Resp, E>(
        &self,
        request: &Req,
        timeout: Duration,
        send: impl AsyncFnOnce(
            PeerClient<Channel>,
            Request<RaftMessage>,
        ) -> Result<tonic::Response<RaftMessage>, Status>,
    ) -> RpcResult<Resp, E>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let message = RaftMessage {
            payload: encode(request),
        };
        let lane = Lane::for_bytes(message.payload.len() as u64);
        let client = self
            .peers
            .client(&self.address, lane)
            .map_err(Self::transport_error::<E>)?;
        let request = self.peers.request_to(self.target, message, timeout);
        let response = send(client, request).await;
        let unreachable = matches!(&response, Err(status) if status.code() == Code::Unavailable);
        self.peers.noted(
            self.target,
            &self.address,
            response.as_ref().err().filter(|_| unreachable),
        );
        let response = response.map_err(Self::transport_error::<E>)?;
        let result: Result<Resp, RaftError<NodeId, E>> = decode(&response.into_inner().payload)
            .map_err(|status| RPCError::Network(NetworkError::new(&status)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl Link {
    /// Sends a large AppendEntries and, until its answer comes, an empty one (same vote, same
    /// previous entry, same commit) every `interval`, answers unread.
    ///
    /// While openraft's replication to this peer waits on the large send, no heartbeat of its
    /// own goes out: each retry first reads the whole entry back from the log (tens of
    /// milliseconds for 16 MiB, far more on a loaded machine) and then waits one interval, and
    /// the follower, hearing nothing for an election timeout, deposed the healthy leader. The
    /// pulse runs on its own timer, whatever the replication loop is doing, and stops with the
    /// send (or when the task is aborted: openraft moved on or the leadership ended).
    async fn send_with_pulse(
        self,
        rpc: AppendEntriesRequest<TypeConfig>,
        timeout: Duration,
        interval: Duration,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, Infallible> {
        let heartbeat = AppendEntriesRequest::<TypeConfig> {
            vote: rpc.vote,
            prev_log_id: rpc.prev_log_id,
            leader_commit: rpc.leader_commit,
            entries: Vec::new(),
        };
        let send = self.call(&rpc, timeout, async |mut c, r| c.append_entries(r).await);
        let mut send = std::pin::pin!(send);
        // The first beat goes at once: reading the entries back before this send already
        // used up part of the follower's election timeout.
        let mut pulse = tokio::time::interval(interval);
        pulse.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Owned here, so that no beat outlives the send: one landing after a step-down would
        // count at the follower as word from a leader that is gone, and hold off an election.
        let mut beats = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                answer = &mut send => return answer,
                Some(_) = beats.join_next(), if !beats.is_empty() => {}
                _ = pulse.tick() => {
                    let link = self.clone();
                    let heartbeat = heartbeat.clone();
                    // Its answer is not needed: a longer timeout than openraft's own lets it
                    // arrive on a slow machine instead of being cancelled on the way.
                    beats.spawn(async move {
                        let _: RpcResult<AppendEntriesResponse<NodeId>, Infallible> = link
                            .call(&heartbeat, PULSE_TIMEOUT_INTERVALS * interval, async |mut c, r| {
                                c.append_entries(r).await
                            })
                            .await;
                    });
                }
            }
        }
    }
}

/// A pulse heartbeat (see [`Link::send_with_pulse`]) may take this many heartbeat intervals.
const PULSE_TIMEOUT_INTERVALS: u32 = 4;

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, Infallible> {
        let entries = rpc.entries.len() as u64;
        let bytes: u64 = rpc.entries.iter().map(entry_bytes).sum();
        let last = rpc.entries.last().map(|entry| entry.log_id);
        let mut awaited = false;
        if let Some(in_flight) = &self.in_flight {
            let same_start = in_flight.vote == rpc.vote && in_flight.prev == rpc.prev_log_id;
            awaited = same_start && in_flight.last == last;
            // Asked again with more entries behind the ones on their way: asked for exactly
            // those, openraft gets the answer of the send already under way.
            let extends = same_start
                && entries > in_flight.entries
                && rpc.entries[in_flight.entries as usize - 1].log_id == in_flight.last.unwrap();
            if extends {
                return Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(in_flight.entries),
                ));
            }
            // Kept across heartbeats of the same leadership only: any other request means
            // openraft moved on, and the send's answer could no longer be used.
            let heartbeat = entries == 0 && in_flight.vote == rpc.vote;
            if !awaited && !heartbeat {
                if let Some(stale) = self.in_flight.take() {
                    stale.task.abort();
                }
            }
        }
        // A batch that would take longer to send than the heartbeat-long RPC timeout is split:
        // openraft retries with at most the hinted number of entries.
        if entries > 1 && bytes > MAX_APPEND_BYTES {
            let hint = (entries * MAX_APPEND_BYTES / bytes).clamp(1, entries - 1);
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        if !awaited && bytes < LARGE_MESSAGE_BYTES {
            // Small (a heartbeat among them): sent at once, beside any large send under way.
            return self
                .link
                .call(&rpc, option.hard_ttl(), async |mut c, r| {
                    c.append_entries(r).await
                })
                .await;
        }
        if awaited {
            // The entries are on their way already.
            drop(rpc);
        } else {
            let (vote, prev) = (rpc.vote, rpc.prev_log_id);
            let task = tokio::spawn(self.link.clone().send_with_pulse(
                rpc,
                append_timeout(bytes),
                option.hard_ttl(),
            ));
            self.in_flight = Some(InFlight {
                vote,
                prev,
                last,
                entries,
                task,
            });
        }
        // Cancelled by openraft's timeout, this leaves the send under way for its next ask.
        let in_flight = self.in_flight.as_mut().expect("set above");
        let answer = (&mut in_flight.task).await;
        self.in_flight = None;
        match answer {
            Ok(answer) => answer,
            Err(failed) => Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other(format!("the AppendEntries task failed: {failed}")),
            ))),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.link
            .call(&rpc, option.hard_ttl(), async |mut c, r| {
                c.install_snapshot(r).await
            })
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, Infallible> {
        self.link
            .call(&rpc, option.hard_ttl(), async |mut c, r| c.vote(r).await)
            .await
    }

    /// After a peer was unreachable, retry after 50 ms, doubling up to 500 ms (openraft's
    /// default is a flat 500 ms): a restarted node hears from its leader well within the
    /// election grace it gives itself at start.
    fn backoff(&self) -> Backoff {
        Backoff::new(
            (0u32..).map(|attempt| Duration::from_millis((50u64 << attempt.min(4)).min(500))),
        )
    }
}
