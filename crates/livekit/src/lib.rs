//! `conclave bench livekit`: the Redis traffic of a LiveKit cluster, simulated, against any
//! server that speaks RESP3 (a Conclave node or a redis-server), with LiveKit's deadlines
//! counted as failures.
//!
//! Owns: the workload model (M media nodes, each bound to one endpoint, hosting rooms of 3
//! participants and an agent; see `media.rs` for what each does), the open-loop schedule (every
//! recurring event at a fixed rate, latency counted from when it was due: `schedule`), the
//! measurements (`metrics.rs`), the node process sampling (`procstat.rs`) and the report
//! (table, JSON, result line: `report.rs`).
//!
//! Does not own: starting the servers under test (`scripts/bench-livekit.sh` does), a Redis
//! client library (`resp3.rs` is a minimal pipelining client, so that what is measured is the
//! server and the wire, not a client's pool).
//!
//! Rates (per room unless said): rooms open during the warm-up, evenly; a media node reports its
//! stats (`HSET nodes`, 400 B) and publishes its keepalive every 2 s; every participant's client
//! pings every 5 s (relayed to the room's node and back, each message acked); a speaker or
//! quality update goes to every participant twice a second; a unary RPC every 10 s; a
//! participant record changes every 30 s per participant; one participant leaves and joins
//! again every minute; a room closes and opens again every 10 minutes on average. A signal
//! message unacked is sent again after 500 ms, then 1, 2 and 4 s more.
//! LiveKit's own figures behind these: `../shared/docs/livekit-redis-surface.md`.

pub mod channels;
pub mod delay;
pub mod media;
pub mod metrics;
pub mod procstat;
mod progress;
pub mod report;
pub mod resp3;

use std::sync::Arc;
use std::time::{Duration, Instant};

use media::{MediaNode, Shared};

/// The benchmark's flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Rooms in all, spread evenly over the media nodes.
    #[arg(long)]
    pub rooms: usize,
    /// How long the measured part runs (after the warm-up), e.g. `60s`, `2m`.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// The warm-up: rooms open during it; nothing is counted.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Simulated media nodes.
    #[arg(long, default_value_t = 3)]
    pub media_nodes: usize,
    /// RESP endpoints: media node i uses endpoint i mod their count.
    #[arg(long, value_delimiter = ',', required = true)]
    pub resp: Vec<String>,
    /// Command connections per media node (go-redis keeps a pool; psrpc publishes through 17
    /// queues over it).
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Human participants per room (each room also has one agent).
    #[arg(long, default_value_t = 3)]
    pub participants: usize,
    /// How often a media node reports its stats and publishes its keepalive.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub stats_interval: Duration,
    /// How often each participant's client pings.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub ping_interval: Duration,
    /// Speaker and quality updates per room per second (each to every participant).
    #[arg(long, default_value_t = 2.0)]
    pub updates_per_room_per_s: f64,
    /// How often each room gets a unary RPC.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub rpc_interval: Duration,
    /// How often each participant's record changes.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub participant_update_interval: Duration,
    /// How often a participant of each room leaves and joins again.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub churn_interval: Duration,
    /// A room's average life before it closes and opens again.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub room_lifetime: Duration,
    /// Bytes of a participant record.
    #[arg(long, default_value_t = 1500)]
    pub participant_bytes: usize,
    /// Bytes of a room record.
    #[arg(long, default_value_t = 500)]
    pub room_bytes: usize,
    /// Bytes of a node record.
    #[arg(long, default_value_t = 400)]
    pub node_bytes: usize,
    /// Bytes of an agent dispatch record and of an agent job record.
    #[arg(long, default_value_t = 300)]
    pub dispatch_bytes: usize,
    /// Bytes of an RPC request and of its response.
    #[arg(long, default_value_t = 300)]
    pub request_bytes: usize,
    #[arg(long, default_value_t = 500)]
    pub response_bytes: usize,
    /// Bytes of a speaker or quality update.
    #[arg(long, default_value_t = 300)]
    pub update_bytes: usize,
    /// Write the report as JSON here too.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Processes to sample for RSS and CPU (the servers under test), comma-separated pids.
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Delay proxies between the servers or in front of them (`bench delay-proxy`), sampled
    /// too: on one machine their CPU is taken from the servers and the bench.
    #[arg(long, value_delimiter = ',')]
    pub proxy_pids: Vec<u32>,
    /// A label for the report (e.g. the system under test).
    #[arg(long, default_value = "")]
    pub label: String,
}

/// `60s`, `2m`, `500ms`, or seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("not a duration: {text}"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown unit in {text} (ms, s, m or h)")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// How long the run waits for answers after the load stops: the longest deadline (a unary
/// RPC's 3 s), and a little.
const DRAIN: Duration = Duration::from_millis(3500);

