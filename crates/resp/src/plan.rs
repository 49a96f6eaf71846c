//! Keyspace commands compiled into state-machine commands, and their outcomes shaped back into
//! Redis replies.
//!
//! A [`Plan`] is what one RESP command does to the keyspace: a list of [`Command`]s (reads are
//! [`Command::Query`]) and the [`Shape`] of its reply. The connection runs a plan of reads on its
//! local replica, a plan with writes through the leader, and a MULTI as one transaction made of
//! the queued plans; in every case the outcomes come back in order and the shape turns them into
//! the reply. So a command means the same thing alone, pipelined, or inside EXEC.

use conclave_state::{
    Answer, Bytes, Command, ExpireCondition, Expiry, Outcome, Query, SetCondition, FORGOTTEN_REPLY,
};

use crate::protocol::{Reply, Version};

/// One command's effect on the keyspace and the shape of its reply.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub commands: Vec<Command>,
    pub shape: Shape,
}

/// How a plan's outcomes become its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// SET: OK, nil when NX/XX refused it; with GET, the previous value.
    Set { get: bool },
    /// 1 if the SET applied, else 0 (SETNX).
    SetFlag,
    /// OK once every command applied (MSET).
    Ok,
    /// The count of the only command.
    Count,
    /// The integer of the only command; `hash` picks HINCRBY's error text.
    Integer { hash: bool },
    /// What the only query read.
    Answer(AnswerShape),
    /// A recognised script: its branch's count, or 0 when its comparison failed.
    Script,
}

/// How a query's answer is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AnswerShape {
    /// As read.
    Plain,
    /// The first element of an array (HGET reads through HMGET's query).
    First,
    /// Milliseconds turned into seconds, rounded (TTL).
    Seconds,
    /// Alternating fields and values as a map (HGETALL).
    Map,
    /// An array as a set (SMEMBERS).
    Set,
}

pub(crate) const WRONGTYPE: &str =
    "WRONGTYPE Operation against a key holding the wrong kind of value";
const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";
const SYNTAX: &str = "ERR syntax error";

fn bytes(arg: &[u8]) -> Bytes {
    Bytes::from(arg.to_vec())
}

fn keys(args: &[Vec<u8>]) -> Vec<Bytes> {
    args.iter().map(|a| bytes(a)).collect()
}

/// Parses an integer argument as Redis does.
pub(crate) fn integer(arg: &[u8]) -> Result<i64, Reply> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Reply::error(NOT_AN_INTEGER))
}

fn single(command: Command, shape: Shape) -> Result<Plan, Reply> {
    Ok(Plan {
        commands: vec![command],
        shape,
    })
}

fn query(query: Query, shape: AnswerShape) -> Result<Plan, Reply> {
    single(Command::Query(query), Shape::Answer(shape))
}

