//! Workloads: clients on every node, each recording its operations in the run's history.
//!
//! - `register`: get / set / compare-and-set on a few keys, over RESP and over the SDK;
//! - `set`: unique adds to a set (RESP `SADD`, SDK `SAdd`) and to a hash (RESP `HSET`);
//! - `counter`: `INCR` of a counter of each client's own, retried on `TRYAGAIN` as go-redis does;
//! - `locks`: a lock taken and released with a write fenced by its token, and leases kept alive
//!   through the whole run;
//! - `watch`: puts of ~2 KB hash fields, followed by watchers that lag and move between nodes;
//! - `pubsub`: numbered messages from a publisher on every node to a subscriber on every node,
//!   some of them causal (after a write the subscriber's node must have applied).
//!
//! After the faults heal, `final_reads` reads every set, hash and counter at `linearizable`.

mod counter;
mod locks;
mod pubsub;
mod register;
mod set;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use conclave_client::v1;
use tokio::task::JoinSet;

use crate::harness::{Harness, NodeId};
use crate::history::{History, Outcome};
use crate::resp::{CallError, Connection, Reply};
use crate::rng::Rng;

pub const WORKLOADS: &[&str] = &["register", "set", "counter", "locks", "watch", "pubsub"];
/// The workloads that run against Redis with Sentinel too (RESP only).
pub const RESP_WORKLOADS: &[&str] = &["register", "set", "counter"];

/// Register keys.
const REGISTERS: usize = 3;
/// How long one RESP call may take before its outcome is unknown (above the server's 2.5 s
/// RESP deadline, so a held command gets its answer).
const RESP_TIMEOUT: Duration = Duration::from_secs(4);
/// How long one SDK call may take (the SDK fails over for up to 10 s by itself).
const SDK_TIMEOUT: Duration = Duration::from_secs(12);

/// How reads are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadLevel {
    Linearizable,
    Session,
    Local,
}

impl ReadLevel {
    pub fn parse(text: &str) -> anyhow::Result<ReadLevel> {
        match text {
            "linearizable" => Ok(ReadLevel::Linearizable),
            "session" => Ok(ReadLevel::Session),
            "local" => Ok(ReadLevel::Local),
            other => anyhow::bail!("unknown consistency {other:?} (linearizable, session, local)"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ReadLevel::Linearizable => "linearizable",
            ReadLevel::Session => "session",
            ReadLevel::Local => "local",
        }
    }

    fn sdk(self) -> conclave_client::Consistency {
        match self {
            ReadLevel::Linearizable => conclave_client::Consistency::Linearizable,
            ReadLevel::Session => conclave_client::Consistency::Session,
            ReadLevel::Local => conclave_client::Consistency::Local,
        }
    }
}

/// What one client needs to run.
struct ClientContext {
    id: usize,
    node: NodeId,
    /// The node's RESP address, or its gRPC address for SDK clients.
    address: String,
    /// Every node's gRPC address, the client's own first (SDK failover).
    grpc: Vec<String>,
    history: History,
    rng: Rng,
    stop_us: u64,
    reads: ReadLevel,
}

impl ClientContext {
    fn running(&self) -> bool {
        self.history.now_us() < self.stop_us
    }

