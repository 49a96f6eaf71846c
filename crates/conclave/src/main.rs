//! The `conclave` binary: one node (`server`), a local cluster (`dev`), an admin client (`ctl`)
//! and a small load program (`bench`).
//!
//! It only parses flags and ties the crates together: the node lives in `conclave-consensus`,
//! its client-facing services in `conclave-api`, the client in `conclave-client`.

mod bench;
mod ctl;
mod dev;
mod memory;
mod server;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "conclave",
    version,
    about = "A Raft-replicated room-state store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node.
    Server(server::ServerArgs),
    /// Run a local cluster on embedded defaults until Ctrl-C.
    Dev(dev::DevArgs),
    /// Talk to a running node.
    Ctl(ctl::CtlArgs),
    /// Measure write throughput and latency against a running cluster.
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,conclave=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server::run(args).await,
            Command::Dev(args) => dev::run(args).await,
            Command::Ctl(args) => ctl::run(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
