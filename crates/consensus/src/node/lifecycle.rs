//! The node's lifecycle in one place: whether it takes part in Raft yet, whether it is stopping,
//! and whether it is handing its leadership over, with the requests it is executing as leader
//! (a handover waits them out).
//!
//! ```text
//!   open ──(has Raft state)──────────────────────────┐
//!     │                                              v
//!     └──> forming ──take_part (Node::form decided)──> taking part
//!
//!   any time:        stop            (Node::stop_elections; never undone)
//!   while leading:   begin_handover … its guard dropped   (Node::hand_over, a transfer)
//! ```
//!
//! The three facts are independent, so they are three bits of one word rather than variants of
//! one enum: a node told to stop while it is still forming may yet decide how it joins (and
//! then takes part while stopping), and a stopping leader hands over while it stops. Every
//! transition and query is sequentially consistent, as the flags it replaces were: a handover
//! sets its bit and then waits until nothing is being led, while a request counts itself as
//! led and then checks the bit (see [`Lifecycle::lead`]), so one of the two always sees the
//! other.
//!
//! Does not own: when each transition happens (`forming.rs`, `elections.rs`, `handover.rs`),
//! nor openraft's own roles (leader, follower, ...), read from its metrics.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

/// Set once the node answers Raft messages (see `Node::takes_part`).
const TAKES_PART: u8 = 1 << 0;
/// Set by `Node::stop_elections`: elections stay off until the process exits.
const STOPPING: u8 = 1 << 1;
/// Set while this leader hands its leadership over (see `Node::hand_over`): it proposes nothing
/// more, so the successor it picked keeps holding its whole log.
const HANDING_OVER: u8 = 1 << 2;

/// Where the node is in its life (see the module documentation).
pub(super) struct Lifecycle {
    /// The bits above.
    stage: AtomicU8,
    /// Requests being executed by this node as leader (see `Node::lead`).
    leading: AtomicU64,
}

impl Lifecycle {
    /// A node just opened: forming, not stopping, not handing over, leading nothing.
    pub(super) fn new() -> Self {
        Lifecycle {
            stage: AtomicU8::new(0),
            leading: AtomicU64::new(0),
        }
    }

    /// The node answers Raft messages from now on: it had Raft state when it opened, or it has
    /// decided how it comes into the cluster. Never undone.
    pub(super) fn take_part(&self) {
        self.stage.fetch_or(TAKES_PART, Ordering::SeqCst);
    }

    /// Whether [`Lifecycle::take_part`] has happened.
    pub(super) fn takes_part(&self) -> bool {
        self.is(TAKES_PART)
    }

    /// The node is about to stop: it starts no more elections. Never undone.
    pub(super) fn stop(&self) {
        self.stage.fetch_or(STOPPING, Ordering::SeqCst);
    }

    /// Whether [`Lifecycle::stop`] has happened.
    pub(super) fn stopping(&self) -> bool {
        self.is(STOPPING)
    }

    /// This leader starts handing its leadership over: requests it has not begun to lead are
    /// refused (and retried by their sender) until the returned guard is dropped. A guard, so a
    /// handover whose caller gives up on it (a transfer's deadline, a dropped Forward) still
    /// ends: a leader left handing over would refuse every request for as long as it leads.
    pub(super) fn begin_handover(&self) -> Handover<'_> {
        self.stage.fetch_or(HANDING_OVER, Ordering::SeqCst);
        Handover(&self.stage)
    }

    /// Whether a handover is under way.
    pub(super) fn handing_over(&self) -> bool {
        self.is(HANDING_OVER)
    }

    /// Counts a request this node is about to execute as leader, for as long as the returned
    /// guard lives; None (and nothing counted) if a handover is under way.
    pub(super) fn lead(&self) -> Option<Leading<'_>> {
        self.leading.fetch_add(1, Ordering::SeqCst);
        let leading = Leading(&self.leading);
        if self.handing_over() {
            return None;
        }
        Some(leading)
    }

    /// Resolves once no request is being executed as leader: after a handover has begun, the
    /// log then stays put.
    pub(super) async fn nothing_led(&self) {
        while self.leading.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn is(&self, bit: u8) -> bool {
        self.stage.load(Ordering::SeqCst) & bit != 0
    }
}

/// A request counted as led (see [`Lifecycle::lead`]); uncounted when dropped.
/// A handover under way (see [`Lifecycle::begin_handover`]); dropping it ends the handover:
/// this node leads requests again if it still leads.
pub(super) struct Handover<'a>(&'a AtomicU8);

impl Drop for Handover<'_> {
    fn drop(&mut self) {
        self.0.fetch_and(!HANDING_OVER, Ordering::SeqCst);
    }
}

pub(super) struct Leading<'a>(&'a AtomicU64);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_node_forms_and_then_takes_part_for_good() {
        let life = Lifecycle::new();
        assert!(!life.takes_part());
        life.take_part();
        life.take_part();
        assert!(life.takes_part());
        assert!(!life.stopping());
        assert!(!life.handing_over());
    }

    #[test]
    fn a_node_stopping_while_it_forms_may_still_take_part() {
        let life = Lifecycle::new();
        life.stop();
        assert!(!life.takes_part());
        life.take_part();
        assert!(life.takes_part());
        assert!(life.stopping());
    }

    #[test]
    fn a_handover_refuses_new_requests_until_it_ends_and_leaves_the_rest_alone() {
        let life = Lifecycle::new();
        life.take_part();
        life.stop();
        let handover = life.begin_handover();
        assert!(life.handing_over());
        assert!(life.lead().is_none());
        assert_eq!(life.leading.load(Ordering::SeqCst), 0);
        drop(handover);
        assert!(!life.handing_over());
        assert!(life.takes_part() && life.stopping());
        let led = life.lead();
        assert!(led.is_some());
        assert_eq!(life.leading.load(Ordering::SeqCst), 1);
        drop(led);
        assert_eq!(life.leading.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_handover_given_up_by_its_caller_still_ends() {
        let life = Lifecycle::new();
        life.take_part();
        let stalled = async {
            let _handover = life.begin_handover();
            std::future::pending::<()>().await;
        };
        // The caller's deadline passes mid-handover: the future is dropped, not finished.
        let _ = tokio::time::timeout(Duration::from_millis(10), stalled).await;
        assert!(!life.handing_over(), "a leader left refusing every request");
        assert!(life.lead().is_some());
    }

    #[tokio::test]
    async fn a_handover_waits_for_the_requests_already_being_led() {
        let life = std::sync::Arc::new(Lifecycle::new());
        let led = life.lead().expect("no handover yet");
        let _handover = life.begin_handover();
        let waiting = tokio::spawn({
            let life = life.clone();
            async move { life.nothing_led().await }
        });
        // However long it waits, it cannot finish while a request is led.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        drop(led);
        waiting.await.unwrap();
    }
}
