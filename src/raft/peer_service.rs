//! openraft's network, server side: the `RaftPeer` gRPC service that hands peers' Raft messages to the local Raft
//! and serves forwarded writes, read-index requests and polls.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::RaftError;
use openraft::raft::{VoteRequest, VoteResponse};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::proposer::Proposer;
use super::{wire, NodeId, Raft};
use crate::engine::Command;
use crate::pb::raft::raft_peer_server::RaftPeer;
use crate::pb::raft::RaftMessage;
use crate::runtime::dispatch::{Dispatcher, PollArgs};

/// How long a forwarded write may take when the caller sent no deadline.
const DEFAULT_FORWARD_BUDGET: Duration = Duration::from_secs(5);

/// The peer service of one node.
#[derive(Clone)]
pub struct PeerService {
    raft: Raft,
    proposer: Arc<Proposer>,
    dispatcher: Arc<Dispatcher>,
    cluster_id: Arc<str>,
    /// When this node last received an AppendEntries (a heartbeat or entries from a leader).
    last_heard: Arc<std::sync::Mutex<Instant>>,
    /// Silence from the leader after which a stale candidate's vote request makes this node stand at once.
    leader_silent_after: Duration,
}

impl PeerService {
    /// The service for this node's Raft. `leader_silent_after` is the election timeout's minimum.
    pub fn new(
        raft: Raft,
        proposer: Arc<Proposer>,
        dispatcher: Arc<Dispatcher>,
        cluster_id: &str,
        leader_silent_after: Duration,
    ) -> Self {
        PeerService {
            raft,
            proposer,
            dispatcher,
            cluster_id: cluster_id.into(),
            last_heard: Arc::new(std::sync::Mutex::new(Instant::now())),
            leader_silent_after,
        }
    }

    /// The quick stand (docs/adr/0005-election-timing.md): openraft 0.9 has no pre-vote, so after a leader dies a
    /// survivor whose log is behind may stand first. It votes for itself, so the survivor with the longer log is
    /// refused in that term and, without this, stands again only after a further election timeout (sometimes twice):
    /// the 0.7-1.3 s failovers. When this node refuses such a candidate for its shorter log, with the leader silent
    /// for at least the minimum election timeout, it stands at once, and once more a moment later, which opens the
    /// next term, where the behind candidate grants its vote. Elections are always safe in Raft; the conditions keep
    /// this from disturbing a cluster whose leader is alive.
    fn maybe_stand(&self, request: &VoteRequest<NodeId>, response: &Result<VoteResponse<NodeId>, RaftError<NodeId>>) {
        let Ok(response) = response else { return };
        let candidate_behind = !response.vote_granted && response.last_log_id > request.last_log_id;
        let silent = self.last_heard.lock().map(|t| t.elapsed() >= self.leader_silent_after).unwrap_or(false);
        let (newer_term, leading) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            (request.vote.leader_id.term > m.current_term, m.state == openraft::ServerState::Leader)
        };
        // A leader hears no AppendEntries, so `silent` says nothing there; and a leader does not stand anyway.
        if leading || !(candidate_behind && silent && newer_term) {
            return;
        }
        let raft = self.raft.clone();
        tokio::spawn(async move {
            tracing::info!("a candidate with a shorter log stood while the leader is silent: standing at once");
            for _ in 0..2 {
                let leading = raft.metrics().borrow().state == openraft::ServerState::Leader;
                if leading || raft.trigger().elect().await.is_err() {
                    return;
                }
                // The first attempt meets the candidate's own vote in its term; the second opens the next term.
                tokio::time::sleep(QUICK_STAND_GAP).await;
            }
        });
    }
}

/// Between the two attempts of a quick stand: long enough for the first round's answers on a LAN.
const QUICK_STAND_GAP: Duration = Duration::from_millis(20);

/// The deadline a caller put on its request (tonic passes `grpc-timeout` through as metadata).
fn request_deadline<T>(request: &Request<T>) -> Instant {
    let budget = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .unwrap_or(DEFAULT_FORWARD_BUDGET);
    Instant::now() + budget
}

/// Parses a `grpc-timeout` header value ("250m", "5S", ...).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = wire::unpack(&self.cluster_id, request.get_ref())?;
        if let Ok(mut heard) = self.last_heard.lock() {
            *heard = Instant::now();
        }
        let result = self.raft.append_entries(rpc).await;
        Ok(Response::new(wire::pack(&self.cluster_id, &result)?))
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<NodeId> = wire::unpack(&self.cluster_id, request.get_ref())?;
        let result = self.raft.vote(rpc.clone()).await;
        self.maybe_stand(&rpc, &result);
        Ok(Response::new(wire::pack(&self.cluster_id, &result)?))
    }

    async fn install_snapshot(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = wire::unpack(&self.cluster_id, request.get_ref())?;
        let result = self.raft.install_snapshot(rpc).await;
        Ok(Response::new(wire::pack(&self.cluster_id, &result)?))
    }

    async fn forward(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let deadline = request_deadline(&request);
        let command: Command = wire::unpack(&self.cluster_id, request.get_ref())?;
        let reply = self.proposer.handle_forward(command, deadline).await;
        Ok(Response::new(wire::pack(&self.cluster_id, &reply)?))
    }

    async fn read_index(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        wire::unpack::<()>(&self.cluster_id, request.get_ref())?;
        let reply = self.proposer.read_index_as_leader().await;
        Ok(Response::new(wire::pack(&self.cluster_id, &reply)?))
    }

    async fn poll(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let args: PollArgs = wire::unpack(&self.cluster_id, request.get_ref())?;
        let reply = self.dispatcher.serve_forwarded(args).await;
        Ok(Response::new(wire::pack(&self.cluster_id, &reply)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_parses() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }
}
