//! Conductor's parameter expressions: the `${...}` placeholders in a task's `inputParameters` and a workflow's
//! `outputParameters`, resolved the way Conductor's `ParametersUtils` resolves them (schema version 2).
//!
//! Owns: finding expressions in template strings, evaluating their JSONPath against named root documents, splicing
//! the results back into the template, and the static checks used at registration ([`check_template`],
//! [`referenced_roots`]). Must not touch: how the root documents are built from workflow and task state (the caller
//! implements [`Roots`]), storage, clocks, randomness or the process environment. Everything here is a pure function
//! of (template, roots), so it may run inside apply; map output is ordered by `serde_json::Map` (a `BTreeMap` here).
//!
//! # Expressions
//!
//! * An expression starts at `${` that is not preceded by `$` and ends at the `}` that balances it, counting every
//!   `{` and `}` in between (quotes are not special). Expressions may nest: `${ref.output.list[${workflow.input.i}]}`
//!   resolves the inner one first, as text, then evaluates the outer path.
//! * If a `${` is never balanced, scanning stops there: that `${` and everything after it stay literal text, even
//!   later well-formed expressions (this is what Conductor's regular expression does).
//! * A string that is exactly one expression becomes the raw JSON value it refers to (object, array, number, ...).
//!   Otherwise every expression is replaced by text, as Java's `Objects.toString` renders Conductor's values: `null`
//!   for null or missing, strings bare, numbers as Java prints them (`2`, `2.5`, `1.0E10`), objects as `{k=v, k2=v2}`,
//!   arrays as `[a, b]`; the list produced by an indefinite JSONPath is printed as compact JSON in json-smart's style
//!   (`["a","b"]`, with `/` escaped as `\/`).
//! * After substitution, every `$${` in the resulting text becomes `${` (the escape). A whole-string expression's raw
//!   value is returned untouched.
//! * `${}` or a blank expression becomes the empty string.
//! * `${CPEWF_TASK_ID}` is the id of the task being scheduled, asked of [`Roots`] under that name; if the roots do not
//!   know it, the expression stays literal. `${NETFLIX_ENV}` and `${NETFLIX_STACK}` stay literal (as on a Conductor
//!   server where they are unset). An expression starting with `workflow.secrets.` stays literal: Conductor resolves
//!   secrets later, when handing the task to a worker.
//!
//! # Paths
//!
//! The path inside `${...}` is Jayway JSONPath over a document whose top-level keys are `workflow` and the task
//! reference names; a leading `$.` is optional. The first segment names the root (it may contain `-` and other
//! characters, as in Jayway: `${get-user_ref.output.body}`, or `${['my ref'].output}`), the rest is evaluated by the
//! RFC 9535 engine of `serde_json_path` against that root, after Jayway's dot names are rewritten to bracket
//! notation. A definite path (only names and single indexes, negative indexes counting from the end) gives the value
//! or `null` when anything is missing; an indefinite one (wildcards, `..`, filters, slices, unions) gives the list of
//! matches, `[]` when none. A path that does not parse gives `null`. A trailing `length()` or `size()` gives the size
//! of an array or object (`null` otherwise; one size per match after an indefinite path).
//!
//! # Root documents (built by the caller, as Conductor builds them)
//!
//! * `workflow`: `input`, `output`, `status`, `workflowId`, `parentWorkflowId`, `parentWorkflowTaskId`,
//!   `workflowType` (the definition's name), `version`, `correlationId`, `reasonForIncompletion`, `schemaVersion`,
//!   `variables`. Conductor's docs also mention `createTime` and `taskToDomain`, but its code does not provide them.
//! * A task, under its reference name (for a task inside a DO_WHILE, the name without the `__<iteration>` suffix,
//!   holding the latest iteration): `input`, `output`, `taskType`, `status` (absent when unset),
//!   `referenceTaskName`, `retryCount`, `correlationId`, `pollCount`, `taskDefName`, `scheduledTime`, `startTime`,
//!   `endTime`, `workflowInstanceId`, `taskId`, `reasonForIncompletion`, `callbackAfterSeconds`, `workerId`,
//!   `iteration`.
//!
//! # Not reproduced
//!
//! * Other names Conductor looks up in the server's environment variables and system properties (`${HOME}`): these
//!   are not deterministic across replicas, so such a name is an ordinary (unknown) root, giving `null`.
//! * `workflow.env.*` (Conductor's optional environment store): resolved as an ordinary path, giving `null`.
//! * A path that does not start with a root name (`${$}`, `${$..price}`, `${$.*}`) searches every root in
//!   Conductor; [`Roots`] cannot list its roots, so these give `null` (and [`check_template`] reports them).
//! * Jayway-only syntax that RFC 9535 lacks (`=~`, `in`, `nin`, `size`, `empty` in filters; functions other than
//!   `length()`/`size()`) gives `null`; a multi-name bracket (`['a','b']`) gives a list, not Jayway's object; a
//!   filter applied directly to an object filters its members (RFC) rather than testing the object (Jayway).
//! * Jayway quirks: a trailing `[` is ignored there (`${workflow.input[}` is the input) but is an error here;
//!   `..[n]` and `..*[?(...)]` return extra or repeated matches there, RFC 9535's matches here.
//! * Member order in stringified objects and wildcard results is key order, not Conductor's insertion order.
//! * Limits Conductor lacks, so that a hostile definition cannot overflow the stack inside apply: an expression
//!   nested more than 16 deep inside another's path resolves to `null`, and a bracket step nesting `[`/`(` more than
//!   32 deep does not parse.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};

use serde_json::{Map, Value};
use serde_json_path::JsonPath;

/// The root that holds the workflow's own fields (input, variables, ...), as opposed to a task reference name.
pub const WORKFLOW_ROOT: &str = "workflow";

/// The system parameter that resolves to the id of the task being scheduled; [`Roots`] is asked for it by this name.
pub const TASK_ID_PARAMETER: &str = "CPEWF_TASK_ID";

/// System parameters Conductor reads from its environment; left literal here, as when they are unset there.
const UNSET_SYSTEM_PARAMETERS: [&str; 2] = ["NETFLIX_ENV", "NETFLIX_STACK"];

/// Expressions with this prefix are left literal: Conductor substitutes secrets only when handing a task to a worker.
const SECRETS_PREFIX: &str = "workflow.secrets.";

/// How deep `${...}` may nest inside another expression's path. Deeper ones resolve to `null` (and are reported by
/// [`check_template`]) so that a hostile definition cannot exhaust the stack inside apply on every replica.
const MAX_NESTING: usize = 16;

/// How deep `[` and `(` may nest inside one bracket step: the RFC 9535 parser recurses on them and overflows the
/// stack on a few thousand levels.
const MAX_BRACKET_DEPTH: usize = 32;

/// Looks up a root document by name: "workflow" or a task reference name (None: unknown).
///
/// It is also asked for [`TASK_ID_PARAMETER`] (`CPEWF_TASK_ID`) when a template uses `${CPEWF_TASK_ID}`; answer with
/// the id of the task being scheduled, or `None` to leave the expression literal. Each name is asked at most once per
/// call of [`resolve`] or [`resolve_map`].
pub trait Roots {
    /// The root document called `name`, or `None` if there is none (e.g. a task that has not been scheduled yet).
    /// Built whole: asked only for the paths that need the whole document (`${workflow}`, `${ref..x}`), when
    /// [`Roots::member`] answers [`Member::Whole`].
    fn root(&self, name: &str) -> Option<Value>;

    /// The member `key` of the root called `name`, read in place: what most paths need (`${workflow.input.x}`
    /// reads `input` of `workflow`), without building the root. The default answers [`Member::Whole`].
    fn member(&self, name: &str, key: &str) -> Member<'_> {
        let _ = (name, key);
        Member::Whole
    }

    /// How many bytes (compact JSON) the whole root called `name` takes, measured up to `cap` (`None`: more).
    /// Building a root is counted against a resolution's byte cap like the values it copies, so that a template
    /// naming a large root a thousand times stops at the cap. The default, 0, suits roots that cost nothing.
    fn whole_bytes(&self, name: &str, cap: usize) -> Option<usize> {
        let _ = (name, cap);
        Some(0)
    }
}

