//! `conclave server`: one node serving clients and peers on one listener.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use conclave_api::{
    ClusterService, KvService, LeaseService, LockService, PubSubService, RoomsService, WatchService,
};
use conclave_consensus::{ClusterSpec, Node, NodeOptions, Timing};
use tonic::transport::server::TcpIncoming;

/// The longest request deadline accepted: a write is re-sent under its request id until its
/// deadline, and the state machine remembers replies for at least a minute
/// (`conclave_state::MIN_REPLY_AGE_MS`), so a retry within the deadline never applies twice.
const MAX_DEADLINE_MS: u64 = 30_000;
/// How long in-flight calls and open streams get to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// How long a stopping leader tries to hand its leadership over before it stops anyway.
const HANDOVER_WITHIN: Duration = Duration::from_secs(2);

#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// This node's id (a positive integer listed in --initial-cluster).
    #[arg(long, required_unless_present = "id_from_hostname")]
    pub id: Option<u64>,
    /// Take the id from the host name's trailing number plus one: the pod `conclave-0` of a
    /// Kubernetes StatefulSet is node 1.
    #[arg(long, conflicts_with = "id")]
    pub id_from_hostname: bool,
    /// Where the node keeps its log, snapshots and identity.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// HOST:PORT to serve clients and peers on.
    #[arg(long)]
    pub listen: String,
    /// The cluster's members at creation: 1=HOST:PORT,2=HOST:PORT,...
    #[arg(long)]
    pub initial_cluster: String,
    /// Do not bootstrap: wait to be added with `ctl members add` (for nodes added later; implied
    /// for a node not listed in --initial-cluster).
    #[arg(long)]
    pub join: bool,
    /// Snapshot (and compact the log) every this many entries.
    #[arg(long, default_value_t = 5000)]
    pub snapshot_every: u64,
    /// Leader heartbeat in milliseconds.
    #[arg(long, default_value_t = Timing::default().heartbeat_ms)]
    pub heartbeat_ms: u64,
    /// Lower bound of the election timeout in milliseconds.
    #[arg(long, default_value_t = Timing::default().election_min_ms)]
    pub election_min_ms: u64,
    /// Upper bound of the election timeout in milliseconds.
    #[arg(long, default_value_t = Timing::default().election_max_ms)]
    pub election_max_ms: u64,
    /// How long a request may wait for a leader before failing with UNAVAILABLE.
    #[arg(long, default_value_t = Timing::default().request_timeout.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..=MAX_DEADLINE_MS))]
    pub request_timeout_ms: u64,
    /// HOST:PORT to serve the Redis protocol (RESP2/RESP3) on; off when absent.
    #[arg(long)]
    pub resp: Option<String>,
    /// What a RESP read waits for: session (read your own writes), linearizable or local.
    #[arg(long, env = "CONCLAVE_RESP_CONSISTENCY", default_value = "session")]
    pub resp_consistency: conclave_resp::ReadConsistency,
    /// The password RESP clients must give (AUTH / HELLO ... AUTH default <password>).
    #[arg(long, env = "CONCLAVE_RESP_PASSWORD")]
    pub resp_password: Option<String>,
    /// How long a RESP command may wait for a leader before it is answered TRYAGAIN (or, for a
    /// write a leader may still commit, UNCERTAIN).
    #[arg(long, default_value_t = conclave_resp::RespOptions::default().write_deadline.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..=MAX_DEADLINE_MS))]
    pub resp_deadline_ms: u64,
    /// For tests: a file holding a signed number of milliseconds added to this node's wall
    /// clock (re-read as it changes; missing or empty is 0), to step or skew one node's clock.
    #[arg(long, env = "CONCLAVE_CLOCK_OFFSET_FILE", hide = true)]
    pub clock_offset_file: Option<PathBuf>,
}

/// The node id given by `--id`, or derived from the host name.
fn node_id(args: &ServerArgs) -> anyhow::Result<u64> {
    if let Some(id) = args.id {
        return Ok(id);
    }
    let host = hostname()?;
    let ordinal: u64 = host
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .with_context(|| format!("host name {host:?} does not end in -<number>"))?;
    Ok(ordinal + 1)
}

