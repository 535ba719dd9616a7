//! openraft's network, server side: the `RaftPeer` gRPC service that hands peers' Raft messages to the local Raft
//! and serves forwarded writes, read-index requests and polls.
//!
//! What a peer sends is checked before openraft sees it ([`wire`] bounds the decoding; [`SnapshotReceipt`] the
//! snapshot chunks), so that a malformed message is an `INVALID_ARGUMENT` to its sender, never a panic, an abort or
//! a huge allocation here.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::proposer::Proposer;
use super::{wire, NodeId, Raft, TypeConfig};
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
    /// The snapshot being received, as far as it has arrived; held across each chunk's installation, so chunks
    /// are checked and written one at a time.
    receiving: Arc<tokio::sync::Mutex<Option<SnapshotReceipt>>>,
}

/// How much of a snapshot has arrived: openraft's own record of it (`Streaming`) is private, so the peer service
/// keeps the same account. openraft writes a chunk at its offset into an in-memory cursor, padding with zeros up to
/// it: a 16-byte chunk at offset 2^62 aborted the process (the allocation of 4 EiB failed), one near 2^64 panicked
/// (capacity overflow), one gigabytes past the end allocated and zeroed gigabytes nobody sent. So a chunk must start
/// within what has arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SnapshotReceipt {
    /// The snapshot's id.
    snapshot_id: String,
    /// Bytes received so far: the largest offset a next chunk may start at.
    end: u64,
}

/// What [`SnapshotReceipt`] needs to know of an `InstallSnapshotRequest` (all but its data).
#[derive(Debug, Clone)]
struct Chunk {
    snapshot_id: String,
    vote: openraft::Vote<NodeId>,
    offset: u64,
    len: usize,
    done: bool,
}

impl Chunk {
    fn of(request: &InstallSnapshotRequest<TypeConfig>) -> Chunk {
        Chunk {
            snapshot_id: request.meta.snapshot_id.clone(),
            vote: request.vote,
            offset: request.offset,
            len: request.data.len(),
            done: request.done,
        }
    }
}

impl SnapshotReceipt {
    /// Refuses a chunk that would leave a gap after what has arrived of its snapshot (`receiving`; a snapshot not
    /// being received starts at offset 0), or end beyond 2^64 bytes.
    fn check(receiving: Option<&SnapshotReceipt>, chunk: &Chunk) -> Result<(), String> {
        let end = match receiving {
            Some(r) if r.snapshot_id == chunk.snapshot_id => r.end,
            _ => 0,
        };
        if chunk.offset > end {
            return Err(format!(
                "snapshot chunk at offset {} leaves a gap: {end} bytes of snapshot '{}' have arrived",
                chunk.offset, chunk.snapshot_id
            ));
        }
        if chunk.offset.checked_add(chunk.len as u64).is_none() {
            return Err(format!(
                "snapshot chunk of {} bytes at offset {} ends beyond 2^64 bytes",
                chunk.len, chunk.offset
            ));
        }
        Ok(())
    }

    /// What has arrived once openraft has handled `chunk` (passed by [`SnapshotReceipt::check`]) with `result`, as
    /// openraft's own account changes: a last chunk ends the snapshot (installed or not); a chunk is written only
    /// when its sender's vote is not behind this node's (else openraft answers its own vote and writes nothing);
    /// a refused chunk changes nothing.
    fn after(
        receiving: Option<SnapshotReceipt>,
        chunk: &Chunk,
        result: &Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ) -> Option<SnapshotReceipt> {
        if chunk.done {
            return None;
        }
        match result {
            Ok(response) if chunk.vote >= response.vote => {
                let before = receiving.filter(|r| r.snapshot_id == chunk.snapshot_id).map_or(0, |r| r.end);
                let end = before.max(chunk.offset.saturating_add(chunk.len as u64));
                Some(SnapshotReceipt { snapshot_id: chunk.snapshot_id.clone(), end })
            }
            _ => receiving,
        }
    }
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
            receiving: Arc::new(tokio::sync::Mutex::new(None)),
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

/// The deadline a caller put on its request (tonic passes `grpc-timeout` through as metadata). A malformed value
/// is refused before it gets here (`api::grpc_metrics`); were it not, the default applies.
fn request_deadline<T>(request: &Request<T>) -> Instant {
    let budget = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| wire::parse_grpc_timeout(v).ok())
        .unwrap_or(DEFAULT_FORWARD_BUDGET);
    let now = Instant::now();
    // 99999999H is about 11,000 years: an Instant holds it, but an overflow here would be a panic per call.
    now.checked_add(budget).unwrap_or(now + DEFAULT_FORWARD_BUDGET)
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
        let rpc: InstallSnapshotRequest<TypeConfig> = wire::unpack(&self.cluster_id, request.get_ref())?;
        let chunk = Chunk::of(&rpc);
        let mut receiving = self.receiving.lock().await;
        SnapshotReceipt::check(receiving.as_ref(), &chunk).map_err(Status::invalid_argument)?;
        let result = self.raft.install_snapshot(rpc).await;
        *receiving = SnapshotReceipt::after(receiving.take(), &chunk, &result);
        Ok(Response::new(wire::pack(&self.cluster_id, &result)?))
    }

    async fn forward(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let deadline = request_deadline(&request);
        let command: Command = wire::unpack_at_most(&self.cluster_id, request.get_ref(), wire::MAX_FORWARDED_DEPTH)?;
        let reply = self.proposer.handle_forward(command, deadline).await;
        Ok(Response::new(wire::pack(&self.cluster_id, &reply)?))
    }

    async fn read_index(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        wire::unpack::<()>(&self.cluster_id, request.get_ref())?;
        let reply = self.proposer.read_index_as_leader().await;
        Ok(Response::new(wire::pack(&self.cluster_id, &reply)?))
    }

    async fn poll(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let args: PollArgs = wire::unpack_at_most(&self.cluster_id, request.get_ref(), wire::MAX_FORWARDED_DEPTH)?;
        let reply = self.dispatcher.serve_forwarded(args).await;
        Ok(Response::new(wire::pack(&self.cluster_id, &reply)?))
    }
}