/// A member of a root document, as [`Roots::member`] gives it.
pub enum Member<'a> {
    /// There is no root by that name.
    NoRoot,
    /// The root has no member by that name.
    Absent,
    /// The member, in place.
    Value(&'a Value),
    /// The member, an object kept as a map, in place.
    Map(&'a Map<String, Value>),
    /// The member, built (for small values: ids, times, statuses).
    Owned(Value),
    /// Only the whole root will do: ask [`Roots::root`].
    Whole,
}

impl Member<'_> {
    /// The member as a value of its own (`None` for [`Member::NoRoot`], [`Member::Absent`] and [`Member::Whole`]).
    pub fn into_value(self) -> Option<Value> {
        match self {
            Member::Value(value) => Some(value.clone()),
            Member::Map(map) => Some(Value::Object(map.clone())),
            Member::Owned(value) => Some(value),
            Member::NoRoot | Member::Absent | Member::Whole => None,
        }
    }
}

impl<F: Fn(&str) -> Option<Value>> Roots for F {
    fn root(&self, name: &str) -> Option<Value> {
        self(name)
    }
}

/// Resolves every `${...}` in `template` (recursively through maps and lists) against `roots`.
///
/// Strings without `${` and non-string scalars are copied unchanged; map keys are never resolved.
pub fn resolve(template: &Value, roots: &impl Roots) -> Value {
    Resolver::new(roots, usize::MAX).value(template)
}

/// The resolved value would pass the byte cap given to [`resolve_map_within`]: resolution stopped before it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversize;

/// [`resolve_map`] with a byte cap (compact JSON, as [`super::size`] measures): every value an expression copies
/// out of a root is measured before it is copied, so a template that would build more than `cap` bytes (the same
/// large input named a thousand times, a `$..*` over a deep document) stops there instead of being built whole.
///
/// Gives the map and the bytes the resolution counted against the cap: the values it copied, and the roots and
/// objects it had to build whole for a query. On [`Oversize`], count the whole cap as spent.
pub fn resolve_map_within(
    template: &BTreeMap<String, Value>,
    roots: &impl Roots,
    cap: usize,
) -> Result<(Map<String, Value>, usize), Oversize> {
    let mut resolver = Resolver::new(roots, cap);
    let mut out = Map::new();
    for (key, value) in template {
        if !resolver.charge(super::size::string_len(key) + 2) {
            return Err(Oversize);
        }
        let value = resolver.value(value);
        if resolver.budget.over {
            return Err(Oversize);
        }
        out.insert(key.clone(), value);
    }
    match super::size::map_within(&out, cap) {
        Some(_) => Ok((out, cap - resolver.budget.left)),
        None => Err(Oversize),
    }
}

/// [`resolve`] with a byte cap, as [`resolve_map_within`].
pub fn resolve_within(template: &Value, roots: &impl Roots, cap: usize) -> Result<(Value, usize), Oversize> {
    let mut resolver = Resolver::new(roots, cap);
    let value = resolver.value(template);
    if resolver.budget.over || super::size::value_within(&value, cap).is_none() {
        return Err(Oversize);
    }
    Ok((value, cap - resolver.budget.left))
}

/// Resolves a map of parameters (a task's inputParameters), as Conductor builds a task's input.
///
/// Every key is kept, including those whose value resolves to `null`. Conductor additionally fills keys missing from
/// the parameters, and keys that resolved to `null`, from the task definition's `inputTemplate`; that merge is the
/// caller's, since it needs the definition.
pub fn resolve_map(template: &BTreeMap<String, Value>, roots: &impl Roots) -> Map<String, Value> {
    let mut resolver = Resolver::new(roots, usize::MAX);
    template.iter().map(|(key, value)| (key.clone(), resolver.value(value))).collect()
}

/// A malformed expression found by [`check_template`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprProblem {
    /// Where the offending string sits inside the template, relative to it: empty for the template itself,
    /// `files[2]` or `a.b` or `["odd key"]` below it. The caller prefixes it (`inputParameters.` + path, or
    /// `inputParameters` + path when it starts with `[`).
    pub path: String,
    /// What is wrong, quoting the expression.
    pub message: String,
}

impl fmt::Display for ExprProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every malformed expression in a template (unterminated `${`, empty `${}`, a JSONPath that does not parse), each
/// with the JSON path of the string inside the template where it occurs (e.g. `inputParameters.files[2]`, relative:
/// the caller prefixes) and a message. Used to refuse bad definitions at registration.
///
/// Also reported: paths that do not start with a root name, and JSONPath functions other than `length()`/`size()`,
/// since Baton would resolve them to `null` where Conductor would not. The outer path of a nested expression
/// (`${a.output[${b.output.i}]}`) is only known at run time and is not checked; the inner ones are.
pub fn check_template(template: &Value) -> Vec<ExprProblem> {
    let mut problems = Vec::new();
    let mut path = String::new();
    for_each_string(template, &mut path, &mut |path, text| check_string(text, path, 0, &mut problems));
    problems
}

/// The root names (task reference names and "workflow") a template refers to, sorted.
///
/// A root is listed when an expression names it statically, even if the rest of its path is malformed. The special
/// `CPEWF_TASK_ID`, `NETFLIX_ENV`, `NETFLIX_STACK` and `workflow.secrets.*` expressions name no root. A root name
/// computed by a nested expression (`${${workflow.input.ref}.output}`) cannot be known and is left out, while the
/// nested expression's own root is in.
pub fn referenced_roots(template: &Value) -> BTreeSet<String> {
    let mut roots = BTreeSet::new();
    let mut path = String::new();
    for_each_string(template, &mut path, &mut |_, text| collect_roots(text, 0, &mut roots));
    roots
}

// ---------------------------------------------------------------------------------------------------------------
// Resolution

/// One resolution pass: the roots, fetched at most once each, and what is left of the byte cap.
struct Resolver<'r, R> {
    roots: &'r R,
    fetched: BTreeMap<String, Option<Value>>,
    budget: Budget,
}

/// What is left of a resolution's byte cap.
#[derive(Debug, Clone, Copy)]
struct Budget {
    /// Bytes the values built so far may still grow by.
    left: usize,
    /// The cap was passed: everything from then on resolves to `null` at no cost, and the caller reports it.
    over: bool,
}

impl Budget {
    /// Takes `bytes` from the cap; false (and `over` from then on) when they do not fit.
    fn charge(&mut self, bytes: usize) -> bool {
        if self.over || bytes > self.left {
            self.over = true;
            return false;
        }
        self.left -= bytes;
        true
    }

    /// Takes the size of `value` from the cap before it is copied; false when it does not fit (measuring stops
    /// at what is left, so a huge value costs no more than the cap to refuse).
    fn charge_value(&mut self, value: &Value) -> bool {
        match super::size::value_within(value, if self.over { 0 } else { self.left }) {
            Some(bytes) => self.charge(bytes),
            None => {
                self.over = true;
                false
            }
        }
    }
}

/// What an expression turned into, before it is spliced into its string.
enum Replacement {
    /// A single value: a definite path's result, or literal text (blank, secrets, task id).
    Single(Value),
    /// The matches of an indefinite path (Jayway returns them as a json-smart array).
    List(Vec<Value>),
}

impl Replacement {
    fn into_value(self) -> Value {
        match self {
            Replacement::Single(value) => value,
            Replacement::List(items) => Value::Array(items),
        }
    }

    /// Appends the text Conductor's `Objects.toString` gives for this replacement.
    fn write_text(&self, out: &mut String) {
        match self {
            Replacement::Single(Value::String(text)) => out.push_str(text),
            Replacement::Single(value) => write_java_string(value, out),
            Replacement::List(items) => write_json_smart_array(items, out),
        }
    }
}

impl<'r, R: Roots> Resolver<'r, R> {
    fn new(roots: &'r R, cap: usize) -> Self {
        Resolver { roots, fetched: BTreeMap::new(), budget: Budget { left: cap, over: false } }
    }

    fn charge(&mut self, bytes: usize) -> bool {
        self.budget.charge(bytes)
    }

    fn charge_value(&mut self, value: &Value) -> bool {
        self.budget.charge_value(value)
    }

    fn value(&mut self, template: &Value) -> Value {
        if self.budget.over {
            return Value::Null;
        }
        match template {
            Value::String(text) => self.top_string(text),
            Value::Array(items) => {
                if !self.charge(2 + items.len()) {
                    return Value::Null;
                }
                Value::Array(items.iter().map(|item| self.value(item)).collect())
            }
            Value::Object(map) => {
                let keys: usize = map.keys().map(|key| super::size::string_len(key) + 2).sum();
                if !self.charge(2 + keys) {
                    return Value::Null;
                }
                Value::Object(map.iter().map(|(k, v)| (k.clone(), self.value(v))).collect())
            }
            other => {
                if !self.charge_value(other) {
                    return Value::Null;
                }
                other.clone()
            }
        }
    }

