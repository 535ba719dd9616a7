//! openraft's own storage test suite (`openraft::testing::Suite`) run against Baton's RocksDB log store and
//! state machine: the Raft contract for logs, votes, membership, snapshots and purging.

use baton::raft::{StorageError, TypeConfig};
use baton::storage::{Db, Identity, LogStore, StateMachineStore};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageIOError;
use tempfile::TempDir;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let identity = Identity { cluster_id: "suite".into(), node_id: 1 };
        let db = Db::open(dir.path(), &identity).map_err(|e| StorageIOError::write(&e))?;
        let sm = StateMachineStore::new(db.clone()).map_err(|e| StorageIOError::read(&e))?;
        Ok((dir, LogStore::new(db), sm))
    }
}

#[test]
fn rocksdb_store_passes_openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(RocksBuilder)
}
