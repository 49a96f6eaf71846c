//! A media-node simulator: what a media server does with Conclave, as a runnable program.
//!
//! It registers itself as a media node on a lease it keeps alive, creates rooms and has them
//! assigned, joins participants hosted here, watches participant changes, publishes a keep-alive
//! message on its own channel and updates its load figures. Kill it with `kill -9` and its
//! registration and participants disappear once its lease expires; SIGTERM unregisters it at
//! once. If its lease ends while it runs (its node was away for longer than the TTL), it
//! registers and hosts its rooms again.
//!
//! ```text
//! cargo run --release -- dev                       # a local 3-node cluster
//! cargo run --example media_node -- --id m1 --endpoints 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
//! ```
//!
//! Prints one line per step (`registered`, `room`, `joined`, `ready`, then `event` and
//! `message` lines), so a script or a test can follow it.

use std::time::Duration;

use clap::Parser;
use conclave_client::{
    v1, Certificate, Client, ClientTlsConfig, ConnectOptions, MediaNodeRegistration, WatchTarget,
};

#[derive(Parser, Debug)]
struct Args {
    /// This media node's id.
    #[arg(long)]
    id: String,
    /// Conclave endpoints, the local node first.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Rooms to create and host.
    #[arg(long, default_value_t = 2)]
    rooms: usize,
    /// Participants per room.
    #[arg(long, default_value_t = 3)]
    participants: usize,
    /// The lease's time to live: how long the node's state outlives this process.
    #[arg(long, default_value_t = 2000)]
    ttl_ms: u64,
    /// How often to publish a keep-alive message and update the load figures.
    #[arg(long, default_value_t = 1000)]
    tick_ms: u64,
    /// Stop (and unregister) after this many seconds; 0 runs until killed.
    #[arg(long, default_value_t = 0)]
    run_for_s: u64,
    /// The cluster's CA certificate (PEM): talk to the nodes over TLS.
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let tls = match &args.tls_ca {
        Some(ca) => {
            let pem = std::fs::read(ca).map_err(|e| format!("reading {}: {e}", ca.display()))?;
            Some(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
        }
        None => None,
    };
    let options = ConnectOptions {
        tls,
        credentials: None,
    };
    let client = Client::connect_with(&args.endpoints, options).await?;
    let mut node = register_and_host(&client, &args).await?;

    // Watch every participant change in the cluster.
    let mut watcher = client.watch(
        WatchTarget::Prefix(b"conclave:participants:".to_vec()),
        None,
    );
    let watcher_client = client.clone();
    tokio::spawn(async move {
        loop {
            match watcher.next().await {
                Ok(batch) => {
                    for event in batch.events {
                        let kind = if event.r#type == v1::EventType::EventDelete as i32 {
                            "delete"
                        } else {
                            "put"
                        };
                        println!(
                            "event {kind} {} {} rev={}",
                            String::from_utf8_lossy(&event.key),
                            String::from_utf8_lossy(event.field.as_deref().unwrap_or_default()),
                            event.revision
                        );
                    }
                }
                Err(conclave_client::Error::Compacted { compacted }) => {
                    // Fell too far behind (its node was away for long): go on from now.
                    println!("watch-error compacted={compacted}, resuming from now");
                    watcher = watcher_client.watch(
                        WatchTarget::Prefix(b"conclave:participants:".to_vec()),
                        None,
                    );
                }
                Err(e) => {
                    // Its node is away (a restart): the watcher resumes where it was.
                    println!("watch-error {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });

    // Hear our own keep-alives, as LiveKit nodes do.
    let mut subscriber = client.subscriber();
    let channel = format!("node:{}", args.id);
    subscriber.subscribe(&[&channel]).await?;
    tokio::spawn(async move {
        while let Some(Ok(message)) = subscriber.next().await {
            println!(
                "message {} {}",
                String::from_utf8_lossy(&message.channel),
                String::from_utf8_lossy(&message.payload)
            );
        }
    });

    // Runs until --run-for-s has passed or SIGTERM/Ctrl-C; either way it unregisters. A failed
    // step (its node restarting for longer than the client's failover budget) is reported and
    // the next tick tries again.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(args.tick_ms));
    let mut beat = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = node.lost() => {
                // Away from its store for longer than the lease: its rooms' participants are
                // gone. Come back as a media server does: register and host again.
                println!("lease-lost {}; registering again", node.lease());
                match register_and_host(&client, &args).await {
                    Ok(again) => node = again,
                    Err(e) => {
                        println!("register-error {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                continue;
            }
        }
        if args.run_for_s > 0 && started.elapsed() >= Duration::from_secs(args.run_for_s) {
            break;
        }
        beat += 1;
        if let Err(e) = client.publish(&channel, format!("keepalive {beat}")).await {
            println!("tick-error publish: {e}");
            continue;
        }
        if let Err(e) = node.update_stats(format!("load={beat}")).await {
            println!("tick-error stats: {e}");
        }
    }
    let removed = node.shutdown().await?;
    println!("unregistered {} removed={removed}", args.id);
    Ok(())
}

/// Registers this media node on a fresh lease, then creates its rooms, has them assigned here
/// and joins their participants (an existing room or assignment is kept).
async fn register_and_host(
    client: &Client,
    args: &Args,
) -> Result<MediaNodeRegistration, conclave_client::Error> {
    let node = client
        .register_media_node(
            &args.id,
            &format!("media-{}.local:7880", args.id),
            b"load=0",
            Duration::from_millis(args.ttl_ms),
        )
        .await?;
    println!("registered {} lease={}", args.id, node.lease());
    for r in 0..args.rooms {
        let room = format!("{}-room-{r}", args.id);
        client.create_room(&room, b"{}").await?;
        let assigned = client.assign_room(&room, Some(&args.id)).await?;
        println!("room {room} node={}", assigned.node_id);
        for p in 0..args.participants {
            let identity = format!("{room}-p{p}");
            client.join(&room, &identity, &args.id, b"{}").await?;
            println!("joined {room} {identity}");
        }
    }
    println!("ready");
    Ok(node)
}
