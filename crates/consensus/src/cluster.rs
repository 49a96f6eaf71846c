//! The initial member list given on the command line, and the cluster id derived from it.

use std::collections::BTreeMap;
use std::fmt;

use crate::NodeId;

/// The members a cluster was created with: `1=host:port,2=host:port,...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSpec {
    members: BTreeMap<NodeId, String>,
    /// The checksum of the backup the cluster was restored from, if it was: a restored cluster
    /// has an id of its own, so its nodes and nodes started empty with the same list (or
    /// restored from another backup) never take each other for members of one cluster.
    restored_from: Option<String>,
}

/// A malformed `--initial-cluster` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError(String);

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid --initial-cluster: {}", self.0)
    }
}

impl std::error::Error for SpecError {}

impl ClusterSpec {
    /// Parses `1=host:port,2=host:port`.
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let mut members: BTreeMap<NodeId, String> = BTreeMap::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (id, address) = item
                .split_once('=')
                .ok_or_else(|| SpecError(format!("'{item}' is not ID=HOST:PORT")))?;
            let id: NodeId = id
                .trim()
                .parse()
                .map_err(|_| SpecError(format!("'{id}' is not a node id (a positive integer)")))?;
            if id == 0 {
                return Err(SpecError("node ids start at 1".into()));
            }
            let address = address.trim();
            if !address.contains(':') {
                return Err(SpecError(format!("'{address}' is not HOST:PORT")));
            }
            if let Some((other, _)) = members.iter().find(|(_, a)| a.as_str() == address) {
                return Err(SpecError(format!(
                    "nodes {other} and {id} are both listed at {address}"
                )));
            }
            if members.insert(id, address.to_string()).is_some() {
                return Err(SpecError(format!("node {id} is listed twice")));
            }
        }
        if members.is_empty() {
            return Err(SpecError("no members listed".into()));
        }
        Ok(ClusterSpec {
            members,
            restored_from: None,
        })
    }

    /// The listed members.
    pub fn members(&self) -> &BTreeMap<NodeId, String> {
        &self.members
    }

    /// The address listed for `id`.
    pub fn address(&self, id: NodeId) -> Option<&str> {
        self.members.get(&id).map(String::as_str)
    }

    /// This list as a cluster restored from the backup whose checksum is `checksum`.
    pub fn restored_from(mut self, checksum: &str) -> ClusterSpec {
        self.restored_from = Some(checksum.to_string());
        self
    }

    /// A stable id for the cluster created from this list (FNV-1a over the sorted members, and
    /// the backup's checksum for a restored cluster), the same on every node and every build.
    pub fn cluster_id(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut add = |text: String| {
            for byte in text.bytes() {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        };
        for (id, address) in &self.members {
            add(format!("{id}={address};"));
        }
        if let Some(checksum) = &self.restored_from {
            add(format!("restored-from={checksum};"));
        }
        hash
    }
}

impl fmt::Display for ClusterSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self
            .members
            .iter()
            .map(|(i, a)| format!("{i}={a}"))
            .collect();
        f.write_str(&items.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_derives_an_order_independent_id() {
        let a = ClusterSpec::parse("1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3").unwrap();
        let b = ClusterSpec::parse("3=127.0.0.1:3, 1=127.0.0.1:1,2=127.0.0.1:2").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.cluster_id(), b.cluster_id());
        let c = ClusterSpec::parse("1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:4").unwrap();
        assert_ne!(a.cluster_id(), c.cluster_id());
        assert_eq!(a.address(2), Some("127.0.0.1:2"));
    }

    #[test]
    fn rejects_malformed_lists() {
        for bad in [
            "",
            "1",
            "x=h:1",
            "0=h:1",
            "1=nohostport",
            "1=h:1,1=h:2",
            "1=h:1,2=h:1",
        ] {
            assert!(ClusterSpec::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
