//! Conductor's metadata documents, TaskDef and WorkflowDef, with Conductor's JSON field names and defaults, and
//! their validation.
//!
//! Owns: the shape of definitions and the rules a definition must meet before it is written. Fields this step does
//! not interpret yet are kept verbatim in `extra`, so a Conductor document round-trips without losing anything.
//! Must not touch: storage, the network, clocks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A problem with one field of a definition; `path` is the JSON path from the document's root
/// (`tasks[2].taskReferenceName`), as Conductor's `validationErrors` report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Where in the document, e.g. `tasks[0].name`.
    pub path: String,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

impl FieldError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { path: path.into(), message: message.into() }
    }
}

/// How a task's retries are spaced (Conductor's `retryLogic`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RetryLogic {
    /// `retryDelaySeconds` between attempts.
    #[default]
    Fixed,
    /// `retryDelaySeconds * backoffScaleFactor ^ attempt`.
    ExponentialBackoff,
    /// `retryDelaySeconds * backoffScaleFactor * attempt`.
    LinearBackoff,
}

/// What happens when a task times out (Conductor's TaskDef `timeoutPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskTimeoutPolicy {
    /// Retry the task (counts against retryCount).
    Retry,
    /// Time the whole workflow out.
    #[default]
    TimeOutWf,
    /// Record the timeout and carry on.
    AlertOnly,
}

/// What happens when a workflow times out (Conductor's WorkflowDef `timeoutPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkflowTimeoutPolicy {
    /// Mark the workflow TIMED_OUT.
    TimeOutWf,
    /// Record the timeout and carry on.
    #[default]
    AlertOnly,
}

fn default_retry_count() -> i64 {
    3
}
fn default_retry_delay_seconds() -> i64 {
    60
}
fn default_response_timeout_seconds() -> i64 {
    3600
}
fn default_backoff_scale_factor() -> i64 {
    1
}
fn default_version() -> i64 {
    1
}
fn default_schema_version() -> i64 {
    2
}
fn default_true() -> bool {
    true
}
fn default_task_type() -> String {
    "SIMPLE".to_string()
}
fn is_false(b: &bool) -> bool {
    !*b
}

/// A Conductor task definition (`TaskDef`): the retry, timeout and rate-limit policy of one task type.
/// Integer fields are `i64` so that a negative value is reported by [`validate_task_def`] with its field name
/// rather than as an opaque parse error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskDef {
    /// The task type's name, as workers poll for it.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Free text.
    pub description: Option<String>,
    /// Retries after the first attempt fails (Conductor default 3).
    #[serde(default = "default_retry_count")]
    pub retry_count: i64,
    /// Spacing of retries.
    #[serde(default)]
    pub retry_logic: RetryLogic,
    /// Base delay between attempts, seconds (default 60).
    #[serde(default = "default_retry_delay_seconds")]
    pub retry_delay_seconds: i64,
    /// Multiplier for the backoff retry logics (default 1).
    #[serde(default = "default_backoff_scale_factor")]
    pub backoff_scale_factor: i64,
    /// Upper bound of a backoff delay, seconds; 0 means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retry_delay_seconds: Option<i64>,
    /// Total time an attempt may take once started, seconds; 0 means no limit.
    #[serde(default)]
    pub timeout_seconds: i64,
    /// What a timeout does.
    #[serde(default)]
    pub timeout_policy: TaskTimeoutPolicy,
    /// Time a worker may hold an attempt without an update, seconds (default 3600).
    #[serde(default = "default_response_timeout_seconds")]
    pub response_timeout_seconds: i64,
    /// Time a scheduled attempt may wait to be polled, seconds; absent means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_timeout_seconds: Option<i64>,
    /// At most this many dispatches per `rateLimitFrequencyInSeconds`; 0 or absent means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_frequency: Option<i64>,
    /// The window of `rateLimitPerFrequency`, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_frequency_in_seconds: Option<i64>,
    /// At most this many attempts of this type in progress at once; absent means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent_exec_limit: Option<i64>,
    /// Default input merged under each task's own input.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub input_template: BTreeMap<String, Value>,
    /// Documented input keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_keys: Vec<String>,
    /// Documented output keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_keys: Vec<String>,
    /// Owner's e-mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_email: Option<String>,
    /// Set by the cluster when first registered: the leader's clock, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<u64>,
    /// Set by the cluster on each later change, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<u64>,
    /// Conductor fields this version does not interpret, kept as given.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// One step of a workflow (`WorkflowTask`). The type-specific fields of control-flow tasks are typed where this
