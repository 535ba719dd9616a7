//! jq for Conductor's `JSON_JQ_TRANSFORM` task, on jaq (jaq-core, jaq-std, jaq-json).
//!
//! Owns: compiling a jq query with the jq standard library, running it on a task's input, converting its outputs
//! to JSON, and the limits that keep a query from stalling or crashing the replica that applies it.
//! Must not touch: clocks, the environment, files, the network, or any engine state. Every replica runs the same
//! query on the same input and must get the same outputs, so:
//!
//! - `now`, `localtime`, `strflocaltime`, `input`, `inputs`, `halt`, modules (`import`/`include`) and `$__prog_args`
//!   do not exist (a query using them is refused when it is compiled); `env` and `$ENV` are `{}`; `debug` and
//!   `stderr` pass their input through without logging it. `strptime` refuses IANA zone names (`%Q`), which
//!   would be read from the host's time-zone database. Everything else of jq's standard library is there:
//!   `map`, `select`, `to_entries`, `test`/`sub` (regular expressions), `@base64`, `strftime` (UTC), `floor`, ...
//! - A query runs on a counted budget of steps (each evaluation of a term of the compiled query is one step;
//!   `range` is defined in jq rather than natively so that its numbers are counted too), never on time: a runaway
//!   query stops with [`JqError::BudgetExceeded`] at the same point everywhere. Recursion is bounded by the stack
//!   space it uses ([`JqError::TooDeep`]), measured the same way on every replica running the same binary.
//! - jaq recurses natively, so a query runs on its own thread with a large, fixed stack
//!   ([`WORKER_STACK_BYTES`], reserved address space; only the pages touched are backed), where the step budget
//!   and the depth check stop it long before the stack ends; values nest no deeper than the budget allows, so
//!   dropping or printing them fits too.
//!
//! One gap remains: jaq counts no memory. One step can build a large value from a small input
//! (`"x" * 100000000` is 100 MB), and a request the allocator cannot meet (`"x" * 1000000000000`) aborts the
//! process, as any failed allocation does in Rust, on every replica that applies it. Queries come with workflow
//! definitions, so registering one must stay a trusted operation until this is closed.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, PoisonError};

use jaq_core::box_iter::box_once;
use jaq_core::data::{DataT, HasLut};
use jaq_core::load::{self, Arena, File, Loader};
use jaq_core::native::{v, Fun};
use jaq_core::{Compiler, Ctx, Error as JqCoreError, Exn, Native, Vars};
use jaq_json::{Num, Val};
use serde_json::{Map, Number, Value};

use super::model::MAX_VALUE_DEPTH;

/// Stack reserved for the thread a query runs on (address space only: untouched pages cost no memory).
pub const WORKER_STACK_BYTES: usize = 256 * 1024 * 1024;

/// Stack a query's evaluation may use on that thread before it stops with [`JqError::TooDeep`]. The rest of
/// [`WORKER_STACK_BYTES`] is headroom for native recursion that is not checked (dropping, printing or comparing
/// deeply nested values, parsing a deeply nested query).
const MAX_EVAL_STACK_BYTES: usize = 64 * 1024 * 1024;

/// Nesting deeper than this in a `fromjson` input is refused: jaq's JSON parser recurses natively.
const MAX_FROMJSON_DEPTH: usize = 10_000;

/// Query text longer than this is refused before parsing (the parser recurses natively).
pub const MAX_QUERY_BYTES: usize = 16 * 1024;

/// An output nested deeper than this is refused: the engine keeps no value nested deeper ([`MAX_VALUE_DEPTH`]).
pub const MAX_OUTPUT_DEPTH: usize = MAX_VALUE_DEPTH;

/// How much one evaluation may do; counted, never timed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JqLimits {
    /// Steps allowed: evaluations of terms of the compiled query (including the standard library's definitions)
    /// and outputs. The default, 1,000,000, is at most about 0.15 s of work in a release build;
    /// `map(select(.ok) | {id, name})` over a thousand objects takes about 16,000 steps, `range` about 11 per
    /// number.
    pub max_steps: u64,
}

impl Default for JqLimits {
    fn default() -> Self {
        JqLimits { max_steps: 1_000_000 }
    }
}

/// Why a query gave no outputs. Deterministic: the same query and input give the same error on every replica.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum JqError {
    /// The query does not parse, or names a filter or variable that does not exist.
    #[error("jq query does not compile: {0}")]
    Parse(String),
    /// The query raised an error (`error("...")`, `1 + "a"`, `.[0]` on an object, ...) or gave an output that
    /// cannot be JSON.
    #[error("jq query failed: {0}")]
    Runtime(String),
    /// The query used up [`JqLimits::max_steps`].
    #[error("jq query exceeded its step budget and was stopped")]
    BudgetExceeded,
    /// The query recursed deeper than its stack allows.
    #[error("jq query recursed too deeply and was stopped")]
    TooDeep,
    /// The thread a query runs on could not be started (the host is out of threads or memory). This says nothing
    /// about the query and may differ between replicas: never record it as a task's outcome; treat it like a
    /// storage failure.
    #[error("jq is unavailable on this node: {0}")]
    Unavailable(String),
}

