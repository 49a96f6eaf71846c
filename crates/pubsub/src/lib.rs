//! Cluster-wide publish/subscribe for a Conclave node.
//!
//! Owns: the node's local subscribers (channels and glob patterns), the per-subscriber output
//! buffers and the disconnection of subscribers that fall behind, causal delivery, and the mesh:
//! one `Mesh.Relay` stream from this node to every other member carrying the messages published
//! here that the member has subscribers for ([`MeshService`] receives them), and this node's own
//! interest (see the `interest` module).
//!
//! Does not own: any client protocol. The gRPC `PubSub` service and the RESP front end both sit on
//! top of [`PubSub::publish`] and [`PubSub::subscriber`].
//!
//! Guarantees: at most once; ordered per publishing node and channel (one ordered queue per
//! source: the local publishers, and each peer's relay; when a peer's relay reconnects, its new
//! stream supersedes the old one, whose undelivered messages are dropped, so the two never
//! deliver concurrently); causal: a message carries its
//! publisher's session revision and is delivered on a node only once that node has applied it
//! (a message whose revision does not arrive within [`CAUSAL_WAIT`] is dropped and counted).
//! Messages never go through the Raft log. A subscriber whose unread messages exceed its
//! [`Limits`] is disconnected with a reason; publishers and other subscribers never wait for it.
//! A subscription answers once every reachable member knows of it, so a message published
//! anywhere after that reaches it. PUBLISH counts the receivers on every member, as one Redis
//! server counts its own (the other members' counts are the latest they reported).

mod glob;
mod interest;
mod mesh;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use conclave_consensus::Node;
use tokio::sync::mpsc;

pub use glob::matches as glob_matches;
pub use interest::SETTLE_WAIT;
pub use mesh::MeshService;

/// Longest a message waits for its publisher's revision to be applied here before it is dropped.
pub const CAUSAL_WAIT: Duration = Duration::from_secs(2);
/// Messages queued for local delivery before new ones are dropped.
const LOCAL_QUEUE: usize = 65_536;

/// One published message, shared by every delivery of it.
#[derive(Debug)]
pub struct Published {
    pub channel: Vec<u8>,
    pub payload: Vec<u8>,
    /// The publisher's session revision.
    pub revision: u64,
    /// The node the publisher was connected to.
    pub origin: u64,
}

impl Published {
    fn weight(&self) -> usize {
        self.channel.len() + self.payload.len() + 64
    }
}

/// A message delivered to one subscriber.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub message: Arc<Published>,
    /// The pattern that matched, for a pattern subscription.
    pub pattern: Option<Arc<[u8]>>,
}

/// What a subscriber reads, in order.
#[derive(Clone, Debug)]
pub enum Item {
    Message(Delivery),
    /// A subscription change took effect; the subscriber now has this many.
    Subscriptions {
        channels: usize,
        patterns: usize,
    },
}

/// How far a subscriber may fall behind before it is disconnected (Redis's pub/sub output
/// buffer limit).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_pending_messages: usize,
    pub max_pending_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pending_messages: 100_000,
            max_pending_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Why a subscriber was disconnected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disconnected {
    pub reason: String,
}

impl std::fmt::Display for Disconnected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Counters of the node's pub/sub traffic.
#[derive(Debug, Default)]
pub struct Stats {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    /// Messages not relayed to a peer (its queue was full, or they aged while it was away), and
    /// relayed messages dropped here because a newer stream from their node superseded theirs.
    pub dropped_relay: AtomicU64,
    /// Messages dropped because the publisher's revision did not arrive in time.
    pub dropped_causal: AtomicU64,
    /// Local messages dropped because the local queue was full.
    pub dropped_local: AtomicU64,
    /// Messages not relayed to a peer because none of its subscribers listens on their channel.
    pub unrouted: AtomicU64,
    pub slow_disconnects: AtomicU64,
}

/// The node's pub/sub hub; cheap to clone.
#[derive(Clone)]
pub struct PubSub {
    hub: Arc<Hub>,
}

