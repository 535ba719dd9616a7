//! The running workflows the state machine wrote last, kept decoded next to RocksDB.
//!
//! Every command on a workflow reads its record, changes it and writes it back, and the running state digest needs
//! the old record's hash: from RocksDB that is a memtable search and a MessagePack decode for the read, and a
//! second search plus a SHA-256 of the old bytes for the digest. A workflow written by an earlier entry is here
//! instead, decoded, with the digest term of the bytes stored for it. Reads on the API side (a poll loading the
//! tasks it leased) use it too.
//!
//! It never disagrees with RocksDB: the state machine takes the workflows an entry writes out of it before the
//! entry's WriteBatch is written (a read in between goes to RocksDB) and puts them back only after, it is the only
//! writer of workflow records, and a snapshot install empties it. Ended workflows leave it (they are rarely written
//! again); when it holds [`CAPACITY`] workflows or [`CAPACITY_BYTES`] of records, arbitrary entries make room.
//!
//! A kept workflow is the engine's own value, not one decoded from the stored bytes, while a replica that restarted
//! or evicted it decodes it: the two must be equal (the engine's tests check every workflow they write,
//! `engine::memory`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::digest::PairTerm;
use crate::engine::model::Workflow;

/// Most workflows kept.
pub const CAPACITY: usize = 4096;
/// Most bytes of records kept, counted uncompressed (the decoded form takes a few times that).
pub const CAPACITY_BYTES: usize = 32 << 20;

/// A workflow as stored, decoded.
#[derive(Debug, Clone)]
pub struct HotWorkflow {
    /// The record.
    pub workflow: Arc<Workflow>,
    /// The digest term of its key and stored bytes.
    pub term: PairTerm,
    /// The stored record's length uncompressed.
    pub bytes: usize,
}

/// The cache; shared by the state machine (which writes it) and its readers.
#[derive(Debug, Default)]
pub struct HotWorkflows {
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    by_id: HashMap<String, HotWorkflow>,
    /// The sum of their `bytes`.
    bytes: usize,
}

impl Kept {
    fn remove(&mut self, id: &str) {
        if let Some(gone) = self.by_id.remove(id) {
            self.bytes -= gone.bytes;
        }
    }
}

impl HotWorkflows {
    /// The workflow with this id, if it is here.
    pub fn get(&self, id: &str) -> Option<HotWorkflow> {
        self.lock().by_id.get(id).cloned()
    }

    /// Takes these workflows out, before a write of them: until [`HotWorkflows::written`], reads go to RocksDB.
    pub fn forget<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut kept = self.lock();
        for id in ids {
            kept.remove(id);
        }
    }

    /// Records what was just written for a workflow (`bytes` long uncompressed, with that digest term): kept while
    /// it runs, dropped once it has ended.
    pub fn written(&self, workflow: Arc<Workflow>, term: PairTerm, bytes: usize) {
        let mut kept = self.lock();
        kept.remove(&workflow.workflow_id);
        if workflow.status.is_terminal() || bytes > CAPACITY_BYTES {
            return;
        }
        while kept.by_id.len() >= CAPACITY || kept.bytes + bytes > CAPACITY_BYTES {
            let Some(evicted) = kept.by_id.keys().next().cloned() else { break };
            kept.remove(&evicted);
        }
        kept.bytes += bytes;
        kept.by_id.insert(workflow.workflow_id.clone(), HotWorkflow { workflow, term, bytes });
    }

    /// Forgets everything (the state was replaced).
    pub fn clear(&self) {
        let mut kept = self.lock();
        kept.by_id.clear();
        kept.bytes = 0;
    }

    /// Workflows kept now.
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// Bytes of stored records kept now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().expect("hot workflows lock is never poisoned")
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
        hot.written(workflow("a", WorkflowStatus::Running), term, 10);
        hot.written(workflow("b", WorkflowStatus::Paused), term, 20);
        assert_eq!(hot.get("a").map(|h| h.workflow.workflow_id.clone()), Some("a".to_string()));
        assert_eq!((hot.len(), hot.bytes()), (2, 30));
        hot.written(workflow("a", WorkflowStatus::Completed), term, 12);
        assert!(hot.get("a").is_none());
        assert_eq!((hot.len(), hot.bytes()), (1, 20));
        hot.forget(["b", "never-kept"]);
        assert!(hot.is_empty());
        assert_eq!(hot.bytes(), 0);
        hot.written(workflow("c", WorkflowStatus::Running), term, 5);
        hot.clear();
        assert!(hot.is_empty());
        assert_eq!(hot.bytes(), 0);
    }

    #[test]
    fn stays_within_its_capacity() {
        let hot = HotWorkflows::default();
        let term = PairTerm::of(b"k", b"v");
        for i in 0..CAPACITY + 10 {
            hot.written(workflow(&i.to_string(), WorkflowStatus::Running), term, 1);
        }
        assert_eq!((hot.len(), hot.bytes()), (CAPACITY, CAPACITY));
        let last = (CAPACITY + 9).to_string();
        assert!(hot.get(&last).is_some(), "the newest write is always kept");
        hot.written(workflow(&last, WorkflowStatus::Running), PairTerm::of(b"k", b"w"), 1);
        assert_eq!(hot.len(), CAPACITY, "rewriting a kept workflow evicts nothing");
        assert_eq!(hot.get(&last).map(|h| h.term), Some(PairTerm::of(b"k", b"w")));

        // The byte budget: a record as large as all of it pushes everything else out; a larger one is not kept.
        hot.written(workflow("big", WorkflowStatus::Running), term, CAPACITY_BYTES);
        assert_eq!((hot.len(), hot.bytes()), (1, CAPACITY_BYTES));
        hot.written(workflow("huge", WorkflowStatus::Running), term, CAPACITY_BYTES + 1);
        assert!(hot.get("huge").is_none());
        assert_eq!(hot.len(), 1);
    }
}
