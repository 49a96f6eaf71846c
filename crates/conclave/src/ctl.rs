//! `conclave ctl`: status, keys, watch, pub/sub, room state and membership from the command line.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use conclave_client::{
    v1, Certificate, Client, ClientTlsConfig, ConnectOptions, Consistency, Credentials, Identity,
    WatchTarget,
};

#[derive(Args, Debug)]
pub struct CtlArgs {
    /// The node to talk to (HOST:PORT), or several separated by commas: the first is used while
    /// it answers, the others when it does not.
    #[arg(long, default_value = "127.0.0.1:7001", value_delimiter = ',')]
    endpoint: Vec<String>,
    /// The cluster's CA certificate (PEM): talk to the nodes over TLS.
    #[arg(long, env = "CONCLAVE_CTL_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM) to present, with --tls-key (mutual TLS).
    #[arg(long, env = "CONCLAVE_CTL_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<std::path::PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, env = "CONCLAVE_CTL_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// A bearer token of the node's users file (better from the environment: a flag shows in
    /// `ps`).
    #[arg(
        long,
        env = "CONCLAVE_TOKEN",
        hide_env_values = true,
        conflicts_with = "user"
    )]
    token: Option<String>,
    /// Authenticate as this user, with --password.
    #[arg(long, env = "CONCLAVE_USER", requires = "password")]
    user: Option<String>,
    /// The password of --user (better from the environment: a flag shows in `ps`).
    #[arg(
        long,
        env = "CONCLAVE_PASSWORD",
        hide_env_values = true,
        requires = "user"
    )]
    password: Option<String>,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand, Debug)]
