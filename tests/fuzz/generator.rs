//! The generator: proptest strategies for fuzz cases.
//!
//! A case registers a few task definitions and workflow definitions, then runs a random sequence of starts,
//! worker reports, operator commands, clock moves, limit changes, definition churn and raw commands. Definitions
//! are drawn as a tree of task specs ([`Spec`]) over every task type the engine knows, nested a few levels
//! (branches, fork lanes, loop bodies, inline sub-workflows), then rendered to Conductor JSON with unique
//! reference names. Values come in three sizes: small random JSON, big values whose size or depth is the point
//! ([`big_value`]), and templates, ordinary and hostile ([`template`], [`hostile_template`]). User code comes from
//! a corpus of ordinary and hostile JavaScript and jq ([`JS_CODE`], [`JQ_CODE`]).
//!
//! Everything is drawn through proptest, so a failing case shrinks: steps drop out, counts and sizes get
//! smaller, one-of choices move to their first (simplest) alternative.

use std::collections::BTreeMap;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use baton::engine::definitions::{TaskDef, WorkflowDef};
use baton::engine::evaluation::EvalOutcome;
use baton::engine::limits::{Limits, CEILINGS};
use baton::engine::model::TaskStatus;
use baton::engine::ops::{IdempotencyStrategy, StartWorkflow, TaskRef, TaskUpdate};
use baton::engine::Command;

use super::case::{Act, Case, Operation, Step};

/// Names of the task definitions a case may register (SIMPLE tasks name them).
pub const TASK_NAMES: [&str; 4] = ["a", "b", "c", "d"];
/// Names of the workflow definitions a case may register (sub-workflows and failure workflows name them).
pub const WORKFLOW_NAMES: [&str; 4] = ["w0", "w1", "w2", "w3"];
/// Deepest nesting of a generated value. Past the engine's 100 (refused or failed, naming the limit), and short
/// of serde_json's 128, which the API's JSON parser and the sandbox's answers cannot pass.
const MAX_GENERATED_DEPTH: usize = 110;

/// JavaScript for INLINE tasks and SWITCH/DECISION expressions: ordinary code, then the hostile corpus.
pub const JS_CODE: &[&str] = &[
    "$.x",
    "1 + 1",
    "$.x > 2 ? 'big' : 'small'",
    "({a: $.x, b: [1, 2, 3], s: $.s})",
    "[1, 2, 3].map(function (i) { return i * 2; })",
    "$.list ? $.list.length : 0",
    "String($.s).toUpperCase()",
    "Date.now()",
    "Math.random() < 2",
    "new Date().toISOString()",
    "null",
    "undefined",
    "'x'",
    "$.missing.field",
    "throw new Error('boom')",
    "throw null",
    "function (",
    "for (;;) {}",
    "while (true) {}",
    "var a = []; for (;;) { a.push(new Array(100000).fill(1)); }",
    "function f(n) { return f(n + 1) + 1; } f(0)",
    "var s = 'x'; for (var i = 0; i < 40; i++) { s = s + s; } s.length",
    "'x'.repeat(1e9)",
    "new Array(1e9).fill(0)",
    "var v = 0; for (var i = 0; i < 100000; i++) { v = [v]; } v",
    "var o = {}; for (var i = 0; i < 1000000; i++) { o['k' + i] = i; } o",
    "var l = []; for (var i = 0; i < 100000; i++) { l.push(i); } l",
    "var l = []; for (var i = 0; i < 5000; i++) { l.push({name: 'a', taskReferenceName: 'd' + i}); } l",
    "JSON.parse('['.repeat(100000) + ']'.repeat(100000))",
    "var a = {}; a.self = a; a",
    "'\\u0000\\ud800'",
    "[1e308 * 10, -0, NaN]",
    "/(a+)+$/.test('a'.repeat(30) + 'b')",
];

/// jq for JSON_JQ_TRANSFORM: ordinary queries, then the hostile corpus.
pub const JQ_CODE: &[&str] = &[
    ".x",
    "{result: .x}",
    ".x + 1",
    "[.list[]?]",
    ".s | length",
    "[paths] | length",
    "..",
    "keys",
    "error(\"boom\")",
    ".[",
    "(.s * 1000000000000) | length",
    "[range(1e9)]",
    "reduce range(60000) as $i (0; [.])",
    "def f: [f]; f",
    "[limit(1000000; repeat(1))]",
    "\"x\" * 100000000",
    "[range(100000)] | tostring | tostring | tostring",
    "reduce range(40) as $i (\"x\"; . + .)",
    "[range(5000) | {name: \"a\", taskReferenceName: \"d\\(.)\"}]",
    "last(range(1e12))",
    "input",
    "now",
    "$__loc__",
    "env",
];

/// DO_WHILE conditions; `{self}` stands for the loop's own reference name.
const LOOP_CONDITIONS: &[&str] = &[
    "$.{self}['iteration'] < 3",
    "$.{self}.iteration < $.n",
    "false",
    "true",
    "$.t1 && $.t1.result",
    "for (;;) {}",
    "throw new Error('no')",
    "function (",
];

/// Expressions whose value may be large, for amplifying templates.
const HOT_EXPRESSIONS: &[&str] = &[
    "${workflow.input}",
    "${workflow.input..*}",
    "${workflow}",
    "${workflow.input.big}",
    "${t0.output}",
    "${workflow.variables}",
];

/// How big generated values and structures get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Big values: strings of up to 2^`exponent` characters; objects, lists and unicode strings a few powers of
    /// two smaller.
    pub exponent: u32,
    /// Widest fork (FORK_JOIN lanes, FORK_JOIN_DYNAMIC tasks).
    pub width: usize,
    /// Most repeats of an expression in a hostile template.
    pub repeat: usize,
    /// Sub-workflows and dynamic-fork tasks started by a name from the input (`${workflow.input.name}`): chains
    /// of starts as long as the limits allow, each workflow in them as large as the byte limits allow.
    pub starts_by_input: bool,
}

/// Sizes up to what the API lets through by default: 2 MiB strings, forks of 1,500 lanes, expressions repeated
/// 5,000 times. They find the amplifications.
pub const FULL: Sizes = Sizes { exponent: 21, width: 1500, repeat: 5000, starts_by_input: true };