/// step needs them; the engine (step 2) reads the rest from `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowTask {
    /// The task definition's name (for SIMPLE tasks, the type workers poll).
    pub name: String,
    /// Unique within the workflow; how expressions refer to this step.
    pub task_reference_name: String,
    /// Conductor's task type (SIMPLE, SWITCH, FORK_JOIN, ...).
    #[serde(rename = "type", default = "default_task_type")]
    pub task_type: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Input mapping, with `${...}` expressions.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub input_parameters: BTreeMap<String, Value>,
    /// A failure of this step does not fail the workflow.
    #[serde(default, skip_serializing_if = "is_false")]
    pub optional: bool,
    /// Seconds to wait before the step is scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_delay: Option<i64>,
    /// The step completes only through an external update.
    #[serde(default, skip_serializing_if = "is_false")]
    pub async_complete: bool,
    /// SWITCH/DECISION branches.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub decision_cases: BTreeMap<String, Vec<WorkflowTask>>,
    /// SWITCH/DECISION default branch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_case: Vec<WorkflowTask>,
    /// FORK_JOIN branches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fork_tasks: Vec<Vec<WorkflowTask>>,
    /// DO_WHILE body.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loop_over: Vec<WorkflowTask>,
    /// Conductor fields this version does not interpret, kept as given.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl WorkflowTask {
    /// A type-specific string field kept in `extra` (`expression`, `loopCondition`, ...).
    pub fn extra_str(&self, key: &str) -> Option<String> {
        self.extra.get(key).and_then(Value::as_str).map(str::to_string)
    }

    /// A JOIN's `joinOn` reference names.
    pub fn join_on(&self) -> Vec<String> {
        match self.extra.get("joinOn") {
            Some(Value::Array(refs)) => refs.iter().filter_map(|r| r.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        }
    }

    /// A task definition given inline (`taskDefinition`), used when none is registered under the step's name.
    pub fn embedded_task_def(&self) -> Option<TaskDef> {
        self.extra.get("taskDefinition").and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// The steps nested inside this one (branches, fork lanes, loop body), in document order.
    pub fn children(&self) -> impl Iterator<Item = (String, &WorkflowTask)> {
        let cases = self.decision_cases.iter().flat_map(|(case, tasks)| {
            tasks.iter().enumerate().map(move |(i, t)| (format!("decisionCases.{case}[{i}]"), t))
        });
        let default = self.default_case.iter().enumerate().map(|(i, t)| (format!("defaultCase[{i}]"), t));
        let forks = self.fork_tasks.iter().enumerate().flat_map(|(lane, tasks)| {
            tasks.iter().enumerate().map(move |(i, t)| (format!("forkTasks[{lane}][{i}]"), t))
        });
        let body = self.loop_over.iter().enumerate().map(|(i, t)| (format!("loopOver[{i}]"), t));
        cases.chain(default).chain(forks).chain(body)
    }
}

/// A Conductor workflow definition (`WorkflowDef`), identified by name and version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowDef {
    /// The workflow's name.
    pub name: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Version, from 1 (Conductor's default).
    #[serde(default = "default_version")]
    pub version: i64,
    /// The steps, in order.
    #[serde(default)]
    pub tasks: Vec<WorkflowTask>,
    /// Documented input keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_parameters: Vec<String>,
    /// Output mapping; absent means the last task's output.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub output_parameters: BTreeMap<String, Value>,
    /// Default input merged under each start's input.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub input_template: BTreeMap<String, Value>,
    /// Initial workflow variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, Value>,
    /// Workflow started when this one fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_workflow: Option<String>,
    /// Conductor's DSL version; only 2 is supported.
    #[serde(default = "default_schema_version")]
    pub schema_version: i64,
    /// Whether a completed run may be restarted.
    #[serde(default = "default_true")]
    pub restartable: bool,
    /// Time the whole run may take, seconds; 0 means no limit.
    #[serde(default)]
    pub timeout_seconds: i64,
    /// What a workflow timeout does.
    #[serde(default)]
    pub timeout_policy: WorkflowTimeoutPolicy,
    /// Owner's e-mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_email: Option<String>,
    /// Set by the cluster when first registered, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<u64>,
    /// Set by the cluster on each later change, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<u64>,
    /// Conductor fields this version does not interpret, kept as given.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Conductor's task types that a workflow may name. Anything else is refused at registration.
pub const TASK_TYPES: &[&str] = &[
    "SIMPLE",
    "SWITCH",
    "DECISION",
    "FORK_JOIN",
    "FORK",
    "JOIN",
    "FORK_JOIN_DYNAMIC",
    "DO_WHILE",
    "SUB_WORKFLOW",
    "START_WORKFLOW",
    "WAIT",
    "HUMAN",
    "SET_VARIABLE",
    "TERMINATE",
    "DYNAMIC",
    "INLINE",
    "JSON_JQ_TRANSFORM",
    "NOOP",
    "HTTP",
    "EVENT",
];

/// Parses a JSON document into `T`, naming the offending field on failure (`tasks[0].retryCount: invalid type`).
pub fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, FieldError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        FieldError::new(path, err.into_inner().to_string())
    })
}

