//! Formation: whether a node without Raft state creates the cluster, waits for its leader, or
//! refuses to start, decided from what the other listed nodes say about themselves
//! (`Peer.Identify`). Pure functions; the probes are `Node::survey_peers`.
//!
//! The danger is a node whose data was lost: with an empty log it must never help elect a leader
//! that lacks acknowledged writes. Two rules keep it out:
//! - a peer that remembers this node with another data directory (incarnation), or has
//!   replicated entries to it as leader, proves the loss: refuse to start;
//! - a peer that created the cluster but has seen no leader yet counts as a fellow founder only
//!   if it counted this very data directory when it did. A node that lost its data after the
//!   cluster formed has a new incarnation, so a founder that was cut off before the first entry
//!   (and knows nothing of what was committed) cannot form a second cluster with it.

use conclave_proto::peer::IdentifyResponse;

use crate::NodeId;

/// What one listed peer is, as far as forming the cluster goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PeerState {
    /// It belongs to this cluster and a leader has been elected in it.
    Running,
    /// It has no Raft state yet: a founder to be, with its data directory's incarnation.
    Fresh { incarnation: u64 },
    /// It created the cluster counting this node's data directory, and has seen no leader yet.
    FellowFounder { incarnation: u64 },
    /// Nothing to count on: it created the cluster without counting this directory (this node
    /// may be one that lost its data), or it is not (yet) of this cluster.
    Uncounted,
}

/// Why a node must not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The peer belongs to another cluster.
    OtherCluster { theirs: u64 },
    /// The peer knew this node with other data: this node's data was lost.
    DataLost,
}

/// Reads one peer's answer. `ours` is this node's cluster id, `incarnation` its directory's.
pub(crate) fn classify(
    answer: &IdentifyResponse,
    ours: Option<u64>,
    incarnation: u64,
) -> Result<PeerState, Refusal> {
    if let Some(ours) = ours {
        if answer.cluster_id != 0 && answer.cluster_id != ours {
            return Err(Refusal::OtherCluster {
                theirs: answer.cluster_id,
            });
        }
    }
    let remembered = answer
        .recorded_incarnation
        .is_some_and(|i| i != incarnation);
    let replicated = answer.replicated_to_caller.is_some_and(|i| i > 0);
    if remembered || replicated {
        return Err(Refusal::DataLost);
    }
    if ours.is_none_or(|o| answer.cluster_id != o) {
        return Ok(PeerState::Uncounted);
    }
    Ok(match answer.last_log_index {
        Some(index) if index > 0 => PeerState::Running,
        None => PeerState::Fresh {
            incarnation: answer.incarnation,
        },
        Some(_) if answer.founded_with_caller == Some(incarnation) => PeerState::FellowFounder {
            incarnation: answer.incarnation,
        },
        Some(_) => PeerState::Uncounted,
    })
}

/// What a fresh listed node does after a survey.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Create the cluster, recording the fellow founders it counted: (id, incarnation).
    Create { founders: Vec<(NodeId, u64)> },
    /// The cluster exists: wait for its leader to reach this node.
    AwaitLeader,
    /// Too few founders answered: ask again. `founders` counts this node too.
    Wait { founders: usize },
}

