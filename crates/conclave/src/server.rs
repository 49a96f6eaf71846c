//! `conclave server`: one node serving clients and peers on one listener.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::guard::GuardLayer;
use crate::metrics::{self, grpc::GrpcMetrics, grpc::TimingLayer};
use crate::tls::{Tls, TlsFiles};
use anyhow::Context;
use clap::builder::TypedValueParser as _;
use clap::Args;
use conclave_access::Directory;
use conclave_api::{
    ClusterService, KvService, LeaseService, LockService, PubSubService, RoomsService, WatchService,
};
use conclave_consensus::{ClusterSpec, Node, NodeOptions, Timing};

/// The longest request deadline accepted: a write is re-sent under its request id until its
/// deadline, and the state machine remembers replies for at least a minute
/// (`conclave_state::MIN_REPLY_AGE_MS`), so a retry within the deadline never applies twice.
const MAX_DEADLINE_MS: u64 = 30_000;
/// How long in-flight calls and open streams get to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// How long a stopping leader tries to hand its leadership over before it stops anyway.
const HANDOVER_WITHIN: Duration = Duration::from_secs(2);

/// Every setting of `conclave server`. Each can be given as a flag, as an environment variable
/// (`CONCLAVE_` and the flag's name in capitals, shown by `--help`) or as a key of the TOML file
/// named by `--config` (the flag's name: `data-dir = "/var/lib/conclave"`), in that order of
/// precedence (see `config.rs`); `docs/configuration.md` lists them with their defaults.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// A TOML file of settings: keys are the flags' names (`listen = "10.0.0.1:7000"`).
    /// Flags and environment variables take precedence over it; an unknown key is an error.
    #[arg(long, env = "CONCLAVE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Check the settings (flags, environment, file), print them with where each came from,
    /// and exit: 0 if they are valid, 2 if not. Starts nothing.
    #[arg(long)]
    pub check_config: bool,
    /// This node's id (a positive integer listed in --initial-cluster).
    #[arg(
        long,
        env = "CONCLAVE_ID",
        required_unless_present = "id_from_hostname"
    )]
    pub id: Option<u64>,
    /// Take the id from the host name's trailing number plus one: the pod `conclave-0` of a
    /// Kubernetes StatefulSet is node 1.
    #[arg(long, env = "CONCLAVE_ID_FROM_HOSTNAME", conflicts_with = "id")]
    pub id_from_hostname: bool,
    /// Where the node keeps its log, snapshots and identity.
    #[arg(long, env = "CONCLAVE_DATA_DIR")]
    pub data_dir: PathBuf,
    /// HOST:PORT to serve clients and peers on.
    #[arg(long, env = "CONCLAVE_LISTEN")]
    pub listen: String,
    /// The cluster's members at creation: 1=HOST:PORT,2=HOST:PORT,...
    #[arg(long, env = "CONCLAVE_INITIAL_CLUSTER")]
    pub initial_cluster: String,
    /// Do not bootstrap: wait to be added with `ctl members add` (for nodes added later; implied
    /// for a node not listed in --initial-cluster).
    #[arg(long, env = "CONCLAVE_JOIN")]
    pub join: bool,
    /// Snapshot (and compact the log) every this many entries.
    #[arg(long, env = "CONCLAVE_SNAPSHOT_EVERY", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_every: u64,
    /// Leader heartbeat in milliseconds.
    #[arg(long, env = "CONCLAVE_HEARTBEAT_MS", default_value_t = Timing::default().heartbeat_ms,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_ms: u64,
    /// Lower bound of the election timeout in milliseconds (above the heartbeat).
    #[arg(long, env = "CONCLAVE_ELECTION_MIN_MS", default_value_t = Timing::default().election_min_ms)]
    pub election_min_ms: u64,
    /// Upper bound of the election timeout in milliseconds (above the lower bound).
    #[arg(long, env = "CONCLAVE_ELECTION_MAX_MS", default_value_t = Timing::default().election_max_ms)]
    pub election_max_ms: u64,
    /// How long a request may wait for a leader before failing with UNAVAILABLE.
    #[arg(long, env = "CONCLAVE_REQUEST_TIMEOUT_MS",
          default_value_t = Timing::default().request_timeout.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..=MAX_DEADLINE_MS))]
    pub request_timeout_ms: u64,
    /// HOST:PORT to serve the Redis protocol (RESP2/RESP3) on; off when absent.
    #[arg(long, env = "CONCLAVE_RESP")]
    pub resp: Option<String>,
    /// What a RESP read waits for: session (read your own writes), linearizable or local.
    #[arg(long, env = "CONCLAVE_RESP_CONSISTENCY", default_value = "session")]
    pub resp_consistency: conclave_resp::ReadConsistency,
    /// The default user's password (RESP `AUTH <password>` or `HELLO 3 AUTH default
    /// <password>`; gRPC `authorization: Basic`). Without it and without --users, clients need
    /// no credentials.
    #[arg(long, env = "CONCLAVE_RESP_PASSWORD", hide_env_values = true)]
    pub resp_password: Option<String>,
    /// The users file (TOML: `[[user]]` tables with name, role = admin | read-write |
    /// read-only, password or password-sha256, tokens for gRPC); read again when it changes.
    /// With it, every client must authenticate unless the file gives the default user nopass.
    #[arg(long, env = "CONCLAVE_USERS")]
    pub users: Option<PathBuf>,
    /// Serve RESP over TLS, with the node's --tls-cert and --tls-key (clients check it against
    /// --tls-ca; `redis-cli --tls --cacert ca.pem`). Clients authenticate with AUTH.
    #[arg(long, env = "CONCLAVE_RESP_TLS", requires_all = ["resp", "tls_cert"])]
    pub resp_tls: bool,
    /// How long a RESP command may wait for a leader before it is answered TRYAGAIN (or, for a
    /// write a leader may still commit, UNCERTAIN).
    #[arg(long, env = "CONCLAVE_RESP_DEADLINE_MS",
          default_value_t = conclave_resp::RespOptions::default().write_deadline.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..=MAX_DEADLINE_MS))]
    pub resp_deadline_ms: u64,
    /// Room the data directory's filesystem must keep (bytes, or with kb, mb or gb). With less
    /// available the node refuses writes (RESP `MISCONF`, gRPC RESOURCE_EXHAUSTED), takes no
    /// entries from the leader and starts no elections, until space returns. 0 turns it off.
    #[arg(long, env = "CONCLAVE_DISK_RESERVE", default_value = "128mb",
          value_parser = crate::config::parse_size)]
    pub disk_reserve: usize,
    /// Most RESP connections open at once; one more is answered `-ERR max number of clients
    /// reached` and closed (Redis's maxclients).
    #[arg(long, env = "CONCLAVE_RESP_MAX_CLIENTS",
          default_value_t = conclave_resp::RespOptions::default().max_clients,
          value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub resp_max_clients: usize,
    /// Most gRPC connections open at once, other nodes' included; one more is sent an HTTP/2
    /// GOAWAY (ENHANCE_YOUR_CALM, which gRPC clients report as RESOURCE_EXHAUSTED, with "too
    /// many connections") and closed.
    #[arg(long, env = "CONCLAVE_GRPC_MAX_CONNECTIONS", default_value_t = GRPC_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub grpc_max_connections: usize,
    /// How much a subscriber (RESP or gRPC) may leave unread: `<hard> <soft> <seconds>`, as
    /// Redis's `client-output-buffer-limit pubsub`. Past the hard limit, or past the soft limit
    /// for that many seconds, it is disconnected. 0 turns a limit off.
    #[arg(long, env = "CONCLAVE_PUBSUB_OUTPUT_BUFFER_LIMIT", default_value = "32mb 8mb 60",
          value_parser = crate::config::parse_output_buffer_limit)]
    pub pubsub_output_buffer_limit: conclave_pubsub::Limits,
    /// Most channels and patterns one subscriber holds together; a SUBSCRIBE past it is refused
    /// (RESP), a gRPC Subscribe stream ends with RESOURCE_EXHAUSTED.
    #[arg(long, env = "CONCLAVE_MAX_SUBSCRIPTIONS",
          default_value_t = conclave_pubsub::Limits::default().max_subscriptions,
          value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub max_subscriptions: usize,
    /// This node's TLS certificate (PEM; `conclave certs node`). With --tls-key and --tls-ca,
    /// the gRPC listener and the connections to peers use TLS, and node-to-node calls need a
    /// node certificate from the CA. The files are read again when they change.
    #[arg(long, env = "CONCLAVE_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM), for --tls-cert.
    #[arg(long, env = "CONCLAVE_TLS_KEY", requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,
    /// The cluster's CA certificate (PEM): peers' and clients' certificates must come from it.
    #[arg(long, env = "CONCLAVE_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// HOST:PORT to serve Prometheus metrics on (`GET /metrics`); off when absent.
    #[arg(long, env = "CONCLAVE_METRICS")]
    pub metrics: Option<String>,
    /// Serve the metrics over HTTPS, with the node's --tls-cert and --tls-key (Prometheus:
    /// `scheme: https` and `tls_config.ca_file` set to --tls-ca).
    #[arg(long, env = "CONCLAVE_METRICS_TLS", requires_all = ["metrics", "tls_cert"])]
    pub metrics_tls: bool,
    /// Seed this node's empty data directory from a backup (`ctl snapshot save`) before it
    /// starts: give every node of the new cluster the same file and --initial-cluster. A data
    /// directory this backup seeded before starts as usual; one holding other data is refused.
    #[arg(long, env = "CONCLAVE_RESTORE")]
    pub restore: Option<PathBuf>,
    /// For tests: a file holding a signed number of milliseconds added to this node's wall
    /// clock (re-read as it changes; missing or empty is 0), to step or skew one node's clock.
    #[arg(long, env = "CONCLAVE_CLOCK_OFFSET_FILE", hide = true)]
    pub clock_offset_file: Option<PathBuf>,
}

