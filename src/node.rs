//! The composition root: wires storage, Raft, the proposer and the API into one running node, and owns the
//! start-up and shutdown order. The only module that imports all the others.
//!
//! Start-up: bind both listeners (a port in use fails before anything is written), open the data dir (refusing
//! another cluster's), start Raft, initialise the cluster from the configured members if this data dir is
//! pristine (every node does so with the same membership, which openraft allows), then serve.
//!
//! Shutdown (when `shutdown` is cancelled): stop accepting, let in-flight calls drain for up to
//! `api.drain_timeout_ms`, shut Raft down, flush and close RocksDB.
//!
//! A failed Raft core (openraft stops it on a storage error: a full disk, a failed write or fsync, an unreadable
//! record in apply) is not lived with: the node logs why at ERROR, answers 503 with the reason on `/health` and
//! `/ready` (gRPC health: NOT_SERVING) for [`FAILED_REPORT_MS`], then shuts down as above, draining for at most
//! [`FAILED_DRAIN_MS`] and without flushing RocksDB (the disk is what failed; a restart recovers from the log as
//! after a kill), and [`run`] returns [`NodeError::RaftFailed`]: `baton server` exits with
//! [`RAFT_FAILED_EXIT_CODE`] so that a supervisor restarts the node or pages someone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use openraft::SnapshotPolicy;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use crate::api::gateway::Gateway;
use crate::api::grpc::{ClusterGrpc, MetadataGrpc};
use crate::api::grpc_workflows::{TaskGrpc, WorkflowGrpc};
use crate::api::http::{router, HttpState};
use crate::api::metadata::MetadataApi;
use crate::api::workflows::WorkflowApi;
use crate::config::Config;
use crate::pb::raft::raft_peer_server::RaftPeerServer;
use crate::pb::v1::cluster_service_server::ClusterServiceServer;
use crate::pb::v1::metadata_service_server::MetadataServiceServer;
use crate::pb::v1::task_service_server::TaskServiceServer;
use crate::pb::v1::workflow_service_server::WorkflowServiceServer;
use crate::raft::network::Network;
use crate::raft::peer_service::PeerService;
use crate::raft::proposer::Proposer;
use crate::raft::{NodeId, NodeInfo, Raft};
use crate::runtime::dispatch::Dispatcher;
use crate::runtime::{evaluate, timers};
use crate::sandbox::{Sandbox, SandboxLimits};
use crate::storage::{Db, Identity, LogStore, OpenError, StateMachineStore};

/// Largest gRPC message a node accepts or sends (Raft batches of large definitions, snapshot chunks).
const MAX_GRPC_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The exit code of `baton server` when the node's Raft core stopped on a fatal error while it ran
/// ([`NodeError::RaftFailed`]). Distinct from 1 (any other failure) and 2 (bad configuration, where a restart does
/// not help).
pub const RAFT_FAILED_EXIT_CODE: u8 = 3;

/// How long a node whose Raft core failed keeps listening and answering 503 on `/health` and `/ready`, with the
/// reason, before it shuts down, ms: a probe or load balancer polling every second sees why before the connection
/// is refused; the supervisor learns from the exit moments later.
pub const FAILED_REPORT_MS: u64 = 1000;

/// The longest a node whose Raft core failed drains in-flight calls, ms (and never longer than
/// `api.drain_timeout_ms`): without Raft they can only fail, and a worker's long poll or stream would hold the
/// exit up.
pub const FAILED_DRAIN_MS: u64 = 2000;

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: String,
        /// `gRPC`, `HTTP` or `sandbox`.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The data dir could not be opened or belongs to someone else.
    #[error(transparent)]
    Storage(#[from] OpenError),
    /// Raft refused its configuration or failed.
    #[error("raft: {0}")]
    Raft(String),
    /// A server failed while running.
    #[error("{what} server failed: {message}")]
    Serve {
        /// `gRPC`, `HTTP` or `sandbox`.
        what: &'static str,
        /// The error.
        message: String,
    },
    /// The Raft core stopped on a fatal error while the node ran (the reason openraft gave); the node shut down.
    #[error("raft stopped on a fatal error: {0}")]
    RaftFailed(String),
}

