//! `chaos`: Conclave's chaos suite. It starts a cluster (the local harness: real `conclave
//! server` processes on loopback addresses of their own), runs workloads on every node that
//! record a history of every operation, injects a seeded schedule of faults, heals, reads the
//! final state, and checks the history: registers for linearizability, sets for lost and
//! unexpected elements, counters for lost and duplicated increments, locks for two holders,
//! watch streams for skipped, repeated and reordered events, pub/sub for repeats, reordering,
//! causality and losses far from faults.
//!
//! `cluster-tests/run.sh` is the entry point (it builds the binaries first); the contract:
//! `run.sh --duration SECONDS --nemesis LIST|all --seed N [--harness local]
//! [--consistency linearizable|session|local] [--upgrade-from EARLIER_BINARY]`. The last line
//! printed is `RESULT lost=N duplicated=N linearizable=true|false ops=N faults=N`; the exit
//! status is 0 only when every check holds.
//!
//! Known to be missing: Redis-with-Sentinel under the same schedule.

mod checker;
mod harness;
mod history;
mod nemesis;
mod report;
mod resp;
mod rng;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::harness::Harness;
use crate::history::History;
use crate::rng::Rng;
use crate::workload::ReadLevel;

#[derive(Parser, Debug)]
#[command(
    name = "chaos",
    about = "Conclave's chaos suite: workloads, faults, history checkers"
)]
struct Args {
    /// How long the workloads run, in seconds (faults stop 3 s before the end).
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Faults to draw from: a comma-separated list, `all` or `none`.
    #[arg(long, default_value = "all")]
    nemesis: String,
    /// Seeds the schedule and the operations; the same seed replays the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the cluster runs: Conclave on loopback (local) or in deploy/'s compose cluster
    /// (docker), or, for comparison, Redis with Sentinel in containers (sentinel).
    #[arg(long, default_value = "local", value_parser = ["local", "docker", "sentinel"])]
    harness: String,
    /// Sentinel's `down-after-milliseconds` (the sentinel harness; Redis's default).
    #[arg(long, default_value_t = 30_000)]
    sentinel_down_after_ms: u64,
    /// Sentinel's `failover-timeout` (the sentinel harness; Redis's default).
    #[arg(long, default_value_t = 180_000)]
    sentinel_failover_timeout_ms: u64,
    /// Read consistency of the clients (and of the nodes' RESP reads).
    #[arg(long, default_value = "linearizable")]
    consistency: String,
    /// Workloads to run: a comma-separated list of register, set, counter, locks, watch, pubsub
    /// (default: all of them; against Redis with Sentinel, the RESP ones: register, set, counter).
    #[arg(long)]
    workloads: Option<String>,
    /// Cluster size.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// The `conclave` binary the local harness starts.
    #[arg(long, default_value = "target/release/conclave")]
    binary: PathBuf,
    /// Starts the nodes on this earlier build of `conclave` and, after the baseline, moves
    /// them one by one to `--binary` under the workloads, before any other fault (the local
    /// harness; scripts/upgrade-test.sh builds the earlier commit).
    #[arg(long)]
    upgrade_from: Option<PathBuf>,
    /// Where histories and reports go (a directory per run).
    #[arg(long, default_value = "cluster-tests/out")]
    out: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("chaos: {e:#}");
            println!("RESULT lost=0 duplicated=0 linearizable=false ops=0 faults=0 error=true");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let mut kinds = nemesis::parse_kinds(&args.nemesis)?;
    let reads = ReadLevel::parse(&args.consistency)?;
    let mut workloads: Vec<&str> = match &args.workloads {
        Some(list) => list.split(',').map(str::trim).collect(),
        None => workload::WORKLOADS.to_vec(),
    };
    if args.harness == "sentinel" {
        // Redis has no membership changes, replicated clock or gRPC API: the comparison runs
        // the RESP workloads under the faults both systems meet.
        if args.nemesis == "all" {
            kinds.retain(|k| nemesis::applies_to_redis(k));
        }
        if let Some(k) = kinds.iter().find(|k| !nemesis::applies_to_redis(k)) {
            anyhow::bail!("nemesis {k} does not apply to Redis with Sentinel");
        }
        if args.workloads.is_none() {
            workloads = workload::RESP_WORKLOADS.to_vec();
        }
        if let Some(w) = workloads
            .iter()
            .find(|w| !workload::RESP_WORKLOADS.contains(w))
        {
            anyhow::bail!("workload {w} does not run against Redis with Sentinel");
        }
    }
    if let Some(unknown) = workloads.iter().find(|w| !workload::WORKLOADS.contains(w)) {
        anyhow::bail!(
            "unknown workload {unknown:?}; known: {}",
            workload::WORKLOADS.join(", ")
        );
    }
    anyhow::ensure!(
        args.binary.exists(),
        "{} does not exist: build it (cluster-tests/run.sh does) or pass --binary",
        args.binary.display()
    );
    if let Some(earlier) = &args.upgrade_from {
        anyhow::ensure!(
            args.harness == "local",
            "--upgrade-from runs on the local harness"
        );
        anyhow::ensure!(
            earlier.exists(),
            "{} does not exist: scripts/upgrade-test.sh builds the earlier commit",
            earlier.display()
        );
    }
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dir = args.out.join(format!("seed{}-{started}", args.seed));
    std::fs::create_dir_all(&dir)?;
    println!(
        "chaos: seed {} | {} harness | {} s | nemesis {} | {} nodes | reads {} | workloads {} | out {}",
        args.seed,
        args.harness,
        args.duration,
        if kinds.is_empty() { "none".to_string() } else { kinds.join(",") },
        args.nodes,
        reads.name(),
        workloads.join(","),
        dir.display()
    );

