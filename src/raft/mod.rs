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
