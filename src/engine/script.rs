//! JavaScript for Conductor's `INLINE` task (`evaluatorType` `javascript` / `graaljs`), the `SWITCH` operator
//! with a JavaScript evaluator, and `DO_WHILE`'s `loopCondition`, run in an embedded QuickJS sandbox (rquickjs).
//!
//! Owns: turning an expression plus its evaluated input into a JSON value, the sandbox it runs in, and the
//! conversions Conductor applies to a script's result (`output.result`, the SWITCH case string, the loop
//! condition's truth).
//! Must not touch: the real clock, randomness, the environment, files, the network, or any engine state. Every
//! replica evaluates the same expression on the same input and must get the same bytes back, so:
//!
//! - Each call gets a fresh QuickJS runtime and context (about 0.1 ms): no global can leak from one evaluation to
//!   the next, and the memory, garbage-collection and native-stack limits start from the same point every time.
//! - `Date.now()`, `new Date()` and `Date()` see only `now_ms`, the time stamped on the log entry. Local time is
//!   UTC whatever the host's time zone: the local-time getters, setters and formatters are the UTC ones, and
//!   date strings without a zone are read as UTC. `Date` exists only in scripts whose text contains `Date`
//!   (installing it costs about 0.4 ms); elsewhere no clock is reachable at all.
//! - `Math.random()` is splitmix64 seeded from `now_ms`: the same entry gives the same numbers on every replica, and
//!   different entries give different ones.
//! - The step budget counts QuickJS's interrupt-handler calls (one every [`TICKS_PER_STEP`] loop back-edges,
//!   calls and regular-expression steps), never elapsed time, so a script stops at the same point everywhere.
//! - No `console`, `print`, `load`, modules, timers, `performance`, `WeakRef`/`FinalizationRegistry` (their
//!   behaviour depends on when the garbage collector runs) or `Atomics`. Promise jobs are never run.
//! - Scripts run in sloppy mode, as in Conductor, so `x = 1` without `var` works (and dies with the context).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rquickjs::context::{intrinsic, EvalOptions};
use rquickjs::function::This;
use rquickjs::{CaughtError, Coerced, Context, Ctx, Function, Object, Runtime, Type, Value as JsValue};
use serde_json::{Map, Number, Value};

use super::model::MAX_VALUE_DEPTH;

/// QuickJS calls the interrupt handler at the first "tick" of an evaluation and then once every this many ticks
/// (loop back-edges, function calls, steps of a regular-expression match). One step of
/// [`ScriptLimits::max_steps`] is one such call; a simple loop iteration costs about two ticks.
pub const TICKS_PER_STEP: u64 = 10_000;

/// Native stack QuickJS may use for one evaluation, measured from where the runtime is created inside [`eval`].
/// Deep JavaScript recursion fails with a `RangeError` at the same depth on every replica (same binary).
/// The calling thread needs this much stack free, plus a little for the Rust frames around it.
const MAX_STACK_BYTES: usize = 1024 * 1024;

/// Allocation level at which QuickJS first runs its cycle collector. Its default (256 KiB) is below what a fresh
/// context already holds, which would make every evaluation pay for a full collection. When the collector runs
/// is invisible to scripts (no `WeakRef`, no `FinalizationRegistry`) and, with rquickjs's Rust allocator counting
/// requested sizes, the same on every replica anyway.
const GC_THRESHOLD_BYTES: usize = 4 * 1024 * 1024;

/// A result nested deeper than this is refused rather than converted: it is almost always a cycle
/// (`a.self = a`), and the engine keeps no value nested deeper anyway ([`MAX_VALUE_DEPTH`]).
pub const MAX_RESULT_DEPTH: usize = MAX_VALUE_DEPTH;

/// How close to the memory limit the heap must be for an exception that is not an error object to count as running
/// out of memory.
const HEAP_FULL_MARGIN_BYTES: i64 = 64 * 1024;

/// How `throw null` is reported; also what an out-of-memory failure looks like before [`Sandbox::heap_full`] says so.
const UNCAUGHT_NULL: &str = "uncaught null";

/// The file name QuickJS reports in stack traces; line numbers in error messages are read back from it.
const FILE_NAME: &str = "inline";

/// Built-ins the sandbox offers besides the base objects (Object, Function, Array, String, Number, Math, Error,
/// Symbol, BigInt, Iterator, Reflect, ...). `Eval` is required for evaluating anything at all. `Date` is added
/// only for scripts that mention it (see [`DATE_PRELUDE`]).
type Intrinsics = (
    intrinsic::Eval,
    intrinsic::RegExpCompiler,
    intrinsic::RegExp,
    intrinsic::Json,
    intrinsic::Proxy,
    intrinsic::MapSet,
    intrinsic::TypedArrays,
    intrinsic::Promise,
);

/// How much one evaluation may consume. Both limits are counted, not timed, so they trip at the same point on every
/// replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptLimits {
    /// Interrupt-handler calls allowed; each is [`TICKS_PER_STEP`] ticks. The default, 1000 (10 million ticks),
    /// lets a simple loop run about 5 million iterations, so `for (;;) {}` or a 10-million-iteration loop is
    /// stopped after roughly 30 ms in a release build.
    pub max_steps: u64,
    /// Bytes QuickJS may allocate, counting the context itself (about 0.1 MiB), the input bound to `$` and the
    /// result.
    pub max_memory_bytes: usize,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        ScriptLimits { max_steps: 1000, max_memory_bytes: 32 * 1024 * 1024 }
    }
}

/// Why a script gave no value. Every variant is deterministic: the same expression, input, `now_ms` and limits
/// give the same error on every replica.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ScriptError {
    /// The expression does not parse (`SyntaxError: ... at line N`).
    #[error("syntax error in script: {0}")]
    Syntax(String),
    /// The script threw, or its result could not be converted to JSON (`TypeError: ... at line N`).
    #[error("Error evaluating the script: {0}")]
    Runtime(String),
    /// The script used up [`ScriptLimits::max_steps`] and was stopped.
    #[error("script exceeded its step budget and was stopped")]
    BudgetExceeded,
    /// The script tried to allocate more than [`ScriptLimits::max_memory_bytes`].
    #[error("script exceeded its memory limit")]
    MemoryExceeded,
    /// QuickJS itself failed in a way no script should cause (the runtime could not be allocated, a value could not
    /// be read back). Never expected: treat it as a bug, and do not record it as a task's outcome.
    #[error("script engine failure: {0}")]
    Engine(String),
}