    let server_args = vec![
        "--resp-consistency".to_string(),
        reads.name().to_string(),
        // Snapshots and log compaction happen during the run, not only after hours.
        "--snapshot-every".to_string(),
        "500".to_string(),
    ];
    let mut cluster: Box<dyn Harness> = match args.harness.as_str() {
        "sentinel" => {
            let repo = std::env::current_dir()?;
            let timeouts = harness::sentinel::Timeouts {
                down_after_ms: args.sentinel_down_after_ms,
                failover_timeout_ms: args.sentinel_failover_timeout_ms,
            };
            Box::new(harness::sentinel::SentinelCluster::new(
                &repo, &dir, timeouts,
            )?)
        }
        "docker" => {
            anyhow::ensure!(
                args.nodes == 3,
                "the docker harness runs deploy/'s three nodes"
            );
            let repo = std::env::current_dir()?;
            Box::new(harness::docker::DockerCluster::new(
                &repo,
                &dir,
                reads.name(),
            )?)
        }
        _ => {
            let cluster = harness::local::LocalCluster::new(
                args.binary.clone(),
                &dir,
                args.nodes,
                server_args,
            );
            Box::new(match &args.upgrade_from {
                Some(earlier) => {
                    println!(
                        "upgrade: the nodes start on {} and move to {}",
                        earlier.display(),
                        args.binary.display()
                    );
                    cluster.upgrading_from(earlier.clone())
                }
                None => cluster,
            })
        }
    };
    let cluster = cluster.as_mut();
    println!(
        "cluster: {} harness, node logs in {}",
        cluster.name(),
        dir.display()
    );
    for id in cluster.ids() {
        cluster.start(id)?;
    }
    if !cluster.speaks_grpc() {
        println!(
            "sentinel: down-after-milliseconds {}, failover-timeout {}",
            args.sentinel_down_after_ms, args.sentinel_failover_timeout_ms
        );
    }
    harness::wait_healthy(cluster, Duration::from_secs(60)).await?;

    let history = History::new(Instant::now());
    let mut rng = Rng::new(args.seed);
    let stop_us = args.duration * 1_000_000;
    let mut clients = workload::spawn(&workloads, cluster, &history, &mut rng, stop_us, reads);
    let mut log = |line: &str| println!("{line}");
    let upgrade = args.upgrade_from.is_some();
    let faults = nemesis::run(
        cluster, &kinds, &mut rng, &history, stop_us, upgrade, &mut log,
    )
    .await?;
    while clients.join_next().await.is_some() {}
    nemesis::heal(cluster).await?;
    harness::wait_healthy(cluster, Duration::from_secs(60)).await?;
    let finals = workload::final_reads(cluster, &history).await?;

    let ops = history.ops();
    let report = report::Report::build(&ops, &faults, &finals, reads, args.seed);
    report.print();
    report.write(&dir, &ops)?;
    println!("{}", report.result_line());
    Ok(report.holds())
}
