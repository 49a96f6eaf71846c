//! One subscriber: its output buffer (the messages queued for it and not read yet), the limits
//! that buffer is held to, and its subscriptions.
//!
//! A subscriber is disconnected, with the reason, when more than the hard limit waits unread,
//! when more than the soft limit has waited unread for longer than the soft limit's time (as
//! Redis's `client-output-buffer-limit pubsub 32mb 8mb 60`), or when a gRPC subscription change
//! would take it past [`Limits::max_subscriptions`]. Over RESP that change is refused instead.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::{Delivery, Hub, Item, Stats};

/// How far a subscriber may fall behind before it is disconnected, and how many subscriptions
/// it may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most messages waiting to be read.
    pub max_pending_messages: usize,
    /// The hard limit: more bytes than this waiting to be read disconnect the subscriber at once
    /// (0: no limit).
    pub max_pending_bytes: usize,
    /// The soft limit: more bytes than this waiting to be read for `soft_pending_for` or longer
    /// disconnect the subscriber (0: no limit).
    pub soft_pending_bytes: usize,
    pub soft_pending_for: Duration,
    /// Most channels and patterns one subscriber holds together.
    pub max_subscriptions: usize,
}

impl Default for Limits {
    /// Redis's `pubsub 32mb 8mb 60`; a million subscriptions (LiveKit holds about 52,000 on one
    /// connection at 700 rooms on one node).
    fn default() -> Self {
        Limits {
            max_pending_messages: 100_000,
            max_pending_bytes: 32 * 1024 * 1024,
            soft_pending_bytes: 8 * 1024 * 1024,
            soft_pending_for: Duration::from_secs(60),
            max_subscriptions: 1_000_000,
        }
    }
}

impl Limits {
    /// The output-buffer limits as Redis writes them: `<hard bytes> <soft bytes> <soft seconds>`.
    pub fn output_buffer(&self) -> String {
        format!(
            "{} {} {}",
            self.max_pending_bytes,
            self.soft_pending_bytes,
            self.soft_pending_for.as_secs()
        )
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

/// A subscription change that would take a subscriber past [`Limits::max_subscriptions`]; none
/// of it was applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TooManySubscriptions {
    pub max: usize,
    pub would_hold: usize,
}

impl std::fmt::Display for TooManySubscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "too many subscriptions: a subscriber holds at most {} channels and patterns, and \
             this change would make it {}",
            self.max, self.would_hold
        )
    }
}

/// The sending side of one subscriber's buffer.
pub(crate) struct Sink {
    tx: mpsc::UnboundedSender<Item>,
    pending_messages: AtomicUsize,
    pending_bytes: AtomicUsize,
    /// Since when more than the soft limit has waited: milliseconds after `epoch`, plus one;
    /// 0 while under it.
    over_soft_since: AtomicU64,
    epoch: Instant,
    /// Set once the subscriber is disconnected.
    kicked: OnceLock<String>,
    limits: Limits,
}

impl Sink {
    /// Queues a delivery unless the subscriber is too far behind, in which case it is marked
    /// disconnected. Never waits.
    pub(crate) fn offer(&self, delivery: Delivery, stats: &Stats) -> bool {
        if self.is_kicked() {
            return false;
        }
        let weight = delivery.message.weight();
        let messages = self.pending_messages.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes = self.pending_bytes.fetch_add(weight, Ordering::Relaxed) + weight;
        let limits = &self.limits;
        let hard = limits.max_pending_bytes;
        if messages > limits.max_pending_messages || (hard > 0 && bytes > hard) {
            self.kick(
                format!(
                    "subscriber disconnected: more than {} messages or {hard} bytes were \
                     waiting to be read",
                    limits.max_pending_messages
                ),
                stats,
            );
            return false;
        }
        if self.over_soft_limit_too_long(bytes) {
            self.kick(
                format!(
                    "subscriber disconnected: more than {} bytes were waiting to be read for {:?}",
                    limits.soft_pending_bytes, limits.soft_pending_for
                ),
                stats,
            );
            return false;
        }
        self.tx.send(Item::Message(delivery)).is_ok()
    }

