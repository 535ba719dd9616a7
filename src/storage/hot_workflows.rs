//! The running workflows the state machine wrote last, kept decoded next to RocksDB.
//!
//! Every command on a workflow reads its record, changes it and writes it back, and the running state digest needs
//! the old record's hash: from RocksDB that is a memtable search and a MessagePack decode for the read, and a
//! second search plus a SHA-256 of the old bytes for the digest. A workflow written by an earlier entry is here
//! instead, decoded, with the digest term of the bytes stored for it. Reads on the API side (a poll loading the
//! tasks it leased) use it too.
//!
//! It never disagrees with RocksDB: the state machine puts a workflow here only after the WriteBatch holding it
//! was written, it is the only writer of workflow records, and a snapshot install empties it. Ended workflows
//! leave it (they are rarely written again); when it is full, an arbitrary entry makes room.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::digest::PairTerm;
use crate::engine::model::Workflow;

/// Most workflows kept.
pub const CAPACITY: usize = 4096;

/// A workflow as stored, decoded.
#[derive(Debug, Clone)]
pub struct HotWorkflow {
    /// The record.
    pub workflow: Arc<Workflow>,
    /// The digest term of its key and stored bytes.
    pub term: PairTerm,
}

/// The cache; shared by the state machine (which writes it) and its readers.
#[derive(Debug, Default)]
pub struct HotWorkflows {
    by_id: Mutex<HashMap<String, HotWorkflow>>,
}

impl HotWorkflows {
    /// The workflow with this id, if it is here.
    pub fn get(&self, id: &str) -> Option<HotWorkflow> {
        self.lock().get(id).cloned()
    }

    /// Records what was just written for a workflow: kept while it runs, dropped once it has ended.
    pub fn written(&self, workflow: Arc<Workflow>, term: PairTerm) {
        let mut by_id = self.lock();
        if workflow.status.is_terminal() {
            by_id.remove(&workflow.workflow_id);
            return;
        }
        if by_id.len() >= CAPACITY && !by_id.contains_key(&workflow.workflow_id) {
            if let Some(evicted) = by_id.keys().next().cloned() {
                by_id.remove(&evicted);
            }
        }
        by_id.insert(workflow.workflow_id.clone(), HotWorkflow { workflow, term });
    }

    /// Forgets everything (the state was replaced).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Workflows kept now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HotWorkflow>> {
        self.by_id.lock().expect("hot workflows lock is never poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::WorkflowStatus;

    fn workflow(id: &str, status: WorkflowStatus) -> Arc<Workflow> {
        let mut wf: Workflow = serde_json::from_value(serde_json::json!({
            "workflowId": id, "workflowName": "w", "workflowVersion": 1, "status": "RUNNING", "input": {},
            "output": {}, "createTime": 1, "startTime": 1, "workflowDefinition": {"name": "w", "tasks": []},
            "tasks": []
        }))
        .expect("a workflow");
        wf.status = status;
        Arc::new(wf)
    }

    #[test]
    fn keeps_running_workflows_and_drops_ended_ones() {
        let hot = HotWorkflows::default();
        let term = PairTerm::of(b"k", b"v");
        hot.written(workflow("a", WorkflowStatus::Running), term);
        hot.written(workflow("b", WorkflowStatus::Paused), term);
        assert_eq!(hot.get("a").map(|h| h.workflow.workflow_id.clone()), Some("a".to_string()));
        assert_eq!(hot.len(), 2);
        hot.written(workflow("a", WorkflowStatus::Completed), term);
        assert!(hot.get("a").is_none());
        hot.clear();
        assert!(hot.is_empty());
    }

    #[test]
    fn stays_within_its_capacity() {
        let hot = HotWorkflows::default();
        let term = PairTerm::of(b"k", b"v");
        for i in 0..CAPACITY + 10 {
            hot.written(workflow(&i.to_string(), WorkflowStatus::Running), term);
        }
        assert_eq!(hot.len(), CAPACITY);
        let last = (CAPACITY + 9).to_string();
        assert!(hot.get(&last).is_some(), "the newest write is always kept");
        hot.written(workflow(&last, WorkflowStatus::Running), PairTerm::of(b"k", b"w"));
        assert_eq!(hot.len(), CAPACITY, "rewriting a kept workflow evicts nothing");
        assert_eq!(hot.get(&last).map(|h| h.term), Some(PairTerm::of(b"k", b"w")));
    }
}
