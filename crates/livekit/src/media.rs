//! One simulated media node: what a LiveKit server and its psrpc bus send to Redis for the rooms
//! it hosts, over one storage connection and one pub/sub connection, as go-redis would.
//!
//! Storage: the node registry, room creation under the room lock and the unlock script, the
//! room's agent dispatch and job, participant joins, updates and leaves, room closes. Pub/sub: the subscription sets of rooms,
//! participants and agent jobs; unary RPCs (request, claims by every subscriber with
//! `SET <key> <n> EX 5 NX`, the caller's rclaim, the response); signal relay messages with their
//! acks, sent again while unacked (see [`SIGNAL_RETRIES`]); the node's keepalive to itself.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::channels::{self, Message, Tag};
use crate::metrics::{Kind, Recorder};
use crate::resp3::{Connection, Value};
use crate::Options;

/// LiveKit's room lock release script, byte for byte (its SHA-1 is what LiveKit sends).
pub const UNLOCK_SCRIPT: &str = "if redis.call(\"get\",KEYS[1]) == ARGV[1] then\n\t\t\t\t\t\treturn redis.call(\"del\",KEYS[1])\n\t\t\t\t\t else\n\t\t\t\t\t return 0\n\t\t\t\t\t end";
pub const UNLOCK_SHA: &str = "018bb1efb0fb3d1dfdf8993444cab23e72ac331b";

/// How long a request, relay message or keepalive may stay unanswered before it counts as lost.
const LOST_AFTER: Duration = Duration::from_secs(10);

/// What every media node shares: the options, the recorder, the clock messages are stamped
/// with, and the other nodes (to route RPC callers and signal streams).
pub struct Shared {
    pub options: Options,
    pub recorder: Recorder,
    pub epoch: Instant,
    pub nodes: OnceLock<Vec<Arc<MediaNode>>>,
    next_id: AtomicU64,
}

