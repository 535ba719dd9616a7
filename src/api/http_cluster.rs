//! `GET /api/cluster/nodes`: every member's status gathered by the node that is asked, so a browser talking to one
//! node sees the whole cluster without cross-origin calls. This node answers from its own Raft; the others are asked
//! over gRPC (`ClusterService.Status`) in parallel, each within [`MEMBER_TIMEOUT`], and one that does not answer in
//! time is an entry with an error instead of a status.
//!
//! Owns: the aggregation and its JSON shape. Must not touch: what a status contains (that is [`status`]).

use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::api::http::HttpState;
use crate::api::status::{self, NodeStatus};
use crate::raft::NodeId;

/// How long one member may take to answer. The web UI asks every second; a paused or partitioned member must not
/// hold up the view of the others for longer than this.
pub const MEMBER_TIMEOUT: Duration = Duration::from_millis(800);

/// The cluster route, merged into the node's router.
pub fn routes() -> Router<HttpState> {
    Router::new().route("/api/cluster/nodes", get(cluster_nodes))
}

/// The answer of `GET /api/cluster/nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNodes {
    /// The node that answered (the one the caller is looking at).
    pub node_id: NodeId,
    /// The cluster's id.
    pub cluster_id: String,
    /// Every member this node knows of, by id.
    pub nodes: Vec<MemberReply>,
}

/// One member's status, or why it could not be had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReply {
    /// The member's node id.
    pub id: NodeId,
    /// Its gRPC `host:port`.
    pub grpc_addr: String,
    /// Its HTTP `host:port`.
    pub http_addr: String,
    /// Its status as it reports it; `None` when it did not answer.
    pub status: Option<NodeStatus>,
    /// Why there is no status (`unreachable`, `timed out`, ...); `None` when there is one.
    pub error: Option<String>,
}

async fn cluster_nodes(State(state): State<HttpState>) -> Json<ClusterNodes> {
    let node_id = state.raft.metrics().borrow().id;
    let members = status::members(&state.raft);
    let replies = futures::future::join_all(members.iter().map(|m| {
        let state = state.clone();
        async move {
            if m.id == node_id {
                let own = NodeStatus::collect(&state.raft, &state.reader, &state.dispatcher, &state.cluster_id, false);
                match tokio::time::timeout(MEMBER_TIMEOUT, own).await {
                    Ok(reply) => reply.map_err(|e| e.to_string()),
                    Err(_) => Err("timed out".to_string()),
                }
            } else {
                status::fetch(&m.grpc_addr, false, MEMBER_TIMEOUT).await
            }
        }
    }))
    .await;
    let nodes = members
        .into_iter()
        .zip(replies)
        .map(|(m, reply)| {
            let (status, error) = match reply {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(e)),
            };
            MemberReply { id: m.id, grpc_addr: m.grpc_addr, http_addr: m.http_addr, status, error }
        })
        .collect();
    Json(ClusterNodes { node_id, cluster_id: state.cluster_id.to_string(), nodes })
}