    /// A template string: the raw value if it is exactly one expression, else text.
    fn top_string(&mut self, text: &str) -> Value {
        // No `${` means no expression and no `$${` escape either: the common case, with no scanning.
        if !text.contains("${") {
            if !self.charge(super::size::string_len(text)) {
                return Value::Null;
            }
            return Value::String(text.to_owned());
        }
        let mut replacements = self.replacements(text, 0);
        if self.budget.over {
            return Value::Null;
        }
        let whole = matches!(replacements.as_slice(), [(0, end, _)] if *end == text.len());
        if whole {
            if let Some((_, _, replacement)) = replacements.pop() {
                return replacement.into_value();
            }
        }
        // The replacements were charged as they were copied; their text form is about as long, and the literal
        // parts are the template's own.
        Value::String(splice(text, &replacements))
    }

    /// The text of a nested expression's path: always text, never a raw value.
    fn nested_text(&mut self, text: &str, depth: usize) -> String {
        let replacements = self.replacements(text, depth);
        splice(text, &replacements)
    }

    /// Every expression in `text` that produces a replacement, with its byte span, in order. `depth` counts the
    /// expressions `text` is nested in.
    fn replacements(&mut self, text: &str, depth: usize) -> Vec<(usize, usize, Replacement)> {
        let mut out = Vec::new();
        let mut from = 0;
        while let Scan::Found { start, end } = next_expression(text, from) {
            if self.budget.over {
                return out;
            }
            let content = &text[start + 2..end - 1];
            let replacement = if !content.contains("${") {
                self.evaluate(&text[start..end], content)
            } else if depth < MAX_NESTING {
                let path = self.nested_text(content, depth + 1);
                self.evaluate(&text[start..end], &path)
            } else {
                Some(Replacement::Single(Value::Null))
            };
            if let Some(replacement) = replacement {
                out.push((start, end, replacement));
            }
            from = end;
        }
        out
    }

    /// One expression: `whole` is its source text (`${...}`), `path` what is inside once nested ones are resolved.
    fn evaluate(&mut self, whole: &str, path: &str) -> Option<Replacement> {
        if is_blank(path) {
            return Some(Replacement::Single(Value::String(String::new())));
        }
        if path.starts_with(SECRETS_PREFIX) {
            return Some(Replacement::Single(Value::String(whole.to_owned())));
        }
        if path == TASK_ID_PARAMETER {
            return self.fetch(TASK_ID_PARAMETER).cloned().map(Replacement::Single);
        }
        if UNSET_SYSTEM_PARAMETERS.contains(&path) {
            return None;
        }
        Some(self.query(path))
    }

    /// Asks the roots for `name` once per resolution.
    fn fetch(&mut self, name: &str) -> Option<&Value> {
        if !self.fetched.contains_key(name) {
            let value = self.roots.root(name);
            self.fetched.insert(name.to_owned(), value);
        }
        self.fetched.get(name).and_then(Option::as_ref)
    }

    /// The document a path starts from. The task-id parameter is not a document, so it never acts as one.
    fn root(&mut self, name: &str) -> Option<&Value> {
        if name == TASK_ID_PARAMETER {
            return None;
        }
        self.fetch(name)
    }

    /// Evaluates a JSONPath the way Conductor's Jayway setup does (exceptions suppressed: errors give `null`).
    fn query(&mut self, path: &str) -> Replacement {
        let Ok(compiled) = compile(path) else {
            return Replacement::Single(Value::Null);
        };
        let definite = compiled.is_definite();
        // Names and indexes are walked in place; the indefinite rest, from the first other step on, is an RFC 9535
        // query over the node they lead to (the same matches as the whole path over the root).
        let split = compiled.segments.iter().position(|s| matches!(s, Segment::Other(_)));
        let (walked, rest) = compiled.segments.split_at(split.unwrap_or(compiled.segments.len()));
        let query = if rest.is_empty() {
            None
        } else {
            match JsonPath::parse(&rfc_query(rest)) {
                Ok(query) => Some(query),
                Err(_) => return Replacement::Single(Value::Null),
            }
        };
        let nothing = || if definite { Replacement::Single(Value::Null) } else { Replacement::List(Vec::new()) };
        if compiled.root == TASK_ID_PARAMETER {
            return nothing();
        }
        let function = compiled.function;
        // Most paths start with a member of their root (`workflow.input`): read in place, nothing is built.
        let roots = self.roots;
        if let Some((Segment::Name(key), below)) = walked.split_first() {
            let owned;
            let node = match roots.member(&compiled.root, key) {
                Member::NoRoot | Member::Absent => return nothing(),
                Member::Value(value) => Node::Value(value),
                Member::Map(map) => Node::Map(map),
                Member::Owned(value) => {
                    owned = value;
                    Node::Value(&owned)
                }
                Member::Whole => Node::Whole,
            };
            if !matches!(node, Node::Whole) {
                return matches_from(node, below, query.as_ref(), function, &mut self.budget);
            }
        }
        // The whole root, built once per resolution and counted against the cap before it is.
        if !self.fetched.contains_key(&compiled.root) {
            let cost = roots.whole_bytes(&compiled.root, if self.budget.over { 0 } else { self.budget.left });
            if !cost.is_some_and(|bytes| self.charge(bytes)) {
                self.budget.over = true;
                return nothing();
            }
        }
        let mut budget = self.budget;
        let Some(root) = self.root(&compiled.root) else {
            return nothing();
        };
        let replacement = matches_from(Node::Value(root), walked, query.as_ref(), function, &mut budget);
        self.budget = budget;
        replacement
    }
}

/// A node a path has reached: a value, or an object kept as a map by the roots.
#[derive(Clone, Copy)]
enum Node<'v> {
    Value(&'v Value),
    Map(&'v Map<String, Value>),
    /// Not reached: the whole root is needed.
    Whole,
}

impl<'v> Node<'v> {
    /// One name or index down.
    fn step(self, segment: &Segment) -> Option<Node<'v>> {
        match (self, segment) {
            (Node::Value(value), _) => walk(value, std::slice::from_ref(segment)).map(Node::Value),
            (Node::Map(map), Segment::Name(name)) => map.get(name).map(Node::Value),
            _ => None,
        }
    }

    /// The node as a value, copied; its size is taken from `budget` first (None when it does not fit).
    fn copy_within(self, budget: &mut Budget) -> Option<Value> {
        match self {
            Node::Value(value) => budget.charge_value(value).then(|| value.clone()),
            Node::Map(map) => match super::size::map_within(map, if budget.over { 0 } else { budget.left }) {
                Some(bytes) if budget.charge(bytes) => Some(Value::Object(map.clone())),
                _ => {
                    budget.over = true;
                    None
                }
            },
            Node::Whole => None,
        }
    }

    /// Jayway's `length()` of the node.
    fn size(self) -> Option<Value> {
        match self {
            Node::Value(value) => size_of(value),
            Node::Map(map) => Some(Value::from(map.len())),
            Node::Whole => None,
        }
    }
}

/// What a path gives from `node`: `walked` (names and indexes) followed in place, then `query` (the indefinite
/// rest) over what they lead to, then `function`. Every value copied out is taken from `budget` first.
fn matches_from(
    mut node: Node<'_>,
    walked: &[Segment],
    query: Option<&JsonPath>,
    function: Option<Function>,
    budget: &mut Budget,
) -> Replacement {
    for segment in walked {
        match node.step(segment) {
            Some(next) => node = next,
            None if query.is_none() => return Replacement::Single(Value::Null),
            None => return Replacement::List(Vec::new()),
        }
    }
    let Some(query) = query else {
        let value = match function {
            None => node.copy_within(budget),
            Some(Function::Size) => node.size(),
        };
        return Replacement::Single(value.unwrap_or(Value::Null));
    };
    // The RFC engine reads values only: an object kept as a map is copied (and counted) for it.
    let copied;
    let value = match node {
        Node::Value(value) => value,
        Node::Map(_) => match node.copy_within(budget) {
            Some(value) => {
                copied = value;
                &copied
            }
            None => return Replacement::List(Vec::new()),
        },
        Node::Whole => return Replacement::List(Vec::new()),
    };
    let nodes = query.query(value).all();
    Replacement::List(match function {
        None => nodes.into_iter().take_while(|node| budget.charge_value(node)).cloned().collect(),
        Some(Function::Size) => nodes.into_iter().map(|node| size_of(node).unwrap_or(Value::Null)).collect(),
    })
}