/// Compiles a keyspace command (`name` lower-case, `args` without the name; arity already
/// checked). None when `name` is not a keyspace command.
pub(crate) fn compile(name: &str, args: &[Vec<u8>]) -> Option<Result<Plan, Reply>> {
    let key = || bytes(&args[0]);
    Some(match name {
        "get" => query(Query::Get { key: key() }, AnswerShape::Plain),
        "set" => compile_set(args),
        "setnx" => single(
            Command::Set {
                key: key(),
                value: bytes(&args[1]),
                condition: SetCondition::IfAbsent,
                expiry: Expiry::Never,
                return_previous: false,
                lease: None,
            },
            Shape::SetFlag,
        ),
        "mget" => query(Query::MultiGet { keys: keys(args) }, AnswerShape::Plain),
        "mset" => {
            if !args.len().is_multiple_of(2) {
                return Some(Err(Reply::error(
                    "ERR wrong number of arguments for 'mset' command",
                )));
            }
            let commands = args
                .chunks(2)
                .map(|pair| Command::Set {
                    key: bytes(&pair[0]),
                    value: bytes(&pair[1]),
                    condition: SetCondition::Always,
                    expiry: Expiry::Never,
                    return_previous: false,
                    lease: None,
                })
                .collect();
            Ok(Plan {
                commands,
                shape: Shape::Ok,
            })
        }
        "incr" | "decr" | "incrby" | "decrby" => {
            let delta = match (name, args.get(1)) {
                ("incr", _) => Ok(1),
                ("decr", _) => Ok(-1),
                ("incrby", Some(d)) => integer(d),
                (_, Some(d)) => integer(d).and_then(|d| {
                    d.checked_neg()
                        .ok_or_else(|| Reply::error("ERR decrement would overflow"))
                }),
                _ => unreachable!("arity checked"),
            };
            delta.and_then(|delta| {
                single(
                    Command::IncrBy { key: key(), delta },
                    Shape::Integer { hash: false },
                )
            })
        }
        "append" => single(
            Command::Append {
                key: key(),
                value: bytes(&args[1]),
            },
            Shape::Integer { hash: false },
        ),
        "strlen" => query(Query::StrLen { key: key() }, AnswerShape::Plain),
        "del" | "unlink" => single(Command::Delete { keys: keys(args) }, Shape::Count),
        "exists" => query(Query::Exists { keys: keys(args) }, AnswerShape::Plain),
        "expire" | "pexpire" | "expireat" | "pexpireat" => compile_expire(name, args),
        "persist" => single(
            Command::Expire {
                key: key(),
                expiry: Expiry::Never,
                condition: ExpireCondition::Always,
            },
            Shape::Count,
        ),
        "ttl" => query(Query::TimeToLive { key: key() }, AnswerShape::Seconds),
        "pttl" => query(Query::TimeToLive { key: key() }, AnswerShape::Plain),
        "type" => query(Query::Type { key: key() }, AnswerShape::Plain),
        "hset" | "hmset" => {
            let pairs = &args[1..];
            if !pairs.len().is_multiple_of(2) {
                return Some(Err(Reply::error(format!(
                    "ERR wrong number of arguments for '{name}' command"
                ))));
            }
            let fields = pairs
                .chunks(2)
                .map(|p| (bytes(&p[0]), bytes(&p[1])))
                .collect();
            let shape = if name == "hset" {
                Shape::Count
            } else {
                Shape::Ok
            };
            single(
                Command::HashSet {
                    key: key(),
                    fields,
                    lease: None,
                },
                shape,
            )
        }
        "hsetnx" => single(
            Command::HashSetIfAbsent {
                key: key(),
                field: bytes(&args[1]),
                value: bytes(&args[2]),
            },
            Shape::Count,
        ),
        "hget" => query(
            Query::HashGet {
                key: key(),
                fields: vec![bytes(&args[1])],
            },
            AnswerShape::First,
        ),
        "hmget" => query(
            Query::HashGet {
                key: key(),
                fields: keys(&args[1..]),
            },
            AnswerShape::Plain,
        ),
        "hdel" => single(
            Command::HashDelete {
                key: key(),
                fields: keys(&args[1..]),
            },
            Shape::Count,
        ),
        "hgetall" => query(Query::HashGetAll { key: key() }, AnswerShape::Map),
        "hkeys" => query(Query::HashKeys { key: key() }, AnswerShape::Plain),
        "hvals" => query(Query::HashValues { key: key() }, AnswerShape::Plain),
        "hlen" => query(Query::HashLen { key: key() }, AnswerShape::Plain),
        "hexists" => query(
            Query::HashExists {
                key: key(),
                field: bytes(&args[1]),
            },
            AnswerShape::Plain,
        ),
        "hincrby" => integer(&args[2]).and_then(|delta| {
            single(
                Command::HashIncrBy {
                    key: key(),
                    field: bytes(&args[1]),
                    delta,
                },
                Shape::Integer { hash: true },
            )
        }),
        "sadd" => single(
            Command::SetAdd {
                key: key(),
                members: keys(&args[1..]),
            },
            Shape::Count,
        ),
        "srem" => single(
            Command::SetRemove {
                key: key(),
                members: keys(&args[1..]),
            },
            Shape::Count,
        ),
        "smembers" => query(Query::SetMembers { key: key() }, AnswerShape::Set),
        "sismember" => query(
            Query::SetIsMember {
                key: key(),
                member: bytes(&args[1]),
            },
            AnswerShape::Plain,
        ),
        "scard" => query(Query::SetCard { key: key() }, AnswerShape::Plain),
        _ => return None,
    })
}