/// Sizes that keep the amplifications of the open findings 2 and 5 (docs/fuzzing.md) under the bounds, so that a
/// short run looks at everything else: 16 KiB strings, forks of 50 lanes, 10 repeats, no starts by a name from
/// the input (so no chain of starts longer than the pool of definitions).
pub const MODERATE: Sizes = Sizes { exponent: 14, width: 50, repeat: 10, starts_by_input: false };

impl Sizes {
    /// The kind of dynamic-fork task list ([`fork_task_list`]) to make of a drawn one: no sub-workflows by input
    /// name unless [`Sizes::starts_by_input`].
    fn task_kind(self, kind: usize) -> usize {
        if kind == 2 && !self.starts_by_input {
            0
        } else {
            kind
        }
    }
}

/// A generated fuzz case.
pub fn case(sizes: Sizes) -> impl Strategy<Value = Case> {
    (vec(task_def(sizes), 4), vec(workflow_spec(sizes), 1..5), vec(step(sizes), 1..40), forged_outcomes(sizes))
        .prop_map(|(task_defs, mut workflows, steps, forged_outcomes)| {
            // Each name of the pool, each in its own command: one refused definition leaves the others.
            let mut all: Vec<Step> = task_defs
                .into_iter()
                .zip(TASK_NAMES)
                .map(|(mut def, name)| {
                    def.name = name.to_string();
                    Step::Client(Command::RegisterTaskDefs { defs: vec![def] })
                })
                .collect();
            // Highest names first: a definition names only later ones of the pool as sub-workflows (see render).
            workflows.sort_by_key(|w| std::cmp::Reverse(w.name));
            for spec in &workflows {
                all.push(Step::Client(Command::UpdateWorkflowDefs { defs: vec![spec.definition()] }));
            }
            all.extend(steps);
            Case { steps: all, forged_outcomes }
        })
}

// ---------------------------------------------------------------------------------------------------------------
// Values

fn short_text() -> BoxedStrategy<String> {
    prop_oneof![
        "[a-z]{0,6}",
        "\\PC{0,6}",
        Just("x".to_string()),
        Just("w1".to_string()),
        Just("t1".to_string()),
        Just("é😀\u{202e}\u{0}".to_string()),
    ]
    .boxed()
}

fn key() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[a-z]{1,3}",
        1 => Just("x".to_string()),
        1 => Just("s".to_string()),
        1 => Just("list".to_string()),
        1 => Just("result".to_string()),
        1 => Just(String::new()),
        1 => Just("a.b".to_string()),
        1 => Just("${x}".to_string()),
        1 => Just("__proto__".to_string()),
    ]
    .boxed()
}

fn scalar() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (0i64..10).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![Just(u64::MAX), Just(1u64 << 53)].prop_map(Value::from),
        prop_oneof![Just(0.5), Just(-0.0), Just(1e300), Just(-1e-300), Just(f64::MAX)].prop_map(Value::from),
        short_text().prop_map(Value::from),
    ]
    .boxed()
}

/// Small random JSON.
pub fn json_value() -> BoxedStrategy<Value> {
    scalar()
        .prop_recursive(4, 24, 5, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..5).prop_map(Value::Array),
                btree_map(key(), inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
        .boxed()
}

fn json_object() -> BoxedStrategy<Map<String, Value>> {
    btree_map(key(), json_value(), 0..4).prop_map(|m| m.into_iter().collect()).boxed()
}

/// Values whose size or depth is the point: long strings, deep nests, wide objects and lists, task lists for a
/// dynamic fork.
pub fn big_value(sizes: Sizes) -> BoxedStrategy<Value> {
    prop_oneof![
        (0..=sizes.exponent).prop_map(|p| Value::String("x".repeat(1 << p))),
        (0..=sizes.exponent - 3).prop_map(|p| Value::String("é😀".repeat(1 << p))),
        (1usize..=MAX_GENERATED_DEPTH).prop_map(nested_arrays),
        (1usize..=MAX_GENERATED_DEPTH).prop_map(nested_objects),
        (0..=sizes.exponent - 5).prop_map(|p| wide_object(1 << p)),
        (0..=sizes.exponent - 4).prop_map(|p| Value::Array((0..1u64 << p).map(Value::from).collect())),
        (0..=sizes.width, 0usize..4).prop_map(move |(n, kind)| fork_task_list(n, sizes.task_kind(kind))),
    ]
    .boxed()
}

/// `[[[...]]]`, `levels` deep.
pub fn nested_arrays(levels: usize) -> Value {
    (1..levels).fold(json!([]), |inner, _| Value::Array(vec![inner]))
}

/// `{"a": {"a": ...}}`, `levels` deep.
pub fn nested_objects(levels: usize) -> Value {
    (1..levels).fold(json!({}), |inner, _| json!({ "a": inner }))
}

/// An object with `n` keys.
pub fn wide_object(n: usize) -> Value {
    Value::Object((0..n).map(|i| (format!("k{i}"), Value::from(i))).collect())
}

/// `n` tasks for a FORK_JOIN_DYNAMIC: worker tasks, INLINE tasks, sub-workflows named by input, or tasks whose
/// reference names collide.
pub fn fork_task_list(n: usize, kind: usize) -> Value {
    let task = |i: usize| match kind {
        0 => json!({"name": TASK_NAMES[i % TASK_NAMES.len()], "taskReferenceName": format!("d{i}")}),
        1 => json!({"name": "i", "taskReferenceName": format!("d{i}"), "type": "INLINE",
                    "inputParameters": {"evaluatorType": "javascript", "expression": "1"}}),
        2 => json!({"name": "s", "taskReferenceName": format!("d{i}"), "type": "SUB_WORKFLOW",
                    "subWorkflowParam": {"name": "${workflow.input.name}"},
                    "inputParameters": {"name": "${workflow.input.name}"}}),
        _ => json!({"name": "a", "taskReferenceName": "d"}),
    };
    Value::Array((0..n).map(task).collect())
}

/// A start's input: small random keys plus the keys templates and code read, some of them big.
fn start_input(sizes: Sizes) -> BoxedStrategy<Map<String, Value>> {
    let specials = (
        proptest::option::of(json_value()),
        proptest::option::of(short_text()),
        proptest::option::of(0u64..6),
        proptest::option::of(0usize..WORKFLOW_NAMES.len()),
        proptest::option::of(0usize..12),
        proptest::option::of(vec(json_value(), 0..6)),
        proptest::option::weighted(0.3, big_value(sizes)),
        proptest::option::weighted(0.2, (0..sizes.width, 0usize..4)),
    );
    (json_object(), specials)
        .prop_map(move |(mut input, (x, s, n, name, reference, list, big, tasks))| {
            let mut put = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    input.insert(k.to_string(), v);
                }
            };
            put("x", x);
            put("s", s.map(Value::from));
            put("n", n.map(Value::from));
            put("i", n.map(Value::from));
            put("name", name.map(|i| Value::from(WORKFLOW_NAMES[i])));
            put("ref", reference.map(|k| Value::from(format!("t{k}"))));
            put("list", list.map(Value::Array));
            put("big", big);
            if let Some((count, kind)) = tasks {
                put("tasks", Some(fork_task_list(count, sizes.task_kind(kind))));
                put("inputs", Some(json!({"d0": {"x": 1}})));
            }
            input
        })
        .boxed()
}