/// Builds the text of a string from its replacements, then applies the `$${` escape, as Conductor does.
fn splice(text: &str, replacements: &[(usize, usize, Replacement)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (start, end, replacement) in replacements {
        out.push_str(&text[last..*start]);
        replacement.write_text(&mut out);
        last = *end;
    }
    out.push_str(&text[last..]);
    if out.contains("$${") {
        out.replace("$${", "${")
    } else {
        out
    }
}

/// Follows a definite path (names and indexes only) from `value`.
fn walk<'v>(mut value: &'v Value, segments: &[Segment]) -> Option<&'v Value> {
    for segment in segments {
        value = match (segment, value) {
            (Segment::Name(name), Value::Object(map)) => map.get(name)?,
            (Segment::Index(index), Value::Array(items)) => {
                let magnitude = usize::try_from(index.unsigned_abs()).ok()?;
                let position = if *index < 0 { items.len().checked_sub(magnitude)? } else { magnitude };
                items.get(position)?
            }
            _ => return None,
        };
    }
    Some(value)
}

/// Jayway's `length()`: the size of an array or object, nothing for anything else.
fn size_of(value: &Value) -> Option<Value> {
    match value {
        Value::Array(items) => Some(Value::from(items.len())),
        Value::Object(map) => Some(Value::from(map.len())),
        _ => None,
    }
}

/// Java's `Character.isWhitespace` over the whole string (Apache Commons' `StringUtils.isBlank`).
fn is_blank(text: &str) -> bool {
    text.chars().all(|c| {
        matches!(c, '\u{1c}'..='\u{1f}')
            || (c.is_whitespace() && !matches!(c, '\u{85}' | '\u{a0}' | '\u{2007}' | '\u{202f}'))
    })
}

/// True for the expressions that are not paths at all.
fn is_special(path: &str) -> bool {
    path == TASK_ID_PARAMETER || UNSET_SYSTEM_PARAMETERS.contains(&path) || path.starts_with(SECRETS_PREFIX)
}

// ---------------------------------------------------------------------------------------------------------------
// Scanning

/// The next expression in a string.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// `${` at `start`, balancing `}` at `end - 1`.
    Found { start: usize, end: usize },
    /// `${` at `start` is never balanced; no expression is recognised from here on.
    Unterminated { start: usize },
    /// No more `${`.
    Done,
}

/// Finds the next expression at or after byte `from`. Mirrors Conductor's pattern: a `${` not preceded by `$`,
/// through the `}` that brings the count of `{` minus `}` back to zero; a `${` that never balances ends the search.
fn next_expression(text: &str, from: usize) -> Scan {
    let bytes = text.as_bytes();
    let mut at = from;
    while let Some(offset) = text.get(at..).and_then(|rest| rest.find("${")) {
        let start = at + offset;
        if start > 0 && bytes[start - 1] == b'$' {
            at = start + 1;
            continue;
        }
        let mut depth = 0usize;
        for (index, byte) in bytes.iter().enumerate().skip(start + 1) {
            match byte {
                b'{' => depth += 1,
                b'}' => {
                    // `depth` is at least 1 here: counting starts at the `{` of `${`.
                    depth -= 1;
                    if depth == 0 {
                        return Scan::Found { start, end: index + 1 };
                    }
                }
                _ => {}
            }
        }
        return Scan::Unterminated { start };
    }
    Scan::Done
}

// ---------------------------------------------------------------------------------------------------------------
// Paths

/// Why a path cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum PathError {
    /// Jayway's own syntax is violated.
    #[error("invalid JSONPath at byte {at}: {reason}")]
    Syntax { at: usize, reason: &'static str },
    /// The path does not start with a root name.
    #[error("the path must start with `workflow` or a task reference name (Baton cannot search all roots at once)")]
    NoRoot,
    /// A Jayway function Baton does not implement.
    #[error("JSONPath function `{0}()` is not supported (only `length()` and `size()` are)")]
    UnsupportedFunction(String),
    /// The RFC 9535 engine refuses the rest of the path.
    #[error("JSONPath does not parse: {0}")]
    Rfc(String),
}

/// A path split into its root name and the steps below it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CompiledPath {
    root: String,
    segments: Vec<Segment>,
    function: Option<Function>,
}

/// One step below the root.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// A member name (from `.name` or `['name']`).
    Name(String),
    /// A single array index; negative counts from the end.
    Index(i64),
    /// Anything indefinite, as RFC 9535 segment text (`[*]`, `..['x']`, `[?@.a > 1]`, `[1:3]`, ...).
    Other(String),
}

/// A trailing Jayway function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Function {
    /// `length()` or `size()`.
    Size,
}

impl CompiledPath {
    /// Jayway's "definite": a single value (or nothing), never a list.
    fn is_definite(&self) -> bool {
        !self.segments.iter().any(|segment| matches!(segment, Segment::Other(_)))
    }

    /// The steps below the root as an RFC 9535 query over the root's value.
    fn rfc_query(&self) -> String {
        rfc_query(&self.segments)
    }
}

/// Steps as an RFC 9535 query over the value they start from.
fn rfc_query(segments: &[Segment]) -> String {
    let mut out = String::from("$");
    for segment in segments {
        match segment {
            Segment::Name(name) => write_rfc_name(name, &mut out),
            Segment::Index(index) => {
                let _ = write!(out, "[{index}]");
            }
            Segment::Other(text) => out.push_str(text),
        }
    }
    out
}

/// Compiles a Jayway path; checks only what is needed to evaluate it (RFC parsing of indefinite steps is left to
/// the caller, so a resolution parses it once).
fn compile(path: &str) -> Result<CompiledPath, PathError> {
    let path = path.trim_matches(' ');
    if path.ends_with('.') {
        return Err(PathError::Syntax { at: path.len(), reason: "a path must not end with '.'" });
    }
    let mut parser = PathParser { text: path, pos: 0 };
    let mut steps = Vec::new();
    let mut function = None;
    match path.as_bytes().first() {
        Some(b'$' | b'@') => {
            parser.pos = 1;
            if path.len() == 1 {
                return Err(PathError::NoRoot);
            }
        }
        // Jayway reads a path without `$` as if it started with `$.`.
        _ => parser.after_dot(false, &mut steps, &mut function)?,
    }
    while parser.pos < path.len() {
        if function.is_some() {
            return Err(PathError::Syntax { at: parser.pos, reason: "a function must end the path" });
        }
        parser.step(&mut steps, &mut function)?;
    }
    let mut steps = steps.into_iter();
    let root = match steps.next() {
        Some((false, Segment::Name(name))) => name,
        _ => return Err(PathError::NoRoot),
    };
    let segments = steps
        .map(|(descendant, segment)| match (descendant, segment) {
            (false, segment) => segment,
            (true, Segment::Name(name)) => {
                let mut text = String::from("..");
                write_rfc_name(&name, &mut text);
                Segment::Other(text)
            }
            (true, Segment::Index(index)) => Segment::Other(format!("..[{index}]")),
            (true, Segment::Other(text)) => Segment::Other(format!("..{text}")),
        })
        .collect();
    Ok(CompiledPath { root, segments, function })
}

/// Like [`compile`], and also parses the indefinite steps with the RFC 9535 engine.
fn compile_checked(path: &str) -> Result<CompiledPath, PathError> {
    let compiled = compile(path)?;
    if !compiled.is_definite() {
        JsonPath::parse(&compiled.rfc_query()).map_err(|error| PathError::Rfc(error.to_string()))?;
    }
    Ok(compiled)
}

/// The root a path names, if its first step can be read before `limit` (the first nested `${`, or the end) and ends
/// there or before a `.`, `[` or `(`.
fn static_root(path: &str, limit: usize) -> Option<String> {
    let full = limit == path.len();
    let trimmed = if full { path.trim_matches(' ') } else { path[..limit].trim_start_matches(' ') };
    let mut parser = PathParser { text: trimmed, pos: 0 };
    let mut steps = Vec::new();
    let mut function = None;
    let first = if let Some(b'$' | b'@') = trimmed.as_bytes().first() {
        parser.pos = 1;
        parser.step(&mut steps, &mut function)
    } else {
        parser.after_dot(false, &mut steps, &mut function)
    };
    first.ok()?;
    let complete = full || parser.pos < trimmed.len();
    match steps.into_iter().next() {
        Some((false, Segment::Name(name))) if complete && function.is_none() => Some(name),
        _ => None,
    }
}

