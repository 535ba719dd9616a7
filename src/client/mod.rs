//! The Rust SDK: a [`Client`] for workflow and metadata calls and a [`worker::Worker`] runner, talking gRPC to any
//! node of a cluster.
//!
//! The client knows a list of node addresses. A call goes to the current node; when that node is down (connection
//! refused, UNAVAILABLE) the call moves on to the next one, so a client keeps working through a node's death. Any
//! node serves any call (a follower forwards writes and polls to the leader), but each reply names the leader in
//! its `x-baton-leader` metadata: when that address is one of the client's, the client makes it the current node
//! and saves the forwarding hop from then on.

pub mod worker;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::api::grpc_workflows::LEADER_HEADER;
use crate::pb::v1 as pb;
use crate::pb::v1::metadata_service_client::MetadataServiceClient;
use crate::pb::v1::task_service_client::TaskServiceClient;
use crate::pb::v1::workflow_service_client::WorkflowServiceClient;

/// Errors of the SDK.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No address given, or one that does not parse.
    #[error("bad node address '{0}'")]
    BadAddress(String),
    /// The call failed on every node.
    #[error("{0}")]
    Status(#[from] Status),
    /// A reply did not decode.
    #[error("unreadable reply: {0}")]
    Decode(String),
}

/// A connection to a cluster through any of its nodes.
#[derive(Debug)]
pub struct Client {
    addrs: Vec<String>,
    channels: Vec<Channel>,
    current: AtomicUsize,
}

/// Whether a failed call may be tried on another node: the node was unreachable or had no leader in reach.
fn try_elsewhere(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled)
}

impl Client {
    /// A client for the nodes at these gRPC addresses (`host:port`).
    pub fn new<I, S>(addrs: I) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let addrs: Vec<String> = addrs.into_iter().map(Into::into).filter(|a| !a.trim().is_empty()).collect();
        if addrs.is_empty() {
            return Err(ClientError::BadAddress(String::new()));
        }
        let channels = addrs
            .iter()
            .map(|a| crate::raft::network::channel(a).map_err(|_| ClientError::BadAddress(a.clone())))
            .collect::<Result<_, _>>()?;
        Ok(Client { addrs, channels, current: AtomicUsize::new(0) })
    }

    /// The node addresses.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// Runs `call` against the current node, moving through the others (twice round) while nodes are unreachable;
    /// answers the reply's message.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let n = self.channels.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for attempt in 0..2 * n {
            let i = (start + attempt) % n;
            match call(self.channels[i].clone()).await {
                Ok(reply) => {
                    self.current.store(i, Ordering::Relaxed);
                    self.follow_leader(reply.metadata());
                    return Ok(reply.into_inner());
                }
                Err(s) if try_elsewhere(&s) => {
                    last = Some(s);
                    if attempt + 1 == n {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                Err(s) => return Err(s.into()),
            }
        }
        Err(last.unwrap_or_else(|| Status::unavailable("no node answered")).into())
    }

    /// Starts a workflow; answers its id.
    pub async fn start_workflow(&self, req: pb::StartWorkflowRequest) -> Result<String, ClientError> {
        self.call(|ch| {
            let req = req.clone();
            async move { WorkflowServiceClient::new(ch).start(req).await }
        })
        .await
        .map(|r| r.workflow_id)
    }

    /// A workflow in Conductor's JSON shape.
    pub async fn get_workflow(&self, workflow_id: &str) -> Result<Value, ClientError> {
        let json = self
            .call(|ch| {
                let req = pb::GetWorkflowRequest { workflow_id: workflow_id.to_string(), consistency: 0 };
                async move { WorkflowServiceClient::new(ch).get(req).await }
            })
            .await?
            .json;
        serde_json::from_str(&json).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Workflows matching the filters.
    pub async fn list_workflows(&self, req: pb::ListWorkflowsRequest) -> Result<Vec<pb::WorkflowSummary>, ClientError> {
        self.call(|ch| {
            let req = req.clone();
            async move { WorkflowServiceClient::new(ch).list(req).await }
        })
        .await
        .map(|r| r.workflows)
    }

    /// Terminate, pause, resume, retry or restart.
    pub async fn operate(&self, op: Operation, req: pb::WorkflowOperation) -> Result<(), ClientError> {
        self.call(|ch| {
            let req = req.clone();
            async move {
                let mut c = WorkflowServiceClient::new(ch);
                match op {
                    Operation::Terminate => c.terminate(req).await,
                    Operation::Pause => c.pause(req).await,
                    Operation::Resume => c.resume(req).await,
                    Operation::Retry => c.retry(req).await,
                    Operation::Restart => c.restart(req).await,
                }
            }
        })
        .await
        .map(|_| ())
    }

    /// Registers task definitions (JSON documents).
    pub async fn put_task_defs(&self, defs: Vec<String>) -> Result<(), ClientError> {
        self.call(|ch| {
            let task_defs = defs.iter().map(|json| pb::TaskDefJson { json: json.clone() }).collect();
            async move { MetadataServiceClient::new(ch).register_task_defs(pb::RegisterTaskDefsRequest { task_defs }).await }
        })
        .await
        .map(|_| ())
    }

    /// Creates or replaces workflow definitions (JSON documents).
    pub async fn put_workflow_defs(&self, defs: Vec<String>) -> Result<(), ClientError> {
        self.call(|ch| {
            let workflow_defs = defs.iter().map(|json| pb::WorkflowDefJson { json: json.clone() }).collect();
            async move {
                MetadataServiceClient::new(ch)
                    .update_workflow_defs(pb::UpdateWorkflowDefsRequest { workflow_defs })
                    .await
            }
        })
        .await
        .map(|_| ())
    }

    /// Makes the leader named in a reply's metadata the current node, when it is one of this client's addresses.
    pub(crate) fn follow_leader(&self, metadata: &tonic::metadata::MetadataMap) {
        let Some(leader) = metadata.get(LEADER_HEADER).and_then(|v| v.to_str().ok()) else { return };
        if let Some(i) = self.addrs.iter().position(|a| a == leader) {
            self.current.store(i, Ordering::Relaxed);
        }
    }

    /// The address calls go to now.
    pub fn current_addr(&self) -> &str {
        &self.addrs[self.current.load(Ordering::Relaxed) % self.addrs.len()]
    }

    /// A task service client on the current node (workers poll through it).
    pub(crate) fn task_channel(&self) -> (usize, TaskServiceClient<Channel>) {
        let i = self.current.load(Ordering::Relaxed) % self.channels.len();
        (i, TaskServiceClient::new(self.channels[i].clone()))
    }

    /// Moves on from node `failed` (if it is still the current one) after a transport error.
    pub(crate) fn next_node(&self, failed: usize) {
        let _ = self.current.compare_exchange(
            failed,
            (failed + 1) % self.channels.len(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

/// The workflow operations that take only an id (and a reason or flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Terminate (with a reason).
    Terminate,
    /// Pause.
    Pause,
    /// Resume.
    Resume,
    /// Retry from the failed tasks.
    Retry,
    /// Restart from the beginning.
    Restart,
}
