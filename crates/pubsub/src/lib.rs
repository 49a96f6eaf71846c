//! Cluster-wide publish/subscribe for a Conclave node.
//!
//! Owns: the node's local subscribers (channels and glob patterns), the per-subscriber output
//! buffers and the disconnection of subscribers that fall behind (the `subscriber` module),
//! causal delivery, and the mesh:
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
mod subscriber;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conclave_consensus::Node;
use tokio::sync::mpsc;

pub use glob::matches as glob_matches;
pub use interest::SETTLE_WAIT;
pub use mesh::MeshService;
use subscriber::Sink;
pub use subscriber::{Change, Disconnected, Limits, Receiver, Subscriptions, TooManySubscriptions};

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
        let id = {
            let mut registry = self.hub.registry.lock().expect("registry poisoned");
            registry.next_id += 1;
            registry.next_id
        };
        subscriber::new(self.hub.clone(), id)
    }

    /// The limits every subscriber of this node is held to.
    pub fn limits(&self) -> Limits {
        self.hub.limits
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
