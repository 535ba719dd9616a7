//! The definitions, per-type counters and engine limits the state machine reads for nearly every command, kept
//! decoded.
//!
//! Starting a workflow reads its definition (the latest version: a scan that decodes every version), scheduling a
//! task reads its task definition, and every task that starts or ends reads its type's counters. From RocksDB each
//! is a memtable search and a MessagePack decode: at half load that was ~6% of the leader's CPU and ~11% of a
//! follower's (docs/perf.md, change 12). Here each is a hash lookup and a clone.
//!
//! Only the state machine's apply uses this (the API reads RocksDB), and it keeps it equal to RocksDB: once an
//! entry's WriteBatch is written, the definitions it wrote are forgotten (read back on next use) and the counters it
//! wrote are kept as written; a snapshot install empties it. It must never disagree with RocksDB: a replica that
//! restarted reads RocksDB, one that did not reads this, and both must decide alike (the replicas' state hashes,
//! compared by the chaos runs and the cluster tests, would show it).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use crate::engine::definitions::{TaskDef, WorkflowDef};
use crate::engine::limits::Limits;
use crate::engine::model::TypeStats;
use crate::engine::{self, Mutation};

/// Most records of one kind kept; past it that kind is emptied and fills again with what is used.
pub const CAPACITY: usize = 1024;

/// The cache. Absent records are kept too (`None`): a task type with no definition is common.
#[derive(Debug, Default)]
pub struct HotRecords {
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    task_defs: HashMap<String, Option<TaskDef>>,
    workflow_defs: HashMap<(String, u32), Option<WorkflowDef>>,
    latest_workflow_defs: HashMap<String, Option<WorkflowDef>>,
    type_stats: HashMap<String, Option<TypeStats>>,
    /// The cluster setting every workflow command applies with (None: not loaded yet).
    limits: Option<Limits>,
}

impl HotRecords {
    /// The task definition of that name, loaded with `load` when it is not kept.
    pub fn task_def<E>(
        &self,
        name: &str,
        load: impl FnOnce() -> Result<Option<TaskDef>, E>,
    ) -> Result<Option<TaskDef>, E> {
        get_or_load(&mut self.lock().task_defs, name, load)
    }

    /// One version of a workflow definition, loaded with `load` when it is not kept.
    pub fn workflow_def<E>(
        &self,
        name: &str,
        version: u32,
        load: impl FnOnce() -> Result<Option<WorkflowDef>, E>,
    ) -> Result<Option<WorkflowDef>, E> {
        get_or_load(&mut self.lock().workflow_defs, &(name.to_string(), version), load)
    }

    /// The latest version of a workflow definition, loaded with `load` when it is not kept.
    pub fn latest_workflow_def<E>(
        &self,
        name: &str,
        load: impl FnOnce() -> Result<Option<WorkflowDef>, E>,
    ) -> Result<Option<WorkflowDef>, E> {
        get_or_load(&mut self.lock().latest_workflow_defs, name, load)
    }

    /// A task type's counters, loaded with `load` when they are not kept.
    pub fn type_stats<E>(
        &self,
        task_type: &str,
        load: impl FnOnce() -> Result<Option<TypeStats>, E>,
    ) -> Result<Option<TypeStats>, E> {
        get_or_load(&mut self.lock().type_stats, task_type, load)
    }

    /// The engine's limits, loaded with `load` when they are not kept.
    pub fn limits<E>(&self, load: impl FnOnce() -> Result<Limits, E>) -> Result<Limits, E> {
        if let Some(limits) = &self.lock().limits {
            return Ok(limits.clone());
        }
        let limits = load()?;
        self.lock().limits = Some(limits.clone());
        Ok(limits)
    }

    /// Takes in what an entry wrote, once its WriteBatch is written: definitions are forgotten, counters and
    /// limits kept as written.
    pub fn written(&self, mutations: &[Mutation]) {
        let mut kept = self.lock();
        for mutation in mutations {
            match mutation {
                Mutation::PutTaskDef(def) => {
                    kept.task_defs.remove(&def.name);
                }
                Mutation::DeleteTaskDef { name } => {
                    kept.task_defs.remove(name);
                }
                Mutation::PutWorkflowDef(def) => kept.forget_workflow_def(&def.name, engine::workflow_version(def)),
                Mutation::DeleteWorkflowDef { name, version } => kept.forget_workflow_def(name, *version),
                Mutation::PutTypeStats { task_type, stats } => {
                    insert_bounded(&mut kept.type_stats, task_type.clone(), Some(*stats));
                }
                Mutation::PutWorkflow(_)
                | Mutation::PutTaskIndex { .. }
                | Mutation::DeleteTaskIndex { .. }
                | Mutation::PutIdempotencyKey { .. }
                | Mutation::PutBenchValue { .. } => {}
                Mutation::PutLimits(limits) => kept.limits = Some(limits.clone()),
            }
        }
    }

