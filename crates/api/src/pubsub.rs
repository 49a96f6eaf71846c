//! The `PubSub` service: gRPC publishers and subscribers on the node's pub/sub hub.

use std::pin::Pin;

use conclave_proto::v1::pub_sub_server::{PubSub, PubSubServer};
use conclave_proto::v1::*;
use conclave_pubsub::{Change, Item};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// Serves `conclave.v1.PubSub` from one node.
#[derive(Clone)]
pub struct PubSubService {
    hub: conclave_pubsub::PubSub,
}

impl PubSubService {
    pub fn new(hub: conclave_pubsub::PubSub) -> Self {
        PubSubService { hub }
    }

    pub fn into_server(self) -> PubSubServer<Self> {
        PubSubServer::new(self).max_decoding_message_size(crate::MAX_REQUEST_BYTES)
    }
}

type SubscribeStream =
    Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl PubSub for PubSubService {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let r = request.into_inner();
        if r.channel.is_empty() {
            return Err(Status::invalid_argument("a message needs a channel"));
        }
        let receivers = self.hub.publish(r.channel, r.payload, r.min_revision);
        Ok(Response::new(PublishResponse {
            receivers: receivers as u64,
        }))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<Streaming<SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let mut changes = request.into_inner();
        let (subscriptions, receiver) = self.hub.subscriber();
        // Subscription changes are applied as they arrive; the task ends with the client's
        // request stream (the receiver keeps the subscriptions alive until the response ends).
        tokio::spawn(async move {
            while let Ok(Some(r)) = changes.message().await {
                subscriptions
                    .apply(vec![
                        (Change::Subscribe, r.subscribe),
                        (Change::Unsubscribe, r.unsubscribe),
                        (Change::PSubscribe, r.psubscribe),
                        (Change::PUnsubscribe, r.punsubscribe),
                    ])
                    .await;
            }
        });
        let responses = receiver.map(|item| match item {
            Ok(Item::Message(delivery)) => Ok(SubscribeResponse {
                event: Some(subscribe_response::Event::Message(Message {
                    channel: delivery.message.channel.clone(),
                    payload: delivery.message.payload.clone(),
                    pattern: delivery.pattern.map(|p| p.to_vec()),
                    origin_node: delivery.message.origin,
                    revision: delivery.message.revision,
                })),
            }),
            Ok(Item::Subscriptions { channels, patterns }) => Ok(SubscribeResponse {
                event: Some(subscribe_response::Event::Subscriptions(
                    SubscriptionCount {
                        channels: channels as u64,
                        patterns: patterns as u64,
                    },
                )),
            }),
            Err(disconnected) => Err(Status::resource_exhausted(disconnected.reason)),
        });
        Ok(Response::new(Box::pin(responses)))
    }
}
