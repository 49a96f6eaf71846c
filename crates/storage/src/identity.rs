//! Which node and which cluster a data directory belongs to.

use sled::Tree;

use crate::durable::Disk;

/// The node id and cluster id recorded in a data directory, so that a directory is never served
/// under another node's id or joined to another cluster.
#[derive(Clone)]
pub struct Identity {
    tree: Tree,
    disk: Disk,
}

const NODE_ID: &[u8] = b"node_id";
const INCARNATION: &[u8] = b"incarnation";
const CLUSTER_ID: &[u8] = b"cluster_id";
const FOUNDERS: &[u8] = b"founders";

/// A data directory that belongs elsewhere.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("this data directory belongs to node {recorded}, not node {requested}")]
    WrongNode { recorded: u64, requested: u64 },
    #[error(
        "this data directory belongs to cluster {recorded:016x}, not cluster {requested:016x}"
    )]
    WrongCluster { recorded: u64, requested: u64 },
    #[error("storage error: {0}")]
    Engine(#[from] sled::Error),
    #[error("cannot sync the identity record to disk: {0}")]
    Sync(#[from] std::io::Error),
}

impl Identity {
    pub(crate) fn open(db: &sled::Db, disk: Disk) -> Result<Self, sled::Error> {
        Ok(Identity {
            tree: db.open_tree("identity")?,
            disk,
        })
    }

    /// Records `value` under `key` and returns once it is on disk (flushed and synced, like the
    /// Raft log: a node that forgot its identity after a power loss could rejoin as another).
    async fn write(&self, key: &[u8], value: u64) -> Result<(), IdentityError> {
        self.tree.insert(key, &value.to_be_bytes())?;
        self.disk.persist().await?;
        Ok(())
    }

    fn read(&self, key: &[u8]) -> Result<Option<u64>, sled::Error> {
        Ok(self.tree.get(key)?.map(|v| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&v[..8]);
            u64::from_be_bytes(bytes)
        }))
    }

    /// The node id recorded, if any.
    pub fn node_id(&self) -> Result<Option<u64>, sled::Error> {
        self.read(NODE_ID)
    }

    /// The cluster id recorded, if any.
    pub fn cluster_id(&self) -> Result<Option<u64>, sled::Error> {
        self.read(CLUSTER_ID)
    }

    /// Records `node_id` in a fresh directory, or checks that it matches.
    pub async fn claim_node(&self, node_id: u64) -> Result<(), IdentityError> {
        match self.node_id()? {
            Some(recorded) if recorded != node_id => Err(IdentityError::WrongNode {
                recorded,
                requested: node_id,
            }),
            Some(_) => Ok(()),
            None => self.write(NODE_ID, node_id).await,
        }
    }

    /// The incarnation of this data directory: a random number chosen the first time it is asked
    /// for, so a directory that was wiped and recreated has a new one.
    pub async fn incarnation(&self) -> Result<u64, IdentityError> {
        if let Some(incarnation) = self.read(INCARNATION)? {
            return Ok(incarnation);
        }
        let incarnation = random_u64();
        self.write(INCARNATION, incarnation).await?;
        Ok(incarnation)
    }

    /// The fellow founders this node counted when it created the cluster: (node id, incarnation
    /// of its data directory then). None if it did not create the cluster itself.
    pub fn founders(&self) -> Result<Option<Vec<(u64, u64)>>, sled::Error> {
        Ok(self.tree.get(FOUNDERS)?.map(|v| {
            v.chunks_exact(16)
                .map(|pair| {
                    let (id, incarnation) = pair.split_at(8);
                    let word = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
                    (word(id), word(incarnation))
                })
                .collect()
        }))
    }

    /// Records the fellow founders counted before creating the cluster; on disk before it
    /// returns (it must be, before the node creates the cluster).
    pub async fn record_founders(&self, founders: &[(u64, u64)]) -> Result<(), IdentityError> {
        let bytes: Vec<u8> = founders
            .iter()
            .flat_map(|(id, incarnation)| [id.to_be_bytes(), incarnation.to_be_bytes()])
            .flatten()
            .collect();
        self.tree.insert(FOUNDERS, bytes)?;
        self.disk.persist().await?;
        Ok(())
    }

    /// Records `cluster_id` in a directory that has none yet, or checks that it matches.
    pub async fn claim_cluster(&self, cluster_id: u64) -> Result<(), IdentityError> {
        match self.cluster_id()? {
            Some(recorded) if recorded != cluster_id => Err(IdentityError::WrongCluster {
                recorded,
                requested: cluster_id,
            }),
            Some(_) => Ok(()),
            None => self.write(CLUSTER_ID, cluster_id).await,
        }
    }
}

/// A random number from the standard library's randomly keyed hasher, the clock and the pid.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish() | 1
}

#[cfg(test)]
mod tests {
    use crate::durable::persists;

    type Config = crate::state_machine::tests::Config;

    /// Each identity record is synced (flush and syncfs) before it is reported as recorded,
    /// and a value already on disk is not written again.
    #[tokio::test(flavor = "current_thread")]
    async fn every_identity_write_is_synced_to_disk() {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::open::<Config>(dir.path(), Default::default()).unwrap();
        let identity = storage.identity;

        let before = persists();
        identity.claim_node(7).await.unwrap();
        assert_eq!(persists() - before, 1, "claim_node syncs");
        identity.claim_node(7).await.unwrap();
        assert_eq!(
            persists() - before,
            1,
            "an unchanged node id is not rewritten"
        );

        let incarnation = identity.incarnation().await.unwrap();
        assert_eq!(persists() - before, 2, "a new incarnation syncs");
        assert_eq!(identity.incarnation().await.unwrap(), incarnation);
        assert_eq!(persists() - before, 2);

        identity.claim_cluster(42).await.unwrap();
        assert_eq!(persists() - before, 3, "claim_cluster syncs");
        identity.claim_cluster(42).await.unwrap();
        assert_eq!(persists() - before, 3);
    }
}