    /// Notes whether `pending` bytes are over the soft limit; true once they have been over it
    /// for the soft limit's time.
    fn over_soft_limit_too_long(&self, pending: usize) -> bool {
        let soft = self.limits.soft_pending_bytes;
        if soft == 0 || pending <= soft {
            self.under_soft_limit(pending);
            return false;
        }
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        match self.over_soft_since.load(Ordering::Relaxed) {
            0 => {
                self.over_soft_since.store(now, Ordering::Relaxed);
                false
            }
            since => Duration::from_millis(now - since) >= self.limits.soft_pending_for,
        }
    }

    fn under_soft_limit(&self, pending: usize) {
        if pending <= self.limits.soft_pending_bytes
            && self.over_soft_since.load(Ordering::Relaxed) != 0
        {
            self.over_soft_since.store(0, Ordering::Relaxed);
        }
    }

    /// Disconnects the subscriber for `reason` (the first reason given is the one reported).
    fn kick(&self, reason: String, stats: &Stats) {
        if self.kicked.set(reason).is_ok() {
            stats.slow_disconnects.fetch_add(1, Ordering::Relaxed);
            // Wake the reader so it notices at once.
            let _ = self.tx.send(Item::Subscriptions {
                channels: 0,
                patterns: 0,
            });
        }
    }

    fn is_kicked(&self) -> bool {
        self.kicked.get().is_some()
    }
}

