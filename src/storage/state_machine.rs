//! The replicated state machine (openraft's `RaftStateMachine`) over RocksDB, its snapshots, and the read side.
//!
//! Applying an entry: the pure engine decides what the entry changes; this module writes those changes and the
//! entry's log id (`last_applied`) in ONE WriteBatch, so after a crash the state and `last_applied` agree and the
//! node resumes from its own disk. A snapshot is the `state` column family's contents at a RocksDB snapshot, plus
//! the applied log id and membership read from the same RocksDB snapshot.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot, StorageIOError};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};
use serde::{Deserialize, Serialize};

use super::digest::{PairTerm, StateDigest};
use super::hot_records::HotRecords;
use super::hot_workflows::HotWorkflows;
use super::snapshot_file::{SnapshotFile, SnapshotFileError, SnapshotWriter};
use super::{codec, keys, Db};
use crate::engine::definitions::{TaskDef, WorkflowDef};
use crate::engine::limits::Limits;
use crate::engine::model::{TypeStats, Workflow};
use crate::engine::pending::PendingIndex;
use crate::engine::{self, CommandResponse, Mutation, StateError, StateView};
use crate::raft::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// Exclusive upper bound of every `state` key (partition 0xFFFF, table 0xFF is never used).
const STATE_END: [u8; 3] = [0xff, 0xff, 0xff];

/// The snapshot as earlier versions stored it in `sm_meta` (now a [`SnapshotFile`]): read once, to move it.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// The body of a snapshot: every `state` pair in key order.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    pairs: Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>,
}

/// A failed read of the applied state.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// RocksDB failed.
    #[error("storage read failed: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A stored record did not decode.
    #[error("stored record unreadable: {0}")]
    Codec(#[from] codec::CodecError),
    /// The snapshot file could not be read or written.
    #[error("snapshot file: {0}")]
    SnapshotFile(#[from] SnapshotFileError),
    /// The stored state digest has the wrong length.
    #[error("stored state digest is {0} bytes long, not 32")]
    DigestLength(usize),
    /// The running state digest disagrees with one recomputed from the contents.
    #[error(
        "state digest at applied index {applied_index} is {stored} but the contents hash to {recomputed}: this \
         replica's running digest is wrong"
    )]
    DigestMismatch {
        /// The applied index both belong to.
        applied_index: u64,
        /// The digest kept up to date while applying.
        stored: String,
        /// The digest of a full scan.
        recomputed: String,
    },
}

/// A hash of the state machine's contents at one applied index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateHash {
    /// The log index the state reflects (0 before anything was applied).
    pub applied_index: u64,
    /// Hex of the [`StateDigest`] of every `state` pair.
    pub hex: String,
}

/// The in-memory index of ready tasks and timers (see [`PendingIndex`]), with a signal raised after every applied
/// entry that changed it, so long polls and timers wake up.
#[derive(Debug, Default)]
pub struct Pending {
    index: Mutex<PendingIndex>,
    changed: tokio::sync::Notify,
}

impl Pending {
    /// Runs `f` on the index.
    pub fn with<T>(&self, f: impl FnOnce(&PendingIndex) -> T) -> T {
        f(&self.index.lock().expect("pending index lock is never poisoned"))
    }

    /// Resolves after the next applied change (create the future before checking the index, then await it).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    fn update<'w>(&self, workflows: impl IntoIterator<Item = &'w Workflow>) {
        {
            let mut index = self.index.lock().expect("pending index lock is never poisoned");
            for wf in workflows {
                index.update(wf);
            }
        }
        self.changed.notify_waiters();
    }

    fn rebuild(&self, db: &Db) -> Result<(), ReadError> {
        let workflows: Vec<Workflow> = scan(db, &keys::table_prefix(keys::PARTITION_0, keys::Table::Workflow))?;
        let mut index = PendingIndex::default();
        let mut by_status = BTreeMap::new();
        for wf in &workflows {
            index.update(wf);
            *by_status.entry(wf.status).or_insert(0) += 1;
        }
        crate::metrics::metrics().set_workflow_counts(&by_status);
        *self.index.lock().expect("pending index lock is never poisoned") = index;
        self.changed.notify_waiters();
        Ok(())
    }
}

/// Read access to the applied state, for the API and status. Cheap to clone; reads see the latest applied entry.
#[derive(Debug, Clone)]
pub struct StateReader {
    db: Arc<Db>,
    pending: Arc<Pending>,
    hot: Arc<HotWorkflows>,
}

impl StateReader {
    /// Ready tasks and timers.
    pub fn pending(&self) -> &Arc<Pending> {
        &self.pending
    }

    /// The task definition of that name.
    pub fn task_def(&self, name: &str) -> Result<Option<TaskDef>, ReadError> {
        read_record(&self.db, &keys::task_def(keys::PARTITION_0, name))
    }

    /// The engine's limits every replica applies with.
    pub fn limits(&self) -> Result<Limits, ReadError> {
        read_limits(&self.db)
    }

    /// Every task definition, by name.
    pub fn task_defs(&self) -> Result<Vec<TaskDef>, ReadError> {
        scan(&self.db, &keys::table_prefix(keys::PARTITION_0, keys::Table::TaskDef))
    }

    /// One version of a workflow definition, or its latest version when `version` is None.
    pub fn workflow_def(&self, name: &str, version: Option<u32>) -> Result<Option<WorkflowDef>, ReadError> {
        match version {
            Some(v) => read_record(&self.db, &keys::workflow_def(keys::PARTITION_0, name, v)),
            None => Ok(scan(&self.db, &keys::workflow_def_versions(keys::PARTITION_0, name))?.pop()),
        }
    }

    /// The workflow execution with that id.
    pub fn workflow(&self, id: &str) -> Result<Option<Workflow>, ReadError> {
        read_workflow(&self.db, &self.hot, id)
    }

    /// The id of the workflow holding the task with that id.
    pub fn task_workflow(&self, task_id: &str) -> Result<Option<String>, ReadError> {
        read_record(&self.db, &keys::task_index(keys::PARTITION_0, task_id))
    }

    /// Every workflow execution (tasks included), in id order.
    pub fn workflows(&self) -> Result<Vec<Workflow>, ReadError> {
        scan(&self.db, &keys::table_prefix(keys::PARTITION_0, keys::Table::Workflow))
    }

    /// Every version of every workflow definition, by name then version.
    pub fn workflow_defs(&self) -> Result<Vec<WorkflowDef>, ReadError> {
        scan(&self.db, &keys::table_prefix(keys::PARTITION_0, keys::Table::WorkflowDef))
    }

