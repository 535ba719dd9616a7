//! The Raft log store (openraft's `RaftLogStorage`) over RocksDB.
//!
//! Every write that openraft must see durable (append, vote, truncate, purge) is fsynced before it is reported.
//! An append writes its WriteBatch at once (so replication and apply can read the entries) and hands the fsync to
//! the [`WalSyncer`] thread, which reports the append through `LogFlushed` once a WAL sync that began after the
//! write has finished: the runtime's threads never wait in `fsync`, and appends that arrive while a sync runs
//! share the next one. With the WAL flushed by hand (see the storage module), that sync is also what writes the
//! buffered WAL out to the file. Votes, truncations and purges are written with `sync = true` in place (they are
//! rare). Writes are serialised because openraft calls these methods one at a time through `&mut self`.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};

use super::{codec, keys, Db};
use crate::metrics::metrics;
use crate::raft::network::MAX_APPEND_BYTES;
use crate::raft::{Entry, LogId, NodeId, StorageError, TypeConfig};

/// The log store; cheap to clone (the clone is the log reader replication tasks use).
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<Db>,
    syncer: WalSyncer,
}

/// A thread that fsyncs the WAL for appends already written, and then reports them flushed, in order. Shared by
/// the store's clones; when the last one goes, the thread is stopped and joined, so it no longer holds the
/// database once the store is dropped (a database still closing on that thread while the process exits crashed
/// test binaries at exit).
#[derive(Debug, Clone)]
struct WalSyncer {
    thread: Arc<SyncThread>,
}

