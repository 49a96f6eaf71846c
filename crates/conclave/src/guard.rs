//! Who may call what on the gRPC listener, decided per call before a service sees it:
//! - the node-to-node services (`conclave.peer.v1`: Raft, forwarding, the pub/sub mesh) need a
//!   connection with a node certificate from the cluster's CA, when the listener runs TLS;
//! - every client method needs a [`Permission`] of the caller's role ([`METHODS`], the one
//!   table of them). The caller is named by the call's `authorization` metadata: `Bearer
//!   <token>` (a token of the users file) or `Basic <base64 of user:password>` (as RESP's AUTH);
//!   a call without it runs as the default user if that needs no password;
//! - the standard health service is open to all (load balancers probe it).
//!
//! Refusals: `UNAUTHENTICATED` without valid credentials, `PERMISSION_DENIED` for a role that
//! does not allow the method. Streams are authorized when they open.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use conclave_access::{Directory, Permission};

use crate::tls::{Peer, PeerAuth};

/// The gRPC services only nodes may call.
const PEER_SERVICES: &str = "/conclave.peer.v1.";
/// Open to every caller.
const HEALTH: &str = "/grpc.health.v1.Health/";
/// Server reflection (the method list and message types): any user may read it.
const REFLECTION: &str = "/grpc.reflection.";

/// What each client method needs: (service, method, permission). Every method of the
/// `conclave.v1` services is here (a test holds it to the proto files); a method not here is
/// refused to all but admins.
pub const METHODS: &[(&str, &str, Permission)] = {
    use Permission::{Admin, Read, Write};
    &[
        ("Kv", "Get", Read),
        ("Kv", "Set", Write),
        ("Kv", "Delete", Write),
        ("Kv", "HSet", Write),
        ("Kv", "HGet", Read),
        ("Kv", "HMGet", Read),
        ("Kv", "HDel", Write),
        ("Kv", "HGetAll", Read),
        ("Kv", "HKeys", Read),
        ("Kv", "HVals", Read),
        ("Kv", "SAdd", Write),
        ("Kv", "SRem", Write),
        ("Kv", "SMembers", Read),
        // A transaction may write, whatever its branches hold.
        ("Kv", "Txn", Write),
        ("Kv", "Scan", Read),
        ("Cluster", "Status", Read),
        ("Cluster", "AddMember", Admin),
        ("Cluster", "PromoteMember", Admin),
        ("Cluster", "RemoveMember", Admin),
        ("Cluster", "TransferLeadership", Admin),
        // A backup holds every key: an operator's call, not a reader's.
        ("Cluster", "Snapshot", Admin),
        ("Lease", "Grant", Write),
        ("Lease", "Revoke", Write),
        ("Lease", "KeepAlive", Write),
        ("Lease", "KeepAliveOnce", Write),
        ("Lease", "TimeToLive", Read),
        ("Lease", "List", Read),
        ("Lock", "Acquire", Write),
        ("Lock", "Release", Write),
        ("Watch", "Watch", Read),
        ("Rooms", "CreateRoom", Write),
        ("Rooms", "GetRoom", Read),
        ("Rooms", "UpdateRoom", Write),
        ("Rooms", "DeleteRoom", Write),
        ("Rooms", "ListRooms", Read),
        ("Rooms", "AssignRoom", Write),
        ("Rooms", "Join", Write),
        ("Rooms", "UpdateParticipant", Write),
        ("Rooms", "Leave", Write),
        ("Rooms", "ListParticipants", Read),
        ("Rooms", "RegisterNode", Write),
        ("Rooms", "UpdateNodeStats", Write),
        ("Rooms", "DrainNode", Write),
        ("Rooms", "ListNodes", Read),
        ("PubSub", "Publish", Write),
        ("PubSub", "Subscribe", Read),
    ]
};

/// What a call to `path` (`/package.Service/Method`) needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Needs {
    Nothing,
    NodeCertificate,
    User(Permission),
}

fn needs(path: &str) -> Needs {
    if path.starts_with(HEALTH) {
        return Needs::Nothing;
    }
    if path.starts_with(PEER_SERVICES) {
        return Needs::NodeCertificate;
    }
    if path.starts_with(REFLECTION) {
        return Needs::User(Permission::Read);
    }
    let method = path
        .strip_prefix("/conclave.v1.")
        .and_then(|rest| rest.split_once('/'));
    let listed = method.and_then(|(service, method)| {
        METHODS
            .iter()
            .find(|(s, m, _)| *s == service && *m == method)
            .map(|(_, _, permission)| *permission)
    });
    Needs::User(listed.unwrap_or(Permission::Admin))
}

/// The `authorization` metadata of a call.
enum Credentials<'a> {
    None,
    Token(&'a [u8]),
    Password(Vec<u8>, Vec<u8>),
    Malformed,
}

fn credentials(headers: &http::HeaderMap) -> Credentials<'_> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Credentials::None;
    };
    let value = value.as_bytes();
    let Some(space) = value.iter().position(|b| *b == b' ') else {
        return Credentials::Malformed;
    };
    let (scheme, rest) = (&value[..space], value[space + 1..].trim_ascii());
    if scheme.eq_ignore_ascii_case(b"Bearer") {
        return Credentials::Token(rest);
    }
    if scheme.eq_ignore_ascii_case(b"Basic") {
        if let Some(decoded) = base64_decode(rest) {
            if let Some(colon) = decoded.iter().position(|b| *b == b':') {
                return Credentials::Password(
                    decoded[..colon].to_vec(),
                    decoded[colon + 1..].to_vec(),
                );
            }
        }
    }
    Credentials::Malformed
}