    /// The digest of the state's contents and the applied index it belongs to, read together from one RocksDB
    /// snapshot. O(1): the digest is kept up to date as entries apply.
    pub fn state_hash(&self) -> Result<StateHash, ReadError> {
        let snap = self.db.raw().snapshot();
        let (applied_index, digest) = applied_and_digest(&self.db, &snap)?;
        Ok(StateHash { applied_index, hex: digest.hex() })
    }

    /// [`StateReader::state_hash`], checked against a digest recomputed by scanning the whole state at the same
    /// RocksDB snapshot; a disagreement is [`ReadError::DigestMismatch`]. Costs a full scan.
    pub fn verified_state_hash(&self) -> Result<StateHash, ReadError> {
        let snap = self.db.raw().snapshot();
        let (applied_index, stored) = applied_and_digest(&self.db, &snap)?;
        let recomputed = StateDigest::of_pairs(snap.iterator_cf(self.db.cf(keys::CF_STATE), IteratorMode::Start))?;
        if recomputed != stored {
            return Err(ReadError::DigestMismatch {
                applied_index,
                stored: stored.hex(),
                recomputed: recomputed.hex(),
            });
        }
        Ok(StateHash { applied_index, hex: stored.hex() })
    }
}

/// Moves a snapshot that an earlier version kept in `sm_meta` into the snapshot file (unless a file snapshot exists
/// already), then deletes it from `sm_meta`.
fn move_stored_snapshot_to_file(db: &Db, file: &SnapshotFile) -> Result<(), ReadError> {
    let Some(bytes) = db.get(keys::CF_SM_META, keys::SNAPSHOT)? else {
        return Ok(());
    };
    if file.read()?.is_none() {
        let stored: StoredSnapshot = codec::decode(&bytes)?;
        file.write(&stored.meta, &stored.data)?;
    }
    let mut batch = WriteBatch::default();
    batch.delete_cf(db.cf(keys::CF_SM_META), keys::SNAPSHOT);
    db.write(batch, true)?;
    Ok(())
}

/// The applied index and the state digest stored with it, as of `snap`.
fn applied_and_digest(db: &Db, snap: &rocksdb::Snapshot<'_>) -> Result<(u64, StateDigest), ReadError> {
    let applied: Option<LogId> = match snap.get_cf(db.cf(keys::CF_SM_META), keys::LAST_APPLIED)? {
        Some(bytes) => codec::decode(&bytes)?,
        None => None,
    };
    let digest = match snap.get_cf(db.cf(keys::CF_SM_META), keys::STATE_DIGEST)? {
        Some(bytes) => StateDigest::from_bytes(&bytes).ok_or(ReadError::DigestLength(bytes.len()))?,
        None => StateDigest::EMPTY,
    };
    Ok((applied.map_or(0, |id| id.index), digest))
}

fn read_record<T: serde::de::DeserializeOwned>(db: &Db, key: &[u8]) -> Result<Option<T>, ReadError> {
    match db.get(keys::CF_STATE, key)? {
        Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
        None => Ok(None),
    }
}

/// A workflow: kept decoded in `hot`, or read from RocksDB.
fn read_workflow(db: &Db, hot: &HotWorkflows, id: &str) -> Result<Option<Workflow>, ReadError> {
    match hot.get(id) {
        Some(kept) => Ok(Some(kept.workflow.as_ref().clone())),
        None => read_record(db, &keys::workflow(keys::PARTITION_0, id)),
    }
}

fn scan<T: serde::de::DeserializeOwned>(db: &Db, prefix: &[u8]) -> Result<Vec<T>, ReadError> {
    let mut opts = ReadOptions::default();
    if let Some(end) = keys::prefix_end(prefix) {
        opts.set_iterate_upper_bound(end);
    }
    let iter = db.raw().iterator_cf_opt(db.cf(keys::CF_STATE), opts, IteratorMode::From(prefix, Direction::Forward));
    let mut out = Vec::new();
    for item in iter {
        let (_, value) = item?;
        out.push(codec::decode(&value)?);
    }
    Ok(out)
}

/// The engine's view of the live state: RocksDB, with running workflows from the [`HotWorkflows`] and definitions
/// and counters from the [`HotRecords`].
struct RocksView<'a> {
    db: &'a Db,
    hot: &'a HotWorkflows,
    records: &'a HotRecords,
}

fn state_error(e: ReadError) -> StateError {
    StateError(e.to_string())
}

impl StateView for RocksView<'_> {
    fn task_def(&self, name: &str) -> Result<Option<TaskDef>, StateError> {
        let key = || keys::task_def(keys::PARTITION_0, name);
        self.records.task_def(name, || read_record(self.db, &key())).map_err(state_error)
    }

    fn workflow_def(&self, name: &str, version: u32) -> Result<Option<WorkflowDef>, StateError> {
        let key = || keys::workflow_def(keys::PARTITION_0, name, version);
        self.records.workflow_def(name, version, || read_record(self.db, &key())).map_err(state_error)
    }

    fn latest_workflow_def(&self, name: &str) -> Result<Option<WorkflowDef>, StateError> {
        let prefix = || keys::workflow_def_versions(keys::PARTITION_0, name);
        let load = || scan::<WorkflowDef>(self.db, &prefix()).map(|mut versions| versions.pop());
        self.records.latest_workflow_def(name, load).map_err(state_error)
    }

    fn workflow_def_versions(&self, name: &str) -> Result<Vec<u32>, StateError> {
        let prefix = keys::workflow_def_versions(keys::PARTITION_0, name);
        let mut opts = ReadOptions::default();
        if let Some(end) = keys::prefix_end(&prefix) {
            opts.set_iterate_upper_bound(end);
        }
        let cf = self.db.cf(keys::CF_STATE);
        let mut versions = Vec::new();
        for item in self.db.raw().iterator_cf_opt(cf, opts, IteratorMode::From(&prefix, Direction::Forward)) {
            let (key, _) = item.map_err(|e| StateError(e.to_string()))?;
            let suffix: [u8; 4] = key[prefix.len()..]
                .try_into()
                .map_err(|_| StateError(format!("workflow definition key of {} bytes", key.len())))?;
            versions.push(u32::from_be_bytes(suffix));
        }
        Ok(versions)
    }

    fn workflow(&self, id: &str) -> Result<Option<Workflow>, StateError> {
        read_workflow(self.db, self.hot, id).map_err(state_error)
    }

    fn idempotency_key(&self, key: &str) -> Result<Option<String>, StateError> {
        read_record(self.db, &keys::idempotency_key(keys::PARTITION_0, key)).map_err(state_error)
    }

    fn type_stats(&self, task_type: &str) -> Result<Option<TypeStats>, StateError> {
        let key = || keys::type_stats(keys::PARTITION_0, task_type);
        self.records.type_stats(task_type, || read_record(self.db, &key())).map_err(state_error)
    }

    fn limits(&self) -> Result<Limits, StateError> {
        self.records.limits(|| read_limits(self.db)).map_err(state_error)
    }
}

