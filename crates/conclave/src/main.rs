//! The `conclave` binary: one node (`server`), a local cluster (`dev`), an admin client (`ctl`)
//! and a small load program (`bench`).
//!
//! It only parses flags and ties the crates together: the node lives in `conclave-consensus`,
//! its client-facing services in `conclave-api`, the client in `conclave-client`.

mod backup;
mod bench;
mod certs;
mod config;
mod ctl;
mod dev;
mod guard;
mod memory;
mod metrics;
mod refusal;
mod server;
mod tls;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "conclave",
    version,
    about = "A Raft-replicated room-state store"
)]
struct Cli {
    /// How log lines are written to stderr: text, or json (one object per line).
    #[arg(
        long,
        global = true,
        env = "CONCLAVE_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: warnings, and conclave's own info), in
/// colour only on a terminal, without openraft's per-RPC reports of an unreachable peer.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "warn,conclave=info".into())
    };
    let logs = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry();
    match format {
        LogFormat::Text => registry
            .with(logs.with_filter(filter()).with_filter(PeerNoise))
            .init(),
        LogFormat::Json => registry
            .with(
                logs.json()
                    .flatten_event(true)
                    .with_filter(filter())
                    .with_filter(PeerNoise),
            )
            .init(),
    }
}

/// Leaves out openraft's warnings and errors about an unreachable peer, and its warning about
/// a vote response that arrived after the vote moved on (a normal race of an election).
/// openraft reports an unreachable peer once per RPC (a heartbeat every 50 ms, a vote request
/// per election), also while a cluster starts in any order, and again each time its
/// replication backs off; the node's network layer logs a peer going unreachable, and coming
/// back, once each (`consensus/src/network.rs`).
struct PeerNoise;

impl<S> tracing_subscriber::layer::Filter<S> for PeerNoise {
    fn enabled(
        &self,
        _: &tracing::Metadata<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        true
    }

    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        let meta = event.metadata();
        // Levels compare by verbosity: INFO and below are not this filter's business.
        if !meta.target().starts_with("openraft") || *meta.level() > tracing::Level::WARN {
            return true;
        }
        let mut seen = UnreachablePeer(false);
        event.record(&mut seen);
        !seen.0
    }
}

/// Whether an event's fields hold one of [`NOISE`].
struct UnreachablePeer(bool);

impl UnreachablePeer {
    fn check(&mut self, text: &str) {
        self.0 |= NOISE.iter().any(|noise| text.contains(noise));
    }
}

impl tracing::field::Visit for UnreachablePeer {
    fn record_str(&mut self, _: &tracing::field::Field, value: &str) {
        self.check(value);
    }

    fn record_debug(&mut self, _: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if !self.0 {
            self.check(&format!("{value:?}"));
        }
    }
}

/// How openraft 0.9.25 words the reports [`PeerNoise`] leaves out: an `RPCError::Unreachable`,
/// replication backing off from an unreachable peer, a late vote response, and a leader's
/// replication ending because another candidate of the same race won (two nodes of a forming
/// cluster both elected in term 1: the higher id wins, as openraft orders leaders).
const NOISE: &[&str] = &[
    "Unreachable node",
    "backoff mode: drain events",
    "will be ignored because vote changed",
    "seen a higher vote",
];

#[derive(Subcommand)]
enum Command {
    /// Run one node.
    Server(Box<server::ServerArgs>),
    /// Run a local cluster on embedded defaults until Ctrl-C.
    Dev(dev::DevArgs),
    /// Talk to a running node.
    Ctl(ctl::CtlArgs),
    /// Measure write throughput and latency against a running cluster.
    Bench(bench::BenchArgs),
    /// Create a cluster CA and the node and client certificates it signs (for TLS).
    Certs(certs::CertsArgs),
    /// Print the table of `conclave server`'s settings (for docs/configuration.md).
    #[command(hide = true)]
    ConfigReference,
}

fn main() -> std::process::ExitCode {
    metrics::process::note_start();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Err(error) = config::apply_file(&argv) {
        // Before logging is set up (the file may set how it logs): plain text.
        eprintln!("error: {error}");
        return std::process::ExitCode::from(2);
    }
    let matches = Cli::command().get_matches_from(&argv);
    config::remember(&matches);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let log_format = cli.log_format;
    init_logging(log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server::run(*args).await,
            Command::Dev(args) => dev::run(args).await,
            Command::Ctl(args) => ctl::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Certs(args) => certs::run(args),
            Command::ConfigReference => {
                print!("{}", config::reference());
                Ok(std::process::ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            match log_format {
                LogFormat::Text => eprintln!("error: {e:#}"),
                LogFormat::Json => tracing::error!(error = %format!("{e:#}"), "exiting"),
            }
            std::process::ExitCode::from(2)
        }
    }
}
