//! Dispatch: serves a worker's long poll from the ready index, leasing the tasks through Raft before handing them
//! out, so a task is handed out again only after its lease is gone (timed out, or the task returned to the queue).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::now_ms;
use crate::api::error::ApiError;
use crate::engine::model::{Task, Workflow};
use crate::engine::ops::{LeaseGrant, TaskRef};
use crate::engine::pending::queue_name;
use crate::engine::{Command, CommandResponse};
use crate::raft::proposer::Proposer;
use crate::storage::StateReader;

/// Most tasks one poll may take.
pub const MAX_POLL_COUNT: u32 = 100;
/// Longest a poll may wait, ms.
pub const MAX_POLL_WAIT_MS: u32 = 30_000;

/// A task handed to a worker, with its lease.
#[derive(Debug, Clone)]
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

/// Serves polls on one node.
pub struct Dispatcher {
    proposer: Arc<Proposer>,
    reader: StateReader,
    /// Tasks a poll on this node is proposing a lease for right now, so two polls do not race for the same task.
    claimed: Mutex<BTreeSet<String>>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// A dispatcher over this node's proposer and state.
    pub fn new(proposer: Arc<Proposer>, reader: StateReader) -> Self {
        Dispatcher { proposer, reader, claimed: Mutex::new(BTreeSet::new()) }
    }

    /// Up to `count` tasks of `task_type` (in `domain`), waiting up to `timeout_ms` for one to be ready.
    pub async fn poll(
        &self,
        task_type: &str,
        domain: Option<&str>,
        worker_id: &str,
        count: u32,
        timeout_ms: u32,
    ) -> Result<Vec<Dispatched>, ApiError> {
        if task_type.is_empty() {
            return Err(ApiError::Invalid { message: "task_type: must not be empty".into(), field_errors: Vec::new() });
        }
        let count = count.clamp(1, MAX_POLL_COUNT) as usize;
        let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms.min(MAX_POLL_WAIT_MS)));
        let queue = queue_name(task_type, domain);
        let pending = self.reader.pending().clone();
        loop {
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
            if !candidates.is_empty() {
                let ids: Vec<String> = candidates.iter().map(|r| r.task_id.clone()).collect();
                let tasks = candidates
                    .into_iter()
                    .map(|r| TaskRef { workflow_id: r.workflow_id, task_id: r.task_id })
                    .collect();
                let result =
                    self.proposer.propose(Command::LeaseTasks { worker_id: worker_id.to_string(), tasks }).await;
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
                    return self.load(granted);
                }
                // Nothing granted: taken by another node, or held back by the type's concurrency or rate limit.
                // Look again when something changes, or shortly (a rate window may open).
                if Instant::now() >= deadline {
                    return Ok(Vec::new());
                }
                tokio::select! {
                    _ = &mut changed => {}
                    _ = tokio::time::sleep(Duration::from_millis(100).min(deadline - Instant::now())) => {}
                }
                continue;
            }
            let now_instant = Instant::now();
            if now_instant >= deadline {
                return Ok(Vec::new());
            }
            // Sleep until something is applied, a delayed task becomes visible, or the poll ends.
            let until_visible =
                pending.with(|ix| ix.next_visible(&queue)).map_or(u64::MAX, |at| at.saturating_sub(now_ms()).max(1));
            let wait = (deadline - now_instant).min(Duration::from_millis(until_visible.min(1000)));
            tokio::select! {
                _ = &mut changed => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn load(&self, granted: Vec<LeaseGrant>) -> Result<Vec<Dispatched>, ApiError> {
        let mut out = Vec::with_capacity(granted.len());
        for grant in granted {
            let wf: Option<Workflow> = self.reader.workflow(&grant.workflow_id)?;
            let task = wf.as_ref().and_then(|w| w.task(&grant.task_id)).cloned();
            match task {
                Some(task) => out.push(Dispatched { task, grant }),
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