/// The engine's limits as stored (the cluster setting), or the defaults when none was ever set.
fn read_limits(db: &Db) -> Result<Limits, ReadError> {
    Ok(read_record(db, &keys::setting(keys::PARTITION_0, keys::LIMITS_SETTING))?.unwrap_or_default())
}

/// The state machine openraft drives.
#[derive(Debug)]
pub struct StateMachineStore {
    db: Arc<Db>,
    reader: StateReader,
    /// The digest of the `state` family as of the last applied entry (also stored under `STATE_DIGEST`).
    digest: StateDigest,
    /// Where the current snapshot is kept.
    snapshot_file: SnapshotFile,
    /// Definitions and counters read by the apply, kept decoded.
    records: HotRecords,
}

impl StateMachineStore {
    /// A state machine over `db`.
    pub fn new(db: Arc<Db>) -> Result<Self, ReadError> {
        let pending = Arc::new(Pending::default());
        pending.rebuild(&db)?;
        let digest = match db.get(keys::CF_SM_META, keys::STATE_DIGEST)? {
            Some(bytes) => StateDigest::from_bytes(&bytes).ok_or(ReadError::DigestLength(bytes.len()))?,
            None => {
                // A data dir written before the digest was kept: compute it once. Nothing applies concurrently.
                let snap = db.raw().snapshot();
                let digest = StateDigest::of_pairs(snap.iterator_cf(db.cf(keys::CF_STATE), IteratorMode::Start))?;
                let mut batch = WriteBatch::default();
                batch.put_cf(db.cf(keys::CF_SM_META), keys::STATE_DIGEST, digest.to_bytes());
                db.write(batch, true)?;
                digest
            }
        };
        let snapshot_file = SnapshotFile::in_data_dir(db.path());
        move_stored_snapshot_to_file(&db, &snapshot_file)?;
        let reader = StateReader { db: db.clone(), pending, hot: Arc::default() };
        Ok(StateMachineStore { db, reader, digest, snapshot_file, records: HotRecords::default() })
    }

    /// A read handle that stays valid after the state machine is handed to openraft.
    pub fn reader(&self) -> StateReader {
        self.reader.clone()
    }

    fn sm_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let bytes = self.db.get(keys::CF_SM_META, key).map_err(|e| StorageIOError::read_state_machine(&e))?;
        bytes.map(|b| codec::decode(&b).map_err(|e| StorageIOError::read_state_machine(&e).into())).transpose()
    }

    /// Writes an entry's mutations into `batch`, the last write of each key winning (a batch of commands may
    /// write one workflow several times), and returns the digest after them and, for each workflow written, the
    /// digest term and length of what was written for it.
    fn write_mutations(
        &self,
        batch: &mut WriteBatch,
        mutations: &[Mutation],
    ) -> Result<(StateDigest, BTreeMap<String, Stored>), ReadError> {
        // Last write of a key wins; `None` deletes it. Workflow records also name their workflow.
        let mut writes: BTreeMap<Vec<u8>, Write<'_>> = BTreeMap::new();
        for mutation in mutations {
            let (key, value) = encode_mutation(mutation)?;
            let workflow_id = match mutation {
                Mutation::PutWorkflow(wf) => Some(wf.workflow_id.as_str()),
                _ => None,
            };
            writes.insert(key, (value, workflow_id));
        }
        let cf = self.db.cf(keys::CF_STATE);
        let mut digest = self.digest;
        let mut workflow_terms = BTreeMap::new();
        for (key, (value, workflow_id)) in writes {
            // The old value leaves the digest: its term is kept for a hot workflow, read back otherwise.
            let old_existed = match workflow_id.and_then(|id| self.reader.hot.get(id)) {
                Some(hot) => {
                    digest.remove_term(hot.term);
                    true
                }
                None => match self.db.get(keys::CF_STATE, &key)? {
                    Some(old) => {
                        digest.remove(&key, &old);
                        true
                    }
                    None => false,
                },
            };
            match value {
                Some(value) => {
                    let term = PairTerm::of(&key, &value);
                    digest.add_term(term);
                    if let Some(id) = workflow_id {
                        workflow_terms.insert(id.to_string(), (term, codec::plain_len(&value)));
                    }
                    batch.put_cf(cf, key, value);
                }
                None if old_existed => batch.delete_cf(cf, key),
                None => {}
            }
        }
        Ok((digest, workflow_terms))
    }
}

/// What was stored for a workflow: its digest term and its length uncompressed.
type Stored = (PairTerm, usize);

/// What an entry writes under one `state` key: the encoded value (`None`: delete the key) and, for a workflow
/// record, the workflow's id.
type Write<'m> = (Option<Vec<u8>>, Option<&'m str>);

/// The `state` key a mutation changes, and the encoded value it writes there (`None`: it deletes the key).
fn encode_mutation(mutation: &Mutation) -> Result<(Vec<u8>, Option<Vec<u8>>), codec::CodecError> {
    Ok(match mutation {
        Mutation::PutTaskDef(def) => (keys::task_def(keys::PARTITION_0, &def.name), Some(codec::encode(def)?)),
        Mutation::PutWorkflowDef(def) => {
            (keys::workflow_def(keys::PARTITION_0, &def.name, engine::workflow_version(def)), Some(codec::encode(def)?))
        }
        Mutation::PutTypeStats { task_type, stats } => {
            (keys::type_stats(keys::PARTITION_0, task_type), Some(codec::encode(stats)?))
        }
        Mutation::PutIdempotencyKey { key, workflow_id } => {
            (keys::idempotency_key(keys::PARTITION_0, key), Some(codec::encode(workflow_id)?))
        }
        Mutation::PutWorkflow(wf) => {
            (keys::workflow(keys::PARTITION_0, &wf.workflow_id), Some(codec::encode_compressed(wf.as_ref())?))
        }
        Mutation::PutTaskIndex { task_id, workflow_id } => {
            (keys::task_index(keys::PARTITION_0, task_id), Some(codec::encode(workflow_id)?))
        }
        Mutation::DeleteTaskIndex { task_id } => (keys::task_index(keys::PARTITION_0, task_id), None),
        Mutation::DeleteTaskDef { name } => (keys::task_def(keys::PARTITION_0, name), None),
        Mutation::DeleteWorkflowDef { name, version } => (keys::workflow_def(keys::PARTITION_0, name, *version), None),
        Mutation::PutBenchValue { key, value } => {
            (keys::bench_value(keys::PARTITION_0, key), Some(codec::encode(serde_bytes::Bytes::new(value))?))
        }
        Mutation::PutLimits(limits) => {
            (keys::setting(keys::PARTITION_0, keys::LIMITS_SETTING), Some(codec::encode(limits)?))
        }
    })
}

