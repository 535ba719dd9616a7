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

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};

use super::{codec, keys, Db};
use crate::raft::{Entry, LogId, NodeId, StorageError, TypeConfig};

/// The log store; cheap to clone (the clone is the log reader replication tasks use).
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<Db>,
    syncer: WalSyncer,
}

/// A thread that fsyncs the WAL for appends already written, and then reports them flushed, in order.
#[derive(Debug, Clone)]
struct WalSyncer {
    queue: mpsc::Sender<LogFlushed<TypeConfig>>,
}

impl WalSyncer {
    fn start(db: Arc<Db>) -> Self {
        let (queue, waiting) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let spawned = std::thread::Builder::new().name("wal-sync".into()).spawn(move || {
            // Ends when every LogStore (and so every sender) is gone.
            while let Ok(first) = waiting.recv() {
                let mut flushed = vec![first];
                flushed.extend(waiting.try_iter());
                let result = db.flush_wal(true).map_err(|e| e.to_string());
                for callback in flushed {
                    callback.log_io_completed(result.clone().map_err(std::io::Error::other));
                }
            }
        });
        if let Err(e) = spawned {
            // Without the thread, every append reports a failed flush (see `flushed`), which stops Raft.
            tracing::error!(error = %e, "cannot start the WAL sync thread");
        }
        WalSyncer { queue }
    }

    /// Reports `callback` once the WAL holding everything written so far is on disk.
    fn flushed(&self, callback: LogFlushed<TypeConfig>) {
        if let Err(mpsc::SendError(callback)) = self.queue.send(callback) {
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
        let mut opts = ReadOptions::default();
        match range.end_bound() {
            Bound::Included(&i) => {
                if let Some(end) = i.checked_add(1) {
                    opts.set_iterate_upper_bound(keys::log_key(end));
                }
            }
            Bound::Excluded(&i) => opts.set_iterate_upper_bound(keys::log_key(i)),
            Bound::Unbounded => {}
        }
        let from = keys::log_key(start);
        let iter = self.db.raw().iterator_cf_opt(
            self.db.cf(keys::CF_RAFT_LOG),
            opts,
            IteratorMode::From(&from, Direction::Forward),
        );
        let mut entries = Vec::new();
        for item in iter {
            let (_, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            entries.push(codec::decode(&value).map_err(|e| StorageIOError::read_logs(&e))?);
        }
        Ok(entries)
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
