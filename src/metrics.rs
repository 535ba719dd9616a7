//! Baton's Prometheus metrics, served as text by `GET /metrics` on every node's HTTP port.
//!
//! One set per process (as TiKV and most Rust servers keep theirs): a node is one process, and the components that
//! count (proposer, dispatcher, state machine, HTTP layer) record into [`metrics()`] without threading a handle
//! through every constructor. Values that are cheaper to read than to keep (Raft's indexes, queue depths) are
//! sampled when scraped ([`render`]). Counters count what happened on this node since it started: a task
//! completion is counted by every replica that applies it (the `baton_tasks_finished_total` of any one node is
//! the cluster's), a dispatch only by the leader that leased it (sum over nodes).

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::engine::model::WorkflowStatus;
use crate::engine::Transitions;

/// Latency buckets, seconds: 0.5 ms to 10 s (a synced write is ~0.2 ms here; a long poll waits up to seconds).
const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Disk sync buckets, seconds: 100 µs to 2.5 s (a quiet disk syncs in ~0.2 ms; syncs of 30-50 ms were seen under
/// load, docs/perf.md).
const SYNC_BUCKETS: &[f64] = &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5];

/// Buckets for the leader's entry cycle, seconds: 0.5 ms to 1 s, at 1 ms steps where a quiet cycle lies (2-8 ms
/// here, docs/perf.md).
const CYCLE_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.01, 0.015, 0.02, 0.05, 0.1, 0.25, 1.0];

