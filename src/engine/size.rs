//! Payload sizes: how many bytes a value takes as compact JSON, measured without building the JSON and without
//! walking further than a cap, so that measuring a huge value costs no more than the cap.
//!
//! Owns: the one measure every byte limit of [`super::limits::Limits`] is stated in ("bytes" means the length of
//! the value's compact JSON text, as `serde_json::to_string` writes it). Must not touch: the limits themselves or
//! what a breach does (the callers decide).

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Map, Value};

/// The length of `value`'s compact JSON, if it is at most `cap`; `None` as soon as the count passes `cap`.
///
/// Iterative (an explicit stack), so its cost is bounded by `cap` and its stack use by nothing: it is safe on
/// values of any depth.
pub fn value_within(value: &Value, cap: usize) -> Option<usize> {
    let mut counter = Counter { total: 0, cap };
    let mut stack: Vec<&Value> = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::Null => counter.add(4)?,
            Value::Bool(true) => counter.add(4)?,
            Value::Bool(false) => counter.add(5)?,
            Value::Number(number) => counter.add(number_len(number))?,
            Value::String(text) => counter.add(string_len(text))?,
            Value::Array(items) => {
                // Brackets, and a comma between items.
                counter.add(2 + items.len().saturating_sub(1))?;
                stack.extend(items.iter().rev());
            }
            Value::Object(map) => {
                counter.add(object_overhead(map))?;
                stack.extend(map.values().rev());
            }
        }
    }
    Some(counter.total)
}

/// The length of the JSON object `map` would be, if it is at most `cap`.
pub fn map_within(map: &Map<String, Value>, cap: usize) -> Option<usize> {
    let overhead = object_overhead(map);
    let mut total = overhead;
    for value in map.values() {
        total = total.checked_add(value_within(value, cap.checked_sub(total)?)?)?;
    }
    (total <= cap).then_some(total)
}

/// [`map_within`] of `map` as if its member `skip` were removed, measured in place (nothing is copied).
pub fn map_without_within(map: &Map<String, Value>, skip: &str, cap: usize) -> Option<usize> {
    let mut total = 2usize;
    for (member, (key, value)) in map.iter().filter(|(key, _)| key.as_str() != skip).enumerate() {
        // The key with its quotes and colon, and a comma before every member but the first.
        total = total.checked_add(string_len(key) + 1 + usize::from(member > 0))?;
        total = total.checked_add(value_within(value, cap.checked_sub(total)?)?)?;
    }
    (total <= cap).then_some(total)
}

/// The length of any serialisable record's compact JSON, if it is at most `cap`. The serialiser stops writing
/// once the cap is passed, so nothing of the size of the record is allocated. For records whose values are
/// depth-checked ([`super::model::MAX_VALUE_DEPTH`]), since serde's serialiser recurses.
pub fn record_within(record: &impl Serialize, cap: usize) -> Option<usize> {
    let mut sink = CappedSink { written: 0, cap };
    serde_json::to_writer(&mut sink, record).ok()?;
    Some(sink.written)
}

/// Braces, commas between members, and each key with its quotes and colon.
fn object_overhead(map: &Map<String, Value>) -> usize {
    let keys: usize = map.keys().map(|key| string_len(key) + 1).sum();
    2 + map.len().saturating_sub(1) + keys
}

/// The length of a JSON string literal: quotes plus each byte, escapes counted as serde_json writes them.
pub fn string_len(text: &str) -> usize {
    let escapes: usize = text
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
            0..=0x1f => 5,
            _ => 0,
        })
        .sum();
    text.len() + escapes + 2
}

fn number_len(number: &serde_json::Number) -> usize {
    let mut counter = LenCounter(0);
    let _ = write!(counter, "{number}");
    counter.0
}

struct Counter {
    total: usize,
    cap: usize,
}

impl Counter {
    fn add(&mut self, bytes: usize) -> Option<()> {
        self.total = self.total.checked_add(bytes)?;
        (self.total <= self.cap).then_some(())
    }
}

struct LenCounter(usize);

impl std::fmt::Write for LenCounter {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}

/// Counts what serde_json writes and refuses the write that passes the cap.
struct CappedSink {
    written: usize,
    cap: usize,
}

impl std::io::Write for CappedSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written = self.written.saturating_add(buf.len());
        if self.written > self.cap {
            return Err(std::io::Error::other("over the cap"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn measures_exactly_what_serde_json_writes() {
        let values = [
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(-12345678901234i64),
            json!(1.5e300),
            json!(0.1),
            json!(u64::MAX),
            json!("plain"),
            json!("quote \" backslash \\ newline \n tab \t bell \u{7} nul \u{0} é 日本"),
            json!([]),
            json!({}),
            json!([1, [2, [3, {"a": [null, {}]}]]]),
            json!({"k\"ey": {"x": 1, "y": [true, false, "s"]}, "": ""}),
        ];
        for value in values {
            let text = serde_json::to_string(&value).expect("serialises");
            assert_eq!(value_within(&value, usize::MAX), Some(text.len()), "{text}");
            assert_eq!(record_within(&value, usize::MAX), Some(text.len()), "{text}");
            if let Value::Object(map) = &value {
                assert_eq!(map_within(map, usize::MAX), Some(text.len()), "{text}");
            }
        }
    }

    #[test]
    fn a_map_without_one_member_measures_as_the_map_it_would_be() {
        let value = json!({"1": [1, 2], "2": {"x": "y"}, "iteration": 2, "k\"ey": null});
        let Value::Object(map) = &value else { unreachable!("an object") };
        for skip in ["1", "2", "iteration", "k\"ey", "absent"] {
            let mut without = map.clone();
            without.remove(skip);
            let text = serde_json::to_string(&without).expect("serialises");
            assert_eq!(map_without_within(map, skip, usize::MAX), Some(text.len()), "without {skip}: {text}");
            assert_eq!(map_without_within(map, skip, text.len() - 1), None, "without {skip}");
        }
        let one = json!({"only": 1});
        let Value::Object(one) = &one else { unreachable!("an object") };
        assert_eq!(map_without_within(one, "only", usize::MAX), Some(2));
    }

    #[test]
    fn stops_at_the_cap() {
        let value = json!({"a": "x".repeat(100)});
        let exact = serde_json::to_string(&value).expect("serialises").len();
        assert_eq!(value_within(&value, exact), Some(exact));
        assert_eq!(value_within(&value, exact - 1), None);
        assert_eq!(record_within(&value, exact), Some(exact));
        assert_eq!(record_within(&value, exact - 1), None);
        let Value::Object(map) = &value else { unreachable!("an object") };
        assert_eq!(map_within(map, exact - 1), None);
    }

    #[test]
    fn a_value_nested_a_million_deep_is_measured_without_recursion() {
        let mut value = json!(1);
        for _ in 0..1_000_000 {
            value = Value::Array(vec![value]);
        }
        assert_eq!(value_within(&value, usize::MAX), Some(2_000_001));
        assert_eq!(value_within(&value, 1000), None);
        // Dropping it recursively would overflow the stack; take it apart by hand.
        let mut next = Some(value);
        while let Some(Value::Array(mut items)) = next {
            next = items.pop();
        }
    }
}