/// Default of `--grpc-max-connections`.
const GRPC_MAX_CONNECTIONS: usize = 10_000;

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

/// What a node runs with, from its settings.
struct Prepared {
    options: NodeOptions,
    tls: Option<Arc<Tls>>,
    users: Arc<Directory>,
}

/// The node's options from the settings, every setting checked (what `--check-config` checks),
/// its TLS material if it has any, and its users.
fn node_options(args: &ServerArgs) -> anyhow::Result<Prepared> {
    let users = Directory::load(args.users.clone(), args.resp_password.clone())
        .map_err(anyhow::Error::msg)?;
    let tls = match (&args.tls_cert, &args.tls_key, &args.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => Some(Tls::load(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: ca.clone(),
        })?),
        _ => None,
    };
    let id = node_id(args)?;
    let mut cluster = ClusterSpec::parse(&args.initial_cluster)?;
    if let Some(checksum) = crate::backup::restored_from(&args.data_dir) {
        cluster = cluster.restored_from(&checksum);
    }
    let address: std::net::SocketAddr = args
        .listen
        .parse()
        .with_context(|| format!("--listen {} is not IP:PORT", args.listen))?;
    for (flag, value) in [("--resp", &args.resp), ("--metrics", &args.metrics)] {
        if let Some(value) = value {
            check_host_port(value).with_context(|| format!("{flag} {value}"))?;
        }
    }
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
        snapshot_every: args.snapshot_every,
        clock_offset_file: args.clock_offset_file.clone(),
        source_ip: Some(address.ip()),
        peer_tls: tls.as_ref().map(|tls| tls.peer_client()),
        disk_reserve: args.disk_reserve as u64,
    };
    options.check()?;
    Ok(Prepared {
        options,
        tls,
        users: Arc::new(users),
    })
}

