//! `conclave bench`: concurrent writers against a running cluster, printing throughput and
//! latency percentiles. A program that prints figures; nothing asserts on them.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use conclave_client::Client;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Endpoints; writer i uses endpoint i modulo their count.
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
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
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
        let pct = |p: f64| -> f64 {
            if latencies.is_empty() {
                return 0.0;
            }
            let i = ((latencies.len() as f64 * p) as usize).min(latencies.len() - 1);
            latencies[i].as_secs_f64() * 1000.0
        };
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