enum CtlCommand {
    /// Print the node's view of the cluster as JSON; with --cluster, every member's own view.
    Status {
        /// Ask every member the node lists and print one row each (role, term, applied, lag
        /// behind the most advanced member, health).
        #[arg(long)]
        cluster: bool,
        /// With --cluster: print JSON instead of a table.
        #[arg(long, requires = "cluster")]
        json: bool,
    },
    /// Exit 0 if the node is ready (a health check), else 1 with the reason. Ready: a leader
    /// confirmed its leadership with a quorum for this node's read, and this node has applied
    /// everything that leader had committed (after a restart or a replacement: it has caught
    /// up). A node that merely remembers a leader from before its restart, or an old leader cut
    /// off from the others, is not ready.
    Ready {
        /// Keep asking for up to this many seconds (default: ask once).
        #[arg(long, default_value_t = 0)]
        wait_s: u64,
    },
    /// Set KEY to VALUE.
    Put {
        key: String,
        value: String,
        /// Expire the key after this many milliseconds.
        #[arg(long)]
        ttl_ms: Option<u64>,
    },
    /// Print KEY's value; exit 1 if it is absent.
    Get {
        key: String,
        #[arg(long, value_enum, default_value_t = Level::Session)]
        consistency: Level,
    },
    /// Delete keys; prints how many existed.
    Del {
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Print changes to KEY (or every key starting with it) as JSON lines until interrupted.
    Watch {
        key: String,
        /// Watch every key starting with KEY.
        #[arg(long)]
        prefix: bool,
        /// Start at this revision (default: now).
        #[arg(long)]
        from: Option<u64>,
    },
    /// Publish MESSAGE on CHANNEL; prints the receivers on the node.
    Publish { channel: String, message: String },
    /// Print messages on CHANNELs (glob patterns with --pattern) until interrupted.
    Subscribe {
        #[arg(required = true)]
        channels: Vec<String>,
        #[arg(long)]
        pattern: bool,
    },
    /// List rooms as JSON.
    Rooms,
    /// List registered media nodes as JSON (draining ones included).
    MediaNodes,
    /// Change or list the membership.
    Members {
        #[command(subcommand)]
        command: MembersCommand,
    },
    /// Backups: save one from the node in use, or check one.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Move the leadership (before maintenance on the leader's host): to voter --to, or to any
    /// voter holding the leader's whole log. Writes are held while it moves, not failed. Prints
    /// the leader afterwards and its term as JSON.
    TransferLeader {
        #[arg(long)]
        to: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
enum SnapshotCommand {
    /// Save a backup of the node's replica at the revision it has applied to FILE (written
    /// whole or not at all), checked, with its revision, key count and SHA-256. Needs admin.
    Save { file: std::path::PathBuf },
    /// Check the backup FILE and describe it; exits 2 if it is damaged or not a backup.
    Status { file: std::path::PathBuf },
}

#[derive(Subcommand, Debug)]
enum MembersCommand {
    /// Add node ID at HOST:PORT: as a learner, then promoted to voter once caught up. Adding a
    /// member again changes nothing.
    Add {
        id: u64,
        address: String,
        /// Leave it a learner.
        #[arg(long)]
        learner: bool,
        /// Retry while the cluster cannot take the change (no leader, another change being
        /// committed, the node still catching up) for up to this many seconds.
        #[arg(long, default_value_t = 60)]
        wait_s: u64,
    },
    /// Promote learner ID to voter.
    Promote { id: u64 },
    /// Remove node ID.
    Remove {
        id: u64,
        /// Retry while the cluster cannot take the change for up to this many seconds.
        #[arg(long, default_value_t = 60)]
        wait_s: u64,
    },
    /// List members as JSON.
    List,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Level {
    Local,
    Session,
    Linearizable,
}

fn members_json(members: &[v1::Member]) -> serde_json::Value {
    members
        .iter()
        .map(|m| serde_json::json!({"id": m.id, "address": m.address, "voter": m.voter}))
        .collect()
}

fn print_membership(response: v1::MembershipResponse) {
    let json = serde_json::json!({
        "revision": response.revision,
        "members": members_json(&response.members),
    });
    println!("{json}");
}

/// One member's row in `ctl status --cluster`.
struct MemberRow {
    member: v1::Member,
    /// The member's own status; None if it did not answer.
    status: Option<v1::StatusResponse>,
    /// Entries it has applied fewer than the most advanced member that answered.
    lag: Option<u64>,
    /// "ok", "unreachable", "no leader" or "behind".
    health: &'static str,
}

/// A member counts as behind when it has applied this many entries fewer than the most advanced.
const BEHIND_BY: u64 = 1000;

impl MemberRow {
    fn json(&self) -> serde_json::Value {
        let s = self.status.as_ref();
        serde_json::json!({
            "id": self.member.id,
            "address": self.member.address,
            "voter": self.member.voter,
            "role": s.map(|s| s.role.clone()),
            "term": s.map(|s| s.term),
            "leader": s.and_then(|s| s.leader),
            "applied": s.map(|s| s.applied),
            "committed": s.map(|s| s.committed),
            "lag": self.lag,
            "health": self.health,
        })
    }
}

/// Asks every member for its own status, each with a deadline.
async fn cluster_status(members: &[v1::Member], connect: ConnectOptions) -> Vec<MemberRow> {
    let asked = members.iter().map(|member| {
        let connect = connect.clone();
        async move {
            let status = async {
                let client = Client::connect_with([member.address.as_str()], connect)
                    .await
                    .ok()?;
                tokio::time::timeout(PROBE_TIMEOUT, client.status())
                    .await
                    .ok()?
                    .ok()
            }
            .await;
            (member.clone(), status)
        }
    });
    let answers = futures::future::join_all(asked).await;
    let newest = answers
        .iter()
        .filter_map(|(_, s)| s.as_ref().map(|s| s.applied))
        .max()
        .unwrap_or(0);
    answers
        .into_iter()
        .map(|(member, status)| {
            let lag = status.as_ref().map(|s| newest.saturating_sub(s.applied));
            let health = match (&status, lag) {
                (None, _) => "unreachable",
                (Some(s), _) if s.leader.is_none() => "no leader",
                (_, Some(lag)) if lag >= BEHIND_BY => "behind",
                _ => "ok",
            };
            MemberRow {
                member,
                status,
                lag,
                health,
            }
        })
        .collect()
}

fn print_cluster_table(rows: &[MemberRow]) {
    println!(
        "{:>4}  {:<21}  {:<9}  {:>6}  {:>6}  {:>10}  {:>8}  HEALTH",
        "ID", "ADDRESS", "ROLE", "TERM", "LEADER", "APPLIED", "LAG"
    );
    for row in rows {
        let s = row.status.as_ref();
        let dash = || "-".to_string();
        println!(
            "{:>4}  {:<21}  {:<9}  {:>6}  {:>6}  {:>10}  {:>8}  {}",
            row.member.id,
            row.member.address,
            s.map_or_else(dash, |s| s.role.clone()),
            s.map_or_else(dash, |s| s.term.to_string()),
            s.and_then(|s| s.leader)
                .map_or_else(dash, |l| l.to_string()),
            s.map_or_else(dash, |s| s.applied.to_string()),
            row.lag.map_or_else(dash, |l| l.to_string()),
            row.health,
        );
    }
}

/// How long one readiness probe may take: a health check must answer, not hang.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Why the node is not ready yet, or a line saying that it is.
async fn readiness(client: &Client) -> Result<String, String> {
    let status = tokio::time::timeout(PROBE_TIMEOUT, client.status())
        .await
        .map_err(|_| "the node did not answer in time".to_string())?
        .map_err(|e| e.to_string())?;
    let Some(leader) = status.leader else {
        return Err(format!("node {} knows no leader", status.id));
    };
    // A linearizable read: the leader confirms it still leads with a quorum, and this node
    // waits until it has applied what the leader had committed.
    tokio::time::timeout(
        PROBE_TIMEOUT,
        client.get_with("conclave:ready", Consistency::Linearizable),
    )
    .await
    .map_err(|_| {
        format!(
            "node {}: leader {leader} did not confirm, or this node has not caught up, in time",
            status.id
        )
    })?
    .map_err(|e| e.to_string())?;
    let applied = tokio::time::timeout(PROBE_TIMEOUT, client.status())
        .await
        .map_err(|_| "the node did not answer in time".to_string())?
        .map_err(|e| e.to_string())?
        .applied;
    Ok(format!(
        "ready: node {} ({}), leader {leader}, applied {applied}",
        status.id, status.role
    ))
}

/// Runs a membership change, retrying what the cluster answers UNAVAILABLE (no leader yet,
/// another change still being committed, the new node still catching up) until `wait` has
/// passed.
async fn change_membership<F, Fut>(wait: Duration, mut change: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<v1::MembershipResponse, conclave_client::Error>>,
{
    let deadline = Instant::now() + wait;
    loop {
        match change().await {
            Ok(response) => {
                print_membership(response);
                return Ok(());
            }
            Err(e) if e.code() == Some(tonic::Code::Unavailable) && Instant::now() < deadline => {
                eprintln!("retrying: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// How the flags ask to connect: TLS, credentials.
fn connect_options(args: &CtlArgs) -> anyhow::Result<ConnectOptions> {
    let credentials = match (&args.token, &args.user, &args.password) {
        (Some(token), _, _) => Some(Credentials::Token(token.clone())),
        (None, Some(user), Some(password)) => Some(Credentials::Password {
            user: user.clone(),
            password: password.clone(),
        }),
        _ => None,
    };
    Ok(ConnectOptions {
        tls: client_tls(args)?,
        credentials,
    })
}

/// The TLS settings `--tls-*` ask for, if any.
fn client_tls(args: &CtlArgs) -> anyhow::Result<Option<ClientTlsConfig>> {
    let Some(ca) = &args.tls_ca else {
        return Ok(None);
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(tls))
}

pub async fn run(args: CtlArgs) -> anyhow::Result<ExitCode> {
    if let CtlCommand::Snapshot {
        command: SnapshotCommand::Status { file },
    } = &args.command
    {
        // Offline: no node is asked.
        return Ok(match crate::backup::status(file) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("{error:#}");
                ExitCode::from(2)
            }
        });
    }
    let connect = connect_options(&args)?;
    let client = Client::connect_with(&args.endpoint, connect.clone()).await?;
    match args.command {
        CtlCommand::Ready { wait_s } => {
            let deadline = Instant::now() + Duration::from_secs(wait_s);
            loop {
                match readiness(&client).await {
                    Ok(line) => {
                        println!("{line}");
                        break;
                    }
                    Err(reason) if Instant::now() >= deadline => {
                        eprintln!("not ready: {reason}");
                        return Ok(ExitCode::from(1));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        }
        CtlCommand::Status {
            cluster: true,
            json,
        } => {
            let s = client.status().await?;
            let rows = cluster_status(&s.members, connect.clone()).await;
            if json {
                println!(
                    "{}",
                    serde_json::Value::Array(rows.iter().map(MemberRow::json).collect())
                );
            } else {
                print_cluster_table(&rows);
            }
            if rows.iter().any(|row| row.health != "ok") {
                return Ok(ExitCode::from(1));
            }
        }
        CtlCommand::Status { cluster: false, .. } => {
            let s = client.status().await?;
            let json = serde_json::json!({
                "id": s.id,
                "leader": s.leader,
                "term": s.term,
                "applied": s.applied,
                "last_log_index": s.last_log_index,
                "role": s.role,
                "cluster_id": s.cluster_id,
                "snapshot_index": s.snapshot_index,
                "purged_index": s.purged_index,
                "keys": s.keys,
                "log_entries_appended": s.log_entries_appended,
                "log_flushes": s.log_flushes,
                "committed": s.committed,
                "members": members_json(&s.members),
            });
            println!("{json}");
        }
        CtlCommand::Put { key, value, ttl_ms } => {
            let response = client
                .set_with(v1::SetRequest {
                    key: key.into_bytes(),
                    value: value.into_bytes(),
                    ttl_ms: ttl_ms.unwrap_or(0),
                    ..Default::default()
                })
                .await?;
            println!("OK {}", response.header.map_or(0, |h| h.revision));
        }
        CtlCommand::Get { key, consistency } => {
            let level = match consistency {
                Level::Local => Consistency::Local,
                Level::Session => Consistency::Session,
                Level::Linearizable => Consistency::Linearizable,
            };
            match client.get_with(key, level).await? {
                Some(kv) => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&kv.value)?;
                    out.write_all(b"\n")?;
                }
                None => return Ok(ExitCode::from(1)),
            }
        }
        CtlCommand::Snapshot {
            command: SnapshotCommand::Save { file },
        } => crate::backup::save(&client, &file).await?,
        CtlCommand::Snapshot {
            command: SnapshotCommand::Status { .. },
        } => unreachable!("answered above, offline"),
        CtlCommand::Del { keys } => {
            println!("{}", client.delete(&keys).await?);
        }
        CtlCommand::Watch { key, prefix, from } => {
            let target = if prefix {
                WatchTarget::Prefix(key.into_bytes())
            } else {
                WatchTarget::Key(key.into_bytes())
            };
            let mut watcher = client.watch(target, from);
            loop {
                let batch = watcher.next().await?;
                for e in batch.events {
                    let kind = match v1::EventType::try_from(e.r#type) {
                        Ok(v1::EventType::EventDelete) => "delete",
                        _ => "put",
                    };
                    let json = serde_json::json!({
                        "revision": e.revision,
                        "type": kind,
                        "key": String::from_utf8_lossy(&e.key),
                        "field": e.field.as_deref().map(String::from_utf8_lossy),
                        "value": String::from_utf8_lossy(&e.value),
                    });
                    println!("{json}");
                }
            }
        }
        CtlCommand::Publish { channel, message } => {
            println!("{}", client.publish(channel, message).await?);
        }
        CtlCommand::Subscribe { channels, pattern } => {
            let mut subscriber = client.subscriber();
            if pattern {
                subscriber.psubscribe(&channels).await?;
            } else {
                subscriber.subscribe(&channels).await?;
            }
            while let Some(message) = subscriber.next().await {
                let message = message?;
                let json = serde_json::json!({
                    "channel": String::from_utf8_lossy(&message.channel),
                    "message": String::from_utf8_lossy(&message.payload),
                    "origin_node": message.origin_node,
                    "revision": message.revision,
                });
                println!("{json}");
            }
        }
        CtlCommand::Rooms => {
            let rooms: Vec<serde_json::Value> = client
                .rooms()
                .await?
                .into_iter()
                .map(|r| {
                    serde_json::json!({
                        "name": r.name,
                        "node": r.node_id,
                        "metadata": String::from_utf8_lossy(&r.metadata),
                    })
                })
                .collect();
            println!("{}", serde_json::Value::from(rooms));
        }
        CtlCommand::MediaNodes => {
            let nodes: Vec<serde_json::Value> = client
                .media_nodes(true)
                .await?
                .into_iter()
                .map(|n| {
                    serde_json::json!({
                        "id": n.id,
                        "address": n.address,
                        "draining": n.draining,
                        "lease": n.lease,
                        "rooms": n.rooms,
                        "stats": String::from_utf8_lossy(&n.stats),
                    })
                })
                .collect();
            println!("{}", serde_json::Value::from(nodes));
        }
        CtlCommand::TransferLeader { to } => {
            let (leader, term) = client.transfer_leadership(to).await?;
            println!("{}", serde_json::json!({ "leader": leader, "term": term }));
        }
        CtlCommand::Members { command } => match command {
            MembersCommand::Add {
                id,
                address,
                learner,
                wait_s,
            } => {
                change_membership(Duration::from_secs(wait_s), || {
                    client.add_member(id, &address, learner)
                })
                .await?;
            }
            MembersCommand::Promote { id } => {
                print_membership(client.promote_member(id).await?);
            }
            MembersCommand::Remove { id, wait_s } => {
                change_membership(Duration::from_secs(wait_s), || client.remove_member(id)).await?;
            }
            MembersCommand::List => {
                let s = client.status().await?;
                println!("{}", members_json(&s.members));
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}
