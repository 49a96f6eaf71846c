//! Answers about the server itself: HELLO's map, INFO, COMMAND, CONFIG GET.

use std::sync::atomic::Ordering;

use crate::protocol::Reply;
use crate::table::{Spec, COMMANDS};
use crate::Shared;

/// The Redis version announced to clients: the command set and reply shapes follow Redis 7.2.
pub(crate) const REDIS_VERSION: &str = "7.2.0";

/// HELLO's reply.
pub(crate) fn hello(client_id: u64, protocol: i64) -> Reply {
    let entry = |k: &str, v: Reply| (Reply::bulk(k), v);
    Reply::Map(vec![
        entry("server", Reply::bulk("redis")),
        entry("version", Reply::bulk(REDIS_VERSION)),
        entry("proto", Reply::Integer(protocol)),
        entry("id", Reply::Integer(client_id as i64)),
        entry("mode", Reply::bulk("standalone")),
        entry("role", Reply::bulk("master")),
        entry("modules", Reply::Array(vec![])),
    ])
}

/// INFO's text for the requested sections (all when none, "all", "default" or "everything").
pub(crate) fn info(shared: &Shared, sections: &[Vec<u8>]) -> String {
    let wanted: Vec<String> = sections
        .iter()
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
        .collect();
    let all = wanted.is_empty()
        || wanted
            .iter()
            .any(|w| matches!(w.as_str(), "all" | "default" | "everything"));
    let status = shared.node.status();
    let stats = shared.hub.stats();
    let mut text = String::new();
    let mut section = |name: &str, lines: Vec<(String, String)>| {
        if all || wanted.iter().any(|w| w == &name.to_ascii_lowercase()) {
            text.push_str(&format!("# {name}\r\n"));
            for (k, v) in lines {
                text.push_str(&format!("{k}:{v}\r\n"));
            }
            text.push_str("\r\n");
        }
    };
    let kv = |k: &str, v: String| (k.to_string(), v);
    section(
        "Server",
        vec![
            kv("redis_version", REDIS_VERSION.into()),
            kv("conclave_version", env!("CARGO_PKG_VERSION").into()),
            kv("redis_mode", "standalone".into()),
            kv("os", std::env::consts::OS.into()),
            kv("arch_bits", "64".into()),
            kv("process_id", std::process::id().to_string()),
            kv("tcp_port", shared.port.to_string()),
            kv(
                "uptime_in_seconds",
                shared.started.elapsed().as_secs().to_string(),
            ),
        ],
    );
    section(
        "Clients",
        vec![
            kv(
                "connected_clients",
                shared.options.metrics.connected().to_string(),
            ),
            kv("maxclients", shared.options.max_clients.to_string()),
        ],
    );
    // Every Conclave node takes writes (forwarding them to the Raft leader), so each presents
    // itself as a master; the Raft role is reported beside it.
    section(
        "Replication",
        vec![
            kv("role", "master".into()),
            kv("connected_slaves", "0".into()),
            kv("conclave_node_id", status.id.to_string()),
            kv("conclave_raft_role", status.role.into()),
            kv(
                "conclave_leader_id",
                status
                    .leader
                    .map_or_else(|| "none".into(), |l| l.to_string()),
            ),
            kv("conclave_term", status.term.to_string()),
            kv("conclave_applied_revision", status.applied.to_string()),
            kv("conclave_members", status.members.len().to_string()),
            kv(
                "conclave_read_consistency",
                format!("{:?}", shared.options.consistency).to_lowercase(),
            ),
        ],
    );
    section(
        "Stats",
        vec![
            kv(
                "total_connections_received",
                shared
                    .options
                    .metrics
                    .connections_received
                    .get()
                    .to_string(),
            ),
            kv(
                "total_commands_processed",
                shared.options.metrics.commands_processed.get().to_string(),
            ),
            kv(
                "conclave_keyspace_walks_waited",
                shared.options.metrics.walks_waited.get().to_string(),
            ),
            kv(
                "pubsub_channels",
                shared.hub.channels(None).len().to_string(),
            ),
            kv("pubsub_patterns", shared.hub.pattern_count().to_string()),
            kv(
                "conclave_pubsub_published",
                stats.published.load(Ordering::Relaxed).to_string(),
            ),
            kv(
                "conclave_pubsub_delivered",
                stats.delivered.load(Ordering::Relaxed).to_string(),
            ),
            kv(
                "conclave_pubsub_slow_disconnects",
                stats.slow_disconnects.load(Ordering::Relaxed).to_string(),
            ),
            kv(
                "conclave_pubsub_unrouted",
                stats.unrouted.load(Ordering::Relaxed).to_string(),
            ),
            kv(
                "conclave_pubsub_dropped_relay",
                stats.dropped_relay.load(Ordering::Relaxed).to_string(),
            ),
            kv(
                "conclave_pubsub_dropped_causal",
                stats.dropped_causal.load(Ordering::Relaxed).to_string(),
            ),
        ],
    );
    let keyspace = if status.keys > 0 {
        vec![kv(
            "db0",
            format!("keys={},expires=0,avg_ttl=0", status.keys),
        )]
    } else {
        vec![]
    };
    section("Keyspace", keyspace);
    text
}

