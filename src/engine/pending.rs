//! What is waiting in the applied state, indexed for the leader: worker tasks ready to hand out, per queue,
//! workflows with a timer, and the tasks each poll leased (to answer a repeated poll). Kept in memory on every node,
//! updated from each applied workflow, rebuilt from the state on start-up and after a snapshot install, so a new
//! leader serves polls and fires timers at once.
//!
//! Pure data (ordered maps, no I/O); which tasks count as ready and when a workflow's timer is due are the
//! engine's rules, so they live here, beside the engine.

use std::collections::{BTreeMap, BTreeSet};

use super::evaluation::awaiting;
use super::model::{TaskStatus, Workflow, WorkflowStatus};
use super::system_tasks::is_system_type;

/// A task a worker could be handed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// The workflow.
    pub workflow_id: String,
    /// The task.
    pub task_id: String,
    /// Not before this time (retry delay, startDelay, callbackAfterSeconds), ms.
    pub visible_from: u64,
}

/// The name of a task queue: the task type, prefixed with the domain (`domain:type`) when the workflow maps the
/// type (or `*`) to a domain, as Conductor does.
pub fn queue_name(task_type: &str, domain: Option<&str>) -> String {
    match domain {
        Some(d) if !d.is_empty() => format!("{d}:{task_type}"),
        _ => task_type.to_string(),
    }
}

/// Order within a queue: (priority rank, scheduled time, task id); higher workflow priority first.
type QueueKey = (u32, u64, String);

/// What the index holds for one workflow, to remove it when the workflow changes.
#[derive(Debug, Default, Clone)]
struct Entries {
    /// (queue, key) of each ready task.
    queued: Vec<(String, QueueKey)>,
    /// The workflow's timer (0: none).
    tick: u64,
    /// (poll id, task id) of each leased task.
    leased: Vec<(String, String)>,
    /// Task ids waiting for an evaluation.
    evaluating: Vec<String>,
}

/// Ready tasks per queue and timers per workflow.
#[derive(Debug, Default, Clone)]
pub struct PendingIndex {
    /// queue -> key -> task.
    queues: BTreeMap<String, BTreeMap<QueueKey, Ready>>,
    /// workflow id -> its entries, to remove them when the workflow changes.
    entries: BTreeMap<String, Entries>,
    /// (due ms, workflow id).
    timers: BTreeSet<(u64, String)>,
    /// poll id -> (workflow id, task id) of the IN_PROGRESS tasks that poll leased.
    polls: BTreeMap<String, BTreeSet<(String, String)>>,
    /// (workflow id, task id) -> round, of the tasks of running workflows that wait for their code to be evaluated.
    evaluations: BTreeMap<(String, String), u32>,
}

impl PendingIndex {
    /// Replaces whatever the index held for this workflow with what it holds now.
    pub fn update(&mut self, wf: &Workflow) {
        self.remove(&wf.workflow_id);
        let mut keys = Vec::new();
        let mut leased = Vec::new();
        // Also while the workflow is paused: its workers still hold their tasks.
        for t in wf.tasks.iter().filter(|t| t.status == TaskStatus::InProgress) {
            if let Some(poll) = &t.poll_id {
                self.polls.entry(poll.clone()).or_default().insert((wf.workflow_id.clone(), t.task_id.clone()));
                leased.push((poll.clone(), t.task_id.clone()));
            }
        }
        if wf.status == WorkflowStatus::Running {
            for t in wf.tasks.iter().filter(|t| t.status == TaskStatus::Scheduled && !is_system_type(&t.task_type)) {
                let domain = wf.task_to_domain.get(&t.task_type).or_else(|| wf.task_to_domain.get("*"));
                let queue = queue_name(&t.task_type, domain.map(String::as_str));
                let key = (99u32.saturating_sub(wf.priority.min(99)), t.scheduled_time, t.task_id.clone());
                let ready = Ready {
                    workflow_id: wf.workflow_id.clone(),
                    task_id: t.task_id.clone(),
                    visible_from: t.visible_from,
                };
                self.queues.entry(queue.clone()).or_default().insert(key.clone(), ready);
                keys.push((queue, key));
            }
        }
        let mut evaluating = Vec::new();
        if wf.status == WorkflowStatus::Running {
            for (task_id, round) in awaiting(wf) {
                self.evaluations.insert((wf.workflow_id.clone(), task_id.to_string()), round);
                evaluating.push(task_id.to_string());
            }
        }
        let tick = wf.next_tick_ms;
        if tick > 0 {
            self.timers.insert((tick, wf.workflow_id.clone()));
        }
        if !keys.is_empty() || tick > 0 || !leased.is_empty() || !evaluating.is_empty() {
            self.entries.insert(wf.workflow_id.clone(), Entries { queued: keys, tick, leased, evaluating });
        }
    }

