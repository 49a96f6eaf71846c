//! `conclave bench`: load against a running cluster, printing throughput and latency
//! percentiles. A program that prints figures; nothing asserts on them.
//!
//! Modes: `writes` (concurrent writers), `pubsub` (publishers at a fixed total rate, a
//! subscriber on every node, delivery latency within and across nodes) and `watch` (writers and a
//! watcher on every node, event latency after the write is acknowledged). And `conclave bench
//! livekit`, LiveKit's Redis traffic over RESP against Conclave or Redis (`conclave-livekit`).

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use conclave_client::{Client, WatchTarget};

/// What to measure.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Mode {
    Writes,
    Pubsub,
    Watch,
}

/// A workload of its own, with its own flags.
#[derive(Subcommand, Debug)]
pub enum Workload {
    /// LiveKit's room workload over RESP3, with its deadlines counted as failures.
    Livekit(Box<conclave_livekit::Options>),
    /// A TCP proxy that adds a fixed delay each way (a remote server, on one machine).
    DelayProxy(conclave_livekit::delay::ProxyOptions),
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    workload: Option<Workload>,
    /// What to measure.
    #[arg(long, value_enum, default_value = "writes")]
    mode: Mode,
    /// Endpoints; writer (or publisher) i uses endpoint i modulo their count.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    )]
    endpoints: Vec<String>,
    /// Concurrent writers, each waiting for its write before sending the next; several counts
    /// may be given (`--writers 1,64`).
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    writers: Vec<usize>,
    /// How long each run lasts, in seconds.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Value (or message payload) size in bytes.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// pubsub: messages per second, all publishers together.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// pubsub: concurrent publishers sharing the rate.
    #[arg(long, default_value_t = 32)]
    publishers: usize,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.workload {
        Some(Workload::Livekit(options)) => return livekit(*options).await,
        Some(Workload::DelayProxy(options)) => {
            tokio::task::spawn_blocking(move || conclave_livekit::delay::serve(&options)).await??;
            return Ok(ExitCode::SUCCESS);
        }
        None => {}
    }
    match args.mode {
        Mode::Writes => writes(args).await,
        Mode::Pubsub => pubsub(args).await,
        Mode::Watch => watch(args).await,
    }
}

