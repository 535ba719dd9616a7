//! The checks of a workflow definition that need the registered state: every worker task's definition exists,
//! every sub-workflow it names exists, and no chain of sub-workflows leads back to itself. Run when a definition
//! is registered and when one is submitted inline, so a bad reference is refused up front instead of failing a
//! running workflow.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde_json::Value;

use super::definitions::{FieldError, WorkflowDef, WorkflowTask};
use super::system_tasks::is_system_type;
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

/// A workflow a definition starts by a literal name: SUB_WORKFLOW's `subWorkflowParam` or START_WORKFLOW's
/// `inputParameters.startWorkflow`.
struct Start {
    /// JSON path of the name.
    path: String,
    name: String,
    version: Option<u32>,
    /// SUB_WORKFLOW (must be registered) or START_WORKFLOW (may be registered later).
    sub_workflow: bool,
}

/// The workflows a definition starts by a literal name. Names from `${...}` and inline definitions are left out: the
/// start depth bound stops those chains when they run.
fn started_workflows(def: &WorkflowDef) -> Vec<Start> {
    let literal = |v: &Value| v.as_str().filter(|n| !n.contains("${")).map(str::to_string);
    let version = |v: &Value| v.get("version").and_then(Value::as_u64).and_then(|v| u32::try_from(v).ok());
    steps(def)
        .into_iter()
        .filter_map(|(path, t)| match t.task_type.as_str() {
            "SUB_WORKFLOW" => {
                let param = t.extra.get("subWorkflowParam")?;
                if param.get("workflowDefinition").is_some() {
                    return None;
                }
                Some(Start {
                    path: format!("{path}.subWorkflowParam.name"),
                    name: literal(param.get("name")?)?,
                    version: version(param),
                    sub_workflow: true,
                })
            }
            "START_WORKFLOW" => {
                let request = t.input_parameters.get("startWorkflow")?;
                if request.get("workflowDefinition").is_some() {
                    return None;
                }
                Some(Start {
                    path: format!("{path}.inputParameters.startWorkflow.name"),
                    name: literal(request.get("name")?)?,
                    version: version(request),
                    sub_workflow: false,
                })
            }
            _ => None,
        })
        .collect()
}

/// Problems with the definition's references to task and workflow definitions. `batch` holds definitions being
/// registered together with it (they may refer to each other).
///
/// Each distinct name is looked up once, however many steps name it: a definition may hold thousands of steps
/// naming the same task or workflow definition, and each lookup reads (and copies) a whole definition.
pub fn check(state: &impl StateView, def: &WorkflowDef, batch: &[WorkflowDef]) -> Result<Vec<FieldError>, StateError> {
    let mut errors = Vec::new();
    let mut registered: BTreeMap<&str, bool> = BTreeMap::new();
    for (path, task) in steps(def) {
        let worker_task = task.task_type == "SIMPLE";
        if !worker_task || is_system_type(&task.name) || task.embedded_task_def().is_some() {
            continue;
        }
        let known = match registered.get(task.name.as_str()) {
            Some(known) => *known,
            None => {
                let known = state.task_def(&task.name)?.is_some();
                registered.insert(&task.name, known);
                known
            }
        };
        if !known {
            errors.push(FieldError {
                path: format!("{path}.name"),
                message: format!("no task definition named \"{}\" is registered (register it first)", task.name),
            });
        }
    }
    let lookup = |name: &str, version: Option<u32>| -> Result<Option<WorkflowDef>, StateError> {
        if let Some(d) = batch.iter().find(|d| d.name == name && version.is_none_or(|v| i64::from(v) == d.version)) {
            return Ok(Some(d.clone()));
        }
        match version {
            Some(v) => state.workflow_def(name, v),
            None => state.latest_workflow_def(name),
        }
    };
    // What each distinct (name, version) started leads to.
    let mut verdicts: BTreeMap<(String, Option<u32>), Started> = BTreeMap::new();
    // Definitions (name, version as started) whose every start chain was walked without reaching `def`: no later
    // walk needs to enter them again.
    let mut cleared: BTreeSet<(String, Option<u32>)> = BTreeSet::new();
    for start in started_workflows(def) {
        let Start { path, name, version, sub_workflow } = start;
        if name == def.name {
            let how = if sub_workflow { "as a sub-workflow" } else { "with START_WORKFLOW" };
            errors.push(FieldError { path, message: format!("workflow \"{name}\" starts itself {how}") });
            continue;
        }
        let key = (name.clone(), version);
        let verdict = match verdicts.get(&key) {
            Some(verdict) => verdict.clone(),
            None => {
                let verdict = match lookup(&name, version)? {
                    None => Started::Unregistered,
                    Some(child) => match chain_back_to(&def.name, (child, version), &lookup, &mut cleared)? {
                        Some(chain) => Started::Recursive(chain),
                        None => Started::Fine,
                    },
                };
                verdicts.insert(key, verdict.clone());
                verdict
            }
        };
        match verdict {
            Started::Unregistered if sub_workflow => {
                let v = version.map_or("any version".to_string(), |v| format!("version {v}"));
                errors.push(FieldError {
                    path,
                    message: format!("no workflow definition \"{name}\" ({v}) is registered"),
                });
            }
            Started::Recursive(chain) => errors.push(FieldError {
                path,
                message: format!("workflow start chain {} is recursive", chain.join(" -> ")),
            }),
            Started::Unregistered | Started::Fine => {}
        }
    }
    Ok(errors)
}