/// Checks a name the way Conductor does, plus what Baton's key layout needs (no control characters).
fn check_name(path: &str, name: &str, errors: &mut Vec<FieldError>) {
    if name.trim().is_empty() {
        errors.push(FieldError::new(path, "must not be empty"));
    } else if name.contains(':') || name.chars().any(char::is_control) {
        errors.push(FieldError::new(path, "must not contain ':' or control characters"));
    } else if name.len() > 512 {
        errors.push(FieldError::new(path, "must be at most 512 bytes"));
    }
}

fn check_non_negative(path: &str, value: i64, errors: &mut Vec<FieldError>) {
    if value < 0 {
        errors.push(FieldError::new(path, format!("must be >= 0 (got {value})")));
    }
}

/// Every problem with a task definition; empty when it may be registered.
pub fn validate_task_def(def: &TaskDef) -> Vec<FieldError> {
    let mut errors = Vec::new();
    check_name("name", &def.name, &mut errors);
    check_non_negative("retryCount", def.retry_count, &mut errors);
    check_non_negative("retryDelaySeconds", def.retry_delay_seconds, &mut errors);
    check_non_negative("timeoutSeconds", def.timeout_seconds, &mut errors);
    if def.backoff_scale_factor < 1 {
        errors.push(FieldError::new("backoffScaleFactor", "must be >= 1"));
    }
    if def.response_timeout_seconds < 1 {
        errors.push(FieldError::new("responseTimeoutSeconds", "must be >= 1"));
    } else if def.timeout_seconds > 0 && def.response_timeout_seconds > def.timeout_seconds {
        errors.push(FieldError::new(
            "responseTimeoutSeconds",
            format!("must be <= timeoutSeconds (got {} > {})", def.response_timeout_seconds, def.timeout_seconds),
        ));
    }
    let optional = [
        ("maxRetryDelaySeconds", def.max_retry_delay_seconds),
        ("pollTimeoutSeconds", def.poll_timeout_seconds),
        ("rateLimitPerFrequency", def.rate_limit_per_frequency),
        ("rateLimitFrequencyInSeconds", def.rate_limit_frequency_in_seconds),
        ("concurrentExecLimit", def.concurrent_exec_limit),
    ];
    for (path, value) in optional {
        if let Some(value) = value {
            check_non_negative(path, value, &mut errors);
        }
    }
    errors
}

