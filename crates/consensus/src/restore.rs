//! Seeding a new cluster from a backup (`conclave server --restore FILE`): each node of the new
//! cluster is given the same backup and the same `--initial-cluster`, and starts with the
//! backup's replica as its snapshot, [`RESTORE_REVISION_BUMP`] past the backup's revision, with
//! the listed nodes as voters and an empty log. The nodes then elect a leader among themselves
//! as after a restart. Their cluster id derives from the backup too (`ClusterSpec::
//! restored_from`, applied by the binary from the data directory's record of the backup).
//!
//! Does not own: the backup's format (the storage crate), taking one (the API crate).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use conclave_state::Machine;
use openraft::{BasicNode, CommittedLeaderId, LogId, Membership, SnapshotMeta, StoredMembership};

use crate::{ClusterSpec, NodeId, TypeConfig};

/// How many revisions a restored cluster skips past its backup's: more than an old cluster
/// writes between its last backup and its loss (a billion: days at this store's write rates),
/// so that no revision it gave out is given out again (see [`Machine::restored`]).
pub const RESTORE_REVISION_BUMP: u64 = 1_000_000_000;

/// Makes `machine`, as a new cluster starts from it ([`Machine::restored`]), the snapshot of the
/// data directory `dir`, which must hold no node yet, with `cluster`'s members as voters.
/// Every node given the same machine and cluster gets the same snapshot.
pub fn seed_from_backup(
    dir: &Path,
    cluster: &ClusterSpec,
    machine: &Machine,
) -> std::io::Result<()> {
    let machine = machine.restored(RESTORE_REVISION_BUMP);
    // Term 0 is before any election: the new cluster's first leader is elected in term 1.
    let position = LogId::new(CommittedLeaderId::new(0, 0), machine.revision());
    let voters: BTreeSet<NodeId> = cluster.members().keys().copied().collect();
    let nodes: BTreeMap<NodeId, BasicNode> = cluster
        .members()
        .iter()
        .map(|(id, address)| (*id, BasicNode::new(address)))
        .collect();
    let meta = SnapshotMeta {
        last_log_id: Some(position),
        last_membership: StoredMembership::new(
            Some(position),
            Membership::new(vec![voters], nodes),
        ),
        snapshot_id: format!("restored-{}", machine.revision()),
    };
    conclave_storage::seed_snapshot::<TypeConfig>(dir, &meta, &machine)
}