/// HOST:PORT with a port number.
fn check_host_port(value: &str) -> anyhow::Result<()> {
    let (host, port) = value.rsplit_once(':').context("is not HOST:PORT")?;
    anyhow::ensure!(!host.is_empty(), "has no host");
    port.parse::<u16>().context("has no valid port")?;
    Ok(())
}

pub async fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    if args.check_config {
        return Ok(crate::config::check(&args, node_options(&args)));
    }
    crate::memory::start_trimming();
    if let Some(backup) = &args.restore {
        anyhow::ensure!(
            !args.join,
            "--restore seeds a listed member: not with --join"
        );
        let cluster = ClusterSpec::parse(&args.initial_cluster)?;
        crate::backup::restore(backup, &args.data_dir, node_id(&args)?, &cluster)?;
    }
    let Prepared {
        options,
        tls,
        users,
    } = node_options(&args)?;
    let id = options.id;
    warn_about_exposure(&args, &users, tls.is_some());
    // Every listener is bound before the node opens: a port in use fails the start at once.
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let resp_listener = match &args.resp {
        Some(resp) => Some(
            tokio::net::TcpListener::bind(resp)
                .await
                .with_context(|| format!("cannot listen for RESP on {resp}"))?,
        ),
        None => None,
    };
    let metrics_listener = match &args.metrics {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen for metrics on {address}"))?,
        ),
        None => None,
    };
    let node = Node::open(options).await?;
    // Through the log (not println), so `--log-format json` gives one JSON object per line.
    tracing::info!(id, listen = %args.listen, "node serving gRPC (clients and peers)");

    let pubsub_limits = conclave_pubsub::Limits {
        max_subscriptions: args.max_subscriptions,
        ..args.pubsub_output_buffer_limit
    };
    let pubsub = conclave_pubsub::PubSub::start(node.clone(), pubsub_limits);
    let grpc_metrics = Arc::new(GrpcMetrics::default());
    let resp_metrics = Arc::new(conclave_resp::RespMetrics::default());
    // Turned true on SIGTERM: the RESP listener stops accepting and its connections close once
    // they have answered what they read.
    let (stop_resp, resp_stopping) = tokio::sync::watch::channel(false);
    let mut resp_drained = None;
    if let (Some(resp), Some(listener)) = (&args.resp, resp_listener) {
        let options = conclave_resp::RespOptions {
            consistency: args.resp_consistency,
            users: users.clone(),
            write_deadline: Duration::from_millis(args.resp_deadline_ms),
            max_clients: args.resp_max_clients,
            metrics: resp_metrics.clone(),
            tls: match (&tls, args.resp_tls) {
                (Some(tls), true) => Some(tls.server_config(&[])?),
                _ => None,
            },
            ..Default::default()
        };
        resp_drained = Some(tokio::spawn(conclave_resp::serve(
            listener,
            node.clone(),
            pubsub.clone(),
            options,
            resp_stopping,
        )));
        tracing::info!(id, resp = %resp, "node serving RESP");
    }

    if let (Some(address), Some(listener)) = (&args.metrics, metrics_listener) {
        let sources = metrics::Sources {
            node: node.clone(),
            pubsub: pubsub.clone(),
            grpc: grpc_metrics.clone(),
            resp: args.resp.is_some().then(|| resp_metrics.clone()),
        };
        let metrics_tls = match (&tls, args.metrics_tls) {
            (Some(tls), true) => Some(tls.server_config(&[b"http/1.1"])?),
            _ => None,
        };
        tokio::spawn(metrics::serve(
            listener,
            sources,
            metrics_tls,
            stop_resp.subscribe(),
        ));
        tracing::info!(id, metrics = %format!("http://{address}/metrics"), "node serving metrics");
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    // Not serving until the node has been seen to know a leader, and from the first moment of
    // a shutdown on.
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let (shutting_down, shutdown_seen) = tokio::sync::watch::channel(false);
    tokio::spawn(report_health(node.clone(), health, shutdown_seen));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(conclave_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("gRPC reflection")?;

    if let Some(tls) = &tls {
        tokio::spawn(crate::tls::follow_files(tls.clone(), node.clone()));
    }
    if users.file().is_some() {
        tokio::spawn(follow_users(users.clone()));
    }
    let incoming = crate::tls::incoming(
        listener,
        tls,
        grpc_metrics.clone(),
        args.grpc_max_connections,
    )?;
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopping = stop.clone();
    let stopping_node = node.clone();
    let served = tonic::transport::Server::builder()
        .layer(TimingLayer(grpc_metrics))
        .layer(GuardLayer {
            users: users.clone(),
        })
        .add_service(health_service)
        .add_service(reflection)
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
            shutting_down.send_replace(true);
            stopping_node.stop_elections();
            // Before the listener closes: the successor's vote request must still reach us.
            if let Some(successor) = stopping_node.hand_over(HANDOVER_WITHIN).await {
                tracing::info!(id, successor, "handed the leadership over");
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
    tracing::info!(id, "node stopped");
    Ok(ExitCode::SUCCESS)
}

/// How often the users file is checked for changes.
const USERS_RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Keeps the node's users in step with the users file.
async fn follow_users(users: Arc<Directory>) {
    loop {
        tokio::time::sleep(USERS_RELOAD_EVERY).await;
        match users.reload_if_changed() {
            Ok(true) => tracing::info!("users file changed: reloaded"),
            Ok(false) => {}
            Err(error) => tracing::warn!(
                "users file changed but cannot be used (keeping the users in use): {error}"
            ),
        }
    }
}

/// Says at start what a setting leaves open that an operator may think closed.
fn warn_about_exposure(args: &ServerArgs, users: &Directory, tls: bool) {
    let open = users.current().anonymous().is_some();
    if !open && !tls {
        tracing::warn!(
            "clients authenticate, but without TLS: passwords and tokens cross the network in clear text, and any process that reaches the gRPC port can make node-to-node calls (--tls-cert/--tls-key/--tls-ca)"
        );
    }
    if open && args.resp_password.is_none() && args.users.is_some() {
        tracing::info!(
            "the users file gives the default user nopass: clients without credentials run as it"
        );
    }
}

/// How often the health service's status follows the node's.
const HEALTH_EVERY: Duration = Duration::from_millis(250);

/// Keeps the standard gRPC health service's overall status ("") in step with the node:
/// SERVING while it knows a leader (so writes can go through), NOT_SERVING otherwise and once
/// the node is shutting down.
async fn report_health(
    node: Node,
    health: tonic_health::server::HealthReporter,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut serving = None;
    loop {
        let status = node.status();
        let stopped = *shutdown.borrow_and_update() || status.role == "shutdown";
        let now = status.leader.is_some() && !stopped;
        if serving != Some(now) {
            let state = if now {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            health.set_service_status("", state).await;
            serving = Some(now);
        }
        if stopped {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_EVERY) => {}
            _ = shutdown.changed() => {}
        }
    }
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
