//! Pub/sub on a connection: (P)SUBSCRIBE and their kin, PUBSUB introspection, and delivering
//! messages between replies.

use super::{Connection, Subscriber, FLUSH_AT, PUSH_BATCH};
use crate::protocol::Reply;
use conclave_pubsub::{Change, Item};

pub(super) async fn next_item(
    subscriber: &mut Option<Subscriber>,
) -> Option<Result<Item, conclave_pubsub::Disconnected>> {
    match subscriber {
        Some(s) => s.receiver.recv().await,
        None => std::future::pending().await,
    }
}

impl Connection {
    /// Encodes a pub/sub item and whatever else is ready; false ends the connection.
    pub(super) fn deliver(
        &mut self,
        first: Option<Result<Item, conclave_pubsub::Disconnected>>,
        output: &mut Vec<u8>,
    ) -> bool {
        if !self.follow_users() {
            return false; // its user was removed: no more messages for it
        }
        let mut item = first;
        for _ in 0..PUSH_BATCH {
            match item {
                Some(Ok(Item::Message(delivery))) => {
                    let message = &delivery.message;
                    let push = match &delivery.pattern {
                        Some(pattern) => Reply::Push(vec![
                            Reply::bulk("pmessage"),
                            Reply::bulk(pattern.to_vec()),
                            Reply::bulk(message.channel.clone()),
                            Reply::bulk(message.payload.clone()),
                        ]),
                        None => Reply::Push(vec![
                            Reply::bulk("message"),
                            Reply::bulk(message.channel.clone()),
                            Reply::bulk(message.payload.clone()),
                        ]),
                    };
                    push.encode(self.version, output);
                }
                Some(Ok(Item::Subscriptions { .. })) => {}
                Some(Err(disconnected)) => {
                    tracing::info!(peer = %self.peer, reason = %disconnected, "RESP subscriber disconnected");
                    return false;
                }
                None => return self.subscriber.is_some(),
            }
            let Some(subscriber) = &mut self.subscriber else {
                return true;
            };
            if output.len() >= FLUSH_AT {
                // Unread messages stay in the hub's queue, where its limits count them.
                return true;
            }
            // Take what is already queued without waiting.
            let waker = futures_noop_waker();
            let mut cx = std::task::Context::from_waker(&waker);
            item = match subscriber.receiver.poll_recv(&mut cx) {
                std::task::Poll::Ready(next) => next,
                std::task::Poll::Pending => return true,
            };
        }
        true
    }

    /// SUBSCRIBE and its kin. A new subscription answers once the other members know of it.
    pub(super) async fn change_subscriptions(
        &mut self,
        name: &str,
        args: &[Vec<u8>],
    ) -> Vec<Reply> {
        let change = match name {
            "subscribe" => Change::Subscribe,
            "unsubscribe" => Change::Unsubscribe,
            "psubscribe" => Change::PSubscribe,
            _ => Change::PUnsubscribe,
        };
        let adding = matches!(change, Change::Subscribe | Change::PSubscribe);
        if self.subscriber.is_none() {
            if !adding {
                // Nothing to unsubscribe from: Redis still answers once.
                return vec![Reply::Push(vec![
                    Reply::bulk(name),
                    Reply::Nil,
                    Reply::Integer(0),
                ])];
            }
            let (subscriptions, receiver) = self.shared.hub.subscriber();
            self.subscriber = Some(Subscriber {
                subscriptions,
                receiver,
            });
        }
        let subscriber = self.subscriber.as_ref().expect("created above");
        let counts = match subscriber.subscriptions.change(change, args.to_vec()) {
            Ok(counts) => counts,
            Err(refused) => {
                if subscriber.subscriptions.counts() == (0, 0) {
                    self.subscriber = None;
                }
                return vec![Reply::error(format!("ERR {refused}"))];
            }
        };
        if adding {
            subscriber.subscriptions.settled().await;
        }
        let mut replies: Vec<Reply> = counts
            .into_iter()
            .map(|(channel, channels, patterns)| {
                Reply::Push(vec![
                    Reply::bulk(name),
                    Reply::bulk(channel),
                    Reply::Integer((channels + patterns) as i64),
                ])
            })
            .collect();
        let (channels, patterns) = subscriber.subscriptions.counts();
        if replies.is_empty() {
            replies.push(Reply::Push(vec![
                Reply::bulk(name),
                Reply::Nil,
                Reply::Integer((channels + patterns) as i64),
            ]));
        }
        if channels + patterns == 0 {
            self.subscriber = None;
        }
        replies
    }

    pub(super) fn pubsub(&self, args: &[Vec<u8>]) -> Reply {
        let hub = &self.shared.hub;
        let sub = args[0].to_ascii_uppercase();
        match (sub.as_slice(), &args[1..]) {
            (b"CHANNELS", [] | [_]) => Reply::Array(
                hub.channels(args.get(1).map(Vec::as_slice))
                    .into_iter()
                    .map(Reply::Bulk)
                    .collect(),
            ),
            (b"NUMSUB", channels) => Reply::Array(
                channels
                    .iter()
                    .flat_map(|c| {
                        [
                            Reply::bulk(c.clone()),
                            Reply::Integer(hub.subscriber_count(c) as i64),
                        ]
                    })
                    .collect(),
            ),
            (b"NUMPAT", []) => Reply::Integer(hub.pattern_count() as i64),
            _ => Reply::error(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try PUBSUB HELP.",
                String::from_utf8_lossy(&args[0])
            )),
        }
    }
}

/// A waker that does nothing: for taking already-queued items without waiting.
pub(super) fn futures_noop_waker() -> std::task::Waker {
    std::task::Waker::noop().clone()
}