/// This host's name (the pod's name under Kubernetes).
fn hostname() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("cannot read the host name from /proc/sys/kernel/hostname")?;
    Ok(name.trim().to_string())
}

pub async fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    crate::memory::start_trimming();
    let id = node_id(&args)?;
    let cluster = ClusterSpec::parse(&args.initial_cluster)?;
    let address = args
        .listen
        .parse()
        .with_context(|| format!("--listen {} is not HOST:PORT", args.listen))?;
    let listener = tokio::net::TcpListener::bind::<std::net::SocketAddr>(address)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let options = NodeOptions {
        id,
        data_dir: args.data_dir.clone(),
        cluster,
        join: args.join,
        timing: Timing {
            heartbeat_ms: args.heartbeat_ms,
            election_min_ms: args.election_min_ms,
            election_max_ms: args.election_max_ms,
            request_timeout: Duration::from_millis(args.request_timeout_ms),
        },
        snapshot_every: args.snapshot_every.max(1),
        clock_offset_file: args.clock_offset_file.clone(),
        source_ip: Some(address.ip()),
    };
    let node = Node::open(options).await?;
    tracing::info!(id, listen = %args.listen, "node serving");
    eprintln!("conclave node {id} serving on {}", args.listen);

    let pubsub = conclave_pubsub::PubSub::start(node.clone(), conclave_pubsub::Limits::default());
    // Turned true on SIGTERM: the RESP listener stops accepting and its connections close once
    // they have answered what they read.
    let (stop_resp, resp_stopping) = tokio::sync::watch::channel(false);
    let mut resp_drained = None;
    if let Some(resp) = &args.resp {
        let listener = tokio::net::TcpListener::bind(resp)
            .await
            .with_context(|| format!("cannot listen for RESP on {resp}"))?;
        let options = conclave_resp::RespOptions {
            consistency: args.resp_consistency,
            password: args.resp_password.clone(),
            write_deadline: Duration::from_millis(args.resp_deadline_ms),
            ..Default::default()
        };
        resp_drained = Some(tokio::spawn(conclave_resp::serve(
            listener,
            node.clone(),
            pubsub.clone(),
            options,
            resp_stopping,
        )));
        eprintln!("conclave node {id} serving RESP on {resp}");
    }

    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopping = stop.clone();
    let stopping_node = node.clone();
    let served = tonic::transport::Server::builder()
        .add_service(node.peer_service().into_server())
        .add_service(pubsub.mesh_service().into_server())
        .add_service(KvService::new(node.clone()).into_server())
        .add_service(ClusterService::new(node.clone()).into_server())
        .add_service(LeaseService::new(node.clone()).into_server())
        .add_service(LockService::new(node.clone()).into_server())
        .add_service(WatchService::new(node.clone()).into_server())
        .add_service(RoomsService::new(node.clone()).into_server())
        .add_service(PubSubService::new(pubsub).into_server())
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown_signal().await;
            stopping_node.stop_elections();
            // Before the listener closes: the successor's vote request must still reach us.
            if let Some(successor) = stopping_node.hand_over(HANDOVER_WITHIN).await {
                eprintln!("conclave node {id}: handed the leadership to node {successor}");
            }
            // RESP connections answer what they had read while this node still takes part
            // (a session read after a write needs the leader's next entries to arrive).
            stop_resp.send_replace(true);
            if let Some(drained) = resp_drained {
                let _ = drained.await;
            }
            stopping.notify_one();
        });
    // A fresh node is brought into its cluster while its listener answers the other nodes'
    // questions (they ask each other whether they are fresh too).
    let forming = node.clone();
    let formed = tokio::spawn(async move { forming.form().await });
    // On a signal the listener closes and unary calls finish; streams (watches, subscriptions,
    // other nodes' relays) never end by themselves, so they get a grace period, then are cut.
    tokio::select! {
        served = served => served.context("serving")?,
        refused = async move {
            match formed.await {
                Ok(Err(refused)) => refused,
                _ => std::future::pending().await,
            }
        } => {
            node.shutdown().await;
            return Err(refused.into());
        }
        _ = async {
            stop.notified().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {}
    }
    node.shutdown().await;
    eprintln!("conclave node {id} stopped");
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
