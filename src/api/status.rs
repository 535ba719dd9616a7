//! A node's view of the cluster, as `GET /api/cluster/status`, the gRPC `ClusterService.Status` and
//! `baton cluster status` show it, and [`fetch`], which asks another node for its view over gRPC.

use std::time::Duration;

use openraft::ServerState;
use serde::{Deserialize, Serialize};

use crate::api::error::ApiError;
use crate::pb::v1 as pb;
use crate::pb::v1::cluster_service_client::ClusterServiceClient;
use crate::raft::network::channel;
use crate::raft::{NodeId, Raft};
use crate::runtime::dispatch::Dispatcher;
use crate::storage::StateReader;

/// One member as the status lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Node id.
    pub id: NodeId,
    /// gRPC `host:port`.
    pub grpc_addr: String,
    /// HTTP `host:port`.
    pub http_addr: String,
}

/// A node's status. Field names are a stable contract (DESIGN.md, "What a node exposes").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// This node's id.
    pub node_id: NodeId,
    /// This node's process id.
    pub pid: u32,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    /// The current Raft term.
    pub term: u64,
    /// The leader this node knows of, if any.
    pub leader_id: Option<NodeId>,
    /// Index of the last entry in this node's log (0 when empty).
    pub last_log_index: u64,
    /// Index of the last entry applied to the state machine; the state hash belongs to this index.
    pub last_applied: u64,
    /// Index of the last entry known committed.
    pub committed_index: u64,
    /// Hex digest of the state machine's contents at `last_applied` (see `storage::digest`).
    pub state_hash: String,
    /// Last index covered by this node's current snapshot (0 when none).
    pub snapshot_index: u64,
    /// Last index removed from this node's log (0 when none).
    pub purged_index: u64,
    /// The cluster's id.
    pub cluster_id: String,
    /// Every member of the cluster.
    pub members: Vec<MemberStatus>,
    /// Worker polls this node is serving as leader right now.
    pub polls_serving: u64,
    /// Worker polls this node has forwarded to the leader and is waiting on.
    pub polls_forwarded: u64,
}

impl NodeStatus {
    /// Collects this node's status. With `verify`, the state hash is also recomputed from a full scan of the state
    /// (in a blocking thread) and a disagreement is an error.
    pub async fn collect(
        raft: &Raft,
        reader: &StateReader,
        dispatcher: &Dispatcher,
        cluster_id: &str,
        verify: bool,
    ) -> Result<NodeStatus, ApiError> {
        let metrics = raft.metrics().borrow().clone();
        let committed_index = raft
            .with_raft_state(|st| st.committed.map_or(0, |id| id.index))
            .await
            .map_err(|e| ApiError::Unavailable(format!("raft is not running: {e}")))?;
        let hash = if verify {
            let reader = reader.clone();
            tokio::task::spawn_blocking(move || reader.verified_state_hash())
                .await
                .map_err(|e| ApiError::Internal(format!("state hash verification panicked: {e}")))??
        } else {
            reader.state_hash()?
        };
        let role = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let members = members(raft);
        let (polls_serving, polls_forwarded) = dispatcher.polls_waiting();
        Ok(NodeStatus {
            node_id: metrics.id,
            pid: std::process::id(),
            role: role.to_string(),
            term: metrics.current_term,
            leader_id: metrics.current_leader,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            last_applied: hash.applied_index,
            committed_index,
            state_hash: hash.hex,
            snapshot_index: metrics.snapshot.map_or(0, |id| id.index),
            purged_index: metrics.purged.map_or(0, |id| id.index),
            cluster_id: cluster_id.to_string(),
            members,
            polls_serving,
            polls_forwarded,
        })
    }
}

/// The members of the cluster as this node's Raft knows them, by id.
pub fn members(raft: &Raft) -> Vec<MemberStatus> {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    metrics
        .membership_config
        .nodes()
        .map(|(id, node)| MemberStatus {
            id: *id,
            grpc_addr: node.grpc_addr.clone(),
            http_addr: node.http_addr.clone(),
        })
        .collect()
}

/// Asks the node at `grpc_addr` for its status (`ClusterService.Status`), waiting at most `timeout`. With `verify`,
/// the node also recomputes its state hash from a full scan and answers an error if it disagrees with the running
/// one. The error is a short reason for people: `unreachable`, `timed out`, or the node's own message.
pub async fn fetch(grpc_addr: &str, verify: bool, timeout: Duration) -> Result<NodeStatus, String> {
    let channel = channel(grpc_addr).map_err(|e| e.to_string())?;
    let mut client = ClusterServiceClient::new(channel);
    let mut request = tonic::Request::new(pb::StatusRequest { verify });
    request.set_timeout(timeout);
    match tokio::time::timeout(timeout, client.status(request)).await {
        Ok(Ok(reply)) => Ok(reply.into_inner().into()),
        Ok(Err(status)) if status.code() == tonic::Code::Unavailable => Err("unreachable".to_string()),
        Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => Err("timed out".to_string()),
        Ok(Err(status)) => Err(status.message().to_string()),
        Err(_) => Err("timed out".to_string()),
    }
}

impl From<NodeStatus> for pb::NodeStatus {
    fn from(s: NodeStatus) -> Self {
        pb::NodeStatus {
            node_id: s.node_id,
            pid: s.pid,
            role: s.role,
            term: s.term,
            leader_id: s.leader_id.unwrap_or(0),
            last_log_index: s.last_log_index,
            last_applied: s.last_applied,
            state_hash: s.state_hash,
            members: s
                .members
                .into_iter()
                .map(|m| pb::Member { id: m.id, grpc_addr: m.grpc_addr, http_addr: m.http_addr })
                .collect(),
            cluster_id: s.cluster_id,
            snapshot_index: s.snapshot_index,
            purged_index: s.purged_index,
            committed_index: s.committed_index,
            polls_serving: s.polls_serving,
            polls_forwarded: s.polls_forwarded,
        }
    }
}

impl From<pb::NodeStatus> for NodeStatus {
    fn from(s: pb::NodeStatus) -> Self {
        NodeStatus {
            node_id: s.node_id,
            pid: s.pid,
            role: s.role,
            term: s.term,
            leader_id: (s.leader_id != 0).then_some(s.leader_id),
            last_log_index: s.last_log_index,
            last_applied: s.last_applied,
            committed_index: s.committed_index,
            state_hash: s.state_hash,
            snapshot_index: s.snapshot_index,
            purged_index: s.purged_index,
            cluster_id: s.cluster_id,
            members: s
                .members
                .into_iter()
                .map(|m| MemberStatus { id: m.id, grpc_addr: m.grpc_addr, http_addr: m.http_addr })
                .collect(),
            polls_serving: s.polls_serving,
            polls_forwarded: s.polls_forwarded,
        }
    }
}