impl NodeError {
    /// The exit code `baton server` ends with: [`RAFT_FAILED_EXIT_CODE`] for [`NodeError::RaftFailed`], 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            NodeError::RaftFailed(_) => RAFT_FAILED_EXIT_CODE,
            _ => 1,
        }
    }
}

/// How many log entries node `node_id` lets pass between snapshots, given the configured `logs_since_last`: 80%,
/// 100% or 120% of it, by node. Replicas apply the same entries, so with one interval they would build their
/// snapshots (a scan of the whole state each) at the same log index, and on one machine at the same moment; with
/// three intervals they build at different moments (docs/perf.md, change 20).
fn snapshot_interval(logs_since_last: u64, node_id: u64) -> u64 {
    (logs_since_last.saturating_mul(4 + node_id % 3) / 5).max(1)
}

/// openraft's configuration from Baton's.
fn raft_config(config: &Config) -> Result<openraft::Config, NodeError> {
    let r = &config.raft;
    let s = &config.snapshot;
    openraft::Config {
        cluster_name: config.cluster_id.clone(),
        heartbeat_interval: r.heartbeat_interval_ms,
        election_timeout_min: r.election_timeout_min_ms,
        election_timeout_max: r.election_timeout_max_ms,
        install_snapshot_timeout: r.install_snapshot_timeout_ms,
        max_payload_entries: r.max_payload_entries,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_interval(s.logs_since_last, config.node_id)),
        max_in_snapshot_log_to_keep: s.max_logs_kept,
        snapshot_max_chunk_size: s.chunk_size_bytes,
        ..Default::default()
    }
    .validate()
    .map_err(|e| NodeError::Raft(e.to_string()))
}

async fn bind(addr: &str, what: &'static str) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr).await.map_err(|source| NodeError::Bind { addr: addr.to_string(), what, source })
}

