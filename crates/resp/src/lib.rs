//! The Redis protocol front end of a Conclave node, so an unmodified Redis client (LiveKit's
//! go-redis, redis-py, redis-cli) can use its local node as its Redis.
//!
//! Owns: the RESP listener; RESP2 and RESP3 framing with pipelining and inline commands
//! ([`protocol`]); the command table ([`table`]); keyspace commands compiled into state-machine
//! commands and their replies ([`plan`]); MULTI/EXEC/WATCH as one store transaction whose
//! comparisons are "unchanged since the revision WATCH saw"; the recognised scripts
//! ([`scripts`]); pub/sub on the node's [`conclave_pubsub::PubSub`] hub (push frames under
//! RESP3); INFO, COMMAND, CONFIG GET, SCAN cursors, AUTH.
//!
//! Does not own: the data model and its semantics (the state crate: the RESP layer never changes
//! a value itself), Raft and forwarding (writes go through [`Node::write`], reads wait on
//! [`Node::read_barrier`]), the cluster-wide pub/sub mesh.
//!
//! Writes: a pipeline's consecutive plain writes, and the writes of every connection that
//! arrive while earlier ones are in flight, go to the leader as one transaction ([`batch`]):
//! one log entry and one flush for many client writes, each still answered on its own.
//!
//! Consistency: writes are forwarded to the leader and answered once applied; across a leader
//! change they are held until [`RespOptions::write_deadline`], then answered `TRYAGAIN` (which
//! go-redis retries by itself) if no leader was ever handed them, else `UNCERTAIN ...` (which
//! no client retries blindly: the write may still be applied). Reads follow [`ReadConsistency`], per node; under the default
//! (`Session`) a read sees every write this node has acknowledged, on any connection or over
//! gRPC, before or after a restart ([`Node::read_barrier`]), and never older state than its
//! connection saw.
//!
//! Known to be missing: Lua (only recognised scripts run), databases other than 0, blocking
//! commands, keyspace notifications, CLIENT LIST/KILL, ACL users other than `default`; EVAL
//! inside MULTI, and KEYS/SCAN/pub/sub commands inside MULTI, are refused.

mod batch;
mod connection;
pub mod fuzzing;
mod introspection;
mod metrics;
mod plan;
pub mod protocol;
mod scripts;
mod table;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conclave_consensus::Node;
use conclave_pubsub::PubSub;
use tokio::net::TcpListener;

pub use metrics::RespMetrics;
pub use protocol::FrameLimits;

/// What a read on a connection waits for before it is answered from the local replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadConsistency {
    /// The connection's own writes, everything it has read before (read-your-writes, monotonic
    /// reads), and every write this node has acknowledged to any of its clients (either
    /// protocol, before or after a restart), as on one Redis server. The default.
    Session,
    /// Everything committed anywhere before the read began (one round trip to the leader).
    Linearizable,
    /// Whatever this replica has applied (fastest; may be behind other nodes).
    Local,
}

impl std::str::FromStr for ReadConsistency {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "session" => Ok(ReadConsistency::Session),
            "linearizable" => Ok(ReadConsistency::Linearizable),
            "local" => Ok(ReadConsistency::Local),
            other => Err(format!(
                "unknown consistency {other:?}: expected session, linearizable or local"
            )),
        }
    }
}

/// Settings of the RESP listener.
#[derive(Clone, Debug)]
pub struct RespOptions {
    pub consistency: ReadConsistency,
    /// The users clients authenticate as (AUTH, HELLO AUTH) and their roles; the default
    /// user is an admin without password unless configured otherwise.
    pub users: Arc<conclave_access::Directory>,
    /// How long a command may wait for a leader (an election) before it is answered TRYAGAIN.
    /// Below go-redis's default 3 s read timeout, so the client sees the answer.
    pub write_deadline: Duration,
    /// Connections accepted at once; more are answered with an error and closed.
    pub max_clients: usize,
    pub frame_limits: FrameLimits,
    /// Where the listener counts connections and commands (read by the metrics endpoint).
    pub metrics: Arc<RespMetrics>,
    /// Serve RESP over TLS with this acceptor (None: plaintext). Clients authenticate with
    /// AUTH, not certificates.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

impl Default for RespOptions {
    fn default() -> Self {
        RespOptions {
            consistency: ReadConsistency::Session,
            users: Arc::new(conclave_access::Directory::fixed(
                conclave_access::Users::build(None, None).expect("the open default user"),
            )),
            write_deadline: Duration::from_millis(2500),
            max_clients: 10_000,
            frame_limits: FrameLimits::default(),
            metrics: Arc::default(),
            tls: None,
        }
    }
}

/// How long a connection gets to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most whole-keyspace walks (KEYS, SCAN steps over 1,024 keys) a node runs at once; more wait.
const MAX_WALKS: usize = 2;

/// State shared by every RESP connection of a node.
pub(crate) struct Shared {
    node: Node,
    hub: PubSub,
    options: RespOptions,
    port: u16,
    scripts: scripts::ScriptCache,
    batcher: batch::WriteBatcher,
    cursors: connection::Cursors,
    /// Whole-keyspace walks (KEYS, large SCAN steps) running at once: each holds a copy of the
    /// replica and a blocking thread, which votes and snapshots need too.
    walks: tokio::sync::Semaphore,
    next_client_id: AtomicU64,
    started: Instant,
    /// Turns true when the node is shutting down.
    stopping: tokio::sync::watch::Receiver<bool>,
}

/// Resolves once `stopping` turns true (or its sender is gone).
pub(crate) async fn stopped(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// Serves RESP on `listener` until `stopping` turns true (the node is shutting down): then it
/// accepts no more connections, and each connection closes once it has answered what it had
/// read, so a client sees its in-flight commands answered and reconnects elsewhere or later.
/// Returns once every connection has closed, or after the write deadline and a second more (a
/// write held through an election has had its answer by then): stop the node only after that.
pub async fn serve(
    listener: TcpListener,
    node: Node,
    hub: PubSub,
    options: RespOptions,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let port = listener.local_addr().map_or(0, |a| a.port());
    let shared = Arc::new(Shared {
        batcher: batch::WriteBatcher::start(node.clone()),
        node,
        hub,
        options,
        port,
        scripts: Default::default(),
        cursors: Default::default(),
        walks: tokio::sync::Semaphore::new(MAX_WALKS),
        next_client_id: AtomicU64::new(1),
        started: Instant::now(),
        stopping: stopping.clone(),
    });
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped(&mut stopping) => break,
        };
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "RESP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let metrics = &shared.options.metrics;
        metrics.connections_received.inc();
        let clients = metrics.connected.fetch_add(1, Ordering::SeqCst) + 1;
        let shared = shared.clone();
        tokio::spawn(async move {
            match shared.options.tls.clone() {
                None => connection::run(shared, socket, peer, clients).await,
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await
                    {
                        Ok(Ok(stream)) => connection::run(shared, stream, peer, clients).await,
                        // A client that does not speak TLS (or too slowly) gets rustls's alert.
                        _ => {
                            shared
                                .options
                                .metrics
                                .connected
                                .fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    let deadline = Instant::now() + shared.options.write_deadline + Duration::from_secs(1);
    while shared.options.metrics.connected.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
