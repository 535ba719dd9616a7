//! Raft glue: openraft's type configuration, its network over gRPC (client and server side), the proposer
//! that gets a client's command committed from whichever node received it, and the leader's group commit.
//!
//! Owns: how Baton speaks openraft. Must not hold business rules (those are the engine's) nor key layouts
//! (storage's).

pub mod group_commit;
pub mod network;
pub mod peer_service;
pub mod proposer;
pub mod wire;

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::engine::{CommandResponse, Proposal};

/// A cluster member's advertised addresses: what openraft stores in membership entries for each node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// gRPC `host:port` (public API and Raft peer traffic).
    pub grpc_addr: String,
    /// HTTP `host:port` (REST, status, UI).
    pub http_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "grpc={} http={}", self.grpc_addr, self.http_addr)
    }
}

openraft::declare_raft_types!(
    /// Baton's openraft type configuration: log entries carry a [`Proposal`], applying one answers a
    /// [`CommandResponse`], nodes are numbered and described by [`NodeInfo`].
    pub TypeConfig:
        D = Proposal,
        R = CommandResponse,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A node's number, from 1.
pub type NodeId = u64;
/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log entry's id (term, leader, index).
pub type LogId = openraft::LogId<NodeId>;
/// openraft's storage error.
pub type StorageError = openraft::StorageError<NodeId>;
/// Membership as stored with the log id that set it.
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
/// Raft metrics.
pub type RaftMetrics = openraft::RaftMetrics<NodeId, NodeInfo>;

/// Why a Raft core stopped by itself (a storage error such as a full disk, a panic), from its last `metrics` and
/// whether its metrics channel is closed (`ended`: the core's task is gone); `None` while the core runs and after
/// an orderly [`Raft::shutdown`]. openraft leaves the error in `running_state`; a core that panicked ends without
/// setting it, so only the closed channel tells.
pub fn core_failure(metrics: &RaftMetrics, ended: bool) -> Option<String> {
    match &metrics.running_state {
        Err(openraft::error::Fatal::Stopped) => None,
        Err(fatal) => Some(fatal.to_string()),
        Ok(()) if ended => Some("the Raft core ended without saying why".to_string()),
        Ok(()) => None,
    }
}

/// [`core_failure`] of this node's Raft, now.
pub fn failure(raft: &Raft) -> Option<String> {
    let metrics = raft.metrics();
    let ended = metrics.has_changed().is_err();
    // Not the tail expression: its borrow of `metrics` would outlive `metrics`.
    let failure = core_failure(&metrics.borrow(), ended);
    failure
}

#[cfg(test)]
mod tests {
    use openraft::error::Fatal;
    use openraft::{StorageError, StorageIOError};

    use super::{core_failure, RaftMetrics};

    fn stopped_by(fatal: Fatal<u64>) -> RaftMetrics {
        RaftMetrics { running_state: Err(fatal), ..RaftMetrics::new_initial(1) }
    }

    #[test]
    fn a_storage_error_is_a_failure_that_names_the_error_and_an_orderly_shutdown_is_not() {
        let full = std::io::Error::other("IO error: No space left on device");
        let fatal = Fatal::StorageError(StorageError::from(StorageIOError::write_logs(&full)));
        let reason = core_failure(&stopped_by(fatal), true).expect("a storage error is a failure");
        assert!(reason.contains("No space left on device"), "{reason}");

        assert_eq!(core_failure(&stopped_by(Fatal::Stopped), true), None, "Raft::shutdown");
        assert_eq!(core_failure(&RaftMetrics::new_initial(1), false), None, "running");
        assert!(core_failure(&RaftMetrics::new_initial(1), true).is_some(), "ended without a word (a panic)");
    }
}