/// A new subscriber of `hub`, known there as `id`, with no subscriptions.
pub(crate) fn new(hub: Arc<Hub>, id: u64) -> (Subscriptions, Receiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sink = Arc::new(Sink {
        tx,
        pending_messages: AtomicUsize::new(0),
        pending_bytes: AtomicUsize::new(0),
        over_soft_since: AtomicU64::new(0),
        epoch: Instant::now(),
        kicked: OnceLock::new(),
        limits: hub.limits,
    });
    let control = Arc::new(Control {
        hub,
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
    /// [`Subscriptions::settled`] before answering the client. A change that would take the
    /// subscriber past [`Limits::max_subscriptions`] is refused whole.
    pub fn change(
        &self,
        change: Change,
        names: Vec<Vec<u8>>,
    ) -> Result<Vec<(Vec<u8>, usize, usize)>, TooManySubscriptions> {
        let control = &self.control;
        let mut subscribed = control.subscribed.lock().expect("poisoned");
        let names = match (change, names.is_empty()) {
            (Change::Unsubscribe, true) => subscribed.channels.iter().cloned().collect(),
            (Change::PUnsubscribe, true) => {
                subscribed.patterns.iter().map(|p| p.to_vec()).collect()
            }
            _ => names,
        };
        let added: HashSet<&[u8]> = match change {
            Change::Subscribe => names
                .iter()
                .filter(|n| !subscribed.channels.contains(*n))
                .map(Vec::as_slice)
                .collect(),
            Change::PSubscribe => names
                .iter()
                .filter(|n| !subscribed.patterns.contains(n.as_slice()))
                .map(Vec::as_slice)
                .collect(),
            Change::Unsubscribe | Change::PUnsubscribe => HashSet::new(),
        };
        let would_hold = subscribed.channels.len() + subscribed.patterns.len() + added.len();
        let max = control.sink.limits.max_subscriptions;
        if !added.is_empty() && would_hold > max {
            return Err(TooManySubscriptions { max, would_hold });
        }
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
        Ok(counts)
    }

    /// Completes once every reachable member knows of the subscriptions made so far (or
    /// [`SETTLE_WAIT`] passed), so that a message published anywhere after it reaches them.
    pub async fn settled(&self) {
        self.control.hub.relays.settled().await;
    }

    /// Applies a batch of changes and, once they are settled, acknowledges them on the receiver
    /// with one [`Item::Subscriptions`] carrying the resulting counts. A change past
    /// [`Limits::max_subscriptions`] disconnects the subscriber with the reason instead.
    pub async fn apply(&self, changes: Vec<(Change, Vec<Vec<u8>>)>) {
        for (change, names) in changes {
            if names.is_empty() {
                continue;
            }
            if let Err(refused) = self.change(change, names) {
                let sink = &self.control.sink;
                sink.kick(
                    format!("subscriber disconnected: {refused}"),
                    &self.control.hub.stats,
                );
                return;
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
        if let Some(reason) = self.sink.kicked.get() {
            if self.reported {
                return Poll::Ready(None);
            }
            self.reported = true;
            return Poll::Ready(Some(Err(Disconnected {
                reason: reason.clone(),
            })));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => {
                if let Item::Message(delivery) = &item {
                    self.sink.pending_messages.fetch_sub(1, Ordering::Relaxed);
                    let weight = delivery.message.weight();
                    let before = self.sink.pending_bytes.fetch_sub(weight, Ordering::Relaxed);
                    self.sink.under_soft_limit(before - weight);
                }
                if self.sink.is_kicked() {
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
        self.sink.is_kicked()
    }

    /// Why the hub disconnected this subscriber, if it did.
    pub fn disconnection(&self) -> Option<Disconnected> {
        self.sink.kicked.get().map(|reason| Disconnected {
            reason: reason.clone(),
        })
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
#[cfg(test)]
mod tests {
    use super::*;
    use crate::Published;

    fn new_sink(limits: Limits) -> (Sink, mpsc::UnboundedReceiver<Item>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let sink = Sink {
            tx,
            pending_messages: AtomicUsize::new(0),
            pending_bytes: AtomicUsize::new(0),
            over_soft_since: AtomicU64::new(0),
            epoch: Instant::now(),
            kicked: OnceLock::new(),
            limits,
        };
        (sink, rx)
    }

    /// A delivery weighing `bytes` in the buffer.
    fn delivery(bytes: usize) -> Delivery {
        let message = Published {
            channel: b"c".to_vec(),
            payload: vec![0; bytes - 65],
            revision: 0,
            origin: 1,
        };
        assert_eq!(message.weight(), bytes);
        Delivery {
            message: Arc::new(message),
            pattern: None,
        }
    }

    #[test]
    fn a_buffer_over_the_soft_limit_for_its_time_disconnects() {
        let limits = Limits {
            soft_pending_bytes: 1000,
            soft_pending_for: Duration::from_millis(200),
            ..Limits::default()
        };
        let (sink, _rx) = new_sink(limits);
        let stats = Stats::default();
        assert!(sink.offer(delivery(600), &stats), "under the soft limit");
        assert!(sink.offer(delivery(600), &stats), "over it, from now on");
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            sink.offer(delivery(600), &stats),
            "over it, not for long enough"
        );
        std::thread::sleep(Duration::from_millis(150));
        assert!(!sink.offer(delivery(600), &stats), "over it for its time");
        let reason = sink.kicked.get().expect("disconnected");
        assert!(
            reason.contains("more than 1000 bytes") && reason.contains("for 200ms"),
            "{reason}"
        );
        assert_eq!(stats.slow_disconnects.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_buffer_read_below_the_soft_limit_starts_its_time_again() {
        let limits = Limits {
            soft_pending_bytes: 1000,
            soft_pending_for: Duration::from_millis(200),
            ..Limits::default()
        };
        let (sink, _rx) = new_sink(limits);
        let stats = Stats::default();
        assert!(sink.offer(delivery(600), &stats));
        assert!(sink.offer(delivery(600), &stats), "over the soft limit");
        std::thread::sleep(Duration::from_millis(150));
        // The reader takes one: back under the limit.
        let before = sink.pending_bytes.fetch_sub(600, Ordering::Relaxed);
        sink.under_soft_limit(before - 600);
        assert!(
            sink.offer(delivery(600), &stats),
            "over again, its time starting now"
        );
        std::thread::sleep(Duration::from_millis(150));
        assert!(sink.offer(delivery(100), &stats), "over for 150 ms only");
        assert!(sink.kicked.get().is_none());
    }

    #[test]
    fn the_hard_limit_disconnects_at_once_and_zero_turns_limits_off() {
        let (sink, _rx) = new_sink(Limits {
            max_pending_bytes: 1000,
            ..Limits::default()
        });
        let stats = Stats::default();
        assert!(sink.offer(delivery(600), &stats));
        assert!(!sink.offer(delivery(600), &stats));
        assert!(sink.kicked.get().unwrap().contains("1000 bytes"));

        let (sink, _rx) = new_sink(Limits {
            max_pending_bytes: 0,
            soft_pending_bytes: 0,
            ..Limits::default()
        });
        for _ in 0..100 {
            assert!(sink.offer(delivery(1024 * 1024), &stats), "no byte limits");
        }
    }
}