/// Evaluates `expression` with `$` bound to `input`; `now_ms` is the only clock a script may see.
///
/// The result is the completion value of the script, converted as Conductor's `ScriptEvaluator` does: `null` and
/// `undefined` become `null`; whole numbers that fit an `i64` become JSON integers (`2.0` gives `2`), other
/// numbers stay floats, and `NaN`/`Infinity`/`-Infinity` become the strings `"NaN"`, `"Infinity"`, `"-Infinity"`
/// (what Jackson writes); arrays become arrays (holes are `null`); a `Map` becomes an object; any other object
/// (including functions, dates and errors) becomes an object of its own enumerable string-keyed properties, with
/// `undefined` values kept as `null`; a symbol becomes `null`.
pub fn eval(expression: &str, input: &Value, now_ms: u64, limits: &ScriptLimits) -> Result<Value, ScriptError> {
    let input_json = serde_json::to_string(input).map_err(|e| ScriptError::Engine(e.to_string()))?;
    // Without the word, no clock is reachable (not even through `eval`): the Date intrinsic is left out.
    let with_date = expression.contains("Date");
    let sandbox = Sandbox::new(limits, with_date)?;
    sandbox
        .context
        .with(|ctx| {
            let run = || -> Result<Value, Fail> {
                // Taken before the script can replace them.
                let converter = Converter::new(&ctx)?;
                install_random(&ctx, now_ms)?;
                ctx.globals().remove("Atomics")?;
                if with_date {
                    let install_date: Function = ctx.eval_with_options(DATE_PRELUDE, options(true))?;
                    install_date.call::<_, ()>((now_ms as f64,))?;
                }
                let input = ctx.json_parse(input_json)?;
                ctx.globals().set("$", input)?;
                let result: JsValue = ctx.eval_with_options(expression, options(false))?;
                converter.to_json(&result, 0)
            };
            run().map_err(|fail| sandbox.classify(&ctx, fail))
        })
        .map_err(|e| match e {
            ScriptError::Runtime(m) if m == UNCAUGHT_NULL && sandbox.heap_full() => ScriptError::MemoryExceeded,
            other => other,
        })
}

/// Syntax check only, for refusing bad definitions at registration. Nothing of the script runs: a `throw` is
/// placed before its first statement (after a leading `"use strict"`, so strict-mode rules still apply).
pub fn check(expression: &str) -> Result<(), ScriptError> {
    let trimmed = expression.trim_start();
    let strict = trimmed.starts_with("'use strict'") || trimmed.starts_with("\"use strict\"");
    // On the first line, so line numbers in messages stay the user's.
    let guarded = format!("{}throw 0;{expression}", if strict { "'use strict';" } else { "" });
    let sandbox = Sandbox::new(&ScriptLimits::default(), false)?;
    sandbox.context.with(|ctx| match ctx.eval_with_options::<JsValue, _>(guarded, options(false)) {
        Ok(_) => Ok(()),
        Err(rquickjs::Error::Exception) => {
            let thrown = ctx.catch();
            if thrown.as_int() == Some(0) {
                Ok(())
            } else {
                Err(describe(&ctx, CaughtError::from_error(&ctx, ctx.throw(thrown))))
            }
        }
        Err(e) => Err(sandbox.classify(&ctx, Fail::Js(e))),
    })
}

/// The case a SWITCH with a JavaScript evaluator selects for `result`: Java's `"" + result` on the value
/// Conductor's evaluator returns. Strings are taken as they are, `null` is `"null"`, integers print as integers,
/// other numbers as Java's `Double.toString` (`1.5`, `1.0E-4`), arrays as `[a, b]` and objects as `{k=v, k2=v2}`
/// (in key order; Conductor's `HashMap` order is unspecified).
pub fn switch_case(result: &Value) -> String {
    match result {
        Value::String(s) => s.clone(),
        other => {
            let mut out = String::new();
            super::expr::write_java_string(other, &mut out);
            out
        }
    }
}

/// Whether a DO_WHILE `loopCondition` result continues the loop, as Conductor's `ScriptEvaluator.toBoolean`:
/// a boolean is itself, a number is `> 0`, anything else (including the string `"true"`) is false.
pub fn loop_condition(result: &Value) -> bool {
    match result {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f > 0.0),
        _ => false,
    }
}

/// One QuickJS runtime and context, created for one evaluation and dropped after it.
struct Sandbox {
    // Field order matters: the context must be freed before its runtime.
    context: Context,
    runtime: Runtime,
    steps: Arc<AtomicU64>,
    max_steps: u64,
}

impl Sandbox {
    fn new(limits: &ScriptLimits, with_date: bool) -> Result<Sandbox, ScriptError> {
        let engine = |e: rquickjs::Error| ScriptError::Engine(e.to_string());
        let runtime = Runtime::new().map_err(engine)?;
        runtime.set_memory_limit(limits.max_memory_bytes);
        runtime.set_max_stack_size(MAX_STACK_BYTES);
        runtime.set_gc_threshold(GC_THRESHOLD_BYTES);
        let steps = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&steps);
        let max_steps = limits.max_steps;
        runtime.set_interrupt_handler(Some(Box::new(move || counter.fetch_add(1, Ordering::Relaxed) >= max_steps)));
        let context = if with_date {
            Context::custom::<(intrinsic::Date, Intrinsics)>(&runtime)
        } else {
            Context::custom::<Intrinsics>(&runtime)
        };
        let context = context.map_err(|e| match e {
            rquickjs::Error::Allocation => ScriptError::MemoryExceeded,
            other => engine(other),
        })?;
        Ok(Sandbox { context, runtime, steps, max_steps })
    }

    fn budget_exceeded(&self) -> bool {
        self.steps.load(Ordering::Relaxed) > self.max_steps
    }

    /// Whether the heap is (nearly) full. When it is, QuickJS cannot even allocate its "out of memory" error and
    /// the exception arrives as `null`. Only callable outside `Context::with`.
    fn heap_full(&self) -> bool {
        let usage = self.runtime.memory_usage();
        usage.malloc_size + HEAP_FULL_MARGIN_BYTES >= usage.malloc_limit
    }

    /// Maps a failure to a [`ScriptError`], reading the pending JavaScript exception if there is one.
    fn classify<'js>(&self, ctx: &Ctx<'js>, fail: Fail) -> ScriptError {
        if self.budget_exceeded() {
            return ScriptError::BudgetExceeded;
        }
        match fail {
            Fail::Script(e) => e,
            Fail::Js(rquickjs::Error::Allocation) => ScriptError::MemoryExceeded,
            Fail::Js(rquickjs::Error::Exception) => {
                describe(ctx, CaughtError::from_error(ctx, rquickjs::Error::Exception))
            }
            Fail::Js(other) => describe(ctx, CaughtError::Error(other)),
        }
    }
}

/// Why a conversion stopped: a JavaScript failure (read later from the context) or a decided [`ScriptError`].
enum Fail {
    Js(rquickjs::Error),
    Script(ScriptError),
}

impl From<rquickjs::Error> for Fail {
    fn from(e: rquickjs::Error) -> Self {
        Fail::Js(e)
    }
}

fn options(strict: bool) -> EvalOptions {
    let mut options = EvalOptions::default();
    options.global = true;
    options.strict = strict;
    options.backtrace_barrier = true;
    options.filename = Some(FILE_NAME.to_owned());
    options
}

