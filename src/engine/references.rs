//! The checks of a workflow definition that need the registered state: every worker task's definition exists,
//! every sub-workflow it names exists, and no chain of sub-workflows leads back to itself. Run when a definition
//! is registered and when one is submitted inline, so a bad reference is refused up front instead of failing a
//! running workflow.

use std::collections::BTreeSet;

use serde_json::Value;

use super::definitions::{FieldError, WorkflowDef, WorkflowTask};
use super::exec::is_system_type;
use super::{StateError, StateView};

/// Every step of a definition with its JSON path.
fn steps(def: &WorkflowDef) -> Vec<(String, &WorkflowTask)> {
    let mut out = Vec::new();
    let mut stack: Vec<(String, &WorkflowTask)> =
        def.tasks.iter().enumerate().rev().map(|(i, t)| (format!("tasks[{i}]"), t)).collect();
    while let Some((path, task)) = stack.pop() {
        let mut children: Vec<_> = task.children().map(|(p, t)| (format!("{path}.{p}"), t)).collect();
        children.reverse();
        out.push((path, task));
        stack.extend(children);
    }
    out
}

/// The sub-workflows a definition starts by name: (path, name, version).
fn sub_workflows(def: &WorkflowDef) -> Vec<(String, String, Option<u32>)> {
    steps(def)
        .into_iter()
        .filter(|(_, t)| t.task_type == "SUB_WORKFLOW")
        .filter_map(|(path, t)| {
            let param = t.extra.get("subWorkflowParam")?;
            if param.get("workflowDefinition").is_some() {
                return None;
            }
            let name = param.get("name")?.as_str()?.to_string();
            if name.contains("${") {
                return None;
            }
            let version = param.get("version").and_then(Value::as_u64).and_then(|v| u32::try_from(v).ok());
            Some((format!("{path}.subWorkflowParam.name"), name, version))
        })
        .collect()
}

/// Problems with the definition's references to task and workflow definitions. `batch` holds definitions being
/// registered together with it (they may refer to each other).
pub fn check(state: &impl StateView, def: &WorkflowDef, batch: &[WorkflowDef]) -> Result<Vec<FieldError>, StateError> {
    let mut errors = Vec::new();
    for (path, task) in steps(def) {
        let worker_task = task.task_type == "SIMPLE";
        if worker_task
            && !is_system_type(&task.name)
            && task.embedded_task_def().is_none()
            && state.task_def(&task.name)?.is_none()
        {
            errors.push(FieldError {
                path: format!("{path}.name"),
                message: format!("no task definition named \"{}\" is registered (register it first)", task.name),
            });
        }
    }
    let in_batch = |name: &str, version: Option<u32>| {
        batch.iter().find(|d| d.name == name && version.is_none_or(|v| i64::from(v) == d.version)).cloned()
    };
    for (path, name, version) in sub_workflows(def) {
        if name == def.name {
            errors.push(FieldError { path, message: format!("workflow \"{name}\" starts itself as a sub-workflow") });
            continue;
        }
        let found = match in_batch(&name, version) {
            Some(d) => Some(d),
            None => match version {
                Some(v) => state.workflow_def(&name, v)?,
                None => state.latest_workflow_def(&name)?,
            },
        };
        let Some(child) = found else {
            let v = version.map_or("any version".to_string(), |v| format!("version {v}"));
            errors.push(FieldError { path, message: format!("no workflow definition \"{name}\" ({v}) is registered") });
            continue;
        };
        // Follow the chain: a cycle back to `def` would start sub-workflows forever.
        let mut seen = BTreeSet::from([def.name.clone()]);
        let mut frontier = vec![child];
        while let Some(current) = frontier.pop() {
            if !seen.insert(current.name.clone()) {
                continue;
            }
            for (_, next, next_version) in sub_workflows(&current) {
                if next == def.name {
                    errors.push(FieldError {
                        path: path.clone(),
                        message: format!(
                            "sub-workflow chain {} -> {} -> ... -> {} is recursive",
                            def.name, name, def.name
                        ),
                    });
                    frontier.clear();
                    break;
                }
                let found = match in_batch(&next, next_version) {
                    Some(d) => Some(d),
                    None => match next_version {
                        Some(v) => state.workflow_def(&next, v)?,
                        None => state.latest_workflow_def(&next)?,
                    },
                };
                frontier.extend(found);
            }
        }
    }
    Ok(errors)
}
