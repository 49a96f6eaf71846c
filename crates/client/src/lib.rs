//! The Rust SDK of Conclave's gRPC API.
//!
//! One [`Client`] is built from a list of endpoints; the first is preferred (normally the node on
//! the same host) and the others are used when it cannot be reached. The client
//! - fails over to the next endpoint when a node is unreachable or unavailable,
//! - tracks its session revision (the highest revision it has seen, from replies, watch events
//!   and pub/sub messages) and sends it with every read, so reads see its own writes on any node,
//! - numbers every write (client id, sequence) and retries it with the same numbers after a
//!   failover, so it applies once,
//! - resumes watch streams ([`Watcher`]) from the last revision delivered and re-subscribes
//!   pub/sub streams ([`Subscriber`]) on another node after a node loss.
//!
//! Modules by capability: keys, hashes, sets, transactions and scans (`kv`); leases and their
//! keep-alive ([`LeaseKeeper`]); locks with fencing tokens ([`LockGuard`]); watch; pub/sub; typed
//! room state for media servers (`rooms`, [`MediaNodeRegistration`]).
//!
//! Does not own: the wire types (generated in `conclave-proto`, re-exported as [`v1`]).
//!
//! ```no_run
//! # async fn example() -> Result<(), conclave_client::Error> {
//! let client = conclave_client::Client::connect(["127.0.0.1:7001", "127.0.0.1:7002"]).await?;
//! client.set("room/1", "meta").await?;
//! assert_eq!(client.get("room/1").await?.as_deref(), Some(&b"meta"[..]));
//! # Ok(()) }
//! ```

mod kv;
mod lease;
mod lock;
mod pubsub;
mod rooms;
mod watch;

pub use kv::{cmp, op, Txn};
pub use lease::{Lease, LeaseKeeper};
pub use lock::{LockGuard, LockOptions};
pub use pubsub::{Message, Subscriber};
pub use rooms::{keys as room_keys, MediaNodeRegistration};
pub use watch::{WatchBatch, WatchTarget, Watcher};

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use conclave_proto::v1;
use conclave_proto::v1::cluster_client::ClusterClient;
use conclave_proto::v1::kv_client::KvClient;
use tonic::service::interceptor::InterceptedService;
pub use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// What the client's calls travel on: a channel to one node, with the client's credentials
/// added to every call.
pub type Transport = InterceptedService<Channel, Authorization>;

/// How the client proves who it is (a node with users configured needs one of these).
#[derive(Clone)]
pub enum Credentials {
    /// A bearer token from the node's users file.
    Token(String),
    /// A user's name and password (as RESP's AUTH).
    Password { user: String, password: String },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        match self {
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
            Credentials::Password { user, .. } => write!(f, "Password {{ user: {user:?} }}"),
        }
    }
}

/// How [`Client::connect_with`] connects.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// TLS: the cluster's CA (and, for mutual TLS, this client's certificate and key). The
    /// server name checked is each endpoint's host, which the node's certificate must name.
    pub tls: Option<ClientTlsConfig>,
    pub credentials: Option<Credentials>,
}

/// Adds the client's `authorization` metadata to every call.
#[derive(Clone)]
pub struct Authorization(Option<tonic::metadata::AsciiMetadataValue>);

impl Authorization {
    fn new(credentials: Option<&Credentials>) -> Result<Authorization, Error> {
        let text = match credentials {
            None => return Ok(Authorization(None)),
            Some(Credentials::Token(token)) => format!("Bearer {token}"),
            Some(Credentials::Password { user, password }) => {
                format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
            }
        };
        let mut value: tonic::metadata::AsciiMetadataValue =
            text.parse().map_err(|_| Error::BadCredentials)?;
        // Kept out of HTTP/2 header compression tables.
        value.set_sensitive(true);
        Ok(Authorization(Some(value)))
    }
}

impl tonic::service::Interceptor for Authorization {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Standard base64 with padding (HTTP Basic credentials).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let bits = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(bits >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no endpoints given")]
    NoEndpoints,
    #[error("invalid endpoint {0}")]
    BadEndpoint(String),
    /// A token or password that cannot travel in gRPC metadata (not printable ASCII).
    #[error("credentials must be printable ASCII")]
    BadCredentials,
    #[error("{}: {}", .0.code(), .0.message())]
    Rpc(#[from] Status),
    /// A watch asked for events the history no longer holds: re-read, then watch from the
    /// revision read.
    #[error("the history was compacted up to revision {compacted}")]
    Compacted { compacted: u64 },
    /// The subscriber ended: the node disconnected it (it fell too far behind, or asked for
    /// more subscriptions than a subscriber may hold), with the node's reason.
    #[error("{0}")]
    Disconnected(String),
    /// The lease ended (it expired or was revoked).
    #[error("lease {0} no longer exists")]
    LeaseLost(u64),
}

impl Error {
    /// The gRPC status code, for errors that came from a node.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Rpc(status) => Some(status.code()),
            _ => None,
        }
    }
}

