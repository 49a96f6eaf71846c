//! Publish and subscribe; subscribers re-subscribe on another node after a node loss.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use conclave_proto::v1::{self, pub_sub_client::PubSubClient, subscribe_response::Event};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Code;

use crate::{node_unreachable, Client, Error};

/// Messages a subscriber holds before the stream stops reading (the node then disconnects it
/// if it stays behind).
const SUBSCRIBER_BUFFER: usize = 10_000;

/// A message received by a [`Subscriber`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub channel: Vec<u8>,
    pub payload: Vec<u8>,
    /// The pattern that matched, for a pattern subscription.
    pub pattern: Option<Vec<u8>>,
    pub origin_node: u64,
    /// The publisher's session revision, applied by the delivering node before delivery.
    pub revision: u64,
}

impl Client {
    /// Publishes `payload` on `channel`, carrying this client's session revision so subscribers
    /// that read upon receipt see this client's earlier writes. Returns the receivers on the
    /// serving node.
    pub async fn publish(
        &self,
        channel: impl AsRef<[u8]>,
        payload: impl AsRef<[u8]>,
    ) -> Result<u64, Error> {
        let request = v1::PublishRequest {
            channel: channel.as_ref().to_vec(),
            payload: payload.as_ref().to_vec(),
            min_revision: self.session_revision(),
        };
        let response = self
            .call(request, |channel, r| async move {
                PubSubClient::new(channel).publish(r).await
            })
            .await?;
        Ok(response.receivers)
    }

    /// A subscriber with no subscriptions yet.
    pub fn subscriber(&self) -> Subscriber {
        let (control, requests) = mpsc::unbounded_channel();
        let (deliver, messages) = mpsc::channel(SUBSCRIBER_BUFFER);
        let task = tokio::spawn(run(self.clone(), requests, deliver));
        Subscriber {
            control,
            messages,
            task,
        }
    }
}

struct Change {
    request: v1::SubscribeRequest,
    done: oneshot::Sender<()>,
}

/// A pub/sub subscriber. Messages are at most once: those published while it was moving to
/// another node after a node loss are not delivered.
pub struct Subscriber {
    control: mpsc::UnboundedSender<Change>,
    messages: mpsc::Receiver<Result<Message, Error>>,
    task: JoinHandle<()>,
}

impl Subscriber {
    async fn change(&self, request: v1::SubscribeRequest) -> Result<(), Error> {
        let (done, acknowledged) = oneshot::channel();
        self.control
            .send(Change { request, done })
            .map_err(|_| Error::Disconnected("the subscriber has stopped".into()))?;
        acknowledged
            .await
            .map_err(|_| Error::Disconnected("the subscriber has stopped".into()))
    }

    fn names<N: AsRef<[u8]>>(names: &[N]) -> Vec<Vec<u8>> {
        names.iter().map(|n| n.as_ref().to_vec()).collect()
    }

    /// Subscribes to channels; returns once the node has them in effect.
    pub async fn subscribe<N: AsRef<[u8]>>(&self, channels: &[N]) -> Result<(), Error> {
        self.change(v1::SubscribeRequest {
            subscribe: Self::names(channels),
            ..Default::default()
        })
        .await
    }

    pub async fn unsubscribe<N: AsRef<[u8]>>(&self, channels: &[N]) -> Result<(), Error> {
        self.change(v1::SubscribeRequest {
            unsubscribe: Self::names(channels),
            ..Default::default()
        })
        .await
    }

    /// Subscribes to glob patterns (`*`, `?`, `[...]`).
    pub async fn psubscribe<N: AsRef<[u8]>>(&self, patterns: &[N]) -> Result<(), Error> {
        self.change(v1::SubscribeRequest {
            psubscribe: Self::names(patterns),
            ..Default::default()
        })
        .await
    }

    pub async fn punsubscribe<N: AsRef<[u8]>>(&self, patterns: &[N]) -> Result<(), Error> {
        self.change(v1::SubscribeRequest {
            punsubscribe: Self::names(patterns),
            ..Default::default()
        })
        .await
    }

    /// The next message; None once the subscriber has stopped.
    pub async fn next(&mut self) -> Option<Result<Message, Error>> {
        self.messages.recv().await
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The subscriptions held, to restore them on another node.
#[derive(Default)]
struct Held {
    channels: BTreeSet<Vec<u8>>,
    patterns: BTreeSet<Vec<u8>>,
}

impl Held {
    fn apply(&mut self, r: &v1::SubscribeRequest) {
        self.channels.extend(r.subscribe.iter().cloned());
        r.unsubscribe.iter().for_each(|c| {
            self.channels.remove(c);
        });
        self.patterns.extend(r.psubscribe.iter().cloned());
        r.punsubscribe.iter().for_each(|p| {
            self.patterns.remove(p);
        });
    }
}

/// Keeps a subscription stream open on some node, re-subscribing after a node loss.
async fn run(
    client: Client,
    mut changes: mpsc::UnboundedReceiver<Change>,
    deliver: mpsc::Sender<Result<Message, Error>>,
) {
    let mut held = Held::default();
    // Acknowledgements the node owes, in order; each releases the waiters it lists.
    let mut owed: VecDeque<Vec<oneshot::Sender<()>>> = VecDeque::new();
    loop {
        let (index, channel) = client.channel();
        let (requests, outgoing) = mpsc::unbounded_channel();
        let opened = PubSubClient::new(channel)
            .subscribe(UnboundedReceiverStream::new(outgoing))
            .await;
        let mut stream = match opened {
            Ok(response) => response.into_inner(),
            Err(status) if node_unreachable(&status) => {
                client.fail_over_from(index);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(status) => {
                let _ = deliver.send(Err(status.into())).await;
                return;
            }
        };
        // Restore what was held, acknowledging every change still owed with it.
        let waiting: Vec<_> = owed.drain(..).flatten().collect();
        let _ = requests.send(v1::SubscribeRequest {
            subscribe: held.channels.iter().cloned().collect(),
            psubscribe: held.patterns.iter().cloned().collect(),
            ..Default::default()
        });
        owed.push_back(waiting);
        loop {
            tokio::select! {
                change = changes.recv() => {
                    let Some(change) = change else { return };
                    held.apply(&change.request);
                    let _ = requests.send(change.request);
                    owed.push_back(vec![change.done]);
                }
                response = stream.message() => match response {
                    Ok(Some(v1::SubscribeResponse { event: Some(Event::Message(m)) })) => {
                        client.observe_revision(m.revision);
                        let message = Message {
                            channel: m.channel,
                            payload: m.payload,
                            pattern: m.pattern,
                            origin_node: m.origin_node,
                            revision: m.revision,
                        };
                        if deliver.send(Ok(message)).await.is_err() {
                            return;
                        }
                    }
                    Ok(Some(v1::SubscribeResponse { event: Some(Event::Subscriptions(_)) })) => {
                        for done in owed.pop_front().unwrap_or_default() {
                            let _ = done.send(());
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(status) if status.code() == Code::ResourceExhausted => {
                        let _ = deliver.send(Err(Error::Disconnected(status.message().to_string()))).await;
                        return;
                    }
                    Err(status) if node_unreachable(&status) => {
                        client.fail_over_from(index);
                        break;
                    }
                    Err(status) => {
                        let _ = deliver.send(Err(status.into())).await;
                        return;
                    }
                }
            }
        }
    }
}
