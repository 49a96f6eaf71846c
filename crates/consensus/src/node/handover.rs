//! Leadership handover: a leader hands its leadership to a voter that holds its whole log,
//! before it stops ([`Node::hand_over`]) or when asked ([`Node::transfer_leadership`]), by
//! telling it to start an election at once (`Peer.TimeoutNow`); and the receiving side of that
//! call ([`Node::timeout_now`]). Which voter is asked is the pure [`choose_successor`].
//!
//! Does not own: holding requests meanwhile (`lifecycle.rs`, `leading.rs`), nor when a stopping
//! node hands over (the binary's shutdown).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use conclave_proto::peer::TimeoutNowRequest;
use openraft::BasicNode;
use tonic::Status;

use super::{Node, NodeError};
use crate::leader::{LeaderError, LeaderReply, LeaderRequest};
use crate::NodeId;

/// How long a requested leadership transfer may take on the leader.
const TRANSFER_WITHIN: Duration = Duration::from_secs(2);
/// How long a stopping leader waits for a successor to answer `Peer.TimeoutNow`.
const TIMEOUT_NOW_WITHIN: Duration = Duration::from_millis(500);

impl Node {
    /// If this node leads, hands its leadership to a voter that holds its whole log, before the
    /// node stops: new requests are held (and then forwarded to the successor), the first voter
    /// caught up is told to start an election at once (`Peer.TimeoutNow`), and this node grants
    /// it its vote. Without it the others would wait out the leader's lease and an election
    /// timeout, holding every write meanwhile. Returns the new leader, or None if this node did
    /// not lead or no successor took over within `within` (the others then elect one as if it
    /// had failed).
    ///
    /// In a cluster of three the successor wins at once (its vote and the old leader's). In a
    /// larger one the other voters refuse until their lease on the old leader runs out, and the
    /// successor wins its next attempt.
    pub async fn hand_over(&self, within: Duration) -> Option<NodeId> {
        self.hand_over_to(None, within).await
    }

    /// [`Node::hand_over`] to voter `to` only, if given.
    async fn hand_over_to(&self, to: Option<NodeId>, within: Duration) -> Option<NodeId> {
        let me = self.inner.id;
        if self.inner.raft.metrics().borrow().current_leader != Some(me) {
            return None;
        }
        let handover = self.inner.lifecycle.begin_handover();
        let successor = tokio::time::timeout(within, self.hand_over_to_caught_up_voter(to)).await;
        drop(handover);
        match successor {
            Ok(Some(successor)) => Some(successor),
            Ok(None) => None,
            Err(_) => {
                tracing::warn!("node {me}: no successor took over within {within:?}");
                None
            }
        }
    }