/// Builds snapshots from a consistent RocksDB snapshot of the state.
#[derive(Debug)]
pub struct SnapshotBuilder {
    db: Arc<Db>,
    file: SnapshotFile,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // Scanning, encoding and writing the whole state takes a core for a second or more once workflows pile up
        // (43 MB: 1.1-1.5 s), and every replica builds at the same log index. On the runtime's threads it would hold
        // up heartbeats and votes; at normal priority, replicas sharing a machine took its CPU at once and a
        // workflow start's p99 rose to 150-280 ms (docs/perf.md). So it runs on its own thread at the lowest nice
        // level: it yields the CPU to the replica's work, and still always makes progress (the idle class measured
        // no better and, under a saturated CPU, may not finish at all while its RocksDB snapshot pins old versions).
        let (db, file) = (self.db.clone(), self.file.clone());
        let failed = |e: &dyn std::fmt::Display| StorageIOError::write_snapshot(None, openraft::AnyError::error(e));
        let (done, built) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("snapshot-build".into())
            .spawn(move || {
                at_lowest_priority();
                let _ = done.send(build_snapshot(&db, &file));
            })
            .map_err(|e| failed(&e))?;
        built.await.map_err(|e| failed(&e))?
    }
}

/// Gives the calling thread the lowest nice level (19): any thread at the default level that wants the CPU gets
/// it first. A refusal (a sandbox forbidding it) leaves the thread as it was.
fn at_lowest_priority() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy, ThreadPriority,
            ThreadSchedulePolicy,
        };
        let normal = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other);
        if let Err(e) = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, normal) {
            tracing::warn!(error = ?e, "the snapshot build runs at the default priority");
        }
    }
}

/// Builds a snapshot of the state as of now and makes it the current one.
///
/// The pairs go from a RocksDB snapshot's iterator straight into the file, one at a time: copying the whole state
/// into a list and encoding that list into one buffer (two copies of tens of megabytes, grown by reallocation) made
/// every replica's apply several times slower while it ran, although the build ran at the lowest CPU priority
/// (docs/perf.md, change 16). The answer's data is the file read back.
fn build_snapshot(db: &Db, file: &SnapshotFile) -> Result<Snapshot<TypeConfig>, StorageError> {
    let started = std::time::Instant::now();
    let read_err =
        |e: &dyn std::error::Error| StorageIOError::read_state_machine(openraft::AnyError::error(e.to_string()));
    let snap = db.raw().snapshot();
    let meta_value = |key| -> Result<Option<Vec<u8>>, StorageError> {
        snap.get_cf(db.cf(keys::CF_SM_META), key).map_err(|e| read_err(&e).into())
    };
    let last_log_id: Option<LogId> = match meta_value(keys::LAST_APPLIED)? {
        Some(b) => codec::decode(&b).map_err(|e| read_err(&e))?,
        None => None,
    };
    let last_membership: StoredMembership = match meta_value(keys::MEMBERSHIP)? {
        Some(b) => codec::decode(&b).map_err(|e| read_err(&e))?,
        None => StoredMembership::default(),
    };
    let built_at_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let snapshot_id = match last_log_id {
        Some(id) => format!("{}-{}-{built_at_ns}", id.leader_id.term, id.index),
        None => format!("0-0-{built_at_ns}"),
    };
    let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
    let mut opts = ReadOptions::default();
    opts.set_snapshot(&snap);
    // A scan of everything once: its blocks would only push the apply's out of the block cache.
    opts.fill_cache(false);
    let pairs = db.raw().iterator_cf_opt(db.cf(keys::CF_STATE), opts, IteratorMode::Start);
    let write_err = |e: &dyn std::error::Error| {
        StorageIOError::write_snapshot(Some(meta.signature()), openraft::AnyError::error(e.to_string()))
    };
    file.write_with(&meta, |out| write_snapshot_body(out, pairs)).map_err(|e| write_err(&e))?;
    drop(snap);
    let (_, data) = file
        .read()
        .map_err(|e| write_err(&e))?
        .ok_or_else(|| write_err(&std::io::Error::other("the snapshot file just written is gone")))?;
    tracing::info!(
        index = last_log_id.map_or(0, |id| id.index),
        bytes = data.len(),
        ms = started.elapsed().as_millis() as u64,
        "snapshot built"
    );
    Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
}

/// Writes `pairs` as [`SnapshotBody`]'s encoding (read back by `codec::decode`), one pair at a time. The pairs'
/// array is written with a 32-bit count, filled in at the end, so the count need not be known before the scan.
fn write_snapshot_body(
    out: &mut SnapshotWriter,
    pairs: impl Iterator<Item = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>>,
) -> std::io::Result<()> {
    use rmp::encode as mp;
    use std::io::Write as _;
    let mp_err = |e: mp::ValueWriteError| std::io::Error::other(e.to_string());
    out.write_all(&[codec::FORMAT_V1])?;
    mp::write_map_len(out, 1).map_err(mp_err)?;
    mp::write_str(out, "pairs").map_err(mp_err)?;
    let count_at = out.position() + 1;
    out.write_all(&[rmp::Marker::Array32.to_u8(), 0, 0, 0, 0])?;
    let mut count: u32 = 0;
    for pair in pairs {
        let (key, value) = pair.map_err(std::io::Error::other)?;
        mp::write_array_len(out, 2).map_err(mp_err)?;
        mp::write_bin(out, &key).map_err(mp_err)?;
        mp::write_bin(out, &value).map_err(mp_err)?;
        count = count.checked_add(1).ok_or_else(|| std::io::Error::other("more than 2^32 state pairs"))?;
    }
    out.patch_at_end(count_at, count.to_be_bytes().to_vec());
    Ok(())
}