    /// Forgets everything (the state was replaced).
    pub fn clear(&self) {
        *self.lock() = Kept::default();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().expect("hot records lock is never poisoned")
    }
}

impl Kept {
    fn forget_workflow_def(&mut self, name: &str, version: u32) {
        self.workflow_defs.remove(&(name.to_string(), version));
        self.latest_workflow_defs.remove(name);
    }
}

fn get_or_load<K, Q, V, E>(
    map: &mut HashMap<K, Option<V>>,
    key: &Q,
    load: impl FnOnce() -> Result<Option<V>, E>,
) -> Result<Option<V>, E>
where
    K: Eq + Hash + std::borrow::Borrow<Q>,
    Q: Eq + Hash + ToOwned<Owned = K> + ?Sized,
    V: Clone,
{
    if let Some(value) = map.get(key) {
        return Ok(value.clone());
    }
    let value = load()?;
    insert_bounded(map, key.to_owned(), value.clone());
    Ok(value)
}

fn insert_bounded<K: Eq + Hash, V>(map: &mut HashMap<K, V>, key: K, value: V) {
    if map.len() >= CAPACITY && !map.contains_key(&key) {
        map.clear();
    }
    map.insert(key, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task_def(name: &str, retries: u32) -> TaskDef {
        let json = serde_json::json!({"name": name, "retryCount": retries, "timeoutSeconds": 0});
        crate::engine::definitions::parse_json(&json.to_string()).expect("a task definition")
    }

    #[test]
    fn loads_once_and_forgets_what_an_entry_wrote() {
        let hot = HotRecords::default();
        let mut loads = 0;
        let mut load = |def: Option<TaskDef>| {
            loads += 1;
            Ok::<_, ()>(def)
        };
        assert_eq!(hot.task_def("a", || load(Some(task_def("a", 1)))), Ok(Some(task_def("a", 1))));
        assert_eq!(hot.task_def("a", || load(None)), Ok(Some(task_def("a", 1))), "kept, not loaded again");
        assert_eq!(hot.task_def("missing", || load(None)), Ok(None));
        assert_eq!(hot.task_def("missing", || load(Some(task_def("x", 0)))), Ok(None), "absence is kept too");
        assert_eq!(loads, 2);

        hot.written(&[Mutation::PutTaskDef(task_def("a", 5)), Mutation::DeleteTaskDef { name: "missing".into() }]);
        assert_eq!(hot.task_def("a", || Ok::<_, ()>(Some(task_def("a", 5)))), Ok(Some(task_def("a", 5))));
        assert_eq!(
            hot.task_def("missing", || Ok::<_, ()>(Some(task_def("missing", 2)))).map(|d| d.is_some()),
            Ok(true)
        );

        // Counters are kept as written, the last write of an entry winning.
        let stats = |n| TypeStats { in_progress: n, ..TypeStats::default() };
        hot.written(&[
            Mutation::PutTypeStats { task_type: "t".into(), stats: stats(1) },
            Mutation::PutTypeStats { task_type: "t".into(), stats: stats(2) },
        ]);
        assert_eq!(hot.type_stats("t", || Err("not loaded")), Ok(Some(stats(2))));

        // A failed load keeps nothing.
        assert_eq!(hot.task_def("b", || Err::<Option<TaskDef>, _>("disk")), Err("disk"));
        assert_eq!(hot.task_def("b", || Ok::<_, &str>(None)), Ok(None));

        hot.clear();
        assert_eq!(hot.type_stats("t", || Ok::<_, ()>(None)), Ok(None));
    }

    #[test]
    fn stays_within_its_capacity() {
        let hot = HotRecords::default();
        for i in 0..CAPACITY + 5 {
            let _ = hot.type_stats(&i.to_string(), || Ok::<_, ()>(None));
        }
        let kept = hot.lock().type_stats.len();
        assert!((1..=CAPACITY).contains(&kept), "{kept} kept");
    }
}