    async fn hand_over_to_caught_up_voter(&self, to: Option<NodeId>) -> Option<NodeId> {
        let me = self.inner.id;
        // A leader's own vote carries a lease from its election (the election maximum): until it
        // has run out this node would refuse its successor the vote it needs.
        let term = self.inner.raft.metrics().borrow().current_term;
        let lease = Duration::from_millis(self.inner.timing.election_max_ms + 20);
        let led_since = match *self.inner.led_since.lock().expect("lock poisoned") {
            Some((led_term, since)) if led_term == term => since,
            _ => Instant::now(),
        };
        tokio::time::sleep_until((led_since + lease).into()).await;
        // Requests that began before the handover finish first: after them the log stays put.
        self.inner.lifecycle.nothing_led().await;
        let mut metrics = self.inner.raft.metrics();
        let mut declined = BTreeSet::new();
        loop {
            // The first voter, not yet asked, whose log matches this leader's last entry.
            let (successor, address, term) = loop {
                {
                    let m = metrics.borrow_and_update();
                    if m.current_leader != Some(me) {
                        return m.current_leader;
                    }
                    let membership = m.membership_config.membership();
                    let choice = choose_successor(
                        me,
                        to,
                        membership.voter_ids(),
                        &declined,
                        m.last_log_index,
                        &matched_indexes(&m),
                    );
                    match choice {
                        Successor::Ask(id) => {
                            let address = membership.get_node(&id)?.addr.clone();
                            break (id, address, m.current_term);
                        }
                        Successor::Wait => {}
                        Successor::NoneLeft => return None,
                    }
                }
                metrics.changed().await.ok()?;
            };
            let request = TimeoutNowRequest {
                leader_id: me,
                term,
            };
            match self
                .inner
                .peers
                .timeout_now(successor, &address, request, TIMEOUT_NOW_WITHIN)
                .await
            {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!("node {me}: node {successor} did not take the leadership: {e}");
                    declined.insert(successor);
                }
            }
        }
        loop {
            if let Some(leader) = metrics.borrow_and_update().current_leader {
                if leader != me {
                    return Some(leader);
                }
            }
            metrics.changed().await.ok()?;
        }
    }

    /// Moves the leadership to voter `to` (or to any caught-up voter), through the leader:
    /// returns the leader afterwards and its term. Writes are held meanwhile, not failed.
    pub async fn transfer_leadership(
        &self,
        to: Option<NodeId>,
        deadline: Instant,
    ) -> Result<(NodeId, u64), NodeError> {
        let asked_in = self.inner.raft.metrics().borrow().current_term;
        match self
            .on_leader(LeaderRequest::Transfer { to, asked_in }, deadline)
            .await?
        {
            LeaderReply::Transferred { leader, term } => Ok((leader, term)),
            other => unreachable!("a leadership transfer answered with {other:?}"),
        }
    }

    /// Hands this leader's leadership to `to` (or to any caught-up voter, unless it has moved
    /// since term `asked_in`: the request is a retry of one that did it).
    pub(super) async fn transfer(
        &self,
        to: Option<NodeId>,
        asked_in: u64,
    ) -> Result<LeaderReply, LeaderError> {
        let me = self.inner.id;
        let (term, voters) = {
            let m = self.inner.raft.metrics().borrow().clone();
            let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
            (m.current_term, voters)
        };
        match to {
            Some(to) if to == me => return Ok(LeaderReply::Transferred { leader: me, term }),
            None if term > asked_in => return Ok(LeaderReply::Transferred { leader: me, term }),
            Some(to) if !voters.contains(&to) => {
                return Err(LeaderError::Rejected(format!("node {to} is not a voter")));
            }
            None if voters.len() == 1 => {
                return Err(LeaderError::Rejected(
                    "this node is the only voter: there is no one to hand the leadership to".into(),
                ));
            }
            _ => {}
        }
        match self.hand_over_to(to, TRANSFER_WITHIN).await {
            Some(leader) => Ok(LeaderReply::Transferred {
                leader,
                term: self.inner.raft.metrics().borrow().current_term,
            }),
            None => Err(LeaderError::Unavailable(
                "no voter took the leadership in time".into(),
            )),
        }
    }

    /// Starts an election at once, on behalf of `leader` in `term` (see [`Node::hand_over`]).
    /// Refused unless `leader` is this node's current leader in that term: a stale or foreign
    /// request must not unseat a healthy leader.
    pub(crate) async fn timeout_now(&self, leader: NodeId, term: u64) -> Result<(), Status> {
        let (known_leader, known_term, voter) = {
            let m = self.inner.raft.metrics().borrow().clone();
            let voter = m
                .membership_config
                .membership()
                .voter_ids()
                .any(|id| id == self.inner.id);
            (m.current_leader, m.current_term, voter)
        };
        if self.inner.lifecycle.stopping() {
            return Err(Status::unavailable(format!(
                "node {} is stopping too",
                self.inner.id
            )));
        }
        if known_leader != Some(leader) || known_term != term || !voter {
            return Err(Status::failed_precondition(format!(
                "node {} follows {known_leader:?} in term {known_term} (voter: {voter}), \
                 not node {leader} in term {term}",
                self.inner.id
            )));
        }
        self.inner
            .raft
            .trigger()
            .elect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))
    }
}

/// Whom a leader handing over asks next to take its leadership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Successor {
    /// This voter holds the leader's whole log: ask it.
    Ask(NodeId),
    /// Some voter could still take over, but none holds the whole log yet: wait for
    /// replication to move.
    Wait,
    /// No voter is left to ask (all declined, or `to` is not among them): give up.
    NoneLeft,
}

