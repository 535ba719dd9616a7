//! Every key Baton writes to RocksDB, and its column family. One place, so the layout can be read at a glance.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `raft_log` | log index, u64 big-endian | encoded openraft `Entry` |
//! | `raft_meta` | `identity`, `vote`, `committed`, `last_purged` | encoded record |
//! | `sm_meta` | `last_applied`, `membership`, `snapshot` | encoded record |
//! | `state` | partition (u16 BE), table (u8), table key | encoded domain record |
//!
//! The `state` family holds the business data and nothing else: its contents are what a snapshot carries and what
//! the state hash covers. Every `state` key starts with a partition id, so that a later version can run several
//! Raft groups (DESIGN.md, "Beyond one cluster") without rewriting the layout; today everything is partition 0.
//! Big-endian integers keep RocksDB's byte order equal to numeric order.

/// The Raft log entries.
pub const CF_RAFT_LOG: &str = "raft_log";
/// Raft's own durable variables and the data dir's identity.
pub const CF_RAFT_META: &str = "raft_meta";
/// The state machine's bookkeeping: applied index, membership, current snapshot.
pub const CF_SM_META: &str = "sm_meta";
/// The business state.
pub const CF_STATE: &str = "state";
/// All column families, in creation order.
pub const ALL_CFS: [&str; 4] = [CF_RAFT_LOG, CF_RAFT_META, CF_SM_META, CF_STATE];

/// `raft_meta`: which cluster and node this data dir belongs to.
pub const IDENTITY: &[u8] = b"identity";
/// `raft_meta`: the persisted vote.
pub const VOTE: &[u8] = b"vote";
/// `raft_meta`: the last known committed log id.
pub const COMMITTED: &[u8] = b"committed";
/// `raft_meta`: the last purged log id.
pub const LAST_PURGED: &[u8] = b"last_purged";

/// `sm_meta`: the last applied log id, written in the same batch as the entry's effects.
pub const LAST_APPLIED: &[u8] = b"last_applied";
/// `sm_meta`: the last applied membership.
pub const MEMBERSHIP: &[u8] = b"membership";
/// `sm_meta`: the digest of the `state` family at `last_applied` (see `storage::digest`), written with it.
pub const STATE_DIGEST: &[u8] = b"state_digest";
/// `sm_meta`: where versions before the snapshot file kept the current snapshot (moved to the file at open).
pub const SNAPSHOT: &[u8] = b"snapshot";

/// The only partition today.
pub const PARTITION_0: u16 = 0;

/// Tables inside the `state` family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Table {
    /// Task definitions by name.
    TaskDef = 1,
    /// Workflow definitions by name and version.
    WorkflowDef = 2,
    /// Workflow executions (with their tasks) by id.
    Workflow = 3,
    /// Idempotency keys of starts -> the workflow id they created.
    IdempotencyKey = 4,
    /// Dispatch counters by task type.
    TypeStats = 5,
    /// Task id -> the id of the workflow holding the task (for the task endpoints, which name only the task).
    TaskIndex = 6,
    /// Values written by `baton bench raft`, by key.
    BenchValue = 7,
    /// Cluster settings, by name (`limits`: the engine's [`Limits`](crate::engine::limits::Limits)).
    Setting = 8,
}

/// `raft_log` key of a log index.
pub fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The log index of a `raft_log` key.
pub fn log_index(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// The prefix of every key of `table` in `partition`.
pub fn table_prefix(partition: u16, table: Table) -> Vec<u8> {
    let mut key = Vec::with_capacity(16);
    key.extend_from_slice(&partition.to_be_bytes());
    key.push(table as u8);
    key
}

/// Key of a task definition.
pub fn task_def(partition: u16, name: &str) -> Vec<u8> {
    let mut key = table_prefix(partition, Table::TaskDef);
    key.extend_from_slice(name.as_bytes());
    key
}

/// Prefix of every version of a workflow definition: name then a 0 byte (names hold no control characters).
pub fn workflow_def_versions(partition: u16, name: &str) -> Vec<u8> {
    let mut key = table_prefix(partition, Table::WorkflowDef);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key
}

/// Key of one version of a workflow definition.
pub fn workflow_def(partition: u16, name: &str, version: u32) -> Vec<u8> {
    let mut key = workflow_def_versions(partition, name);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// Key of a workflow execution.
pub fn workflow(partition: u16, id: &str) -> Vec<u8> {
    let mut key = table_prefix(partition, Table::Workflow);
    key.extend_from_slice(id.as_bytes());
    key
}

/// Key of an idempotency key record.
pub fn idempotency_key(partition: u16, key: &str) -> Vec<u8> {
    let mut k = table_prefix(partition, Table::IdempotencyKey);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Key of a task type's dispatch counters.
pub fn type_stats(partition: u16, task_type: &str) -> Vec<u8> {
    let mut k = table_prefix(partition, Table::TypeStats);
    k.extend_from_slice(task_type.as_bytes());
    k
}

/// Key of the workflow a task belongs to.
pub fn task_index(partition: u16, task_id: &str) -> Vec<u8> {
    let mut k = table_prefix(partition, Table::TaskIndex);
    k.extend_from_slice(task_id.as_bytes());
    k
}

/// Key of a bench value.
pub fn bench_value(partition: u16, key: &str) -> Vec<u8> {
    let mut k = table_prefix(partition, Table::BenchValue);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Key of a cluster setting.
pub fn setting(partition: u16, name: &str) -> Vec<u8> {
    let mut k = table_prefix(partition, Table::Setting);
    k.extend_from_slice(name.as_bytes());
    k
}

/// The name the engine's limits are stored under ([`setting`]).
pub const LIMITS_SETTING: &str = "limits";

/// The smallest key greater than every key that starts with `prefix` (None when no such key exists).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_versions_sort_numerically_and_names_do_not_collide() {
        assert!(workflow_def(0, "wf", 2) < workflow_def(0, "wf", 10));
        let versions = workflow_def_versions(0, "wf");
        assert!(!workflow_def(0, "wf2", 1).starts_with(&versions));
        assert!(workflow_def(0, "wf", 1).starts_with(&versions));
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff]), None);
        assert_eq!(log_index(&log_key(42)), Some(42));
    }
}