/// Every problem with a workflow definition; empty when it may be registered. Semantic checks of each task type's
/// own fields arrive with the engine.
pub fn validate_workflow_def(def: &WorkflowDef) -> Vec<FieldError> {
    let mut errors = Vec::new();
    check_name("name", &def.name, &mut errors);
    if def.version < 1 || def.version > i64::from(u32::MAX) {
        errors.push(FieldError::new("version", format!("must be between 1 and {} (got {})", u32::MAX, def.version)));
    }
    if def.schema_version != 2 {
        errors.push(FieldError::new("schemaVersion", format!("only 2 is supported (got {})", def.schema_version)));
    }
    check_non_negative("timeoutSeconds", def.timeout_seconds, &mut errors);
    if def.tasks.is_empty() {
        errors.push(FieldError::new("tasks", "a workflow needs at least one task"));
    }
    let mut seen = BTreeMap::new();
    let mut stack: Vec<(String, &WorkflowTask)> =
        def.tasks.iter().enumerate().rev().map(|(i, t)| (format!("tasks[{i}]"), t)).collect();
    while let Some((path, task)) = stack.pop() {
        check_name(&format!("{path}.name"), &task.name, &mut errors);
        let ref_path = format!("{path}.taskReferenceName");
        if task.task_reference_name.trim().is_empty() {
            errors.push(FieldError::new(ref_path, "must not be empty"));
        } else if let Some(first) = seen.insert(task.task_reference_name.clone(), path.clone()) {
            errors.push(FieldError::new(
                ref_path,
                format!("duplicate reference name \"{}\" (first used at {first})", task.task_reference_name),
            ));
        }
        if task.task_reference_name.contains("__") {
            errors.push(FieldError::new(
                format!("{path}.taskReferenceName"),
                "must not contain \"__\" (reserved for DO_WHILE iteration suffixes)",
            ));
        }
        if !TASK_TYPES.contains(&task.task_type.as_str()) {
            errors.push(FieldError::new(
                format!("{path}.type"),
                format!("unknown task type '{}' (known: {})", task.task_type, TASK_TYPES.join(", ")),
            ));
        } else if UNSUPPORTED_TASK_TYPES.contains(&task.task_type.as_str()) {
            errors.push(FieldError::new(
                format!("{path}.type"),
                format!("task type {} is not supported yet (see README, \"What is not done\")", task.task_type),
            ));
        }
        if let Some(delay) = task.start_delay {
            check_non_negative(&format!("{path}.startDelay"), delay, &mut errors);
        }
        check_type_fields(&path, task, &mut errors);
        for problem in super::expr::check_template(&serde_json::to_value(&task.input_parameters).unwrap_or_default()) {
            let at = if problem.path.is_empty() { String::new() } else { format!(".{}", problem.path) };
            errors.push(FieldError::new(format!("{path}.inputParameters{at}"), problem.message));
        }
        let mut children: Vec<_> = task.children().map(|(p, t)| (format!("{path}.{p}"), t)).collect();
        children.reverse();
        stack.extend(children);
    }
    for problem in super::expr::check_template(&serde_json::to_value(&def.output_parameters).unwrap_or_default()) {
        let at = if problem.path.is_empty() { String::new() } else { format!(".{}", problem.path) };
        errors.push(FieldError::new(format!("outputParameters{at}"), problem.message));
    }
    check_lists(&def.tasks, "tasks", &seen, &mut errors);
    errors
}

/// Task types that parse but that this version does not run; refused at registration rather than failing later.
pub const UNSUPPORTED_TASK_TYPES: &[&str] = &["HTTP", "EVENT"];

fn require_str(path: &str, task: &WorkflowTask, field: &str, errors: &mut Vec<FieldError>) -> Option<String> {
    match task.extra_str(field) {
        Some(v) if !v.trim().is_empty() => Some(v),
        _ => {
            errors.push(FieldError::new(
                format!("{path}.{field}"),
                format!("{field} field is required for taskType: {} taskName: {}", task.task_type, task.name),
            ));
            None
        }
    }
}