/// Milliseconds at percentile `p` of sorted `samples`.
fn percentile(samples: &[Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let i = ((samples.len() as f64 * p) as usize).min(samples.len() - 1);
    samples[i].as_secs_f64() * 1000.0
}

/// Publishers on every endpoint at a fixed total rate; one subscriber per endpoint. Each payload
/// carries its send time, so every delivery is timed, within a node or across nodes.
async fn pubsub(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let base = Instant::now();
    let channel = "bench:pubsub";
    let nodes = args.endpoints.len();
    // Per subscriber node: (publisher node, latency) of every delivery.
    let mut receivers = Vec::new();
    for (node, endpoint) in args.endpoints.iter().enumerate() {
        let client = Client::connect([endpoint]).await?;
        let mut subscriber = client.subscriber();
        subscriber.subscribe(&[channel]).await?;
        receivers.push(tokio::spawn(async move {
            let mut deliveries: Vec<(usize, Duration)> = Vec::new();
            let mut errors = 0u64;
            loop {
                match tokio::time::timeout(Duration::from_secs(3), subscriber.next()).await {
                    Ok(Some(Ok(message))) => {
                        let received = base.elapsed();
                        let sent = u64::from_le_bytes(message.payload[..8].try_into().unwrap());
                        let from = message.payload[8] as usize;
                        deliveries
                            .push((from, received.saturating_sub(Duration::from_nanos(sent))));
                    }
                    Ok(Some(Err(_))) => errors += 1,
                    Ok(None) | Err(_) => break,
                }
            }
            let _ = (client, node);
            (deliveries, errors)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let per_publisher = args.rate as f64 / args.publishers as f64;
    let mut publishers = Vec::new();
    for p in 0..args.publishers {
        let node = p % nodes;
        let client = Client::connect([&args.endpoints[node]]).await?;
        let size = args.value_bytes.max(9);
        publishers.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut sent = 0u64;
            let mut errors = 0u64;
            while Instant::now() < deadline {
                // Send the k-th message at started + k / rate, catching up when behind.
                let due = started + Duration::from_secs_f64(sent as f64 / per_publisher);
                tokio::time::sleep_until(due.into()).await;
                let mut payload = vec![0u8; size];
                payload[..8].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_le_bytes());
                payload[8] = node as u8;
                match client.publish(channel, payload).await {
                    Ok(_) => sent += 1,
                    Err(_) => errors += 1,
                }
            }
            (sent, errors, started.elapsed())
        }));
    }
    let mut published = 0;
    let mut publish_errors = 0;
    let mut elapsed = Duration::ZERO;
    for publisher in publishers {
        let (sent, errors, took) = publisher.await?;
        published += sent;
        publish_errors += errors;
        elapsed = elapsed.max(took);
    }
    println!(
        "published {published} messages of {} bytes in {:.1} s: {:.0} msg/s ({} publishers on {nodes} nodes, {publish_errors} errors)",
        args.value_bytes.max(9),
        elapsed.as_secs_f64(),
        published as f64 / elapsed.as_secs_f64(),
        args.publishers
    );
    println!("| subscriber node | delivered | of | same node p50 ms | p99 ms | other nodes p50 ms | p99 ms | max ms |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (node, receiver) in receivers.into_iter().enumerate() {
        let (deliveries, _) = receiver.await?;
        let mut local: Vec<Duration> = deliveries
            .iter()
            .filter(|(f, _)| *f == node)
            .map(|(_, l)| *l)
            .collect();
        let mut remote: Vec<Duration> = deliveries
            .iter()
            .filter(|(f, _)| *f != node)
            .map(|(_, l)| *l)
            .collect();
        local.sort();
        remote.sort();
        let max = local.last().max(remote.last()).copied().unwrap_or_default();
        println!(
            "| {} | {} | {published} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            args.endpoints[node],
            deliveries.len(),
            percentile(&local, 0.50),
            percentile(&local, 0.99),
            percentile(&remote, 0.50),
            percentile(&remote, 0.99),
            max.as_secs_f64() * 1000.0,
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writers on the first endpoint; a watcher on every endpoint. Each event is timed from the
/// moment its write was acknowledged to the writer (the commit, as a client sees it).
async fn watch(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let prefix = format!("bench/watch/{}/", std::process::id());
    let acked: Arc<Mutex<HashMap<Vec<u8>, Instant>>> = Arc::default();
    let mut watchers = Vec::new();
    for endpoint in &args.endpoints {
        let client = Client::connect([endpoint]).await?;
        let mut watcher = client.watch(WatchTarget::Prefix(prefix.clone().into_bytes()), None);
        watcher.next_batch().await?;
        watchers.push(tokio::spawn(async move {
            let mut arrivals: Vec<(Vec<u8>, Instant)> = Vec::new();
            while let Ok(Ok(batch)) =
                tokio::time::timeout(Duration::from_secs(3), watcher.next()).await
            {
                let now = Instant::now();
                arrivals.extend(batch.events.into_iter().map(|e| (e.key, now)));
            }
            arrivals
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let writers = args.writers.first().copied().unwrap_or(4);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let client = Client::connect([&args.endpoints[0]]).await?;
        let acked = acked.clone();
        let prefix = prefix.clone();
        let value = vec![b'x'; args.value_bytes];
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                let key = format!("{prefix}{w}/{i}").into_bytes();
                if client.set(&key, &value).await.is_ok() {
                    acked.lock().unwrap().insert(key, Instant::now());
                }
                i += 1;
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let acked = acked.lock().unwrap().clone();
    println!(
        "{} writes acknowledged ({writers} writers on {})",
        acked.len(),
        args.endpoints[0]
    );
    println!(
        "| watcher node | events | of | after ack p50 ms | p99 ms | max ms | before its ack |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (endpoint, watcher) in args.endpoints.iter().zip(watchers) {
        let arrivals = watcher.await?;
        let mut after = Vec::new();
        let mut early = 0;
        for (key, at) in &arrivals {
            let Some(ack) = acked.get(key) else { continue };
            match at.checked_duration_since(*ack) {
                Some(d) => after.push(d),
                None => early += 1,
            }
        }
        after.sort();
        println!(
            "| {endpoint} | {} | {} | {:.2} | {:.2} | {:.2} | {early} |",
            arrivals.len(),
            acked.len(),
            percentile(&after, 0.50),
            percentile(&after, 0.99),
            after.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn writes(args: BenchArgs) -> anyhow::Result<ExitCode> {
    println!("| writers | writes | writes/s | p50 ms | p99 ms | max ms | errors | entries per log flush, by node |");
    println!("|--------:|-------:|---------:|-------:|-------:|-------:|-------:|:--------|");
    for &writers in &args.writers {
        let before = log_counters(&args.endpoints).await;
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..writers {
            let endpoint = args.endpoints[w % args.endpoints.len()].clone();
            let value = vec![b'x'; args.value_bytes];
            tasks.push(tokio::spawn(async move {
                let client = Client::connect([endpoint]).await?;
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let key = format!("bench/{w}/{}", i % 1000);
                    let sent = Instant::now();
                    match client.set(&key, &value).await {
                        Ok(_) => latencies.push(sent.elapsed()),
                        Err(_) => errors += 1,
                    }
                    i += 1;
                }
                anyhow::Ok((latencies, errors))
            }));
        }
        let mut latencies = Vec::new();
        let mut errors = 0;
        for task in tasks {
            let (l, e) = task.await??;
            latencies.extend(l);
            errors += e;
        }
        let elapsed = started.elapsed().as_secs_f64();
        latencies.sort();
        let pct = |p: f64| percentile(&latencies, p);
        let after = log_counters(&args.endpoints).await;
        let batching: Vec<String> = before
            .iter()
            .zip(&after)
            .map(|((id, e0, f0), (_, e1, f1))| {
                let flushes = f1.saturating_sub(*f0).max(1);
                format!(
                    "n{id} {:.1}",
                    e1.saturating_sub(*e0) as f64 / flushes as f64
                )
            })
            .collect();
        println!(
            "| {writers} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {errors} | {} |",
            latencies.len(),
            latencies.len() as f64 / elapsed,
            pct(0.50),
            pct(0.99),
            latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            batching.join(", "),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// (node id, log entries appended, log flushes) of every endpoint that answers.
async fn log_counters(endpoints: &[String]) -> Vec<(u64, u64, u64)> {
    let mut counters = Vec::new();
    for endpoint in endpoints {
        let Ok(client) = Client::connect([endpoint]).await else {
            continue;
        };
        if let Ok(status) = client.status().await {
            counters.push((status.id, status.log_entries_appended, status.log_flushes));
        }
    }
    counters
}

async fn livekit(options: conclave_livekit::Options) -> anyhow::Result<ExitCode> {
    let json = options.json.clone();
    let report = conclave_livekit::run(options).await?;
    report.print();
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    }
    println!("{}", report.result_line());
    Ok(ExitCode::SUCCESS)
}