/// Every metric Baton exports.
pub struct Metrics {
    registry: Registry,
    /// Current Raft term.
    pub raft_term: IntGauge,
    /// 1 on the leader, 0 elsewhere.
    pub raft_is_leader: IntGauge,
    /// Times this node saw a new leader (a change of the leader it knows, not counting "no leader").
    pub raft_leader_changes: IntCounter,
    /// Last index in this node's log.
    pub raft_last_log_index: IntGauge,
    /// Time the WAL sync thread spent writing out and syncing RocksDB's WAL, per sync.
    pub wal_sync_seconds: Histogram,
    /// Last index known committed.
    pub raft_commit_index: IntGauge,
    /// Last index applied to the state machine.
    pub raft_applied_index: IntGauge,
    /// Time from a proposal to its commit (and, through a follower, its local apply), by command kind.
    pub proposal_seconds: HistogramVec,
    /// Proposals that failed, by command kind.
    pub proposal_errors: IntCounterVec,
    /// On the leader, per command: from joining the group-commit queue to leaving in a log entry.
    pub group_commit_wait_seconds: Histogram,
    /// On the leader, per log entry: from leaving to its answer (append, replication, commit, apply here).
    pub entry_round_trip_seconds: Histogram,
    /// Per log entry applied to the state machine: the time its apply took on this node.
    pub apply_seconds: Histogram,
    /// Ready tasks waiting for a worker, by queue (task type, `domain:type` for a domain).
    pub queue_depth: IntGaugeVec,
    /// Tasks leased to workers by this node as leader, by task type.
    pub tasks_dispatched: IntCounterVec,
    /// Tasks that reached a terminal status (COMPLETED, FAILED, TIMED_OUT, CANCELED...), by task type and status.
    pub tasks_finished: IntCounterVec,
    /// Workflows in the state, by status.
    pub workflows: IntGaugeVec,
    /// Workflows started.
    pub workflows_started: IntCounter,
    /// Time a poll took to answer (including its long-poll wait), by outcome: `tasks`, `empty` or `error`.
    pub poll_seconds: HistogramVec,
    /// HTTP requests answered, by method, route and status code.
    pub http_requests: IntCounterVec,
    /// HTTP request latency, by method and route.
    pub http_request_seconds: HistogramVec,
    /// gRPC calls answered, by method and status code.
    pub grpc_requests: IntCounterVec,
    /// gRPC latency to the response's headers (the whole call for unary methods), by method.
    pub grpc_request_seconds: HistogramVec,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry.register(Box::new(metric.clone())).expect("each metric is registered once, under its own name");
    metric
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        let gauge = |name: &str, help: &str| register(&r, IntGauge::new(name, help).expect("valid metric"));
        let counter = |name: &str, help: &str| register(&r, IntCounter::new(name, help).expect("valid metric"));
        let counters = |name: &str, help: &str, labels: &[&str]| {
            register(&r, IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
        };
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            register(&r, IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
        };
        let histograms = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            register(&r, HistogramVec::new(opts, labels).expect("valid metric"))
        };
        let cycle_histogram = |name: &str, help: &str| {
            let opts = HistogramOpts::new(name, help).buckets(CYCLE_BUCKETS.to_vec());
            register(&r, Histogram::with_opts(opts).expect("valid metric"))
        };
        Metrics {
            raft_term: gauge("baton_raft_term", "Current Raft term."),
            raft_is_leader: gauge("baton_raft_is_leader", "1 if this node is the leader, else 0."),
            raft_leader_changes: counter("baton_raft_leader_changes_total", "Times this node saw a new leader."),
            raft_last_log_index: gauge("baton_raft_last_log_index", "Last index in this node's log."),
            wal_sync_seconds: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "baton_wal_sync_duration_seconds",
                        "Time to write out and fsync the write-ahead log, per sync (one sync covers every append \
                         written before it began).",
                    )
                    .buckets(SYNC_BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            ),
            raft_commit_index: gauge("baton_raft_commit_index", "Last index this node knows committed."),
            raft_applied_index: gauge("baton_raft_applied_index", "Last index applied to the state machine."),
            proposal_seconds: histograms(
                "baton_proposal_duration_seconds",
                "Time from proposing a command to its commit, by command kind.",
                &["kind"],
            ),
            proposal_errors: counters(
                "baton_proposal_errors_total",
                "Proposals that failed, by command kind.",
                &["kind"],
            ),
            group_commit_wait_seconds: cycle_histogram(
                "baton_group_commit_wait_seconds",
                "On the leader, per command: time from joining the group-commit queue to leaving in a log entry.",
            ),
            entry_round_trip_seconds: cycle_histogram(
                "baton_entry_round_trip_seconds",
                "On the leader, per log entry: time from leaving the group-commit queue to its answer (append, \
                 replication, commit, apply on the leader).",
            ),
            apply_seconds: cycle_histogram(
                "baton_apply_duration_seconds",
                "Per log entry: time its apply to the state machine took on this node.",
            ),
            queue_depth: gauges("baton_task_queue_depth", "Ready tasks waiting for a worker, by queue.", &["queue"]),
            tasks_dispatched: counters(
                "baton_tasks_dispatched_total",
                "Tasks leased to workers by this node as leader, by task type.",
                &["task_type"],
            ),
            tasks_finished: counters(
                "baton_tasks_finished_total",
                "Tasks that reached a terminal status, by task type and status.",
                &["task_type", "status"],
            ),
            workflows: gauges("baton_workflows", "Workflows in the state, by status.", &["status"]),
            workflows_started: counter("baton_workflows_started_total", "Workflows started."),
            poll_seconds: histograms(
                "baton_poll_duration_seconds",
                "Time a worker poll took to answer, including its wait, by outcome.",
                &["outcome"],
            ),
            http_requests: counters(
                "baton_http_requests_total",
                "HTTP requests answered, by method, route and status.",
                &["method", "route", "status"],
            ),
            http_request_seconds: histograms(
                "baton_http_request_duration_seconds",
                "HTTP request latency, by method and route.",
                &["method", "route"],
            ),
            grpc_requests: counters(
                "baton_grpc_requests_total",
                "gRPC calls answered, by method and status code.",
                &["method", "code"],
            ),
            grpc_request_seconds: histograms(
                "baton_grpc_request_duration_seconds",
                "gRPC latency to the response's headers (the whole call for unary methods), by method.",
                &["method"],
            ),
            registry: r,
        }
    }

    /// Counts what an applied entry changed.
    pub fn record_transitions(&self, transitions: &Transitions) {
        for (task_type, status) in &transitions.tasks_ended {
            self.tasks_finished.with_label_values(&[task_type.as_str(), status.as_str()]).inc();
        }
        for (from, to) in &transitions.workflows {
            match from {
                Some(from) => self.workflows.with_label_values(&[from.as_str()]).dec(),
                None => self.workflows_started.inc(),
            }
            self.workflows.with_label_values(&[to.as_str()]).inc();
        }
    }

    /// Sets the workflows-by-status gauge from a full count (at start and after installing a snapshot).
    pub fn set_workflow_counts(&self, counts: &BTreeMap<WorkflowStatus, i64>) {
        for status in WorkflowStatus::ALL {
            self.workflows.with_label_values(&[status.as_str()]).set(counts.get(&status).copied().unwrap_or(0));
        }
    }

    /// Sets the queue-depth gauge to `depths`, dropping queues that emptied.
    pub fn set_queue_depths(&self, depths: &BTreeMap<String, usize>) {
        self.queue_depth.reset();
        for (queue, depth) in depths {
            self.queue_depth.with_label_values(&[queue.as_str()]).set(i64::try_from(*depth).unwrap_or(i64::MAX));
        }
    }

    /// Records one proposal's outcome and time.
    pub fn record_proposal(&self, kind: &str, elapsed: Duration, ok: bool) {
        self.proposal_seconds.with_label_values(&[kind]).observe(elapsed.as_secs_f64());
        if !ok {
            self.proposal_errors.with_label_values(&[kind]).inc();
        }
    }
}

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Everything, in Prometheus's text format.
pub fn render() -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&metrics().registry.gather(), &mut out)
        .expect("the text encoder writes to memory and every metric family is well formed");
    String::from_utf8(out).expect("the text format is UTF-8")
}
