//! Malformed input from the network, sent to real nodes: a `grpc-timeout` of 20 digits, an LZ4 payload that declares
//! 1 GiB, a message nested 100,000 deep, a payload of another type than its method's, snapshot chunks at huge offsets
//! or after a gap, oversized messages and JSON bodies. Each must come back as a clear error (`INVALID_ARGUMENT`, or
//! HTTP 400, naming what was wrong), never a panic, an abort or a huge allocation: afterwards every node is still
//! running, has logged no panic, and the cluster still commits writes and converges.

mod support;

use anyhow::{ensure, Context, Result};
use baton::engine::Command;
use baton::pb::raft::raft_peer_client::RaftPeerClient;
use baton::pb::raft::RaftMessage;
use baton::pb::v1::cluster_service_client::ClusterServiceClient;
use baton::pb::v1::metadata_service_client::MetadataServiceClient;
use baton::pb::v1::{RegisterTaskDefsRequest, StatusRequest, TaskDefJson};
use baton::raft::proposer::ForwardReply;
use baton::raft::{wire, NodeInfo, TypeConfig};
use baton::storage::codec;
use openraft::raft::{InstallSnapshotRequest, VoteRequest};
use openraft::{SnapshotMeta, StoredMembership, Vote};
use support::{post_raw, Cluster, Node};
use tonic::transport::Channel;
use tonic::{Code, Status};

