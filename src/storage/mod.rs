//! Storage: one RocksDB database per node holding the Raft log, Raft's durable variables and the state machine.
//!
//! Owns: column families, keys ([`keys`]), encodings ([`codec`]) and durability (which writes are synced).
//! Knows nothing of Raft roles or business rules: the log store and state machine implement openraft's storage
//! traits, and the state machine calls the pure engine to decide what an entry changes.
//!
//! Durability: log appends, votes, truncations, purges and snapshot installs are written with `sync = true`
//! (the WAL is fsynced before openraft is told). State-machine batches are not synced: they share the one WAL
//! with the log, so a later synced write persists them too, and whatever a crash loses of them is re-applied from
//! the log (which is never purged past what a synced write has covered).
//!
//! The WAL is flushed by hand (`manual_wal_flush`): an unsynced write stays in RocksDB's WAL buffer until the next
//! synced write or WAL sync writes the buffer out, so the runtime's threads make no `write` call on the WAL file
//! (the log store's sync thread does, with its fsync). A crash, even a process kill, leaves a prefix of the writes
//! in sequence order: RocksDB writes the buffer out before any memtable is switched and flushed to a table file,
//! and every sync writes it out first. So the state never holds an entry whose log append was lost, and what is
//! lost was neither synced nor acknowledged.

pub mod codec;
pub mod digest;
pub mod hot_records;
pub mod hot_workflows;
pub mod keys;
pub mod log_store;
pub mod snapshot_file;
pub mod state_machine;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

pub use log_store::LogStore;
pub use state_machine::{StateMachineStore, StateReader};

/// Which cluster and node a data dir belongs to, written on first start and checked on every later one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The configured `cluster_id`.
    pub cluster_id: String,
    /// The configured `node_id`.
    pub node_id: u64,
}