/// How fresh a read must be; see `conclave.v1.Consistency`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Reads see this client's own writes, on any node (the default).
    #[default]
    Session,
    /// Whatever the serving node has.
    Local,
    /// Everything committed before the read began.
    Linearizable,
}

/// Largest reply accepted (a watch response holds whole revisions: up to a 16 MiB command).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// How long a call may keep failing over before it gives up.
const FAILOVER_BUDGET: Duration = Duration::from_secs(10);

/// A Conclave client; cheap to clone, clones share the session.
#[derive(Clone)]
pub struct Client {
    channels: Arc<Vec<(String, Transport)>>,
    /// Index of the endpoint in use.
    current: Arc<AtomicUsize>,
    /// The highest revision this client has seen.
    session: Arc<AtomicU64>,
    client_id: u64,
    sequence: Arc<AtomicU64>,
}

impl Client {
    /// Connects lazily to `endpoints` (`HOST:PORT`); the first is preferred.
    pub async fn connect<I, S>(endpoints: I) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::connect_with(endpoints, ConnectOptions::default()).await
    }

    /// [`Client::connect`] with TLS and credentials.
    pub async fn connect_with<I, S>(endpoints: I, options: ConnectOptions) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let ConnectOptions { tls, credentials } = options;
        let authorization = Authorization::new(credentials.as_ref())?;
        let mut channels = Vec::new();
        for endpoint in endpoints {
            let address = endpoint.as_ref().to_string();
            let scheme = if tls.is_some() { "https" } else { "http" };
            // TLS settings with an http:// endpoint would quietly run in plaintext.
            if tls.is_some() && address.starts_with("http://") {
                return Err(Error::BadEndpoint(format!(
                    "{address}: TLS asked for, but the endpoint is http://"
                )));
            }
            let uri = if address.starts_with("http") {
                address.clone()
            } else {
                format!("{scheme}://{address}")
            };
            let mut endpoint =
                Endpoint::from_shared(uri).map_err(|_| Error::BadEndpoint(address.clone()))?;
            if let Some(tls) = &tls {
                endpoint = endpoint
                    .tls_config(tls.clone())
                    .map_err(|_| Error::BadEndpoint(address.clone()))?;
            }
            let channel = endpoint
                .connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true)
                // A node whose host vanished never closes the connection: HTTP/2 pings find it
                // gone within about two seconds, and the call in flight fails over.
                .http2_keep_alive_interval(Duration::from_secs(1))
                .keep_alive_timeout(Duration::from_secs(1))
                .keep_alive_while_idle(true)
                .connect_lazy();
            channels.push((
                address,
                InterceptedService::new(channel, authorization.clone()),
            ));
        }
        if channels.is_empty() {
            return Err(Error::NoEndpoints);
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Ok(Client {
            channels: Arc::new(channels),
            current: Arc::default(),
            session: Arc::default(),
            client_id: (nanos ^ u64::from(std::process::id()).rotate_left(32)) | 1,
            sequence: Arc::new(AtomicU64::new(1)),
        })
    }

    /// The endpoint in use.
    pub fn endpoint(&self) -> &str {
        &self.channels[self.current.load(Ordering::Relaxed) % self.channels.len()].0
    }

    /// The highest revision this client has seen (its session revision).
    pub fn session_revision(&self) -> u64 {
        self.session.load(Ordering::Relaxed)
    }

    fn observe(&self, header: Option<&v1::ResponseHeader>) {
        if let Some(h) = header {
            self.observe_revision(h.revision);
        }
    }

    /// Advances the session to `revision` if it is ahead.
    fn observe_revision(&self, revision: u64) {
        self.session.fetch_max(revision, Ordering::Relaxed);
    }

    /// The channel of the endpoint in use, and its index.
    fn channel(&self) -> (usize, Transport) {
        let index = self.current.load(Ordering::Relaxed) % self.channels.len();
        (index, self.channels[index].1.clone())
    }

    /// Moves to the endpoint after `index` (unless another call already moved on).
    fn fail_over_from(&self, index: usize) {
        let _ = self.current.compare_exchange(
            index,
            (index + 1) % self.channels.len(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    fn next_write(&self) -> Option<v1::WriteOptions> {
        Some(v1::WriteOptions {
            client_id: self.client_id,
            sequence: self.sequence.fetch_add(1, Ordering::Relaxed),
            min_revision: self.session_revision(),
        })
    }

    fn read_options(&self, consistency: Consistency) -> Option<v1::ReadOptions> {
        let (level, min_revision) = match consistency {
            Consistency::Session => (v1::Consistency::Session, self.session_revision()),
            Consistency::Local => (v1::Consistency::Local, 0),
            Consistency::Linearizable => (v1::Consistency::Linearizable, 0),
        };
        Some(v1::ReadOptions {
            consistency: level as i32,
            min_revision,
        })
    }

    /// Runs `call` against the current endpoint, moving to the next one while nodes are
    /// unreachable or unavailable. Requests are rebuilt by `call` with the same write id, so a
    /// retried write applies once.
    async fn with_failover<T, F, Fut>(&self, mut call: F) -> Result<T, Error>
    where
        F: FnMut(Transport) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let started = Instant::now();
        let mut attempts = 0;
        // The first failure after which a write may have been applied (its node may have handed
        // it to a leader before the call broke or its deadline passed).
        let mut uncertain: Option<Status> = None;
        loop {
            let (index, channel) = self.channel();
            match call(channel).await {
                Ok(value) => return Ok(value),
                Err(status) if node_unreachable(&status) && started.elapsed() < FAILOVER_BUDGET => {
                    if uncertain.is_none() && may_have_been_applied(&status) {
                        uncertain = Some(status);
                    }
                    attempts += 1;
                    self.fail_over_from(index);
                    if attempts % self.channels.len() == 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                // A node low on disk refuses a write before proposing it: true of this attempt,
                // not of an earlier one that may have been applied.
                Err(status) if status.code() == Code::ResourceExhausted && uncertain.is_some() => {
                    return Err(uncertain.expect("checked").into())
                }
                Err(status) => return Err(status.into()),
            }
        }
    }

    /// One unary call with failover; the reply's revision advances the session.
    async fn call<Req, Resp, F, Fut>(&self, request: Req, rpc: F) -> Result<Resp, Error>
    where
        Req: Clone,
        Resp: Revisioned,
        F: Fn(Transport, Req) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let response = self
            .with_failover(|channel| rpc(channel, request.clone()))
            .await?
            .into_inner();
        self.observe(response.header());
        Ok(response)
    }

    /// One `Kv` call with failover.
    async fn kv_call<Req, Resp, F, Fut>(&self, request: Req, rpc: F) -> Result<Resp, Error>
    where
        Req: Clone,
        Resp: Revisioned,
        F: Fn(KvClient<Transport>, Req) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        self.call(request, |channel, r| {
            rpc(
                KvClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES),
                r,
            )
        })
        .await
    }

    /// The raw `Kv` client of the endpoint in use, for calls this client does not wrap.
    pub fn kv(&self) -> KvClient<Transport> {
        KvClient::new(self.channel().1).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The raw `Cluster` client of the endpoint in use.
    pub fn cluster(&self) -> ClusterClient<Transport> {
        ClusterClient::new(self.channel().1)
    }

    /// Adds node `id` at `address` to the cluster: as a learner, then, unless `learner_only`,
    /// promoted to voter once it has caught up. Adding a member again changes nothing.
    pub async fn add_member(
        &self,
        id: u64,
        address: &str,
        learner_only: bool,
    ) -> Result<v1::MembershipResponse, Error> {
        let request = v1::AddMemberRequest {
            id,
            address: address.to_string(),
            learner_only,
        };
        self.membership_call(|mut cluster| {
            let request = request.clone();
            async move { cluster.add_member(request).await }
        })
        .await
    }

    /// Promotes learner `id` to voter.
    pub async fn promote_member(&self, id: u64) -> Result<v1::MembershipResponse, Error> {
        self.membership_call(|mut cluster| async move {
            cluster
                .promote_member(v1::PromoteMemberRequest { id })
                .await
        })
        .await
    }

    /// Removes node `id` from the cluster.
    pub async fn remove_member(&self, id: u64) -> Result<v1::MembershipResponse, Error> {
        self.membership_call(|mut cluster| async move {
            cluster.remove_member(v1::RemoveMemberRequest { id }).await
        })
        .await
    }

    /// Moves the leadership to voter `to` (any caught-up voter if None); returns the leader
    /// afterwards and its term. Writes are held while it moves, not failed.
    pub async fn transfer_leadership(&self, to: Option<u64>) -> Result<(u64, u64), Error> {
        let response = self
            .with_failover(|channel| async move {
                ClusterClient::new(channel)
                    .transfer_leadership(v1::TransferLeadershipRequest { to })
                    .await
            })
            .await?
            .into_inner();
        Ok((response.leader, response.term))
    }

    /// One `Cluster` membership call with failover.
    async fn membership_call<F, Fut>(&self, call: F) -> Result<v1::MembershipResponse, Error>
    where
        F: Fn(ClusterClient<Transport>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<v1::MembershipResponse>, Status>>,
    {
        let response = self
            .with_failover(|channel| call(ClusterClient::new(channel)))
            .await?
            .into_inner();
        self.observe_revision(response.revision);
        Ok(response)
    }

    /// A backup of the node in use's replica (no failover: a backup is of one node): the
    /// backup file's bytes, as `conclave ctl snapshot save` writes them, and their revision.
    pub async fn snapshot(&self) -> Result<(u64, Vec<u8>), Error> {
        let mut chunks = self
            .cluster()
            .snapshot(v1::SnapshotRequest {})
            .await?
            .into_inner();
        let mut file = Vec::new();
        let mut revision = 0;
        while let Some(chunk) = chunks.message().await? {
            if file.is_empty() {
                revision = chunk.revision;
                file.reserve(chunk.total_bytes as usize);
            }
            file.extend_from_slice(&chunk.data);
        }
        Ok((revision, file))
    }

    /// The status of the node in use (no failover: status is per node).
    pub async fn status(&self) -> Result<v1::StatusResponse, Error> {
        Ok(self
            .cluster()
            .status(v1::StatusRequest {})
            .await?
            .into_inner())
    }
}

/// Whether a call failed because its node could not be reached or could not serve it now (the
/// node said `UNAVAILABLE`, or the connection broke, as when the node was killed mid-call). Such a
/// call is retried on the next endpoint: reads are safe to repeat, and writes carry the same
/// (client id, sequence), so they apply once.
fn node_unreachable(status: &Status) -> bool {
    // A status that carries an error of the local transport stack (a refused or reset
    // connection, an HTTP/2 stream broken mid-body) was not sent by a node. A node answers
    // DEADLINE_EXCEEDED for a write whose outcome it could not learn in time: every write of
    // this client carries its write id, so sending it again applies it at most once.
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded)
        || std::error::Error::source(status).is_some()
}