/// Standard base64 (RFC 4648, with padding), as HTTP Basic credentials are written.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for (i, chunk) in text.chunks(4).enumerate() {
        let last = i == text.len() / 4 - 1;
        let padding = chunk.iter().rev().take_while(|c| **c == b'=').count();
        if padding > 2 || (padding > 0 && !last) {
            return None;
        }
        let mut bits = 0u32;
        for c in &chunk[..4 - padding] {
            bits = bits << 6 | value(*c)?;
        }
        bits <<= 6 * padding as u32;
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - padding]);
    }
    Some(out)
}

/// The answer to a call, if it is refused.
fn refusal(
    users: &Directory,
    path: &str,
    auth: Option<PeerAuth>,
    headers: &http::HeaderMap,
) -> Option<tonic::Status> {
    let permission = match needs(path) {
        Needs::Nothing => return None,
        // Let through unless the connection is known to be plaintext (no TLS configured) or
        // to carry a node certificate.
        Needs::NodeCertificate => {
            return (!matches!(
                auth,
                Some(PeerAuth::Plaintext | PeerAuth::Tls { node: true })
            ))
            .then(|| {
                tonic::Status::unauthenticated(
                    "node-to-node calls need a node certificate from this cluster's CA",
                )
            })
        }
        Needs::User(permission) => permission,
    };
    let users = users.current();
    let user = match credentials(headers) {
        Credentials::None => match users.anonymous() {
            Some(user) => user,
            None => {
                return Some(tonic::Status::unauthenticated(
                    "credentials required: send `authorization: Bearer <token>` or `authorization: Basic <base64 of user:password>`",
                ))
            }
        },
        Credentials::Token(token) => match users.by_token(token) {
            Some(user) => user,
            None => return Some(tonic::Status::unauthenticated("invalid token")),
        },
        Credentials::Password(name, password) => {
            match users.authenticate(Some(&name), &password) {
                Ok(user) => user,
                Err(_) => {
                    // Escaped and cut short: the name is the client's, unchecked.
                    let shown = String::from_utf8_lossy(&name[..name.len().min(64)]).into_owned();
                    tracing::info!(user = ?shown, "gRPC authentication failed");
                    return Some(tonic::Status::unauthenticated(
                        "invalid username-password pair",
                    ));
                }
            }
        }
        Credentials::Malformed => {
            return Some(tonic::Status::unauthenticated(
                "malformed authorization: expected `Bearer <token>` or `Basic <base64 of user:password>`",
            ))
        }
    };
    (!user.role.allows(permission)).then(|| {
        tonic::Status::permission_denied(format!(
            "user {} ({}) may not call {path}",
            user.name, user.role
        ))
    })
}

/// The tower layer that applies the rules above to every call.
#[derive(Clone)]
pub struct GuardLayer {
    pub users: Arc<Directory>,
}

impl<S> tower_layer::Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            users: self.users.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    users: Arc<Directory>,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for Guard<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let auth = request.extensions().get::<Peer>().map(|p| p.auth);
        if let Some(status) = refusal(&self.users, request.uri().path(), auth, request.headers()) {
            return Box::pin(async move { Ok(status.into_http()) });
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn every_client_method_is_listed_once_and_nothing_else() {
        let set = prost_types::FileDescriptorSet::decode(conclave_proto::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set decodes");
        let mut in_proto = Vec::new();
        for file in set.file.iter().filter(|f| f.package() == "conclave.v1") {
            for service in &file.service {
                for method in &service.method {
                    in_proto.push((service.name().to_string(), method.name().to_string()));
                }
            }
        }
        let mut listed: Vec<_> = METHODS
            .iter()
            .map(|(s, m, _)| (s.to_string(), m.to_string()))
            .collect();
        in_proto.sort();
        listed.sort();
        assert_eq!(listed, in_proto);
    }

    #[test]
    fn calls_need_what_the_table_says() {
        assert_eq!(needs("/conclave.v1.Kv/Get"), Needs::User(Permission::Read));
        assert_eq!(needs("/conclave.v1.Kv/Set"), Needs::User(Permission::Write));
        assert_eq!(
            needs("/conclave.v1.Cluster/RemoveMember"),
            Needs::User(Permission::Admin)
        );
        assert_eq!(
            needs("/conclave.v1.Kv/NoSuch"),
            Needs::User(Permission::Admin)
        );
        assert_eq!(needs("/conclave.peer.v1.Peer/Vote"), Needs::NodeCertificate);
        assert_eq!(needs("/grpc.health.v1.Health/Check"), Needs::Nothing);
    }

    #[test]
    fn basic_credentials_decode() {
        assert_eq!(base64_decode(b"b3BzOm9wcy1wYXNz").unwrap(), b"ops:ops-pass");
        assert_eq!(base64_decode(b"YTpi").unwrap(), b"a:b");
        assert_eq!(base64_decode(b"YTpiYw==").unwrap(), b"a:bc");
        assert_eq!(base64_decode(b"YTpiY2Q=").unwrap(), b"a:bcd");
        assert!(base64_decode(b"YTpi*").is_none());
        assert!(base64_decode(b"YT==YTpi").is_none());
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", "Basic b3BzOm9wcy1wYXNz".parse().unwrap());
        assert!(matches!(
            credentials(&headers),
            Credentials::Password(u, p) if u == b"ops" && p == b"ops-pass"
        ));
        headers.insert("authorization", "Bearer abc".parse().unwrap());
        assert!(matches!(credentials(&headers), Credentials::Token(b"abc")));
        headers.insert("authorization", "Digest x".parse().unwrap());
        assert!(matches!(credentials(&headers), Credentials::Malformed));
    }
}