    /// Forgets a workflow.
    pub fn remove(&mut self, workflow_id: &str) {
        if let Some(Entries { queued, tick, leased, evaluating }) = self.entries.remove(workflow_id) {
            for task_id in evaluating {
                self.evaluations.remove(&(workflow_id.to_string(), task_id));
            }
            for (poll, task_id) in leased {
                if let Some(tasks) = self.polls.get_mut(&poll) {
                    tasks.remove(&(workflow_id.to_string(), task_id));
                    if tasks.is_empty() {
                        self.polls.remove(&poll);
                    }
                }
            }
            for (queue, key) in queued {
                if let Some(q) = self.queues.get_mut(&queue) {
                    q.remove(&key);
                    if q.is_empty() {
                        self.queues.remove(&queue);
                    }
                }
            }
            self.timers.remove(&(tick, workflow_id.to_string()));
        }
    }

    /// Up to `limit` tasks of a queue visible at `now_ms`, in priority then scheduling order, skipping `skip`.
    pub fn ready(&self, queue: &str, now_ms: u64, limit: usize, skip: &BTreeSet<String>) -> Vec<Ready> {
        let Some(q) = self.queues.get(queue) else { return Vec::new() };
        q.values().filter(|r| r.visible_from <= now_ms && !skip.contains(&r.task_id)).take(limit).cloned().collect()
    }

    /// (workflow id, task id) of the tasks the poll `poll_id` leased that are still IN_PROGRESS.
    pub fn leased_by(&self, poll_id: &str) -> Vec<(String, String)> {
        self.polls.get(poll_id).map(|t| t.iter().cloned().collect()).unwrap_or_default()
    }

    /// The earliest time a task of this queue becomes visible, if any is waiting.
    pub fn next_visible(&self, queue: &str) -> Option<u64> {
        self.queues.get(queue)?.values().map(|r| r.visible_from).min()
    }

    /// Tasks waiting per queue.
    pub fn depths(&self) -> BTreeMap<String, usize> {
        self.queues.iter().map(|(q, t)| (q.clone(), t.len())).collect()
    }

    /// Workflows whose timer is due at `now_ms`, earliest first, at most `limit`.
    pub fn due(&self, now_ms: u64, limit: usize) -> Vec<String> {
        self.timers.iter().take_while(|(at, _)| *at <= now_ms).take(limit).map(|(_, id)| id.clone()).collect()
    }

    /// Up to `limit` tasks waiting for an evaluation, (workflow id, task id, round), leaving out `skip` (those
    /// already being evaluated).
    pub fn evaluations(&self, limit: usize, skip: &BTreeSet<(String, String)>) -> Vec<(String, String, u32)> {
        self.evaluations
            .iter()
            .filter(|(key, _)| !skip.contains(*key))
            .take(limit)
            .map(|((w, t), round)| (w.clone(), t.clone(), *round))
            .collect()
    }

    /// How many tasks wait for an evaluation.
    pub fn evaluations_waiting(&self) -> usize {
        self.evaluations.len()
    }

    /// The earliest timer.
    pub fn next_timer(&self) -> Option<u64> {
        self.timers.first().map(|(at, _)| *at)
    }
}