/// Replaces the state with a received snapshot's and makes the snapshot the current one; returns the new digest.
/// The state and `last_applied` are written (synced) before the snapshot file, so a crash in between leaves a
/// current snapshot older than the state, which is an ordinary situation, never the reverse.
fn install_snapshot(
    db: &Db,
    file: &SnapshotFile,
    meta: &SnapshotMeta,
    data: &[u8],
) -> Result<StateDigest, StorageError> {
    let err = |e: &dyn std::error::Error| {
        StorageIOError::write_snapshot(Some(meta.signature()), openraft::AnyError::error(e.to_string()))
    };
    let body: SnapshotBody = codec::decode(data).map_err(|e| err(&e))?;
    let state = db.cf(keys::CF_STATE);
    let sm_meta = db.cf(keys::CF_SM_META);
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(state, &[][..], &STATE_END[..]);
    let mut digest = StateDigest::EMPTY;
    for (key, value) in &body.pairs {
        batch.put_cf(state, key, value);
        digest.add(key, value);
    }
    batch.put_cf(sm_meta, keys::STATE_DIGEST, digest.to_bytes());
    batch.put_cf(sm_meta, keys::LAST_APPLIED, codec::encode(&meta.last_log_id).map_err(|e| err(&e))?);
    batch.put_cf(sm_meta, keys::MEMBERSHIP, codec::encode(&meta.last_membership).map_err(|e| err(&e))?);
    db.write(batch, true).map_err(|e| err(&e))?;
    file.write(meta, data).map_err(|e| err(&e))?;
    tracing::info!(index = meta.last_log_id.map_or(0, |id| id.index), pairs = body.pairs.len(), "snapshot installed");
    Ok(digest)
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.sm_meta::<Option<LogId>>(keys::LAST_APPLIED)?.flatten();
        let membership = self.sm_meta::<StoredMembership>(keys::MEMBERSHIP)?.unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        for entry in entries {
            let began = std::time::Instant::now();
            let log_id = entry.log_id;
            let apply_err =
                |e: &dyn std::error::Error| StorageIOError::apply(log_id, openraft::AnyError::error(e.to_string()));
            let mut batch = WriteBatch::default();
            let mut digest = self.digest;
            let mut mutations: Vec<Mutation> = Vec::new();
            let mut workflow_terms = BTreeMap::new();
            let mut transitions = engine::Transitions::default();
            let response = match &entry.payload {
                EntryPayload::Blank => CommandResponse::Done,
                EntryPayload::Normal(proposal) => {
                    let _span = tracing::debug_span!(
                        "apply",
                        log_index = log_id.index,
                        term = log_id.leader_id.term,
                        kind = proposal.command.kind()
                    )
                    .entered();
                    let view = RocksView { db: &self.db, hot: &self.reader.hot, records: &self.records };
                    let applied = engine::apply(&view, proposal).map_err(|e| apply_err(&e))?;
                    (digest, workflow_terms) =
                        self.write_mutations(&mut batch, &applied.mutations).map_err(|e| apply_err(&e))?;
                    transitions = applied.transitions;
                    mutations = applied.mutations;
                    applied.response
                }
                EntryPayload::Membership(membership) => {
                    let stored = StoredMembership::new(Some(log_id), membership.clone());
                    let bytes = codec::encode(&stored).map_err(|e| apply_err(&e))?;
                    batch.put_cf(self.db.cf(keys::CF_SM_META), keys::MEMBERSHIP, bytes);
                    tracing::info!(log_index = log_id.index, ?membership, "membership applied");
                    CommandResponse::Done
                }
            };
            let applied_bytes = codec::encode(&Some(log_id)).map_err(|e| apply_err(&e))?;
            batch.put_cf(self.db.cf(keys::CF_SM_META), keys::LAST_APPLIED, applied_bytes);
            batch.put_cf(self.db.cf(keys::CF_SM_META), keys::STATE_DIGEST, digest.to_bytes());
            // While the batch is written, readers find these workflows in RocksDB, never older versions kept here
            // next to newer records written with them (a task's index entry).
            self.reader.hot.forget(workflow_terms.keys().map(String::as_str));
            self.db.write(batch, false).map_err(|e| apply_err(&e))?;
            self.digest = digest;
            self.records.written(&mutations);
            let changed: Vec<Arc<Workflow>> = mutations
                .into_iter()
                .filter_map(|m| match m {
                    Mutation::PutWorkflow(wf) => Some(wf),
                    _ => None,
                })
                .collect();
            if !changed.is_empty() {
                // Only now, with the batch written: the last version of each workflow (found from the end), with
                // the term and length of what was stored for it.
                for wf in changed.iter().rev() {
                    if let Some((term, bytes)) = workflow_terms.remove(&wf.workflow_id) {
                        self.reader.hot.written(wf.clone(), term, bytes);
                    }
                }
                self.reader.pending.update(changed.iter().map(|wf| wf.as_ref()));
            }
            let metrics = crate::metrics::metrics();
            metrics.record_transitions(&transitions);
            metrics.apply_seconds.observe(began.elapsed().as_secs_f64());
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { db: self.db.clone(), file: self.snapshot_file.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let (db, file, pending) = (self.db.clone(), self.snapshot_file.clone(), self.reader.pending.clone());
        // The state is about to be replaced: nothing kept from before may answer for it.
        self.reader.hot.clear();
        self.records.clear();
        let owned_meta = meta.clone();
        let digest = tokio::task::spawn_blocking(move || {
            let digest = install_snapshot(&db, &file, &owned_meta, snapshot.get_ref())?;
            pending.rebuild(&db).map_err(|e| StorageIOError::write_snapshot(Some(owned_meta.signature()), &e))?;
            Ok::<_, StorageError>(digest)
        })
        .await
        .map_err(|e| {
            StorageIOError::write_snapshot(Some(meta.signature()), openraft::AnyError::error(e.to_string()))
        })??;
        self.digest = digest;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let file = self.snapshot_file.clone();
        let read = tokio::task::spawn_blocking(move || file.read())
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, openraft::AnyError::error(e.to_string())))?;
        match read {
            Ok(Some((meta, data))) => Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })),
            Ok(None) => Ok(None),
            Err(e) => Err(StorageIOError::read_snapshot(None, &e).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};

    use super::*;
    use crate::engine::definitions::parse_json;
    use crate::engine::{Command, Proposal};
    use crate::storage::Identity;

    fn open(dir: &std::path::Path) -> Arc<Db> {
        Db::open(dir, &Identity { cluster_id: "t".into(), node_id: 1 }).expect("opens")
    }

    /// The nice level of the calling thread, from `/proc/thread-self/stat` (field 19; the command name before it,
    /// in parentheses, may hold spaces).
    #[cfg(target_os = "linux")]
    fn thread_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("reads /proc/thread-self/stat");
        let after_name = &stat[stat.rfind(')').expect("stat names the command in parentheses") + 2..];
        after_name.split(' ').nth(16).expect("stat has a nice field").parse().expect("nice is a number")
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_snapshot_builder_thread_runs_at_the_lowest_nice_level() {
        let (before, after) = std::thread::spawn(|| {
            let before = thread_nice();
            at_lowest_priority();
            (before, thread_nice())
        })
        .join()
        .expect("the thread ends");
        assert_eq!(after, 19, "the thread's nice level was {before} before");
    }

    fn entry(index: u64, name: &str) -> Entry {
        let def: TaskDef = parse_json(&format!(r#"{{"name":"{name}"}}"#)).expect("parses");
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal {
                at_ms: index,
                command: Command::RegisterTaskDefs { defs: vec![def] },
            }),
        }
    }

    #[tokio::test]
    async fn applied_state_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut sm = StateMachineStore::new(open(dir.path())).expect("opens");
            let responses = sm.apply([entry(1, "a"), entry(2, "b")]).await.expect("applies");
            assert_eq!(responses, vec![CommandResponse::Done, CommandResponse::Done]);
        }
        let mut sm = StateMachineStore::new(open(dir.path())).expect("opens");
        let (applied, _) = sm.applied_state().await.expect("reads");
        assert_eq!(applied.map(|id| id.index), Some(2));
        let names: Vec<_> = sm.reader().task_defs().expect("reads").into_iter().map(|d| d.name).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn a_streamed_snapshot_body_decodes_to_every_pair_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = SnapshotFile::in_data_dir(dir.path());
        // More pairs than a 16-bit count holds, an empty value, and values past the 8- and 16-bit length forms.
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> =
            (0u32..70_000).map(|i| (i.to_be_bytes().to_vec(), format!("v{i}").into_bytes())).collect();
        pairs.push((b"\xffempty".to_vec(), Vec::new()));
        pairs.push((b"\xfflarge".to_vec(), vec![7u8; 300]));
        pairs.push((b"\xffhuge".to_vec(), vec![9u8; 70_000]));
        let scan = pairs.iter().map(|(k, v)| Ok((k.clone().into_boxed_slice(), v.clone().into_boxed_slice())));
        let meta = SnapshotMeta::default();
        file.write_with(&meta, |out| write_snapshot_body(out, scan)).expect("writes");
        let (_, data) = file.read().expect("reads").expect("written");
        let body: SnapshotBody = codec::decode(&data).expect("decodes as a snapshot body");
        let read: Vec<(Vec<u8>, Vec<u8>)> = body.pairs.into_iter().map(|(k, v)| (k.into_vec(), v.into_vec())).collect();
        assert_eq!(read.len(), pairs.len());
        assert!(read == pairs, "the pairs read back differ from those written");
    }

    #[tokio::test]
    async fn installed_snapshot_reproduces_state_and_hash() {
        let (dir_a, dir_b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        let mut a = StateMachineStore::new(open(dir_a.path())).expect("opens");
        let mut b = StateMachineStore::new(open(dir_b.path())).expect("opens");
        a.apply([entry(1, "a"), entry(2, "b"), entry(3, "c")]).await.expect("applies");
        // b holds state the snapshot must replace, not merge with.
        b.apply([entry(1, "stale")]).await.expect("applies");
        let snapshot = a.get_snapshot_builder().await.build_snapshot().await.expect("builds");
        b.install_snapshot(&snapshot.meta, snapshot.snapshot).await.expect("installs");
        let (hash_a, hash_b) = (a.reader().state_hash().expect("hash"), b.reader().state_hash().expect("hash"));
        assert_eq!(hash_a, hash_b);
        assert_eq!(hash_b.applied_index, 3);
        assert!(b.reader().task_def("stale").expect("reads").is_none());
        let current = b.get_current_snapshot().await.expect("reads").expect("snapshot kept");
        assert_eq!(current.meta.last_log_id.map(|id| id.index), Some(3));
    }

    fn batch_entry(index: u64, defs: &[&str]) -> Entry {
        let commands = defs
            .iter()
            .map(|json| Command::RegisterTaskDefs { defs: vec![parse_json(json).expect("parses")] })
            .collect();
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal { at_ms: index, command: Command::Batch(commands) }),
        }
    }

    #[tokio::test]
    async fn running_digest_matches_a_full_scan_through_overwrites_batches_snapshots_and_reopening() {
        let (dir_a, dir_b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        let mut a = StateMachineStore::new(open(dir_a.path())).expect("opens");
        a.apply([entry(1, "a"), entry(2, "b")]).await.expect("applies");
        // One entry writing the same key twice, the second write replacing a value written by an earlier entry.
        a.apply([batch_entry(3, &[r#"{"name":"a","retryCount":1}"#, r#"{"name":"a","retryCount":2}"#])])
            .await
            .expect("applies");
        let hash = a.reader().verified_state_hash().expect("running digest equals the scan");
        assert_eq!(hash.applied_index, 3);
        assert_eq!(a.reader().task_def("a").expect("reads").expect("exists").retry_count, 2);
        // A deletion takes the pair out of the digest; deleting what is not there changes nothing.
        let delete = |index, name: &str| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal {
                at_ms: index,
                command: Command::Batch(vec![
                    Command::DeleteTaskDef { name: name.into() },
                    Command::DeleteTaskDef { name: "never-registered".into() },
                ]),
            }),
        };
        a.apply([entry(4, "gone"), delete(5, "gone")]).await.expect("applies");
        assert!(a.reader().task_def("gone").expect("reads").is_none());
        assert_eq!(a.reader().verified_state_hash().expect("verifies").hex, hash.hex, "back to the state of index 3");

        let mut b = StateMachineStore::new(open(dir_b.path())).expect("opens");
        b.apply([entry(1, "stale")]).await.expect("applies");
        let snapshot = a.get_snapshot_builder().await.build_snapshot().await.expect("builds");
        b.install_snapshot(&snapshot.meta, snapshot.snapshot).await.expect("installs");
        b.apply([entry(6, "c")]).await.expect("applies after the snapshot");
        a.apply([entry(6, "c")]).await.expect("applies");
        assert_eq!(b.reader().verified_state_hash().expect("verifies"), a.reader().state_hash().expect("hash"));

        drop(b);
        let b = StateMachineStore::new(open(dir_b.path())).expect("reopens");
        assert_eq!(b.reader().verified_state_hash().expect("verifies"), a.reader().state_hash().expect("hash"));
    }

    fn workflow_entry(index: u64, command: Command) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal { at_ms: index, command }),
        }
    }

    fn start(id: &str) -> Command {
        Command::StartWorkflow(crate::engine::ops::StartWorkflow {
            workflow_id: id.into(),
            name: "two".into(),
            version: None,
            definition: None,
            input: serde_json::Map::new(),
            correlation_id: None,
            priority: 0,
            task_to_domain: BTreeMap::new(),
            idempotency_key: None,
            idempotency_strategy: Default::default(),
        })
    }

    /// Completes the workflow's task that is waiting.
    fn complete_next(sm: &StateMachineStore, id: &str) -> Command {
        let wf = sm.reader().workflow(id).expect("reads").expect("exists");
        let task = wf.active_tasks().next().expect("a task is waiting");
        Command::UpdateTask {
            workflow_id: id.into(),
            task_id: task.task_id.clone(),
            update: crate::engine::ops::TaskUpdate {
                status: crate::engine::model::TaskStatus::Completed,
                output: serde_json::Map::new(),
                reason: None,
                callback_after_seconds: 0,
                worker_id: Some("w".into()),
                lease: None,
            },
        }
    }

    /// What RocksDB holds for the workflow, bypassing the hot workflows.
    fn stored(sm: &StateMachineStore, id: &str) -> Option<Workflow> {
        read_record(&sm.db, &keys::workflow(keys::PARTITION_0, id)).expect("reads")
    }

    /// Entries 1-3: the definitions of the two-step workflow "two", and its start as "wf1".
    fn two_step_setup() -> [Entry; 3] {
        [
            workflow_entry(1, Command::RegisterTaskDefs { defs: vec![parse_json(r#"{"name":"t"}"#).expect("def")] }),
            workflow_entry(
                2,
                Command::UpdateWorkflowDefs {
                    defs: vec![parse_json(
                        r#"{"name":"two","tasks":[{"name":"t","taskReferenceName":"one","type":"SIMPLE"},
                            {"name":"t","taskReferenceName":"two","type":"SIMPLE"}]}"#,
                    )
                    .expect("def")],
                },
            ),
            workflow_entry(3, start("wf1")),
        ]
    }

    #[tokio::test]
    async fn workflow_records_are_stored_compressed_and_records_in_the_earlier_format_still_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sm = StateMachineStore::new(open(dir.path())).expect("opens");
        sm.apply(two_step_setup()).await.expect("applies");
        let next = complete_next(&sm, "wf1");
        sm.apply([workflow_entry(4, next)]).await.expect("applies");
        let key = keys::workflow(keys::PARTITION_0, "wf1");
        let bytes = sm.db.get(keys::CF_STATE, &key).expect("reads").expect("stored");
        assert_eq!(bytes[0], codec::FORMAT_V1_LZ4);
        let workflow = sm.reader().workflow("wf1").expect("reads").expect("exists");
        assert_eq!(stored(&sm, "wf1").as_ref(), Some(&workflow), "the compressed record decodes to the workflow");
        let plain = codec::encode(&workflow).expect("encodes");
        assert!(bytes.len() * 10 < plain.len() * 7, "{} bytes stored against {} plain", bytes.len(), plain.len());

        // A data dir written before compression holds the plain format: it still reads, and the next write of the
        // workflow stores it compressed.
        let mut batch = WriteBatch::default();
        batch.put_cf(sm.db.cf(keys::CF_STATE), &key, &plain);
        batch.delete_cf(sm.db.cf(keys::CF_SM_META), keys::STATE_DIGEST);
        sm.db.write(batch, true).expect("writes");
        let db = sm.db.clone();
        drop(sm);
        let mut sm = StateMachineStore::new(db).expect("reopens, computing the digest of the older records");
        assert_eq!(sm.reader().workflow("wf1").expect("reads"), Some(workflow));
        let last = complete_next(&sm, "wf1");
        sm.apply([workflow_entry(5, last)]).await.expect("applies");
        assert_eq!(sm.db.get(keys::CF_STATE, &key).expect("reads").expect("stored")[0], codec::FORMAT_V1_LZ4);
        let done = sm.reader().workflow("wf1").expect("reads").expect("exists");
        assert_eq!(done.status, crate::engine::model::WorkflowStatus::Completed);
        sm.reader().verified_state_hash().expect("the running digest equals a full scan");
    }

    #[tokio::test]
    async fn hot_workflows_agree_with_rocksdb_through_batches_snapshots_and_reopening() {
        let (dir_a, dir_b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        let setup = two_step_setup();
        let mut a = StateMachineStore::new(open(dir_a.path())).expect("opens");
        a.apply(setup.clone()).await.expect("applies");
        let mut b = StateMachineStore::new(open(dir_b.path())).expect("opens");
        b.apply(setup).await.expect("applies");
        assert_eq!(a.reader().hot.len(), 1, "the started workflow is kept decoded");

        // One entry changing a kept workflow twice and starting another: the last version of each is kept.
        let first = complete_next(&a, "wf1");
        a.apply([workflow_entry(4, Command::Batch(vec![first, start("wf2")]))]).await.expect("applies");
        let second = complete_next(&a, "wf1");
        a.apply([workflow_entry(5, Command::Batch(vec![second, complete_next(&a, "wf2")]))]).await.expect("applies");
        for id in ["wf1", "wf2"] {
            assert_eq!(
                a.reader().workflow(id).expect("reads"),
                stored(&a, id),
                "{id}: the cache answers what is stored"
            );
        }
        assert!(a.reader().hot.get("wf1").is_none(), "a completed workflow leaves the cache");
        assert!(a.reader().hot.get("wf2").is_some(), "a running one stays");
        a.reader().verified_state_hash().expect("the running digest, kept with cached terms, equals a full scan");

        // b still has wf1 as started, kept decoded; the snapshot replaces it.
        assert!(b.reader().hot.get("wf1").is_some());
        let snapshot = a.get_snapshot_builder().await.build_snapshot().await.expect("builds");
        b.install_snapshot(&snapshot.meta, snapshot.snapshot).await.expect("installs");
        assert_eq!(b.reader().workflow("wf1").expect("reads"), stored(&a, "wf1"));
        let last = complete_next(&a, "wf2");
        a.apply([workflow_entry(6, last.clone())]).await.expect("applies");
        b.apply([workflow_entry(6, last)]).await.expect("applies after the snapshot");
        assert_eq!(b.reader().verified_state_hash().expect("verifies"), a.reader().state_hash().expect("hash"));
        assert_eq!(b.reader().workflow("wf2").expect("reads"), stored(&a, "wf2"));

        // Reopened: nothing kept, the same answers from RocksDB.
        drop(a);
        let a = StateMachineStore::new(open(dir_a.path())).expect("reopens");
        assert!(a.reader().hot.is_empty());
        assert_eq!(a.reader().workflow("wf2").expect("reads"), b.reader().workflow("wf2").expect("reads"));
    }

    fn command_entry(index: u64, command: Command) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal { at_ms: index, command }),
        }
    }

    /// What the apply's view answers (from the hot records once read) against what RocksDB holds.
    fn assert_records_agree(sm: &StateMachineStore, task: &str, workflow: &str) {
        let view = RocksView { db: &sm.db, hot: &sm.reader.hot, records: &sm.records };
        let reader = sm.reader();
        for _ in 0..2 {
            assert_eq!(view.task_def(task).expect("view"), reader.task_def(task).expect("rocksdb"), "task def {task}");
            assert_eq!(
                view.latest_workflow_def(workflow).expect("view"),
                reader.workflow_def(workflow, None).expect("rocksdb"),
                "latest workflow def {workflow}"
            );
            for version in 1..=2 {
                assert_eq!(
                    view.workflow_def(workflow, version).expect("view"),
                    reader.workflow_def(workflow, Some(version)).expect("rocksdb"),
                    "workflow def {workflow} v{version}"
                );
            }
        }
    }

    #[tokio::test]
    async fn hot_records_agree_with_rocksdb_through_updates_deletes_and_snapshots() {
        let (dir_a, dir_b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        let mut a = StateMachineStore::new(open(dir_a.path())).expect("opens");
        let task = |retries: u32| -> TaskDef {
            parse_json(&format!(r#"{{"name":"t","retryCount":{retries}}}"#)).expect("parses")
        };
        let wf = |version: u32, task: &str| -> WorkflowDef {
            let json = format!(
                r#"{{"name":"w","version":{version},"tasks":[{{"name":"{task}","taskReferenceName":"r","type":"SIMPLE"}}]}}"#
            );
            parse_json(&json).expect("parses")
        };
        assert_records_agree(&a, "t", "w");
        a.apply([
            command_entry(1, Command::RegisterTaskDefs { defs: vec![task(1)] }),
            command_entry(2, Command::RegisterWorkflowDef { def: wf(1, "t"), overwrite: false }),
        ])
        .await
        .expect("applies");
        assert_records_agree(&a, "t", "w");
        a.apply([
            command_entry(3, Command::UpdateTaskDef { def: task(2) }),
            command_entry(4, Command::RegisterWorkflowDef { def: wf(2, "t"), overwrite: false }),
        ])
        .await
        .expect("applies");
        assert_records_agree(&a, "t", "w");
        assert_eq!(a.reader().workflow_def("w", None).expect("reads").map(|d| d.version), Some(2));
        // Replaced in the same entry that reads it afterwards, then deleted.
        a.apply([command_entry(
            5,
            Command::Batch(vec![
                Command::RegisterWorkflowDef { def: wf(1, "u"), overwrite: true },
                Command::DeleteWorkflowDef { name: "w".into(), version: 2 },
                Command::DeleteTaskDef { name: "t".into() },
            ]),
        )])
        .await
        .expect("applies");
        assert_records_agree(&a, "t", "w");
        assert_eq!(a.reader().workflow_def("w", None).expect("reads").map(|d| d.version), Some(1));

        // A snapshot install replaces whatever b kept.
        let mut b = StateMachineStore::new(open(dir_b.path())).expect("opens");
        b.apply([command_entry(1, Command::RegisterTaskDefs { defs: vec![task(7)] })]).await.expect("applies");
        assert_records_agree(&b, "t", "w");
        let snapshot = a.get_snapshot_builder().await.build_snapshot().await.expect("builds");
        b.install_snapshot(&snapshot.meta, snapshot.snapshot).await.expect("installs");
        assert_records_agree(&b, "t", "w");
        assert!(b.reader().task_def("t").expect("reads").is_none());
    }

    #[tokio::test]
    async fn a_data_dir_without_a_stored_digest_gets_one_computed_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let expected = {
            let mut sm = StateMachineStore::new(open(dir.path())).expect("opens");
            sm.apply([entry(1, "a"), entry(2, "b")]).await.expect("applies");
            let expected = sm.reader().state_hash().expect("hash");
            let mut batch = WriteBatch::default();
            batch.delete_cf(sm.db.cf(keys::CF_SM_META), keys::STATE_DIGEST);
            sm.db.write(batch, true).expect("writes");
            expected
        };
        let mut sm = StateMachineStore::new(open(dir.path())).expect("reopens");
        assert_eq!(sm.reader().state_hash().expect("hash"), expected);
        sm.apply([entry(3, "c")]).await.expect("applies");
        sm.reader().verified_state_hash().expect("running digest still equals the scan");
    }

    #[tokio::test]
    async fn verification_reports_a_state_changed_behind_the_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sm = StateMachineStore::new(open(dir.path())).expect("opens");
        sm.apply([entry(1, "a")]).await.expect("applies");
        let mut batch = WriteBatch::default();
        batch.put_cf(sm.db.cf(keys::CF_STATE), keys::task_def(keys::PARTITION_0, "sneaked-in"), b"x");
        sm.db.write(batch, true).expect("writes");
        match sm.reader().verified_state_hash() {
            Err(ReadError::DigestMismatch { applied_index: 1, stored, recomputed }) => assert_ne!(stored, recomputed),
            other => panic!("expected a digest mismatch at index 1, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_snapshot_kept_in_sm_meta_by_an_earlier_version_moves_to_the_file_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let built = {
            let mut sm = StateMachineStore::new(open(dir.path())).expect("opens");
            sm.apply([entry(1, "a"), entry(2, "b")]).await.expect("applies");
            let built = sm.get_snapshot_builder().await.build_snapshot().await.expect("builds");
            // Put it back where an earlier version kept it, and remove the file.
            let stored = StoredSnapshot { meta: built.meta.clone(), data: built.snapshot.get_ref().clone() };
            let mut batch = WriteBatch::default();
            batch.put_cf(sm.db.cf(keys::CF_SM_META), keys::SNAPSHOT, codec::encode(&stored).expect("encodes"));
            sm.db.write(batch, true).expect("writes");
            std::fs::remove_dir_all(dir.path().join("snapshots")).expect("removes");
            built
        };
        let mut sm = StateMachineStore::new(open(dir.path())).expect("reopens");
        let current = sm.get_current_snapshot().await.expect("reads").expect("moved to the file");
        assert_eq!(current.meta, built.meta);
        assert_eq!(current.snapshot.get_ref(), built.snapshot.get_ref());
        assert!(sm.db.get(keys::CF_SM_META, keys::SNAPSHOT).expect("reads").is_none());
    }

    #[tokio::test]
    async fn state_hash_changes_with_contents_not_with_replica() {
        let (dir_a, dir_b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        let mut a = StateMachineStore::new(open(dir_a.path())).expect("opens");
        let mut b = StateMachineStore::new(open(dir_b.path())).expect("opens");
        let before = a.reader().state_hash().expect("hash");
        a.apply([entry(1, "a")]).await.expect("applies");
        b.apply([entry(1, "a")]).await.expect("applies");
        let after = a.reader().state_hash().expect("hash");
        assert_ne!(before.hex, after.hex);
        assert_eq!(after, b.reader().state_hash().expect("hash"));
    }
}