fn compile_set(args: &[Vec<u8>]) -> Result<Plan, Reply> {
    let mut condition = SetCondition::Always;
    let mut expiry = Expiry::Never;
    let mut expiry_given = false;
    let mut get = false;
    let mut options = args[2..].iter();
    while let Some(option) = options.next() {
        let upper = option.to_ascii_uppercase();
        match upper.as_slice() {
            b"NX" | b"XX" => {
                if condition != SetCondition::Always {
                    return Err(Reply::error(SYNTAX));
                }
                condition = if upper == b"NX" {
                    SetCondition::IfAbsent
                } else {
                    SetCondition::IfPresent
                };
            }
            b"GET" => get = true,
            b"KEEPTTL" | b"EX" | b"PX" | b"EXAT" | b"PXAT" => {
                if expiry_given {
                    return Err(Reply::error(SYNTAX));
                }
                expiry_given = true;
                if upper == b"KEEPTTL" {
                    expiry = Expiry::Keep;
                    continue;
                }
                let amount = integer(options.next().ok_or_else(|| Reply::error(SYNTAX))?)?;
                if amount <= 0 {
                    return Err(Reply::error("ERR invalid expire time in 'set' command"));
                }
                let amount = amount as u64;
                expiry = match upper.as_slice() {
                    b"EX" => Expiry::AfterMillis(amount.saturating_mul(1000)),
                    b"PX" => Expiry::AfterMillis(amount),
                    b"EXAT" => Expiry::AtMillis(amount.saturating_mul(1000)),
                    _ => Expiry::AtMillis(amount),
                };
            }
            _ => return Err(Reply::error(SYNTAX)),
        }
    }
    single(
        Command::Set {
            key: bytes(&args[0]),
            value: bytes(&args[1]),
            condition,
            expiry,
            return_previous: get,
            lease: None,
        },
        Shape::Set { get },
    )
}

fn compile_expire(name: &str, args: &[Vec<u8>]) -> Result<Plan, Reply> {
    let amount = integer(&args[1])?;
    let condition = match args.get(2).map(|a| a.to_ascii_uppercase()) {
        None => ExpireCondition::Always,
        Some(option) => match option.as_slice() {
            b"NX" => ExpireCondition::NoTtl,
            b"XX" => ExpireCondition::HasTtl,
            b"GT" => ExpireCondition::Later,
            b"LT" => ExpireCondition::Earlier,
            _ => {
                return Err(Reply::error(format!(
                    "ERR Unsupported option {}",
                    String::from_utf8_lossy(&option)
                )))
            }
        },
    };
    if args.len() > 3 {
        return Err(Reply::error(SYNTAX));
    }
    let scale = if name.starts_with('p') { 1 } else { 1000 };
    let overflow = || Reply::error(format!("ERR invalid expire time in '{name}' command"));
    let millis = amount.checked_mul(scale).ok_or_else(overflow)?;
    // A time in the past (or a non-positive TTL) deletes the key, as in Redis.
    let expiry = if name.ends_with("at") {
        Expiry::AtMillis(millis.max(0) as u64)
    } else if millis <= 0 {
        Expiry::AtMillis(0)
    } else {
        Expiry::AfterMillis(millis as u64)
    };
    single(
        Command::Expire {
            key: bytes(&args[0]),
            expiry,
            condition,
        },
        Shape::Count,
    )
}

impl Plan {
    /// Whether the plan only reads (so a replica can answer it).
    pub fn is_read(&self) -> bool {
        self.commands.iter().all(|c| matches!(c, Command::Query(_)))
    }
}