/// A worker's output: small random keys, sometimes a big value.
fn worker_output(sizes: Sizes) -> BoxedStrategy<Map<String, Value>> {
    (json_object(), proptest::option::weighted(0.2, big_value(sizes)))
        .prop_map(|(mut output, big)| {
            if let Some(big) = big {
                output.insert("result".into(), big);
            }
            output
        })
        .boxed()
}

// ---------------------------------------------------------------------------------------------------------------
// Templates

/// An inputParameters (or outputParameters) value: plain JSON, expressions, text around expressions, or hostile.
pub fn template(sizes: Sizes) -> BoxedStrategy<Value> {
    prop_oneof![
        4 => json_value(),
        6 => expression().prop_map(Value::String),
        2 => (expression(), expression(), short_text()).prop_map(|(a, b, t)| Value::String(format!("{t}{a} and {b}"))),
        1 => hostile_template(sizes),
    ]
    .boxed()
}

/// One `${...}` expression.
fn expression() -> BoxedStrategy<String> {
    let root = prop_oneof![Just("workflow".to_string()), (0usize..12).prop_map(|k| format!("t{k}"))];
    let path = prop::sample::select(vec![
        "",
        ".input",
        ".input.x",
        ".input.s",
        ".input.big",
        ".input.list[0]",
        ".input.list[-1]",
        ".input.list.length()",
        ".input..*",
        ".input.*",
        ".input.list[*]",
        ".input[?(@.x)]",
        ".input.name",
        ".input.tasks",
        ".output",
        ".output.result",
        ".output.result[0]",
        ".output.resultList",
        ".output..*",
        ".variables",
        ".variables.v",
        ".workflowId",
        ".status",
    ]);
    prop_oneof![
        12 => (root, path).prop_map(|(r, p)| format!("${{{r}{p}}}")),
        1 => Just("${${workflow.input.ref}.output}".to_string()),
        1 => Just("${workflow.input.list[${workflow.input.n}]}".to_string()),
        1 => (1usize..24).prop_map(|n| format!("{}workflow.input.x{}", "${".repeat(n), "}".repeat(n))),
        1 => prop::sample::select(vec![
            "${CPEWF_TASK_ID}",
            "${workflow.secrets.token}",
            "${NETFLIX_ENV}",
            "$${workflow.input.x}",
            "${}",
            "${workflow.input",
            "${$..*}",
            "${workflow.input.list[?(@ > 1)]}",
        ])
        .prop_map(str::to_string),
    ]
    .boxed()
}

/// Templates built to amplify: an expression for a big value repeated thousands of times in one string, in a
/// list or in an object; expressions nested or bracketed deeper than the resolver allows.
pub fn hostile_template(sizes: Sizes) -> BoxedStrategy<Value> {
    let hot = prop::sample::select(HOT_EXPRESSIONS.to_vec());
    prop_oneof![
        (hot.clone(), 1..=sizes.repeat).prop_map(|(e, n)| Value::String(e.repeat(n))),
        (hot.clone(), 1..=sizes.repeat).prop_map(|(e, n)| Value::Array(vec![Value::String(e.to_string()); n])),
        (hot, 1..=sizes.repeat).prop_map(|(e, n)| {
            Value::Object((0..n).map(|i| (format!("k{i}"), Value::String(e.to_string()))).collect())
        }),
        (1usize..=40).prop_map(|n| Value::String(format!("{}workflow.input{}", "${".repeat(n), "}".repeat(n)))),
        (1usize..=200).prop_map(|n| Value::String(format!("${{workflow.input{}}}", "[0]".repeat(n)))),
        (1usize..=200).prop_map(|n| Value::String(format!("${{workflow.input[{}0{}]}}", "[".repeat(n), "]".repeat(n)))),
        (1usize..=200).prop_map(|n| Value::String(format!(
            "${{workflow.input[?({}@.x{})]}}",
            "(".repeat(n),
            ")".repeat(n)
        ))),
    ]
    .boxed()
}

fn params(sizes: Sizes) -> BoxedStrategy<BTreeMap<String, Value>> {
    let name = prop::sample::select(vec!["x", "s", "n", "list", "v", "name", "k", "big"]);
    btree_map(name.prop_map(str::to_string), template(sizes), 0..4).boxed()
}

// ---------------------------------------------------------------------------------------------------------------
// Definitions

