//! A media-node simulator: what a media server does with Conclave, as a runnable program.
//!
//! It registers itself as a media node on a lease it keeps alive, creates rooms and has them
//! assigned, joins participants hosted here, watches participant changes, publishes a keep-alive
//! message on its own channel and updates its load figures. Kill it with `kill -9` and its
//! registration and participants disappear once its lease expires.
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
use conclave_client::{v1, Client, WatchTarget};

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
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let client = Client::connect(&args.endpoints).await?;
    let mut node = client
        .register_media_node(
            &args.id,
            &format!("media-{}.local:7880", args.id),
            b"load=0",
            Duration::from_millis(args.ttl_ms),
        )
        .await?;
    println!("registered {} lease={}", args.id, node.lease());

    // Watch every participant change in the cluster.
    let mut watcher = client.watch(
        WatchTarget::Prefix(b"conclave:participants:".to_vec()),
        None,
    );
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
                Err(e) => {
                    println!("watch-error {e}");
                    return;
                }
            }
        }
    });

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

    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(args.tick_ms));
    let mut beat = 0u64;
    loop {
        tick.tick().await;
        if args.run_for_s > 0 && started.elapsed() >= Duration::from_secs(args.run_for_s) {
            break;
        }
        beat += 1;
        client
            .publish(&channel, format!("keepalive {beat}"))
            .await?;
        node.update_stats(format!("load={beat}")).await?;
    }
    let removed = node.shutdown().await?;
    println!("unregistered {} removed={removed}", args.id);
    Ok(())
}
