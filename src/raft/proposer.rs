//! The proposer gets a client's command committed from whichever node received it.
//!
//! On the leader it proposes through openraft (`client_write`, behind the [group commit](super::group_commit) queue),
//! stamping the command with the leader's clock. On a
//! follower it forwards the command to the leader over the peer protocol. With no leader (an election is under way)
//! or a leader that just died, it waits for the next leader, up to `api.forward_timeout_ms`, so a client never
//! needs to know who leads.
//!
//! A retry is made only when the command certainly was not applied (no leader, the peer refused the connection,
//! the node said it is not the leader). When the outcome is unknown (the leader died after receiving it), the
//! caller is told so, and must retry with the same idempotency key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tonic::transport::Channel;
use tracing::Instrument;

use super::group_commit::{GroupCommit, WriteOutcome};
use super::{network, wire, NodeId, Raft};
use crate::engine::{Command, CommandResponse};
use crate::pb::raft::raft_peer_client::RaftPeerClient;

/// How long to wait for news of a leader before trying again, when the known leader did not answer.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// A command committed and applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Committed {
    /// What applying it answered.
    pub response: CommandResponse,
    /// The log index it was committed at.
    pub log_index: u64,
    /// The leader that committed it.
    pub leader_id: NodeId,
}

/// Why a proposal or a linearizable read did not go through.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum ProposeError {
    /// No leader could be reached in time; nothing was applied.
    #[error("no leader could be reached within {timeout_ms} ms (last known leader: {last_leader:?})")]
    NoLeader {
        /// The wait, ms.
        timeout_ms: u64,
        /// The last leader this node knew of.
        last_leader: Option<NodeId>,
    },
    /// The command reached a leader but its fate is unknown (the leader failed or lost leadership mid-way).
    #[error("outcome unknown: {0}; retry with the same idempotency key")]
    OutcomeUnknown(String),
    /// This node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
    /// Too many writes are waiting for Raft on this node; nothing was applied. Retry later.
    #[error("overloaded: {limit} writes already waiting for the log on this node; retry later")]
    Overloaded {
        /// The configured bound (api.max_in_flight_proposals).
        limit: usize,
    },
}

/// What the leader answers a forwarded command (the payload of the `Forward` peer RPC).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardReply {
    /// Applied.
    Committed(Committed),
    /// The receiver is not the leader (any more); nothing was applied.
    NotLeader {
        /// Its idea of the leader.
        leader: Option<NodeId>,
    },
    /// The receiver could not finish.
    Failed(ProposeError),
}

/// What the leader answers a `ReadIndex` peer RPC.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ReadIndexReply {
    /// Apply up to this index, then read.
    Index(u64),
    /// The receiver is not the leader (any more).
    NotLeader {
        /// Its idea of the leader.
        leader: Option<NodeId>,
    },
}

/// Gets commands committed and reads made linearizable, from any node.
pub struct Proposer {
    raft: Raft,
    node_id: NodeId,
    cluster_id: Arc<str>,
    forward_timeout: Duration,
    peers: Mutex<HashMap<NodeId, (String, RaftPeerClient<Channel>)>>,
    /// Bounds the writes waiting for Raft on this node (backpressure instead of unbounded memory).
    in_flight: Arc<tokio::sync::Semaphore>,
    max_in_flight: usize,
    /// The leader's queue into the log (batches concurrent writes into one entry).
    group_commit: GroupCommit,
}

impl std::fmt::Debug for Proposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposer").field("node_id", &self.node_id).field("cluster_id", &self.cluster_id).finish()
    }
}