#[derive(Debug)]
struct SyncThread {
    /// `None` only while dropping.
    queue: Option<mpsc::Sender<LogFlushed<TypeConfig>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for SyncThread {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop once the syncs it holds are done.
        self.queue = None;
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl WalSyncer {
    fn start(db: Arc<Db>) -> Self {
        let (queue, waiting) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let spawned = std::thread::Builder::new().name("wal-sync".into()).spawn(move || {
            // Ends when the queue is closed (the last LogStore is gone).
            while let Ok(first) = waiting.recv() {
                let mut flushed = vec![first];
                flushed.extend(waiting.try_iter());
                let began = Instant::now();
                let result = db.flush_wal(true).map_err(|e| e.to_string());
                metrics().wal_sync_seconds.observe(began.elapsed().as_secs_f64());
                for callback in flushed {
                    callback.log_io_completed(result.clone().map_err(std::io::Error::other));
                }
            }
        });
        let handle = match spawned {
            Ok(handle) => Some(handle),
            Err(e) => {
                // Without the thread, every append reports a failed flush (see `flushed`), which stops Raft.
                tracing::error!(error = %e, "cannot start the WAL sync thread");
                None
            }
        };
        WalSyncer { thread: Arc::new(SyncThread { queue: Some(queue), handle }) }
    }

    /// Reports `callback` once the WAL holding everything written so far is on disk.
    fn flushed(&self, callback: LogFlushed<TypeConfig>) {
        let Some(queue) = &self.thread.queue else {
            return callback.log_io_completed(Err(std::io::Error::other("the WAL sync thread is stopping")));
        };
        if let Err(mpsc::SendError(callback)) = queue.send(callback) {
            callback.log_io_completed(Err(std::io::Error::other("the WAL sync thread is not running")));
        }
    }
}

impl LogStore {
    /// A log store over `db`.
    pub fn new(db: Arc<Db>) -> Self {
        LogStore { syncer: WalSyncer::start(db.clone()), db }
    }

    fn meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let bytes = self.db.get(keys::CF_RAFT_META, key).map_err(|e| StorageIOError::read(&e))?;
        bytes.map(|b| codec::decode(&b).map_err(|e| StorageIOError::read(&e).into())).transpose()
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], value: &T, sync: bool) -> Result<(), StorageError> {
        let bytes = codec::encode(value).map_err(|e| StorageIOError::write(&e))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.db.cf(keys::CF_RAFT_META), key, bytes);
        self.db.write(batch, sync).map_err(|e| StorageIOError::write(&e).into())
    }

    fn last_entry(&self) -> Result<Option<Entry>, StorageError> {
        let mut iter = self.db.raw().iterator_cf(self.db.cf(keys::CF_RAFT_LOG), IteratorMode::End);
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (_, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
                Ok(Some(codec::decode(&value).map_err(|e| StorageIOError::read_logs(&e))?))
            }
        }
    }

    /// The stored entries from `start` up to `end` (exclusive; `None`: the last), stopping before the entry that
    /// would take the stored bytes read past `budget` (the first one is always read).
    fn read_entries(&self, start: u64, end: Option<u64>, budget: usize) -> Result<Vec<Entry>, StorageError> {
        let mut opts = ReadOptions::default();
        if let Some(end) = end {
            opts.set_iterate_upper_bound(keys::log_key(end));
        }
        let from = keys::log_key(start);
        let iter = self.db.raw().iterator_cf_opt(
            self.db.cf(keys::CF_RAFT_LOG),
            opts,
            IteratorMode::From(&from, Direction::Forward),
        );
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        for item in iter {
            let (_, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            bytes = bytes.saturating_add(value.len());
            if bytes > budget && !entries.is_empty() {
                break;
            }
            entries.push(codec::decode(&value).map_err(|e| StorageIOError::read_logs(&e))?);
        }
        Ok(entries)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => i.checked_add(1),
            Bound::Excluded(&i) => Some(i),
            Bound::Unbounded => None,
        };
        self.read_entries(start, end, usize::MAX)
    }

    /// What replication reads to send: at most one AppendEntries request's worth of entries
    /// ([`MAX_APPEND_BYTES`]). openraft asks for up to `max_payload_entries` at once; reading and decoding them
    /// all (megabytes with 512 entries that carry batches of workflows) only for the network to send the first
    /// 256 KiB made each step of a new leader's search for what its followers hold slow (docs/perf.md, change 13).
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        self.read_entries(start, Some(end), MAX_APPEND_BYTES)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.meta(keys::LAST_PURGED)?;
        let last_log_id = match self.last_entry()? {
            Some(entry) => Some(entry.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.put_meta(keys::VOTE, vote, true).map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.meta(keys::VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: `committed` is a hint that lets a restarted node apply sooner; losing it is safe.
        self.put_meta(keys::COMMITTED, &committed, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.meta::<Option<LogId>>(keys::COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = self.db.cf(keys::CF_RAFT_LOG);
        let mut batch = WriteBatch::default();
        for entry in entries {
            let bytes = codec::encode(&entry).map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
            batch.put_cf(cf, keys::log_key(entry.log_id.index), bytes);
        }
        match self.db.write(batch, false) {
            Ok(()) => {
                self.syncer.flushed(callback);
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.db.cf(keys::CF_RAFT_LOG), keys::log_key(log_id.index), keys::log_key(u64::MAX));
        batch.delete_cf(self.db.cf(keys::CF_RAFT_LOG), keys::log_key(u64::MAX));
        self.db.write(batch, true).map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = codec::encode(&log_id).map_err(|e| StorageIOError::write_logs(&e))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.db.cf(keys::CF_RAFT_META), keys::LAST_PURGED, bytes);
        batch.delete_range_cf(
            self.db.cf(keys::CF_RAFT_LOG),
            keys::log_key(0),
            keys::log_key(log_id.index.saturating_add(1)),
        );
        self.db.write(batch, true).map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::engine::{Command, Proposal};
    use crate::storage::Identity;

    /// A store holding entries 1..=`sizes.len()`, each a bench write of the given value size.
    fn store_with(dir: &std::path::Path, sizes: &[usize]) -> LogStore {
        let identity = Identity { cluster_id: "log-store".into(), node_id: 1 };
        let db = Db::open(dir, &identity).expect("opens");
        let mut batch = WriteBatch::default();
        for (i, size) in sizes.iter().enumerate() {
            let entry = Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), i as u64 + 1),
                payload: EntryPayload::Normal(Proposal {
                    at_ms: 0,
                    command: Command::BenchWrite { key: format!("k{i}"), value: vec![7; *size] },
                }),
            };
            batch.put_cf(
                db.cf(keys::CF_RAFT_LOG),
                keys::log_key(entry.log_id.index),
                codec::encode(&entry).expect("encodes"),
            );
        }
        db.write(batch, false).expect("writes");
        LogStore::new(db)
    }

    /// The indexes a limited read of `[start, end)` returns.
    async fn limited(store: &mut LogStore, start: u64, end: u64) -> Vec<u64> {
        let entries = store.limited_get_log_entries(start, end).await.expect("reads");
        entries.iter().map(|e| e.log_id.index).collect()
    }

    /// The indexes a full read of `range` returns.
    async fn full<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(store: &mut LogStore, range: RB) -> Vec<u64> {
        let entries = store.try_get_log_entries(range).await.expect("reads");
        entries.iter().map(|e| e.log_id.index).collect()
    }

    #[tokio::test]
    async fn a_limited_read_stops_at_one_requests_worth_and_a_full_read_does_not() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut store = store_with(dir.path(), &[100 << 10, 100 << 10, 100 << 10, 100 << 10, 1 << 10]);

        // 256 KiB holds two of the 100 KiB entries, not three.
        assert_eq!(limited(&mut store, 1, 6).await, [1, 2]);
        assert_eq!(limited(&mut store, 4, 6).await, [4, 5]);
        // The end bound still holds, and the whole range is read when asked for.
        assert_eq!(limited(&mut store, 2, 3).await, [2]);
        assert_eq!(full(&mut store, 1..6).await, [1, 2, 3, 4, 5]);
        assert_eq!(full(&mut store, 2..=3).await, [2, 3]);
        assert_eq!(full(&mut store, 4..).await, [4, 5]);
    }

    #[tokio::test]
    async fn a_limited_read_returns_an_entry_larger_than_the_budget_alone() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut store = store_with(dir.path(), &[300 << 10, 1 << 10]);

        assert_eq!(limited(&mut store, 1, 3).await, [1]);
        assert_eq!(limited(&mut store, 2, 3).await, [2]);
    }
}
