//! Formation, the I/O half: a fresh node surveys the listed nodes (`Peer.Identify`), then
//! bootstraps the cluster, waits for its leader, or waits to be added, as the pure
//! `crate::formation::decide` says; once decided, it takes part (see `lifecycle.rs`).
//!
//! Does not own: the decision and the classification of each answer (`crate::formation`), nor
//! the answers this node gives others (`admission.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use openraft::BasicNode;

use super::{Joining, Node, StartError};
use crate::cluster::ClusterSpec;
use crate::formation::{self, Decision, PeerState, Refusal};
use crate::NodeId;

/// How long bootstrap waits for each peer to answer an identity probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between surveys while a fresh node waits for a majority of the listed nodes.
const FORM_RETRY: Duration = Duration::from_millis(200);
/// How long a fresh node keeps asking a peer that remembers it with another data directory
/// before it gives up: an operator who removes the node and starts it empty at once can reach
/// a peer that has not applied the removal yet (the chaos suite's `wipe` fault did).
const REMOVAL_GRACE: Duration = Duration::from_secs(5);

impl Node {
    /// Brings a fresh node into its cluster; returns at once for a node with Raft state. Call it
    /// once the node's listener serves `Peer`.
    ///
    /// A listed node first asks the other listed nodes about themselves (`Peer.Identify`). It
    /// refuses to go on if one belongs to another cluster or remembers this node with another
    /// data directory (this node's data was lost: with an empty log it could vote for a leader
    /// missing acknowledged writes; it asks again for `REMOVAL_GRACE` first, as a peer may not
    /// have applied the node's removal yet). If one already belongs to the cluster, it waits for the
    /// leader (it is a member the leader has not reached yet, or a replacement waiting for
    /// `ctl members add`), unless no leader has been elected there yet. Otherwise it creates the
    /// cluster (`Raft::initialize` with the listed members; every listed node does the same with
    /// the same list) once a majority of the listed nodes, itself included, answer that they are
    /// fresh too or have just created it, and keeps asking until then. A fresh node alone never
    /// creates the cluster: after a whole-site restart it may be the one whose disk was lost,
    /// asking before the nodes that would recognise it are back. A joining node asks once, for
    /// the same refusals, then waits to be added.
    ///
    /// Until it has decided, the node refuses Raft messages (see `Node::takes_part`): a leader
    /// replicating to it meanwhile would make it look like a node the cluster already knew.
    pub async fn form(&self) -> Result<(), StartError> {
        let decided = self.decide_how_to_join().await;
        if decided.is_ok() {
            self.inner.lifecycle.take_part();
        }
        decided
    }

    async fn decide_how_to_join(&self) -> Result<(), StartError> {
        if self.initialized().await? {
            return Ok(());
        }
        let id = self.inner.id;
        let cluster = &self.inner.cluster;
        let needed = cluster.members().len() / 2 + 1;
        let mut said_waiting = false;
        let mut first_refused: Option<tokio::time::Instant> = None;
        loop {
            let survey = match self.survey_peers().await {
                Err(StartError::DataLost { peer, .. })
                    if first_refused
                        .get_or_insert_with(|| {
                            tracing::warn!(
                                "node {id}: node {peer} remembers this node with another data \
                                 directory; asking again for {REMOVAL_GRACE:?} in case its \
                                 removal is still being applied there"
                            );
                            tokio::time::Instant::now()
                        })
                        .elapsed()
                        < REMOVAL_GRACE =>
                {
                    tokio::time::sleep(FORM_RETRY).await;
                    continue;
                }
                survey => survey?,
            };
            match self.inner.join {
                Joining::Unlisted => {
                    tracing::info!(
                        "node {id}: not in --initial-cluster, so it joins an existing cluster; \
                         waiting to be added (`conclave ctl members add {id} ADDRESS`)"
                    );
                    return Ok(());
                }
                Joining::Asked => {
                    tracing::info!(
                        "node {id}: joining; waiting to be added (`conclave ctl members add {id} ADDRESS`)"
                    );
                    return Ok(());
                }
                Joining::No => {}
            }
            let founders = match formation::decide(&survey, cluster.members().len()) {
                Decision::Create { founders } => return self.bootstrap(cluster, &founders).await,
                Decision::Wait { founders } => founders,
                Decision::AwaitLeader => {
                    self.inner
                        .identity
                        .claim_cluster(cluster.cluster_id())
                        .await?;
                    tracing::info!(
                        "node {id}: the cluster already exists, so this empty node does not bootstrap it; \
                         it waits for the leader (add it with `conclave ctl members add {id} ADDRESS` \
                         if it is not a member)"
                    );
                    return Ok(());
                }
            };
            if !said_waiting {
                tracing::info!(
                    "node {id}: waiting for {needed} of the {} nodes in --initial-cluster to be up \
                     and empty (or to have counted this one when creating the cluster) before \
                     creating the cluster ({founders} so far, this one included)",
                    cluster.members().len(),
                );
                said_waiting = true;
            }
            tokio::time::sleep(FORM_RETRY).await;
        }
    }

    /// For a node with no Raft state: asks the other listed nodes, all at once, about
    /// themselves. Fails if one belongs to another cluster, or remembers this node id with
    /// another data directory or has replicated to it as leader (its data was lost). Nodes that
    /// do not answer are counted as neither formed nor fresh.
    async fn survey_peers(&self) -> Result<Vec<(NodeId, PeerState)>, StartError> {
        let ours = self.inner.peers.cluster_id();
        let mut probes = tokio::task::JoinSet::new();
        for (peer, address) in self.inner.cluster.members() {
            if *peer == self.inner.id {
                continue;
            }
            let (peers, peer, address, me) = (
                self.inner.peers.clone(),
                *peer,
                address.clone(),
                self.inner.id,
            );
            probes.spawn(async move {
                let answer = peers.identify(&address, me, PROBE_TIMEOUT).await;
                (peer, address, answer)
            });
        }
        let mut survey = Vec::new();
        while let Some(probe) = probes.join_next().await {
            let Ok((peer, address, Ok(answer))) = probe else {
                continue;
            };
            match formation::classify(&answer, ours, self.inner.incarnation) {
                Ok(state) => survey.push((peer, state)),
                Err(Refusal::OtherCluster { theirs }) => {
                    return Err(StartError::PeerInOtherCluster {
                        peer,
                        address,
                        theirs,
                        ours: ours.unwrap_or(0),
                    })
                }
                Err(Refusal::DataLost) => {
                    return Err(StartError::DataLost {
                        id: self.inner.id,
                        peer,
                    })
                }
            }
        }
        Ok(survey)
    }

    /// Records the cluster id and the fellow founders counted, then initializes Raft with the
    /// listed members.
    async fn bootstrap(
        &self,
        cluster: &ClusterSpec,
        founders: &[(NodeId, u64)],
    ) -> Result<(), StartError> {
        let ours = cluster.cluster_id();
        self.inner.identity.claim_cluster(ours).await?;
        self.inner.identity.record_founders(founders).await?;
        let members: BTreeMap<NodeId, BasicNode> = cluster
            .members()
            .iter()
            .map(|(id, address)| (*id, BasicNode::new(address)))
            .collect();
        match self.inner.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(openraft::error::RaftError::APIError(
                openraft::error::InitializeError::NotAllowed(_),
            )) => Ok(()),
            Err(e) => Err(StartError::Raft(e.to_string())),
        }
    }
}