/// All outputs of `query` applied to `input`, in order, with the default [`JqLimits`].
///
/// Conductor's `JSON_JQ_TRANSFORM` applies `inputParameters.queryExpression` to the task's whole input (including
/// `queryExpression` itself) and outputs `{"result": <first output or null>, "resultList": [<all outputs>]}`; on
/// an error the task fails with the message as `reasonForIncompletion` and `output.error`.
///
/// Numbers keep jq's kind: integers stay integers and floats stay floats (`4 / 2` is `2.0`, as jackson-jq gives
/// Conductor); `nan` becomes `null` and `infinite` the largest float, as jq prints them.
pub fn eval(query: &str, input: &Value) -> Result<Vec<Value>, JqError> {
    eval_with_limits(query, input, &JqLimits::default())
}

/// [`eval`] with explicit limits.
pub fn eval_with_limits(query: &str, input: &Value, limits: &JqLimits) -> Result<Vec<Value>, JqError> {
    on_worker(|| run(&*compiled(query)?, input, limits.max_steps))
}

/// Compiles `query` without running it, for refusing bad definitions at registration.
pub fn check(query: &str) -> Result<(), JqError> {
    on_worker(|| compiled(query).map(drop))
}

/// Compiled queries by text. Compiling is a pure function of the text, so the cache changes no result, only the
/// cost: compiling a query with the standard library takes about a millisecond, running a small one microseconds.
static COMPILED: Mutex<BTreeMap<String, Arc<Filter>>> = Mutex::new(BTreeMap::new());

/// More distinct queries than this empty the cache (workflow definitions use a small, stable set).
const MAX_COMPILED: usize = 512;

fn compiled(query: &str) -> Result<Arc<Filter>, JqError> {
    // A panic elsewhere cannot leave the map half-updated, so a poisoned lock is still usable.
    let cache = || COMPILED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(filter) = cache().get(query) {
        return Ok(Arc::clone(filter));
    }
    let filter = Arc::new(compile(query, &Arena::default())?);
    let mut cache = cache();
    if cache.len() >= MAX_COMPILED {
        cache.clear();
    }
    cache.insert(query.to_owned(), Arc::clone(&filter));
    Ok(filter)
}

/// Marker for the data jaq filters run with: jaq-json values, and a [`Meter`] that counts steps.
struct Metered;

impl DataT for Metered {
    type V<'a> = Val;
    type Data<'a> = &'a Meter<'a>;
}

type Filter = jaq_core::Filter<Metered>;

/// Counts the steps of one evaluation and watches its stack. jaq asks for the lookup table each time it starts
/// evaluating a term, which makes [`HasLut::lut`] the place to count.
struct Meter<'a> {
    lut: &'a jaq_core::Lut<Metered>,
    steps: Cell<u64>,
    max_steps: u64,
    /// Address of a local at the start of the evaluation; the stack grows down from it.
    stack_base: usize,
}

impl Meter<'_> {
    fn tick(&self) {
        let steps = self.steps.get() + 1;
        self.steps.set(steps);
        if steps > self.max_steps {
            stop(Stop::Budget);
        }
        if self.stack_base.saturating_sub(stack_address()) > MAX_EVAL_STACK_BYTES {
            stop(Stop::Depth);
        }
    }
}

impl<'a> HasLut<'a, Metered> for &'a Meter<'a> {
    fn lut(&self) -> &'a jaq_core::Lut<Metered> {
        self.tick();
        self.lut
    }
}

/// Why an evaluation was unwound. jaq offers no way to abort an evaluation, so the meter unwinds the worker's stack
/// with this payload (without invoking the panic hook) and [`on_worker`] turns it back into a [`JqError`].
enum Stop {
    Budget,
    Depth,
}

fn stop(why: Stop) -> ! {
    panic::resume_unwind(Box::new(why))
}

/// The current stack position: the address of a local variable.
#[inline(never)]
fn stack_address() -> usize {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as usize
}

