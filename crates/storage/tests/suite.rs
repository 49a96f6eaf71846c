//! The storage passes openraft's own conformance suite.

use std::io::Cursor;

use conclave_state::{WriteReply, WriteRequest};
use conclave_storage::{LogStore, StateMachineStore, StorageOptions};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

openraft::declare_raft_types!(
    pub TestConfig:
        D = WriteRequest,
        R = WriteReply,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TestConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

struct SledBuilder;

impl
    StoreBuilder<TestConfig, LogStore<TestConfig>, StateMachineStore<TestConfig>, tempfile::TempDir>
    for SledBuilder
{
    async fn build(
        &self,
    ) -> Result<
        (
            tempfile::TempDir,
            LogStore<TestConfig>,
            StateMachineStore<TestConfig>,
        ),
        StorageError<u64>,
    > {
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = conclave_storage::open::<TestConfig>(dir.path(), StorageOptions::default())
            .expect("open storage");
        Ok((dir, storage.log, storage.state))
    }
}

#[test]
#[allow(clippy::result_large_err)] // the suite's own error type
fn passes_openraft_storage_suite() -> Result<(), StorageError<u64>> {
    Suite::test_all(SledBuilder)?;
    Ok(())
}
