//! The mesh: a `Mesh.Relay` stream from this node to every other member, carrying the messages
//! published here in order, and the service receiving other nodes' streams.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use conclave_proto::peer::mesh_client::MeshClient;
use conclave_proto::peer::mesh_server::{Mesh, MeshServer};
use conclave_proto::peer::{RelayAck, RelayBatch, RelayedMessage};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{Hub, Published, Stats};

/// Messages queued towards one peer before new ones are dropped.
const RELAY_QUEUE: usize = 65_536;
/// Most messages sent in one batch.
const RELAY_BATCH: usize = 512;
/// A message still queued after this long (its peer was unreachable) is dropped: pub/sub is for
/// the present, and request/response protocols on top of it have given up by then.
const RELAY_MAX_AGE: Duration = Duration::from_secs(2);
/// How often the set of peers is compared with the membership without a change being reported.
const MEMBERSHIP_CHECK: Duration = Duration::from_secs(5);
/// Pause before reconnecting to a peer whose stream failed.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

struct Queued {
    message: Arc<Published>,
    at: Instant,
}

struct Relay {
    address: String,
    queue: mpsc::Sender<Queued>,
    task: JoinHandle<()>,
}

/// The outgoing queues, one per peer.
#[derive(Default)]
pub(crate) struct Relays {
    peers: Mutex<BTreeMap<u64, Relay>>,
}

impl Relays {
    /// Queues `message` towards every peer; never waits.
    pub(crate) fn send(&self, message: &Arc<Published>, stats: &Stats) {
        let peers = self.peers.lock().expect("relays poisoned");
        for relay in peers.values() {
            let queued = Queued {
                message: message.clone(),
                at: Instant::now(),
            };
            if relay.queue.try_send(queued).is_err() {
                stats.dropped_relay.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Keeps one relay per other member, following membership changes (as openraft reports them),
/// until the hub is gone.
pub(crate) async fn maintain_relays(hub: Weak<Hub>) {
    let Some(mut metrics) = hub.upgrade().map(|h| h.node.raft().metrics()) else {
        return;
    };
    loop {
        {
            let Some(hub) = hub.upgrade() else { return };
            reconcile(&hub);
        }
        // Wake on the next membership change (metrics change on every log write, so compare the
        // membership's log id), or now and then to notice the hub is gone.
        let seen = *metrics.borrow().membership_config.log_id();
        let changed = tokio::time::timeout(
            MEMBERSHIP_CHECK,
            metrics.wait_for(|m| *m.membership_config.log_id() != seen),
        )
        .await;
        if let Ok(Err(_)) = changed {
            return; // Raft stopped.
        }
    }
}

/// Starts a relay for each member without one; stops those of removed or moved members.
fn reconcile(hub: &Arc<Hub>) {
    let members: BTreeMap<u64, String> = hub.node.other_members().into_iter().collect();
    let mut peers = hub.relays.peers.lock().expect("relays poisoned");
    peers.retain(|id, relay| {
        let keep = members.get(id) == Some(&relay.address);
        if !keep {
            relay.task.abort();
        }
        keep
    });
    for (id, address) in members {
        if peers.contains_key(&id) {
            continue;
        }
        let (queue, pending) = mpsc::channel(RELAY_QUEUE);
        let task = tokio::spawn(relay(Arc::downgrade(hub), address.clone(), pending));
        peers.insert(
            id,
            Relay {
                address,
                queue,
                task,
            },
        );
    }
}

/// Streams the queue to the peer at `address`, reconnecting after failures.
async fn relay(hub: Weak<Hub>, address: String, mut pending: mpsc::Receiver<Queued>) {
    loop {
        let Some((peers, origin)) = hub.upgrade().map(|h| (h.node.peers().clone(), h.node.id()))
        else {
            return;
        };
        let channel = match peers.dedicated_channel(&address) {
            Ok(channel) => channel,
            Err(e) => {
                tracing::warn!("pub/sub relay to {address}: {e}");
                tokio::time::sleep(RECONNECT_PAUSE * 10).await;
                continue;
            }
        };
        let (batches, outgoing) = mpsc::channel::<RelayBatch>(32);
        let request = peers.stamp(Request::new(ReceiverStream::new(outgoing)));
        // The call runs as its own task, so it makes progress (sending the stream's batches)
        // while this loop waits for room in `batches`.
        let mut call = tokio::spawn(async move { MeshClient::new(channel).relay(request).await });
        loop {
            tokio::select! {
                result = &mut call => {
                    if let Ok(Err(status)) = result {
                        tracing::debug!("pub/sub relay to {address} ended: {}", status.message());
                    }
                    break;
                }
                first = pending.recv() => {
                    let Some(first) = first else { return };
                    let mut queued = vec![first];
                    while queued.len() < RELAY_BATCH {
                        match pending.try_recv() {
                            Ok(more) => queued.push(more),
                            Err(_) => break,
                        }
                    }
                    let fresh = queued.len();
                    let messages: Vec<RelayedMessage> = queued
                        .into_iter()
                        .filter(|q| q.at.elapsed() < RELAY_MAX_AGE)
                        .map(|q| RelayedMessage {
                            channel: q.message.channel.clone(),
                            payload: q.message.payload.clone(),
                            revision: q.message.revision,
                        })
                        .collect();
                    if let Some(hub) = hub.upgrade() {
                        let stale = (fresh - messages.len()) as u64;
                        hub.stats.dropped_relay.fetch_add(stale, Ordering::Relaxed);
                    }
                    if messages.is_empty() {
                        continue;
                    }
                    let batch = RelayBatch { origin_node: origin, messages };
                    if batches.send(batch).await.is_err() {
                        break;
                    }
                }
            }
        }
        call.abort();
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

/// Receives other nodes' relay streams and delivers their messages here, in order per stream.
#[derive(Clone)]
pub struct MeshService {
    hub: Arc<Hub>,
}

impl MeshService {
    pub(crate) fn new(hub: Arc<Hub>) -> Self {
        MeshService { hub }
    }

    pub fn into_server(self) -> MeshServer<Self> {
        MeshServer::new(self)
    }
}

#[tonic::async_trait]
impl Mesh for MeshService {
    async fn relay(
        &self,
        request: Request<Streaming<RelayBatch>>,
    ) -> Result<Response<RelayAck>, Status> {
        self.hub.node.admit(&request).await?;
        let mut stream = request.into_inner();
        while let Some(batch) = stream.message().await? {
            for message in batch.messages {
                let published = Arc::new(Published {
                    channel: message.channel,
                    payload: message.payload,
                    revision: message.revision,
                    origin: batch.origin_node,
                });
                self.hub.deliver(published).await;
            }
        }
        Ok(Response::new(RelayAck {}))
    }
}