/// One step of a workflow definition, before reference names are given.
#[derive(Debug, Clone)]
pub enum Spec {
    /// A SIMPLE task of a registered definition (or an inline `taskDefinition`).
    Worker {
        /// Which of [`TASK_NAMES`].
        def: usize,
        /// Its inputParameters.
        params: BTreeMap<String, Value>,
        /// A failure does not fail the workflow.
        optional: bool,
        /// startDelay, seconds.
        start_delay: Option<i64>,
        /// An inline taskDefinition.
        inline_def: Option<Value>,
    },
    /// INLINE JavaScript.
    Inline(String, BTreeMap<String, Value>),
    /// JSON_JQ_TRANSFORM.
    Jq(String, BTreeMap<String, Value>),
    /// SET_VARIABLE.
    SetVariable(BTreeMap<String, Value>),
    /// WAIT, with its inputParameters.
    Wait(BTreeMap<String, Value>),
    /// HUMAN.
    Human,
    /// NOOP.
    Noop,
    /// TERMINATE with a status and output.
    Terminate(&'static str, Option<Value>),
    /// SWITCH (value-param or javascript) or DECISION.
    Switch {
        /// "value-param", "javascript", "decision-param" or "decision-js".
        evaluator: &'static str,
        /// The expression (a parameter name, or JavaScript).
        expression: String,
        /// inputParameters.
        params: BTreeMap<String, Value>,
        /// The cases.
        cases: Vec<(String, Vec<Spec>)>,
        /// The default case.
        default: Vec<Spec>,
    },
    /// FORK_JOIN and its JOIN (joining the last task of each lane, or only the first lane's).
    Fork(Vec<Vec<Spec>>, bool),
    /// FORK_JOIN_DYNAMIC and its JOIN.
    DynamicFork(Value, Value),
    /// DO_WHILE.
    DoWhile(String, Vec<Spec>, BTreeMap<String, Value>),
    /// SUB_WORKFLOW.
    SubWorkflow(Target, BTreeMap<String, Value>),
    /// START_WORKFLOW.
    StartWorkflow(Target, Value),
    /// DYNAMIC, naming its task through an input.
    Dynamic(Value),
    /// A type this version refuses or does not know (HTTP, EVENT, ...).
    Other(&'static str),
}

/// What a SUB_WORKFLOW or START_WORKFLOW starts.
#[derive(Debug, Clone)]
pub enum Target {
    /// A registered definition of the pool, by index, and a version.
    Named(usize, Option<u32>),
    /// The name the workflow's input gives (`${workflow.input.name}`): recursion the registration cannot see.
    ByInput,
    /// An inline definition.
    Inline(Box<WorkflowSpec>),
}

/// A workflow definition before rendering.
#[derive(Debug, Clone)]
pub struct WorkflowSpec {
    /// Which of [`WORKFLOW_NAMES`].
    pub name: usize,
    /// Its version.
    pub version: i64,
    /// Its steps.
    pub tasks: Vec<Spec>,
    /// Its failure workflow, of the pool.
    pub failure_workflow: Option<usize>,
    /// timeoutSeconds and whether the policy is TIME_OUT_WF.
    pub timeout: Option<(i64, bool)>,
    /// outputParameters.
    pub output_parameters: BTreeMap<String, Value>,
    /// inputTemplate and variables.
    pub defaults: (Map<String, Value>, Map<String, Value>),
    /// restartable.
    pub restartable: bool,
}

impl WorkflowSpec {
    /// The definition as Conductor JSON.
    pub fn to_json(&self) -> Value {
        let mut namer = Namer { next: 0, own: self.name };
        let tasks = namer.list(&self.tasks);
        let mut def = json!({
            "name": WORKFLOW_NAMES[self.name],
            "version": self.version,
            "schemaVersion": 2,
            "restartable": self.restartable,
            "tasks": tasks,
        });
        let doc = def.as_object_mut().expect("an object literal");
        if let Some(f) = self.failure_workflow {
            doc.insert("failureWorkflow".into(), json!(WORKFLOW_NAMES[f]));
        }
        if let Some((seconds, time_out)) = self.timeout {
            doc.insert("timeoutSeconds".into(), json!(seconds));
            doc.insert("timeoutPolicy".into(), json!(if time_out { "TIME_OUT_WF" } else { "ALERT_ONLY" }));
        }
        if !self.output_parameters.is_empty() {
            doc.insert("outputParameters".into(), json!(self.output_parameters));
        }
        if !self.defaults.0.is_empty() {
            doc.insert("inputTemplate".into(), Value::Object(self.defaults.0.clone()));
        }
        if !self.defaults.1.is_empty() {
            doc.insert("variables".into(), Value::Object(self.defaults.1.clone()));
        }
        def
    }

    /// The definition, parsed as the API parses it.
    pub fn definition(&self) -> WorkflowDef {
        serde_json::from_value(self.to_json()).expect("a rendered definition parses")
    }
}

/// Gives reference names (`t0`, `t1`, ... in document order) while rendering.
struct Namer {
    next: usize,
    /// The index of the workflow being rendered, in [`WORKFLOW_NAMES`].
    own: usize,
}

impl Namer {
    fn list(&mut self, specs: &[Spec]) -> Vec<Value> {
        specs.iter().flat_map(|s| self.task(s)).collect()
    }

    fn reference(&mut self) -> String {
        self.next += 1;
        format!("t{}", self.next - 1)
    }

    /// The name a literal start names: one after this workflow in the pool, so that registering the pool from
    /// the highest name down refuses nothing for an unknown name or a cycle.
    fn later_name(&self, i: usize) -> Option<&'static str> {
        let later = WORKFLOW_NAMES.len() - 1 - self.own;
        (later > 0).then(|| WORKFLOW_NAMES[self.own + 1 + i % later])
    }

    /// The JSON of one spec: usually one task; a fork is followed by its JOIN.
    fn task(&mut self, spec: &Spec) -> Vec<Value> {
        let reference = self.reference();
        let mut task = json!({"name": format!("n_{reference}"), "taskReferenceName": reference});
        let doc = task.as_object_mut().expect("an object literal");
        let mut set = |k: &str, v: Value| {
            doc.insert(k.to_string(), v);
        };
        let mut join = None;
        match spec {
            Spec::Worker { def, params, optional, start_delay, inline_def } => {
                set("name", json!(TASK_NAMES[*def]));
                set("type", json!("SIMPLE"));
                set("inputParameters", json!(params));
                if *optional {
                    set("optional", json!(true));
                }
                if let Some(delay) = start_delay {
                    set("startDelay", json!(delay));
                }
                if let Some(inline) = inline_def {
                    set("taskDefinition", inline.clone());
                }
            }
            Spec::Inline(code, params) => {
                let mut params = params.clone();
                params.insert("evaluatorType".into(), json!("javascript"));
                params.insert("expression".into(), json!(code));
                set("type", json!("INLINE"));
                set("inputParameters", json!(params));
            }
            Spec::Jq(query, params) => {
                let mut params = params.clone();
                params.insert("queryExpression".into(), json!(query));
                set("type", json!("JSON_JQ_TRANSFORM"));
                set("inputParameters", json!(params));
            }
            Spec::SetVariable(params) => {
                set("type", json!("SET_VARIABLE"));
                set("inputParameters", json!(params));
            }
            Spec::Wait(params) => {
                set("type", json!("WAIT"));
                set("inputParameters", json!(params));
            }
            Spec::Human => set("type", json!("HUMAN")),
            Spec::Noop => set("type", json!("NOOP")),
            Spec::Terminate(status, output) => {
                set("type", json!("TERMINATE"));
                let mut params = json!({"terminationStatus": status, "terminationReason": "the definition says so"});
                if let Some(output) = output {
                    params["workflowOutput"] = output.clone();
                }
                set("inputParameters", params);
            }
            Spec::Switch { evaluator, expression, params, cases, default } => {
                let cases: Map<String, Value> =
                    cases.iter().map(|(case, list)| (case.clone(), Value::Array(self.list(list)))).collect();
                let default = self.list(default);
                match *evaluator {
                    "decision-param" => {
                        set("type", json!("DECISION"));
                        set("caseValueParam", json!(expression));
                    }
                    "decision-js" => {
                        set("type", json!("DECISION"));
                        set("caseExpression", json!(expression));
                    }
                    other => {
                        set("type", json!("SWITCH"));
                        set("evaluatorType", json!(other));
                        set("expression", json!(expression));
                    }
                }
                set("inputParameters", json!(params));
                set("decisionCases", Value::Object(cases));
                set("defaultCase", Value::Array(default));
            }
            Spec::Fork(lanes, join_all) => {
                let lanes: Vec<Vec<Value>> = lanes.iter().map(|lane| self.list(lane)).collect();
                let last_of = |lane: &Vec<Value>| lane.last().map(|t| t["taskReferenceName"].clone());
                let join_on: Vec<Value> = if *join_all {
                    lanes.iter().filter_map(last_of).collect()
                } else {
                    lanes.first().and_then(last_of).into_iter().collect()
                };
                set("type", json!("FORK_JOIN"));
                set("forkTasks", json!(lanes));
                join = Some(json!({"joinOn": join_on}));
            }
            Spec::DynamicFork(tasks, inputs) => {
                set("type", json!("FORK_JOIN_DYNAMIC"));
                set("dynamicForkTasksParam", json!("tasks"));
                set("dynamicForkTasksInputParamName", json!("inputs"));
                set("inputParameters", json!({"tasks": tasks, "inputs": inputs}));
                join = Some(json!({}));
            }
            Spec::DoWhile(condition, body, params) => {
                set("type", json!("DO_WHILE"));
                set("loopCondition", json!(condition.replace("{self}", &reference)));
                set("loopOver", Value::Array(self.list(body)));
                set("inputParameters", json!(params));
            }
            Spec::SubWorkflow(target, params) => {
                let param = match target {
                    Target::Named(i, version) => match self.later_name(*i) {
                        Some(name) => json!({"name": name, "version": version}),
                        // The last of the pool names none after it: a one-step inline definition instead.
                        None => json!({"name": "inline", "workflowDefinition": {"name": "leaf",
                            "tasks": [{"name": "noop", "taskReferenceName": "noop", "type": "NOOP"}]}}),
                    },
                    Target::ByInput => {
                        json!({"name": "${workflow.input.name}", "version": "${workflow.input.version}"})
                    }
                    Target::Inline(spec) => json!({"name": "inline", "workflowDefinition": spec.to_json()}),
                };
                set("type", json!("SUB_WORKFLOW"));
                set("subWorkflowParam", param);
                set("inputParameters", json!(params));
            }
            Spec::StartWorkflow(target, input) => {
                let request = match target {
                    Target::Named(i, version) => {
                        json!({"name": self.later_name(*i).unwrap_or("w0"), "version": version, "input": input})
                    }
                    Target::ByInput => json!({"name": "${workflow.input.name}", "input": input}),
                    Target::Inline(spec) => json!({"workflowDefinition": spec.to_json(), "input": input}),
                };
                set("type", json!("START_WORKFLOW"));
                set("inputParameters", json!({"startWorkflow": request}));
            }
            Spec::Dynamic(name) => {
                set("type", json!("DYNAMIC"));
                set("dynamicTaskNameParam", json!("taskToRun"));
                set("inputParameters", json!({"taskToRun": name}));
            }
            Spec::Other(kind) => set("type", json!(kind)),
        }
        let mut out = vec![task];
        if let Some(mut join) = join {
            let reference = self.reference();
            join["name"] = json!("join");
            join["taskReferenceName"] = json!(reference);
            join["type"] = json!("JOIN");
            out.push(join);
        }
        out
    }
}

fn worker(sizes: Sizes) -> BoxedStrategy<Spec> {
    let inline_def = proptest::option::weighted(
        0.1,
        Just(json!({"name": "inline", "retryCount": 1, "timeoutSeconds": 5,
        "responseTimeoutSeconds": 5})),
    );
    (
        0..TASK_NAMES.len(),
        params(sizes),
        prop::bool::weighted(0.2),
        proptest::option::weighted(0.1, -2i64..30),
        inline_def,
    )
        .prop_map(|(def, params, optional, start_delay, inline_def)| Spec::Worker {
            def,
            params,
            optional,
            start_delay,
            inline_def,
        })
        .boxed()
}

fn js_code() -> BoxedStrategy<String> {
    prop::sample::select(JS_CODE.to_vec()).prop_map(str::to_string).boxed()
}

fn target(sizes: Sizes) -> BoxedStrategy<Target> {
    let named = (0usize..4, proptest::option::weighted(0.2, prop_oneof![Just(1u32), Just(2), Just(99)]))
        .prop_map(|(i, v)| Target::Named(i, v));
    if !sizes.starts_by_input {
        return named.boxed();
    }
    prop_oneof![3 => named, 2 => Just(Target::ByInput)].boxed()
}

/// Steps without children.
fn leaf(sizes: Sizes) -> BoxedStrategy<Spec> {
    let wait = prop_oneof![
        Just(BTreeMap::new()),
        prop::sample::select(vec!["1s", "30s", "2m", "1d", "1h 30m", "99999999999999d", "soon", ""])
            .prop_map(|d| BTreeMap::from([("duration".to_string(), json!(d))])),
        prop::sample::select(vec!["2023-11-14 22:14 UTC", "9999-12-31 23:59", "1970-01-01", "2024-02-30", "x"])
            .prop_map(|u| BTreeMap::from([("until".to_string(), json!(u))])),
    ];
    prop_oneof![
        8 => worker(sizes),
        3 => (js_code(), params(sizes)).prop_map(|(code, p)| Spec::Inline(code, p)),
        3 => (prop::sample::select(JQ_CODE.to_vec()), params(sizes)).prop_map(|(q, p)| Spec::Jq(q.to_string(), p)),
        2 => params(sizes).prop_map(Spec::SetVariable),
        1 => wait.prop_map(Spec::Wait),
        1 => Just(Spec::Human),
        1 => Just(Spec::Noop),
        1 => (prop::sample::select(vec!["COMPLETED", "FAILED", "TERMINATED"]), proptest::option::of(template(sizes)))
            .prop_map(|(s, o)| Spec::Terminate(s, o)),
        2 => (target(sizes), params(sizes)).prop_map(|(t, p)| Spec::SubWorkflow(t, p)),
        1 => (target(sizes), template(sizes)).prop_map(|(t, i)| Spec::StartWorkflow(t, i)),
        2 => (dynamic_fork_tasks(sizes), template(sizes)).prop_map(|(t, i)| Spec::DynamicFork(t, i)),
        1 => prop_oneof![Just(json!("a")), Just(json!("${workflow.input.s}")), Just(json!("SUB_WORKFLOW")),
                         Just(json!("nope"))].prop_map(Spec::Dynamic),
        1 => prop::sample::select(vec!["HTTP", "EVENT", "BOGUS", "KAFKA_PUBLISH"]).prop_map(Spec::Other),
    ]
    .boxed()
}

/// A step without children and with small parameters, repeated in wide forks (a wide fork of hostile templates
/// would only make a definition too large for the API).
fn small_leaf(sizes: Sizes) -> BoxedStrategy<Spec> {
    let params = btree_map(Just("x".to_string()), expression().prop_map(Value::String), 0..2);
    prop_oneof![
        4 => (0..TASK_NAMES.len(), params.clone()).prop_map(|(def, params)| Spec::Worker {
            def,
            params,
            optional: false,
            start_delay: None,
            inline_def: None,
        }),
        1 => (js_code(), params.clone()).prop_map(|(code, p)| Spec::Inline(code, p)),
        1 => params.clone().prop_map(Spec::SetVariable),
        1 => (target(sizes), params).prop_map(|(t, p)| Spec::SubWorkflow(t, p)),
        1 => Just(Spec::Noop),
    ]
    .boxed()
}

/// What a FORK_JOIN_DYNAMIC forks: the start input's list, an earlier task's result, a literal list, or junk.
fn dynamic_fork_tasks(sizes: Sizes) -> BoxedStrategy<Value> {
    prop_oneof![
        Just(json!("${workflow.input.tasks}")),
        (0usize..6).prop_map(|k| json!(format!("${{t{k}.output.result}}"))),
        (0usize..5, 0usize..4).prop_map(move |(n, kind)| fork_task_list(n, sizes.task_kind(kind))),
        json_value(),
    ]
    .boxed()
}

/// A step of a workflow, nested up to three levels.
pub fn spec(sizes: Sizes) -> BoxedStrategy<Spec> {
    leaf(sizes)
        .prop_recursive(3, 40, 4, move |inner| {
            let list = vec(inner.clone(), 1..4);
            let switch_kind = prop::sample::select(vec!["value-param", "javascript", "decision-param", "decision-js"]);
            let case_name = prop::sample::select(vec!["big", "small", "a", "x", "true", "null", ""]);
            prop_oneof![
                2 => (
                    switch_kind,
                    js_code(),
                    params(sizes),
                    vec((case_name.prop_map(str::to_string), vec(inner.clone(), 0..3)), 0..3),
                    vec(inner.clone(), 0..3),
                )
                    .prop_map(|(evaluator, code, params, cases, default)| {
                        let expression = if evaluator.ends_with("param") { "x".to_string() } else { code };
                        Spec::Switch { evaluator, expression, params, cases, default }
                    }),
                2 => (vec(list.clone(), 1..4), prop::bool::weighted(0.8))
                    .prop_map(|(lanes, all)| Spec::Fork(lanes, all)),
                1 => (1..=sizes.width, small_leaf(sizes)).prop_map(|(n, one)| Spec::Fork(vec![vec![one]; n], true)),
                2 => (prop::sample::select(LOOP_CONDITIONS.to_vec()), list.clone(), params(sizes))
                    .prop_map(|(c, body, p)| Spec::DoWhile(c.to_string(), body, p)),
                1 => (list, proptest::option::of(0usize..4), params(sizes)).prop_map(|(tasks, failure, p)| {
                    let spec = WorkflowSpec {
                        name: 0,
                        version: 1,
                        tasks,
                        failure_workflow: failure,
                        timeout: None,
                        output_parameters: BTreeMap::new(),
                        defaults: Default::default(),
                        restartable: true,
                    };
                    Spec::SubWorkflow(Target::Inline(Box::new(spec)), p)
                }),
            ]
        })
        .boxed()
}

/// A workflow definition of the pool.
pub fn workflow_spec(sizes: Sizes) -> BoxedStrategy<WorkflowSpec> {
    let timeout = proptest::option::weighted(0.2, (prop_oneof![1i64..120, Just(i64::MAX)], any::<bool>()));
    (
        0..WORKFLOW_NAMES.len(),
        prop_oneof![4 => Just(1i64), 1 => Just(2i64)],
        vec(spec(sizes), 1..5),
        proptest::option::weighted(0.2, 0..WORKFLOW_NAMES.len()),
        timeout,
        btree_map(prop::sample::select(vec!["out", "x", "all"]).prop_map(str::to_string), template(sizes), 0..3),
        (json_object(), json_object()),
        prop::bool::weighted(0.9),
    )
        .prop_map(|(name, version, tasks, failure_workflow, timeout, output_parameters, defaults, restartable)| {
            WorkflowSpec { name, version, tasks, failure_workflow, timeout, output_parameters, defaults, restartable }
        })
        .boxed()
}

/// A task definition of the pool, mostly valid (a response timeout above the task timeout is refused).
pub fn task_def(sizes: Sizes) -> BoxedStrategy<TaskDef> {
    let seconds = || prop_oneof![6 => 0i64..120, 1 => Just(3600i64), 1 => Just(i64::MAX)];
    (
        (0..TASK_NAMES.len(), prop_oneof![4 => 0i64..3, 1 => Just(1000i64)], 0usize..3, seconds(), 1i64..4),
        (seconds(), prop_oneof![1i64..60, Just(3600)], proptest::option::weighted(0.2, seconds()), 0usize..3),
        (
            proptest::option::weighted(0.2, 0i64..3),
            proptest::option::weighted(0.1, (1i64..5, 1i64..10)),
            proptest::option::weighted(
                0.2,
                prop_oneof![json_object(), big_value(sizes).prop_map(|v| Map::from_iter([("big".to_string(), v)]))],
            ),
            prop::bool::weighted(0.9),
        ),
    )
        .prop_map(
            |(
                (name, retries, logic, delay, factor),
                (timeout, response, poll, policy),
                (limit, rate, template, fix),
            )| {
                let response = if fix && timeout > 0 { response.min(timeout) } else { response };
                let retry_logic = ["FIXED", "EXPONENTIAL_BACKOFF", "LINEAR_BACKOFF"][logic];
                let timeout_policy = ["RETRY", "TIME_OUT_WF", "ALERT_ONLY"][policy];
                let mut def = json!({
                    "name": TASK_NAMES[name], "retryCount": retries, "retryLogic": retry_logic,
                    "retryDelaySeconds": delay, "backoffScaleFactor": factor, "timeoutSeconds": timeout,
                    "timeoutPolicy": timeout_policy, "responseTimeoutSeconds": response,
                });
                if let Some(poll) = poll {
                    def["pollTimeoutSeconds"] = json!(poll);
                }
                if let Some(limit) = limit {
                    def["concurrentExecLimit"] = json!(limit);
                }
                if let Some((per, window)) = rate {
                    def["rateLimitPerFrequency"] = json!(per);
                    def["rateLimitFrequencyInSeconds"] = json!(window);
                }
                if let Some(template) = template {
                    def["inputTemplate"] = Value::Object(template);
                }
                serde_json::from_value(def).expect("a generated task definition parses")
            },
        )
        .boxed()
}

// ---------------------------------------------------------------------------------------------------------------
// Steps

fn step(sizes: Sizes) -> BoxedStrategy<Step> {
    prop_oneof![
        5 => start_command(sizes).prop_map(Step::Client),
        14 => act(sizes).prop_map(Step::Act),
        3 => advance(),
        2 => churn_command(sizes).prop_map(Step::Client),
        1 => set_limits().prop_map(Step::Client),
        2 => raw_command(sizes).prop_map(Step::Raw),
        1 => vec(prop_oneof![start_command(sizes), churn_command(sizes)], 1..4).prop_map(Step::Batch),
    ]
    .boxed()
}

fn advance() -> BoxedStrategy<Step> {
    prop_oneof![
        4 => 0i64..2_000,
        4 => 10_000i64..120_000,
        1 => Just(3_600_000i64),
        1 => Just(400 * 86_400_000i64),
        1 => -5_000i64..0,
    ]
    .prop_map(Step::Advance)
    .boxed()
}

/// A client's start: of a definition of the pool (latest or a version), or of an inline definition.
fn start_command(sizes: Sizes) -> BoxedStrategy<Command> {
    let definition = proptest::option::weighted(0.15, workflow_spec(sizes));
    let idempotency = proptest::option::weighted(
        0.2,
        (
            prop::sample::select(vec!["k1", "k2"]),
            prop::sample::select(vec![
                IdempotencyStrategy::ReturnExisting,
                IdempotencyStrategy::Fail,
                IdempotencyStrategy::FailOnRunning,
            ]),
        ),
    );
    (
        0u32..64,
        0..WORKFLOW_NAMES.len(),
        proptest::option::weighted(0.2, prop_oneof![Just(1u32), Just(2), Just(7)]),
        definition,
        start_input(sizes),
        (proptest::option::weighted(0.2, short_text()), prop_oneof![9 => 0u32..100, 1 => Just(u32::MAX)]),
        proptest::option::weighted(0.1, Just(BTreeMap::from([("a".to_string(), "blue".to_string())]))),
        idempotency,
    )
        .prop_map(|(id, name, version, definition, input, (correlation_id, priority), domains, key)| {
            Command::StartWorkflow(StartWorkflow {
                workflow_id: format!("wf-{id}"),
                name: WORKFLOW_NAMES[name].to_string(),
                version,
                definition: definition.map(|d| d.definition()),
                input,
                correlation_id,
                priority,
                task_to_domain: domains.unwrap_or_default(),
                idempotency_key: key.map(|(k, _)| k.to_string()),
                idempotency_strategy: key.map(|(_, s)| s).unwrap_or_default(),
            })
        })
        .boxed()
}

/// Definitions changing under running workflows: re-registered, updated, deleted.
fn churn_command(sizes: Sizes) -> BoxedStrategy<Command> {
    prop_oneof![
        3 => workflow_spec(sizes).prop_map(|spec| Command::UpdateWorkflowDefs { defs: vec![spec.definition()] }),
        1 => (workflow_spec(sizes), any::<bool>())
            .prop_map(|(spec, overwrite)| Command::RegisterWorkflowDef { def: spec.definition(), overwrite }),
        2 => task_def(sizes).prop_map(|def| Command::RegisterTaskDefs { defs: vec![def] }),
        1 => task_def(sizes).prop_map(|def| Command::UpdateTaskDef { def }),
        2 => (0..TASK_NAMES.len()).prop_map(|i| Command::DeleteTaskDef { name: TASK_NAMES[i].into() }),
        1 => (0..WORKFLOW_NAMES.len(), 1u32..3)
            .prop_map(|(i, version)| Command::DeleteWorkflowDef { name: WORKFLOW_NAMES[i].into(), version }),
    ]
    .boxed()
}

/// New limits: mostly small (so that the bounds trip), sometimes at the ceilings, sometimes out of range. Drawn
/// field by field over the JSON form of [`Limits`], so limits added later are fuzzed without a change here.
fn set_limits() -> BoxedStrategy<Command> {
    let defaults = serde_json::to_value(Limits::default()).expect("limits serialise");
    let ceilings = serde_json::to_value(CEILINGS).expect("limits serialise");
    let names: Vec<String> = defaults.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    let choice = (0u32..10, 1u32..6);
    vec(choice, names.len())
        .prop_map(move |choices| {
            let mut limits = Map::new();
            for (name, (kind, small)) in names.iter().zip(choices) {
                let ceiling = ceilings[name].as_u64().unwrap_or(1);
                let value = match kind {
                    0..=3 => u64::from(small),
                    4..=6 => defaults[name].as_u64().unwrap_or(1),
                    7 | 8 => ceiling,
                    _ if small.is_multiple_of(2) => 0,
                    _ => ceiling + 1,
                };
                limits.insert(name.clone(), json!(value));
            }
            let limits = serde_json::from_value(Value::Object(limits)).expect("limits deserialise");
            Command::SetLimits { limits }
        })
        .boxed()
}

fn task_update(sizes: Sizes) -> BoxedStrategy<TaskUpdate> {
    (status(), worker_output(sizes), proptest::option::of(short_text()), 0u64..5)
        .prop_map(|(status, output, reason, callback_after_seconds)| TaskUpdate {
            status,
            output,
            reason,
            callback_after_seconds,
            worker_id: None,
            lease: None,
        })
        .boxed()
}

fn status() -> BoxedStrategy<TaskStatus> {
    prop_oneof![
        6 => Just(TaskStatus::Completed),
        2 => Just(TaskStatus::Failed),
        1 => Just(TaskStatus::FailedWithTerminalError),
        2 => Just(TaskStatus::InProgress),
        1 => prop::sample::select(vec![TaskStatus::Scheduled, TaskStatus::Canceled, TaskStatus::Skipped]),
    ]
    .boxed()
}

/// Commands that only a leader, an older version or a bug would write: apply must be total for them too.
fn raw_command(sizes: Sizes) -> BoxedStrategy<Command> {
    let id = || prop::sample::select(vec!["wf-1", "wf-2", "ghost", ""]).prop_map(str::to_string);
    prop_oneof![
        // A definition whose code does not compile (validate_code is the gateway's, not apply's).
        2 => workflow_spec(sizes).prop_map(|spec| {
            let mut def = spec.definition();
            if let Some(first) = def.tasks.first_mut() {
                first.task_type = "INLINE".into();
                first.input_parameters.insert("expression".into(), json!("function ("));
            }
            Command::UpdateWorkflowDefs { defs: vec![def] }
        }),
        2 => start_command(sizes),
        1 => set_limits(),
        1 => (id(), id(), 0u32..3, outcome(sizes)).prop_map(|(workflow_id, task_id, round, outcome)| {
            Command::Evaluated { workflow_id, task_id, round, outcome }
        }),
        1 => (id(), id(), task_update(sizes)).prop_map(|(workflow_id, task_id, update)| {
            Command::UpdateTask { workflow_id, task_id, update }
        }),
        1 => (id(), vec((id(), id()), 0..4)).prop_map(|(worker_id, tasks)| Command::LeaseTasks {
            worker_id,
            poll_id: None,
            tasks: tasks.into_iter().map(|(workflow_id, task_id)| TaskRef { workflow_id, task_id }).collect(),
        }),
        1 => (prop_oneof![Just(String::new()), Just("k".to_string()), Just("k".repeat(300))], vec(any::<u8>(), 0..64))
            .prop_map(|(key, value)| Command::BenchWrite { key, value }),
        1 => vec(start_command(sizes), 1..3).prop_map(|inner| Command::Batch(vec![Command::Batch(inner)])),
        1 => Just(Command::RegisterTaskDefs { defs: Vec::new() }),
        1 => id().prop_map(|workflow_id| Command::Tick { workflow_id }),
    ]
    .boxed()
}

fn outcome(sizes: Sizes) -> BoxedStrategy<EvalOutcome> {
    prop_oneof![
        4 => json_value().prop_map(|v| EvalOutcome::Values(vec![v])),
        2 => big_value(sizes).prop_map(|v| EvalOutcome::Values(vec![v])),
        1 => vec(json_value(), 0..4).prop_map(EvalOutcome::Values),
        1 => prop::sample::select(vec!["big", "small", "a", "x"]).prop_map(|c| EvalOutcome::Values(vec![json!(c)])),
        1 => prop_oneof![Just(true), Just(false)].prop_map(|b| EvalOutcome::Values(vec![json!(b)])),
        2 => (short_text(), any::<bool>()).prop_map(|(message, terminal)| EvalOutcome::Failed { message, terminal }),
    ]
    .boxed()
}

fn forged_outcomes(sizes: Sizes) -> BoxedStrategy<Vec<Option<EvalOutcome>>> {
    prop_oneof![
        7 => Just(Vec::new()),
        3 => vec(proptest::option::of(outcome(sizes)), 1..8),
    ]
    .boxed()
}

fn act(sizes: Sizes) -> BoxedStrategy<Act> {
    let w = || 0usize..16;
    let t = || 0usize..16;
    let operation = prop_oneof![
        2 => short_text().prop_map(|reason| Operation::Terminate { reason }),
        1 => Just(Operation::Pause),
        1 => Just(Operation::Resume),
        2 => Just(Operation::Retry),
        1 => any::<bool>().prop_map(|use_latest_definition| Operation::Restart { use_latest_definition }),
        2 => (proptest::option::of(t()), proptest::option::weighted(0.3, worker_output(sizes)),
              proptest::option::weighted(0.2, start_input(sizes)))
            .prop_map(|(task, task_input, workflow_input)| Operation::Rerun { task, task_input, workflow_input }),
        1 => (0usize..16, worker_output(sizes)).prop_map(|(reference, output)| Operation::Skip { reference, output }),
        1 => Just(Operation::Tick),
    ];
    prop_oneof![
        4 => (0usize..8, 1usize..8).prop_map(|(queue, count)| Act::Poll { queue, count }),
        10 => (w(), t(), status(), worker_output(sizes),
               prop_oneof![3 => Just(0u64), 1 => 1u64..100, 1 => Just(u64::MAX)],
               prop::bool::weighted(0.5))
            .prop_map(|(workflow, task, status, output, callback_after_seconds, with_lease)| Act::Report {
                workflow, task, status, output, callback_after_seconds, with_lease,
            }),
        2 => (w(), t(), any::<bool>(), proptest::option::of(0u64..4))
            .prop_map(|(workflow, task, completed, lease_seq)| Act::Redeliver { workflow, task, completed, lease_seq }),
        1 => (w(), t()).prop_map(|(workflow, task)| Act::StartTask { workflow, task }),
        2 => (w(), t(), status(), worker_output(sizes))
            .prop_map(|(workflow, task, status, output)| Act::Signal { workflow, task, status, output }),
        1 => (w(), t(), prop_oneof![Just(0u64), Just(1), Just(u64::MAX)])
            .prop_map(|(workflow, task, offset)| Act::ExtendLease { workflow, task, offset }),
        1 => (w(), t(), prop_oneof![short_text(), (0usize..20_000).prop_map(|n| "é".repeat(n))])
            .prop_map(|(workflow, task, line)| Act::AppendLog { workflow, task, line }),
        4 => (w(), operation).prop_map(|(workflow, operation)| Act::Operate { workflow, operation }),
        1 => (w(), t(), 0u32..4, outcome(sizes))
            .prop_map(|(workflow, task, round, outcome)| Act::LateEvaluation { workflow, task, round, outcome }),
    ]
    .boxed()
}