/// Outcome of one attempt, internal to the retry loop.
enum Attempt<T> {
    Done(T),
    /// Certainly not applied: try again once a (new) leader is known.
    Retry,
    Fail(ProposeError),
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Proposer {
    /// A proposer for this node.
    pub fn new(raft: Raft, node_id: NodeId, cluster_id: &str, forward_timeout: Duration, max_in_flight: usize) -> Self {
        Proposer {
            group_commit: GroupCommit::start(raft.clone(), now_ms),
            raft,
            node_id,
            cluster_id: cluster_id.into(),
            forward_timeout,
            peers: Mutex::new(HashMap::new()),
            in_flight: Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1))),
            max_in_flight: max_in_flight.max(1),
        }
    }

    fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ProposeError> {
        self.in_flight.clone().try_acquire_owned().map_err(|_| ProposeError::Overloaded { limit: self.max_in_flight })
    }

    /// The leader this node knows of.
    pub fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The cluster this node belongs to (stamped on every peer message).
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Raft's metrics, to wait for a leader change.
    pub fn metrics(&self) -> tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, super::NodeInfo>> {
        self.raft.metrics()
    }

    /// The gRPC address of the leader this node knows of.
    pub fn leader_grpc_addr(&self) -> Option<String> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        metrics.membership_config.membership().get_node(&leader).map(|n| n.grpc_addr.clone())
    }

    /// Commits `command`, waiting through elections up to the forward timeout.
    ///
    /// On a follower, the answer also waits (within the same deadline) until this node has applied the entry, so a
    /// client that wrote through a node can read its write back from that node's local state.
    pub async fn propose(&self, command: Command) -> Result<Committed, ProposeError> {
        let _permit = self.admit()?;
        let started = Instant::now();
        let deadline = started + self.forward_timeout;
        let kind = command.kind();
        let result = self.commit(command).await;
        crate::metrics::metrics().record_proposal(kind, started.elapsed(), result.is_ok());
        let committed = result?;
        if committed.leader_id != self.node_id {
            let wait = self.raft.wait(Some(deadline.saturating_duration_since(Instant::now())));
            if let Err(e) = wait.applied_index_at_least(Some(committed.log_index), "read your write").await {
                tracing::debug!(error = %e, log_index = committed.log_index, "write committed; not yet applied here");
            }
        }
        Ok(committed)
    }

    async fn commit(&self, command: Command) -> Result<Committed, ProposeError> {
        let span = tracing::debug_span!("propose", kind = command.kind());
        self.retry_until_deadline(|leader, deadline| {
            let command = command.clone();
            async move {
                if leader == self.node_id {
                    self.propose_as_leader(command, deadline).await
                } else {
                    self.forward(leader, command, deadline).await
                }
            }
        })
        .instrument(span)
        .await
    }

    /// Waits until this node has applied every write acknowledged before the call (a read index confirmed by the
    /// leader with a quorum), so that a local read that follows is linearizable.
    pub async fn linearizable_barrier(&self) -> Result<(), ProposeError> {
        self.retry_until_deadline(|leader, deadline| async move {
            let index = if leader == self.node_id {
                match self.read_index_as_leader().await {
                    ReadIndexReply::Index(index) => index,
                    ReadIndexReply::NotLeader { .. } => return Attempt::Retry,
                }
            } else {
                match self.ask_read_index(leader, deadline).await {
                    Some(index) => index,
                    None => return Attempt::Retry,
                }
            };
            let wait = self.raft.wait(Some(deadline.saturating_duration_since(Instant::now())));
            match wait.applied_index_at_least(Some(index), "linearizable read").await {
                Ok(_) => Attempt::Done(()),
                Err(openraft::metrics::WaitError::ShuttingDown) => Attempt::Fail(ProposeError::ShuttingDown),
                Err(openraft::metrics::WaitError::Timeout(..)) => Attempt::Retry,
            }
        })
        .await
    }

    /// The leader's side of a forwarded command: propose it here, without forwarding further.
    pub async fn handle_forward(&self, command: Command, deadline: Instant) -> ForwardReply {
        if self.current_leader() != Some(self.node_id) {
            return ForwardReply::NotLeader { leader: self.current_leader() };
        }
        let _permit = match self.admit() {
            Ok(p) => p,
            Err(e) => return ForwardReply::Failed(e),
        };
        match self.propose_as_leader(command, deadline).await {
            Attempt::Done(committed) => ForwardReply::Committed(committed),
            Attempt::Retry => ForwardReply::NotLeader { leader: self.current_leader() },
            Attempt::Fail(e) => ForwardReply::Failed(e),
        }
    }

    /// The leader's side of a read index request.
    pub async fn read_index_as_leader(&self) -> ReadIndexReply {
        match self.raft.get_read_log_id().await {
            Ok((read_log_id, _applied)) => ReadIndexReply::Index(read_log_id.map_or(0, |id| id.index)),
            Err(_) => ReadIndexReply::NotLeader { leader: self.current_leader() },
        }
    }

    async fn retry_until_deadline<T, F, Fut>(&self, mut attempt: F) -> Result<T, ProposeError>
    where
        F: FnMut(NodeId, Instant) -> Fut,
        Fut: std::future::Future<Output = Attempt<T>>,
    {
        let deadline = Instant::now() + self.forward_timeout;
        let mut metrics = self.raft.metrics();
        loop {
            let leader = metrics.borrow_and_update().current_leader;
            if let Some(leader) = leader {
                match attempt(leader, deadline).await {
                    Attempt::Done(value) => return Ok(value),
                    Attempt::Fail(e) => return Err(e),
                    Attempt::Retry => {}
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ProposeError::NoLeader {
                    timeout_ms: u64::try_from(self.forward_timeout.as_millis()).unwrap_or(u64::MAX),
                    last_leader: leader,
                });
            }
            // Wake on any metrics change (a new leader, a new term), or after a short pause when the known leader
            // did not answer and nothing has changed yet.
            let pause = if leader.is_some() { RETRY_PAUSE } else { deadline - now };
            if let Ok(Err(_)) = tokio::time::timeout(pause.min(deadline - now), metrics.changed()).await {
                return Err(ProposeError::ShuttingDown);
            }
        }
    }

    async fn propose_as_leader(&self, command: Command, deadline: Instant) -> Attempt<Committed> {
        match tokio::time::timeout_at(deadline, self.group_commit.write(command)).await {
            Ok(WriteOutcome::Applied(response, log_index)) => {
                Attempt::Done(Committed { response, log_index, leader_id: self.node_id })
            }
            Ok(WriteOutcome::NotLeader) => Attempt::Retry,
            Ok(WriteOutcome::Unknown(why)) => Attempt::Fail(ProposeError::OutcomeUnknown(why)),
            Ok(WriteOutcome::Fatal) => Attempt::Fail(ProposeError::ShuttingDown),
            Err(_) => Attempt::Fail(ProposeError::OutcomeUnknown(
                "the leader did not commit it within the forward timeout".into(),
            )),
        }
    }

    /// A client for peer `id`'s internal service (cached per address).
    pub(crate) fn peer(&self, id: NodeId) -> Option<RaftPeerClient<Channel>> {
        let addr = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            metrics.membership_config.membership().get_node(&id)?.grpc_addr.clone()
        };
        let mut peers = self.peers.lock().expect("peer map lock is never poisoned");
        if let Some((known, client)) = peers.get(&id) {
            if *known == addr {
                return Some(client.clone());
            }
        }
        let client = RaftPeerClient::new(network::channel(&addr).ok()?);
        peers.insert(id, (addr, client.clone()));
        Some(client)
    }

    async fn forward(&self, leader: NodeId, command: Command, deadline: Instant) -> Attempt<Committed> {
        let Some(mut client) = self.peer(leader) else { return Attempt::Retry };
        let mut request = match wire::pack(&self.cluster_id, &command) {
            Ok(message) => tonic::Request::new(message),
            Err(status) => return Attempt::Fail(ProposeError::OutcomeUnknown(status.message().to_string())),
        };
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        match client.forward(request).await {
            Ok(reply) => match wire::unpack::<ForwardReply>(&self.cluster_id, reply.get_ref()) {
                Ok(ForwardReply::Committed(committed)) => Attempt::Done(committed),
                Ok(ForwardReply::NotLeader { .. }) => Attempt::Retry,
                Ok(ForwardReply::Failed(e)) => Attempt::Fail(e),
                Err(status) => Attempt::Fail(ProposeError::OutcomeUnknown(status.message().to_string())),
            },
            Err(status) if never_sent(&status) => Attempt::Retry,
            Err(status) => Attempt::Fail(ProposeError::OutcomeUnknown(format!(
                "forwarding to leader {leader} failed: {}",
                status.message()
            ))),
        }
    }

    async fn ask_read_index(&self, leader: NodeId, deadline: Instant) -> Option<u64> {
        let mut client = self.peer(leader)?;
        let mut request = tonic::Request::new(wire::pack(&self.cluster_id, &()).ok()?);
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let reply = client.read_index(request).await.ok()?;
        match wire::unpack::<ReadIndexReply>(&self.cluster_id, reply.get_ref()).ok()? {
            ReadIndexReply::Index(index) => Some(index),
            ReadIndexReply::NotLeader { .. } => None,
        }
    }
}

/// True when the request certainly never reached the peer (the connection could not be made).
pub(crate) fn never_sent(status: &tonic::Status) -> bool {
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let text = format!("{status:?}").to_lowercase();
    text.contains("connect") && !text.contains("reset") && !text.contains("broken pipe")
}