/// Every problem with the code a workflow definition carries: JavaScript that does not parse, jq that does not
/// compile. Checked before a definition is proposed, never in apply: compiling is user-controlled work (a
/// definition may carry thousands of queries), and a definition whose code does not parse fails only its own tasks.
pub fn validate_workflow_code(def: &WorkflowDef) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut stack: Vec<(String, &WorkflowTask)> =
        def.tasks.iter().enumerate().rev().map(|(i, t)| (format!("tasks[{i}]"), t)).collect();
    while let Some((path, task)) = stack.pop() {
        check_task_code(&path, task, &mut errors);
        let mut children: Vec<_> = task.children().map(|(p, t)| (format!("{path}.{p}"), t)).collect();
        children.reverse();
        stack.extend(children);
    }
    errors
}

/// The code one task carries that must parse (see [`validate_workflow_code`]).
fn check_task_code(path: &str, task: &WorkflowTask, errors: &mut Vec<FieldError>) {
    let js = |errors: &mut Vec<FieldError>, field: &str, expr: &str| {
        if let Err(e) = super::script::check(expr) {
            errors.push(FieldError::new(format!("{path}.{field}"), format!("Expression is not well formatted: {e}")));
        }
    };
    match task.task_type.as_str() {
        "SWITCH" => {
            if let (Some("javascript" | "graaljs"), Some(e)) =
                (task.extra_str("evaluatorType").as_deref(), task.extra_str("expression"))
            {
                js(errors, "expression", &e);
            }
        }
        "DECISION" => {
            if let Some(e) = task.extra_str("caseExpression") {
                js(errors, "caseExpression", &e);
            }
        }
        "DO_WHILE" => {
            if let Some(cond) = task.extra_str("loopCondition").filter(|c| !c.trim().is_empty()) {
                js(errors, "loopCondition", &cond);
            }
        }
        "JSON_JQ_TRANSFORM" => {
            if let Some(q) = task.input_parameters.get("queryExpression").and_then(Value::as_str) {
                if !q.contains("${") {
                    if let Err(e) = super::jq::check(q) {
                        errors.push(FieldError::new(format!("{path}.inputParameters.queryExpression"), e.to_string()));
                    }
                }
            }
        }
        "INLINE" => {
            if let Some(e) = task.input_parameters.get("expression").and_then(Value::as_str) {
                if !e.contains("${") {
                    js(errors, "inputParameters.expression", e);
                }
            }
        }
        _ => {}
    }
}

