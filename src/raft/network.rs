//! openraft's network, client side: one lazily connected gRPC channel per peer, the mapping of transport
//! failures onto openraft's error kinds (unreachable peers are backed off by openraft; remote Raft errors are
//! passed through), and a byte bound on each AppendEntries request.
//!
//! The bound matters because openraft 0.9 gives every AppendEntries request `heartbeat_interval` (50 ms here) to
//! be answered, whatever it carries, and bounds a request only by its number of entries (`max_payload_entries`).
//! A follower that restarts a few thousand entries behind a loaded leader was sent 512 entries of up to 1 MiB at
//! once; the request could not be transferred, decoded and written within 50 ms, so every attempt timed out, the
//! follower never caught up and, hearing no leader, stood for election in ever higher terms whose refusals the
//! leader never saw in time (seen with `baton bench failover`: a restarted node stuck as a candidate in term 47
//! while the others stayed in term 8). Sending a prefix of at most [`MAX_APPEND_BYTES`] and answering openraft
//! `PartialSuccess` up to it keeps every request small enough to be answered in time; openraft sends the rest
//! next.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::{wire, LogId, NodeId, NodeInfo, TypeConfig};
use crate::pb::raft::raft_peer_client::RaftPeerClient;
use crate::pb::raft::RaftMessage;
use crate::storage::codec;

/// Most bytes of log entries one AppendEntries request carries (a single larger entry still goes, alone).
pub const MAX_APPEND_BYTES: usize = 256 << 10;

/// How long a connection attempt to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Opens a lazily connected gRPC channel to `grpc_addr` (`host:port`).
pub fn channel(grpc_addr: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{grpc_addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        // A peer that vanished without closing the connection (a partition, a paused process) is noticed within
        // about 6 s even by a call that has no deadline of its own.
        .http2_keep_alive_interval(Duration::from_secs(3))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// Creates a [`PeerClient`] for each peer openraft replicates to.
#[derive(Debug, Clone)]
pub struct Network {
    cluster_id: Arc<str>,
}

impl Network {
    /// A network for a member of `cluster_id`.
    pub fn new(cluster_id: &str) -> Self {
        Network { cluster_id: cluster_id.into() }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        let client = channel(&node.grpc_addr).map(RaftPeerClient::new).map_err(|e| e.to_string());
        PeerClient { cluster_id: self.cluster_id.clone(), target, node: node.clone(), client }
    }
}

/// openraft's connection to one peer.
#[derive(Debug)]
pub struct PeerClient {
    cluster_id: Arc<str>,
    target: NodeId,
    node: NodeInfo,
    /// Err when the peer's address does not parse; every call then fails as unreachable.
    client: Result<RaftPeerClient<Channel>, String>,
}

/// A transport failure, as an error type openraft can wrap.
#[derive(Debug, thiserror::Error)]
#[error("peer {target} ({addr}): {message}")]
struct TransportError {
    target: NodeId,
    addr: String,
    message: String,
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Req,
        option: &RPCOption,
        method: Method,
    ) -> Result<Resp, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let transport =
            |message: String| TransportError { target: self.target, addr: self.node.grpc_addr.clone(), message };
        let client = match &mut self.client {
            Ok(client) => client,
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&transport(e.clone())))),
        };
        let message = wire::pack(&self.cluster_id, &rpc)
            .map_err(|s| RPCError::Network(NetworkError::new(&transport(s.message().to_string()))))?;
        let mut request = tonic::Request::new(message);
        request.set_timeout(option.hard_ttl());
        let reply = match method {
            Method::AppendEntries => client.append_entries(request).await,
            Method::Vote => client.vote(request).await,
            Method::InstallSnapshot => client.install_snapshot(request).await,
        };
        let reply: RaftMessage = match reply {
            Ok(reply) => reply.into_inner(),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&transport(status.to_string()))))
            }
            Err(status) => return Err(RPCError::Network(NetworkError::new(&transport(status.to_string())))),
        };
        let result: Result<Resp, RaftError<NodeId, E>> = wire::unpack(&self.cluster_id, &reply)
            .map_err(|s| RPCError::Network(NetworkError::new(&transport(s.message().to_string()))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }
}