impl Shared {
    pub fn new(options: Options) -> Arc<Shared> {
        Arc::new(Shared {
            options,
            recorder: Recorder::new(),
            epoch: Instant::now(),
            nodes: OnceLock::new(),
            next_id: AtomicU64::new(1),
        })
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn node(&self, index: usize) -> &Arc<MediaNode> {
        &self
            .nodes
            .get()
            .expect("nodes are set before the load starts")[index]
    }

    fn node_count(&self) -> usize {
        self.nodes.get().map_or(0, Vec::len)
    }
}

/// A participant of a room: a human, or the room's agent.
#[derive(Clone, Debug)]
pub struct Participant {
    pub identity: String,
    pub agent: bool,
    /// The media node holding this participant's signal connection (relay streams run between
    /// it and the room's node).
    pub signal_node: usize,
    pub present: bool,
}

/// A room slot on its media node: closed and opened again as rooms come and go.
#[derive(Debug, Default)]
pub struct Room {
    pub name: String,
    pub open: bool,
    /// The room's subscriptions are in place: RPCs to it may come (LiveKit routes none to a
    /// room before it exists, nor after it closed).
    pub serving: bool,
    pub participants: Vec<Participant>,
    /// Incremented at every open, so names stay unique.
    pub generation: u64,
}

/// An exchange awaiting its answer: when it was scheduled, and what it is.
struct Awaiting {
    scheduled: Instant,
    exchange: Exchange,
}

enum Exchange {
    /// A signal relay message to node `to`, first sent at `first_sent`, sent `attempts` times
    /// so far.
    Signal {
        to: usize,
        size: usize,
        first_sent: Instant,
        attempts: usize,
    },
    /// A unary RPC: its method and topic, and whether its claim arrived.
    Rpc {
        method: String,
        topic: String,
        claimed: bool,
    },
}

impl Awaiting {
    fn kind(&self) -> Kind {
        match self.exchange {
            Exchange::Signal { .. } => Kind::SignalAck,
            Exchange::Rpc { .. } => Kind::Rpc,
        }
    }
}

/// LiveKit's signal relay: an unacked message is sent again when its attempt times out, the
/// first after 500 ms, the next ones after 1 s and 2 s more; with no ack 4 s after that (7.5 s
/// from the first send) the stream closes. Times from the first send.
const SIGNAL_RETRY_AT: [Duration; 3] = [
    Duration::from_millis(500),
    Duration::from_millis(1500),
    Duration::from_millis(3500),
];
const SIGNAL_STREAM_CLOSES: Duration = Duration::from_millis(7500);

/// What to do with a signal message unacked `age` after its first send, sent `attempts` times.
#[derive(Debug, PartialEq, Eq)]
enum SignalRetry {
    /// Send it again (once, however many retry times passed: a bench that fell behind does not
    /// send a burst) and look again at `next` after the first send.
    Resend { attempts: usize, next: Duration },
    /// Look again at `next` after the first send.
    Wait { next: Duration },
    /// The stream closes: the message is lost.
    GiveUp,
}

fn signal_retry(age: Duration, attempts: usize) -> SignalRetry {
    if age >= SIGNAL_STREAM_CLOSES {
        return SignalRetry::GiveUp;
    }
    let passed = SIGNAL_RETRY_AT.iter().filter(|at| age >= **at).count();
    let next_after = |sent: usize| {
        SIGNAL_RETRY_AT
            .get(sent - 1)
            .copied()
            .unwrap_or(SIGNAL_STREAM_CLOSES)
    };
    if attempts < passed + 1 {
        SignalRetry::Resend {
            attempts: passed + 1,
            next: next_after(passed + 1),
        }
    } else {
        SignalRetry::Wait {
            next: next_after(attempts),
        }
    }
}

pub struct MediaNode {
    pub index: usize,
    pub name: String,
    shared: Arc<Shared>,
    /// The command connections, as go-redis's pool: storage commands take them in turn; a
    /// channel's PUBLISHes always take the same one (psrpc's publish queues keep one channel's
    /// messages in order).
    pool: Vec<Connection>,
    next: AtomicU64,
    subscriptions: Connection,
    pub rooms: Vec<Mutex<Room>>,
    awaiting: Mutex<HashMap<u64, Awaiting>>,
    /// Signal messages by when to look at them again (see [`signal_retry`]); acked ones are
    /// dropped when their time comes.
    signal_checks: Mutex<BinaryHeap<Reverse<(Instant, u64)>>>,
}

impl MediaNode {
    /// Connects node `index` to `address` and starts reading its pub/sub connection.
    pub async fn connect(
        shared: Arc<Shared>,
        index: usize,
        address: &str,
        rooms: usize,
    ) -> anyhow::Result<Arc<MediaNode>> {
        let mut pool = Vec::new();
        for _ in 0..shared.options.connections.max(1) {
            pool.push(Connection::connect(address, None).await?);
        }
        let (pushes, mut pushed) = mpsc::unbounded_channel();
        let subscriptions = Connection::connect(address, Some(pushes)).await?;
        let node = Arc::new(MediaNode {
            index,
            name: format!("MN_{index}"),
            shared,
            pool,
            next: AtomicU64::new(0),
            subscriptions,
            rooms: (0..rooms).map(|_| Mutex::default()).collect(),
            awaiting: Mutex::default(),
            signal_checks: Mutex::default(),
        });
        let own = [
            channels::responses(&node.name),
            channels::signal(&node.name),
            channels::keepalive(&node.name),
            channels::request(channels::QUEUE_METHOD, "all"),
            channels::rclaim(channels::QUEUE_METHOD, "all"),
        ];
        node.subscribe(&own, Instant::now()).await;
        let reader = node.clone();
        tokio::spawn(async move {
            while let Some(push) = pushed.recv().await {
                reader.clone().on_push(push);
            }
        });
        Ok(node)
    }

    fn recorder(&self) -> &Recorder {
        &self.shared.recorder
    }

    /// The next connection of the pool.
    fn storage(&self) -> &Connection {
        let next = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        &self.pool[next % self.pool.len()]
    }