/// What a definition started by name leads to.
#[derive(Debug, Clone)]
enum Started {
    /// No definition of that name (and version) is registered.
    Unregistered,
    /// A chain of starts back to the definition being checked: `[root, child, ..., root]`.
    Recursive(Vec<String>),
    /// Neither.
    Fine,
}

/// The chain of starts from `child` (started as that version) that leads back to `root`, if one does:
/// `[root, child, ..., root]`. Breadth first, each definition visited once, so the walk is bounded by the number
/// of definitions reachable. `cleared` holds definitions known not to lead back to `root` (from earlier walks):
/// they are not entered again, and a walk that finds no chain adds every definition it visited.
fn chain_back_to(
    root: &str,
    (child, version): (WorkflowDef, Option<u32>),
    lookup: &impl Fn(&str, Option<u32>) -> Result<Option<WorkflowDef>, StateError>,
    cleared: &mut BTreeSet<(String, Option<u32>)>,
) -> Result<Option<Vec<String>>, StateError> {
    let mut visited = vec![(child.name.clone(), version)];
    if cleared.contains(&visited[0]) {
        return Ok(None);
    }
    // name -> the name that starts it (on the first path found).
    let mut came_from: BTreeMap<String, String> = BTreeMap::from([(child.name.clone(), root.to_string())]);
    let mut frontier = VecDeque::from([child]);
    while let Some(current) = frontier.pop_front() {
        for next in started_workflows(&current) {
            if next.name == root {
                let mut chain = vec![root.to_string(), current.name.clone()];
                let mut at = current.name.clone();
                while let Some(prev) = came_from.get(&at).filter(|p| p.as_str() != root) {
                    chain.push(prev.clone());
                    at = prev.clone();
                }
                chain.push(root.to_string());
                // Built from the end: [root, current, ..., child, root] reversed is the path in start order.
                chain.reverse();
                return Ok(Some(chain));
            }
            let key = (next.name.clone(), next.version);
            if came_from.contains_key(&next.name) || cleared.contains(&key) {
                continue;
            }
            if let Some(found) = lookup(&next.name, next.version)? {
                came_from.insert(next.name.clone(), current.name.clone());
                visited.push(key);
                frontier.push_back(found);
            }
        }
    }
    cleared.extend(visited);
    Ok(None)
}
