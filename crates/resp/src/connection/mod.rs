//! One client connection: reads requests, runs them in order, writes replies, and interleaves
//! pub/sub messages between replies. Keyspace reads and writes, MULTI/EXEC and scripts are here;
//! the connection's own commands (handshake, authentication) are in `session`, pub/sub in
//! `pubsub`, KEYS and SCAN in `keys`.

mod keys;
mod pubsub;
mod session;

pub(crate) use keys::Cursors;
use pubsub::next_item;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use conclave_consensus::{Consistency, NodeError};
use conclave_pubsub::{Receiver, Subscriptions};
use conclave_state::{
    Bytes, Check, Command, Compare, Limits, Machine, Outcome, Revision, Transaction, WriteRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::introspection;
use crate::plan::{self, Plan};
use crate::protocol::{self, Reply, Request, Version};
use crate::scripts;
use crate::table;
use crate::{ReadConsistency, Shared};

/// The largest SCAN COUNT read under the replica's lock; larger steps walk a copy of the
/// replica on a blocking thread.
const SCAN_IN_PLACE: usize = 1024;

/// Replies are written out once this many bytes are waiting, even mid-pipeline.
const FLUSH_AT: usize = 64 * 1024;
/// The error prefix of a write whose outcome is unknown (see `node_error`): not one go-redis,
/// redis-py or Jedis retry by themselves.
const UNCERTAIN: &str = "UNCERTAIN the write may or may not have been applied:";
/// Most requests taken from the input buffer before they are answered.
const MAX_PIPELINE: usize = 1024;
/// Most commands one pipeline sends to the leader in one submission.
const MAX_GROUP_COMMANDS: usize = 256;
/// Most pub/sub messages encoded into one write.
const PUSH_BATCH: usize = 256;

/// A MULTI in progress.
struct Multi {
    queued: Vec<Plan>,
    /// A command was refused while queueing: EXEC answers EXECABORT.
    failed: bool,
}

/// A connection's subscriber on the node's hub.
struct Subscriber {
    subscriptions: Subscriptions,
    receiver: Receiver,
}

struct Connection {
    shared: Arc<Shared>,
    id: u64,
    peer: SocketAddr,
    version: Version,
    /// Who the connection runs as; None until it authenticates.
    login: Option<session::Login>,
    name: Option<Vec<u8>>,
    /// The newest revision this connection wrote or read: session reads wait for it, and its
    /// publishes carry it (causal pub/sub).
    revision: Revision,
    multi: Option<Multi>,
    /// WATCHed keys and the revision each was read at.
    watched: Vec<(Bytes, Revision)>,
    subscriber: Option<Subscriber>,
    closing: bool,
}

/// Runs a connection to its end. `clients` is the number of open connections, this one
/// included (counted by the accept loop, which also waits for them to end when stopping).
pub(crate) async fn run<S>(shared: Arc<Shared>, socket: S, peer: SocketAddr, clients: usize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(socket);
    if clients > shared.options.max_clients {
        let _ = writer
            .write_all(b"-ERR max number of clients reached\r\n")
            .await;
        shared
            .options
            .metrics
            .connected
            .fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let mut connection = Connection {
        id: shared.next_client_id.fetch_add(1, Ordering::Relaxed),
        login: session::Login::anonymous(&shared.options.users),
        shared: shared.clone(),
        peer,
        version: Version::Resp2,
        name: None,
        revision: 0,
        multi: None,
        watched: Vec::new(),
        subscriber: None,
        closing: false,
    };
    let mut stopping = shared.stopping.clone();
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut output = Vec::with_capacity(16 * 1024);
    let limits = shared.options.frame_limits;
    'serve: loop {
        let mut requests = Vec::new();
        let mut protocol_error = None;
        while requests.len() < MAX_PIPELINE {
            match protocol::parse(&mut input, &limits) {
                Ok(Some(request)) => requests.push(request),
                Ok(None) => break,
                Err(error) => {
                    protocol_error = Some(error);
                    break;
                }
            }
        }
        let mut next = 0;
        while next < requests.len() && !connection.closing {
            // Consecutive plain writes of a pipeline go to the leader together.
            let group = connection.write_group(&requests[next..]);
            if group.is_empty() {
                let request = std::mem::take(&mut requests[next]);
                next += 1;
                connection.handle(request, &mut output).await;
            } else {
                next += group.len();
                let (names, plans): (Vec<_>, Vec<_>) = group.into_iter().unzip();
                let started = Instant::now();
                for reply in connection.write_plans(plans).await {
                    reply.encode(connection.version, &mut output);
                }
                let elapsed = started.elapsed();
                for name in names {
                    shared.options.metrics.answered(Some(name), elapsed);
                }
            }
            if output.len() >= FLUSH_AT && connection.flush(&mut writer, &mut output).await.is_err()
            {
                break 'serve;
            }
        }
        if let Some(error) = protocol_error.filter(|_| !connection.closing) {
            tracing::debug!(peer = %connection.peer, error = %error.0, "RESP protocol error");
            Reply::error(format!("ERR Protocol error: {}", error.0))
                .encode(connection.version, &mut output);
            connection.closing = true;
        }
        if !input.is_empty() && requests.len() == MAX_PIPELINE && !connection.closing {
            // More requests are already buffered: answer these, then go on without reading.
            if connection.flush(&mut writer, &mut output).await.is_err() {
                break;
            }
            continue;
        }
        if connection.flush(&mut writer, &mut output).await.is_err() || connection.closing {
            break;
        }
        let subscribed = connection.subscriber.is_some();
        tokio::select! {
            read = reader.read_buf(&mut input) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
            // Between commands: everything read has been answered.
            _ = crate::stopped(&mut stopping) => break,
            item = next_item(&mut connection.subscriber), if subscribed => {
                if !connection.deliver(item, &mut output) {
                    let _ = connection.flush(&mut writer, &mut output).await;
                    break;
                }
            }
        }
    }
    // Bounded: over TLS, shutting down flushes what is buffered, which a client that stopped
    // reading never takes.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), writer.shutdown()).await;
    shared
        .options
        .metrics
        .connected
        .fetch_sub(1, Ordering::Relaxed);
}

impl Connection {
    /// Writes the pending output. A subscriber that stopped reading is cut off once the hub
    /// disconnects it, instead of holding this task in a write forever.
    async fn flush<W: tokio::io::AsyncWrite + Unpin>(
        &mut self,
        writer: &mut W,
        output: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        if output.is_empty() {
            return Ok(());
        }
        let result = match &self.subscriber {
            None => writer.write_all(output).await,
            Some(s) => {
                let receiver = &s.receiver;
                tokio::select! {
                    written = writer.write_all(output) => written,
                    disconnected = async {
                        loop {
                            if let Some(disconnected) = receiver.disconnection() {
                                break disconnected;
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                    } => {
                        tracing::info!(peer = %self.peer, reason = %disconnected, "RESP subscriber disconnected");
                        Err(std::io::Error::other(disconnected.reason))
                    }
                }
            }
        };
        output.clear();
        result
    }

    async fn handle(&mut self, request: Request, output: &mut Vec<u8>) {
        if request.is_empty() {
            return;
        }
        let name = table::lookup(&request[0]).map(|spec| spec.name);
        let started = Instant::now();
        let reply = self.execute(request).await;
        self.shared
            .options
            .metrics
            .answered(name, started.elapsed());
        for reply in reply {
            reply.encode(self.version, output);
        }
    }

    /// Runs one request; most answer one reply, (P)SUBSCRIBE one per name.
    async fn execute(&mut self, request: Request) -> Vec<Reply> {
        let name_lower = String::from_utf8_lossy(&request[0]).to_ascii_lowercase();
        let args = &request[1..];
        let Some(spec) = table::lookup(&request[0]) else {
            self.fail_multi();
            return vec![unknown_command(&request)];
        };
        let name = spec.name;
        if !spec.arity_ok(request.len()) {
            self.fail_multi();
            return vec![Reply::error(format!(
                "ERR wrong number of arguments for '{name_lower}' command"
            ))];
        }
        if let Some(refusal) = self.refusal(spec, args) {
            self.fail_multi();
            return vec![refusal];
        }
        if self.version == Version::Resp2
            && self.subscribed()
            && !matches!(
                name,
                "subscribe"
                    | "unsubscribe"
                    | "psubscribe"
                    | "punsubscribe"
                    | "ping"
                    | "quit"
                    | "reset"
            )
        {
            return vec![Reply::error(format!(
                "ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
            ))];
        }
        if self.multi.is_some()
            && !matches!(
                name,
                "exec" | "discard" | "multi" | "watch" | "quit" | "reset"
            )
        {
            return vec![self.queue(name, args)];
        }
        if let Some(plan) = plan::compile(name, args) {
            return vec![match plan {
                Ok(plan) => self.run_plan(plan).await,
                Err(error) => error,
            }];
        }
        vec![match name {
            "ping" => self.ping(args),
            "echo" => Reply::bulk(args[0].clone()),
            "hello" => self.hello(args),
            "auth" => self.auth(args),
            "select" => match args[0].as_slice() {
                b"0" => Reply::ok(),
                _ => Reply::error("ERR DB index is out of range"),
            },
            "client" => self.client(args),
            "acl" => self.acl(args),
            "quit" => {
                self.closing = true;
                Reply::ok()
            }
            "reset" => {
                self.reset();
                Reply::status("RESET")
            }
            "multi" => match self.multi {
                Some(_) => Reply::error("ERR MULTI calls can not be nested"),
                None => {
                    self.multi = Some(Multi {
                        queued: Vec::new(),
                        failed: false,
                    });
                    Reply::ok()
                }
            },
            "exec" => self.exec().await,
            "discard" => match self.multi.take() {
                Some(_) => {
                    self.watched.clear();
                    Reply::ok()
                }
                None => Reply::error("ERR DISCARD without MULTI"),
            },
            "watch" => self.watch(args).await,
            "unwatch" => {
                self.watched.clear();
                Reply::ok()
            }
            "eval" => match self.shared.scripts.load(&args[0]) {
                Ok((_, script)) => self.run_script(script, &args[1..]).await,
                Err(error) => error,
            },
            "evalsha" => match self.shared.scripts.get(&args[0]) {
                Some(script) => self.run_script(script, &args[1..]).await,
                None => Reply::error("NOSCRIPT No matching script. Please use EVAL."),
            },
            "script" => self.script(args),
            "subscribe" | "psubscribe" | "unsubscribe" | "punsubscribe" => {
                return self.change_subscriptions(name, args).await;
            }
            "publish" => {
                let receivers = self.shared.hub.publish(
                    args[0].clone(),
                    args[1].clone(),
                    self.session_revision(),
                );
                Reply::Integer(receivers as i64)
            }
            "pubsub" => self.pubsub(args),
            "keys" => self.keys(&args[0]).await,
            "scan" => self.scan(args).await,
            "dbsize" => match self.read(|m, _| Reply::Integer(m.len() as i64)).await {
                Ok(reply) | Err(reply) => reply,
            },
            "info" => Reply::bulk(introspection::info(&self.shared, args)),
            "command" => introspection::command(args),
            "config" => introspection::config(&self.shared, args),
            // The replicated time, which TTLs are judged by (not this node's wall clock).
            "time" => match self
                .read(|_, now| {
                    Reply::Array(vec![
                        Reply::bulk((now / 1000).to_string()),
                        Reply::bulk((now % 1000 * 1000).to_string()),
                    ])
                })
                .await
            {
                Ok(reply) | Err(reply) => reply,
            },
            other => Reply::error(format!("ERR command '{other}' is listed but not handled")),
        }]
    }

    fn subscribed(&self) -> bool {
        self.subscriber
            .as_ref()
            .is_some_and(|s| s.subscriptions.counts() != (0, 0))
    }

    fn fail_multi(&mut self) {
        if let Some(multi) = &mut self.multi {
            multi.failed = true;
        }
    }

    /// Queues a command inside MULTI.
    fn queue(&mut self, name: &str, args: &[Vec<u8>]) -> Reply {
        let compiled = match plan::compile(name, args) {
            Some(compiled) => compiled,
            None => Err(Reply::error(format!(
                "ERR '{name}' inside MULTI is not supported by Conclave (only keyspace reads and writes are)"
            ))),
        };
        let multi = self.multi.as_mut().expect("queue is called inside MULTI");
        match compiled {
            Ok(plan) => {
                multi.queued.push(plan);
                Reply::status("QUEUED")
            }
            Err(error) => {
                multi.failed = true;
                error
            }
        }
    }

    // ----- Keyspace -----

    /// Records a write acknowledged to this client at `revision` (the node records it too, for
    /// every connection and front end: see [`conclave_consensus::Node::acknowledged`]).
    fn acknowledged(&mut self, revision: Revision) {
        self.revision = self.revision.max(revision);
    }

    /// What this connection's state depends on: its writes and reads, and every write this node
    /// has acknowledged to any client, on either protocol. A Redis client pools connections and
    /// expects a write acknowledged on one to be visible on the next, as on a single Redis
    /// server. A session read waits for it (the node's read barrier adds what the node
    /// acknowledged, and what was committed before it started); a publish carries it.
    fn session_revision(&self) -> Revision {
        self.revision.max(self.shared.node.acknowledged())
    }

    /// Waits for this connection's read barrier, then reads the local replica.
    async fn read<T>(&mut self, read: impl FnOnce(&Machine, u64) -> T) -> Result<T, Reply> {
        let node = &self.shared.node;
        let consistency = match self.shared.options.consistency {
            ReadConsistency::Session => Consistency::Session {
                min_revision: self.revision,
            },
            ReadConsistency::Linearizable => Consistency::Linearizable,
            ReadConsistency::Local => Consistency::Local,
        };
        let deadline = Instant::now() + self.shared.options.write_deadline;
        node.read_barrier(consistency, deadline)
            .await
            .map_err(node_error)?;
        // Expiry is judged at the replica's replicated clock, so replicas at one revision agree.
        let (revision, value) = node.view().read(|m| (m.revision(), read(m, m.clock())));
        self.revision = self.revision.max(revision);
        Ok(value)
    }

    /// [`Connection::read`] for reads that walk the whole keyspace (KEYS): they run on a blocking
    /// thread against a copy of the replica (its maps are shared copy-on-write, so the copy is
    /// cheap), never holding the replica's lock or a runtime thread while they walk; at most
    /// `MAX_WALKS` at once per node.
    async fn read_detached<T: Send + 'static>(
        &mut self,
        read: impl FnOnce(&Machine, u64) -> T + Send + 'static,
    ) -> Result<T, Reply> {
        let shared = self.shared.clone();
        let _walking = match shared.walks.try_acquire() {
            Ok(turn) => turn,
            Err(tokio::sync::TryAcquireError::Closed) => {
                return Err(Reply::error("ERR the node is stopping"))
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                shared.options.metrics.walks_waited.inc();
                shared
                    .walks
                    .acquire()
                    .await
                    .map_err(|_| Reply::error("ERR the node is stopping"))?
            }
        };
        let machine = self.read(|m, _| m.clone()).await?;
        tokio::task::spawn_blocking(move || {
            let now = machine.clock();
            read(&machine, now)
        })
        .await
        .map_err(|e| Reply::error(format!("ERR read failed: {e}")))
    }

    /// The plain writes at the front of a pipeline, compiled: commands that would run the same
    /// way one at a time (no MULTI, no pub/sub mode, nothing refused), so they may be sent to
    /// the leader together.
    /// Each plan comes with its command's name (for the latency figures).
    fn write_group(&mut self, requests: &[Request]) -> Vec<(&'static str, Plan)> {
        let mut group = Vec::new();
        let mut commands = 0;
        // The user's current role (the users file may have changed it); a removed user's
        // requests go one by one, to be refused.
        let current = self.follow_users();
        if !current || self.multi.is_some() || !self.may_write() || self.subscribed() {
            return group;
        }
        for request in requests {
            let Some(spec) = request.first().and_then(|name| table::lookup(name)) else {
                break;
            };
            if !spec.arity_ok(request.len()) {
                break;
            }
            let Some(Ok(plan)) = plan::compile(spec.name, &request[1..]) else {
                break;
            };
            let plain = !plan.is_read()
                && plan.commands.iter().all(Command::allowed_in_transaction)
                && check_limits(&plan.commands).is_ok();
            if !plain || commands + plan.commands.len() > MAX_GROUP_COMMANDS {
                break;
            }
            commands += plan.commands.len();
            group.push((spec.name, plan));
        }
        group
    }

    /// Applies write plans in order through the node's batcher; one reply per plan.
    async fn write_plans(&mut self, plans: Vec<Plan>) -> Vec<Reply> {
        let version = self.version;
        let fail_all = |reply: Reply| vec![reply; plans.len()];
        let commands: Vec<Command> = plans.iter().flat_map(|p| p.commands.clone()).collect();
        if let Err(error) = check_limits(&commands) {
            return fail_all(error);
        }
        let deadline = Instant::now() + self.shared.options.write_deadline;
        match self.shared.batcher.write(commands, deadline).await {
            Ok((revision, outcomes)) => {
                self.acknowledged(revision);
                let mut rest = outcomes.as_slice();
                plans
                    .iter()
                    .map(|plan| {
                        let (mine, others) = rest.split_at(plan.commands.len().min(rest.len()));
                        rest = others;
                        plan.shape.reply(mine, version)
                    })
                    .collect()
            }
            Err(error) => fail_all(node_error(error)),
        }
    }

    /// Proposes a write through the leader and returns its outcome.
    async fn write(&mut self, command: Command) -> Result<Outcome, Reply> {
        check_limits(std::slice::from_ref(&command))?;
        let request = WriteRequest {
            id: None,
            stamp: 0,
            command,
        };
        let deadline = Instant::now() + self.shared.options.write_deadline;
        let reply = self
            .shared
            .node
            .write(request, deadline)
            .await
            .map_err(node_error)?;
        self.acknowledged(reply.revision);
        match reply.outcome {
            Outcome::Forgotten => Err(plan::forgotten()),
            outcome => Ok(outcome),
        }
    }

    /// Runs one plan: reads on the replica, writes through the leader (several commands as one
    /// transaction, so MSET is atomic).
    async fn run_plan(&mut self, plan: Plan) -> Reply {
        let version = self.version;
        if !plan.is_read() {
            return self.write_plans(vec![plan]).await.remove(0);
        }
        match self.read(|m, now| query_all(m, &plan.commands, now)).await {
            Ok(outcomes) => plan.shape.reply(&outcomes, version),
            Err(error) => error,
        }
    }

    async fn run_script(&mut self, script: scripts::Script, args: &[Vec<u8>]) -> Reply {
        match scripts::compile(script, args) {
            Ok(plan) if !plan.is_read() && !self.may_write() => {
                Reply::error("NOPERM this user has no permissions to run a script that writes")
            }
            Ok(plan) => self.run_plan(plan).await,
            Err(error) => error,
        }
    }

    fn script(&mut self, args: &[Vec<u8>]) -> Reply {
        let sub = args[0].to_ascii_uppercase();
        match (sub.as_slice(), &args[1..]) {
            (b"LOAD", [source]) => match self.shared.scripts.load(source) {
                Ok((sha, _)) => Reply::bulk(sha),
                Err(error) => error,
            },
            (b"EXISTS", shas) if !shas.is_empty() => Reply::Array(
                shas.iter()
                    .map(|sha| Reply::Integer(i64::from(self.shared.scripts.get(sha).is_some())))
                    .collect(),
            ),
            (b"FLUSH", _) => {
                self.shared.scripts.flush();
                Reply::ok()
            }
            _ => Reply::error(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try SCRIPT HELP.",
                String::from_utf8_lossy(&args[0])
            )),
        }
    }

    // ----- Transactions -----

    async fn watch(&mut self, keys: &[Vec<u8>]) -> Reply {
        if self.multi.is_some() {
            return Reply::error("ERR WATCH inside MULTI is not allowed");
        }
        // The revision the watch starts from: everything this connection could have read.
        match self.read(|m, _| m.revision()).await {
            Ok(revision) => {
                for key in keys {
                    self.watched.push((Bytes::from(key.clone()), revision));
                }
                Reply::ok()
            }
            Err(error) => error,
        }
    }

    async fn exec(&mut self) -> Reply {
        let Some(multi) = self.multi.take() else {
            return Reply::error("ERR EXEC without MULTI");
        };
        let watched = std::mem::take(&mut self.watched);
        if multi.failed {
            return Reply::error("EXECABORT Transaction discarded because of previous errors.");
        }
        // The role may have changed since the commands were queued (as Redis, checked again).
        let plans = multi.queued;
        if plans.iter().any(|plan| !plan.is_read()) && !self.may_write() {
            return Reply::error(
                "NOPERM ACLs rules changed between the moment the transaction was accumulated and the EXEC call",
            );
        }
        let version = self.version;
        let commands: Vec<Command> = plans.iter().flat_map(|p| p.commands.clone()).collect();
        let outcomes = if watched.is_empty() && plans.iter().all(Plan::is_read) {
            // Only reads: the replica answers them all at one revision.
            self.read(|m, now| Some(query_all(m, &commands, now))).await
        } else {
            let compares = watched
                .into_iter()
                .map(|(key, revision)| Compare {
                    key,
                    field: None,
                    check: Check::UnchangedSince(revision),
                })
                .collect();
            let txn = Transaction {
                compares,
                success: commands,
                failure: vec![],
            };
            match self.write(Command::Txn(Box::new(txn))).await {
                Ok(Outcome::Txn {
                    succeeded: true,
                    outcomes,
                }) => Ok(Some(outcomes)),
                Ok(Outcome::Txn { .. }) => Ok(None),
                Ok(other) => Err(Reply::error(format!(
                    "ERR internal: EXEC answered {other:?}"
                ))),
                Err(error) => Err(error),
            }
        };
        match outcomes {
            Ok(Some(outcomes)) => {
                let mut rest = outcomes.as_slice();
                let replies = plans
                    .iter()
                    .map(|plan| {
                        let (mine, others) = rest.split_at(plan.commands.len().min(rest.len()));
                        rest = others;
                        plan.shape.reply(mine, version)
                    })
                    .collect();
                Reply::Array(replies)
            }
            Ok(None) => Reply::NilArray,
            Err(error) => error,
        }
    }
}

/// Checks commands against the store's limits as the one entry they will be sent as.
pub(crate) fn check_limits(commands: &[Command]) -> Result<(), Reply> {
    let command = match commands {
        [one] => one.clone(),
        many => Command::Txn(Box::new(Transaction {
            compares: vec![],
            success: many.to_vec(),
            failure: vec![],
        })),
    };
    let request = WriteRequest {
        id: None,
        stamp: 0,
        command,
    };
    Limits::DEFAULT
        .check(&request)
        .map_err(|e| Reply::error(format!("ERR {e}")))
}

/// Answers every command of a read-only plan from one replica state.
pub(crate) fn query_all(machine: &Machine, commands: &[Command], now: u64) -> Vec<Outcome> {
    commands
        .iter()
        .map(|command| match command {
            Command::Query(query) => match machine.query(query, now) {
                Ok(answer) => Outcome::Answer(answer),
                Err(_) => Outcome::WrongType,
            },
            other => unreachable!("a read plan holds only queries, not {}", other.name()),
        })
        .collect()
}

fn unknown_command(request: &Request) -> Reply {
    let mut text = format!(
        "ERR unknown command '{}', with args beginning with: ",
        String::from_utf8_lossy(&request[0])
    );
    for arg in request[1..].iter().take(8) {
        text.push_str(&format!("'{}' ", String::from_utf8_lossy(arg)));
    }
    Reply::error(text)
}

/// The reply for a request the node could not serve in time. `TRYAGAIN`, which clients retry by
/// themselves, only when the command certainly was not and will not be applied; a write whose
/// outcome is unknown gets an error no client retries by itself (a retry could apply it twice).
pub(crate) fn node_error(error: NodeError) -> Reply {
    match error {
        NodeError::Unavailable(reason) => Reply::error(format!("TRYAGAIN {reason}")),
        NodeError::Indeterminate(reason) => Reply::error(format!("{UNCERTAIN} {reason}")),
        NodeError::Rejected(reason) => Reply::error(format!("ERR {reason}")),
        // Redis's error for writes it cannot persist; clients do not retry it by themselves.
        NodeError::NoSpace(reason) => Reply::error(format!("MISCONF {reason}")),
    }
}