/// Why the data dir could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the RocksDB lock.
    #[error("data dir {path} is in use by another process (RocksDB lock held): {source}")]
    Locked {
        /// The data dir.
        path: PathBuf,
        /// RocksDB's error.
        source: rocksdb::Error,
    },
    /// The data dir was written by another cluster or another node.
    #[error(
        "data dir {path} belongs to cluster '{found_cluster}' node {found_node}, but this node is cluster \
         '{want_cluster}' node {want_node}; point data_dir elsewhere or remove the directory"
    )]
    Foreign {
        /// The data dir.
        path: PathBuf,
        /// The cluster it belongs to.
        found_cluster: String,
        /// The node it belongs to.
        found_node: u64,
        /// The configured cluster.
        want_cluster: String,
        /// The configured node.
        want_node: u64,
    },
    /// Any other RocksDB failure.
    #[error("cannot open RocksDB at {path}: {source}")]
    Rocks {
        /// The data dir.
        path: PathBuf,
        /// RocksDB's error.
        source: rocksdb::Error,
    },
    /// The identity record is unreadable.
    #[error("data dir {path} has an unreadable identity record: {source}")]
    Codec {
        /// The data dir.
        path: PathBuf,
        /// The decoding error.
        source: codec::CodecError,
    },
    /// The directory could not be created.
    #[error("cannot create data dir {path}: {source}")]
    Create {
        /// The data dir.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// RocksDB's `bytes_per_sync`: how much of a table file is written before it is handed to the disk.
const BYTES_PER_SYNC: u64 = 1 << 20;

/// A node's RocksDB database, shared by the log store, the state machine and readers.
pub struct Db {
    db: DB,
    path: PathBuf,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

/// The `state` family's memtable, MiB, by node: RocksDB's default (64) for one node in three, 80 and 48 for the
/// others.
///
/// Replicas apply the same writes, so with equal memtables they flush at the same moment, and then compact at the
/// same moment. On one machine that is three flushes' CPU at once: for 100-300 ms the commits wait for a core, and
/// at half of the max workflow rate most of the slow starts fell in those windows (docs/perf.md, change 20). With
/// different sizes the replicas flush at different moments, and a flush on one follower delays no commit (the
/// leader and the other follower are a majority). On separate machines it costs nothing.
const STATE_MEMTABLE_MIB: [usize; 3] = [48, 64, 80];

/// The `state` family's memtable size for node `node_id`, bytes.
fn state_memtable_bytes(node_id: u64) -> usize {
    STATE_MEMTABLE_MIB[(node_id % 3) as usize] << 20
}

/// A column family's options. The `state` family is read by key on every apply (the records a command changes, and
/// each written key's previous value for the running digest), and many of those keys are new (a task's index entry,
/// a fresh bench key): bloom filters, in the memtable and in the table files, answer "not there" without a search.
/// Its memtable's size depends on the node ([`state_memtable_bytes`]).
fn cf_options(name: &str, node_id: u64) -> Options {
    let mut opts = Options::default();
    if name == keys::CF_STATE {
        opts.set_write_buffer_size(state_memtable_bytes(node_id));
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_whole_key_filtering(true);
        opts.set_block_based_table_factory(&table);
        opts.set_memtable_whole_key_filtering(true);
        opts.set_memtable_prefix_bloom_ratio(0.1);
    }
    opts
}

impl Db {
    /// Opens (creating if needed) the database in `path` and checks that it belongs to `identity`.
    pub fn open(path: &Path, identity: &Identity) -> Result<Arc<Db>, OpenError> {
        std::fs::create_dir_all(path).map_err(|source| OpenError::Create { path: path.to_owned(), source })?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_keep_log_file_num(4);
        // RocksDB's own LOG (in the data dir) gets its header (the options) and FATAL lines only. Debian's
        // librocksdb is built with assertions on, and its LOG writer asserts when written to after a failed write:
        // on a full disk the WAL error's ERROR line fails to reach the LOG, and the next line aborts the process
        // (SIGABRT) before Raft can stop and the node exit with its own code (tests/fatal_storage.rs). At WARN and
        // ERROR it still aborted; at FATAL the failed writes come back as errors. The cost: no flush and compaction
        // events in the LOG. (DEBUG wrote a line per WAL sync.)
        opts.set_log_level(rocksdb::LogLevel::Fatal);
        // See the module's durability note: unsynced writes wait in RocksDB's buffer for the next sync.
        opts.set_manual_wal_flush(true);
        // Table files (flushes, compactions) are handed to the disk a MiB at a time as they are written, not all at
        // their final fsync: on ext4 (data=ordered) a WAL sync commits the journal, which first writes out whatever
        // file data is dirty, so a flush's or compaction's megabytes held up every log sync on the node at once
        // (docs/perf.md, change 17).
        opts.set_bytes_per_sync(BYTES_PER_SYNC);
        let cfs =
            keys::ALL_CFS.iter().map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name, identity.node_id)));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|source| {
            if source.to_string().contains("lock") {
                OpenError::Locked { path: path.to_owned(), source }
            } else {
                OpenError::Rocks { path: path.to_owned(), source }
            }
        })?;
        let db = Db { db, path: path.to_owned() };
        let rocks = |source| OpenError::Rocks { path: path.to_owned(), source };
        match db.get(keys::CF_RAFT_META, keys::IDENTITY).map_err(rocks)? {
            Some(bytes) => {
                let found: Identity =
                    codec::decode(&bytes).map_err(|source| OpenError::Codec { path: path.to_owned(), source })?;
                if &found != identity {
                    return Err(OpenError::Foreign {
                        path: path.to_owned(),
                        found_cluster: found.cluster_id,
                        found_node: found.node_id,
                        want_cluster: identity.cluster_id.clone(),
                        want_node: identity.node_id,
                    });
                }
            }
            None => {
                let bytes =
                    codec::encode(identity).map_err(|source| OpenError::Codec { path: path.to_owned(), source })?;
                let mut batch = WriteBatch::default();
                batch.put_cf(db.cf(keys::CF_RAFT_META), keys::IDENTITY, bytes);
                db.write(batch, true).map_err(rocks)?;
            }
        }
        Ok(Arc::new(db))
    }

    /// The data dir.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A column family handle. Every family in [`keys::ALL_CFS`] exists once [`Db::open`] returned.
    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("Db::open creates every column family in keys::ALL_CFS")
    }

    /// One value.
    pub(crate) fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error> {
        self.db.get_cf(self.cf(cf), key)
    }

    /// Writes a batch atomically; with `sync`, the WAL is fsynced before returning.
    pub(crate) fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), rocksdb::Error> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(batch, &opts)
    }

    /// Writes the WAL out and, with `sync`, fsyncs it: everything written before the call is then durable.
    pub(crate) fn flush_wal(&self, sync: bool) -> Result<(), rocksdb::Error> {
        self.db.flush_wal(sync)
    }

    /// The raw RocksDB handle, for iteration and snapshots inside this module.
    pub(crate) fn raw(&self) -> &DB {
        &self.db
    }

    /// Flushes and fsyncs the WAL; called on shutdown.
    pub fn flush(&self) -> Result<(), rocksdb::Error> {
        self.db.flush_wal(true)?;
        for cf in keys::ALL_CFS {
            self.db.flush_cf(self.cf(cf))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{state_memtable_bytes, Db, Identity};

    #[test]
    fn three_consecutive_nodes_have_three_memtable_sizes_one_of_them_rocksdbs_default() {
        let mib: Vec<usize> = (1..=3).map(|id| state_memtable_bytes(id) >> 20).collect();
        assert_eq!(mib, [64, 80, 48]);
    }

    #[test]
    fn the_state_family_is_opened_with_the_nodes_memtable_size() {
        let dir = tempfile::tempdir().expect("temp dir");
        let identity = Identity { cluster_id: "c".into(), node_id: 2 };
        let db = Db::open(dir.path(), &identity).expect("opens");
        drop(db);
        let options = std::fs::read_dir(dir.path())
            .expect("lists")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("OPTIONS-"))
            .map(|e| std::fs::read_to_string(e.path()).expect("reads"))
            .last()
            .expect("RocksDB writes its options file");
        let after = options.split("[CFOptions \"state\"]").nth(1).expect("the state family's section");
        let state = after.split("\n[").next().unwrap_or(after);
        assert!(state.contains(&format!("write_buffer_size={}", 80 << 20)), "{state}");
    }
}
