//! What a chaos run checks, once the load has drained: every acknowledged start present, terminal, COMPLETED with
//! its shape's output; no task attempt applied twice; no start applied twice for one idempotency key; nothing left
//! running; every replica at the same applied index with the same state hash. Each failure is a named
//! [`Violation`]. All through the run it also samples who claims leadership, as a figure (see [`sample_leaders`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Code;

use super::load::{Shape, Started};
use crate::api::status::NodeStatus;
use crate::client::{Client, ClientError};
use crate::engine::model::{TaskStatus, Workflow, WorkflowStatus};
use crate::local_cluster::{poll_until, status_of, summary, Cluster};
use crate::pb::v1 as pb;
use crate::pb::v1::workflow_service_client::WorkflowServiceClient;

/// How often the leader sampler asks every node.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(50);
/// Workflow reads in flight at once while draining.
const READS_IN_FLIGHT: usize = 16;

/// A broken promise, named by the check that found it.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    /// The check: `lost-workflow`, `not-terminal`, `workflow-failed`, `wrong-output`, `attempt-applied-twice`,
    /// `completed-twice`, `duplicate-start`, `stuck-workflow`, `divergence`,
    /// `no-convergence`, `node-crashed`, `leader-election`, `dispatch-after-fault`, `recovery`, `start-refused`.
    pub check: &'static str,
    /// What exactly was wrong, naming workflows, nodes and terms.
    pub detail: String,
}

impl Violation {
    /// A violation of `check`.
    pub fn new(check: &'static str, detail: impl Into<String>) -> Violation {
        Violation { check, detail: detail.into() }
    }
}

// ------------------------------------------------------------------------------------------------- leaders

/// The leader ids seen: openraft's `(term, node id)` of every node seen reporting role `leader`.
///
/// Not a check. openraft 0.9 by default (without its `single-term-leader` feature) identifies a leader by
/// `(term, node id)`, totally ordered, so one term may elect two leaders in turn (a voter that granted `(7, n1)`
/// may grant `(7, n2)` next) and log ids carry the node id; "one leader per term" is not a property it promises
/// (docs/adr/0007-chaos-runner.md). What that property protects (no committed entry lost or overwritten, replicas
/// identical, nothing applied twice) is checked directly at the end of the run.
pub type LeaderIds = Arc<Mutex<BTreeSet<(u64, u64)>>>;

/// Asks every node for its status every [`SAMPLE_INTERVAL`] until `stop`, recording the leader ids claimed.
pub async fn sample_leaders(channels: Vec<Channel>, leaders: LeaderIds, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let statuses = futures::future::join_all(channels.iter().map(|c| status_of(c.clone(), false))).await;
        {
            let mut leaders = leaders.lock().unwrap_or_else(|e| e.into_inner());
            leaders.extend(statuses.iter().flatten().filter(|s| s.role == "leader").map(|s| (s.term, s.node_id)));
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(SAMPLE_INTERVAL) => {}
        }
    }
}

// ------------------------------------------------------------------------------------------------- workflows

