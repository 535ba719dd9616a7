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
//! while the others stayed in term 8). openraft takes a request's entries only from the log reader's
//! `limited_get_log_entries`, which may answer a prefix: the log store's answers stop at [`MAX_APPEND_BYTES`]
//! (`storage::log_store`), so every request is small enough to be answered in time and openraft sends the rest
//! next. (This client used to cut each request to the same bound itself, encoding every entry once more per
//! request to measure it; with the reader bounded, it never cut.)

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

use super::{wire, NodeId, NodeInfo, TypeConfig};
use crate::pb::raft::raft_peer_client::RaftPeerClient;
use crate::pb::raft::RaftMessage;

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
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.call(rpc, &option, Method::AppendEntries).await
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
