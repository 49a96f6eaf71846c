//! `conclave dev`: a local cluster of child `conclave server` processes on embedded defaults.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use conclave_client::Client;
use tokio::process::{Child, Command};

#[derive(Args, Debug)]
pub struct DevArgs {
    /// How many nodes to run.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Where the nodes keep their data (one sub-directory per node). Reused across runs.
    #[arg(long, default_value = "conclave-dev-data")]
    data_dir: PathBuf,
    /// Node N listens on 127.0.0.1:(base-port + N - 1).
    #[arg(long, default_value_t = 7001)]
    base_port: u16,
    /// Node N serves the Redis protocol on 127.0.0.1:(resp-base-port + N - 1); 0 turns it off.
    #[arg(long, default_value_t = 6381)]
    resp_base_port: u16,
    /// Node N serves Prometheus metrics on 127.0.0.1:(metrics-base-port + N - 1)/metrics; 0
    /// turns them off.
    #[arg(long, default_value_t = 9101)]
    metrics_base_port: u16,
    /// Run the cluster over TLS: a CA and node certificates are made in DATA_DIR/tls the
    /// first time (clients trust DATA_DIR/tls/ca.pem).
    #[arg(long)]
    tls: bool,
}

pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    if args.nodes == 0 || args.nodes > 9 {
        bail!("--nodes must be between 1 and 9");
    }
    let endpoints: Vec<String> = (0..args.nodes)
        .map(|i| format!("127.0.0.1:{}", u64::from(args.base_port) + i))
        .collect();
    let initial_cluster = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{}={e}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let resp_endpoints: Vec<Option<String>> = (0..args.nodes)
        .map(|i| {
            (args.resp_base_port != 0)
                .then(|| format!("127.0.0.1:{}", u64::from(args.resp_base_port) + i))
        })
        .collect();
    let metrics_endpoints: Vec<Option<String>> = (0..args.nodes)
        .map(|i| {
            (args.metrics_base_port != 0)
                .then(|| format!("127.0.0.1:{}", u64::from(args.metrics_base_port) + i))
        })
        .collect();
    let tls_dir = args.data_dir.join("tls");
    if args.tls {
        crate::certs::ensure_cluster_certs(&tls_dir, args.nodes, None)?;
    }
    let exe = std::env::current_exe().context("locating the conclave binary")?;
    let mut children: Vec<Child> = Vec::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let id = i + 1;
        let data_dir = args.data_dir.join(format!("node{id}"));
        let mut command = Command::new(&exe);
        // Embedded defaults: a setting in this shell's environment (CONCLAVE_METRICS, say) would
        // apply to every node alike. Only the log format is passed on.
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if key_text.starts_with("CONCLAVE_") && key_text != "CONCLAVE_LOG_FORMAT" {
                command.env_remove(&key);
            }
        }
        command
            .arg("server")
            .args(["--id", &id.to_string()])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen", endpoint])
            .args(["--initial-cluster", &initial_cluster]);
        if let Some(resp) = &resp_endpoints[i] {
            command.args(["--resp", resp]);
        }
        if let Some(metrics) = &metrics_endpoints[i] {
            command.args(["--metrics", metrics]);
        }
        if args.tls {
            command
                .arg("--tls-cert")
                .arg(tls_dir.join(format!("n{id}.pem")))
                .arg("--tls-key")
                .arg(tls_dir.join(format!("n{id}-key.pem")))
                .arg("--tls-ca")
                .arg(tls_dir.join("ca.pem"));
        }
        let child = command
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting node {id}"))?;
        children.push(child);
    }

    let tls = if args.tls {
        let ca = std::fs::read(tls_dir.join("ca.pem")).context("reading the dev CA")?;
        Some(
            conclave_client::ClientTlsConfig::new()
                .ca_certificate(conclave_client::Certificate::from_pem(ca)),
        )
    } else {
        None
    };
    let client = Client::connect_with(
        &endpoints,
        conclave_client::ConnectOptions {
            tls,
            credentials: None,
        },
    )
    .await?;
    let started = Instant::now();
    let leader = loop {
        if let Ok(status) = client.status().await {
            if let Some(leader) = status.leader {
                break leader;
            }
        }
        if started.elapsed() > Duration::from_secs(15) {
            bail!("no leader was elected within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "conclave dev cluster: {} nodes, leader is node {leader}",
        args.nodes
    );
    for (i, endpoint) in endpoints.iter().enumerate() {
        let resp = resp_endpoints[i]
            .as_deref()
            .map_or(String::new(), |r| format!("  resp {r}"));
        let metrics = metrics_endpoints[i]
            .as_deref()
            .map_or(String::new(), |m| format!("  metrics http://{m}/metrics"));
        println!(
            "  node {}: grpc {endpoint}{resp}{metrics}  data {}",
            i + 1,
            args.data_dir.join(format!("node{}", i + 1)).display()
        );
    }
    let tls_flag = if args.tls {
        format!(" --tls-ca {}", tls_dir.join("ca.pem").display())
    } else {
        String::new()
    };
    println!(
        "try: conclave ctl --endpoint {}{tls_flag} status   (Ctrl-C stops the cluster)",
        endpoints[0]
    );
    if let Some(resp) = &resp_endpoints[0] {
        let (host, port) = resp.rsplit_once(':').unwrap_or((resp, ""));
        println!(
            "     redis-cli -h {host} -p {port} ping   (any Redis client works on the resp ports)"
        );
    }

    // A node that dies (say, killed to watch a failover) is reported; the others keep running
    // until Ctrl-C.
    let mut reported = vec![false; children.len()];
    loop {
        tokio::select! {
            _ = crate::server::shutdown_signal() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        for (i, child) in children.iter_mut().enumerate() {
            if let (false, Ok(Some(status))) = (reported[i], child.try_wait()) {
                reported[i] = true;
                println!("node {} exited ({status}); the others keep running", i + 1);
            }
        }
        if reported.iter().all(|r| *r) {
            println!("every node has exited");
            break;
        }
    }
    for child in &mut children {
        if let Some(pid) = child.id() {
            // SIGTERM lets each node shut down cleanly.
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
    }
    for (i, child) in children.iter_mut().enumerate() {
        match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
            Ok(Ok(status)) if !reported[i] => println!("node {} stopped ({status})", i + 1),
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill().await;
                println!("node {} did not stop within 5 s and was killed", i + 1);
            }
        }
    }
    println!("conclave dev cluster stopped");
    Ok(ExitCode::SUCCESS)
}