struct Hub {
    node: Node,
    registry: Mutex<Registry>,
    local: mpsc::Sender<Arc<Published>>,
    relays: mesh::Relays,
    /// The other nodes' incoming relay streams, per origin.
    lanes: mesh::Lanes,
    limits: Limits,
    stats: Stats,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    channels: HashMap<Vec<u8>, HashMap<u64, Arc<Sink>>>,
    patterns: HashMap<Arc<[u8]>, HashMap<u64, Arc<Sink>>>,
}

/// The sending side of one subscriber's buffer.
struct Sink {
    tx: mpsc::UnboundedSender<Item>,
    pending_messages: AtomicUsize,
    pending_bytes: AtomicUsize,
    kicked: AtomicBool,
    limits: Limits,
}

impl Sink {
    /// Queues a delivery unless the subscriber is too far behind, in which case it is marked
    /// disconnected. Never waits.
    fn offer(&self, delivery: Delivery, stats: &Stats) -> bool {
        if self.kicked.load(Ordering::Relaxed) {
            return false;
        }
        let weight = delivery.message.weight();
        let messages = self.pending_messages.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes = self.pending_bytes.fetch_add(weight, Ordering::Relaxed) + weight;
        if messages > self.limits.max_pending_messages || bytes > self.limits.max_pending_bytes {
            if !self.kicked.swap(true, Ordering::Relaxed) {
                stats.slow_disconnects.fetch_add(1, Ordering::Relaxed);
                // Wake the reader so it notices at once.
                let _ = self.tx.send(Item::Subscriptions {
                    channels: 0,
                    patterns: 0,
                });
            }
            return false;
        }
        self.tx.send(Item::Message(delivery)).is_ok()
    }
}

impl PubSub {
    /// Starts the hub of `node`: local delivery and the relays to every other member.
    pub fn start(node: Node, limits: Limits) -> PubSub {
        let (local, inbox) = mpsc::channel(LOCAL_QUEUE);
        let hub = Arc::new(Hub {
            node,
            registry: Mutex::default(),
            local,
            relays: mesh::Relays::default(),
            lanes: mesh::Lanes::default(),
            limits,
            stats: Stats::default(),
        });
        tokio::spawn(hub.clone().deliver_local(inbox));
        tokio::spawn(mesh::maintain_relays(Arc::downgrade(&hub)));
        PubSub { hub }
    }

    /// The node-to-node service receiving other nodes' messages.
    pub fn mesh_service(&self) -> MeshService {
        MeshService::new(self.hub.clone())
    }

    /// Publishes `payload` on `channel` from a publisher whose session revision is `revision`.
    /// Returns how many subscribers it is queued for: here, and on the other members as they
    /// last reported their subscribers.
    pub fn publish(&self, channel: Vec<u8>, payload: Vec<u8>, revision: u64) -> usize {
        let message = Arc::new(Published {
            channel,
            payload,
            revision,
            origin: self.hub.node.id(),
        });
        self.hub.stats.published.fetch_add(1, Ordering::Relaxed);
        let local = self.hub.local_receivers(&message.channel);
        let remote = self
            .hub
            .relays
            .send(&message, &self.hub.lanes, &self.hub.stats);
        if local > 0 && self.hub.local.try_send(message).is_err() {
            self.hub.stats.dropped_local.fetch_add(1, Ordering::Relaxed);
        }
        local + remote as usize
    }

    /// A new subscriber with no subscriptions: a control half and a receiving half.
    pub fn subscriber(&self) -> (Subscriptions, Receiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let sink = Arc::new(Sink {
            tx,
            pending_messages: AtomicUsize::new(0),
            pending_bytes: AtomicUsize::new(0),
            kicked: AtomicBool::new(false),
            limits: self.hub.limits,
        });
        let id = {
            let mut registry = self.hub.registry.lock().expect("registry poisoned");
            registry.next_id += 1;
            registry.next_id
        };
        let control = Arc::new(Control {
            hub: self.hub.clone(),
            id,
            sink: sink.clone(),
            subscribed: Mutex::default(),
        });
        (
            Subscriptions {
                control: control.clone(),
            },
            Receiver {
                _control: control,
                sink,
                rx,
                reported: false,
            },
        )
    }

