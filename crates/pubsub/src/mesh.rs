//! The mesh: a `Mesh.Relay` stream from this node to every other member, carrying the messages
//! published here in order (those the member has subscribers for, see [`crate::interest`]) and
//! this node's own interest, and the service receiving other nodes' streams.
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
use tokio::time::Instant as Deadline;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::interest::{Outbox, Outgoing, Remote, KEEPALIVE, RECEIVER_LEASE, SETTLE_WAIT};
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
    outbox: Arc<Outbox>,
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

    /// Queues `message` towards every peer that has subscribers for it or whose interest is
    /// unknown; never waits. Returns how many subscribers the peers said it reaches.
    pub(crate) fn send(&self, message: &Arc<Published>, lanes: &Lanes, stats: &Stats) -> u64 {
        let peers = self.peers.lock().expect("relays poisoned");
        let mut receivers = 0;
        for (id, relay) in peers.iter() {
            match lanes.receivers(*id, &message.channel) {
                Some(0) => {
                    stats.unrouted.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Some(known) => receivers += known,
                None => {}
            }
            let queued = Queued {
                message: message.clone(),
                at: Instant::now(),
            };
            if relay.queue.try_send(queued).is_err() {
                stats.dropped_relay.fetch_add(1, Ordering::Relaxed);
            }
        }
        receivers
    }

    /// Queues "`subscribers` local subscribers listen on `name`" towards every peer. The caller
    /// holds the registry, so changes are queued in the order they were made.
    pub(crate) fn announce(&self, name: &crate::interest::Name, subscribers: usize) {
        let peers = self.peers.lock().expect("relays poisoned");
        for relay in peers.values() {
            relay.outbox.record(name, subscribers as u64);
        }
    }

    /// Waits until every peer whose stream is up has applied the interest changes queued so
    /// far, or [`SETTLE_WAIT`] has passed.
    pub(crate) async fn settled(&self) {
        let waits: Vec<_> = {
            let peers = self.peers.lock().expect("relays poisoned");
            peers
                .values()
                .filter_map(|r| r.outbox.unsettled())
                .collect()
        };
        let deadline = Deadline::now() + SETTLE_WAIT;
        for mut waiting in waits {
            let until = waiting
                .until
                .map_or(deadline, |until| deadline.min(Deadline::from_std(until)));
            let target = waiting.target;
            let _ = tokio::time::timeout_at(until, waiting.acked.wait_for(|a| *a >= target)).await;
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
        let outbox = Arc::new(Outbox::default());
        let task = tokio::spawn(relay(
            Arc::downgrade(hub),
            address.clone(),
            pending,
            outbox.clone(),
        ));
        peers.insert(
            id,
            Relay {
                address,
                queue,
                outbox,
                task,
            },
        );
    }
}

/// Streams the queue to the peer at `address`, reconnecting after failures: each stream the peer
/// answered starts with this node's whole interest, then carries its changes and the queued
/// messages, and an empty batch when it was idle for [`KEEPALIVE`].
async fn relay(
    hub: Weak<Hub>,
    address: String,
    mut pending: mpsc::Receiver<Queued>,
    outbox: Arc<Outbox>,
) {
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
        // The call runs as its own task, so it makes progress (sending the stream's batches and
        // reading the peer's acknowledgements) while this loop waits for room in `batches`.
        let acknowledged = outbox.clone();
        let (answered, on_answer) = tokio::sync::oneshot::channel();
        let mut call = AbortOnDrop(tokio::spawn(async move {
            let mut client = MeshClient::new(channel)
                .max_decoding_message_size(MAX_RELAY_MESSAGE)
                .max_encoding_message_size(MAX_RELAY_MESSAGE);
            let mut acks = client.relay(request).await?.into_inner();
            let _ = answered.send(());
            while let Some(ack) = acks.message().await? {
                acknowledged.acknowledged(ack.interest_seq);
            }
            Ok::<(), Status>(())
        }));
        let batch = |messages, interest: Option<Outgoing>| {
            let (interest, interest_reset, interest_seq) =
                interest.map_or((Vec::new(), false, 0), |i| (i.interest, i.reset, i.seq));
            RelayBatch {
                origin_node: origin,
                messages,
                sender_epoch,
                stream,
                interest,
                interest_reset,
                interest_seq,
            }
        };
        // Only a stream the peer answered gets this node's interest: a peer that is down holds
        // no copy, so subscribers need not wait for it.
        let answered = tokio::select! {
            result = &mut call.0 => {
                if let Ok(Err(status)) = result {
                    tracing::debug!("pub/sub relay to {address} failed: {}", status.message());
                }
                false
            }
            answer = on_answer => answer.is_ok(),
        };
        let copy = answered
            .then(|| hub.upgrade().map(|h| h.interest_reset(&outbox)))
            .flatten();
        if let Some(copy) = copy {
            let mut sent = true;
            for part in copy {
                sent = sent && batches.send(batch(Vec::new(), Some(part))).await.is_ok();
            }
            let mut keepalive = tokio::time::interval(KEEPALIVE);
            let mut active = true;
            while sent {
                let next = tokio::select! {
                    result = &mut call.0 => {
                        if let Ok(Err(status)) = result {
                            tracing::debug!("pub/sub relay to {address} ended: {}", status.message());
                        }
                        break;
                    }
                    () = outbox.wake.notified() => match outbox.take() {
                        Some(changes) => batch(Vec::new(), Some(changes)),
                        None => continue,
                    },
                    first = pending.recv() => {
                        let Some(first) = first else { return };
                        let messages = fresh_messages(&hub, first, &mut pending);
                        let changes = outbox.take();
                        if messages.is_empty() && changes.is_none() {
                            continue;
                        }
                        batch(messages, changes)
                    }
                    _ = keepalive.tick() => {
                        if std::mem::replace(&mut active, false) {
                            continue;
                        }
                        batch(Vec::new(), None)
                    }
                };
                active = true;
                sent = batches.send(next).await.is_ok();
            }
        }
        drop(call);
        outbox.ended();
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

/// Largest relay batch or acknowledgement: the peers' message limit.
const MAX_RELAY_MESSAGE: usize = conclave_consensus::MAX_PEER_MESSAGE_BYTES;

/// Aborts the task when dropped (a relay stopped by `reconcile` takes its call with it).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `first` and the messages queued behind it, up to a batch, without those that aged while the
/// peer was away (counted as dropped).
fn fresh_messages(
    hub: &Weak<Hub>,
    first: Queued,
    pending: &mut mpsc::Receiver<Queued>,
) -> Vec<RelayedMessage> {
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
    messages
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
    /// What the origin said it has subscribers for; changed only by its current stream.
    interest: Mutex<Remote>,
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
#[derive(Clone)]
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
                    interest: Mutex::default(),
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

    /// How many of `origin`'s subscribers a message on `channel` reaches; None while its interest
    /// is unknown.
    fn receivers(&self, origin: u64, channel: &[u8]) -> Option<u64> {
        let lane = self
            .origins
            .lock()
            .expect("lanes poisoned")
            .get(&origin)?
            .clone();
        let interest = lane.interest.lock().expect("interest poisoned");
        interest.receivers(channel)
    }
}

impl Entitlement {
    fn is_current(&self) -> bool {
        self.lane
            .current
            .borrow()
            .is_some_and(|c| c.ticket == self.ticket)
    }

    /// Applies the origin's interest from this stream; false (nothing applied) once another
    /// stream superseded it. Checked under the interest's lock, so a superseded stream never
    /// applies a change after its successor's full copy.
    fn apply_interest(&self, reset: bool, interest: Vec<conclave_proto::peer::Interest>) -> bool {
        let mut remote = self.lane.interest.lock().expect("interest poisoned");
        let current = self.is_current();
        if current {
            remote.apply(reset, interest);
        }
        current
    }

    /// This stream ended: unless a successor took over, the origin's interest is unknown.
    fn forget_interest(&self) {
        let mut remote = self.lane.interest.lock().expect("interest poisoned");
        if self.is_current() {
            remote.forget();
        }
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
            .max_decoding_message_size(MAX_RELAY_MESSAGE)
            .max_encoding_message_size(MAX_RELAY_MESSAGE)
    }
}

/// Acknowledgements of one incoming stream's interest changes.
type Acks = ReceiverStream<Result<RelayAck, Status>>;
/// Batches read from a stream and not delivered yet.
const DELIVERY_QUEUE: usize = 64;

#[tonic::async_trait]
impl Mesh for MeshService {
    type RelayStream = Acks;

    async fn relay(
        &self,
        request: Request<Streaming<RelayBatch>>,
    ) -> Result<Response<Acks>, Status> {
        self.hub.node.admit(&request).await?;
        let (acks, outgoing) = mpsc::channel(16);
        tokio::spawn(self.clone().receive(request.into_inner(), acks));
        Ok(Response::new(ReceiverStream::new(outgoing)))
    }
}

impl MeshService {
    /// Reads one incoming stream: applies and acknowledges its interest at once, and hands its
    /// messages to a delivery task, so a message waiting for its revision never holds up a
    /// subscription elsewhere.
    async fn receive(
        self,
        mut stream: Streaming<RelayBatch>,
        acks: mpsc::Sender<Result<RelayAck, Status>>,
    ) {
        let mut entitlement: Option<(Entitlement, mpsc::Sender<RelayBatch>)> = None;
        loop {
            let superseded = async {
                match &entitlement {
                    Some((entitled, _)) => entitled.superseded().await,
                    None => std::future::pending().await,
                }
            };
            // A stream silent past the lease (its sender sends keep-alives) is taken as dead:
            // its origin's interest is forgotten, and the origin gets every message until its
            // next stream says it again.
            let next = tokio::select! {
                next = tokio::time::timeout(RECEIVER_LEASE, stream.message()) => next,
                () = superseded => break,
            };
            let Ok(Ok(Some(mut batch))) = next else { break };
            let (entitled, deliveries) = match &entitlement {
                Some(entered) => entered,
                None => {
                    let lanes = &self.hub.lanes;
                    match lanes.enter(batch.origin_node, batch.sender_epoch, batch.stream) {
                        Some(entitled) => {
                            let (deliveries, queue) = mpsc::channel(DELIVERY_QUEUE);
                            tokio::spawn(self.clone().deliver(entitled.clone(), queue));
                            entitlement.insert((entitled, deliveries))
                        }
                        None => {
                            // A stream its sender had already replaced: nothing on it is newer
                            // than what its successor delivered.
                            self.drop_relayed(batch.messages.len());
                            break;
                        }
                    }
                }
            };
            if batch.interest_reset || !batch.interest.is_empty() {
                let interest = std::mem::take(&mut batch.interest);
                if !entitled.apply_interest(batch.interest_reset, interest) {
                    self.drop_relayed(batch.messages.len());
                    break;
                }
                if batch.interest_seq > 0 {
                    let ack = RelayAck {
                        interest_seq: batch.interest_seq,
                    };
                    let _ = acks.send(Ok(ack)).await;
                }
            }
            if batch.messages.is_empty() {
                continue;
            }
            // Never wait for delivery (messages held for their revision): the stream's interest
            // must keep flowing. Messages that find the queue full are dropped (at most once).
            match deliveries.try_send(batch) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(unsent)) => {
                    self.drop_relayed(unsent.messages.len());
                }
                Err(mpsc::error::TrySendError::Closed(unsent)) => {
                    self.drop_relayed(unsent.messages.len());
                    break;
                }
            }
        }
        if let Some((entitled, _)) = entitlement {
            entitled.forget_interest();
        }
    }

    /// Delivers one stream's batches in order until it is superseded or ends.
    async fn deliver(self, entitled: Entitlement, mut queue: mpsc::Receiver<RelayBatch>) {
        while let Some(batch) = queue.recv().await {
            if !self.deliver_batch(&entitled, batch).await {
                break;
            }
        }
        queue.close();
        while let Ok(batch) = queue.try_recv() {
            self.drop_relayed(batch.messages.len());
        }
    }

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