/// Runs one node until `shutdown` is cancelled, then stops it cleanly; or until its Raft core fails, then stops it
/// as well as it can (in bounded time) and returns [`NodeError::RaftFailed`].
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), NodeError> {
    let grpc_listener = bind(config.grpc_listen_addr(), "gRPC").await?;
    let http_listener = bind(config.http_listen_addr(), "HTTP").await?;
    // User code runs in children of this binary (the leader's evaluator); found before anything starts.
    let sandbox = Arc::new(
        Sandbox::new(SandboxLimits::default())
            .map_err(|e| NodeError::Serve { what: "sandbox", message: e.to_string() })?,
    );

    let identity = Identity { cluster_id: config.cluster_id.clone(), node_id: config.node_id };
    let db = Db::open(&config.data_dir, &identity)?;
    let state_machine =
        StateMachineStore::new(db.clone()).map_err(|e| NodeError::Raft(format!("reading the state: {e}")))?;
    let reader = state_machine.reader();
    let raft = Raft::new(
        config.node_id,
        Arc::new(raft_config(&config)?),
        Network::new(&config.cluster_id),
        LogStore::new(db.clone()),
        state_machine,
    )
    .await
    .map_err(|e| NodeError::Raft(e.to_string()))?;

    let initialized = raft.is_initialized().await.map_err(|e| NodeError::Raft(e.to_string()))?;
    if !initialized {
        let members: BTreeMap<NodeId, NodeInfo> = config
            .members
            .iter()
            .map(|m| (m.id, NodeInfo { grpc_addr: m.grpc_addr.clone(), http_addr: m.http_addr.clone() }))
            .collect();
        tracing::info!(?members, "pristine data dir: initialising the cluster membership");
        if let Err(e) = raft.initialize(members).await {
            // NotAllowed means a peer's log reached us first: the cluster is already formed.
            tracing::info!(error = %e, "initialise skipped");
        }
    }

    let proposer = Arc::new(Proposer::new(
        raft.clone(),
        config.node_id,
        &config.cluster_id,
        Duration::from_millis(config.api.forward_timeout_ms),
        usize::try_from(config.api.max_in_flight_proposals).unwrap_or(usize::MAX),
    ));
    let gateway = Gateway::new(proposer.clone(), reader.clone());
    let metadata = MetadataApi::new(gateway.clone());
    let workflows = WorkflowApi::new(gateway);
    let dispatcher = Arc::new(Dispatcher::new(proposer.clone(), reader.clone()));

    // Public calls may carry at most one document of max_payload_bytes (plus the message's own fields).
    let max_payload = usize::try_from(config.api.max_payload_bytes).unwrap_or(usize::MAX).saturating_add(4096);
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| NodeError::Raft(format!("gRPC reflection: {e}")))?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let grpc = tonic::transport::Server::builder()
        .layer(crate::api::grpc_metrics::GrpcMetricsLayer)
        .add_service(reflection)
        .add_service(health_service)
        .add_service(
            RaftPeerServer::new(PeerService::new(
                raft.clone(),
                proposer.clone(),
                dispatcher.clone(),
                &config.cluster_id,
                Duration::from_millis(config.raft.election_timeout_min_ms),
            ))
            .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES),
        )
        .add_service(ClusterServiceServer::new(ClusterGrpc::new(
            raft.clone(),
            proposer.clone(),
            reader.clone(),
            dispatcher.clone(),
            &config.cluster_id,
        )))
        .add_service(
            MetadataServiceServer::new(MetadataGrpc::new(metadata.clone())).max_decoding_message_size(max_payload),
        )
        .add_service(
            WorkflowServiceServer::new(WorkflowGrpc::new(workflows.clone())).max_decoding_message_size(max_payload),
        )
        .add_service(
            TaskServiceServer::new(TaskGrpc::new(workflows.clone(), dispatcher.clone()))
                .max_decoding_message_size(max_payload),
        )
        .serve_with_incoming_shutdown(
            // Small request/response exchanges (Raft messages, polls) must not wait for Nagle's algorithm and the
            // peer's delayed ACK (40 ms on Linux); tonic applies its own nodelay setting only to sockets it binds.
            TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            shutdown.clone().cancelled_owned(),
        );
    let http_app = router(HttpState {
        raft: raft.clone(),
        reader: reader.clone(),
        metadata,
        workflows,
        dispatcher,
        cluster_id: config.cluster_id.as_str().into(),
    });
    let http_app = http_app.layer(axum::extract::DefaultBodyLimit::max(max_payload));
    let http_listener = http_listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set on an HTTP connection");
        }
    });
    let http = axum::serve(http_listener, http_app).with_graceful_shutdown(shutdown.clone().cancelled_owned());

    tracing::info!(
        node_id = config.node_id,
        grpc = config.grpc_listen_addr(),
        http = config.http_listen_addr(),
        data_dir = %config.data_dir.display(),
        "node started"
    );
    let grpc_task = tokio::spawn(grpc);
    let timers_task = tokio::spawn(timers::run(raft.clone(), proposer.clone(), reader.clone(), shutdown.clone()));
    let evaluator_task =
        tokio::spawn(evaluate::run(raft.clone(), proposer.clone(), reader.clone(), sandbox, shutdown.clone()));
    let http_task = tokio::spawn(async move { http.await });
    tokio::spawn(count_leader_changes(raft.metrics()));

    let failed = tokio::select! {
        _ = shutdown.cancelled() => None,
        reason = raft_failed(raft.metrics()) => Some(reason),
    };
    let mut drain_timeout_ms = config.api.drain_timeout_ms;
    if let Some(reason) = &failed {
        tracing::error!(
            %reason,
            exit_code = RAFT_FAILED_EXIT_CODE,
            "raft stopped on a fatal error: reporting unhealthy for {FAILED_REPORT_MS} ms, then shutting down"
        );
        health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(FAILED_REPORT_MS)) => {}
        }
        shutdown.cancel();
        drain_timeout_ms = drain_timeout_ms.min(FAILED_DRAIN_MS);
    }
    tracing::info!("shutting down: draining in-flight calls");
    let drain = Duration::from_millis(drain_timeout_ms);
    let drained = tokio::time::timeout(drain, async {
        let grpc = grpc_task.await;
        let http = http_task.await;
        (grpc, http)
    })
    .await;
    let mut result = Ok(());
    match drained {
        Ok((grpc, http)) => {
            if let Ok(Err(e)) = grpc {
                result = Err(NodeError::Serve { what: "gRPC", message: e.to_string() });
            }
            if let Ok(Err(e)) = http {
                result = Err(NodeError::Serve { what: "HTTP", message: e.to_string() });
            }
        }
        Err(_) => tracing::warn!(drain_timeout_ms, "drain timed out; stopping anyway"),
    }
    let _ = timers_task.await;
    let _ = evaluator_task.await;
    tracing::info!("stopping raft");
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown reported an error");
    }
    drop(raft);
    if let Some(reason) = failed {
        // Flushing writes to the storage that just failed, and a RocksDB stopped by a background error (a full
        // disk) may wait for a recovery that never comes. Nothing acknowledged needs it: appends were synced.
        tracing::warn!("RocksDB not flushed: the Raft core failed");
        tracing::info!("node stopped");
        return Err(NodeError::RaftFailed(reason));
    }
    if let Err(e) = db.flush() {
        tracing::warn!(error = %e, "flushing RocksDB failed");
    }
    tracing::info!("node stopped");
    result
}