    /// Channels with at least one local subscriber, optionally filtered by a glob pattern.
    pub fn channels(&self, pattern: Option<&[u8]>) -> Vec<Vec<u8>> {
        let registry = self.hub.registry.lock().expect("registry poisoned");
        let mut channels: Vec<Vec<u8>> = registry
            .channels
            .keys()
            .filter(|c| pattern.is_none_or(|p| glob::matches(p, c)))
            .cloned()
            .collect();
        channels.sort();
        channels
    }

    /// Local subscribers of `channel` (not counting pattern subscribers).
    pub fn subscriber_count(&self, channel: &[u8]) -> usize {
        let registry = self.hub.registry.lock().expect("registry poisoned");
        registry.channels.get(channel).map_or(0, HashMap::len)
    }

    /// Distinct patterns subscribed to locally.
    pub fn pattern_count(&self) -> usize {
        self.hub
            .registry
            .lock()
            .expect("registry poisoned")
            .patterns
            .len()
    }

    /// Channels and patterns with a local subscriber, and the subscriptions on them.
    pub fn registry_counts(&self) -> (usize, usize, usize) {
        let registry = self.hub.registry.lock().expect("registry poisoned");
        let subscriptions = registry.channels.values().map(HashMap::len).sum::<usize>()
            + registry.patterns.values().map(HashMap::len).sum::<usize>();
        (
            registry.channels.len(),
            registry.patterns.len(),
            subscriptions,
        )
    }

    /// The hub's counters.
    pub fn stats(&self) -> &Stats {
        &self.hub.stats
    }
}

impl Hub {
    /// This node's whole interest, for a relay stream's first batches to the peer of `outbox`.
    fn interest_reset(&self, outbox: &interest::Outbox) -> Vec<interest::Outgoing> {
        let registry = self.registry.lock().expect("registry poisoned");
        let channels = registry.channels.iter().map(|(name, subscribers)| {
            let name = interest::Name {
                pattern: false,
                name: name.clone(),
            };
            (name, subscribers.len() as u64)
        });
        let patterns = registry.patterns.iter().map(|(name, subscribers)| {
            let name = interest::Name {
                pattern: true,
                name: name.to_vec(),
            };
            (name, subscribers.len() as u64)
        });
        outbox.reset(channels.chain(patterns))
    }

    /// Tells the peers how many local subscribers `name` has now; called with the registry held,
    /// so the peers learn the changes in the order they were made.
    fn announce(&self, registry: &Registry, pattern: bool, name: &[u8]) {
        let subscribers = if pattern {
            registry.patterns.get(name).map_or(0, HashMap::len)
        } else {
            registry.channels.get(name).map_or(0, HashMap::len)
        };
        let name = interest::Name {
            pattern,
            name: name.to_vec(),
        };
        self.relays.announce(&name, subscribers);
    }

    fn local_receivers(&self, channel: &[u8]) -> usize {
        let registry = self.registry.lock().expect("registry poisoned");
        let direct = registry.channels.get(channel).map_or(0, HashMap::len);
        let by_pattern: usize = registry
            .patterns
            .iter()
            .filter(|(p, _)| glob::matches(p, channel))
            .map(|(_, subs)| subs.len())
            .sum();
        direct + by_pattern
    }

    /// Delivers the messages published on this node, in order.
    async fn deliver_local(self: Arc<Self>, mut inbox: mpsc::Receiver<Arc<Published>>) {
        while let Some(message) = inbox.recv().await {
            self.deliver(message).await;
        }
    }

    /// Waits until this node has applied the message's revision, then hands it to every matching
    /// local subscriber. Callers deliver one source's messages one at a time, in order.
    async fn deliver(&self, message: Arc<Published>) {
        self.deliver_unless(message, std::future::pending()).await;
    }