/// A cursor over Jayway path text. Jayway's grammar is what is read here: names may hold any character but `.`,
/// `[`, `(` and space; brackets hold quoted names, indexes, `*`, filters, slices or unions.
struct PathParser<'p> {
    text: &'p str,
    pos: usize,
}

type Steps = Vec<(bool, Segment)>;

impl PathParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn fail<T>(&self, reason: &'static str) -> Result<T, PathError> {
        Err(PathError::Syntax { at: self.pos, reason })
    }

    /// One step starting at `.`, `..` or `[`.
    fn step(&mut self, steps: &mut Steps, function: &mut Option<Function>) -> Result<(), PathError> {
        match self.peek() {
            Some(b'[') => {
                let segment = self.bracket()?;
                steps.push((false, segment));
                Ok(())
            }
            Some(b'.') => {
                let descendant = self.text.as_bytes().get(self.pos + 1) == Some(&b'.');
                self.pos += if descendant { 2 } else { 1 };
                self.after_dot(descendant, steps, function)
            }
            _ => self.fail("expected '.' or '['"),
        }
    }

    /// What follows a `.` or `..`: a name, a function, `*` or a bracket.
    fn after_dot(
        &mut self,
        descendant: bool,
        steps: &mut Steps,
        function: &mut Option<Function>,
    ) -> Result<(), PathError> {
        match self.peek() {
            None | Some(b'.') => self.fail("expected a name after '.'"),
            Some(b'[') => {
                let segment = self.bracket()?;
                steps.push((descendant, segment));
                Ok(())
            }
            Some(b'*') => {
                self.pos += 1;
                steps.push((descendant, Segment::Other("[*]".to_owned())));
                Ok(())
            }
            Some(_) => {
                let start = self.pos;
                let rest = &self.text[start..];
                let end = rest.find(['.', '[', '(', ' ']).map_or(self.text.len(), |offset| start + offset);
                let name = &self.text[start..end];
                self.pos = end;
                match self.peek() {
                    Some(b' ') => self.fail("a name with spaces needs bracket notation ['...']"),
                    Some(b'(') => {
                        if descendant || !self.text[end..].starts_with("()") {
                            return Err(PathError::UnsupportedFunction(name.to_owned()));
                        }
                        match name {
                            "length" | "size" => {
                                self.pos = end + 2;
                                *function = Some(Function::Size);
                                Ok(())
                            }
                            _ => Err(PathError::UnsupportedFunction(name.to_owned())),
                        }
                    }
                    _ => {
                        steps.push((descendant, Segment::Name(name.to_owned())));
                        Ok(())
                    }
                }
            }
        }
    }

    /// A `[...]` step; the cursor is on `[`.
    fn bracket(&mut self) -> Result<Segment, PathError> {
        let open = self.pos;
        let bytes = self.text.as_bytes();
        let mut depth = 0usize;
        let mut quote: Option<u8> = None;
        let mut escaped = false;
        let mut close = None;
        for (index, &byte) in bytes.iter().enumerate().skip(open) {
            if let Some(q) = quote {
                if escaped {
                    escaped = false;
                } else if byte == b'\\' {
                    escaped = true;
                } else if byte == q {
                    quote = None;
                }
                continue;
            }
            match byte {
                b'\'' | b'"' => quote = Some(byte),
                b'[' | b'(' => {
                    depth += 1;
                    if depth > MAX_BRACKET_DEPTH {
                        return self.fail("brackets and parentheses nested too deeply");
                    }
                }
                b')' => depth = depth.saturating_sub(1),
                b']' => {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(index);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(close) = close else {
            return self.fail("'[' is never closed");
        };
        let inner = &self.text[open + 1..close];
        self.pos = close + 1;
        let content = inner.trim_matches(' ');
        let segment = match content.as_bytes().first() {
            None => return Err(PathError::Syntax { at: open, reason: "empty brackets" }),
            Some(b'\'' | b'"') => {
                let names =
                    quoted_names(content).ok_or(PathError::Syntax { at: open, reason: "malformed quoted name" })?;
                match names.as_slice() {
                    [name] => Segment::Name(name.clone()),
                    _ => {
                        let mut text = String::from("[");
                        for (index, name) in names.iter().enumerate() {
                            if index > 0 {
                                text.push(',');
                            }
                            write_rfc_string(name, &mut text);
                        }
                        text.push(']');
                        Segment::Other(text)
                    }
                }
            }
            _ if content == "*" => Segment::Other("[*]".to_owned()),
            _ if is_integer(content) => match content.parse::<i64>() {
                Ok(index) => Segment::Index(index),
                Err(_) => return Err(PathError::Syntax { at: open, reason: "index out of range" }),
            },
            _ => Segment::Other(format!("[{inner}]")),
        };
        if !matches!(self.peek(), None | Some(b'.' | b'[')) {
            return self.fail("expected '.' or '[' after ']'");
        }
        Ok(segment)
    }
}

fn is_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Parses `'a'`, `"b"`, `'a', 'b'`: Jayway's bracket names, with its backslash escapes.
fn quoted_names(content: &str) -> Option<Vec<String>> {
    let mut names = Vec::new();
    let mut chars = content.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let quote = chars.next().filter(|c| *c == '\'' || *c == '"')?;
        let mut name = String::new();
        loop {
            match chars.next()? {
                '\\' => name.push(match chars.next()? {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'u' => {
                        let hex: String = (0..4).filter_map(|_| chars.next()).collect();
                        char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?
                    }
                    other => other,
                }),
                c if c == quote => break,
                c => name.push(c),
            }
        }
        names.push(name);
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        match chars.next() {
            None => return Some(names),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

/// Appends `['name']`, the RFC 9535 form of a member name of any spelling.
fn write_rfc_name(name: &str, out: &mut String) {
    out.push('[');
    write_rfc_string(name, out);
    out.push(']');
}

/// Appends an RFC 9535 single-quoted string literal.
fn write_rfc_string(text: &str, out: &mut String) {
    out.push('\'');
    for c in text.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('\'');
}

// ---------------------------------------------------------------------------------------------------------------
// Text forms of values

/// Java's `toString` of the object Jackson would have built for `value` (maps `{k=v}`, lists `[a, b]`, doubles as
/// `Double.toString`). Shared with script.rs, where a SWITCH result becomes its case by Java's `"" + result`.
pub(crate) fn write_java_string(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(flag) => out.push_str(if *flag { "true" } else { "false" }),
        Value::Number(number) => write_java_number(number, out),
        Value::String(text) => out.push_str(text),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                write_java_string(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (index, (key, item)) in map.iter().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                out.push_str(key);
                out.push('=');
                write_java_string(item, out);
            }
            out.push('}');
        }
    }
}

/// json-smart's `JSONArray.toString()`: compact JSON with its escaping.
fn write_json_smart_array(items: &[Value], out: &mut String) {
    out.push('[');
    for (index, item) in items.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        write_json_smart(item, out);
    }
    out.push(']');
}

fn write_json_smart(value: &Value, out: &mut String) {
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => write_java_string(value, out),
        Value::String(text) => write_json_smart_string(text, out),
        Value::Array(items) => write_json_smart_array(items, out),
        Value::Object(map) => {
            out.push('{');
            for (index, (key, item)) in map.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_json_smart_string(key, out);
                out.push(':');
                write_json_smart(item, out);
            }
            out.push('}');
        }
    }
}