/// The successor a leader `me` asks next: the first of `voters`, other than `me`, not in
/// `declined` and equal to `to` if given, whose log is known to match the leader's last index
/// `last_index` (`matched` maps each follower to the index its log matches, None for none).
fn choose_successor(
    me: NodeId,
    to: Option<NodeId>,
    voters: impl IntoIterator<Item = NodeId>,
    declined: &BTreeSet<NodeId>,
    last_index: Option<u64>,
    matched: &BTreeMap<NodeId, Option<u64>>,
) -> Successor {
    let mut others = voters
        .into_iter()
        .filter(|id| *id != me && !declined.contains(id))
        .filter(|id| to.is_none_or(|to| to == *id))
        .peekable();
    if others.peek().is_none() {
        return Successor::NoneLeft;
    }
    match others.find(|id| matched.get(id) == Some(&last_index)) {
        Some(id) => Successor::Ask(id),
        None => Successor::Wait,
    }
}

/// The index each follower's log is known to match, from a leader's metrics (empty if this node
/// does not lead).
fn matched_indexes(
    metrics: &openraft::RaftMetrics<NodeId, BasicNode>,
) -> BTreeMap<NodeId, Option<u64>> {
    metrics
        .replication
        .iter()
        .flatten()
        .map(|(id, log_id)| (*id, log_id.map(|l| l.index)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matched(pairs: &[(NodeId, Option<u64>)]) -> BTreeMap<NodeId, Option<u64>> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn the_first_voter_holding_the_whole_log_is_asked() {
        let matched = matched(&[(2, Some(9)), (3, Some(10)), (4, Some(10))]);
        let pick = choose_successor(1, None, [1, 2, 3, 4], &BTreeSet::new(), Some(10), &matched);
        assert_eq!(pick, Successor::Ask(3));
    }

    #[test]
    fn a_voter_that_declined_is_not_asked_again() {
        let matched = matched(&[(2, Some(10)), (3, Some(10))]);
        let declined = BTreeSet::from([2]);
        let pick = choose_successor(1, None, [1, 2, 3], &declined, Some(10), &matched);
        assert_eq!(pick, Successor::Ask(3));
    }

    #[test]
    fn the_leader_never_picks_itself() {
        let matched = matched(&[(1, Some(10))]);
        let pick = choose_successor(1, None, [1], &BTreeSet::new(), Some(10), &matched);
        assert_eq!(pick, Successor::NoneLeft);
        let pick = choose_successor(1, Some(1), [1, 2], &BTreeSet::new(), Some(10), &matched);
        assert_eq!(pick, Successor::NoneLeft);
    }

    #[test]
    fn a_named_successor_is_the_only_one_asked() {
        let matched = matched(&[(2, Some(10)), (3, Some(7))]);
        let pick = choose_successor(1, Some(3), [1, 2, 3], &BTreeSet::new(), Some(10), &matched);
        assert_eq!(pick, Successor::Wait);
        let pick = choose_successor(1, Some(2), [1, 2, 3], &BTreeSet::new(), Some(10), &matched);
        assert_eq!(pick, Successor::Ask(2));
    }

    #[test]
    fn a_named_successor_that_is_no_voter_or_declined_ends_the_handover() {
        let matched = matched(&[(2, Some(10)), (5, Some(10))]);
        let pick = choose_successor(1, Some(5), [1, 2, 3], &BTreeSet::new(), Some(10), &matched);
        assert_eq!(pick, Successor::NoneLeft);
        let declined = BTreeSet::from([2]);
        let pick = choose_successor(1, Some(2), [1, 2, 3], &declined, Some(10), &matched);
        assert_eq!(pick, Successor::NoneLeft);
    }

    #[test]
    fn voters_behind_or_unknown_are_waited_for() {
        let matched = matched(&[(2, Some(9)), (3, None)]);
        let pick = choose_successor(1, None, [1, 2, 3, 4], &BTreeSet::new(), Some(10), &matched);
        assert_eq!(pick, Successor::Wait);
    }

    #[test]
    fn when_every_voter_declined_there_is_none_left() {
        let matched = matched(&[(2, Some(10)), (3, Some(10))]);
        let declined = BTreeSet::from([2, 3]);
        let pick = choose_successor(1, None, [1, 2, 3], &declined, Some(10), &matched);
        assert_eq!(pick, Successor::NoneLeft);
    }

    #[test]
    fn an_empty_log_matches_a_follower_that_matched_nothing() {
        let matched = matched(&[(2, None)]);
        let pick = choose_successor(1, None, [1, 2], &BTreeSet::new(), None, &matched);
        assert_eq!(pick, Successor::Ask(2));
    }
}
