//! Dispatch: serves a worker's long poll from the leader's ready index, leasing the tasks through Raft before handing
//! them out, so a task is handed out again only after its lease is gone (timed out, or the task returned to the
//! queue). A poll that arrives at a follower is forwarded to the leader over the peer protocol.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::now_ms;
use crate::api::error::ApiError;
use crate::engine::model::{Task, Workflow};
use crate::engine::ops::{LeaseGrant, TaskRef};
use crate::engine::pending::queue_name;
use crate::engine::{Command, CommandResponse};
use crate::raft::proposer::{never_sent, Proposer};
use crate::raft::wire;
use crate::storage::StateReader;

/// Most tasks one poll may take.
pub const MAX_POLL_COUNT: u32 = 100;
/// Longest a poll may wait, ms.
pub const MAX_POLL_WAIT_MS: u32 = 30_000;

/// A task handed to a worker, with its lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dispatched {
    /// The task as stored after the lease.
    pub task: Task,
    /// The lease granted.
    pub grant: LeaseGrant,
}

impl Dispatched {
    /// The token the worker presents: `task_id:attempt:lease`.
    pub fn lease_token(&self) -> String {
        format!("{}:{}:{}", self.task.task_id, self.task.retry_count, self.grant.lease_seq)
    }
}

/// Parses a lease token into (task id, attempt, lease number).
pub fn parse_lease_token(token: &str) -> Option<(String, u32, u64)> {
    let mut parts = token.rsplitn(3, ':');
    let lease = parts.next()?.parse().ok()?;
    let attempt = parts.next()?.parse().ok()?;
    let task_id = parts.next()?.to_string();
    (!task_id.is_empty()).then_some((task_id, attempt, lease))
}

/// A worker's poll: what it takes, and how long it may wait. This is also what a follower forwards to the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollArgs {
    /// The task type.
    pub task_type: String,
    /// The domain, if any.
    pub domain: Option<String>,
    /// Who polls (recorded on the task).
    pub worker_id: String,
    /// Most tasks wanted (clamped to [`MAX_POLL_COUNT`]).
    pub count: u32,
    /// Longest wait for a first task, ms (clamped to [`MAX_POLL_WAIT_MS`]).
    pub timeout_ms: u32,
    /// The poll's id. A poll repeated under the id of one whose answer was lost (the node serving it died) answers
    /// the tasks that one leased, with their leases, if they are still in progress, instead of leasing others.
    pub poll_id: Option<String>,
}

/// The leader's answer to a forwarded poll.
#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardedPoll {
    /// Leased to the worker (possibly none, when the wait ended empty).
    Tasks(Vec<Dispatched>),
    /// The receiver is not the leader (any more): nothing was leased.
    NotLeader,
    /// The poll failed on the leader.
    Failed(ApiError),
}

/// How long a follower waits before asking again when the leader it knows did not answer.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Time a forwarded poll may take beyond its wait: the lease commit and the way back.
const FORWARD_MARGIN: Duration = Duration::from_secs(5);

/// Serves polls: on the leader from its ready index, on a follower by forwarding them to the leader.
pub struct Dispatcher {
    proposer: Arc<Proposer>,
    reader: StateReader,
    /// Tasks a poll on this node is proposing a lease for right now, so two polls do not race for the same task.
    claimed: Mutex<BTreeSet<String>>,
    /// Polls this node is serving as leader right now (its own and forwarded ones).
    serving: AtomicU64,
    /// Polls this node has forwarded to the leader and is waiting on.
    forwarded: AtomicU64,
}