/// Runs the benchmark and returns its report.
pub async fn run(options: Options) -> anyhow::Result<report::Report> {
    anyhow::ensure!(options.media_nodes > 0, "--media-nodes must be at least 1");
    anyhow::ensure!(!options.resp.is_empty(), "--resp names no endpoint");
    let shared = Shared::new(options.clone());
    let mut nodes = Vec::new();
    for index in 0..options.media_nodes {
        let rooms = options.rooms / options.media_nodes
            + usize::from(index < options.rooms % options.media_nodes);
        let address = &options.resp[index % options.resp.len()];
        nodes.push(MediaNode::connect(shared.clone(), index, address, rooms).await?);
    }
    let _ = shared.nodes.set(nodes.clone());
    let started = Instant::now();
    let end = started + options.warmup + options.duration;
    let mut load = tokio::task::JoinSet::new();
    for node in &nodes {
        spawn_node_load(&mut load, node.clone(), &options, started, end);
    }
    let progress = tokio::spawn(progress::show(shared.clone(), options.warmup, started, end));
    let housekeeping = tokio::spawn(housekeeping(nodes.clone()));
    tokio::time::sleep(options.warmup).await;
    shared.recorder.start();
    let measured = Instant::now();
    // The processes over the measured part only.
    let mut sampled: Vec<(u32, procstat::Role)> = options
        .pids
        .iter()
        .map(|pid| (*pid, procstat::Role::Server))
        .chain(
            options
                .proxy_pids
                .iter()
                .map(|pid| (*pid, procstat::Role::Proxy)),
        )
        .collect();
    sampled.push((std::process::id(), procstat::Role::Bench));
    let sampler = procstat::Sampler::start(&sampled);
    tokio::time::sleep_until(end.into()).await;
    let processes = sampler.finish().await;
    load.abort_all();
    while load.join_next().await.is_some() {}
    // What was sent before the end has until the longest deadline to be answered; then what
    // is past its deadline is lost, and the rest not counted.
    tokio::time::sleep(DRAIN).await;
    housekeeping.abort();
    for node in &nodes {
        node.sweep(true);
    }
    progress.abort();
    let _ = progress.await;
    let elapsed = end.saturating_duration_since(measured);
    Ok(report::Report::build(&shared, elapsed, processes))
}

/// Every recurring event of one media node, each at its fixed rate over the node's rooms.
fn spawn_node_load(
    load: &mut tokio::task::JoinSet<()>,
    node: Arc<MediaNode>,
    options: &Options,
    started: Instant,
    end: Instant,
) {
    let rooms = node.rooms.len();
    let people = options.participants + 1;
    // Rooms open evenly over the warm-up.
    if rooms > 0 {
        let opener = node.clone();
        let period = options.warmup / rooms as u32;
        load.spawn(async move {
            for slot in 0..rooms {
                let due = started + period * slot as u32;
                tokio::time::sleep_until(due.into()).await;
                tokio::spawn(opener.clone().open_room(slot, due));
            }
        });
    }
    let per_room = |interval: Duration| interval.div_f64(rooms.max(1) as f64);
    type Event = fn(Arc<MediaNode>, usize, Instant) -> futures::future::BoxFuture<'static, ()>;
    let events: Vec<(Duration, usize, Event)> = vec![
        (options.stats_interval, 1, |n, _, due| {
            Box::pin(n.report_stats(due))
        }),
        (
            per_room(options.ping_interval / people as u32),
            rooms,
            |n, slot, due| Box::pin(n.ping(slot, due)),
        ),
        (
            per_room(Duration::from_secs_f64(
                1.0 / options.updates_per_room_per_s.max(1e-6),
            )),
            rooms,
            |n, slot, due| Box::pin(n.room_update(slot, due)),
        ),
        (per_room(options.rpc_interval), rooms, |n, slot, due| {
            Box::pin(n.room_rpc(slot, due))
        }),
        (
            per_room(options.participant_update_interval / options.participants.max(1) as u32),
            rooms,
            |n, slot, due| Box::pin(n.update_participant(slot, due)),
        ),
        (per_room(options.churn_interval), rooms, |n, slot, due| {
            Box::pin(n.churn(slot, due))
        }),
        (per_room(options.room_lifetime), rooms, |n, slot, due| {
            Box::pin(n.recycle_room(slot, due))
        }),
    ];
    for (period, entities, event) in events {
        if entities == 0 || period.is_zero() {
            continue;
        }
        let node = node.clone();
        load.spawn(async move {
            let mut next = Instant::now() + period;
            let mut entity = 0usize;
            while next < end {
                tokio::time::sleep_until(next.into()).await;
                tokio::spawn(event(node.clone(), entity % entities, next));
                entity = entity.wrapping_add(1);
                next += period;
            }
        });
    }
}

/// Every 100 ms, signal messages still unacked are sent again; every second, exchanges
/// unanswered for too long are counted lost.
async fn housekeeping(nodes: Vec<Arc<MediaNode>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for round in 0u64.. {
        tick.tick().await;
        for node in &nodes {
            node.retry_signals();
            if round % 10 == 9 {
                node.sweep(false);
            }
        }
    }
}