/// Whether a failed call may still have its write applied: the node answered that the outcome
/// is unknown (DEADLINE_EXCEEDED), or the call broke in the transport after it was sent. A node's
/// own UNAVAILABLE means the write was never handed to a leader.
fn may_have_been_applied(status: &Status) -> bool {
    status.code() == Code::DeadlineExceeded || std::error::Error::source(status).is_some()
}

/// Replies that carry a [`v1::ResponseHeader`].
trait Revisioned {
    fn header(&self) -> Option<&v1::ResponseHeader>;
}

macro_rules! revisioned {
    ($($reply:ty),* $(,)?) => {$(
        impl Revisioned for $reply {
            fn header(&self) -> Option<&v1::ResponseHeader> {
                self.header.as_ref()
            }
        }
    )*};
}

revisioned!(
    v1::GetResponse,
    v1::SetResponse,
    v1::DeleteResponse,
    v1::HSetResponse,
    v1::HGetResponse,
    v1::HGetAllResponse,
    v1::CountResponse,
    v1::ItemsResponse,
    v1::TxnResponse,
    v1::ScanResponse,
    v1::LeaseGrantResponse,
    v1::LeaseRevokeResponse,
    v1::LeaseKeepAliveResponse,
    v1::LeaseTimeToLiveResponse,
    v1::LockAcquireResponse,
    v1::LockReleaseResponse,
    v1::RoomResponse,
    v1::DeleteRoomResponse,
    v1::ListRoomsResponse,
    v1::ParticipantResponse,
    v1::LeaveResponse,
    v1::ListParticipantsResponse,
    v1::NodeResponse,
    v1::ListNodesResponse,
);

/// Replies without a header (the session is not advanced by them).
impl Revisioned for v1::PublishResponse {
    fn header(&self) -> Option<&v1::ResponseHeader> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_standard_base64() {
        assert_eq!(base64(b"ops:ops-pass"), "b3BzOm9wcy1wYXNz");
        assert_eq!(base64(b"a:bc"), "YTpiYw==");
        assert_eq!(base64(b"a:bcd"), "YTpiY2Q=");
        assert_eq!(base64(b""), "");
    }

    #[test]
    fn credentials_never_print_their_secret() {
        let token = Credentials::Token("tok-0123456789abcdef".into());
        let password = Credentials::Password {
            user: "ops".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{token:?}").contains("tok-"));
        assert!(!format!("{password:?}").contains("hunter2"));
    }
}
