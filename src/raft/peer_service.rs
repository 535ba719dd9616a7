//! openraft's network, server side: the `RaftPeer` gRPC service that hands peers' Raft messages to the local Raft
//! and serves forwarded writes, read-index requests and polls.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::proposer::Proposer;
use super::{wire, Raft};
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
}

impl PeerService {
    /// The service for this node's Raft.
    pub fn new(raft: Raft, proposer: Arc<Proposer>, dispatcher: Arc<Dispatcher>, cluster_id: &str) -> Self {
        PeerService { raft, proposer, dispatcher, cluster_id: cluster_id.into() }
    }
}

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
        let result = self.raft.append_entries(rpc).await;
        Ok(Response::new(wire::pack(&self.cluster_id, &result)?))
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = wire::unpack(&self.cluster_id, request.get_ref())?;
        let result = self.raft.vote(rpc).await;
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