    /// [`Hub::deliver`], unless `cancel` completes while the message waits for its revision: then
    /// the message is dropped and the answer is false.
    async fn deliver_unless(
        &self,
        message: Arc<Published>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> bool {
        let view = self.node.view();
        if view.applied() < message.revision {
            tokio::select! {
                applied = view.wait_applied(message.revision, CAUSAL_WAIT) => {
                    if !applied {
                        self.stats.dropped_causal.fetch_add(1, Ordering::Relaxed);
                        return true;
                    }
                }
                () = cancel => return false,
            }
        }
        let registry = self.registry.lock().expect("registry poisoned");
        let mut delivered = 0;
        if let Some(subscribers) = registry.channels.get(&message.channel) {
            for sink in subscribers.values() {
                let delivery = Delivery {
                    message: message.clone(),
                    pattern: None,
                };
                delivered += u64::from(sink.offer(delivery, &self.stats));
            }
        }
        for (pattern, subscribers) in &registry.patterns {
            if !glob::matches(pattern, &message.channel) {
                continue;
            }
            for sink in subscribers.values() {
                let delivery = Delivery {
                    message: message.clone(),
                    pattern: Some(pattern.clone()),
                };
                delivered += u64::from(sink.offer(delivery, &self.stats));
            }
        }
        self.stats.delivered.fetch_add(delivered, Ordering::Relaxed);
        true
    }
}

/// What one subscriber is subscribed to; removed from the hub when both halves are dropped.
struct Control {
    hub: Arc<Hub>,
    id: u64,
    sink: Arc<Sink>,
    subscribed: Mutex<Subscribed>,
}

#[derive(Default)]
struct Subscribed {
    channels: BTreeSet<Vec<u8>>,
    patterns: BTreeSet<Arc<[u8]>>,
}

impl Drop for Control {
    fn drop(&mut self) {
        let subscribed = std::mem::take(&mut *self.subscribed.lock().expect("poisoned"));
        let mut registry = self.hub.registry.lock().expect("registry poisoned");
        for channel in subscribed.channels {
            remove_from(&mut registry.channels, &channel, self.id);
            self.hub.announce(&registry, false, &channel);
        }
        for pattern in subscribed.patterns {
            remove_from(&mut registry.patterns, &pattern, self.id);
            self.hub.announce(&registry, true, &pattern);
        }
    }
}

fn remove_from<K, Q>(map: &mut HashMap<K, HashMap<u64, Arc<Sink>>>, key: &Q, id: u64)
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(subscribers) = map.get_mut(key) {
        subscribers.remove(&id);
        if subscribers.is_empty() {
            map.remove(key);
        }
    }
}

/// The control half of a subscriber: changes its subscriptions. Each change is acknowledged on
/// the [`Receiver`] with [`Item::Subscriptions`], after every message delivered before it.
#[derive(Clone)]
pub struct Subscriptions {
    control: Arc<Control>,
}

/// A subscription change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Subscribe,
    Unsubscribe,
    PSubscribe,
    PUnsubscribe,
}