/// Runs `job` on a fresh thread with [`WORKER_STACK_BYTES`] of stack, turning a [`Stop`] into its error.
fn on_worker<T: Send>(job: impl FnOnce() -> Result<T, JqError> + Send) -> Result<T, JqError> {
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("baton-jq".to_owned())
            .stack_size(WORKER_STACK_BYTES)
            .spawn_scoped(scope, move || panic::catch_unwind(AssertUnwindSafe(job)))
            .map_err(|e| JqError::Unavailable(format!("cannot start the jq thread: {e}")))?;
        let caught = match worker.join() {
            Ok(caught) => caught,
            Err(payload) => Err(payload),
        };
        caught.unwrap_or_else(|payload| match payload.downcast::<Stop>() {
            Ok(why) => Err(match *why {
                Stop::Budget => JqError::BudgetExceeded,
                Stop::Depth => JqError::TooDeep,
            }),
            // A panic inside jaq is a bug there; it is as deterministic as the query, so report it rather than
            // take the node down on every replica.
            Err(payload) => {
                let text = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                Err(JqError::Runtime(format!("internal error in jq: {text}")))
            }
        })
    })
}

/// Definitions loaded before jaq-core's own, which call `range/3` and (in jaq-std) `halt/1`.
///
/// `range/3` replaces jaq's native one so that every number it yields is a counted step.
const EARLY_DEFS: &str = r#"
def range($from; $upto; $by):
  if $by > 0 then $from | def up: if . < $upto then ., (. + $by | up) else {}[] end; up
  elif $by < 0 then $from | def down: if . > $upto then ., (. + $by | down) else {}[] end; down
  else $from | def same: if . != $upto then ., (. + $by | same) else {}[] end; same
  end;
def halt($code): "halt is not available in Baton" | error_empty;
"#;

/// Definitions loaded after the standard library, replacing some of its filters.
const LATE_DEFS: &str = r#"
def env: {};
def strptime($fmt):
  if $fmt | test("%[-_0^#]*[0-9]*:?Q") then error("strptime: IANA time zones (%Q) are not available in Baton")
  else baton_native_strptime($fmt) end;
"#;

/// Native filters removed: they read the clock, the host's time zone or standard input, or stop the process.
const REMOVED_NATIVES: [&str; 6] = ["now", "localtime", "strflocaltime", "halt", "range", "env"];

fn natives() -> impl Iterator<Item = Fun<Metered>> {
    let quiet: [Fun<Metered>; 3] = [
        // `debug` and `stderr` would log user data through the `log` crate.
        ("debug_empty", v(0), Native::new(|_| Box::new(std::iter::empty()))),
        ("stderr_empty", v(0), Native::new(|_| Box::new(std::iter::empty()))),
        ("fromjson", v(0), Native::new(|cv| box_once(from_json(&cv.1).map_err(Exn::from)))),
    ];
    let kept = jaq_core::funs::<Metered>()
        .chain(jaq_std::funs::<Metered>())
        .chain(jaq_json::funs::<Metered>())
        .filter(|(name, _, _)| !REMOVED_NATIVES.contains(name) && !matches!(*name, "debug_empty" | "stderr_empty"))
        .filter(|(name, _, _)| *name != "fromjson")
        .map(|(name, args, native)| (if name == "strptime" { "baton_native_strptime" } else { name }, args, native));
    kept.chain(quiet)
}

/// `fromjson`, refusing nesting deeper than [`MAX_FROMJSON_DEPTH`] before jaq's recursive parser sees it.
/// Like jq, a string holding several JSON values gives the first (`fromjson` in jq 1.7 takes exactly one).
fn from_json(v: &Val) -> Result<Val, JqCoreError<Val>> {
    let text = match v {
        Val::TStr(b) | Val::BStr(b) => b.as_ref().as_ref(),
        other => return Err(JqCoreError::str(format_args!("{other} cannot be parsed as JSON: not a string"))),
    };
    if nesting_depth(text) > MAX_FROMJSON_DEPTH {
        return Err(JqCoreError::str(format_args!("fromjson: input nests deeper than {MAX_FROMJSON_DEPTH} levels")));
    }
    jaq_json::read::parse_single(text).map_err(|e| JqCoreError::str(format_args!("{v} cannot be parsed as JSON: {e}")))
}

/// Deepest bracket nesting in JSON text, ignoring brackets inside strings.
fn nesting_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &byte in text {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn compile<'s>(query: &'s str, arena: &'s Arena) -> Result<Filter, JqError> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(JqError::Parse(format!("the query is longer than {MAX_QUERY_BYTES} bytes")));
    }
    let early = parse_defs(EARLY_DEFS)?;
    let late = parse_defs(LATE_DEFS)?;
    let defs = early.into_iter().chain(jaq_core::defs()).chain(jaq_std::defs()).chain(jaq_json::defs()).chain(late);
    let modules = Loader::new(defs)
        .load(arena, File { code: query, path: () })
        .map_err(|errors| JqError::Parse(load_errors(query, errors)))?;
    Compiler::default().with_funs(natives()).with_global_vars(["$ENV"]).compile(modules).map_err(|errors| {
        let names: Vec<String> = errors
            .iter()
            .flat_map(|(_, errs)| errs.iter())
            .map(|(name, undefined)| format!("undefined {} `{name}`", undefined.as_str()))
            .collect();
        JqError::Parse(names.join("; "))
    })
}