#[derive(Debug, Clone, Copy)]
enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl RaftNetwork<TypeConfig> for PeerClient {
    /// Sends at most [`MAX_APPEND_BYTES`] of the entries (see the module documentation); when some were left
    /// for the next request, a success is reported to openraft as a partial one, up to the last entry sent.
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let sent_up_to = keep_entries_within(&mut rpc.entries, MAX_APPEND_BYTES);
        let response = self.call(rpc, &option, Method::AppendEntries).await?;
        Ok(match (response, sent_up_to) {
            (AppendEntriesResponse::Success, Some(last)) => AppendEntriesResponse::PartialSuccess(Some(last)),
            (response, _) => response,
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(rpc, &option, Method::InstallSnapshot).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.call(rpc, &option, Method::Vote).await
    }

    /// Retry pacing towards an unreachable peer. openraft's default is a constant 500 ms, which leaves a restarted
    /// node without new entries for up to half a second: if the leader dies in that window, the restarted node
    /// stands for election with a stale log and loses a round (measured: failover 750 ms instead of 370 ms).
    /// Reconnecting to a dead peer is cheap, so retry after 50 ms, 100 ms, then every 200 ms.
    fn backoff(&self) -> Backoff {
        let ms = [50, 100].into_iter().chain(std::iter::repeat(200));
        Backoff::new(ms.map(Duration::from_millis))
    }
}

/// Keeps the longest prefix of `entries` that encodes within `max_bytes`, and at least the first entry. Answers the
/// log id of the last entry kept when any were dropped.
fn keep_entries_within(entries: &mut Vec<crate::raft::Entry>, max_bytes: usize) -> Option<LogId> {
    if entries.len() < 2 {
        return None;
    }
    let mut total = 0usize;
    let mut keep = 0;
    for entry in entries.iter() {
        // An entry that does not encode fails the whole request when it is packed; count it as empty here.
        total += codec::encoded_len(entry).unwrap_or(0);
        if keep > 0 && total > max_bytes {
            break;
        }
        keep += 1;
    }
    if keep == entries.len() {
        return None;
    }
    entries.truncate(keep);
    entries.last().map(|e| e.log_id)
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::engine::{Command, Proposal};

    fn entries(sizes: &[usize]) -> Vec<crate::raft::Entry> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, size)| crate::raft::Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), i as u64 + 1),
                payload: EntryPayload::Normal(Proposal {
                    at_ms: 0,
                    command: Command::BenchWrite { key: format!("k{i}"), value: vec![7; *size] },
                }),
            })
            .collect()
    }

    #[test]
    fn a_request_keeps_the_entries_that_fit_and_names_the_last_one_sent() {
        let size = |e: &crate::raft::Entry| codec::encoded_len(e).expect("encodes");
        let mut all = entries(&[1000, 1000, 1000, 1000]);
        let one = size(&all[0]);

        // Everything fits: nothing dropped, a success stays a success.
        assert_eq!(keep_entries_within(&mut all.clone(), 4 * one), None);

        // Room for two and a half: two go, and the second one's id is what the follower will have matched.
        let budget = 2 * one + one / 2;
        assert_eq!(keep_entries_within(&mut all, budget), Some(LogId::new(CommittedLeaderId::new(1, 1), 2)));
        assert_eq!(all.len(), 2);

        // A first entry larger than the whole budget still goes, alone.
        let mut big_first = entries(&[10_000, 10]);
        assert_eq!(keep_entries_within(&mut big_first, 100).map(|id| id.index), Some(1));
        assert_eq!(big_first.len(), 1);

        // A single entry or none is never cut.
        assert_eq!(keep_entries_within(&mut entries(&[10_000]), 100), None);
        assert_eq!(keep_entries_within(&mut Vec::new(), 100), None);
    }
}
