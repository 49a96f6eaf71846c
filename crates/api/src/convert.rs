//! Conversions between wire messages and the node's types, in one place.

use std::time::{Duration, Instant};

use conclave_consensus::{Consistency, NodeError};
use conclave_proto::v1;
use conclave_state::{
    Bytes, Check, CmpOp, Command, Expiry, InvalidRequest, Limits, ReadError, RequestId,
    WriteRequest,
};
use tonic::{Request, Status};

/// The deadline of a request: the node's request timeout, shortened by the client's
/// `grpc-timeout` when that is sooner.
pub(crate) fn deadline<T>(request: &Request<T>, default: Duration) -> Instant {
    let client = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout);
    Instant::now() + client.map_or(default, |c| c.min(default))
}

/// Parses gRPC's timeout header: digits followed by one of H M S m u n.
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The consistency a read asked for (session by default).
pub(crate) fn consistency(options: Option<v1::ReadOptions>) -> Consistency {
    let options = options.unwrap_or_default();
    match v1::Consistency::try_from(options.consistency).unwrap_or_default() {
        v1::Consistency::Local => Consistency::Local,
        v1::Consistency::Linearizable => Consistency::Linearizable,
        v1::Consistency::Session => Consistency::Session {
            min_revision: options.min_revision,
        },
    }
}

/// The de-duplication id of a write, if the client gave one.
pub(crate) fn request_id(options: Option<v1::WriteOptions>) -> Option<RequestId> {
    options.filter(|o| o.client_id != 0).map(|o| RequestId {
        client_id: o.client_id,
        sequence: o.sequence,
    })
}

/// Checks a write against the node's limits.
pub(crate) fn checked(request: WriteRequest) -> Result<WriteRequest, Status> {
    Limits::DEFAULT.check(&request).map_err(invalid)?;
    Ok(request)
}

/// Checks a key named by a read.
pub(crate) fn check_key(key: &[u8]) -> Result<(), Status> {
    Limits::DEFAULT.check_key(key).map_err(invalid)
}

pub(crate) fn invalid(e: InvalidRequest) -> Status {
    Status::invalid_argument(e.to_string())
}

pub(crate) fn node_error(e: NodeError) -> Status {
    match e {
        NodeError::Unavailable(reason) => Status::unavailable(reason),
        // gRPC's code for "the deadline passed; a state change may have happened anyway": not
        // retried by gRPC retry policies. The SDK retries it with the same write id.
        NodeError::Indeterminate(reason) => Status::deadline_exceeded(reason),
        NodeError::Rejected(reason) => Status::invalid_argument(reason),
        NodeError::NoSpace(reason) => Status::resource_exhausted(reason),
    }
}

pub(crate) fn wrong_type(_: ReadError) -> Status {
    Status::failed_precondition(ReadError.to_string())
}

/// Wire byte strings as the state machine's [`Bytes`].
pub(crate) fn all(items: Vec<Vec<u8>>) -> Vec<Bytes> {
    items.into_iter().map(Bytes::from).collect()
}

/// A hash field or set member to look up in the state machine's maps.
pub(crate) fn field(bytes: &[u8]) -> &serde_bytes::Bytes {
    serde_bytes::Bytes::new(bytes)
}

/// A lease id from the wire, where 0 means none.
pub(crate) fn lease(id: u64) -> Option<conclave_state::LeaseId> {
    (id != 0).then_some(id)
}

// ----- Wire writes as commands: one conversion per request type, shared by the unary calls and
// by transactions. -----

pub(crate) fn set_command(r: v1::SetRequest) -> Result<Command, Status> {
    let condition = match v1::SetCondition::try_from(r.condition) {
        Ok(v1::SetCondition::SetAlways) => conclave_state::SetCondition::Always,
        Ok(v1::SetCondition::SetIfAbsent) => conclave_state::SetCondition::IfAbsent,
        Ok(v1::SetCondition::SetIfPresent) => conclave_state::SetCondition::IfPresent,
        Err(_) => return Err(Status::invalid_argument("unknown set condition")),
    };
    let expiry = match (r.ttl_ms, r.keep_ttl) {
        (0, true) => Expiry::Keep,
        (0, false) => Expiry::Never,
        (ms, _) => Expiry::AfterMillis(ms),
    };
    Ok(Command::Set {
        key: r.key.into(),
        value: r.value.into(),
        condition,
        expiry,
        return_previous: r.return_previous,
        lease: lease(r.lease),
    })
}

pub(crate) fn delete_command(r: v1::DeleteRequest) -> Command {
    Command::Delete { keys: all(r.keys) }
}

pub(crate) fn hset_command(r: v1::HSetRequest) -> Command {
    Command::HashSet {
        key: r.key.into(),
        fields: r
            .fields
            .into_iter()
            .map(|f| (f.field.into(), f.value.into()))
            .collect(),
        lease: lease(r.lease),
    }
}

pub(crate) fn hdel_command(r: v1::HDelRequest) -> Command {
    Command::HashDelete {
        key: r.key.into(),
        fields: all(r.fields),
    }
}

pub(crate) fn sadd_command(r: v1::SAddRequest) -> Command {
    Command::SetAdd {
        key: r.key.into(),
        members: all(r.members),
    }
}

pub(crate) fn srem_command(r: v1::SRemRequest) -> Command {
    Command::SetRemove {
        key: r.key.into(),
        members: all(r.members),
    }
}

pub(crate) fn txn_op(op: v1::TxnOp) -> Result<Command, Status> {
    use v1::txn_op::Op;
    match op.op {
        Some(Op::Set(r)) => set_command(r),
        Some(Op::Delete(r)) => Ok(delete_command(r)),
        Some(Op::Hset(r)) => Ok(hset_command(r)),
        Some(Op::Hdel(r)) => Ok(hdel_command(r)),
        Some(Op::Sadd(r)) => Ok(sadd_command(r)),
        Some(Op::Srem(r)) => Ok(srem_command(r)),
        None => Err(Status::invalid_argument(
            "a transaction op names no operation",
        )),
    }
}

pub(crate) fn compare(c: v1::Compare) -> Result<conclave_state::Compare, Status> {
    use v1::compare::Target;
    let op = match v1::CompareOp::try_from(c.op) {
        Ok(v1::CompareOp::CompareEqual) => CmpOp::Equal,
        Ok(v1::CompareOp::CompareNotEqual) => CmpOp::NotEqual,
        Ok(v1::CompareOp::CompareLess) => CmpOp::Less,
        Ok(v1::CompareOp::CompareGreater) => CmpOp::Greater,
        Err(_) => return Err(Status::invalid_argument("unknown compare op")),
    };
    let check = match c.target {
        Some(Target::Exists(exists)) => Check::Exists(exists),
        Some(Target::Value(value)) => Check::Value(op, value.into()),
        Some(Target::ModRevision(r)) => Check::Modified(op, r),
        Some(Target::CreateRevision(r)) => Check::Created(op, r),
        Some(Target::UnchangedSince(r)) => Check::UnchangedSince(r),
        None => return Err(Status::invalid_argument("a compare names no target")),
    };
    Ok(conclave_state::Compare {
        key: c.key.into(),
        field: c.field.map(Bytes::from),
        check,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
    }
}