#[cfg(test)]
mod tests {
    use openraft::Vote;

    use super::*;

    fn chunk(snapshot_id: &str, offset: u64, len: usize, done: bool) -> Chunk {
        Chunk { snapshot_id: snapshot_id.into(), vote: Vote::new_committed(3, 1), offset, len, done }
    }

    fn written() -> Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        Ok(InstallSnapshotResponse { vote: Vote::new_committed(3, 1) })
    }

    #[test]
    fn snapshot_chunks_must_start_within_what_has_arrived() {
        let none = None;
        assert!(SnapshotReceipt::check(none, &chunk("s", 0, 10, false)).is_ok());
        // A new snapshot does not start in the middle, let alone near 2^64.
        for offset in [1, 1 << 40, u64::MAX - 10] {
            let err = SnapshotReceipt::check(none, &chunk("s", offset, 10, false)).expect_err("a gap");
            assert!(err.contains("leaves a gap: 0 bytes of snapshot 's' have arrived"), "{err}");
        }
        let receiving = SnapshotReceipt::after(None, &chunk("s", 0, 10, false), &written());
        assert_eq!(receiving, Some(SnapshotReceipt { snapshot_id: "s".into(), end: 10 }));
        // The next chunk, a resent one, and one overlapping the end are fine; one past the end is not.
        for offset in [10, 0, 5] {
            assert!(SnapshotReceipt::check(receiving.as_ref(), &chunk("s", offset, 10, false)).is_ok(), "{offset}");
        }
        assert!(SnapshotReceipt::check(receiving.as_ref(), &chunk("s", 11, 10, false)).is_err());
        // Another snapshot starts over, at 0.
        assert!(SnapshotReceipt::check(receiving.as_ref(), &chunk("t", 10, 10, false)).is_err());
        let at_end = SnapshotReceipt { snapshot_id: "s".into(), end: u64::MAX - 1 };
        let err = SnapshotReceipt::check(Some(&at_end), &chunk("s", u64::MAX - 1, 10, false)).expect_err("overflows");
        assert!(err.contains("beyond 2^64"), "{err}");
    }

    #[test]
    fn the_receipt_follows_what_openraft_wrote() {
        let receiving = SnapshotReceipt::after(None, &chunk("s", 0, 10, false), &written());
        let receiving = SnapshotReceipt::after(receiving, &chunk("s", 10, 10, false), &written());
        assert_eq!(receiving.as_ref().map(|r| r.end), Some(20));
        // Resending the first chunk does not move the end back.
        let receiving = SnapshotReceipt::after(receiving, &chunk("s", 0, 10, false), &written());
        assert_eq!(receiving.as_ref().map(|r| r.end), Some(20));
        // A sender whose vote is behind this node's: openraft wrote nothing.
        let behind = Ok(InstallSnapshotResponse { vote: Vote::new_committed(4, 2) });
        let unchanged = SnapshotReceipt::after(receiving.clone(), &chunk("s", 20, 10, false), &behind);
        assert_eq!(unchanged, receiving);
        let refused =
            Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(openraft::error::SnapshotMismatch {
                expect: openraft::SnapshotSegmentId { id: "s".into(), offset: 0 },
                got: openraft::SnapshotSegmentId { id: "s".into(), offset: 20 },
            })));
        assert_eq!(SnapshotReceipt::after(receiving.clone(), &chunk("s", 20, 10, false), &refused), receiving);
        // The last chunk ends it, whatever came of it.
        assert_eq!(SnapshotReceipt::after(receiving.clone(), &chunk("s", 20, 10, true), &written()), None);
        assert_eq!(SnapshotReceipt::after(receiving, &chunk("s", 20, 10, true), &refused), None);
    }
}
