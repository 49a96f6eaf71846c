//! The command table: every command the front end knows, with its arity and flags, in one place.
//! Arity checks, `COMMAND COUNT/INFO/DOCS` and the unknown-command error all read it.

/// One command as `COMMAND INFO` describes it.
pub(crate) struct Spec {
    /// Lower-case name.
    pub name: &'static str,
    /// Redis's convention: N means exactly N words (the name included), -N at least N.
    pub arity: i64,
    pub flags: &'static [&'static str],
    /// Position of the first key, of the last key (-1: the last argument), and the step.
    pub keys: (i64, i64, i64),
    pub summary: &'static str,
}

const W: &[&str] = &["write"];
const WD: &[&str] = &["write", "denyoom"];
const R: &[&str] = &["readonly", "fast"];
const RS: &[&str] = &["readonly"];
const C: &[&str] = &["fast", "loading", "stale"];
const PS: &[&str] = &["pubsub", "loading", "stale"];
const A: &[&str] = &["admin", "loading", "stale"];
const S: &[&str] = &["noscript"];

const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
    summary: &'static str,
) -> Spec {
    Spec {
        name,
        arity,
        flags,
        keys,
        summary,
    }
}

const NONE: (i64, i64, i64) = (0, 0, 0);
const ONE: (i64, i64, i64) = (1, 1, 1);
const ALL: (i64, i64, i64) = (1, -1, 1);