fn peer(node: &Node) -> Result<RaftPeerClient<Channel>> {
    Ok(RaftPeerClient::new(baton::raft::network::channel(&node.grpc_addr)?)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

/// A peer message of this cluster whose payload is `payload`, as given.
fn raw(cluster: &Cluster, payload: Vec<u8>) -> RaftMessage {
    RaftMessage { cluster_id: cluster.opts.cluster_id.clone(), format: wire::FORMAT_MSGPACK_V1, payload }
}

/// A request carrying `message` with `grpc-timeout: timeout`, exactly as written.
fn with_timeout<T>(message: T, timeout: &str) -> Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("grpc-timeout", timeout.parse()?);
    Ok(request)
}

/// Checks that `result` is an `INVALID_ARGUMENT` whose message contains `needle`.
fn invalid<T: std::fmt::Debug>(what: &str, result: Result<T, Status>, needle: &str) -> Result<()> {
    match result {
        Err(status) if status.code() == Code::InvalidArgument && status.message().contains(needle) => Ok(()),
        other => anyhow::bail!("{what}: expected INVALID_ARGUMENT containing {needle:?}, got {other:?}"),
    }
}

/// A command nested `levels` batches deep, encoded as a peer payload, built from bytes: a value that deep could
/// not be built and dropped without recursing as deep.
fn nested_batch_payload(levels: usize) -> Result<Vec<u8>> {
    let empty = rmp_serde::to_vec_named(&Command::Batch(Vec::new()))?;
    let (variant, _) = empty.split_at(empty.len() - 1);
    let mut payload = vec![codec::FORMAT_V1];
    for _ in 1..levels {
        payload.extend_from_slice(variant);
        payload.push(0x91); // an array of one command
    }
    payload.extend_from_slice(&empty);
    Ok(payload)
}

/// A snapshot chunk of `data` at `offset`, under `vote`.
fn chunk(vote: Vote<u64>, snapshot_id: &str, offset: u64, data: Vec<u8>) -> InstallSnapshotRequest<TypeConfig> {
    InstallSnapshotRequest {
        vote,
        meta: SnapshotMeta::<u64, NodeInfo> {
            last_log_id: None,
            last_membership: StoredMembership::default(),
            snapshot_id: snapshot_id.to_string(),
        },
        offset,
        data,
        done: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_peer_and_public_input_is_refused_and_the_cluster_carries_on() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader_id = cluster.leader().await?;
    let leader = cluster.node(leader_id);
    let follower = cluster.live_except(leader_id)[0];
    let cid = cluster.opts.cluster_id.clone();

    for node in [leader, follower] {
        let mut peer = peer(node)?;
        let mut public = ClusterServiceClient::new(baton::raft::network::channel(&node.grpc_addr)?);

        // grpc-timeout beyond gRPC's 8 digits: 20 digits, u64::MAX seconds (which overflowed the peer service's
        // deadline: a panic per call), 19 digits. Refused on the peer service and the public ones alike.
        let bench = wire::pack(&cid, &Command::BenchWrite { key: "wire-input".into(), value: vec![1] })?;
        for timeout in ["99999999999999999999S", "18446744073709551615S", "9999999999999999999S", "5x"] {
            invalid(timeout, peer.forward(with_timeout(bench.clone(), timeout)?).await, "grpc-timeout")?;
            let status = public.status(with_timeout(StatusRequest { verify: false }, timeout)?).await;
            invalid(timeout, status, "grpc-timeout")?;
        }
        // The longest timeout gRPC allows (about 3 years) is an ordinary deadline.
        public.status(with_timeout(StatusRequest { verify: false }, "99999999S")?).await?;
        let reply = peer.forward(with_timeout(bench.clone(), "99999999H")?).await?.into_inner();
        let reply: ForwardReply = wire::unpack(&cid, &reply)?;
        if node.id == leader_id {
            ensure!(matches!(reply, ForwardReply::Committed(_)), "forward to the leader: {reply:?}");
        }

        // An LZ4 payload declaring 1 GiB in six bytes: peers never compress, so it is refused before anything is
        // decompressed or allocated.
        let lz4 = raw(&cluster, vec![codec::FORMAT_V1_LZ4, 0, 0, 0, 0x40, 0]);
        invalid("lz4", peer.append_entries(lz4).await, "format version 2 is not accepted here")?;

        // Nested 100,000 deep (rmp-serde's own limit is 1024 levels, and ~1000 levels of batches overflowed a
        // worker's stack: an abort), and 1,000 deep; as Raft traffic and as a forwarded command.
        for levels in [100_000, 1_000] {
            let deep = raw(&cluster, nested_batch_payload(levels)?);
            invalid("deep append", peer.append_entries(deep.clone()).await, "nested deeper than 256 levels")?;
            invalid("deep forward", peer.forward(deep).await, "nested deeper than 192 levels")?;
        }

        // A payload of another type than the method's, and bytes that are no MessagePack at all.
        let vote = wire::pack(&cid, &VoteRequest::<u64>::new(Vote::new(1, 1), None))?;
        let result = peer.append_entries(vote.clone()).await;
        invalid("vote as append", result, "does not decode as AppendEntriesRequest<TypeConfig>")?;
        invalid("vote as poll", peer.poll(vote.clone()).await, "does not decode as PollArgs")?;
        invalid("garbage", peer.vote(raw(&cluster, vec![codec::FORMAT_V1, 0xc1, 0xff])).await, "does not decode")?;
        invalid("empty", peer.install_snapshot(raw(&cluster, Vec::new())).await, "empty record")?;

        // Snapshot chunks: a new snapshot starting near 2^64; then, after a first chunk this node accepted (under
        // the vote it holds), chunks at 2^62 and u64::MAX - 10 (openraft padded an in-memory buffer up to the
        // offset: an allocation of exabytes, an abort) and one leaving a one-byte gap.
        let status = node.status().await?;
        let vote = Vote::new_committed(status.term, status.leader_id.context("a leader is known")?);
        let id = format!("wire-input-{}", node.id);
        let far = wire::pack(&cid, &chunk(vote, &id, u64::MAX - 10, vec![7; 16]))?;
        invalid("far chunk", peer.install_snapshot(far).await, "leaves a gap: 0 bytes")?;
        let first = wire::pack(&cid, &chunk(vote, &id, 0, vec![7; 100]))?;
        peer.install_snapshot(first).await.context("the first chunk")?;
        for offset in [1 << 62, u64::MAX - 10, 101] {
            let chunk = wire::pack(&cid, &chunk(vote, &id, offset, vec![7; 16]))?;
            invalid(&format!("chunk at {offset}"), peer.install_snapshot(chunk).await, "leaves a gap: 100 bytes")?;
        }
        // The next chunk in order is still welcome.
        peer.install_snapshot(wire::pack(&cid, &chunk(vote, &id, 100, vec![7; 16]))?).await.context("in order")?;

        // Another cluster's message.
        let foreign = RaftMessage { cluster_id: "another".into(), ..bench.clone() };
        ensure!(peer.forward(foreign).await.expect_err("refused").code() == Code::PermissionDenied);

        // Over the size bounds: a peer message over 64 MiB, a public call over api.max_payload_bytes.
        let huge = raw(&cluster, vec![0; (64 << 20) + 1]);
        let err = peer.append_entries(huge).await.expect_err("too large");
        ensure!(err.code() == Code::OutOfRange && err.message().contains("too large"), "{err:?}");
        let mut metadata = MetadataServiceClient::new(baton::raft::network::channel(&node.grpc_addr)?);
        let big = RegisterTaskDefsRequest { task_defs: vec![TaskDefJson { json: " ".repeat(2 << 20) }] };
        let err = metadata.register_task_defs(big).await.expect_err("too large");
        ensure!(err.code() == Code::OutOfRange && err.message().contains("too large"), "{err:?}");

        // HTTP bodies: JSON nested 100,000 deep, a document of the wrong shape, one over the size bound.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let deep_json = format!(r#"[{{"name": "deep", "inputTemplate": {{"a": {deep}}}}}]"#);
        let reply = post_raw(node, "/api/metadata/taskdefs", &deep_json).await?;
        ensure!(reply.status == 400 && reply.body.contains("recursion limit"), "deep JSON: {reply:?}");
        let reply = post_raw(node, "/api/metadata/taskdefs", r#"{"name": "not a list"}"#).await?;
        ensure!(reply.status == 400 && reply.body.contains("expected a sequence"), "wrong shape: {reply:?}");
        let reply = post_raw(node, "/api/metadata/taskdefs", &" ".repeat(2 << 20)).await?;
        ensure!(reply.status == 413, "too large: {reply:?}");
    }

    // Every node is still the process it was, logged no panic, and the cluster still commits and converges.
    for node in cluster.nodes() {
        node.check_running()?;
        let log = node.current_run_log();
        ensure!(!log.contains("panicked"), "node {} logged a panic:\n{}", node.id, node.log_tail(40));
    }
    for node in [follower, leader] {
        let name = format!("after-wire-input-{}", node.id);
        support::register_task_def(node, &name).await?;
    }
    cluster.wait_converged().await?;
    let names: Vec<String> = [leader, follower].iter().map(|n| format!("after-wire-input-{}", n.id)).collect();
    for node in cluster.nodes() {
        support::assert_task_defs_present(node, &names).await?;
    }
    cluster.pass();
    Ok(())
}

#[test]
fn the_deep_payload_helper_builds_what_it_says() -> Result<()> {
    let command: Command = codec::decode(&nested_batch_payload(3)?)?;
    ensure!(command == Command::Batch(vec![Command::Batch(vec![Command::Batch(Vec::new())])]), "{command:?}");
    Ok(())
}