/// The fields each task type needs.
fn check_type_fields(path: &str, task: &WorkflowTask, errors: &mut Vec<FieldError>) {
    match task.task_type.as_str() {
        "SWITCH" => {
            let evaluator = require_str(path, task, "evaluatorType", errors);
            require_str(path, task, "expression", errors);
            match evaluator.as_deref() {
                Some("javascript" | "graaljs" | "value-param") | None => {}
                Some(other) => errors.push(FieldError::new(
                    format!("{path}.evaluatorType"),
                    format!("unknown evaluatorType '{other}' (known: value-param, javascript, graaljs)"),
                )),
            }
        }
        "DECISION" => {
            let case_expr = task.extra_str("caseExpression");
            if task.extra_str("caseValueParam").is_none() && case_expr.is_none() {
                errors.push(FieldError::new(
                    format!("{path}.caseValueParam"),
                    format!(
                        "caseValueParam or caseExpression field is required for taskType: DECISION taskName: {}",
                        task.name
                    ),
                ));
            }
        }
        "DO_WHILE" => {
            // A loop over `items` (a step field or an input parameter) needs no condition: it ends after the last.
            let has_items = ["items", "_items"].iter().any(|k| task.input_parameters.contains_key(*k));
            if !task.extra.contains_key("items") && !has_items {
                require_str(path, task, "loopCondition", errors);
            }
            if task.loop_over.is_empty() {
                errors.push(FieldError::new(format!("{path}.loopOver"), "loopOver must hold at least one task"));
            }
        }
        "FORK_JOIN" | "FORK" if task.fork_tasks.iter().all(Vec::is_empty) => {
            errors.push(FieldError::new(format!("{path}.forkTasks"), "forkTasks must hold at least one task"));
        }
        "FORK_JOIN_DYNAMIC" => {
            require_str(path, task, "dynamicForkTasksParam", errors);
            require_str(path, task, "dynamicForkTasksInputParamName", errors);
        }
        "DYNAMIC" => {
            require_str(path, task, "dynamicTaskNameParam", errors);
        }
        "SUB_WORKFLOW" => match task.extra.get("subWorkflowParam") {
            Some(Value::Object(param)) => {
                let has_name = param.get("name").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
                if !has_name && !param.contains_key("workflowDefinition") {
                    errors.push(FieldError::new(
                        format!("{path}.subWorkflowParam.name"),
                        "a sub-workflow needs a name or an inline workflowDefinition",
                    ));
                }
            }
            _ => errors.push(FieldError::new(
                format!("{path}.subWorkflowParam"),
                format!("subWorkflowParam field is required for taskType: SUB_WORKFLOW taskName: {}", task.name),
            )),
        },
        "TERMINATE" => {
            let status = task.input_parameters.get("terminationStatus").and_then(Value::as_str);
            if !matches!(status, Some("COMPLETED" | "FAILED" | "TERMINATED")) {
                errors.push(FieldError::new(
                    format!("{path}.inputParameters.terminationStatus"),
                    "must be COMPLETED, FAILED or TERMINATED",
                ));
            }
            if task.optional {
                errors.push(FieldError::new(format!("{path}.optional"), "a TERMINATE task cannot be optional"));
            }
        }
        "JSON_JQ_TRANSFORM" => match task.input_parameters.get("queryExpression").and_then(Value::as_str) {
            Some(_) => {}
            None => errors.push(FieldError::new(
                format!("{path}.inputParameters.queryExpression"),
                "queryExpression is required for JSON_JQ_TRANSFORM",
            )),
        },
        "INLINE" => match task.input_parameters.get("expression").and_then(Value::as_str) {
            Some(_) => {}
            None => errors.push(FieldError::new(
                format!("{path}.inputParameters.expression"),
                "expression is required for INLINE",
            )),
        },
        "WAIT" if task.input_parameters.contains_key("duration") && task.input_parameters.contains_key("until") => {
            errors.push(FieldError::new(
                format!("{path}.inputParameters"),
                "Both 'duration' and 'until' specified. Please provide only one input",
            ));
        }
        _ => {}
    }
}

