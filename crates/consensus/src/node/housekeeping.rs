//! The leader's housekeeping, and the node's own writes: while it leads, renew every lease once
//! per term, then reap expired keys, expire leases and commit idle `Tick`s; on any node, record
//! its incarnation in the replicated state once it is a member.
//!
//! Does not own: what expiry means (the state crate), the replicated clock (`crate::clock`).

use std::time::{Duration, Instant};

use conclave_state::{Command, Millis, WriteRequest};
use openraft::ServerState;

use super::{Node, NodeError};
use crate::leader::LeaderRequest;

/// How often the leader looks for expired keys and leases.
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(100);
/// An idle leader commits a `Tick` once the replicated clock lags its time by this much, so
/// replicated time (and with it expiry on every replica) advances without writes.
const IDLE_TICK_AFTER_MS: Millis = 1000;
/// Most keys (or leases) ended by one entry.
const REAP_BATCH: usize = 1000;

impl Node {
    /// While this node leads: first renews every lease once per term (keep-alives sent during the
    /// election could not commit), then proposes the removal of keys and the end of leases whose
    /// deadline has passed, so every replica removes them at the same log position.
    pub(super) async fn leader_housekeeping(self) {
        let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renewed_in_term = None;
        loop {
            tick.tick().await;
            let metrics = self.inner.raft.metrics().borrow().clone();
            if metrics.state == ServerState::Shutdown {
                return;
            }
            if metrics.current_leader != Some(self.inner.id) {
                continue;
            }
            {
                let mut led_since = self.inner.led_since.lock().expect("lock poisoned");
                if led_since.is_none_or(|(term, _)| term != metrics.current_term) {
                    *led_since = Some((metrics.current_term, Instant::now()));
                }
            }
            if renewed_in_term != Some(metrics.current_term) {
                match self.propose_as_leader(Command::LeaseRenewAll).await {
                    Ok(()) => renewed_in_term = Some(metrics.current_term),
                    Err(e) => tracing::debug!("renewing leases after the election failed: {e}"),
                }
                continue;
            }
            // Expired at the replicated time this leader would stamp now, not at its wall clock.
            let timeout = self.inner.timing.request_timeout;
            let now = match tokio::time::timeout(timeout, self.leader_time()).await {
                Ok(Ok(now)) => now,
                Ok(Err(e)) => {
                    tracing::debug!("reading the replicated time failed: {e:?}");
                    continue;
                }
                Err(_) => continue,
            };
            let (keys, leases, lag) = self.inner.view.read(|m| {
                (
                    m.expired_keys(now, REAP_BATCH),
                    m.expired_leases(now, REAP_BATCH),
                    now.saturating_sub(m.clock()),
                )
            });
            if keys.is_empty() && leases.is_empty() && lag >= IDLE_TICK_AFTER_MS {
                if let Err(e) = self.propose_as_leader(Command::Tick).await {
                    tracing::debug!("advancing the replicated clock failed: {e}");
                }
            }
            if !keys.is_empty() {
                if let Err(e) = self.propose_as_leader(Command::Reap { keys }).await {
                    tracing::debug!("reaping expired keys failed: {e}");
                }
            }
            if !leases.is_empty() {
                if let Err(e) = self
                    .propose_as_leader(Command::LeaseExpire { leases })
                    .await
                {
                    tracing::debug!("expiring leases failed: {e}");
                }
            }
        }
    }

    /// Proposes a housekeeping command if this node leads; never forwarded. A deposed leader's
    /// expiry must not reach the next leader before that one has renewed the leases.
    async fn propose_as_leader(&self, command: Command) -> Result<(), NodeError> {
        let request = WriteRequest {
            id: None,
            stamp: 0,
            command,
        };
        let proposed = tokio::time::timeout(
            self.inner.timing.request_timeout,
            self.execute_as_leader(LeaderRequest::Write(request)),
        )
        .await;
        match proposed {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(NodeError::Unavailable(format!("{e:?}"))),
            Err(_) => Err(NodeError::Unavailable("not committed in time".into())),
        }
    }

    /// Writes one of the node's own commands, within the request timeout.
    async fn propose(&self, command: Command) -> Result<(), NodeError> {
        let request = WriteRequest {
            id: None,
            stamp: 0,
            command,
        };
        let deadline = Instant::now() + self.inner.timing.request_timeout;
        self.write(request, deadline).await.map(|_| ())
    }

    /// Records this node's incarnation in the replicated state once the node is a member that
    /// can reach a leader; retried until it is there.
    pub(super) async fn register_incarnation(self) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let id = self.inner.id;
            if self.inner.raft.metrics().borrow().state == ServerState::Shutdown {
                return;
            }
            if self.inner.view.read(|m| m.incarnation(id)) == Some(self.inner.incarnation) {
                return;
            }
            let is_member = {
                let metrics = self.inner.raft.metrics();
                let metrics = metrics.borrow();
                metrics.current_leader.is_some()
                    && metrics
                        .membership_config
                        .membership()
                        .get_node(&id)
                        .is_some()
            };
            if !is_member {
                continue;
            }
            let command = Command::RegisterNode {
                node: id,
                incarnation: self.inner.incarnation,
            };
            if let Err(e) = self.propose(command).await {
                tracing::debug!("registering this node's incarnation failed: {e}");
            }
        }
    }
}