    /// The connection `channel`'s messages are published on.
    fn publisher(&self, channel: &str) -> &Connection {
        let hash = channel.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        });
        &self.pool[(hash % self.pool.len() as u64) as usize]
    }

    // ----- Storage -----

    /// The room's records, pipelined: `HSET rooms` and `HSET room_internal`.
    async fn store_room(&self, name: &str) {
        let room_info = filler(self.shared.options.room_bytes);
        self.pipeline(
            vec![
                args(&[b"HSET", b"rooms", name.as_bytes(), &room_info]),
                args(&[b"HSET", b"room_internal", name.as_bytes(), &room_info[..64]]),
            ],
            Instant::now(),
        )
        .await;
    }

    /// One storage command; its latency counts from `scheduled`.
    async fn command(&self, args: &[&[u8]], scheduled: Instant) -> Option<Value> {
        match self.storage().call(args).await {
            Ok(Value::Error(e)) => {
                self.recorder()
                    .error(format!("{}: {e}", String::from_utf8_lossy(args[0])));
                None
            }
            Ok(value) => {
                self.recorder().record(Kind::Storage, scheduled.elapsed());
                Some(value)
            }
            Err(e) => {
                self.recorder().error(format!("connection: {e}"));
                None
            }
        }
    }

    /// Commands sent as one pipeline (go-redis `Pipelined`).
    async fn pipeline(&self, commands: Vec<Vec<Vec<u8>>>, scheduled: Instant) {
        match self.storage().pipeline(&commands).await {
            Ok(replies) => {
                let mut failed = false;
                for (reply, command) in replies.iter().zip(&commands) {
                    if let Value::Error(e) = reply {
                        failed = true;
                        self.recorder()
                            .error(format!("{}: {e}", String::from_utf8_lossy(&command[0])));
                    }
                }
                if !failed {
                    self.recorder().record(Kind::Storage, scheduled.elapsed());
                }
            }
            Err(e) => self.recorder().error(format!("connection: {e}")),
        }
    }

    /// `HSET nodes <id> <node info>`, and the keepalive psrpc publishes to the node itself.
    pub async fn report_stats(self: Arc<Self>, scheduled: Instant) {
        let info = filler(self.shared.options.node_bytes);
        self.command(&[b"HSET", b"nodes", self.name.as_bytes(), &info], scheduled)
            .await;
        let message = Message {
            tag: Tag::Keepalive,
            id: self.shared.id(),
            from: self.index,
            sent_us: self.shared.now_us(),
            extra: String::new(),
        };
        self.publish(&channels::keepalive(&self.name), &message, 64, scheduled)
            .await;
    }

    /// Opens room slot `slot`: node choice, the room lock, the room records, the unlock
    /// script, the room's subscriptions and its participants' joins.
    pub async fn open_room(self: Arc<Self>, slot: usize, scheduled: Instant) {
        let (name, participants) = {
            let mut room = self.rooms[slot].lock().expect("room lock");
            if room.open {
                return;
            }
            room.generation += 1;
            room.name = format!("RM_{}_{slot}_{}", self.name, room.generation);
            room.open = true;
            let humans = self.shared.options.participants;
            room.participants = (0..=humans)
                .map(|p| Participant {
                    identity: if p < humans {
                        format!("PA_{p}")
                    } else {
                        "AG_0".to_string()
                    },
                    agent: p == humans,
                    signal_node: pick(slot + p, self.shared.node_count()),
                    present: false,
                })
                .collect();
            (room.name.clone(), room.participants.clone())
        };
        self.command(&[b"HVALS", b"nodes"], scheduled).await;
        let token = format!("LOCK{:012}", self.shared.id());
        let lock_key = format!("room_lock:{name}");
        if !self.lock(&lock_key, &token, scheduled).await {
            return;
        }
        self.store_room(name.as_str()).await;
        self.command(
            &[
                b"HSET",
                b"room_node_map",
                name.as_bytes(),
                self.name.as_bytes(),
            ],
            Instant::now(),
        )
        .await;
        self.unlock(&lock_key, &token).await;
        self.subscribe(&channels::room_channels(&name), Instant::now())
            .await;
        {
            let mut room = self.rooms[slot].lock().expect("room lock");
            if room.open && room.name == name {
                room.serving = true;
            }
        }
        // CreateRoom also travels as a queue RPC that every media node races to claim.
        let caller = self
            .shared
            .node(pick(slot, self.shared.node_count()))
            .clone();
        caller
            .call_rpc(channels::QUEUE_METHOD.into(), "all".into(), Instant::now())
            .await;
        // The room's agent dispatch, then the job the agent accepted, before the agent joins.
        let dispatch = filler(self.shared.options.dispatch_bytes);
        self.command(
            &[
                b"HSET",
                format!("agent_dispatch:{name}").as_bytes(),
                b"AD_0",
                &dispatch,
            ],
            Instant::now(),
        )
        .await;
        for participant in participants {
            if participant.agent {
                self.command(
                    &[
                        b"HSET",
                        format!("agent_job:{name}").as_bytes(),
                        b"AJ_0",
                        &dispatch,
                    ],
                    Instant::now(),
                )
                .await;
            }
            self.clone()
                .join(slot, &participant.identity, Instant::now())
                .await;
        }
    }

    /// `SET room_lock:R <token> EX 5 NX`, polled every 100 ms for up to 5 s.
    async fn lock(&self, key: &str, token: &str, scheduled: Instant) -> bool {
        let started = Instant::now();
        loop {
            let reply = self
                .command(
                    &[b"SET", key.as_bytes(), token.as_bytes(), b"EX", b"5", b"NX"],
                    Instant::now(),
                )
                .await;
            if matches!(reply, Some(Value::Simple(ref ok)) if ok == "OK") {
                self.recorder().record(Kind::Lock, scheduled.elapsed());
                return true;
            }
            if started.elapsed() > Duration::from_secs(5) {
                self.recorder().lost(Kind::Lock, scheduled);
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The unlock script by SHA, and by source on `NOSCRIPT`, as go-redis's `Script.Run` does.
    async fn unlock(&self, key: &str, token: &str) {
        let scheduled = Instant::now();
        let connection = self.storage();
        let by_sha = connection
            .call(&[
                b"EVALSHA",
                UNLOCK_SHA.as_bytes(),
                b"1",
                key.as_bytes(),
                token.as_bytes(),
            ])
            .await;
        let reply = match by_sha {
            Ok(Value::Error(e)) if e.starts_with("NOSCRIPT") => {
                connection
                    .call(&[
                        b"EVAL",
                        UNLOCK_SCRIPT.as_bytes(),
                        b"1",
                        key.as_bytes(),
                        token.as_bytes(),
                    ])
                    .await
            }
            other => other,
        };
        match reply {
            Ok(Value::Integer(1)) => self.recorder().record(Kind::Storage, scheduled.elapsed()),
            Ok(other) => self
                .recorder()
                .error(format!("unlock answered {other:?}, not integer 1")),
            Err(e) => self.recorder().error(format!("connection: {e}")),
        }
    }

    /// A participant joins: room lookups, the participant record (twice: join, then its track),
    /// the room record, and its subscriptions.
    pub async fn join(self: Arc<Self>, slot: usize, identity: &str, scheduled: Instant) {
        let Some((room, participant)) = self.participant(slot, identity, true) else {
            return;
        };
        let info = filler(self.shared.options.participant_bytes);
        let room_info = filler(self.shared.options.room_bytes);
        for _ in 0..2 {
            self.command(&[b"HGET", b"room_node_map", room.as_bytes()], scheduled)
                .await;
        }
        let key = format!("room_participants:{room}");
        self.pipeline(
            vec![
                args(&[b"HSET", key.as_bytes(), identity.as_bytes(), &info]),
                args(&[b"HSET", b"rooms", room.as_bytes(), &room_info]),
            ],
            Instant::now(),
        )
        .await;
        self.command(
            &[b"HSET", key.as_bytes(), identity.as_bytes(), &info],
            Instant::now(),
        )
        .await;
        let channels = channels::participant_channels(&room, identity, participant.agent);
        self.subscribe(&channels, Instant::now()).await;
    }

    /// A participant leaves: its subscriptions, its record, the room records, and a signal
    /// message to its signal node.
    pub async fn leave(self: Arc<Self>, slot: usize, identity: &str, scheduled: Instant) {
        let Some((room, participant)) = self.participant(slot, identity, false) else {
            return;
        };
        let channels = channels::participant_channels(&room, identity, participant.agent);
        self.unsubscribe(&channels, scheduled).await;
        let key = format!("room_participants:{room}");
        self.command(&[b"HDEL", key.as_bytes(), identity.as_bytes()], scheduled)
            .await;
        self.store_room(room.as_str()).await;
        self.signal_to(participant.signal_node, 200, Instant::now())
            .await;
    }

    /// Marks `identity` present (`joining`) or gone; the room's name and the participant, if
    /// the room is open and the participant was in the other state.
    fn participant(
        &self,
        slot: usize,
        identity: &str,
        joining: bool,
    ) -> Option<(String, Participant)> {
        let mut room = self.rooms[slot].lock().expect("room lock");
        if !room.open {
            return None;
        }
        let name = room.name.clone();
        let participant = room
            .participants
            .iter_mut()
            .find(|p| p.identity == identity && p.present != joining)?;
        participant.present = joining;
        Some((name, participant.clone()))
    }

    /// A participant's record changes (a track published or muted).
    pub async fn update_participant(self: Arc<Self>, slot: usize, scheduled: Instant) {
        let Some((room, identity)) = self.someone(slot) else {
            return;
        };
        let info = filler(self.shared.options.participant_bytes);
        let key = format!("room_participants:{room}");
        self.command(
            &[b"HSET", key.as_bytes(), identity.as_bytes(), &info],
            scheduled,
        )
        .await;
    }

    /// A human participant of an open room, by rotation.
    fn someone(&self, slot: usize) -> Option<(String, String)> {
        let room = self.rooms[slot].lock().expect("room lock");
        if !room.open {
            return None;
        }
        let present: Vec<&Participant> = room
            .participants
            .iter()
            .filter(|p| p.present && !p.agent)
            .collect();
        if present.is_empty() {
            return None;
        }
        let pick = (self.shared.id() as usize) % present.len();
        Some((room.name.clone(), present[pick].identity.clone()))
    }

    /// One human leaves and joins again.
    pub async fn churn(self: Arc<Self>, slot: usize, scheduled: Instant) {
        let Some((_, identity)) = self.someone(slot) else {
            return;
        };
        self.clone().leave(slot, &identity, scheduled).await;
        self.join(slot, &identity, Instant::now()).await;
    }

    /// The room closes (its participants' subscriptions and its own go, then the pipelined
    /// deletes) and opens again as a new room.
    pub async fn recycle_room(self: Arc<Self>, slot: usize, scheduled: Instant) {
        let (name, participants) = {
            let mut room = self.rooms[slot].lock().expect("room lock");
            if !room.open {
                return;
            }
            room.open = false;
            room.serving = false;
            (room.name.clone(), std::mem::take(&mut room.participants))
        };
        for p in participants.iter().filter(|p| p.present) {
            let channels = channels::participant_channels(&name, &p.identity, p.agent);
            self.unsubscribe(&channels, scheduled).await;
        }
        self.unsubscribe(&channels::room_channels(&name), scheduled)
            .await;
        self.command(&[b"HGET", b"rooms", name.as_bytes()], scheduled)
            .await;
        self.pipeline(
            vec![
                args(&[b"HDEL", b"rooms", name.as_bytes()]),
                args(&[b"HDEL", b"room_internal", name.as_bytes()]),
                args(&[
                    b"DEL",
                    format!("room_participants:{name}").as_bytes(),
                    format!("agent_dispatch:{name}").as_bytes(),
                    format!("agent_job:{name}").as_bytes(),
                ]),
            ],
            Instant::now(),
        )
        .await;
        self.open_room(slot, Instant::now()).await;
    }

    // ----- Pub/sub -----

    async fn subscribe(&self, channels: &[String], scheduled: Instant) {
        self.subscription_change(b"SUBSCRIBE", channels, scheduled)
            .await;
    }

    async fn unsubscribe(&self, channels: &[String], scheduled: Instant) {
        self.subscription_change(b"UNSUBSCRIBE", channels, scheduled)
            .await;
    }

    /// SUBSCRIBE / UNSUBSCRIBE in one command; confirmed by push frames, so a PING after it
    /// (answered once the server has handled the command before) times it.
    async fn subscription_change(&self, verb: &[u8], channels: &[String], scheduled: Instant) {
        let mut command: Vec<&[u8]> = vec![verb];
        command.extend(channels.iter().map(|c| c.as_bytes()));
        if let Err(e) = self.subscriptions.send_unanswered(&command) {
            self.recorder().error(format!("connection: {e}"));
            return;
        }
        match self.subscriptions.call(&[b"PING"]).await {
            Ok(Value::Error(e)) => self.recorder().error(format!("PING: {e}")),
            Ok(_) => self.recorder().record(Kind::Subscribe, scheduled.elapsed()),
            Err(e) => self.recorder().error(format!("connection: {e}")),
        }
    }

    async fn publish(&self, channel: &str, message: &Message, size: usize, scheduled: Instant) {
        let payload = message.encode(size);
        match self
            .publisher(channel)
            .call(&[b"PUBLISH", channel.as_bytes(), &payload])
            .await
        {
            Ok(Value::Integer(_)) => self.recorder().record(Kind::Publish, scheduled.elapsed()),
            Ok(other) => self.recorder().error(format!("PUBLISH answered {other:?}")),
            Err(e) => self.recorder().error(format!("connection: {e}")),
        }
    }

    /// A signal relay message from this node to `to`, acked by `to`.
    async fn signal_to(&self, to: usize, size: usize, scheduled: Instant) {
        let id = self.shared.id();
        self.awaiting.lock().expect("awaiting lock").insert(
            id,
            Awaiting {
                scheduled,
                exchange: Exchange::Signal {
                    to,
                    size,
                    first_sent: Instant::now(),
                    attempts: 1,
                },
            },
        );
        self.signal_checks
            .lock()
            .expect("signal checks lock")
            .push(Reverse((Instant::now() + SIGNAL_RETRY_AT[0], id)));
        self.send_signal(id, to, size, scheduled).await;
    }

    async fn send_signal(&self, id: u64, to: usize, size: usize, scheduled: Instant) {
        let target = self.shared.node(to).name.clone();
        let message = Message {
            tag: Tag::Signal,
            id,
            from: self.index,
            sent_us: self.shared.now_us(),
            extra: String::new(),
        };
        self.publish(&channels::signal(&target), &message, size, scheduled)
            .await;
    }

    /// Sends again every signal message whose attempt timed out, and counts lost those whose
    /// stream closed (see [`signal_retry`]): a slow server gets more traffic, as under LiveKit.
    pub fn retry_signals(self: &Arc<Self>) {
        let now = Instant::now();
        let mut resend = Vec::new();
        {
            let mut checks = self.signal_checks.lock().expect("signal checks lock");
            let mut awaiting = self.awaiting.lock().expect("awaiting lock");
            while checks.peek().is_some_and(|Reverse((at, _))| *at <= now) {
                let Reverse((_, id)) = checks.pop().expect("peeked");
                let Some(Awaiting {
                    scheduled,
                    exchange:
                        Exchange::Signal {
                            to,
                            size,
                            first_sent,
                            attempts,
                        },
                }) = awaiting.get_mut(&id)
                else {
                    continue; // acked
                };
                let next = match signal_retry(now.duration_since(*first_sent), *attempts) {
                    SignalRetry::GiveUp => {
                        self.shared.recorder.lost(Kind::SignalAck, *scheduled);
                        awaiting.remove(&id);
                        continue;
                    }
                    SignalRetry::Wait { next } => next,
                    SignalRetry::Resend {
                        attempts: sent,
                        next,
                    } => {
                        *attempts = sent;
                        self.shared.recorder.retry(Kind::SignalAck, *scheduled);
                        resend.push((id, *to, *size));
                        next
                    }
                };
                checks.push(Reverse((*first_sent + next, id)));
            }
        }
        for (id, to, size) in resend {
            let node = self.clone();
            tokio::spawn(async move { node.send_signal(id, to, size, Instant::now()).await });
        }
    }

    /// A client ping on a participant's signal connection: relayed from the signal node to the
    /// room's node, and the pong back, each acked.
    pub async fn ping(self: Arc<Self>, slot: usize, scheduled: Instant) {
        let Some(signal_node) = self.signal_node_of_someone(slot) else {
            return;
        };
        let from = self.shared.node(signal_node).clone();
        from.signal_to(self.index, 100, scheduled).await;
        self.signal_to(signal_node, 100, Instant::now()).await;
    }

    /// A speaker or connection quality update to every participant of the room.
    pub async fn room_update(self: Arc<Self>, slot: usize, scheduled: Instant) {
        let targets: Vec<usize> = {
            let room = self.rooms[slot].lock().expect("room lock");
            if !room.open {
                return;
            }
            room.participants
                .iter()
                .filter(|p| p.present)
                .map(|p| p.signal_node)
                .collect()
        };
        for target in targets {
            self.signal_to(target, self.shared.options.update_bytes, scheduled)
                .await;
        }
    }

    fn signal_node_of_someone(&self, slot: usize) -> Option<usize> {
        let room = self.rooms[slot].lock().expect("room lock");
        if !room.open {
            return None;
        }
        let present: Vec<&Participant> = room.participants.iter().filter(|p| p.present).collect();
        if present.is_empty() {
            return None;
        }
        Some(present[(self.shared.id() as usize) % present.len()].signal_node)
    }

    /// A unary RPC to a room of this node, from another media node (as the API or an agent
    /// would call it).
    pub async fn room_rpc(self: Arc<Self>, slot: usize, scheduled: Instant) {
        let room = {
            let room = self.rooms[slot].lock().expect("room lock");
            if !room.serving {
                return;
            }
            room.name.clone()
        };
        let id = self.shared.id() as usize;
        let method = channels::ROOM_METHODS[id % channels::ROOM_METHODS.len()];
        let caller = self.shared.node(pick(id, self.shared.node_count())).clone();
        caller.call_rpc(method.into(), room, scheduled).await;
    }

    /// Sends a request from this node; the claim, rclaim and response follow as messages.
    async fn call_rpc(&self, method: String, topic: String, scheduled: Instant) {
        let id = self.shared.id();
        let channel = channels::request(&method, &topic);
        self.awaiting.lock().expect("awaiting lock").insert(
            id,
            Awaiting {
                scheduled,
                exchange: Exchange::Rpc {
                    method: method.clone(),
                    topic,
                    claimed: false,
                },
            },
        );
        let message = Message {
            tag: Tag::Request,
            id,
            from: self.index,
            sent_us: self.shared.now_us(),
            extra: method,
        };
        self.publish(
            &channel,
            &message,
            self.shared.options.request_bytes,
            scheduled,
        )
        .await;
    }

    /// A message for this node.
    fn on_push(self: Arc<Self>, push: Vec<Value>) {
        let [kind, _channel, payload] = push.as_slice() else {
            return;
        };
        if kind.bytes() != Some(b"message") {
            return;
        }
        let Some(payload) = payload.bytes() else {
            return;
        };
        let Some(message) = Message::decode(payload) else {
            self.recorder()
                .error("a message the simulator did not send");
            return;
        };
        let now_us = self.shared.now_us();
        self.recorder().record(
            Kind::Delivery,
            Duration::from_micros(now_us.saturating_sub(message.sent_us)),
        );
        if self.settle(&message) {
            return;
        }
        let payload = payload.to_vec();
        tokio::spawn(async move { self.handle(message, payload).await });
    }

    async fn handle(self: Arc<Self>, message: Message, payload: Vec<u8>) {
        let now = Instant::now();
        match message.tag {
            Tag::Signal => {
                let ack = Message {
                    tag: Tag::Ack,
                    id: message.id,
                    from: self.index,
                    sent_us: self.shared.now_us(),
                    extra: String::new(),
                };
                let to = self.shared.node(message.from).name.clone();
                self.publish(&channels::signal(&to), &ack, 100, now).await;
            }
            Tag::Request => {
                // Every subscriber claims; the one whose SET NX wins answers.
                let key = channels::claim_key(&payload);
                let n = self.shared.id().to_string();
                let won = self
                    .command(
                        &[b"SET", key.as_bytes(), n.as_bytes(), b"EX", b"5", b"NX"],
                        now,
                    )
                    .await;
                if matches!(won, Some(Value::Simple(ref ok)) if ok == "OK") {
                    let claim = Message {
                        tag: Tag::Claim,
                        id: message.id,
                        from: self.index,
                        sent_us: self.shared.now_us(),
                        extra: String::new(),
                    };
                    let caller = self.shared.node(message.from).name.clone();
                    self.publish(&channels::responses(&caller), &claim, 100, now)
                        .await;
                }
            }
            Tag::Claim => {
                let chosen = {
                    let mut awaiting = self.awaiting.lock().expect("awaiting lock");
                    match awaiting.get_mut(&message.id) {
                        Some(Awaiting {
                            scheduled,
                            exchange:
                                Exchange::Rpc {
                                    method,
                                    topic,
                                    claimed,
                                },
                        }) if !*claimed => {
                            *claimed = true;
                            self.recorder().record(Kind::Claim, scheduled.elapsed());
                            Some((method.clone(), topic.clone()))
                        }
                        _ => None,
                    }
                };
                if let Some((method, topic)) = chosen {
                    let rclaim = Message {
                        tag: Tag::Rclaim,
                        id: message.id,
                        from: self.index,
                        sent_us: self.shared.now_us(),
                        extra: message.from.to_string(),
                    };
                    self.publish(&channels::rclaim(&method, &topic), &rclaim, 100, now)
                        .await;
                }
            }
            Tag::Rclaim => {
                if message.extra.parse::<usize>().ok() == Some(self.index) {
                    let response = Message {
                        tag: Tag::Response,
                        id: message.id,
                        from: self.index,
                        sent_us: self.shared.now_us(),
                        extra: String::new(),
                    };
                    let caller = self.shared.node(message.from).name.clone();
                    self.publish(
                        &channels::responses(&caller),
                        &response,
                        self.shared.options.response_bytes,
                        now,
                    )
                    .await;
                }
            }
            // Answers, settled as they arrive (`settle`).
            Tag::Keepalive | Tag::Ack | Tag::Response => {}
        }
    }

    /// Settles a message that is an answer (a keepalive, an ack, an RPC response) on the
    /// reading task, without a task of its own; false for one that needs a reply.
    fn settle(&self, message: &Message) -> bool {
        match message.tag {
            Tag::Keepalive => {
                let age = self.shared.now_us().saturating_sub(message.sent_us);
                self.recorder()
                    .record(Kind::Keepalive, Duration::from_micros(age));
            }
            Tag::Ack => {
                if let Some(awaiting) = self.take(message.id) {
                    self.recorder()
                        .record(Kind::SignalAck, awaiting.scheduled.elapsed());
                }
            }
            Tag::Response => {
                if let Some(rpc) = self.take(message.id) {
                    self.recorder().record(Kind::Rpc, rpc.scheduled.elapsed());
                }
            }
            _ => return false,
        }
        true
    }

    fn take(&self, id: u64) -> Option<Awaiting> {
        self.awaiting.lock().expect("awaiting lock").remove(&id)
    }

    /// Counts lost the exchanges unanswered for longer than [`LOST_AFTER`]; at the end of the
    /// run, every one past its deadline, and forgets the rest (their outcome is unknown).
    pub fn sweep(&self, at_end: bool) {
        let mut awaiting = self.awaiting.lock().expect("awaiting lock");
        let recorder = &self.shared.recorder;
        awaiting.retain(|_, a| {
            let age = a.scheduled.elapsed();
            let past = |kind: Kind| {
                age >= LOST_AFTER || (at_end && kind.deadline().is_some_and(|d| age > d))
            };
            if matches!(a.exchange, Exchange::Rpc { claimed: false, .. }) && past(Kind::Claim) {
                recorder.lost(Kind::Claim, a.scheduled);
            }
            let lost = past(a.kind());
            if lost {
                recorder.lost(a.kind(), a.scheduled);
            }
            !at_end && !lost
        });
    }
}

fn args(parts: &[&[u8]]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.to_vec()).collect()
}

fn filler(size: usize) -> Vec<u8> {
    vec![b'p'; size.max(64)]
}

/// A node index spread by `seed`.
fn pick(seed: usize, count: usize) -> usize {
    if count == 0 {
        0
    } else {
        seed.wrapping_mul(2654435761) % count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn an_unacked_signal_message_is_sent_at_0_500_1500_and_3500_ms_and_given_up_at_7500() {
        let mut attempts = 1;
        let mut sent_at = vec![0];
        let mut gave_up = None;
        // Looked at every 100 ms, as housekeeping does.
        for age in (0..10_000).step_by(100) {
            match signal_retry(ms(age), attempts) {
                SignalRetry::Resend { attempts: a, .. } => {
                    attempts = a;
                    sent_at.push(age);
                }
                SignalRetry::Wait { .. } => {}
                SignalRetry::GiveUp => {
                    gave_up = Some(age);
                    break;
                }
            }
        }
        assert_eq!(sent_at, [0, 500, 1500, 3500]);
        assert_eq!(gave_up, Some(7500));
    }

    #[test]
    fn a_signal_retry_that_falls_behind_sends_once_and_catches_up() {
        // First looked at 2 s after the first send: two retry times passed, one send.
        assert_eq!(
            signal_retry(ms(2000), 1),
            SignalRetry::Resend {
                attempts: 3,
                next: ms(3500)
            }
        );
        assert_eq!(
            signal_retry(ms(2000), 3),
            SignalRetry::Wait { next: ms(3500) }
        );
        assert_eq!(
            signal_retry(ms(4000), 4),
            SignalRetry::Wait { next: ms(7500) }
        );
        assert_eq!(signal_retry(ms(7500), 4), SignalRetry::GiveUp);
    }
}
