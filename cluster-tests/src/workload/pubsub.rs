//! The pub/sub workload: a publisher on every node sends numbered messages on one channel over
//! RESP, and a subscriber on every node receives them. Every fifth message is causal: the
//! publisher first writes a marker key of that message's own on the same connection, and the
//! subscriber, on receipt, reads that key on its own node at `local` consistency (through the
//! SDK): the node must already have applied the write (a message is delivered only after the
//! publisher's session revision). One key per message: a marker write whose outcome was unknown
//! may be applied late, and must not undo a later one.

use std::time::Duration;

use conclave_client::{Client, Consistency};

use super::{ClientContext, RespClient, RESP_TIMEOUT};
use crate::history::{Call, Outcome, Received};
use crate::resp::{Connection, Reply};

/// The channel every message goes to.
pub const CHANNEL: &str = "chaos:bus";
/// How long after the run subscribers keep listening for messages still on their way (the mesh
/// drops a message it could not relay within 2 s).
const LINGER: Duration = Duration::from_secs(3);

fn marker(publisher: usize, seq: u64) -> String {
    format!("pubsub:marker:{publisher}:{seq}")
}

pub async fn publisher(mut context: ClientContext) {
    let mut client = RespClient::new(&context.address);
    let (history, id, node) = (context.history.clone(), context.id, context.node);
    let mut seq = 0u64;
    while context.running() {
        if !client.ready().await {
            continue;
        }
        seq += 1;
        let mut marked = false;
        if seq.is_multiple_of(5) {
            let reply = client
                .call(&[b"SET", marker(id, seq).as_bytes(), b"1"])
                .await;
            marked = matches!(reply, Ok(Reply::Simple(ref s)) if s == "OK");
            if !client.ready().await {
                continue;
            }
        }
        let publish = history.invoke(id, node, "resp", CHANNEL);
        let payload = format!("{id}:{seq}:{}", u8::from(marked));
        let reply = client
            .call(&[b"PUBLISH", CHANNEL.as_bytes(), payload.as_bytes()])
            .await;
        let outcome = match reply {
            Ok(Reply::Integer(_)) => Outcome::Ok,
            Ok(Reply::Error(e)) => Outcome::Fail(e),
            Ok(other) => Outcome::Unknown(format!("unexpected reply {other:?}")),
            Err(e) => Outcome::Unknown(e.to_string()),
        };
        history.complete(publish, Call::Publish { seq, marked }, outcome);
        tokio::time::sleep(Duration::from_millis(10 + context.rng.below(30))).await;
    }
}

/// Subscribes on its node and records each subscription (from its confirmation until the
/// connection ends) as one operation; re-subscribes after a lost connection.
pub async fn subscriber(context: ClientContext) {
    let (history, id, node) = (context.history.clone(), context.id, context.node);
    // Causal reads go to this node only, at `local`: what the node has applied.
    let reader = Client::connect(&context.grpc[..1]).await.ok();
    let linger_until = context.stop_us + LINGER.as_micros() as u64;
    while history.now_us() < linger_until {
        let Ok(mut connection) = Connection::connect(&context.address, RESP_TIMEOUT).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let confirmed = connection
            .call(&[b"SUBSCRIBE", CHANNEL.as_bytes()])
            .await
            .is_ok_and(|reply| matches!(reply, Reply::Array(Some(ref items)) if items.len() == 3));
        if !confirmed {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let subscription = history.invoke(id, node, "resp", CHANNEL);
        let mut messages = Vec::new();
        let ended = loop {
            let left = linger_until.saturating_sub(history.now_us());
            if left == 0 {
                break Outcome::Ok;
            }
            let frame = match connection.receive(Duration::from_micros(left)).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break Outcome::Ok,
                Err(e) => break Outcome::Fail(e.to_string()),
            };
            let Some((publisher, seq, marked)) = message(&frame) else {
                break Outcome::Fail(format!("not a message: {frame:?}"));
            };
            let causal = match (&reader, marked) {
                (Some(reader), true) => {
                    let read = reader.get_with(marker(publisher, seq), Consistency::Local);
                    match tokio::time::timeout(Duration::from_secs(1), read).await {
                        Ok(Ok(kv)) => Some(kv.is_some()),
                        _ => None,
                    }
                }
                _ => None,
            };
            messages.push(Received {
                publisher,
                seq,
                causal,
                checked_us: if causal.is_some() {
                    history.now_us()
                } else {
                    0
                },
            });
        };
        history.complete(subscription, Call::Subscription { messages }, ended);
    }
}

/// `(publisher, seq, marked)` of a `message` push frame.
fn message(frame: &Reply) -> Option<(usize, u64, bool)> {
    let Reply::Array(Some(items)) = frame else {
        return None;
    };
    let [Reply::Bulk(Some(kind)), _, Reply::Bulk(Some(payload))] = items.as_slice() else {
        return None;
    };
    if kind != b"message" {
        return None;
    }
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.split(':');
    let publisher = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let marked = parts.next()? == "1";
    Some((publisher, seq, marked))
}