fn command_info(spec: &Spec) -> Reply {
    Reply::Array(vec![
        Reply::bulk(spec.name),
        Reply::Integer(spec.arity),
        Reply::Set(spec.flags.iter().map(|f| Reply::status(f)).collect()),
        Reply::Integer(spec.keys.0),
        Reply::Integer(spec.keys.1),
        Reply::Integer(spec.keys.2),
    ])
}

/// COMMAND [COUNT | INFO name... | DOCS [name...] | LIST].
pub(crate) fn command(args: &[Vec<u8>]) -> Reply {
    let named = |names: &[Vec<u8>]| -> Vec<&'static Spec> {
        if names.is_empty() {
            COMMANDS.iter().collect()
        } else {
            names
                .iter()
                .filter_map(|n| crate::table::lookup(n))
                .collect()
        }
    };
    let sub = args.first().map(|a| a.to_ascii_uppercase());
    match sub.as_deref() {
        None => Reply::Array(COMMANDS.iter().map(command_info).collect()),
        Some(b"COUNT") => Reply::Integer(COMMANDS.len() as i64),
        Some(b"LIST") => Reply::Array(COMMANDS.iter().map(|s| Reply::bulk(s.name)).collect()),
        Some(b"INFO") => Reply::Array(
            args[1..]
                .iter()
                .map(|n| crate::table::lookup(n).map_or(Reply::Nil, command_info))
                .collect(),
        ),
        Some(b"DOCS") => Reply::Map(
            named(&args[1..])
                .into_iter()
                .map(|spec| {
                    let doc = Reply::Map(vec![
                        (Reply::bulk("summary"), Reply::bulk(spec.summary)),
                        (Reply::bulk("since"), Reply::bulk("1.0.0")),
                        (Reply::bulk("group"), Reply::bulk("generic")),
                    ]);
                    (Reply::bulk(spec.name), doc)
                })
                .collect(),
        ),
        Some(other) => Reply::error(format!(
            "ERR unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(other)
        )),
    }
}

/// The settings CONFIG GET reports: those clients and tools probe, with Conclave's values.
const SETTINGS: &[(&str, &str)] = &[
    ("appendonly", "yes"),
    ("appendfsync", "always"),
    ("save", ""),
    ("databases", "1"),
    ("maxmemory", "0"),
    ("maxmemory-policy", "noeviction"),
    ("timeout", "0"),
    ("notify-keyspace-events", ""),
    ("cluster-enabled", "no"),
    ("lua-time-limit", "5000"),
    ("busy-reply-threshold", "5000"),
];

/// CONFIG GET pattern... (glob patterns, as in Redis 7); `maxclients`, `requirepass`, the
/// frame and output-buffer limits are this node's.
pub(crate) fn config(shared: &Shared, args: &[Vec<u8>]) -> Reply {
    let sub = args[0].to_ascii_uppercase();
    match sub.as_slice() {
        b"GET" if args.len() >= 2 => {
            let maxclients = shared.options.max_clients.to_string();
            // Whether the default user needs a password, never the password itself.
            let requirepass = match shared.options.users.current().anonymous() {
                Some(_) => "",
                None => "<redacted>",
            };
            let mut settings: Vec<(&str, &str)> = SETTINGS.to_vec();
            let max_bulk = shared.options.frame_limits.max_bulk.to_string();
            let output_buffer = format!(
                "normal 0 0 0 replica 0 0 0 pubsub {}",
                shared.hub.limits().output_buffer()
            );
            settings.push(("maxclients", &maxclients));
            settings.push(("proto-max-bulk-len", &max_bulk));
            settings.push(("client-output-buffer-limit", &output_buffer));
            settings.push(("requirepass", requirepass));
            let pairs = settings
                .into_iter()
                .filter(|(name, _)| {
                    args[1..]
                        .iter()
                        .any(|p| conclave_pubsub::glob_matches(&p.to_ascii_lowercase(), name.as_bytes()))
                })
                .map(|(name, value)| (Reply::bulk(name), Reply::bulk(value)))
                .collect();
            Reply::Map(pairs)
        }
        b"GET" => Reply::error("ERR wrong number of arguments for 'config|get' command"),
        b"RESETSTAT" => Reply::ok(),
        b"SET" | b"REWRITE" => Reply::error(
            "ERR CONFIG SET is not supported: a Conclave node is configured by its command-line flags",
        ),
        other => Reply::error(format!(
            "ERR unknown subcommand '{}'. Try CONFIG HELP.",
            String::from_utf8_lossy(other)
        )),
    }
}