/// Turns a thrown value into a [`ScriptError`]: `Name: message at line N` for errors, the value itself otherwise.
fn describe<'js>(ctx: &Ctx<'js>, caught: CaughtError<'js>) -> ScriptError {
    match caught {
        CaughtError::Exception(exception) => {
            let message = exception.message().unwrap_or_default();
            let stack = exception.stack().unwrap_or_default();
            let name: String = exception
                .as_object()
                .get::<_, Coerced<String>>("name")
                .map(|n| n.0)
                .unwrap_or_else(|_| "Error".to_owned());
            if name == "InternalError" && message == "out of memory" {
                return ScriptError::MemoryExceeded;
            }
            let text = match line_of(&stack) {
                Some(line) => format!("{name}: {message} at line {line}"),
                None => format!("{name}: {message}"),
            };
            // A parse error's only frame is the bare location (`at inline:3:7`); a SyntaxError thrown while running
            // (`JSON.parse('{')`) has the evaluating frame (`at <eval> (inline:1:6)`) too.
            let at_parse = stack.trim_start().starts_with(&format!("at {FILE_NAME}:"));
            if name == "SyntaxError" && at_parse {
                ScriptError::Syntax(text)
            } else {
                ScriptError::Runtime(text)
            }
        }
        CaughtError::Value(value) => {
            let text = match Converter::new(ctx).map_err(Fail::Js).and_then(|c| c.to_json(&value, 0)) {
                Ok(Value::String(s)) => s,
                Ok(other) => other.to_string(),
                Err(_) => "a value that cannot be shown".to_owned(),
            };
            ScriptError::Runtime(format!("uncaught {text}"))
        }
        CaughtError::Error(rquickjs::Error::Allocation) => ScriptError::MemoryExceeded,
        CaughtError::Error(e) => ScriptError::Engine(e.to_string()),
    }
}

