//! The mesh: a `Mesh.Relay` stream from this node to every other member, carrying the messages
//! published here in order, and the service receiving other nodes' streams.
//!
//! A relay that fails reconnects on a new stream, while the receiver may still be delivering
//! from the old one (its messages waiting for their revision, or a batch half delivered, or the
//! old stream's bytes only now read after a stall). The receiver therefore delivers one origin's
//! streams one at a time ([`Lanes`]): the newest stream, by the sender's numbering, is current,
//! and a superseded one drops what it has not delivered yet.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use conclave_proto::peer::mesh_client::MeshClient;
use conclave_proto::peer::mesh_server::{Mesh, MeshServer};
use conclave_proto::peer::{RelayAck, RelayBatch, RelayedMessage};
use tokio::sync::{mpsc, watch};
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
    /// Numbers this process's relay streams (`RelayBatch.sender_epoch` and `stream`).
    epoch: Epoch,
    streams: AtomicU64,
}

/// A random number chosen when the process starts (never 0).
struct Epoch(u64);

impl Default for Epoch {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        hasher.write_u128(nanos);
        hasher.write_u32(std::process::id());
        Epoch(hasher.finish() | 1)
    }
}

impl Relays {
    /// The epoch and number of a new relay stream, later than every one opened before.
    fn next_stream(&self) -> (u64, u64) {
        (
            self.epoch.0,
            self.streams.fetch_add(1, Ordering::Relaxed) + 1,
        )
    }

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
        let Some((peers, origin, (sender_epoch, stream))) = hub
            .upgrade()
            .map(|h| (h.node.peers().clone(), h.node.id(), h.relays.next_stream()))
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
                    let batch = RelayBatch {
                        origin_node: origin,
                        messages,
                        sender_epoch,
                        stream,
                    };
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

/// The incoming relay streams, per origin node. One stream per origin is current; only it
/// delivers, and one message at a time, so a stream superseded while it delivers a message
/// finishes that one before its successor starts.
#[derive(Default)]
pub(crate) struct Lanes {
    origins: Mutex<HashMap<u64, Arc<Lane>>>,
    tickets: AtomicU64,
}

struct Lane {
    /// The current stream, if any.
    current: watch::Sender<Option<Current>>,
    /// Held while a message of this origin is being delivered.
    delivering: tokio::sync::Mutex<()>,
}

#[derive(Clone, Copy)]
struct Current {
    /// Which handler delivers: unique per incoming stream.
    ticket: u64,
    /// The stream's numbering by its sender.
    sender_epoch: u64,
    stream: u64,
}

/// An incoming stream's right to deliver its origin's messages, while it is current.
struct Entitlement {
    lane: Arc<Lane>,
    ticket: u64,
}

impl Lanes {
    /// Makes the stream numbered (`sender_epoch`, `stream`) by `origin` its current one, unless
    /// a later stream of the same sender process already is (then None: the stream is stale).
    fn enter(&self, origin: u64, sender_epoch: u64, stream: u64) -> Option<Entitlement> {
        let lane = self
            .origins
            .lock()
            .expect("lanes poisoned")
            .entry(origin)
            .or_insert_with(|| {
                Arc::new(Lane {
                    current: watch::Sender::new(None),
                    delivering: tokio::sync::Mutex::new(()),
                })
            })
            .clone();
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed) + 1;
        let entered = lane.current.send_if_modified(|current| {
            let newer = match current {
                None => true,
                // An unnumbered stream, or one of another process of the sender (it
                // restarted), cannot be ordered against the current one: the later arrival wins.
                Some(c) => sender_epoch == 0 || c.sender_epoch != sender_epoch || stream > c.stream,
            };
            if newer {
                *current = Some(Current {
                    ticket,
                    sender_epoch,
                    stream,
                });
            }
            newer
        });
        entered.then_some(Entitlement { lane, ticket })
    }
}

impl Entitlement {
    fn is_current(&self) -> bool {
        self.lane
            .current
            .borrow()
            .is_some_and(|c| c.ticket == self.ticket)
    }

    /// Completes once another stream has superseded this one.
    async fn superseded(&self) {
        let mut current = self.lane.current.subscribe();
        // The sender lives in `self.lane`, so this only returns once superseded.
        let _ = current
            .wait_for(|c| c.is_none_or(|c| c.ticket != self.ticket))
            .await;
    }
}

/// Receives other nodes' relay streams and delivers their messages here, in order per origin.
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
        let mut entitlement = None;
        while let Some(batch) = stream.message().await? {
            let entitled = match &entitlement {
                Some(entitled) => entitled,
                None => {
                    let lanes = &self.hub.lanes;
                    match lanes.enter(batch.origin_node, batch.sender_epoch, batch.stream) {
                        Some(entitled) => entitlement.insert(entitled),
                        None => {
                            // A stream its sender had already replaced: nothing on it is newer
                            // than what its successor delivered.
                            self.drop_relayed(batch.messages.len());
                            break;
                        }
                    }
                }
            };
            if !self.deliver_batch(entitled, batch).await {
                break;
            }
        }
        Ok(Response::new(RelayAck {}))
    }
}

impl MeshService {
    /// Delivers `batch` in order while `entitled` stays current; false once it was superseded
    /// (the rest of the batch is dropped).
    async fn deliver_batch(&self, entitled: &Entitlement, batch: RelayBatch) -> bool {
        let _delivering = entitled.lane.delivering.lock().await;
        let total = batch.messages.len();
        for (done, message) in batch.messages.into_iter().enumerate() {
            let published = Arc::new(Published {
                channel: message.channel,
                payload: message.payload,
                revision: message.revision,
                origin: batch.origin_node,
            });
            if !entitled.is_current()
                || !self
                    .hub
                    .deliver_unless(published, entitled.superseded())
                    .await
            {
                self.drop_relayed(total - done);
                return false;
            }
        }
        true
    }

    fn drop_relayed(&self, messages: usize) {
        self.hub
            .stats
            .dropped_relay
            .fetch_add(messages as u64, Ordering::Relaxed);
    }
}
