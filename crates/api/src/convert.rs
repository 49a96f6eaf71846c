//! Conversions between wire messages and the node's types, in one place.

use std::time::{Duration, Instant};

use conclave_consensus::{Consistency, NodeError};
use conclave_proto::v1;
use conclave_state::{Bytes, InvalidRequest, Limits, ReadError, RequestId, WriteRequest};
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
        NodeError::Rejected(reason) => Status::invalid_argument(reason),
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

pub(crate) fn header(revision: u64, node_id: u64) -> Option<v1::ResponseHeader> {
    Some(v1::ResponseHeader { revision, node_id })
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
