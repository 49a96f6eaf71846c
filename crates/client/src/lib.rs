//! A minimal Rust client for Conclave's gRPC API (the full SDK comes later).
//!
//! Owns: connecting to one of several endpoints (the first listed is preferred, normally the
//! node on the same host), failing over to the next when a node is unreachable, tracking the
//! session revision so reads see the client's own writes on any node, and numbering writes
//! (client id, sequence) so a write retried after a failover is applied once.
//!
//! Does not own: leases, watch, pub/sub, typed room state (later issues).
//!
//! ```no_run
//! # async fn example() -> Result<(), conclave_client::Error> {
//! let client = conclave_client::Client::connect(["127.0.0.1:7001", "127.0.0.1:7002"]).await?;
//! client.set("room/1", "meta").await?;
//! assert_eq!(client.get("room/1").await?.as_deref(), Some(&b"meta"[..]));
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use conclave_proto::v1;
use conclave_proto::v1::cluster_client::ClusterClient;
use conclave_proto::v1::kv_client::KvClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no endpoints given")]
    NoEndpoints,
    #[error("invalid endpoint {0}")]
    BadEndpoint(String),
    #[error("{}: {}", .0.code(), .0.message())]
    Rpc(#[from] Status),
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

/// How long a call may keep failing over before it gives up.
const FAILOVER_BUDGET: Duration = Duration::from_secs(10);

/// A Conclave client; cheap to clone, clones share the session.
#[derive(Clone)]
pub struct Client {
    channels: Arc<Vec<(String, Channel)>>,
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
        let mut channels = Vec::new();
        for endpoint in endpoints {
            let address = endpoint.as_ref().to_string();
            let uri = if address.starts_with("http") {
                address.clone()
            } else {
                format!("http://{address}")
            };
            let channel = Endpoint::from_shared(uri)
                .map_err(|_| Error::BadEndpoint(address.clone()))?
                .connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true)
                .connect_lazy();
            channels.push((address, channel));
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
            self.session.fetch_max(h.revision, Ordering::Relaxed);
        }
    }

    fn next_write(&self) -> Option<v1::WriteOptions> {
        Some(v1::WriteOptions {
            client_id: self.client_id,
            sequence: self.sequence.fetch_add(1, Ordering::Relaxed),
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
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            let index = self.current.load(Ordering::Relaxed) % self.channels.len();
            match call(self.channels[index].1.clone()).await {
                Ok(value) => return Ok(value),
                Err(status) if node_unreachable(&status) && started.elapsed() < FAILOVER_BUDGET => {
                    attempts += 1;
                    let _ = self.current.compare_exchange(
                        index,
                        (index + 1) % self.channels.len(),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    if attempts % self.channels.len() == 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                Err(status) => return Err(status.into()),
            }
        }
    }

    /// One `Kv` call with failover; the reply's revision advances the session.
    async fn kv_call<Req, Resp, F, Fut>(&self, request: Req, rpc: F) -> Result<Resp, Error>
    where
        Req: Clone,
        Resp: Revisioned,
        F: Fn(KvClient<Channel>, Req) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let response = self
            .with_failover(|channel| rpc(KvClient::new(channel), request.clone()))
            .await?
            .into_inner();
        self.observe(response.header());
        Ok(response)
    }

    /// Reads a string at session consistency; None if absent.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, Error> {
        Ok(self
            .get_with(key, Consistency::Session)
            .await?
            .map(|kv| kv.value))
    }

    /// Reads a string with its revisions at the given consistency.
    pub async fn get_with(
        &self,
        key: impl AsRef<[u8]>,
        consistency: Consistency,
    ) -> Result<Option<v1::KeyValue>, Error> {
        let request = v1::GetRequest {
            key: key.as_ref().to_vec(),
            read: self.read_options(consistency),
        };
        let response = self
            .kv_call(request, |mut kv, r| async move { kv.get(r).await })
            .await?;
        Ok(response.kv)
    }

    /// Sets a string (no condition, no TTL); returns the write's revision.
    pub async fn set(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<u64, Error> {
        let response = self
            .set_with(v1::SetRequest {
                key: key.as_ref().to_vec(),
                value: value.as_ref().to_vec(),
                ..Default::default()
            })
            .await?;
        Ok(response.header.map_or(0, |h| h.revision))
    }

    /// Sets a string with every option of `SetRequest` (its write id is filled in).
    pub async fn set_with(&self, mut request: v1::SetRequest) -> Result<v1::SetResponse, Error> {
        request.write = self.next_write();
        let response = self
            .kv_call(request, |mut kv, r| async move { kv.set(r).await })
            .await?;
        Ok(response)
    }

    /// Deletes keys; returns how many existed.
    pub async fn delete<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<u64, Error> {
        let request = v1::DeleteRequest {
            keys: keys.iter().map(|k| k.as_ref().to_vec()).collect(),
            write: self.next_write(),
        };
        let response = self
            .kv_call(request, |mut kv, r| async move { kv.delete(r).await })
            .await?;
        Ok(response.deleted)
    }

    /// Sets hash fields; returns how many were new.
    pub async fn hset<F: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        key: impl AsRef<[u8]>,
        fields: &[(F, V)],
    ) -> Result<u64, Error> {
        let request = v1::HSetRequest {
            key: key.as_ref().to_vec(),
            fields: fields
                .iter()
                .map(|(f, v)| v1::HashField {
                    field: f.as_ref().to_vec(),
                    value: v.as_ref().to_vec(),
                })
                .collect(),
            write: self.next_write(),
        };
        let response = self
            .kv_call(request, |mut kv, r| async move { kv.h_set(r).await })
            .await?;
        Ok(response.added)
    }

    /// Reads a whole hash at session consistency.
    pub async fn hgetall(&self, key: impl AsRef<[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Error> {
        let request = v1::KeyReadRequest {
            key: key.as_ref().to_vec(),
            read: self.read_options(Consistency::Session),
        };
        let response = self
            .kv_call(request, |mut kv, r| async move { kv.h_get_all(r).await })
            .await?;
        Ok(response
            .fields
            .into_iter()
            .map(|f| (f.field, f.value))
            .collect())
    }

    /// Adds set members; returns how many were new.
    pub async fn sadd<M: AsRef<[u8]>>(
        &self,
        key: impl AsRef<[u8]>,
        members: &[M],
    ) -> Result<u64, Error> {
        let request = v1::SAddRequest {
            key: key.as_ref().to_vec(),
            members: members.iter().map(|m| m.as_ref().to_vec()).collect(),
            write: self.next_write(),
        };
        let response = self
            .kv_call(request, |mut kv, r| async move { kv.s_add(r).await })
            .await?;
        Ok(response.count)
    }

    /// Reads a set's members at session consistency.
    pub async fn smembers(&self, key: impl AsRef<[u8]>) -> Result<Vec<Vec<u8>>, Error> {
        let request = v1::KeyReadRequest {
            key: key.as_ref().to_vec(),
            read: self.read_options(Consistency::Session),
        };
        let response = self
            .kv_call(request, |mut kv, r| async move { kv.s_members(r).await })
            .await?;
        Ok(response.items)
    }

    /// The raw `Kv` client of the endpoint in use, for calls this client does not wrap.
    pub fn kv(&self) -> KvClient<Channel> {
        let index = self.current.load(Ordering::Relaxed) % self.channels.len();
        KvClient::new(self.channels[index].1.clone())
    }

    /// The raw `Cluster` client of the endpoint in use.
    pub fn cluster(&self) -> ClusterClient<Channel> {
        let index = self.current.load(Ordering::Relaxed) % self.channels.len();
        ClusterClient::new(self.channels[index].1.clone())
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
    if status.code() == Code::Unavailable {
        return true;
    }
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::transport::Error>() || error.is::<std::io::Error>() {
            return true;
        }
        source = error.source();
    }
    false
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
    v1::HGetAllResponse,
    v1::CountResponse,
    v1::ItemsResponse,
);