    /// A short pause between operations, so every client gets turns.
    async fn think(&mut self) {
        tokio::time::sleep(Duration::from_millis(self.rng.below(8))).await;
    }
}

/// Starts the clients of `workloads`, on every node, until `stop_us`.
pub fn spawn(
    workloads: &[&str],
    harness: &dyn Harness,
    history: &History,
    rng: &mut Rng,
    stop_us: u64,
    reads: ReadLevel,
) -> JoinSet<()> {
    let mut clients = JoinSet::new();
    let ids = harness.ids();
    let mut next_id = 0;
    let mut context = |node: NodeId, address: String, rng: &mut Rng| {
        next_id += 1;
        let mut grpc = vec![harness.grpc(node)];
        grpc.extend(ids.iter().filter(|i| **i != node).map(|i| harness.grpc(*i)));
        ClientContext {
            id: next_id,
            node,
            address,
            grpc,
            history: history.clone(),
            rng: rng.fork(),
            stop_us,
            reads,
        }
    };
    let watched = watch::Progress::new();
    for &node in &ids {
        for workload in workloads {
            match *workload {
                "register" => {
                    for _ in 0..2 {
                        clients.spawn(register::resp(context(node, harness.resp(node), rng)));
                    }
                    if harness.speaks_grpc() {
                        clients.spawn(register::sdk(context(node, harness.grpc(node), rng)));
                    }
                }
                "set" => {
                    clients.spawn(set::resp(context(node, harness.resp(node), rng)));
                    if harness.speaks_grpc() {
                        clients.spawn(set::sdk(context(node, harness.grpc(node), rng)));
                    }
                }
                "counter" => {
                    clients.spawn(counter::resp(context(node, harness.resp(node), rng)));
                }
                "locks" => {
                    clients.spawn(locks::lock(context(node, harness.grpc(node), rng)));
                    clients.spawn(locks::lease(context(node, harness.grpc(node), rng)));
                }
                "watch" => {
                    watched.add_writer();
                    let writer = context(node, harness.grpc(node), rng);
                    clients.spawn(watch::sdk_writer(writer, watched.clone()));
                    watched.add_writer();
                    let writer = context(node, harness.resp(node), rng);
                    clients.spawn(watch::resp_writer(writer, watched.clone()));
                    for lagging in [false, true] {
                        let watcher = context(node, harness.grpc(node), rng);
                        clients.spawn(watch::watcher(watcher, watched.clone(), lagging));
                    }
                }
                "pubsub" => {
                    clients.spawn(pubsub::publisher(context(node, harness.resp(node), rng)));
                    clients.spawn(pubsub::subscriber(context(node, harness.resp(node), rng)));
                }
                other => panic!("unknown workload {other}"),
            }
        }
    }
    clients
}

/// A RESP connection that is re-made after any call without a reply. Given `sentinel:` and a
/// list of Sentinels, it connects to the master they name, and asks again every second (as
/// go-redis's failover client follows `+switch-master`), moving when the master moved.
struct RespClient {
    address: String,
    connection: Option<Connection>,
    /// With Sentinels: the master, and when one of them last named it.
    master: Option<(String, std::time::Instant)>,
}

impl RespClient {
    fn new(address: &str) -> RespClient {
        RespClient {
            address: address.to_string(),
            connection: None,
            master: None,
        }
    }

    /// Connects if needed; false (after a short pause) if the node does not answer.
    async fn ready(&mut self) -> bool {
        if let Some(sentinels) = self.address.strip_prefix("sentinel:").map(str::to_string) {
            let stale = self
                .master
                .as_ref()
                .is_none_or(|(_, at)| at.elapsed() > Duration::from_secs(1));
            if stale {
                let mut named = None;
                for sentinel in sentinels.split(',') {
                    named = crate::harness::sentinel::ask_master(sentinel).await;
                    if named.is_some() {
                        break;
                    }
                }
                match named {
                    Some(master) => {
                        if self.master.as_ref().is_some_and(|(old, _)| *old != master) {
                            self.connection = None;
                        }
                        self.master = Some((master, std::time::Instant::now()));
                    }
                    None if self.master.is_none() => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        return false;
                    }
                    None => {}
                }
            }
        }
        if self.connection.is_none() {
            let target = match &self.master {
                Some((master, _)) => master.as_str(),
                None => self.address.as_str(),
            };
            match Connection::connect(target, RESP_TIMEOUT).await {
                Ok(c) => self.connection = Some(c),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return false;
                }
            }
        }
        true
    }

    async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, CallError> {
        let Some(connection) = self.connection.as_mut() else {
            return Err(CallError::Protocol("not connected".into()));
        };
        let reply = connection.call(args).await;
        if reply.is_err() {
            self.connection = None;
        }
        reply
    }
}

/// Errors a Redis client such as go-redis retries by itself: the server promises with them
/// that the command was not executed.
fn retried_by_clients(message: &str) -> bool {
    [
        "TRYAGAIN",
        "LOADING",
        "READONLY",
        "MASTERDOWN",
        "CLUSTERDOWN",
    ]
    .iter()
    .any(|prefix| message.starts_with(prefix))
}

/// The outcome of a RESP write: an error a client retries by itself means "not executed"; any
/// other error, or no reply, leaves it unknown.
fn write_outcome(reply: &Result<Reply, CallError>, expected: impl Fn(&Reply) -> bool) -> Outcome {
    match reply {
        Ok(Reply::Error(message)) if retried_by_clients(message) => Outcome::Fail(message.clone()),
        Ok(Reply::Error(message)) => Outcome::Unknown(message.clone()),
        Ok(reply) if expected(reply) => Outcome::Ok,
        Ok(reply) => Outcome::Unknown(format!("unexpected reply {reply:?}")),
        Err(e) => Outcome::Unknown(e.to_string()),
    }
}