/// The first line number QuickJS gives for the script in a stack trace (`at f (inline:4:11)` gives 4).
fn line_of(stack: &str) -> Option<u32> {
    let marker = format!("{FILE_NAME}:");
    let start = stack.find(&marker)? + marker.len();
    let digits: String = stack[start..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Replaces `Math.random` with splitmix64 seeded from `now_ms`: the same log entry draws the same numbers on every
/// replica, and different entries draw different ones.
fn install_random(ctx: &Ctx<'_>, now_ms: u64) -> rquickjs::Result<()> {
    let state = AtomicU64::new(now_ms ^ 0x5eed_ba70_5eed_ba70);
    let random = Function::new(ctx.clone(), move || -> f64 {
        let mut z = state.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // 53 random bits scaled to [0, 1): exact.
        (z >> 11) as f64 / (1u64 << 53) as f64
    })?
    .with_name("random")?;
    ctx.globals().get::<_, Object>("Math")?.set("random", random)
}

/// Converts JavaScript values to JSON the way Conductor's `ScriptEvaluator.getObject` converts GraalJS values.
struct Converter<'js> {
    map: Object<'js>,
    array_from: Function<'js>,
    to_well_formed: Function<'js>,
}

impl<'js> Converter<'js> {
    fn new(ctx: &Ctx<'js>) -> rquickjs::Result<Converter<'js>> {
        let globals = ctx.globals();
        let string: Object = globals.get("String")?;
        let string_prototype: Object = string.get("prototype")?;
        Ok(Converter {
            map: globals.get("Map")?,
            array_from: globals.get::<_, Object>("Array")?.get("from")?,
            to_well_formed: string_prototype.get("toWellFormed")?,
        })
    }

    fn to_json(&self, value: &JsValue<'js>, depth: usize) -> Result<Value, Fail> {
        if depth > MAX_RESULT_DEPTH {
            let message = format!("the result nests deeper than {MAX_RESULT_DEPTH} levels (is it cyclic?)");
            return Err(Fail::Script(ScriptError::Runtime(message)));
        }
        Ok(match value.type_of() {
            Type::Uninitialized | Type::Undefined | Type::Null | Type::Symbol | Type::Module | Type::Unknown => {
                Value::Null
            }
            Type::Bool => Value::Bool(value.as_bool().unwrap_or_default()),
            Type::Int => Value::from(value.as_int().unwrap_or_default()),
            Type::Float => number(value.as_float().unwrap_or(f64::NAN)),
            Type::String => Value::String(self.string(value)?),
            Type::BigInt => {
                let text = value.get::<Coerced<String>>()?.0;
                match text.parse::<i64>() {
                    Ok(i) => Value::from(i),
                    Err(_) => number(text.parse::<f64>().unwrap_or(f64::NAN)),
                }
            }
            Type::Array => {
                let array = value.as_array().ok_or(Fail::Js(rquickjs::Error::Unknown))?;
                let mut items = Vec::with_capacity(array.len());
                for i in 0..array.len() {
                    items.push(self.to_json(&array.get::<JsValue>(i)?, depth + 1)?);
                }
                Value::Array(items)
            }
            Type::Object | Type::Function | Type::Constructor | Type::Promise | Type::Exception | Type::Proxy => {
                let object = value.as_object().ok_or(Fail::Js(rquickjs::Error::Unknown))?;
                self.object(object, depth)?
            }
        })
    }

    fn object(&self, object: &Object<'js>, depth: usize) -> Result<Value, Fail> {
        let mut out = Map::new();
        // GraalJS hands a JS Map over as hash entries; Jackson then writes each key with `toString()`.
        if object.is_instance_of(&self.map) {
            let entries: rquickjs::Array = self.array_from.call((object.clone(),))?;
            for entry in entries.iter::<rquickjs::Array>() {
                let entry = entry?;
                let key = self.to_json(&entry.get::<JsValue>(0)?, depth + 1)?;
                let value = self.to_json(&entry.get::<JsValue>(1)?, depth + 1)?;
                out.insert(switch_case(&key), value);
            }
            return Ok(Value::Object(out));
        }
        for key in object.keys::<String>() {
            let key = key?;
            let value: JsValue = object.get(key.as_str())?;
            out.insert(key, self.to_json(&value, depth + 1)?);
        }
        Ok(Value::Object(out))
    }

    /// The string's text; lone UTF-16 surrogates, which UTF-8 cannot carry, become U+FFFD.
    fn string(&self, value: &JsValue<'js>) -> Result<String, Fail> {
        let string = value.as_string().ok_or(Fail::Js(rquickjs::Error::Unknown))?;
        match string.to_string() {
            Ok(s) => Ok(s),
            Err(rquickjs::Error::Utf8(_)) => {
                let fixed: rquickjs::String = self.to_well_formed.call((This(value.clone()),))?;
                Ok(fixed.to_string()?)
            }
            Err(e) => Err(Fail::Js(e)),
        }
    }
}

/// A JavaScript number as Conductor stores it: whole values that fit a Java `long` are integers.
fn number(f: f64) -> Value {
    // 2^63: the first double above i64::MAX.
    const LONG_LIMIT: f64 = 9_223_372_036_854_775_808.0;
    if f.is_nan() {
        return Value::String("NaN".to_owned());
    }
    if f.is_infinite() {
        return Value::String(if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned());
    }
    let negative_zero = f == 0.0 && f.is_sign_negative();
    if f.fract() == 0.0 && (-LONG_LIMIT..LONG_LIMIT).contains(&f) && !negative_zero {
        // Exact: `f` is whole and within i64's range.
        return Value::from(f as i64);
    }
    Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null)
}

/// Runs (in strict mode) before a script that mentions `Date`, in the same fresh context; compiling it costs about
/// 0.4 ms, and without the `Date` intrinsic no clock is reachable at all. It freezes the clock at `nowMs` and makes
/// local time UTC.
const DATE_PRELUDE: &str = r#"
(function (nowMs) {
  'use strict';
  const D = Date;
  const P = D.prototype;
  const getTime = P.getTime;
  const setTime = P.setTime;
  const origParse = D.parse;
  const UTC = D.UTC;
  const hidden = (o, k, v) => Object.defineProperty(o, k, { value: v, writable: true, configurable: true });

  // Local time is UTC on every replica, whatever the host's time zone.
  for (const n of ['FullYear', 'Month', 'Date', 'Hours', 'Minutes', 'Seconds', 'Milliseconds', 'Day']) {
    hidden(P, 'get' + n, P['getUTC' + n]);
    if (n !== 'Day') hidden(P, 'set' + n, P['setUTC' + n]);
  }
  hidden(P, 'getTimezoneOffset', function getTimezoneOffset() {
    const t = getTime.call(this);
    return t !== t ? NaN : 0;
  });
  hidden(P, 'getYear', function getYear() { return P.getUTCFullYear.call(this) - 1900; });
  hidden(P, 'setYear', function setYear(year) {
    let t = getTime.call(this);
    if (t !== t) t = 0;
    const y = Number(year);
    if (y !== y) return setTime.call(this, NaN);
    const yi = Math.trunc(y);
    const d = new D(t);
    return setTime.call(this, UTC(yi >= 0 && yi <= 99 ? 1900 + yi : y, d.getUTCMonth(), d.getUTCDate(),
      d.getUTCHours(), d.getUTCMinutes(), d.getUTCSeconds(), d.getUTCMilliseconds()));
  });

  // QuickJS's own formats, with a zero offset.
  const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
  const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
  const p2 = (n) => (n < 10 ? '0' : '') + n;
  const yr = (y) => (y < 0 ? '-' + String(-y).padStart(4, '0') : String(y).padStart(4, '0'));
  const fields = (date) => {
    const t = getTime.call(date);
    if (t !== t) return null;
    const d = new D(t);
    return { y: d.getUTCFullYear(), mo: d.getUTCMonth(), d: d.getUTCDate(), h: d.getUTCHours(),
      mi: d.getUTCMinutes(), s: d.getUTCSeconds(), wd: d.getUTCDay() };
  };
  const fmt = (date, f) => { const x = fields(date); return x === null ? 'Invalid Date' : f(x); };
  const dateText = (x) => DAYS[x.wd] + ' ' + MONTHS[x.mo] + ' ' + p2(x.d) + ' ' + yr(x.y);
  const timeText = (x) => p2(x.h) + ':' + p2(x.mi) + ':' + p2(x.s) + ' GMT+0000';
  const localeDate = (x) => p2(x.mo + 1) + '/' + p2(x.d) + '/' + yr(x.y);
  const localeTime = (x) => p2((x.h + 11) % 12 + 1) + ':' + p2(x.mi) + ':' + p2(x.s) + (x.h < 12 ? ' AM' : ' PM');
  hidden(P, 'toString', function toString() { return fmt(this, (x) => dateText(x) + ' ' + timeText(x)); });
  hidden(P, 'toDateString', function toDateString() { return fmt(this, dateText); });
  hidden(P, 'toTimeString', function toTimeString() { return fmt(this, timeText); });
  hidden(P, 'toLocaleString', function toLocaleString() {
    return fmt(this, (x) => localeDate(x) + ', ' + localeTime(x));
  });
  hidden(P, 'toLocaleDateString', function toLocaleDateString() { return fmt(this, localeDate); });
  hidden(P, 'toLocaleTimeString', function toLocaleTimeString() { return fmt(this, localeTime); });

  // Strings without a zone are UTC: an ISO date-time gets a 'Z'; another format gets ' GMT' unless it names a zone.
  const ISO = /^([+-]\d{6}|\d{4})(-\d\d(-\d\d)?)?(T\d\d:\d\d(:\d\d([.,]\d+)?)?)?(Z|[+-]\d\d:?\d\d)?$/;
  const ISO_LOCAL_TIME = /T\d\d:\d\d(:\d\d([.,]\d+)?)?$/;
  const ZONE = /(^|[^A-Za-z])(GMT|UTC|UT|Z|[ECMP][SD]T|WES?T|CES?T|EES?T)([^A-Za-z]|$)|\d:\d\d(:\d\d([.,]\d+)?)?\s*([AP]M\s*)?[+-]\d/;
  const parse = function parse(text) {
    const s = String(text);
    if (ISO.test(s)) return origParse(ISO_LOCAL_TIME.test(s) ? s + 'Z' : s);
    return origParse(ZONE.test(s) ? s : s + ' GMT');
  };

  // The only clock: nowMs.
  const FrozenDate = function Date(...args) {
    if (new.target === undefined) return P.toString.call(new D(nowMs));
    let v;
    if (args.length === 0) v = nowMs;
    else if (args.length === 1) v = typeof args[0] === 'string' ? parse(args[0]) : args[0];
    else v = UTC(...args);
    return Reflect.construct(D, [v], new.target);
  };
  Object.defineProperty(FrozenDate, 'length', { value: 7, configurable: true });
  Object.defineProperty(FrozenDate, 'prototype', { value: P });
  hidden(P, 'constructor', FrozenDate);
  hidden(FrozenDate, 'now', function now() { return nowMs; });
  hidden(FrozenDate, 'parse', parse);
  hidden(FrozenDate, 'UTC', UTC);
  hidden(globalThis, 'Date', FrozenDate);
})
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000_123; // 2023-11-14T22:13:20.123Z

    fn run(expression: &str, input: Value) -> Result<Value, ScriptError> {
        eval(expression, &input, NOW, &ScriptLimits::default())
    }

    fn ok(expression: &str, input: Value) -> Value {
        match run(expression, input) {
            Ok(v) => v,
            Err(e) => panic!("{expression}: {e:?}"),
        }
    }

    // --- Conductor's documented examples ---

    #[test]
    fn inline_doc_example_returns_an_object() {
        let expr =
            r#"function e() { if ($.value == 1){return {"result": true}} else { return {"result": false}}} e();"#;
        assert_eq!(ok(expr, json!({"value": 1})), json!({"result": true}));
        assert_eq!(ok(expr, json!({"value": 2})), json!({"result": false}));
    }

    #[test]
    fn inline_doc_iife_adds_inputs() {
        let input = json!({"evaluatorType": "javascript", "expression": "...", "input1": 1, "input2": 2});
        assert_eq!(ok("(function(){ return $.input1 + $.input2; })()", input), json!(3));
    }

    #[test]
    fn inline_doc_implicit_global_works_in_sloppy_mode() {
        let expr = r#"function SIvaluesOnly(){if ($.scale === "F"){ centigrade = ($.temperature -32)*5/9; return {temperature: centigrade} } else { return {temperature: $.temperature} }} SIvaluesOnly();"#;
        assert_eq!(ok(expr, json!({"scale": "F", "temperature": 212})), json!({"temperature": 100}));
        assert_eq!(ok(expr, json!({"scale": "F", "temperature": 100})), json!({"temperature": 37.77777777777778}));
        assert_eq!(ok(expr, json!({"scale": "C", "temperature": 30})), json!({"temperature": 30}));
    }

    #[test]
    fn switch_doc_ternary_selects_case() {
        let expr = "$.inputValue == 'fedex' ? 'fedex' : 'ups'";
        assert_eq!(switch_case(&ok(expr, json!({"inputValue": "fedex"}))), "fedex");
        assert_eq!(switch_case(&ok(expr, json!({"inputValue": "dhl"}))), "ups");
    }

    #[test]
    fn switch_doc_iife_without_match_gives_null_case() {
        let expr = "(function () {\n    switch ($.switchCaseValue) {\n      case \"1\":\n        return \"apple\";\n      case \"2\":\n        return \"tomatoes\";\n      case \"3\":\n        return \"oranges\"\n    }\n  }())";
        assert_eq!(switch_case(&ok(expr, json!({"switchCaseValue": "2"}))), "tomatoes");
        // Falls off the end: undefined -> null -> Java's "" + null.
        assert_eq!(switch_case(&ok(expr, json!({"switchCaseValue": "9"}))), "null");
    }

    #[test]
    fn do_while_doc_conditions() {
        let expr = "if ($.loop_ref['iteration'] < $.value) { true; } else { false; }";
        assert!(loop_condition(&ok(expr, json!({"loop_ref": {"iteration": 1}, "value": 3}))));
        assert!(!loop_condition(&ok(expr, json!({"loop_ref": {"iteration": 3}, "value": 3}))));
        let expr =
            "(function () {\n  if ($.do_while_ref['iteration'] < 5) {\n    return true;\n  }\n  return false;\n})();";
        assert!(loop_condition(&ok(expr, json!({"do_while_ref": {"iteration": 4}}))));
        let expr = "if ($.get_all_stars_loop_ref['iteration'] < Math.ceil($.stargazers/100)) { true; } else { false; }";
        assert!(loop_condition(&ok(expr, json!({"get_all_stars_loop_ref": {"iteration": 39}, "stargazers": "4000"}))));
        assert!(!loop_condition(&ok(expr, json!({"get_all_stars_loop_ref": {"iteration": 40}, "stargazers": "4000"}))));
        let expr = "if ($.check['done'] == true || $.loop['iteration'] >= 10) { false; } else { true; }";
        assert!(!loop_condition(&ok(expr, json!({"check": {"done": true}, "loop": {"iteration": 1}}))));
    }

    #[test]
    fn loop_condition_follows_to_boolean() {
        assert!(loop_condition(&json!(true)));
        assert!(loop_condition(&json!(2)));
        assert!(loop_condition(&json!(0.5)));
        assert!(!loop_condition(&json!(0)));
        assert!(!loop_condition(&json!(-1)));
        assert!(!loop_condition(&json!("true")));
        assert!(!loop_condition(&Value::Null));
    }

    // --- Conductor's evaluator tests (JavascriptEvaluatorTest, GraalJSEvaluatorTest, TestGraalJSFeatures) ---

    #[test]
    fn evaluator_tests_from_conductor() {
        assert_eq!(ok("$.value * 2", json!({"value": 42})), json!(84));
        assert_eq!(ok("$.level1.level2.value", json!({"level1": {"level2": {"value": "deep"}}})), json!("deep"));
        assert_eq!(ok("($.a + $.b) * $.c", json!({"a": 10, "b": 20, "c": 30})), json!(900));
        let es6 = "(function() { const greeting = 'Hello'; return `${greeting}, ${$.name}!`; })()";
        assert_eq!(ok(es6, json!({"name": "Conductor"})), json!("Hello, Conductor!"));
        let arr = json!({"numbers": [1, 2, 3, 4, 5]});
        assert_eq!(ok("$.numbers.filter(n => n > 2).map(n => n * 2)", arr.clone()), json!([6, 8, 10]));
        assert_eq!(ok("$.numbers.reduce((sum, val) => sum + val, 0)", arr), json!(15));
        let obj = "(function() { return { result: $.value, doubled: $.value * 2, message: 'success' }; })()";
        assert_eq!(ok(obj, json!({"value": 42})), json!({"result": 42, "doubled": 84, "message": "success"}));
        assert_eq!(ok("$.value === null ? 'null value' : $.value", json!({"value": null})), json!("null value"));
        assert_eq!(ok("$.undefinedValue === undefined", json!({})), json!(true));
        assert_eq!(ok("$.nullValue ?? 'default'", json!({"nullValue": null})), json!("default"));
        let user = "(function() { const { name, age } = $.user; return name + ' is ' + age; })()";
        assert_eq!(ok(user, json!({"user": {"name": "Alice", "age": 30}})), json!("Alice is 30"));
        assert_eq!(ok("[...$.arr1, ...$.arr2]", json!({"arr1": [1, 2], "arr2": [3]})), json!([1, 2, 3]));
        let tasks = json!({"workflow": {"tasks": [{"name": "task1", "status": "COMPLETED"}, {"name": "task2", "status": "IN_PROGRESS"}]}});
        let expr = "$.workflow.tasks.filter(t => t.status === 'COMPLETED').map(t => t.name).join(',')";
        assert_eq!(ok(expr, tasks), json!("task1"));
        assert_eq!(ok("$.level1?.missing?.value ?? 'not found'", json!({"level1": {}})), json!("not found"));
        assert_eq!(ok("$.text.split(' ').reverse().join(' ')", json!({"text": "hello world"})), json!("world hello"));
        assert_eq!(ok("Math.sqrt($.value)", json!({"value": 16})), json!(4));
        assert_eq!(ok("Math.max(1, $.value, 5)", json!({"value": 16})), json!(16));
        assert_eq!(ok("JSON.parse('{\"value\":123}').value", json!({})), json!(123));
        // A promise is returned as an object, not awaited.
        assert_eq!(
            ok("(function() { return Promise.resolve($.value).then(x => x * 2); })()", json!({"value": 1})),
            json!({})
        );
    }

    #[test]
    fn input_mutation_stays_inside_the_script() {
        let input = json!({"data": {"original": "value"}});
        let expr = "(function() { $.data.newKey = 'new value'; return $.data.newKey; })()";
        assert_eq!(ok(expr, input.clone()), json!("new value"));
        assert_eq!(input, json!({"data": {"original": "value"}}));
    }

    #[test]
    fn errors_name_type_message_and_line() {
        let expr =
            "(function() {\n    const x = 1;\n    const y = 2;\n    throw new Error('Test error on line 4');\n})()";
        assert_eq!(run(expr, json!({})), Err(ScriptError::Runtime("Error: Test error on line 4 at line 4".into())));
        assert_eq!(
            run("\n\nfoo.bar", json!({})),
            Err(ScriptError::Runtime("ReferenceError: foo is not defined at line 3".into()))
        );
        assert_eq!(run("throw 'plain'", json!({})), Err(ScriptError::Runtime("uncaught plain".into())));
        assert_eq!(run("throw null", json!({})), Err(ScriptError::Runtime("uncaught null".into())));
        assert_eq!(run("throw {code: 7}", json!({})), Err(ScriptError::Runtime("uncaught {\"code\":7}".into())));
        // A SyntaxError thrown while running is a runtime error, not a syntax error of the script.
        match run("JSON.parse('{')", json!({})) {
            Err(ScriptError::Runtime(m)) => assert!(m.starts_with("SyntaxError: "), "{m}"),
            other => panic!("{other:?}"),
        }
        match run("x = {", json!({})) {
            Err(ScriptError::Syntax(m)) => assert!(m.starts_with("SyntaxError: ") && m.ends_with("at line 1"), "{m}"),
            other => panic!("{other:?}"),
        }
        let shown = run("null.x", json!({})).expect_err("null.x throws").to_string();
        assert!(shown.starts_with("Error evaluating the script: TypeError: "), "{shown}");
    }

    #[test]
    fn check_accepts_valid_and_refuses_bad_syntax_without_running() {
        assert_eq!(check("$.inputValue == 'fedex' ? 'fedex' : 'ups'"), Ok(()));
        assert_eq!(check("function e() { return $.value.missing.deeper; } e();"), Ok(()));
        // Would loop forever or throw if it ran.
        assert_eq!(check("while (true) {}"), Ok(()));
        assert_eq!(check("throw new Error('never runs')"), Ok(()));
        assert_eq!(check("let x = 1; x"), Ok(()));
        match check("function e( { return 1 }") {
            Err(ScriptError::Syntax(m)) => assert!(m.contains("at line 1"), "{m}"),
            other => panic!("{other:?}"),
        }
        match check("var a = 1;\n\nvar = 2;") {
            Err(ScriptError::Syntax(m)) => assert!(m.ends_with("at line 3"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Strict-mode rules still apply after a leading directive.
        assert_eq!(check("with ({}) {}"), Ok(()));
        assert!(matches!(check("'use strict'; with ({}) {}"), Err(ScriptError::Syntax(_))));
    }

    // --- conversion ---

    #[test]
    fn numbers_convert_like_conductor() {
        assert_eq!(ok("2.0", json!({})), json!(2));
        assert_eq!(ok("1e10", json!({})), json!(10_000_000_000i64));
        assert_eq!(ok("2 ** 62", json!({})), json!(4_611_686_018_427_387_904i64));
        assert_eq!(ok("0.1 + 0.2", json!({})), json!(0.30000000000000004));
        assert_eq!(ok("2 ** 64", json!({})), json!(18_446_744_073_709_551_616.0));
        assert_eq!(ok("-0", json!({})), json!(-0.0));
        assert_eq!(ok("0/0", json!({})), json!("NaN"));
        assert_eq!(ok("-1/0", json!({})), json!("-Infinity"));
        assert_eq!(ok("10n ** 3n", json!({})), json!(1000));
        assert_eq!(ok("$.big", json!({"big": 9_007_199_254_740_993u64})), json!(9_007_199_254_740_992i64));
        assert_eq!(ok("[1.5, 3.0, -7]", json!({})), json!([1.5, 3, -7]));
    }

    #[test]
    fn values_convert_like_conductor() {
        assert_eq!(ok("undefined", json!({})), Value::Null);
        assert_eq!(ok("var q = 1;", json!({})), Value::Null);
        assert_eq!(ok("null", json!({})), Value::Null);
        assert_eq!(ok("'s'", json!({})), json!("s"));
        assert_eq!(ok("[1, , undefined, null]", json!({})), json!([1, null, null, null]));
        assert_eq!(ok("({a: undefined, b: [], c: {}})", json!({})), json!({"a": null, "b": [], "c": {}}));
        assert_eq!(ok("new Map([['k', 1], [2, 'two']])", json!({})), json!({"k": 1, "2": "two"}));
        assert_eq!(ok("(function f() {})", json!({})), json!({}));
        assert_eq!(ok("Symbol('x')", json!({})), Value::Null);
        assert_eq!(ok("new Date()", json!({})), json!({}));
        assert_eq!(ok("({get g() { return 5; }})", json!({})), json!({"g": 5}));
        assert_eq!(ok("'a\\uD800b'", json!({})), json!("a\u{FFFD}b"));
        assert_eq!(ok("({[Symbol('s')]: 1, visible: 2})", json!({})), json!({"visible": 2}));
    }

    #[test]
    fn cyclic_result_is_an_error_not_a_crash() {
        match run("var a = {}; a.self = a; a", json!({})) {
            Err(ScriptError::Runtime(m)) => assert!(m.contains("deeper than"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn switch_case_is_java_string_concatenation() {
        assert_eq!(switch_case(&json!("fedex")), "fedex");
        assert_eq!(switch_case(&Value::Null), "null");
        assert_eq!(switch_case(&json!(true)), "true");
        assert_eq!(switch_case(&json!(3)), "3");
        assert_eq!(switch_case(&json!(1.5)), "1.5");
        assert_eq!(switch_case(&json!(0.001)), "0.001");
        assert_eq!(switch_case(&json!(0.0001)), "1.0E-4");
        assert_eq!(switch_case(&json!(12_345_678.5)), "1.23456785E7");
        assert_eq!(switch_case(&json!(1_234_567.25)), "1234567.25");
        assert_eq!(switch_case(&json!(1e300)), "1.0E300");
        assert_eq!(switch_case(&json!(-2.5e-7)), "-2.5E-7");
        assert_eq!(switch_case(&json!(100.0)), "100.0");
        assert_eq!(switch_case(&json!(["a", 1, null])), "[a, 1, null]");
        assert_eq!(switch_case(&json!({"a": 1, "b": [true]})), "{a=1, b=[true]}");
        assert_eq!(switch_case(&ok("1 + 1", json!({}))), "2");
        assert_eq!(switch_case(&ok("$.x / 2", json!({"x": 3}))), "1.5");
    }

    // --- determinism and sandboxing ---

    #[test]
    fn clock_is_frozen_at_now_ms() {
        assert_eq!(ok("Date.now()", json!({})), json!(NOW));
        assert_eq!(ok("new Date().getTime()", json!({})), json!(NOW));
        assert_eq!(ok("new Date().toISOString()", json!({})), json!("2023-11-14T22:13:20.123Z"));
        assert_eq!(ok("Date()", json!({})), json!("Tue Nov 14 2023 22:13:20 GMT+0000"));
        assert_eq!(ok("new Date() instanceof Date && Date.prototype.constructor === Date", json!({})), json!(true));
        assert_eq!(ok("class D2 extends Date {}; new D2().getTime()", json!({})), json!(NOW));
        assert_eq!(eval("Date.now()", &json!({}), 5, &ScriptLimits::default()), Ok(json!(5)));
        assert_eq!(ok("typeof performance", json!({})), json!("undefined"));
        // A script that never names Date has no clock at all, however it looks for one.
        assert_eq!(ok("typeof globalThis['Da' + 'te']", json!({})), json!("undefined"));
        match run("eval('Da' + 'te.now()')", json!({})) {
            Err(ScriptError::Runtime(m)) => assert!(m.starts_with("ReferenceError: "), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    // Meaningful on a host whose time zone is not UTC: run `TZ=XYZ-5:30 cargo test` (QuickJS reads TZ) to check.
    #[test]
    fn local_time_is_utc() {
        assert_eq!(ok("new Date().getHours()", json!({})), json!(22));
        assert_eq!(ok("new Date().getTimezoneOffset()", json!({})), json!(0));
        assert_eq!(ok("new Date(2024, 0, 2, 10, 30).toISOString()", json!({})), json!("2024-01-02T10:30:00.000Z"));
        assert_eq!(ok("new Date('2024-01-02T10:30:00').getTime()", json!({})), json!(1_704_191_400_000i64));
        assert_eq!(ok("Date.parse('2024-01-02T10:30:00+01:00')", json!({})), json!(1_704_187_800_000i64));
        assert_eq!(ok("Date.parse('2024-01-02')", json!({})), json!(1_704_153_600_000i64));
        assert_eq!(ok("Date.parse('Jan 2 2024 10:30:00')", json!({})), json!(1_704_191_400_000i64));
        assert_eq!(ok("Date.parse('Tue Jan 02 2024 10:30:00 GMT+0100')", json!({})), json!(1_704_187_800_000i64));
        assert_eq!(
            ok("new Date(2024, 0, 2, 10, 30).toString()", json!({})),
            json!("Tue Jan 02 2024 10:30:00 GMT+0000")
        );
        assert_eq!(ok("new Date(2024, 0, 2, 15, 4, 5).toLocaleString()", json!({})), json!("01/02/2024, 03:04:05 PM"));
        assert_eq!(ok("var d = new Date(0); d.setHours(5); d.getTime()", json!({})), json!(18_000_000));
        assert_eq!(ok("new Date(NaN).toString()", json!({})), json!("Invalid Date"));
        assert_eq!(ok("JSON.stringify({d: new Date(0)})", json!({})), json!("{\"d\":\"1970-01-01T00:00:00.000Z\"}"));
    }

    #[test]
    fn math_random_is_seeded_from_now_ms() {
        let expr = "[Math.random(), Math.random(), Math.random()]";
        let first = ok(expr, json!({}));
        assert_eq!(ok(expr, json!({})), first);
        let numbers = first.as_array().cloned().unwrap_or_default();
        assert_eq!(numbers.len(), 3);
        assert!(numbers.iter().all(|n| n.as_f64().is_some_and(|f| (0.0..1.0).contains(&f))), "{first}");
        assert_ne!(numbers[0], numbers[1]);
        let later = eval(expr, &json!({}), NOW + 1, &ScriptLimits::default());
        assert_ne!(later, Ok(first));
        // Uniform enough that routing by Math.random() spreads.
        let buckets =
            ok("var b = [0, 0, 0, 0]; for (var i = 0; i < 4000; i++) b[Math.floor(Math.random() * 4)]++; b", json!({}));
        let buckets: Vec<i64> = buckets.as_array().into_iter().flatten().filter_map(Value::as_i64).collect();
        assert!(buckets.iter().all(|&n| (850..1150).contains(&n)), "{buckets:?}");
    }

    #[test]
    fn no_io_modules_timers_or_host_objects() {
        let probe =
            "[typeof console, typeof print, typeof load, typeof require, typeof setTimeout, typeof setInterval, \
                     typeof std, typeof os, typeof process, typeof performance, typeof WeakRef, \
                     typeof FinalizationRegistry, typeof Atomics, typeof gc, typeof fetch, typeof XMLHttpRequest]";
        let all_undefined = json!(vec!["undefined"; 16]);
        assert_eq!(ok(probe, json!({})), all_undefined);
        // Conductor's LOAD_BLOCKED_EXPRESSION (InlineTest).
        let load_blocked = "var typeofLoad = typeof load; var threw = false; var errName = '';\
            try { load('https://example.com/x.js'); } catch (e) { threw = true; errName = e.name || '' + e; }\
            var goodErr = errName.indexOf('ReferenceError') >= 0 || errName.indexOf('TypeError') >= 0;\
            (typeofLoad === 'undefined' && threw && goodErr) ? 'blocked' : ('LEAK typeof=' + typeofLoad);";
        assert_eq!(ok(load_blocked, json!({})), json!("blocked"));
        // Module syntax is not available in a script, and dynamic import has no loader.
        assert!(matches!(run("import x from 'fs'; x", json!({})), Err(ScriptError::Syntax(_))));
        assert!(run("import('fs')", json!({})).is_ok_and(|v| v == json!({})));
    }

    #[test]
    fn globals_do_not_leak_between_evaluations() {
        assert_eq!(
            ok("leaked = 41; var v = 1; let l = 2; Array.prototype.evil = 1; Math.PI2 = 6; leaked + 1", json!({})),
            json!(42)
        );
        assert_eq!(
            ok("[typeof leaked, typeof v, typeof l, typeof [].evil, typeof Math.PI2]", json!({})),
            json!(["undefined", "undefined", "undefined", "undefined", "undefined"])
        );
        // Conductor's pool bug: a top-level const must not collide with the previous evaluation's.
        assert_eq!(ok("const x = 1; x", json!({})), json!(1));
        assert_eq!(ok("const x = 2; x", json!({})), json!(2));
        assert_eq!(ok("Date.now = () => 0; Date.now()", json!({})), json!(0));
        assert_eq!(ok("Date.now()", json!({})), json!(NOW));
    }

    #[test]
    fn same_input_same_output() {
        let expr = "var o = {}; for (var i = 0; i < 50; i++) { o['k' + (i * 7919 % 50)] = Math.random() * i; } \
                    [JSON.stringify(o), new Date().toString(), Object.keys(o).join(), [3, 1, 2].sort(), $.x]";
        let first = ok(expr, json!({"x": [1, {"y": 2}]}));
        for _ in 0..5 {
            assert_eq!(ok(expr, json!({"x": [1, {"y": 2}]})), first);
        }
    }

    #[test]
    fn infinite_loops_exceed_the_budget() {
        assert_eq!(run("while (true) {}", json!({})), Err(ScriptError::BudgetExceeded));
        assert_eq!(run("for (var i = 0; i < 1e7; i++) {}", json!({})), Err(ScriptError::BudgetExceeded));
        assert_eq!(
            run("function f() { f2(); } function f2() { f(); } try { f() } catch (e) {} while(1){}", json!({})),
            Err(ScriptError::BudgetExceeded)
        );
        // The interruption cannot be caught.
        assert_eq!(
            run("for (;;) { try { while (true) {} } catch (e) {} }", json!({})),
            Err(ScriptError::BudgetExceeded)
        );
        // Catastrophic regular-expression backtracking is counted too.
        assert_eq!(run("/(a+)+$/.test('a'.repeat(40) + 'b')", json!({})), Err(ScriptError::BudgetExceeded));
        // A getter in the result runs under the same budget.
        assert_eq!(run("({get g() { for (;;) {} }})", json!({})), Err(ScriptError::BudgetExceeded));
        // Reasonable work fits.
        assert_eq!(ok("var s = 0; for (var i = 0; i < 100000; i++) { s += i; } s", json!({})), json!(4_999_950_000i64));
    }

    #[test]
    fn budget_stops_at_the_same_point_every_time() {
        let limits = ScriptLimits { max_steps: 3, ..ScriptLimits::default() };
        let expr = "var n = 0; try { for (;;) { n++; } } finally { globalThis.seen = n; }";
        assert_eq!(eval(expr, &json!({}), NOW, &limits), Err(ScriptError::BudgetExceeded));
        // Counting iterations up to the interruption point: identical across runs.
        let count = "var n = 0; var r = []; for (var k = 0; k < 2; k++) { for (var i = 0; i < 12000; i++) { n++; } r.push(n); } r";
        let first = eval(count, &json!({}), NOW, &limits);
        for _ in 0..3 {
            assert_eq!(eval(count, &json!({}), NOW, &limits), first);
        }
        // The first handler call comes with the first tick, then one every TICKS_PER_STEP; the prelude and a
        // 5000-iteration loop (two ticks per iteration) fit in two calls, 30000 iterations do not.
        let tiny = ScriptLimits { max_steps: 2, ..ScriptLimits::default() };
        assert_eq!(
            eval("for (var i = 0; i < 30000; i++) {} i", &json!({}), NOW, &tiny),
            Err(ScriptError::BudgetExceeded)
        );
        assert_eq!(eval("for (var i = 0; i < 5000; i++) {} i", &json!({}), NOW, &tiny), Ok(json!(5000)));
    }

    #[test]
    fn memory_blow_up_is_an_error_not_an_abort() {
        assert_eq!(
            run("var a = []; for (;;) a.push(new Array(100000).fill(1));", json!({})),
            Err(ScriptError::MemoryExceeded)
        );
        assert_eq!(
            run("var a = []; for (var i = 0; ; i++) a.push('key' + i);", json!({})),
            Err(ScriptError::MemoryExceeded)
        );
        assert_eq!(
            run("var o = {}; for (var i = 0; ; i++) o['k' + i] = {i: i};", json!({})),
            Err(ScriptError::MemoryExceeded)
        );
        assert_eq!(run("'x'.repeat(1 << 26)", json!({})), Err(ScriptError::MemoryExceeded));
        // Even when the script catches the error, a later allocation fails again; here it gives up and returns.
        assert_eq!(
            ok("try { 'x'.repeat(1 << 26) } catch (e) { 'caught ' + e.message }", json!({})),
            json!("caught out of memory")
        );
        let small = ScriptLimits { max_memory_bytes: 1 << 20, ..ScriptLimits::default() };
        assert_eq!(
            eval("$.s.length", &json!({"s": "y".repeat(2 << 20)}), NOW, &small),
            Err(ScriptError::MemoryExceeded)
        );
        let tiny = ScriptLimits { max_memory_bytes: 1024, ..ScriptLimits::default() };
        assert_eq!(eval("1", &json!({}), NOW, &tiny), Err(ScriptError::MemoryExceeded));
    }

    #[test]
    fn deep_recursion_is_an_error_at_a_fixed_depth() {
        let expr = "var depth = 0; function f() { depth++; f(); } try { f() } catch (e) { [e.name, depth] }";
        let first = ok(expr, json!({}));
        assert_eq!(first[0], json!("RangeError"));
        assert!(first[1].as_i64().is_some_and(|d| d > 200), "{first}");
        // The limit is measured from where eval creates its runtime, so a deeper caller gets the same depth.
        fn nested(levels: u32, expr: &str) -> Value {
            let pad = std::hint::black_box([0u8; 4096]);
            if levels == 0 {
                return ok(expr, json!({}));
            }
            let v = nested(levels - 1, expr);
            std::hint::black_box(pad);
            v
        }
        assert_eq!(nested(50, expr), first);
        match run("function f() { f() } f()", json!({})) {
            Err(ScriptError::Runtime(m)) => assert!(m.starts_with("RangeError: "), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cost_of_one_small_eval() {
        let input = json!({"value": 1, "evaluatorType": "javascript"});
        let expr =
            r#"function e() { if ($.value == 1){return {"result": true}} else { return {"result": false}}} e();"#;
        let limits = ScriptLimits::default();
        let rounds = 200u32;
        let mut fastest = std::time::Duration::MAX;
        let start = std::time::Instant::now();
        for _ in 0..rounds {
            let one = std::time::Instant::now();
            assert!(eval(expr, &input, NOW, &limits).is_ok());
            fastest = fastest.min(one.elapsed());
        }
        let per_eval = start.elapsed() / rounds;
        let start = std::time::Instant::now();
        assert!(eval("new Date().getTime() + $.value", &input, NOW, &limits).is_ok());
        let with_date = start.elapsed();
        let start = std::time::Instant::now();
        assert_eq!(eval("for (;;) {}", &input, NOW, &limits), Err(ScriptError::BudgetExceeded));
        let budget = start.elapsed();
        println!(
            "script::eval: {per_eval:?} per small eval (fastest {fastest:?}); with Date: {with_date:?}; \
             exhausting the default budget: {budget:?}"
        );
    }
}