/// json-smart's default string escaping: the JSON escapes plus `\/`, and `\uXXXX` for C0, DEL, C1 and U+2000–U+20FF.
fn write_json_smart_string(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' => out.push_str("\\/"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{2000}'..='\u{20ff}' => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Integers as they are; floating-point numbers as Java's `Double.toString`.
fn write_java_number(number: &serde_json::Number, out: &mut String) {
    if let Some(int) = number.as_i64() {
        let _ = write!(out, "{int}");
    } else if let Some(int) = number.as_u64() {
        let _ = write!(out, "{int}");
    } else if let Some(float) = number.as_f64() {
        write_java_double(float, out);
    } else {
        // Only reachable with serde_json's arbitrary_precision, which Baton does not enable.
        let _ = write!(out, "{number}");
    }
}

/// Java's `Double.toString` (shortest digits): plain for 10^-3 <= |v| < 10^7 (`2.5`, `100.0`), otherwise
/// `d.dddE<exp>` (`1.0E10`, `1.0E-4`).
fn write_java_double(value: f64, out: &mut String) {
    if value.is_nan() {
        out.push_str("NaN");
        return;
    }
    if value.is_sign_negative() {
        out.push('-');
    }
    let magnitude = value.abs();
    if magnitude.is_infinite() {
        out.push_str("Infinity");
        return;
    }
    if magnitude == 0.0 {
        out.push_str("0.0");
        return;
    }
    // Rust's `{:e}` prints the shortest digits that round-trip, like Java 19+: "1.2345e3", "1e-4". The value is
    // finite and non-zero here, so there is at least one digit and the exponent lies within ±324.
    let scientific = format!("{magnitude:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((scientific.as_str(), "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let exponent: i64 = exponent.parse().unwrap_or(0);
    if (1e-3..1e7).contains(&magnitude) {
        if exponent >= 0 {
            let int_len = exponent as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                push_zeros(int_len - digits.len(), out);
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            push_zeros((-exponent - 1) as usize, out);
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        out.push('.');
        out.push_str(if digits.len() > 1 { &digits[1..] } else { "0" });
        let _ = write!(out, "E{exponent}");
    }
}

fn push_zeros(count: usize, out: &mut String) {
    for _ in 0..count {
        out.push('0');
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Static checks

/// Calls `visit(path, text)` for every string in `template`, with its path relative to the template.
fn for_each_string(template: &Value, path: &mut String, visit: &mut impl FnMut(&str, &str)) {
    match template {
        Value::String(text) => visit(path, text),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let len = path.len();
                let _ = write!(path, "[{index}]");
                for_each_string(item, path, visit);
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let len = path.len();
                let plain = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if plain {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key);
                } else {
                    path.push('[');
                    let _ = write!(path, "{}", Value::String(key.clone()));
                    path.push(']');
                }
                for_each_string(item, path, visit);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

fn check_string(text: &str, path: &str, depth: usize, problems: &mut Vec<ExprProblem>) {
    let mut from = 0;
    loop {
        match next_expression(text, from) {
            Scan::Found { start, end } => {
                let whole = &text[start..end];
                let content = &text[start + 2..end - 1];
                if content.contains("${") {
                    if depth < MAX_NESTING {
                        // The outer path exists only once the inner expressions are resolved.
                        check_string(content, path, depth + 1, problems);
                    } else {
                        problems.push(ExprProblem {
                            path: path.to_owned(),
                            message: format!(
                                "`${{...}}` nested more than {MAX_NESTING} deep (it would resolve to null)"
                            ),
                        });
                    }
                } else if is_blank(content) {
                    problems.push(ExprProblem {
                        path: path.to_owned(),
                        message: format!("empty expression `{whole}` (Conductor replaces it with an empty string)"),
                    });
                } else if !is_special(content) {
                    if let Err(error) = compile_checked(content) {
                        problems.push(ExprProblem { path: path.to_owned(), message: format!("`{whole}`: {error}") });
                    }
                }
                from = end;
            }
            Scan::Unterminated { start } => {
                problems.push(ExprProblem {
                    path: path.to_owned(),
                    message: format!(
                        "unterminated `${{` at byte {start}: no matching `}}`, so it and everything after it stay \
                         literal text"
                    ),
                });
                return;
            }
            Scan::Done => return,
        }
    }
}

fn collect_roots(text: &str, depth: usize, roots: &mut BTreeSet<String>) {
    let mut from = 0;
    while let Scan::Found { start, end } = next_expression(text, from) {
        let content = &text[start + 2..end - 1];
        let limit = content.find("${").unwrap_or(content.len());
        if limit < content.len() && depth < MAX_NESTING {
            collect_roots(content, depth + 1, roots);
        }
        let special = limit == content.len() && is_special(content);
        if !special && !is_blank(content) {
            if let Some(root) = static_root(content, limit) {
                roots.insert(root);
            }
        }
        from = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The document Conductor would build: `workflow` plus one entry per task reference name. (The expectations
    /// below were produced by feeding Conductor this document with its keys sorted, the order our maps keep.)
    fn document() -> Value {
        json!({
            "workflow": {
                "correlationId": null,
                "input": {
                    "big": 1e10, "bucket": "media", "f": 2.5, "list": [1, 2, 3], "movieId": "m1", "n": 2,
                    "nul": null, "obj": {"a": [1, "x", null, {"k": "v/w"}], "b": 1}, "one": 1.0,
                    "small": 0.0001, "t": true, "url": "http://a/b", "k": "obj", "esc": "x$${y"
                },
                "output": null,
                "status": "RUNNING",
                "variables": {"count": 3},
                "workflowId": "wf-1"
            },
            "encode-ref": {
                "input": {"x": 1},
                "output": {
                    "key": "k",
                    "list": [{"name": "a", "price": 5}, {"name": "b", "price": 15}, {"name": "c"}],
                    "location": "s3://x"
                },
                "status": "COMPLETED",
                "taskId": "t-9"
            },
            "CPEWF_TASK_ID": "tid-1"
        })
    }

    fn roots_of(doc: Value) -> impl Fn(&str) -> Option<Value> {
        move |name: &str| doc.get(name).cloned()
    }

    fn run(template: &str) -> Value {
        resolve(&Value::String(template.to_owned()), &roots_of(document()))
    }

    /// (template, expected result as JSON). Expectations were checked against Conductor's algorithm running on
    /// Jayway json-path 2.4.0 (the version Conductor pins).
    const CASES: &[(&str, &str)] = &[
        // A whole-string expression keeps the JSON type.
        ("${workflow.input.movieId}", r#""m1""#),
        ("${workflow.input.obj}", r#"{"a":[1,"x",null,{"k":"v/w"}],"b":1}"#),
        ("${workflow.input.list}", "[1,2,3]"),
        ("${workflow.input.n}", "2"),
        ("${workflow.input.t}", "true"),
        ("${workflow.input.nul}", "null"),
        ("${workflow.variables.count}", "3"),
        ("${workflow.workflowId}", r#""wf-1""#),
        ("${workflow.correlationId}", "null"),
        ("${encode-ref.status}", r#""COMPLETED""#),
        ("${encode-ref.input.x}", "1"),
        ("${encode-ref.taskId}", r#""t-9""#),
        ("${ workflow.input.n }", "2"),
        ("${$.workflow.input.n}", "2"),
        ("${@.workflow.input.n}", "2"),
        // Missing things are null.
        ("${workflow.input.missing}", "null"),
        ("${missing.output.x}", "null"),
        ("${workflow.output.x}", "null"),
        ("${encode-ref.output.list[5].name}", "null"),
        ("${workflow.input.list[9]}", "null"),
        ("${workflow.input.list[-4]}", "null"),
        ("${workflow.input.list.name}", "null"),
        ("${workflow.input.n[0]}", "null"),
        // Mixed strings: Java's toString forms.
        ("s3://${workflow.input.bucket}/${encode-ref.output.key}.mp4", r#""s3://media/k.mp4""#),
        ("a ${workflow.input.obj} b", r#""a {a=[1, x, null, {k=v/w}], b=1} b""#),
        ("a ${workflow.input.list} b", r#""a [1, 2, 3] b""#),
        ("a ${workflow.input.nul} b", r#""a null b""#),
        ("a ${workflow.input.missing} b", r#""a null b""#),
        ("x${workflow.input.t}", r#""xtrue""#),
        (
            "${workflow.input}x",
            concat!(
                r#""{big=1.0E10, bucket=media, esc=x${y, f=2.5, k=obj, list=[1, 2, 3], movieId=m1, n=2, nul=null, "#,
                r#"obj={a=[1, x, null, {k=v/w}], b=1}, one=1.0, small=1.0E-4, t=true, url=http://a/b}x""#
            ),
        ),
        (
            "${workflow.input.f}/${workflow.input.big}/${workflow.input.small}/${workflow.input.one}",
            r#""2.5/1.0E10/1.0E-4/1.0""#,
        ),
        ("Name: ${workflow.input.movieId};\r\nVersion: ${workflow.input.n};", r#""Name: m1;\r\nVersion: 2;""#),
        // The `$${` escape, applied to the text after substitution.
        ("$${workflow.input.bucket}", r#""${workflow.input.bucket}""#),
        ("a $${x} b ${workflow.input.n}", r#""a ${x} b 2""#),
        ("a$${b", r#""a${b""#),
        ("$$${workflow.input.n}", r#""$${workflow.input.n}""#),
        ("${workflow.input.n} $${", r#""2 ${""#),
        ("${workflow.input.esc}", r#""x$${y""#),
        ("p ${workflow.input.esc}", r#""p x${y""#),
        (
            "${workflow.input.movieId} $${workflow.input.n}${workflow.input.n} ${workflow.input.n}$${workflow.input.k}",
            r#""m1 ${workflow.input.n}2 2${workflow.input.k}""#,
        ),
        // Unbalanced braces.
        ("${workflow.input.movieId", r#""${workflow.input.movieId""#),
        ("${a ${workflow.input.n}", r#""${a ${workflow.input.n}""#),
        ("${workflow.input.n}}", r#""2}""#),
        ("{${workflow.input.n}}", r#""{2}""#),
        // Nested expressions.
        ("${workflow.input.list[${workflow.variables.count}]}", "null"),
        ("${workflow.input.obj.a[${workflow.input.n}]}", "null"),
        ("pre ${workflow.input.list[${workflow.input.n}]}", r#""pre 3""#),
        ("${workflow.input.${workflow.input.k}.b}", "1"),
        ("${$${x}}", "null"),
        // Blank expressions.
        ("${}", r#""""#),
        ("${  }", r#""""#),
        ("${\t}", r#""""#),
        ("a${ }b", r#""ab""#),
        // Special names.
        ("${CPEWF_TASK_ID}", r#""tid-1""#),
        ("id-${CPEWF_TASK_ID}", r#""id-tid-1""#),
        ("${ CPEWF_TASK_ID}", "null"),
        ("${NETFLIX_ENV}", r#""${NETFLIX_ENV}""#),
        ("${NETFLIX_STACK}${workflow.input.n}", r#""${NETFLIX_STACK}2""#),
        ("${workflow.secrets.X}", r#""${workflow.secrets.X}""#),
        ("a ${workflow.secrets.X.b} b", r#""a ${workflow.secrets.X.b} b""#),
        ("${workflow.secrets}", "null"),
        ("${workflow.env.X}", "null"),
        // Jayway paths: indexes, brackets, quoting.
        ("${encode-ref.output.list[0].name}", r#""a""#),
        ("${workflow.input.list[-1]}", "3"),
        ("${workflow.input.list[ 1 ]}", "2"),
        ("${workflow.input.list[01]}", "2"),
        ("${['encode-ref'].output.key}", r#""k""#),
        ("${$['encode-ref'].output.key}", r#""k""#),
        ("${$[\"encode-ref\"][\"output\"]['key']}", r#""k""#),
        ("${workflow.input.bad name}", "null"),
        ("${workflow.input.n.}", "null"),
        ("${$workflow}", "null"),
        // Indefinite paths give the list of matches; in text, json-smart's JSON.
        ("${encode-ref.output..price}", "[5,15]"),
        ("${encode-ref.output.list[*].name}", r#"["a","b","c"]"#),
        ("${encode-ref.output.list.*.price}", "[5,15]"),
        ("${encode-ref.output.list[?(@.price > 10)]}", r#"[{"name":"b","price":15}]"#),
        ("${encode-ref.output.list[?(@.name == 'b')].price}", "[15]"),
        ("${workflow.input.list[0,1]}", "[1,2]"),
        ("${workflow.input.list[1:]}", "[2,3]"),
        ("${workflow.input..movieId}", r#"["m1"]"#),
        ("${missing.output..x}", "[]"),
        ("${encode-ref.output.nope[*]}", "[]"),
        ("x ${encode-ref.output..price} y", r#""x [5,15] y""#),
        ("x ${encode-ref.output.list[?(@.price > 10)]} y", r#""x [{\"name\":\"b\",\"price\":15}] y""#),
        ("x ${workflow.input.list[0:0]} y", r#""x [] y""#),
        ("${workflow.input.url}", r#""http://a/b""#),
        // Functions.
        ("${workflow.input.list.length()}", "3"),
        ("${workflow.input.obj.size()}", "2"),
        ("${workflow.input.list.length()} items", r#""3 items""#),
        ("${workflow.input.movieId.length()}", "null"),
        ("${workflow.input.nope.length()}", "null"),
        ("${encode-ref.output.list[*].length()}", "[2,2,1]"),
        ("${encode-ref.output..price.length()}", "[null,null]"),
    ];

    #[test]
    fn resolves_like_conductor() {
        let mut failures = Vec::new();
        for (template, expected) in CASES {
            let expected: Value = serde_json::from_str(expected).expect("test expectation is JSON");
            let actual = run(template);
            if actual != expected {
                failures.push(format!("{template}\n   expected {expected}\n   actual   {actual}"));
            }
        }
        assert!(failures.is_empty(), "{} case(s) differ:\n{}", failures.len(), failures.join("\n"));
    }

    /// Roots that hand out members in place, as the engine's do (src/engine/roots.rs).
    struct InPlace(Value);

    impl Roots for InPlace {
        fn root(&self, name: &str) -> Option<Value> {
            self.0.get(name).cloned()
        }

        fn member(&self, name: &str, key: &str) -> Member<'_> {
            match self.0.get(name).map(|root| root.get(key)) {
                None => Member::NoRoot,
                Some(None) => Member::Absent,
                Some(Some(Value::Object(map))) => Member::Map(map),
                Some(Some(value)) => Member::Value(value),
            }
        }

        fn whole_bytes(&self, name: &str, cap: usize) -> Option<usize> {
            self.0.get(name).map_or(Some(0), |root| super::super::size::value_within(root, cap))
        }
    }

    #[test]
    fn members_read_in_place_resolve_as_whole_roots_do() {
        let roots = InPlace(document());
        let mut failures = Vec::new();
        for (template, _) in CASES {
            let whole = run(template);
            let in_place = resolve(&Value::String((*template).to_owned()), &roots);
            if whole != in_place {
                failures.push(format!("{template}\n   whole roots {whole}\n   in place    {in_place}"));
            }
        }
        assert!(failures.is_empty(), "{} case(s) differ:\n{}", failures.len(), failures.join("\n"));
    }

    #[test]
    fn what_a_query_must_build_whole_counts_against_the_cap() {
        let big: Vec<Value> = (0..1000).map(|i| json!({"k": i})).collect();
        let roots = InPlace(json!({"workflow": {"input": {"n": 2, "big": big}}}));
        let cap = 200;
        // A member read in place costs what it copies: two bytes.
        assert_eq!(resolve_within(&json!("${workflow.input.n}"), &roots, cap), Ok((json!(2), 1)));
        // A query over the whole root, or over an object kept as a map, builds it first: counted, so over the cap.
        for path in ["${workflow..n}", "${workflow.input.*}", "${workflow}"] {
            assert_eq!(resolve_within(&json!(path), &roots, cap), Err(Oversize), "{path}");
        }
        // Under a cap that fits, the same queries resolve, and say what they counted.
        let (found, charged) = resolve_within(&json!("${workflow..n}"), &roots, 1 << 20).expect("fits");
        assert_eq!(found, json!([2]));
        assert!(charged > 9_000, "the root built for the query is counted: {charged}");
    }

    #[test]
    fn resolves_nested_maps_and_lists_without_touching_keys_or_scalars() {
        let template = json!({
            "movie": "${workflow.input.movieId}",
            "${workflow.input.n}": "key kept",
            "files": [
                "${workflow.input.bucket}/a",
                {"n": "${workflow.input.n}", "deep": [["${encode-ref.output.key}"]]}
            ],
            "count": 7,
            "flag": false,
            "none": null
        });
        let expected = json!({
            "movie": "m1",
            "${workflow.input.n}": "key kept",
            "files": ["media/a", {"n": 2, "deep": [["k"]]}],
            "count": 7,
            "flag": false,
            "none": null
        });
        assert_eq!(resolve(&template, &roots_of(document())), expected);
    }

    #[test]
    fn resolve_map_keeps_null_results() {
        let template: BTreeMap<String, Value> = [
            ("a".to_owned(), json!("${workflow.input.missing}")),
            ("b".to_owned(), json!(["${workflow.input.n}"])),
            ("c".to_owned(), json!("plain")),
        ]
        .into_iter()
        .collect();
        let resolved = resolve_map(&template, &roots_of(document()));
        assert_eq!(Value::Object(resolved), json!({"a": null, "b": [2], "c": "plain"}));
    }

    #[test]
    fn each_root_is_fetched_once_per_resolution() {
        let calls = std::cell::RefCell::new(Vec::new());
        let doc = document();
        let roots = |name: &str| {
            calls.borrow_mut().push(name.to_owned());
            doc.get(name).cloned()
        };
        let template = json!(["${workflow.input.n}", "${workflow.input.t}", "${missing.x}", "${missing.y}"]);
        assert_eq!(resolve(&template, &roots), json!([2, true, null, null]));
        assert_eq!(*calls.borrow(), vec!["workflow".to_owned(), "missing".to_owned()]);
    }

    #[test]
    fn task_id_is_left_literal_when_unknown_and_is_never_a_root() {
        let doc = document();
        let roots = |name: &str| if name == TASK_ID_PARAMETER { None } else { doc.get(name).cloned() };
        assert_eq!(resolve(&json!("${CPEWF_TASK_ID}"), &roots), json!("${CPEWF_TASK_ID}"));
        assert_eq!(resolve(&json!("${CPEWF_TASK_ID.output}"), &roots_of(document())), Value::Null);
    }

    #[test]
    fn stringified_values_follow_java_and_json_smart() {
        let doc = json!({"w": {
            "d": [2.5, 1e10, 1.0, 0.001, 1234567.0, 12345678.0, -0.0, 0.1, 100.0, 1e21, 123456789012.5, -1.5e-7],
            "u": ["http://a/b", "q\"uote", "tab\there", "é ü", "\u{1}", "\u{2028}x", "\u{7f}"],
            "m": [{"a": null, "k/ey": 1.5}],
            "big": 12345678901234567890u64,
            "neg": -5,
            "e": [],
            "eo": {}
        }});
        let roots = roots_of(doc);
        let text = |template: &str| resolve(&json!(template), &roots);
        assert_eq!(
            text("x ${w.d} y"),
            json!(concat!(
                "x [2.5, 1.0E10, 1.0, 0.001, 1234567.0, 1.2345678E7, -0.0, 0.1, 100.0, 1.0E21, ",
                "1.234567890125E11, -1.5E-7] y"
            ))
        );
        assert_eq!(
            text("x ${w.d[*]} y"),
            json!("x [2.5,1.0E10,1.0,0.001,1234567.0,1.2345678E7,-0.0,0.1,100.0,1.0E21,1.234567890125E11,-1.5E-7] y")
        );
        assert_eq!(
            text("x ${w.u[*]} y"),
            json!(
                "x [\"http:\\/\\/a\\/b\",\"q\\\"uote\",\"tab\\there\",\"é ü\",\"\\u0001\",\"\\u2028x\",\"\\u007F\"] y"
            )
        );
        assert_eq!(text("x ${w.m[*]} y"), json!("x [{\"a\":null,\"k\\/ey\":1.5}] y"));
        assert_eq!(text("x ${w.big} ${w.neg} y"), json!("x 12345678901234567890 -5 y"));
        assert_eq!(text("x ${w.e} ${w.eo} y"), json!("x [] {} y"));
    }

    #[test]
    fn scanner_matches_conductors_pattern() {
        // Spans as Conductor's regular expression reports them (checked with java.util.regex).
        let cases: &[(&str, &[(usize, usize)])] = &[
            ("${a} ${b}", &[(0, 4), (5, 9)]),
            ("${a}${b}", &[(0, 4), (4, 8)]),
            ("${a${b}}${c}", &[(0, 8), (8, 12)]),
            ("${a {x} b}", &[(0, 10)]),
            ("x ${a} y ${b", &[(2, 6)]),
            ("${a ${b}", &[]),
            ("${a{b}", &[]),
            ("${a}}}", &[(0, 4)]),
            ("{{${a}", &[(2, 6)]),
            ("$${a} ${b}", &[(6, 10)]),
            ("$$$}${${}", &[]),
            ("z${a}", &[(1, 5)]),
        ];
        for (text, expected) in cases {
            let mut spans = Vec::new();
            let mut from = 0;
            while let Scan::Found { start, end } = next_expression(text, from) {
                spans.push((start, end));
                from = end;
            }
            assert_eq!(spans.as_slice(), *expected, "{text}");
        }
    }

    #[test]
    fn check_template_reports_malformed_expressions_with_their_paths() {
        let template = json!({
            "ok": "${workflow.input.a} and ${ref-1.output.list[?(@.price > 10)]} ${CPEWF_TASK_ID}",
            "files": ["a", "b", "s3://${workflow.input.bucket"],
            "nested": {"empty": "x${}y", "odd key": "${workflow.input.a b}"},
            "filter": "${ref.output.items[?(@.name =~ /a.*/)]}",
            "everything": "${$..price}",
            "fn": "${ref.output.items.sum()}",
            "inner": "${ref.output[${workflow.input.bad path}]}",
            "list": [["${workflow.input.x[}"]],
        });
        let problems = check_template(&template);
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "everything",
                "files[2]",
                "filter",
                "fn",
                "inner",
                "list[0][0]",
                "nested.empty",
                "nested[\"odd key\"]"
            ],
            "{problems:#?}"
        );
        let message = |path: &str| &problems.iter().find(|p| p.path == path).expect("problem reported").message;
        assert!(message("files[2]").contains("unterminated"), "{}", message("files[2]"));
        assert!(message("nested.empty").contains("empty expression"));
        assert!(message("filter").contains("does not parse"), "{}", message("filter"));
        assert!(message("everything").contains("must start with"));
        assert!(message("fn").contains("sum()"));
        assert!(message("inner").contains("bad path"));
        assert!(message("nested[\"odd key\"]").contains("bracket notation"));
        assert_eq!(problems[1].to_string(), format!("files[2]: {}", problems[1].message));
    }

    #[test]
    fn check_template_accepts_well_formed_templates() {
        let template = json!({
            "a": ["${workflow.input.a}", "$${not.an.expression", "plain", 1, null],
            "b": "${ref.output.list[${workflow.variables.i}].name}-${workflow.secrets.token}",
            "c": "${['my ref'].output['content-type']} ${x.output.a[-1]} ${x.output.a[1:]} ${x.output..b.length()}",
            "d": "${NETFLIX_ENV}${workflow.input.list[*]}${$.workflow.input}",
        });
        assert_eq!(check_template(&template), vec![]);
        assert_eq!(check_template(&json!("${}")).first().map(|p| p.path.as_str()), Some(""));
    }

    #[test]
    fn referenced_roots_lists_static_root_names() {
        let template = json!({
            "a": "${workflow.input.a} ${encode-ref.output.key}",
            "b": ["${$['quoted ref'].output}", {"c": "${inner_ref.output.list[${index_ref.output.i}]}"}],
            "d": "${${dynamic_ref.output.name}.output} ${CPEWF_TASK_ID} ${NETFLIX_ENV} ${} $${escaped.x}",
            "e": "${workflow.secrets.token} ${bad-ref.output.a b} ${$..anywhere} ${unterminated.x",
        });
        let roots: Vec<String> = referenced_roots(&template).into_iter().collect();
        assert_eq!(roots, ["bad-ref", "dynamic_ref", "encode-ref", "index_ref", "inner_ref", "quoted ref", "workflow"]);
    }

    #[test]
    fn hostile_nesting_resolves_to_null_instead_of_overflowing_the_stack() {
        let deep_expressions = format!("{}workflow.input.n{}", "${".repeat(5_000), "}".repeat(5_000));
        assert_eq!(run(&deep_expressions), Value::Null);
        let problems = check_template(&json!(deep_expressions));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.contains("nested more than"));
        assert!(referenced_roots(&json!(deep_expressions)).is_empty());

        let deep_filter = format!("${{workflow.input.list[?{}@.a{}]}}", "(".repeat(5_000), ")".repeat(5_000));
        assert_eq!(run(&deep_filter), Value::Null);
        assert!(check_template(&json!(deep_filter))[0].message.contains("nested too deeply"));

        // Sixteen levels inside the outermost expression are still resolved; one more is not.
        let roots = |name: &str| (name == "r").then(|| json!({"z": "z"}));
        let nested = |levels: usize| json!(format!("{}z{}", "${r.".repeat(levels), "}".repeat(levels)));
        assert_eq!(resolve(&nested(17), &roots), json!("z"));
        assert_eq!(check_template(&nested(17)), vec![]);
        assert_eq!(resolve(&nested(18), &roots), Value::Null);
        assert_eq!(check_template(&nested(18)).len(), 1);
    }

    #[test]
    fn rewrites_jayway_names_for_the_rfc_engine() {
        let compiled = compile("my-ref.output.content-type[*]..it's").expect("compiles");
        assert_eq!(compiled.root, "my-ref");
        assert_eq!(compiled.rfc_query(), "$['output']['content-type'][*]..['it\\'s']");
        assert!(JsonPath::parse(&compiled.rfc_query()).is_ok());
        assert_eq!(compile("$..x"), Err(PathError::NoRoot));
        assert_eq!(compile("$"), Err(PathError::NoRoot));
        assert_eq!(compile("$.*.x"), Err(PathError::NoRoot));
    }
}