/// Reads a workflow (`Linearizable`: sees every acknowledged write); `None` when no node knows it.
async fn read_workflow(client: &Client, id: &str, consistency: pb::Consistency) -> Result<Option<Workflow>, String> {
    let request = pb::GetWorkflowRequest { workflow_id: id.to_string(), consistency: consistency as i32 };
    let reply = client
        .call(|ch| {
            let request = request.clone();
            async move { WorkflowServiceClient::new(ch).get(request).await }
        })
        .await;
    match reply {
        Ok(reply) => {
            serde_json::from_str(&reply.json).map(Some).map_err(|e| format!("workflow {id} does not decode: {e}"))
        }
        Err(ClientError::Status(s)) if s.code() == Code::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Waits (until `deadline`) for every acknowledged workflow to be terminal; answers the terminal ones by id, and
/// violations for the ones lost (unknown to a linearizable read) or still not terminal.
pub async fn drain(
    client: &Client,
    started: &[Started],
    deadline: Instant,
) -> (BTreeMap<String, Workflow>, Vec<Violation>) {
    let mut done = BTreeMap::new();
    // Each pending workflow with what the last read of it saw.
    let mut pending: Vec<(&Started, String)> = started.iter().map(|s| (s, "never read".to_string())).collect();
    loop {
        let reads = futures::stream::iter(
            pending
                .into_iter()
                .map(|(s, _)| async move { (s, read_workflow(client, &s.workflow_id, pb::Consistency::Local).await) }),
        )
        .buffer_unordered(READS_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
        pending = Vec::new();
        for (s, read) in reads {
            match read {
                Ok(Some(wf)) if wf.status.is_terminal() => {
                    done.insert(s.workflow_id.clone(), wf);
                }
                Ok(Some(wf)) => pending.push((s, format!("{} with {} task(s)", wf.status.as_str(), wf.tasks.len()))),
                Ok(None) => pending.push((s, "not found".to_string())),
                Err(e) => pending.push((s, format!("unreadable: {e}"))),
            }
        }
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut violations = Vec::new();
    for (s, seen) in pending {
        let (check, detail) = match read_workflow(client, &s.workflow_id, pb::Consistency::Linearizable).await {
            Ok(None) => ("lost-workflow", "acknowledged, but no node knows it".to_string()),
            _ => ("not-terminal", format!("not terminal at the drain deadline; last seen {seen}")),
        };
        let detail = format!("workflow {} ({:?}, x={}): {detail}", s.workflow_id, s.shape, s.x);
        violations.push(Violation::new(check, detail));
    }
    (done, violations)
}

/// No task attempt applied twice: no two tasks share (reference, retryCount, iteration), and no reference is
/// COMPLETED twice in one iteration.
pub fn check_attempts(wf: &Workflow) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut attempts = BTreeSet::new();
    let mut completed = BTreeSet::new();
    for t in &wf.tasks {
        if !attempts.insert((&t.reference_task_name, t.retry_count, t.iteration)) {
            violations.push(Violation::new(
                "attempt-applied-twice",
                format!(
                    "workflow {}: two tasks {} with retryCount {} iteration {} (second: {})",
                    wf.workflow_id, t.reference_task_name, t.retry_count, t.iteration, t.task_id
                ),
            ));
        }
        if t.status == TaskStatus::Completed && !completed.insert((&t.reference_task_name, t.iteration)) {
            violations.push(Violation::new(
                "completed-twice",
                format!(
                    "workflow {}: {} completed twice in iteration {} (second: {})",
                    wf.workflow_id, t.reference_task_name, t.iteration, t.task_id
                ),
            ));
        }
    }
    violations
}

/// Checks one terminal acknowledged workflow: COMPLETED, its shape's output, no attempt applied twice (in its
/// sub-workflow too), and a retry shape that really went through a failed first attempt.
pub async fn check_workflow(client: &Client, s: &Started, wf: &Workflow) -> Vec<Violation> {
    let id = &wf.workflow_id;
    let mut violations = check_attempts(wf);
    if wf.status != WorkflowStatus::Completed {
        let reason = wf.reason_for_incompletion.as_deref().unwrap_or("-");
        violations.push(Violation::new(
            "workflow-failed",
            format!("workflow {id} ({:?}, x={}) ended {}: {reason}", s.shape, s.x, wf.status.as_str()),
        ));
        return violations;
    }
    let expected = s.shape.expected_output(s.x);
    if serde_json::Value::Object(wf.output.clone()) != expected {
        violations.push(Violation::new(
            "wrong-output",
            format!("workflow {id} ({:?}, x={}): output {:?}, expected {expected}", s.shape, s.x, wf.output),
        ));
    }
    match s.shape {
        Shape::Retry => {
            let completed_first = wf.tasks.iter().any(|t| t.status == TaskStatus::Completed && t.retry_count == 0);
            if completed_first {
                violations.push(Violation::new(
                    "wrong-output",
                    format!(
                        "workflow {id}: the flaky task completed on its first attempt, which its worker always fails"
                    ),
                ));
            }
        }
        Shape::SubWorkflow => {
            let child_id = wf.tasks.iter().find_map(|t| t.sub_workflow_id.clone());
            let child = match &child_id {
                Some(child_id) => read_workflow(client, child_id, pb::Consistency::Linearizable).await,
                None => Ok(None),
            };
            match child {
                Ok(Some(child)) if child.status == WorkflowStatus::Completed => {
                    violations.extend(check_attempts(&child))
                }
                other => violations.push(Violation::new(
                    "workflow-failed",
                    format!(
                        "workflow {id}: its sub-workflow {child_id:?} is not COMPLETED: {:?}",
                        other.map(|c| c.map(|c| c.status))
                    ),
                )),
            }
        }
        _ => {}
    }
    violations
}

/// Every workflow the cluster holds (summaries), paging through the list.
async fn list_all(client: &Client, status: &str) -> Result<Vec<pb::WorkflowSummary>, ClientError> {
    const PAGE: u32 = 5000;
    let mut all = Vec::new();
    loop {
        let request = pb::ListWorkflowsRequest {
            status: status.to_string(),
            limit: PAGE,
            offset: u32::try_from(all.len()).unwrap_or(u32::MAX),
            ..Default::default()
        };
        let page = client.list_workflows(request).await?;
        let full = page.len() == PAGE as usize;
        all.extend(page);
        if !full {
            return Ok(all);
        }
    }
}

/// No idempotency key started two workflows (the runner uses each key as the correlation id; a sub-workflow
/// inherits its parent's correlation id but has another name, so workflows are grouped by both), and nothing is
/// still RUNNING or PAUSED.
pub async fn check_listing(client: &Client) -> Vec<Violation> {
    let all = match list_all(client, "").await {
        Ok(all) => all,
        Err(e) => return vec![Violation::new("stuck-workflow", format!("listing the workflows failed: {e}"))],
    };
    let mut by_key: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for w in all.iter().filter(|w| w.correlation_id.starts_with("chaos-")) {
        by_key.entry((&w.name, &w.correlation_id)).or_default().push(&w.workflow_id);
    }
    let mut violations: Vec<Violation> = by_key
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .map(|((name, key), ids)| {
            Violation::new(
                "duplicate-start",
                format!("idempotency key {key} started {name} {} times: {ids:?}", ids.len()),
            )
        })
        .collect();
    let unfinished: Vec<String> = all
        .iter()
        .filter(|w| w.status == "RUNNING" || w.status == "PAUSED")
        .map(|w| format!("{} {} ({})", w.workflow_id, w.name, w.status))
        .collect();
    if !unfinished.is_empty() {
        violations.push(Violation::new(
            "stuck-workflow",
            format!("{} workflow(s) not finished at the end: {unfinished:?}", unfinished.len()),
        ));
    }
    violations
}

// ------------------------------------------------------------------------------------------------- replicas

/// Waits until every live node has the same last_applied, at least everything any of them reports committed, and
/// the same state hash; equal last_applied with different hashes is divergence (waiting cannot cure it). Then has
/// every node recompute its hash from a full scan of its state, so a running hash that drifted from the contents
/// cannot hide a divergence.
pub async fn check_convergence(cluster: &Cluster, deadline: Instant) -> Result<Vec<NodeStatus>, Violation> {
    loop {
        let agreed = wait_same_hash(cluster, deadline).await?;
        let verified = futures::future::join_all(agreed.iter().map(|s| cluster.verified_status(s.node_id))).await;
        let mut statuses = Vec::with_capacity(verified.len());
        for (status, reply) in agreed.iter().zip(verified) {
            match reply {
                Ok(s) => statuses.push(s),
                Err(e) => {
                    let detail = format!("node {}: state hash not confirmed by a full scan: {e}", status.node_id);
                    return Err(Violation::new("divergence", detail));
                }
            }
        }
        // A timer may have applied an entry between the two rounds; then agree again.
        let first = &statuses[0];
        if statuses.iter().all(|s| s.last_applied == first.last_applied && s.state_hash == first.state_hash) {
            return Ok(statuses);
        }
        if Instant::now() >= deadline {
            let detail = format!("replicas moved while their hashes were verified: {}", summary_ok(&statuses));
            return Err(Violation::new("no-convergence", detail));
        }
    }
}

fn summary_ok(statuses: &[NodeStatus]) -> String {
    summary(&statuses.iter().cloned().map(Ok).collect::<Vec<_>>())
}

/// The first half of [`check_convergence`]: equal applied index and running hash everywhere.
async fn wait_same_hash(cluster: &Cluster, deadline: Instant) -> Result<Vec<NodeStatus>, Violation> {
    let agreed = poll_until(deadline, || async {
        let statuses = cluster.live_statuses().await;
        let ok: Vec<NodeStatus> = statuses.iter().flatten().cloned().collect();
        let max_committed = ok.iter().map(|s| s.committed_index).max().unwrap_or(0);
        match ok.first() {
            Some(first)
                if ok.len() == statuses.len()
                    && first.last_applied >= max_committed
                    && ok.iter().all(|s| s.last_applied == first.last_applied) =>
            {
                if ok.iter().all(|s| s.state_hash == first.state_hash) {
                    Ok(Ok(ok))
                } else {
                    let detail = format!("state_hash differs at equal last_applied: {}", summary(&statuses));
                    Ok(Err(Violation::new("divergence", detail)))
                }
            }
            _ => Err(format!("replicas did not reach the same applied index: {}", summary(&statuses))),
        }
    })
    .await;
    agreed.unwrap_or_else(|e| Err(Violation::new("no-convergence", format!("{e:#}"))))
}