pub(crate) const COMMANDS: &[Spec] = &[
    // Connection.
    spec("ping", -1, C, NONE, "Returns PONG, or the argument."),
    spec("echo", 2, C, NONE, "Returns the argument."),
    spec(
        "hello",
        -1,
        C,
        NONE,
        "Handshake: protocol version, authentication, name.",
    ),
    spec("auth", -2, C, NONE, "Authenticates the connection."),
    spec("select", 2, C, NONE, "Selects database 0 (the only one)."),
    spec(
        "client",
        -2,
        C,
        NONE,
        "CLIENT ID, SETNAME, GETNAME, SETINFO, INFO, LIST.",
    ),
    spec("quit", -1, C, NONE, "Closes the connection."),
    spec(
        "acl",
        -2,
        A,
        NONE,
        "ACL WHOAMI, USERS (users come from the users file).",
    ),
    spec("reset", 1, C, NONE, "Resets the connection's state."),
    // Strings.
    spec("get", 2, R, ONE, "Gets a string value."),
    spec(
        "set",
        -3,
        WD,
        ONE,
        "Sets a string value (EX/PX/EXAT/PXAT/NX/XX/GET/KEEPTTL).",
    ),
    spec(
        "setnx",
        3,
        WD,
        ONE,
        "Sets a string value if the key is absent.",
    ),
    spec("mget", -2, R, ALL, "Gets several string values."),
    spec(
        "mset",
        -3,
        WD,
        (1, -1, 2),
        "Sets several string values atomically.",
    ),
    spec("incr", 2, WD, ONE, "Adds 1 to a counter."),
    spec("incrby", 3, WD, ONE, "Adds to a counter."),
    spec("decr", 2, WD, ONE, "Subtracts 1 from a counter."),
    spec("decrby", 3, WD, ONE, "Subtracts from a counter."),
    spec("append", 3, WD, ONE, "Appends to a string."),
    spec("strlen", 2, R, ONE, "Length of a string."),
    // Keys.
    spec("del", -2, W, ALL, "Deletes keys."),
    spec("unlink", -2, W, ALL, "Deletes keys."),
    spec("exists", -2, R, ALL, "Counts existing keys."),
    spec("expire", -3, W, ONE, "Sets a TTL in seconds (NX/XX/GT/LT)."),
    spec(
        "pexpire",
        -3,
        W,
        ONE,
        "Sets a TTL in milliseconds (NX/XX/GT/LT).",
    ),
    spec("expireat", -3, W, ONE, "Sets a deadline in Unix seconds."),
    spec(
        "pexpireat",
        -3,
        W,
        ONE,
        "Sets a deadline in Unix milliseconds.",
    ),
    spec("ttl", 2, R, ONE, "Seconds left to live."),
    spec("pttl", 2, R, ONE, "Milliseconds left to live."),
    spec("persist", 2, W, ONE, "Removes a TTL."),
    spec("type", 2, R, ONE, "The type of a key."),
    spec("keys", 2, RS, NONE, "Keys matching a glob pattern."),
    spec("scan", -2, RS, NONE, "Iterates keys (MATCH, COUNT, TYPE)."),
    spec("dbsize", 1, R, NONE, "Number of keys."),
    // Hashes.
    spec("hset", -4, WD, ONE, "Sets hash fields."),
    spec(
        "hmset",
        -4,
        WD,
        ONE,
        "Sets hash fields (deprecated form of HSET).",
    ),
    spec("hsetnx", 4, WD, ONE, "Sets a hash field if absent."),
    spec("hget", 3, R, ONE, "Gets a hash field."),
    spec("hmget", -3, R, ONE, "Gets hash fields."),
    spec("hdel", -3, W, ONE, "Deletes hash fields."),
    spec("hgetall", 2, RS, ONE, "Gets every field and value."),
    spec("hkeys", 2, RS, ONE, "Gets every field."),
    spec("hvals", 2, RS, ONE, "Gets every value."),
    spec("hlen", 2, R, ONE, "Number of fields."),
    spec("hexists", 3, R, ONE, "Whether a field exists."),
    spec("hincrby", 4, WD, ONE, "Adds to a counter in a hash field."),
    // Sets.
    spec("sadd", -3, WD, ONE, "Adds set members."),
    spec("srem", -3, W, ONE, "Removes set members."),
    spec("smembers", 2, RS, ONE, "Gets every member."),
    spec("sismember", 3, R, ONE, "Whether a member is present."),
    spec("scard", 2, R, ONE, "Number of members."),
    // Transactions.
    spec(
        "multi",
        1,
        &["noscript", "loading", "stale", "fast"],
        NONE,
        "Starts a transaction.",
    ),
    spec(
        "exec",
        1,
        &["noscript", "loading", "stale"],
        NONE,
        "Runs the queued commands atomically.",
    ),
    spec(
        "discard",
        1,
        &["noscript", "loading", "stale", "fast"],
        NONE,
        "Drops the queued commands.",
    ),
    spec(
        "watch",
        -2,
        &["noscript", "loading", "stale", "fast"],
        ALL,
        "Watches keys for EXEC.",
    ),
    spec(
        "unwatch",
        1,
        &["noscript", "loading", "stale", "fast"],
        NONE,
        "Forgets watched keys.",
    ),
    // Scripts.
    spec("eval", -3, S, NONE, "Runs a recognised script."),
    spec(
        "evalsha",
        -3,
        S,
        NONE,
        "Runs a recognised script by its SHA-1.",
    ),
    spec("script", -2, S, NONE, "SCRIPT LOAD, EXISTS, FLUSH."),
    // Pub/sub.
    spec("subscribe", -2, PS, NONE, "Subscribes to channels."),
    spec("unsubscribe", -1, PS, NONE, "Unsubscribes from channels."),
    spec(
        "psubscribe",
        -2,
        PS,
        NONE,
        "Subscribes to channel patterns.",
    ),
    spec(
        "punsubscribe",
        -1,
        PS,
        NONE,
        "Unsubscribes from channel patterns.",
    ),
    spec(
        "publish",
        3,
        &["pubsub", "loading", "stale", "fast"],
        NONE,
        "Publishes a message cluster-wide.",
    ),
    spec("pubsub", -2, PS, NONE, "PUBSUB CHANNELS, NUMSUB, NUMPAT."),
    // Introspection.
    spec(
        "info",
        -1,
        A,
        NONE,
        "Server, clients, replication and keyspace information.",
    ),
    spec("command", -1, A, NONE, "COMMAND COUNT, INFO, DOCS, LIST."),
    spec(
        "config",
        -2,
        A,
        NONE,
        "CONFIG GET of the settings clients probe.",
    ),
    spec(
        "time",
        1,
        C,
        NONE,
        "The replicated time that TTLs are judged by.",
    ),
];

/// The spec of a command, by name in any case.
pub(crate) fn lookup(name: &[u8]) -> Option<&'static Spec> {
    COMMANDS
        .iter()
        .find(|spec| spec.name.as_bytes().eq_ignore_ascii_case(name))
}

impl Spec {
    /// Whether `words` (the name included) satisfies the arity.
    pub fn arity_ok(&self, words: usize) -> bool {
        let words = words as i64;
        if self.arity >= 0 {
            words == self.arity
        } else {
            words >= -self.arity
        }
    }
}
