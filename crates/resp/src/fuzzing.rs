//! Entry point for the `resp_requests` fuzz target in `fuzz/` and its regression test
//! (`tests/fuzz_regressions.rs`, which replays the inputs kept in `fuzz/regressions/`).
//!
//! [`requests`] reads arbitrary bytes as what a client sends: it parses them whole and again
//! in small pieces (the parser is incremental, so both must give the same requests and the same
//! error), then runs every request a connection would compile (keyspace commands and the
//! recognised scripts) against one replica, as the connection does without the network, and
//! encodes each reply in RESP2 and RESP3. It panics when a parse or a command panics, the two
//! parses differ, or a reply is the "unexpected outcome" error a well-formed plan never gets.

use bytes::BytesMut;
use conclave_state::{Command, Machine, Outcome, Transaction, WriteRequest};

use crate::connection::{check_limits, query_all};
use crate::plan::{self, Plan};
use crate::protocol::{parse, FrameLimits, ProtocolError, Reply, Request, Version};
use crate::{scripts, table};

/// Small bounds, so that inputs of a few kilobytes reach each of them.
const LIMITS: FrameLimits = FrameLimits {
    max_args: 64,
    max_bulk: 4096,
    max_inline: 1024,
};

/// Parses and runs `data` as a client's requests; panics on a broken invariant.
pub fn requests(data: &[u8]) {
    let Some((&piece, data)) = data.split_first() else {
        return;
    };
    let whole = parse_in_pieces(data, data.len().max(1));
    let pieces = parse_in_pieces(data, 1 + usize::from(piece % 16));
    assert_eq!(whole, pieces, "parsing in pieces changed what was parsed");
    let mut machine = Machine::new();
    for (index, request) in whole.0.iter().enumerate() {
        for reply in run(&mut machine, index as u64 + 1, request) {
            assert!(
                !matches!(&reply, Reply::Error(text) if text.starts_with("ERR internal")),
                "{request:?} was answered {reply:?}"
            );
            for version in [Version::Resp2, Version::Resp3] {
                reply.encode(version, &mut Vec::new());
            }
        }
    }
}

/// The requests parsed from `data` fed `piece` bytes at a time, and the error that ended them.
fn parse_in_pieces(data: &[u8], piece: usize) -> (Vec<Request>, Option<ProtocolError>) {
    let mut buffer = BytesMut::new();
    let mut requests = Vec::new();
    for chunk in data.chunks(piece) {
        buffer.extend_from_slice(chunk);
        loop {
            let before = buffer.len();
            match parse(&mut buffer, &LIMITS) {
                Ok(Some(request)) => {
                    assert!(buffer.len() < before, "a parsed request consumed nothing");
                    requests.push(request);
                }
                Ok(None) => break,
                Err(error) => return (requests, Some(error)),
            }
        }
    }
    (requests, None)
}

/// Runs one request the way a connection compiles it; what needs a connection or a cluster
/// (pub/sub, MULTI, admin) is left out.
fn run(machine: &mut Machine, index: u64, request: &Request) -> Vec<Reply> {
    let Some(name) = request.first() else {
        return vec![];
    };
    let Some(spec) = table::lookup(name) else {
        return vec![];
    };
    if !spec.arity_ok(request.len()) {
        return vec![];
    }
    let args = &request[1..];
    let compiled = match spec.name {
        "eval" => scripts::recognise(&args[0]).map(|script| scripts::compile(script, &args[1..])),
        name => plan::compile(name, args),
    };
    match compiled {
        Some(Ok(plan)) => vec![execute(machine, index, plan)],
        Some(Err(error)) => vec![error],
        None => vec![],
    }
}

/// Answers a plan: reads from the replica, writes applied as the one entry the batcher sends.
fn execute(machine: &mut Machine, index: u64, plan: Plan) -> Reply {
    let now = machine.clock();
    if plan.is_read() {
        let outcomes = query_all(machine, &plan.commands, now);
        return plan.shape.reply(&outcomes, Version::Resp3);
    }
    if let Err(error) = check_limits(&plan.commands) {
        return error;
    }
    let wrapped = plan.commands.len() != 1;
    let command = if wrapped {
        Command::Txn(Box::new(Transaction {
            compares: vec![],
            success: plan.commands.clone(),
            failure: vec![],
        }))
    } else {
        plan.commands[0].clone()
    };
    let request = WriteRequest {
        id: None,
        stamp: now + 1,
        command,
    };
    let outcomes = match machine.apply(index, &request).outcome {
        Outcome::Txn { outcomes, .. } if wrapped => outcomes,
        other => vec![other],
    };
    plan.shape.reply(&outcomes, Version::Resp3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipeline_of_commands_runs_and_a_bad_frame_ends_it() {
        let mut input = vec![3u8];
        input.extend_from_slice(
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n5\r\nINCRBY k 7\r\nGET k\r\n\
              HSET h f v\r\nHGETALL h\r\nMSET a 1 b 2\r\n*1\r\n$-5\r\n",
        );
        requests(&input);
        let parsed = parse_in_pieces(&input[1..], 2);
        assert_eq!(parsed.0.len(), 6);
        assert!(parsed.1.is_some(), "the negative bulk length is an error");
    }
}