fn parse_defs(code: &'static str) -> Result<Vec<load::parse::Def<&'static str>>, JqError> {
    load::parse(code, |p| p.defs()).ok_or_else(|| JqError::Parse("Baton's jq definitions do not parse".to_owned()))
}

/// Describes lexing and parsing errors with the line and column where they were found.
fn load_errors(query: &str, errors: load::Errors<&str, ()>) -> String {
    let at = |found: &str| {
        // `found` is a slice of `query`; its address gives its offset.
        let offset = (found.as_ptr() as usize).saturating_sub(query.as_ptr() as usize).min(query.len());
        let before = &query[..floor_char_boundary(query, offset)];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        let found = if found.is_empty() { "end of query".to_owned() } else { format!("`{}`", first_chars(found, 20)) };
        format!("{found} at line {line}, column {column}")
    };
    let mut messages = Vec::new();
    for (_, error) in errors {
        match error {
            load::Error::Io(errs) => messages.extend(errs.into_iter().map(|(path, e)| format!("{path}: {e}"))),
            load::Error::Lex(errs) => messages
                .extend(errs.into_iter().map(|(expect, found)| format!("expected {}: {}", expect.as_str(), at(found)))),
            load::Error::Parse(errs) => messages
                .extend(errs.into_iter().map(|(expect, found)| format!("expected {}: {}", expect.as_str(), at(found)))),
        }
    }
    messages.join("; ")
}

fn floor_char_boundary(s: &str, mut index: usize) -> usize {
    while !s.is_char_boundary(index) {
        index -= 1;
    }
    index
}

fn first_chars(s: &str, n: usize) -> String {
    let head: String = s.chars().take(n).collect();
    if head.len() < s.len() {
        format!("{head}...")
    } else {
        head
    }
}

fn run(filter: &Filter, input: &Value, max_steps: u64) -> Result<Vec<Value>, JqError> {
    let meter = Meter { lut: &filter.lut, steps: Cell::new(0), max_steps, stack_base: stack_address() };
    let env = Val::obj(jaq_json::Map::default());
    let ctx = Ctx::<Metered>::new(&meter, Vars::new([env]));
    let mut outputs = Vec::new();
    for output in filter.id.run((ctx, to_val(input))) {
        meter.tick();
        match output {
            Ok(value) => outputs.push(to_json(&value, 0)?),
            Err(exn) => {
                return Err(match exn.get_err() {
                    Ok(error) => JqError::Runtime(error_text(error)),
                    // Only `halt` raises anything else, and it is replaced by an error.
                    Err(_) => JqError::Runtime("the query halted".to_owned()),
                });
            }
        }
    }
    Ok(outputs)
}

/// The text of a jq error: the message itself for `error("message")`, otherwise jaq's description.
fn error_text(error: JqCoreError<Val>) -> String {
    match error.into_val() {
        Val::TStr(b) | Val::BStr(b) => String::from_utf8_lossy(b.as_ref()).into_owned(),
        other => other.to_string(),
    }
}

fn to_val(value: &Value) -> Val {
    match value {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Val::Num(Num::from_integral(i))
            } else if let Some(u) = n.as_u64() {
                Val::Num(Num::from_integral(u))
            } else {
                Val::Num(Num::Float(n.as_f64().unwrap_or(f64::NAN)))
            }
        }
        Value::String(s) => Val::from(s.clone()),
        Value::Array(items) => items.iter().map(to_val).collect(),
        Value::Object(map) => Val::obj(map.iter().map(|(k, v)| (Val::from(k.clone()), to_val(v))).collect()),
    }
}

fn to_json(value: &Val, depth: usize) -> Result<Value, JqError> {
    if depth > MAX_OUTPUT_DEPTH {
        return Err(JqError::Runtime(format!("an output nests deeper than {MAX_OUTPUT_DEPTH} levels")));
    }
    Ok(match value {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Num(n) => number(n),
        Val::TStr(b) | Val::BStr(b) => Value::String(String::from_utf8_lossy(b.as_ref()).into_owned()),
        Val::Arr(items) => Value::Array(items.iter().map(|v| to_json(v, depth + 1)).collect::<Result<_, _>>()?),
        Val::Obj(map) => {
            let mut out = Map::new();
            for (k, v) in map.iter() {
                let key = match k {
                    Val::TStr(b) | Val::BStr(b) => String::from_utf8_lossy(b.as_ref()).into_owned(),
                    other => other.to_string(),
                };
                out.insert(key, to_json(v, depth + 1)?);
            }
            Value::Object(out)
        }
    })
}