impl Shape {
    /// The reply for a plan's outcomes, one per command, in order.
    pub fn reply(self, outcomes: &[Outcome], version: Version) -> Reply {
        if let Some(error) = outcomes.iter().find_map(|o| outcome_error(o, self)) {
            return error;
        }
        let only = outcomes.first();
        match (self, only) {
            (Shape::Set { get: false }, Some(Outcome::Set { applied, .. })) => {
                if *applied {
                    Reply::ok()
                } else {
                    Reply::Nil
                }
            }
            (Shape::Set { get: true }, Some(Outcome::Set { previous, .. })) => previous
                .as_ref()
                .map_or(Reply::Nil, |v| Reply::bulk(v.to_vec())),
            (Shape::SetFlag, Some(Outcome::Set { applied, .. })) => {
                Reply::Integer(i64::from(*applied))
            }
            (Shape::Ok, _) => Reply::ok(),
            (Shape::Count, Some(Outcome::Count(n))) => Reply::Integer(*n as i64),
            (Shape::Integer { .. }, Some(Outcome::Integer(n))) => Reply::Integer(*n),
            (Shape::Answer(shape), Some(Outcome::Answer(answer))) => shape.frame(answer, version),
            (
                Shape::Script,
                Some(Outcome::Txn {
                    succeeded,
                    outcomes,
                }),
            ) => match (succeeded, outcomes.first()) {
                (true, Some(Outcome::Count(n))) => Reply::Integer(*n as i64),
                _ => Reply::Integer(0),
            },
            (shape, outcome) => Reply::error(format!(
                "ERR internal: unexpected outcome {outcome:?} for a {shape:?} reply"
            )),
        }
    }
}

/// The error reply for a retried write whose first reply was not kept.
pub fn forgotten() -> Reply {
    Reply::error(format!("ERR {FORGOTTEN_REPLY}"))
}

/// The error reply for an outcome that reports a failed command.
fn outcome_error(outcome: &Outcome, shape: Shape) -> Option<Reply> {
    Some(Reply::error(match outcome {
        Outcome::WrongType => WRONGTYPE,
        Outcome::NotAnInteger if shape == (Shape::Integer { hash: true }) => {
            "ERR hash value is not an integer"
        }
        Outcome::NotAnInteger => NOT_AN_INTEGER,
        Outcome::Overflow => "ERR increment or decrement would overflow",
        Outcome::TooLarge => {
            "ERR string exceeds maximum allowed size (values are limited to 1 MiB)"
        }
        Outcome::LeaseNotFound => "ERR the lease does not exist",
        Outcome::Forgotten => return Some(forgotten()),
        _ => return None,
    }))
}

impl AnswerShape {
    fn frame(self, answer: &Answer, version: Version) -> Reply {
        match (self, answer) {
            (AnswerShape::First, Answer::Array(items)) => items.first().map_or(Reply::Nil, plain),
            (AnswerShape::Seconds, Answer::Integer(ms)) if *ms >= 0 => {
                Reply::Integer((ms + 500) / 1000)
            }
            (AnswerShape::Map, Answer::Array(items)) => Reply::Map(
                items
                    .chunks(2)
                    .map(|pair| (plain(&pair[0]), plain(&pair[1])))
                    .collect(),
            ),
            (AnswerShape::Set, Answer::Array(items)) if version == Version::Resp3 => {
                Reply::Set(items.iter().map(plain).collect())
            }
            _ => plain(answer),
        }
    }
}

/// An answer framed as read.
fn plain(answer: &Answer) -> Reply {
    match answer {
        Answer::Nil => Reply::Nil,
        Answer::Bytes(b) => Reply::bulk(b.to_vec()),
        Answer::Integer(n) => Reply::Integer(*n),
        Answer::Status(s) => Reply::Status(s.clone()),
        Answer::Array(items) => Reply::Array(items.iter().map(plain).collect()),
    }
}