/// The outcome of an SDK write: the SDK retries with the same write id, so an error leaves the
/// write unknown, unless the node refused it outright.
fn sdk_write_outcome<T>(
    result: &Result<Result<T, conclave_client::Error>, tokio::time::error::Elapsed>,
) -> Outcome {
    match result {
        Ok(Ok(_)) => Outcome::Ok,
        Ok(Err(e)) if refused(e) => Outcome::Fail(e.to_string()),
        Ok(Err(e)) => Outcome::Unknown(e.to_string()),
        Err(_) => Outcome::Unknown("no answer in time".into()),
    }
}

/// Errors that say the request was refused before it could be applied.
fn refused(e: &conclave_client::Error) -> bool {
    use tonic::Code;
    matches!(
        e.code(),
        Some(
            Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::PermissionDenied
                | Code::Unauthenticated
                | Code::OutOfRange
        )
    )
}

/// The final contents of the sets, hashes and counters, read at `linearizable` from any node
/// once the cluster has healed.
#[derive(Default)]
pub struct Finals {
    pub sets: BTreeMap<String, BTreeSet<String>>,
    pub counters: BTreeMap<String, u64>,
}

/// Reads every set (`set:`), hash (`hash:`) and counter (`counter:`) the history touched.
pub async fn final_reads(harness: &dyn Harness, history: &History) -> anyhow::Result<Finals> {
    let mut keys: BTreeSet<String> = BTreeSet::new();
    for op in history.ops() {
        if op.key.starts_with("set:")
            || op.key.starts_with("hash:")
            || op.key.starts_with("counter:")
        {
            keys.insert(op.key.clone());
        }
    }
    if !harness.speaks_grpc() {
        return final_reads_resp(harness, keys).await;
    }
    let endpoints: Vec<String> = harness.ids().iter().map(|id| harness.grpc(*id)).collect();
    let client = conclave_client::Client::connect(endpoints).await?;
    let linearizable = Some(v1::ReadOptions {
        consistency: v1::Consistency::Linearizable as i32,
        min_revision: 0,
    });
    let mut finals = Finals::default();
    for key in keys {
        let request = v1::KeyReadRequest {
            key: key.clone().into_bytes(),
            read: linearizable,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut kv = client.kv();
            let read: Result<(), tonic::Status> = async {
                if key.starts_with("set:") {
                    let items = kv.s_members(request.clone()).await?.into_inner().items;
                    finals
                        .sets
                        .insert(key.clone(), items.into_iter().map(lossy).collect());
                } else if key.starts_with("hash:") {
                    let fields = kv.h_get_all(request.clone()).await?.into_inner().fields;
                    finals.sets.insert(
                        key.clone(),
                        fields.into_iter().map(|f| lossy(f.field)).collect(),
                    );
                } else {
                    let get = v1::GetRequest {
                        key: key.clone().into_bytes(),
                        read: linearizable,
                    };
                    let value = kv.get(get).await?.into_inner().kv.map(|kv| lossy(kv.value));
                    let count = value.map_or(Ok(0), |v| v.parse::<u64>()).map_err(|e| {
                        tonic::Status::data_loss(format!("counter {key} holds a non-number: {e}"))
                    })?;
                    finals.counters.insert(key.clone(), count);
                }
                Ok(())
            }
            .await;
            match read {
                Ok(()) => break,
                Err(e) if std::time::Instant::now() > deadline => {
                    anyhow::bail!("final read of {key} failed: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    Ok(finals)
}

/// The final reads over RESP (Redis with Sentinel), from the master the Sentinels name.
async fn final_reads_resp(harness: &dyn Harness, keys: BTreeSet<String>) -> anyhow::Result<Finals> {
    let first = harness.ids()[0];
    let mut finals = Finals::default();
    for key in keys {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let command: &[u8] = if key.starts_with("set:") {
            b"SMEMBERS"
        } else if key.starts_with("hash:") {
            b"HKEYS"
        } else {
            b"GET"
        };
        loop {
            let mut client = RespClient::new(&harness.resp(first));
            let reply = match client.ready().await {
                true => client.call(&[command, key.as_bytes()]).await.ok(),
                false => None,
            };
            match reply {
                Some(Reply::Array(Some(items))) => {
                    let items = items.into_iter().filter_map(|item| match item {
                        Reply::Bulk(Some(bytes)) => Some(lossy(bytes)),
                        _ => None,
                    });
                    finals.sets.insert(key.clone(), items.collect());
                    break;
                }
                Some(Reply::Bulk(value)) => {
                    let count = value.map_or(Ok(0), |v| lossy(v).parse::<u64>());
                    let count = count.map_err(|e| anyhow::anyhow!("counter {key}: {e}"))?;
                    finals.counters.insert(key.clone(), count);
                    break;
                }
                _ if std::time::Instant::now() > deadline => {
                    anyhow::bail!("final read of {key} failed")
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    Ok(finals)
}

fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}