/// Counts a poll in a gauge for as long as it lives.
struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    fn enter(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Gauge(gauge)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

/// Outcome of one forwarding attempt.
enum Forwarded {
    Done(Result<Vec<Dispatched>, ApiError>),
    /// Nothing was leased: ask the leader known next.
    Retry,
    /// The poll reached the leader but its answer was lost: it may have leased tasks. Ask the next leader under the
    /// same poll id, even past the poll's own wait, to get them back.
    Lost,
}

/// How long a follower keeps asking for the answer of a forwarded poll that was lost, past the poll's own wait.
const RECOVER_WITHIN: Duration = Duration::from_secs(5);
/// Longest a new leader waits to have applied its own first entry (and so everything before it) before it
/// serves a poll.
const SETTLE_WITHIN: Duration = Duration::from_secs(2);

impl Dispatcher {
    /// A dispatcher over this node's proposer and state.
    pub fn new(proposer: Arc<Proposer>, reader: StateReader) -> Self {
        Dispatcher {
            proposer,
            reader,
            claimed: Mutex::new(BTreeSet::new()),
            serving: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
        }
    }

    /// (polls being served here as leader, polls forwarded from here to the leader) right now.
    pub fn polls_waiting(&self) -> (u64, u64) {
        (self.serving.load(Ordering::Relaxed), self.forwarded.load(Ordering::Relaxed))
    }

    /// Up to `count` tasks of `task_type` (in `domain`), waiting up to `timeout_ms` for one to be ready. Served by
    /// the leader wherever the poll arrives; through an election the poll waits for the next leader (within its
    /// own wait) instead of failing.
    pub async fn poll(&self, args: &PollArgs) -> Result<Vec<Dispatched>, ApiError> {
        let started = Instant::now();
        let result = self.poll_once(args).await;
        let outcome = match &result {
            Ok(tasks) if tasks.is_empty() => "empty",
            Ok(_) => "tasks",
            Err(_) => "error",
        };
        crate::metrics::metrics().poll_seconds.with_label_values(&[outcome]).observe(started.elapsed().as_secs_f64());
        result
    }

    async fn poll_once(&self, args: &PollArgs) -> Result<Vec<Dispatched>, ApiError> {
        if args.task_type.is_empty() {
            return Err(ApiError::invalid("task_type: must not be empty"));
        }
        let mut deadline = Instant::now() + Duration::from_millis(u64::from(args.timeout_ms.min(MAX_POLL_WAIT_MS)));
        // Forwarding may lose an answer too: an id lets the retry below find what was leased.
        let named;
        let args = match args.poll_id {
            Some(_) => args,
            None => {
                named = PollArgs { poll_id: Some(uuid::Uuid::new_v4().to_string()), ..args.clone() };
                &named
            }
        };
        let me = self.proposer.node_id();
        let mut metrics = self.proposer.metrics();
        loop {
            let leader = metrics.borrow_and_update().current_leader;
            match leader {
                Some(id) if id == me => {
                    if let Some(tasks) = self.poll_as_leader(args, deadline).await? {
                        return Ok(tasks);
                    }
                }
                Some(id) => match self.forward(id, args, deadline).await {
                    Forwarded::Done(result) => return result,
                    Forwarded::Retry => {}
                    Forwarded::Lost => deadline = deadline.max(Instant::now() + RECOVER_WITHIN),
                },
                None => {}
            }
            let now = Instant::now();
            if now >= deadline {
                // No leader answered within the wait: say so, so that a worker tries another node instead of
                // waiting on one that is cut off from the cluster.
                let known = leader.map_or_else(|| "none".to_string(), |id| format!("node {id}"));
                return Err(ApiError::Unavailable(format!(
                    "no leader could serve this poll within its wait (leader known to node {me}: {known})"
                )));
            }
            let pause = if leader.is_some() { RETRY_PAUSE } else { deadline - now };
            if let Ok(Err(_)) = tokio::time::timeout(pause.min(deadline - now), metrics.changed()).await {
                return Err(ApiError::Unavailable("node is shutting down".into()));
            }
        }
    }

    /// The leader's side of a poll forwarded by a follower.
    pub async fn serve_forwarded(&self, args: PollArgs) -> ForwardedPoll {
        let deadline = Instant::now() + Duration::from_millis(u64::from(args.timeout_ms.min(MAX_POLL_WAIT_MS)));
        match self.poll_as_leader(&args, deadline).await {
            Ok(Some(tasks)) => ForwardedPoll::Tasks(tasks),
            Ok(None) => ForwardedPoll::NotLeader,
            Err(e) => ForwardedPoll::Failed(e),
        }
    }

    async fn forward(&self, leader: u64, args: &PollArgs, deadline: Instant) -> Forwarded {
        let Some(mut client) = self.proposer.peer(leader) else { return Forwarded::Retry };
        let wait = deadline.saturating_duration_since(Instant::now());
        let args = PollArgs { timeout_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX), ..args.clone() };
        let mut request = match wire::pack(self.proposer.cluster_id(), &args) {
            Ok(message) => tonic::Request::new(message),
            Err(status) => return Forwarded::Done(Err(ApiError::Internal(status.message().to_string()))),
        };
        request.set_timeout(wait + FORWARD_MARGIN);
        let _gauge = Gauge::enter(&self.forwarded);
        // A leader that stops answering without closing the connection (paused, cut off) holds the poll until the
        // RPC's deadline; once another leader is known, give up on it and ask that one under the same poll id.
        let mut metrics = self.proposer.metrics();
        let deposed = metrics.wait_for(|m| m.current_leader.is_some() && m.current_leader != Some(leader));
        let answer = tokio::select! {
            answer = client.poll(request) => answer,
            _ = deposed => {
                tracing::debug!(leader, "leader changed while it held a forwarded poll; asking the new one");
                return Forwarded::Lost;
            }
        };
        match answer {
            Ok(reply) => match wire::unpack::<ForwardedPoll>(self.proposer.cluster_id(), reply.get_ref()) {
                Ok(ForwardedPoll::Tasks(tasks)) => Forwarded::Done(Ok(tasks)),
                Ok(ForwardedPoll::Failed(e)) => Forwarded::Done(Err(e)),
                Ok(ForwardedPoll::NotLeader) => Forwarded::Retry,
                Err(status) => Forwarded::Done(Err(ApiError::Internal(status.message().to_string()))),
            },
            Err(status) => {
                // Unreachable (nothing leased), or the leader died mid-poll (it may have leased tasks for it: the
                // next leader answers them to the same poll id).
                if never_sent(&status) {
                    return Forwarded::Retry;
                }
                tracing::debug!(leader, error = %status.message(), "forwarded poll's answer lost; asking the next leader");
                Forwarded::Lost
            }
        }
    }

    /// Serves a poll from this node's ready index while this node leads. `None` when it is not (or no longer) the
    /// leader and has leased nothing: the caller asks the new leader.
    async fn poll_as_leader(&self, args: &PollArgs, deadline: Instant) -> Result<Option<Vec<Dispatched>>, ApiError> {
        let me = self.proposer.node_id();
        let _gauge = Gauge::enter(&self.serving);
        let count = args.count.clamp(1, MAX_POLL_COUNT) as usize;
        let queue = queue_name(&args.task_type, args.domain.as_deref());
        let pending = self.reader.pending().clone();
        let mut metrics = self.proposer.metrics();
        // A new leader's index is current once it has applied the first entry of its own term (every entry committed
        // before it is applied then): until then a repeated poll could miss what the last leader leased for it.
        let settle_by = deadline.max(Instant::now() + SETTLE_WITHIN);
        loop {
            let (leading, current) = {
                let m = metrics.borrow_and_update();
                (m.current_leader == Some(me), m.last_applied.is_some_and(|id| id.leader_id.term == m.current_term))
            };
            if !leading {
                return Ok(None);
            }
            if current {
                break;
            }
            if tokio::time::timeout_at(settle_by, metrics.changed()).await.is_err() {
                return Ok(Some(Vec::new()));
            }
        }
        if let Some(poll_id) = &args.poll_id {
            let leased = pending.with(|ix| ix.leased_by(poll_id));
            if !leased.is_empty() {
                return self.recover(poll_id, leased).map(Some);
            }
        }
        loop {
            if metrics.borrow_and_update().current_leader != Some(me) {
                return Ok(None);
            }
            let changed = pending.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = now_ms();
            let candidates = {
                let mut claimed = self.claimed.lock().expect("claims lock is never poisoned");
                let found = pending.with(|ix| ix.ready(&queue, now, count, &claimed));
                claimed.extend(found.iter().map(|r| r.task_id.clone()));
                found
            };
            let mut wait = deadline.saturating_duration_since(Instant::now());
            if !candidates.is_empty() {
                let ids: Vec<String> = candidates.iter().map(|r| r.task_id.clone()).collect();
                let tasks = candidates
                    .into_iter()
                    .map(|r| TaskRef { workflow_id: r.workflow_id, task_id: r.task_id })
                    .collect();
                let command =
                    Command::LeaseTasks { worker_id: args.worker_id.clone(), poll_id: args.poll_id.clone(), tasks };
                let result = self.proposer.propose(command).await;
                {
                    let mut claimed = self.claimed.lock().expect("claims lock is never poisoned");
                    for id in &ids {
                        claimed.remove(id);
                    }
                }
                let granted = match result?.response {
                    CommandResponse::Leased { granted } => granted,
                    CommandResponse::Rejected(r) => return Err(r.into()),
                    other => return Err(ApiError::Internal(format!("lease answered {other:?}"))),
                };
                if !granted.is_empty() {
                    return self.load(granted).map(Some);
                }
                // Nothing granted: held back by the type's concurrency or rate limit (or taken just before).
                // Look again when something changes, or shortly (a rate window may open).
                wait = wait.min(Duration::from_millis(100));
            } else {
                // Sleep until something is applied, a delayed task becomes visible, or the poll ends.
                let until_visible = pending
                    .with(|ix| ix.next_visible(&queue))
                    .map_or(u64::MAX, |at| at.saturating_sub(now_ms()).max(1));
                wait = wait.min(Duration::from_millis(until_visible.min(1000)));
            }
            if Instant::now() >= deadline {
                return Ok(Some(Vec::new()));
            }
            tokio::select! {
                _ = &mut changed => {}
                _ = metrics.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The tasks a poll leased, answered again to its repetition (same leases).
    fn recover(&self, poll_id: &str, leased: Vec<(String, String)>) -> Result<Vec<Dispatched>, ApiError> {
        let mut out = Vec::with_capacity(leased.len());
        for (workflow_id, task_id) in leased {
            let wf: Option<Workflow> = self.reader.workflow(&workflow_id)?;
            let Some(task) = wf.as_ref().and_then(|w| w.task(&task_id)).cloned() else { continue };
            if task.poll_id.as_deref() == Some(poll_id) && task.status == crate::engine::model::TaskStatus::InProgress {
                let grant = LeaseGrant { workflow_id, task_id, lease_seq: task.lease_seq };
                out.push(Dispatched { task, grant });
            }
        }
        tracing::info!(poll_id, tasks = out.len(), "a repeated poll got back the tasks it had leased");
        Ok(out)
    }

    fn load(&self, granted: Vec<LeaseGrant>) -> Result<Vec<Dispatched>, ApiError> {
        let mut out = Vec::with_capacity(granted.len());
        for grant in granted {
            let wf: Option<Workflow> = self.reader.workflow(&grant.workflow_id)?;
            let task = wf.as_ref().and_then(|w| w.task(&grant.task_id)).cloned();
            match task {
                Some(task) => {
                    crate::metrics::metrics().tasks_dispatched.with_label_values(&[task.task_type.as_str()]).inc();
                    out.push(Dispatched { task, grant })
                }
                None => tracing::warn!(task_id = %grant.task_id, "leased task not found in the local state"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_tokens_round_trip_even_with_colons_in_ids() {
        assert_eq!(parse_lease_token("abc:2:7"), Some(("abc".into(), 2, 7)));
        assert_eq!(parse_lease_token("a:b:c:0:1"), Some(("a:b:c".into(), 0, 1)));
        assert_eq!(parse_lease_token("abc:x:1"), None);
        assert_eq!(parse_lease_token(":1:1"), None);
        assert_eq!(parse_lease_token("nope"), None);
    }
}