/// How often the node looks at whether its Raft core has stopped.
const RAFT_FAILURE_CHECK_MS: u64 = 100;

/// Resolves, with the reason, once the Raft core has stopped by itself (see [`crate::raft::core_failure`]); never
/// while it runs, nor after an orderly shutdown.
///
/// It looks every [`RAFT_FAILURE_CHECK_MS`] rather than waiting on each change of the metrics: those change several
/// times per log entry, and this future runs on the thread that blocks on the node, so each change was a thread
/// wake-up on the write path (replicated writes were 25-30% slower with it; docs/perf.md, fifteenth session).
async fn raft_failed(metrics: tokio::sync::watch::Receiver<crate::raft::RaftMetrics>) -> String {
    let mut every = tokio::time::interval(Duration::from_millis(RAFT_FAILURE_CHECK_MS));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let ended = metrics.has_changed().is_err();
        if let Some(reason) = crate::raft::core_failure(&metrics.borrow(), ended) {
            return reason;
        }
        if ended {
            // Stopped by `Raft::shutdown`: the node's own shutdown is under way.
            return std::future::pending().await;
        }
    }
}

/// Counts the leader changes this node sees (`baton_raft_leader_changes_total`), until Raft shuts down.
async fn count_leader_changes(mut raft: tokio::sync::watch::Receiver<crate::raft::RaftMetrics>) {
    let mut leader = raft.borrow_and_update().current_leader;
    while raft.changed().await.is_ok() {
        let now = raft.borrow_and_update().current_leader;
        if now.is_some() && now != leader {
            crate::metrics::metrics().raft_leader_changes.inc();
            leader = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::snapshot_interval;

    #[test]
    fn three_consecutive_nodes_snapshot_at_three_intervals_around_the_configured_one() {
        let intervals: Vec<u64> = (1..=3).map(|id| snapshot_interval(5000, id)).collect();
        assert_eq!(intervals, [5000, 6000, 4000]);
        assert_eq!(snapshot_interval(1, 3), 1, "never zero");
        assert!(snapshot_interval(u64::MAX, 2) >= u64::MAX / 5, "a huge interval stays huge (no wrap-around)");
    }
}