impl Subscriptions {
    /// Applies one change to each of `names` (channels or patterns) and returns the resulting
    /// (channels, patterns) counts after each name, as Redis replies once per name. An
    /// unsubscribe with no names removes every channel (or pattern). A new subscription takes
    /// effect here at once and on the other members once they learn of it: await
    /// [`Subscriptions::settled`] before answering the client.
    pub fn change(&self, change: Change, names: Vec<Vec<u8>>) -> Vec<(Vec<u8>, usize, usize)> {
        let control = &self.control;
        let mut subscribed = control.subscribed.lock().expect("poisoned");
        let names = match (change, names.is_empty()) {
            (Change::Unsubscribe, true) => subscribed.channels.iter().cloned().collect(),
            (Change::PUnsubscribe, true) => {
                subscribed.patterns.iter().map(|p| p.to_vec()).collect()
            }
            _ => names,
        };
        let mut registry = control.hub.registry.lock().expect("registry poisoned");
        let mut counts = Vec::with_capacity(names.len());
        for name in names {
            match change {
                Change::Subscribe => {
                    if subscribed.channels.insert(name.clone()) {
                        registry
                            .channels
                            .entry(name.clone())
                            .or_default()
                            .insert(control.id, control.sink.clone());
                        control.hub.announce(&registry, false, &name);
                    }
                }
                Change::Unsubscribe => {
                    if subscribed.channels.remove(&name) {
                        remove_from(&mut registry.channels, &name, control.id);
                        control.hub.announce(&registry, false, &name);
                    }
                }
                Change::PSubscribe => {
                    let pattern: Arc<[u8]> = name.clone().into();
                    if subscribed.patterns.insert(pattern.clone()) {
                        registry
                            .patterns
                            .entry(pattern)
                            .or_default()
                            .insert(control.id, control.sink.clone());
                        control.hub.announce(&registry, true, &name);
                    }
                }
                Change::PUnsubscribe => {
                    if subscribed.patterns.remove(name.as_slice()) {
                        remove_from(&mut registry.patterns, name.as_slice(), control.id);
                        control.hub.announce(&registry, true, &name);
                    }
                }
            }
            counts.push((name, subscribed.channels.len(), subscribed.patterns.len()));
        }
        counts
    }

    /// Completes once every reachable member knows of the subscriptions made so far (or
    /// [`SETTLE_WAIT`] passed), so that a message published anywhere after it reaches them.
    pub async fn settled(&self) {
        self.control.hub.relays.settled().await;
    }

    /// Applies a batch of changes and, once they are settled, acknowledges them on the receiver
    /// with one [`Item::Subscriptions`] carrying the resulting counts.
    pub async fn apply(&self, changes: Vec<(Change, Vec<Vec<u8>>)>) {
        for (change, names) in changes {
            if !names.is_empty() {
                self.change(change, names);
            }
        }
        self.settled().await;
        let (channels, patterns) = self.counts();
        let _ = self
            .control
            .sink
            .tx
            .send(Item::Subscriptions { channels, patterns });
    }

    /// (channels, patterns) subscribed.
    pub fn counts(&self) -> (usize, usize) {
        let subscribed = self.control.subscribed.lock().expect("poisoned");
        (subscribed.channels.len(), subscribed.patterns.len())
    }
}

/// The receiving half of a subscriber.
pub struct Receiver {
    _control: Arc<Control>,
    sink: Arc<Sink>,
    rx: mpsc::UnboundedReceiver<Item>,
    reported: bool,
}

impl Receiver {
    /// The next item; an error once the subscriber fell too far behind (then None).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Item, Disconnected>>> {
        if self.sink.kicked.load(Ordering::Relaxed) {
            if self.reported {
                return Poll::Ready(None);
            }
            self.reported = true;
            let limits = self.sink.limits;
            return Poll::Ready(Some(Err(Disconnected {
                reason: format!(
                    "subscriber disconnected: more than {} messages or {} bytes were waiting to be read",
                    limits.max_pending_messages, limits.max_pending_bytes
                ),
            })));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => {
                if let Item::Message(delivery) = &item {
                    self.sink.pending_messages.fetch_sub(1, Ordering::Relaxed);
                    self.sink
                        .pending_bytes
                        .fetch_sub(delivery.message.weight(), Ordering::Relaxed);
                }
                if self.sink.kicked.load(Ordering::Relaxed) {
                    return self.poll_recv(cx);
                }
                Poll::Ready(Some(Ok(item)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Whether the hub disconnected this subscriber for falling behind.
    pub fn is_disconnected(&self) -> bool {
        self.sink.kicked.load(Ordering::Relaxed)
    }

    /// The next item; see [`Receiver::poll_recv`].
    pub async fn recv(&mut self) -> Option<Result<Item, Disconnected>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl tokio_stream::Stream for Receiver {
    type Item = Result<Item, Disconnected>;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx)
    }
}