/// Decides from the peers that answered, out of `listed` nodes in `--initial-cluster` (this one
/// included): create the cluster once a majority, this node included, are founders.
pub(crate) fn decide(peers: &[(NodeId, PeerState)], listed: usize) -> Decision {
    if peers.iter().any(|(_, p)| *p == PeerState::Running) {
        return Decision::AwaitLeader;
    }
    let founders: Vec<(NodeId, u64)> = peers
        .iter()
        .filter_map(|(id, p)| match p {
            PeerState::Fresh { incarnation } | PeerState::FellowFounder { incarnation } => {
                Some((*id, *incarnation))
            }
            _ => None,
        })
        .collect();
    if founders.len() + 1 > listed / 2 {
        Decision::Create { founders }
    } else {
        Decision::Wait {
            founders: founders.len() + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: u64 = 0xc1;
    const ME: u64 = 100;

    fn answer(last_log_index: Option<u64>, incarnation: u64) -> IdentifyResponse {
        IdentifyResponse {
            node_id: 0,
            cluster_id: CLUSTER,
            replicated_to_caller: None,
            recorded_incarnation: None,
            last_log_index,
            incarnation,
            founded_with_caller: None,
        }
    }

    fn state(answer: &IdentifyResponse) -> PeerState {
        classify(answer, Some(CLUSTER), ME).expect("no refusal")
    }

    #[test]
    fn empty_peers_are_fresh_and_a_majority_of_them_creates_the_cluster() {
        let fresh = state(&answer(None, 7));
        assert_eq!(fresh, PeerState::Fresh { incarnation: 7 });
        assert_eq!(
            decide(&[(2, fresh)], 3),
            Decision::Create {
                founders: vec![(2, 7)]
            }
        );
        assert_eq!(
            decide(&[], 3),
            Decision::Wait { founders: 1 },
            "a fresh node alone never creates the cluster"
        );
        assert_eq!(decide(&[(2, fresh)], 5), Decision::Wait { founders: 2 });
    }

    #[test]
    fn a_founder_that_counted_this_directory_is_a_fellow_founder() {
        // Node 2 created the cluster counting this node; this node joins in creating it.
        let mut founder = answer(Some(0), 8);
        founder.founded_with_caller = Some(ME);
        let founder = state(&founder);
        assert_eq!(founder, PeerState::FellowFounder { incarnation: 8 });
        assert_eq!(
            decide(&[(2, founder)], 3),
            Decision::Create {
                founders: vec![(2, 8)]
            }
        );
    }

    #[test]
    fn a_founder_that_never_counted_this_directory_is_not_counted() {
        // The split brain: {1,2,3} formed without 3 ever receiving an entry; 2 lost its disk; a
        // site restart with 1 down. Node 3 counted node 1 (or node 2's old directory) when it
        // created the cluster, never 2's new directory: 2 must not form a cluster with 3.
        let mut cut_off = answer(Some(0), 9);
        cut_off.founded_with_caller = Some(ME + 1); // 2's incarnation before its disk was lost
        assert_eq!(state(&cut_off), PeerState::Uncounted);
        cut_off.founded_with_caller = None; // it counted node 1 only
        assert_eq!(state(&cut_off), PeerState::Uncounted);
        assert_eq!(
            decide(&[(3, state(&cut_off))], 3),
            Decision::Wait { founders: 1 }
        );
    }

    #[test]
    fn a_peer_past_the_first_entry_means_the_cluster_exists() {
        let running = state(&answer(Some(5), 1));
        assert_eq!(running, PeerState::Running);
        assert_eq!(
            decide(&[(2, running), (3, PeerState::Fresh { incarnation: 3 })], 3),
            Decision::AwaitLeader
        );
    }

    #[test]
    fn a_peer_that_knew_other_data_under_this_id_refuses_the_start() {
        let mut remembers = answer(Some(5), 1);
        remembers.recorded_incarnation = Some(ME + 1);
        assert_eq!(
            classify(&remembers, Some(CLUSTER), ME),
            Err(Refusal::DataLost)
        );
        let mut replicated = answer(Some(5), 1);
        replicated.replicated_to_caller = Some(3);
        assert_eq!(
            classify(&replicated, Some(CLUSTER), ME),
            Err(Refusal::DataLost)
        );
        let same = {
            let mut a = answer(Some(5), 1);
            a.recorded_incarnation = Some(ME);
            a
        };
        assert_eq!(classify(&same, Some(CLUSTER), ME), Ok(PeerState::Running));
    }

    #[test]
    fn a_peer_of_another_cluster_refuses_the_start() {
        let mut other = answer(None, 1);
        other.cluster_id = 0xdead;
        assert_eq!(
            classify(&other, Some(CLUSTER), ME),
            Err(Refusal::OtherCluster { theirs: 0xdead })
        );
    }
}