/// A jq number as JSON: integers as integers (big ones as floats when they exceed 64 bits), floats as floats,
/// `nan` as `null` and infinities as the largest finite float, as jq prints them.
fn number(n: &Num) -> Value {
    let float = |f: f64| {
        if f.is_nan() {
            Value::Null
        } else {
            let f = f.clamp(f64::MIN, f64::MAX);
            Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null)
        }
    };
    match n {
        Num::Int(i) => Value::from(*i as i64),
        Num::Float(f) => float(*f),
        Num::BigInt(_) | Num::Dec(_) => {
            let text = n.to_string();
            match (text.parse::<i64>(), text.parse::<u64>()) {
                (Ok(i), _) => Value::from(i),
                (_, Ok(u)) => Value::from(u),
                _ => float(text.parse::<f64>().unwrap_or(f64::NAN)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(query: &str, input: Value) -> Value {
        match eval(query, &input) {
            Ok(mut outputs) if outputs.len() == 1 => outputs.remove(0),
            other => panic!("{query}: {other:?}"),
        }
    }

    fn all(query: &str, input: Value) -> Vec<Value> {
        match eval(query, &input) {
            Ok(outputs) => outputs,
            Err(e) => panic!("{query}: {e:?}"),
        }
    }

    // --- Conductor's documented examples (json-jq-transform-task.md) and JsonJqTransformTest ---

    #[test]
    fn doc_example_concatenates_arrays() {
        let input = json!({
            "key1": {"value1": ["a", "b"]},
            "key2": {"value2": ["c", "d"]},
            "queryExpression": "{ key3: (.key1.value1 + .key2.value2) }"
        });
        assert_eq!(all("{ key3: (.key1.value1 + .key2.value2) }", input), vec![json!({"key3": ["a", "b", "c", "d"]})]);
    }

    #[test]
    fn doc_example_maps_persons() {
        let input = json!({"persons": [
            {"name": "some", "last": "name", "email": "mail@mail.com", "id": 1},
            {"name": "some2", "last": "name2", "email": "mail2@mail.com", "id": 2}
        ]});
        assert_eq!(
            one(".persons | map({user:{email,id}})", input),
            json!([{"user": {"email": "mail@mail.com", "id": 1}}, {"user": {"email": "mail2@mail.com", "id": 2}}])
        );
    }

    #[test]
    fn doc_example_filters_stargazers() {
        let input = json!({"starlist": [
            {"starred_at": "2016-12-14T19:55:46Z", "user": {"login": "lzehrung", "id": 924226}},
            {"starred_at": "2023-01-01T00:00:00Z", "user": {"login": "late", "id": 1}}
        ]});
        let query = r#"[.starlist[] | select (.starred_at > "2020-01-01") |{occurred_at:.starred_at, member: {github:  .user.login}}]"#;
        assert_eq!(one(query, input), json!([{"occurred_at": "2023-01-01T00:00:00Z", "member": {"github": "late"}}]));
    }

    #[test]
    fn conductor_transform_tests() {
        // dataShouldBeCorrectlySelected
        let input = json!({"queryExpression": ".inputJson.key[0]", "inputJson": {"key": ["VALUE"]}});
        assert_eq!(all(".inputJson.key[0]", input), vec![json!("VALUE")]);
        // mapResultShouldBeCorrectlyExtracted
        let input = json!({"input": {
            "method": "POST", "successExpression": null,
            "requestTransform": "{name: (.body.name + \" you are a \" + .body.title) }",
            "responseTransform": "{result: \"reply: \" + .response.body.message}"
        }});
        let query = r#"{ requestTransform: .input.requestTransform // ".body"  , responseTransform: .input.responseTransform // ".response.body", method: .input.method // "GET", document: .input.document // "rgt_results", successExpression: .input.successExpression // "true"   }"#;
        assert_eq!(
            one(query, input),
            json!({
                "requestTransform": "{name: (.body.name + \" you are a \" + .body.title) }",
                "responseTransform": "{result: \"reply: \" + .response.body.message}",
                "method": "POST", "document": "rgt_results", "successExpression": "true"
            })
        );
        // stringResultShouldBeCorrectlyExtracted
        assert_eq!(
            one(r#"if(.data | length >0) then "EXISTS" else "CREATE" end"#, json!({"data": []})),
            json!("CREATE")
        );
        // listResultShouldBeCorrectlyExtracted
        let input = json!({"inputData": {"request": {"transitions": [
            {"name": "redeliver"}, {"name": "redeliver_from_validation_error"}, {"name": "redelivery"}
        ]}}});
        assert_eq!(
            one(".inputData.request.transitions | map(.name)", input),
            json!(["redeliver", "redeliver_from_validation_error", "redelivery"])
        );
        // nullResultShouldBeCorrectlyExtracted
        assert_eq!(all("null", json!({})), vec![Value::Null]);
        // simpleErrorShouldBeDisplayed: an unfinished object is a compile error.
        assert!(matches!(eval("{", &json!({})), Err(JqError::Parse(_))));
    }

    #[test]
    fn several_outputs_and_none() {
        assert_eq!(all(".[]", json!([1, "a", null])), vec![json!(1), json!("a"), Value::Null]);
        assert_eq!(all("empty", json!({})), Vec::<Value>::new());
        assert_eq!(all(".a, .b", json!({"a": 1, "b": 2})), vec![json!(1), json!(2)]);
    }

    #[test]
    fn standard_library_is_there() {
        let input = json!({"items": [{"k": "b", "n": 2}, {"k": "a", "n": 1}, {"k": "c", "n": 3}]});
        assert_eq!(one("[.items[] | select(.n > 1) | .k]", input.clone()), json!(["b", "c"]));
        assert_eq!(one(".items | sort_by(.n) | map(.k)", input.clone()), json!(["a", "b", "c"]));
        assert_eq!(one(".items | map({(.k): .n}) | add", input.clone()), json!({"a": 1, "b": 2, "c": 3}));
        assert_eq!(
            one("{a: 1, b: 2} | to_entries", json!(null)),
            json!([{"key": "a", "value": 1}, {"key": "b", "value": 2}])
        );
        assert_eq!(one("[{key: \"x\", value: 1}] | from_entries", json!(null)), json!({"x": 1}));
        assert_eq!(one("{a: 1} | with_entries(.value += 1)", json!(null)), json!({"a": 2}));
        assert_eq!(one(".items | group_by(.n > 1) | map(length)", input.clone()), json!([1, 2]));
        assert_eq!(one(".items | map(.n) | add / length", input.clone()), json!(2.0));
        assert_eq!(one("[.items[].k] | join(\",\")", input.clone()), json!("b,a,c"));
        assert_eq!(one(".items | any(.n == 3)", input.clone()), json!(true));
        assert_eq!(one("[paths] | length", json!({"a": [1, {"b": 2}]})), json!(4));
        assert_eq!(one("\"a-b-c\" | split(\"-\")", json!(null)), json!(["a", "b", "c"]));
        assert_eq!(one("\"abc123\" | test(\"[0-9]+\")", json!(null)), json!(true));
        assert_eq!(one("\"a1b22\" | [scan(\"[0-9]+\")]", json!(null)), json!(["1", "22"]));
        assert_eq!(one("\"hello\" | sub(\"l+\"; \"L\")", json!(null)), json!("heLo"));
        assert_eq!(one("\"hi\" | @base64", json!(null)), json!("aGk="));
        assert_eq!(one("[1,[2]] | tojson", json!(null)), json!("[1,[2]]"));
        assert_eq!(one("\"{\\\"a\\\":[1,2]}\" | fromjson", json!(null)), json!({"a": [1, 2]}));
        assert_eq!(one("3.7 | floor", json!(null)), json!(3));
        assert_eq!(one("[range(5)]", json!(null)), json!([0, 1, 2, 3, 4]));
        assert_eq!(one("[range(0; 10; 3)]", json!(null)), json!([0, 3, 6, 9]));
        assert_eq!(one("[range(5; 0; -2)]", json!(null)), json!([5, 3, 1]));
        assert_eq!(one("[limit(3; repeat(1))]", json!(null)), json!([1, 1, 1]));
        assert_eq!(one("[.[] | tostring]", json!([1, "a", null])), json!(["1", "a", "null"]));
        assert_eq!(one("1700000000 | todate", json!(null)), json!("2023-11-14T22:13:20Z"));
        assert_eq!(one("\"2023-11-14T22:13:20Z\" | fromdate", json!(null)), json!(1_700_000_000));
        assert_eq!(one("1700000000 | strftime(\"%Y-%m-%d %H:%M\")", json!(null)), json!("2023-11-14 22:13"));
        assert_eq!(one("\"2023-11-14\" | strptime(\"%Y-%m-%d\") | mktime", json!(null)), json!(1_699_920_000));
        assert_eq!(one("[1, 2] | debug | length", json!(null)), json!(2));
        assert_eq!(one("def f(x): x * 2; f(.)", json!(3)), json!(6));
        assert_eq!(one("reduce .[] as $x (0; . + $x)", json!([1, 2, 3])), json!(6));
        assert_eq!(one("[foreach .[] as $x (0; . + $x)]", json!([1, 2, 3])), json!([1, 3, 6]));
        assert_eq!(one(".a as $x | $x + 1", json!({"a": 1})), json!(2));
        assert_eq!(one("try error(\"boom\") catch .", json!(null)), json!("boom"));
        assert_eq!(one("[.[] | numbers]", json!([1, "a", 2.5])), json!([1, 2.5]));
        assert_eq!(one("keys", json!({"b": 1, "a": 2})), json!(["a", "b"]));
        assert_eq!(one("del(.a)", json!({"a": 1, "b": 2})), json!({"b": 2}));
        assert_eq!(one(".a.b |= . + 1", json!({"a": {"b": 1}})), json!({"a": {"b": 2}}));
        assert_eq!(one("ascii_downcase", json!("ABC")), json!("abc"));
        assert_eq!(one("unique", json!([3, 1, 3])), json!([1, 3]));
        assert_eq!(
            one("walk(if type == \"number\" then . + 1 else . end)", json!([1, {"a": 2}])),
            json!([2, {"a": 3}])
        );
    }

    #[test]
    fn numbers_keep_their_kind() {
        assert_eq!(one("1 + 1", json!(null)), json!(2));
        assert_eq!(one("4 / 2", json!(null)), json!(2.0));
        assert_eq!(one(".", json!(1.5)), json!(1.5));
        assert_eq!(one(".", json!(u64::MAX)), json!(u64::MAX));
        assert_eq!(one(".", json!(i64::MIN)), json!(i64::MIN));
        assert_eq!(one("nan", json!(null)), Value::Null);
        assert_eq!(one("infinite", json!(null)), json!(f64::MAX));
        assert_eq!(one("-infinite", json!(null)), json!(f64::MIN));
        assert_eq!(one("100000000000000000000", json!(null)), json!(1e20));
        assert_eq!(one("1.50", json!(null)), json!(1.5));
        assert_eq!(one("9223372036854775807 + 1", json!(null)), json!(9_223_372_036_854_775_808u64));
    }

    #[test]
    fn errors_are_reported_not_raised() {
        assert_eq!(eval("error(\"custom failure\")", &json!(null)), Err(JqError::Runtime("custom failure".into())));
        match eval(".a + 1", &json!({"a": "x"})) {
            Err(JqError::Runtime(m)) => assert!(m.contains("cannot"), "{m}"),
            other => panic!("{other:?}"),
        }
        match eval(".a.b", &json!({"a": 5})) {
            Err(JqError::Runtime(m)) => assert!(m.contains("cannot"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Outputs before the error are dropped: the task fails, as in Conductor.
        assert!(matches!(eval("1, error(\"late\")", &json!(null)), Err(JqError::Runtime(_))));
        match eval(".a |\n  map(.b", &json!(null)) {
            Err(JqError::Parse(m)) => assert!(m.contains("line 2"), "{m}"),
            other => panic!("{other:?}"),
        }
        match eval("nosuchfilter(1)", &json!(null)) {
            Err(JqError::Parse(m)) => assert!(m.contains("nosuchfilter"), "{m}"),
            other => panic!("{other:?}"),
        }
        let shown = eval("error(\"x\")", &json!(null)).map_err(|e| e.to_string());
        assert_eq!(shown, Err("jq query failed: x".to_owned()));
    }

    #[test]
    fn check_compiles_without_running() {
        assert_eq!(check(".persons | map({user:{email,id}})"), Ok(()));
        assert_eq!(check("def f: f; f"), Ok(()));
        assert_eq!(check("error(\"only at run time\")"), Ok(()));
        assert!(matches!(check("{"), Err(JqError::Parse(_))));
        assert!(matches!(check(".a | nosuch"), Err(JqError::Parse(_))));
        assert!(matches!(check(&".".repeat(MAX_QUERY_BYTES + 1)), Err(JqError::Parse(_))));
    }

    // --- determinism and sandboxing ---

    #[test]
    fn environment_does_not_leak() {
        assert!(std::env::vars().next().is_some(), "the test process has an environment to leak");
        assert_eq!(one("$ENV", json!(null)), json!({}));
        assert_eq!(one("env", json!(null)), json!({}));
        assert_eq!(one("$ENV.PATH // \"none\"", json!(null)), json!("none"));
    }

    #[test]
    fn no_clock_input_or_modules() {
        for query in [
            "now",
            "now | todate",
            "localtime",
            "1 | strflocaltime(\"%H\")",
            "input",
            "[inputs]",
            "$__prog_args",
            "input_filename",
        ] {
            assert!(matches!(check(query), Err(JqError::Parse(_))), "{query}");
        }
        assert!(matches!(eval("include \"x\"; .", &json!(null)), Err(JqError::Parse(_))));
        assert!(matches!(eval("import \"x\" as x; .", &json!(null)), Err(JqError::Parse(_))));
        assert!(matches!(eval("halt", &json!(null)), Err(JqError::Runtime(_))));
        assert!(matches!(eval("\"bye\" | halt_error", &json!(null)), Err(JqError::Runtime(_))));
        assert!(matches!(eval("\"2023 Europe/Paris\" | strptime(\"%Y %Q\")", &json!(null)), Err(JqError::Runtime(_))));
    }

    #[test]
    fn same_input_same_output() {
        let input = json!({"b": [3, 1, 2], "a": {"z": 1, "y": 2}, "c": "text"});
        let query = "[keys_unsorted, (.a | to_entries), (.b | sort), ([paths] | length), (. | tojson), (.a | del(.z) + {x: 0})]";
        let first = all(query, input.clone());
        for _ in 0..5 {
            assert_eq!(all(query, input.clone()), first);
        }
        assert_eq!(
            first[0],
            json!([["a", "b", "c"], [{"key": "y", "value": 2}, {"key": "z", "value": 1}], [1, 2, 3], 8, "{\"a\":{\"y\":2,\"z\":1},\"b\":[3,1,2],\"c\":\"text\"}", {"y": 2, "x": 0}])
        );
    }

    #[test]
    fn runaway_queries_exceed_the_budget() {
        for query in [
            "def f: f; f",
            "repeat(1)",
            "[repeat(1)]",
            "last(range(1e18))",
            "[range(1e9)] | length",
            "until(false; .)",
            "[limit(1e9; repeat(.))] | length",
            "reduce range(1e9) as $x (0; . + 1)",
            "[.[] | recurse(. + 1)]",
        ] {
            assert_eq!(eval(query, &json!([1])), Err(JqError::BudgetExceeded), "{query}");
        }
        // The budget stops the same query at the same point every time.
        let limits = JqLimits { max_steps: 50_000 };
        let count = "[limit(1000; range(1e9))] | length";
        let small = JqLimits { max_steps: 500 };
        assert_eq!(eval_with_limits(count, &json!(null), &limits), Ok(vec![json!(1000)]));
        assert_eq!(eval_with_limits(count, &json!(null), &small), Err(JqError::BudgetExceeded));
    }

    #[test]
    fn deep_recursion_stops_instead_of_overflowing() {
        let limits = JqLimits { max_steps: u64::MAX };
        assert_eq!(eval_with_limits("def f: [f]; f", &json!(null), &limits), Err(JqError::TooDeep));
        assert_eq!(eval_with_limits("def f: 1 + f; f", &json!(null), &limits), Err(JqError::TooDeep));
        // Deep values within the budget are built, and refused only at conversion.
        match eval("reduce range(5000) as $i (null; [.])", &json!(null)) {
            Err(JqError::Runtime(m)) => assert!(m.contains("deeper than"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            eval("reduce range(5000) as $i (null; [.]) | tojson | length", &json!(null)),
            Ok(vec![json!(10004)])
        );
        match eval("\"[\" * 100000 | fromjson", &json!(null)) {
            Err(JqError::Runtime(m)) => assert!(m.contains("deeper than"), "{m}"),
            other => panic!("{other:?}"),
        }
        // The longest queries nest as deep as their length allows without overflowing the parser's stack.
        let nested = format!("{}1{}", "(".repeat(8_000), ")".repeat(8_000));
        assert_eq!(eval(&nested, &json!(null)), Ok(vec![json!(1)]));
        let nested = format!("{}1{}", "[".repeat(8_000), "]".repeat(8_000));
        assert!(matches!(eval(&nested, &json!(null)), Err(JqError::Runtime(_) | JqError::TooDeep)));
        assert!(matches!(eval(&"-".repeat(MAX_QUERY_BYTES), &json!(null)), Err(JqError::Parse(_) | JqError::TooDeep)));
    }

    #[test]
    fn nesting_depth_ignores_strings() {
        assert_eq!(nesting_depth(br#"{"a": ["[[[", {"b": "\"]"}]}"#), 3);
        assert_eq!(nesting_depth(b"1"), 0);
    }

    #[test]
    fn cost_of_one_small_eval() {
        let input = json!({"persons": [{"name": "some", "email": "mail@mail.com", "id": 1}], "queryExpression": "x"});
        let query = ".persons | map({user:{email,id}})";
        let rounds = 50u32;
        let mut fastest = std::time::Duration::MAX;
        let start = std::time::Instant::now();
        for _ in 0..rounds {
            let one = std::time::Instant::now();
            assert!(eval(query, &input).is_ok());
            fastest = fastest.min(one.elapsed());
        }
        let per_eval = start.elapsed() / rounds;
        let start = std::time::Instant::now();
        assert_eq!(eval("def f: f; f", &input), Err(JqError::BudgetExceeded));
        let budget = start.elapsed();
        println!(
            "jq::eval: {per_eval:?} per small eval (fastest {fastest:?}); exhausting the default budget: {budget:?}"
        );
    }
}
