//! Which node and which cluster a data directory belongs to.

use sled::Tree;

/// The node id and cluster id recorded in a data directory, so that a directory is never served
/// under another node's id or joined to another cluster.
#[derive(Clone)]
pub struct Identity {
    tree: Tree,
}

const NODE_ID: &[u8] = b"node_id";
const INCARNATION: &[u8] = b"incarnation";
const CLUSTER_ID: &[u8] = b"cluster_id";

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
}

impl Identity {
    pub(crate) fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        Ok(Identity {
            tree: db.open_tree("identity")?,
        })
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
            None => {
                self.tree.insert(NODE_ID, &node_id.to_be_bytes())?;
                self.tree.flush_async().await?;
                Ok(())
            }
        }
    }

    /// The incarnation of this data directory: a random number chosen the first time it is asked
    /// for, so a directory that was wiped and recreated has a new one.
    pub async fn incarnation(&self) -> Result<u64, IdentityError> {
        if let Some(incarnation) = self.read(INCARNATION)? {
            return Ok(incarnation);
        }
        let incarnation = random_u64();
        self.tree.insert(INCARNATION, &incarnation.to_be_bytes())?;
        self.tree.flush_async().await?;
        Ok(incarnation)
    }

    /// Records `cluster_id` in a directory that has none yet, or checks that it matches.
    pub async fn claim_cluster(&self, cluster_id: u64) -> Result<(), IdentityError> {
        match self.cluster_id()? {
            Some(recorded) if recorded != cluster_id => Err(IdentityError::WrongCluster {
                recorded,
                requested: cluster_id,
            }),
            Some(_) => Ok(()),
            None => {
                self.tree.insert(CLUSTER_ID, &cluster_id.to_be_bytes())?;
                self.tree.flush_async().await?;
                Ok(())
            }
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