/// Checks that need a whole list: a FORK_JOIN is followed by a JOIN, and every joinOn names a known reference.
fn check_lists(list: &[WorkflowTask], path: &str, refs: &BTreeMap<String, String>, errors: &mut Vec<FieldError>) {
    for (i, task) in list.iter().enumerate() {
        let here = format!("{path}[{i}]");
        if matches!(task.task_type.as_str(), "FORK_JOIN" | "FORK" | "FORK_JOIN_DYNAMIC")
            && list.get(i + 1).map(|n| n.task_type.as_str()) != Some("JOIN")
        {
            errors.push(FieldError::new(
                format!("{here}.type"),
                format!("a {} must be followed by a JOIN task", task.task_type),
            ));
        }
        if task.task_type == "JOIN" {
            for (j, r) in task.join_on().iter().enumerate() {
                if !refs.contains_key(r) {
                    errors.push(FieldError::new(
                        format!("{here}.joinOn[{j}]"),
                        format!("joinOn names \"{r}\", which is not a task reference in this workflow"),
                    ));
                }
            }
        }
        for (sub, child_list) in task
            .decision_cases
            .iter()
            .map(|(case, l)| (format!("{here}.decisionCases.{case}"), l))
            .chain(std::iter::once((format!("{here}.defaultCase"), &task.default_case)))
            .chain(task.fork_tasks.iter().enumerate().map(|(lane, l)| (format!("{here}.forkTasks[{lane}]"), l)))
            .chain(std::iter::once((format!("{here}.loopOver"), &task.loop_over)))
        {
            check_lists(child_list, &sub, refs, errors);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workflow(json: &str) -> WorkflowDef {
        parse_json(json).expect("test document parses")
    }

    #[test]
    fn task_def_takes_conductor_defaults() {
        let def: TaskDef = parse_json(r#"{"name":"encode"}"#).expect("parses");
        assert_eq!(def.retry_count, 3);
        assert_eq!(def.retry_delay_seconds, 60);
        assert_eq!(def.response_timeout_seconds, 3600);
        assert_eq!(def.retry_logic, RetryLogic::Fixed);
        assert_eq!(def.timeout_policy, TaskTimeoutPolicy::TimeOutWf);
        assert!(validate_task_def(&def).is_empty());
    }

    #[test]
    fn unknown_fields_round_trip_unchanged() {
        let text = r#"{"name":"wf","tasks":[{"name":"a","taskReferenceName":"a_ref","type":"SWITCH",
            "evaluatorType":"value-param","expression":"x","decisionCases":{"x":[{"name":"b","taskReferenceName":"b"}]}}],
            "workflowStatusListenerEnabled":true}"#;
        let def = workflow(text);
        assert_eq!(def.extra.get("workflowStatusListenerEnabled"), Some(&Value::Bool(true)));
        assert_eq!(def.tasks[0].extra.get("evaluatorType"), Some(&Value::String("value-param".into())));
        let again: WorkflowDef = parse_json(&serde_json::to_string(&def).expect("serialises")).expect("parses");
        assert_eq!(again, def);
    }

    #[test]
    fn parse_errors_name_the_field() {
        let err = parse_json::<TaskDef>(r#"{"name":"a","retryCount":"three"}"#).expect_err("wrong type");
        assert_eq!(err.path, "retryCount");
        let err = parse_json::<WorkflowDef>(r#"{"name":"w","tasks":[{"name":"a"}]}"#).expect_err("missing ref");
        assert_eq!(err.path, "tasks[0]");
        assert!(err.message.contains("taskReferenceName"), "{}", err.message);
    }

    #[test]
    fn task_def_reports_every_problem() {
        let def: TaskDef = parse_json(
            r#"{"name":"","retryCount":-1,"timeoutSeconds":10,"responseTimeoutSeconds":20,"concurrentExecLimit":-2}"#,
        )
        .expect("parses");
        let paths: Vec<_> = validate_task_def(&def).into_iter().map(|e| e.path).collect();
        assert_eq!(paths, ["name", "retryCount", "responseTimeoutSeconds", "concurrentExecLimit"]);
    }

    #[test]
    fn workflow_checks_nested_reference_names() {
        let def = workflow(
            r#"{"name":"wf","tasks":[
                {"name":"a","taskReferenceName":"a"},
                {"name":"f","taskReferenceName":"f","type":"FORK_JOIN","forkTasks":[[{"name":"b","taskReferenceName":"a"}],[{"name":"c","taskReferenceName":""}]]},
                {"name":"x","taskReferenceName":"x","type":"BOGUS"}]}"#,
        );
        let errors = validate_workflow_def(&def);
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "tasks[1].forkTasks[0][0].taskReferenceName",
                "tasks[1].forkTasks[1][0].taskReferenceName",
                "tasks[2].type",
                // The FORK_JOIN is not followed by a JOIN.
                "tasks[1].type"
            ]
        );
        assert_eq!(errors[0].message, "duplicate reference name \"a\" (first used at tasks[0])");
    }

    #[test]
    fn workflow_needs_tasks_and_a_valid_version() {
        let def = workflow(r#"{"name":"wf","version":0,"tasks":[]}"#);
        let paths: Vec<_> = validate_workflow_def(&def).into_iter().map(|e| e.path).collect();
        assert_eq!(paths, ["version", "tasks"]);
    }
}
