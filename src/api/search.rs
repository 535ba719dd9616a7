//! Conductor's workflow search, `GET /api/workflow/search?start=&size=&sort=&freeText=&query=`: a subset of its
//! query syntax (parsed here, every failure naming the clause), matched against the applied state by a full scan
//! ([`WorkflowApi::find`]), sorted and paged, answered as Conductor's `SearchResult<WorkflowSummary>`.
//!
//! Owns: the query, sort and paging grammar and the summary shape. Must not touch: storage layout (it reads
//! workflows through [`WorkflowApi`]) or anything that writes.
//!
//! The query grammar: clauses joined by `AND` (any case); each clause is one of
//! `workflowType = 'x'`, `workflowType IN (a, b)`, `status = RUNNING`, `status IN (RUNNING, FAILED)`,
//! `correlationId = 'x'` (or `IN`), `workflowId = 'x'` (or `IN`), `startTime > <ms>` (also `>=`, `<`, `<=`).
//! Values are bare words or quoted with `'` or `"`.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::api::error::ApiError;
use crate::api::http::HttpState;
use crate::api::query::Query;
use crate::api::workflows::WorkflowApi;
use crate::engine::model::{Workflow, WorkflowStatus};

/// Results per page unless `size` says otherwise.
pub const DEFAULT_SIZE: usize = 100;
/// Most results one page may hold; a larger `size` is cut to this.
pub const MAX_SIZE: usize = 1000;

/// The search route, merged into the node's router.
pub fn routes() -> Router<HttpState> {
    Router::new().route("/api/workflow/search", get(search))
}

/// The query string, every value as text so that a bad number is answered with Conductor's error body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SearchParams {
    start: Option<String>,
    size: Option<String>,
    sort: Option<String>,
    free_text: Option<String>,
    query: Option<String>,
}

async fn search(
    State(state): State<HttpState>,
    Query(params): Query<SearchParams>,
) -> Result<Json<SearchResult>, ApiError> {
    let request = SearchRequest::parse(&params)?;
    Ok(Json(request.run(&state.workflows).await?))
}

/// Conductor's `SearchResult`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchResult {
    /// Matches in all, before paging.
    pub total_hits: u64,
    /// This page.
    pub results: Vec<WorkflowSummary>,
}

/// Conductor's `WorkflowSummary`: times as ISO-8601 UTC strings, input and output as JSON text. Fields Conductor
/// leaves null are left out (its mapper skips nulls).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSummary {
    /// The definition's name.
    pub workflow_type: String,
    /// The definition's version.
    pub version: u32,
    /// The execution's id.
    pub workflow_id: String,
    /// The caller's correlation id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// When started, e.g. `2024-01-02T03:04:05.678Z`.
    pub start_time: String,
    /// Last change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_time: Option<String>,
    /// When it reached a terminal status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// Current status.
    pub status: WorkflowStatus,
    /// The input as JSON text.
    pub input: String,
    /// The output as JSON text.
    pub output: String,
    /// Why it did not complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_for_incompletion: Option<String>,
    /// End minus start, ms; 0 while it runs.
    pub execution_time: u64,
    /// The event that started it (never set by Baton: it has no event handlers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// References of the tasks that failed it, comma-joined.
    pub failed_reference_task_names: String,
    /// Scheduling priority 0-99.
    pub priority: u32,
    /// Who started it (never set by Baton: it has no users).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Task type -> domain.
    pub task_to_domain: BTreeMap<String, String>,
}

impl From<&Workflow> for WorkflowSummary {
    fn from(w: &Workflow) -> Self {
        let json = |m: &serde_json::Map<String, serde_json::Value>| {
            serde_json::to_string(m).unwrap_or_else(|_| "{}".to_string())
        };
        WorkflowSummary {
            workflow_type: w.workflow_name.clone(),
            version: w.workflow_version,
            workflow_id: w.workflow_id.clone(),
            correlation_id: w.correlation_id.clone(),
            start_time: iso8601_utc(w.start_time),
            update_time: (w.update_time > 0).then(|| iso8601_utc(w.update_time)),
            end_time: (w.end_time > 0).then(|| iso8601_utc(w.end_time)),
            status: w.status,
            input: json(&w.input),
            output: json(&w.output),
            reason_for_incompletion: w.reason_for_incompletion.clone(),
            execution_time: if w.end_time > 0 { w.end_time.saturating_sub(w.start_time) } else { 0 },
            event: None,
            failed_reference_task_names: w
                .failed_reference_task_names
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(","),
            priority: w.priority,
            created_by: None,
            task_to_domain: w.task_to_domain.clone(),
        }
    }
}

/// ms since the Unix epoch as Conductor prints it: `yyyy-MM-dd'T'HH:mm:ss.SSS'Z'`, UTC.
pub fn iso8601_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
}

/// Year, month (1-12) and day (1-31) of the proleptic Gregorian calendar, `days` after 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st, 0..=365
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

// ---------------------------------------------------------------------------------------------- the request

/// A parsed search: what matches, in which order, which page.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest {
    /// Every clause must hold.
    pub clauses: Vec<Clause>,
    /// Lower-cased text that the id, type, correlation id, input or output must contain; `None` matches all.
    pub free_text: Option<String>,
    /// Sort keys, most significant first; ties end in workflow id order.
    pub sort: Vec<SortKey>,
    /// Matches skipped.
    pub start: usize,
    /// At most this many results.
    pub size: usize,
}

/// One clause of the query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clause {
    /// The definition's name is one of these.
    WorkflowType(Vec<String>),
    /// The status is one of these.
    Status(Vec<WorkflowStatus>),
    /// The correlation id is one of these.
    CorrelationId(Vec<String>),
    /// The workflow id is one of these.
    WorkflowId(Vec<String>),
    /// The start time compares so with this many ms since the Unix epoch.
    StartTime(Comparison, u64),
}

/// `>`, `>=`, `<` or `<=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// Strictly after.
    Greater,
    /// At or after.
    GreaterOrEqual,
    /// Strictly before.
    Less,
    /// At or before.
    LessOrEqual,
}

/// A sortable field and a direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKey {
    /// Which field.
    pub field: SortField,
    /// True for ASC.
    pub ascending: bool,
}

/// The fields results may be sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortField {
    /// `startTime`.
    StartTime,
    /// `updateTime`.
    UpdateTime,
    /// `endTime`.
    EndTime,
    /// `workflowType` (then version).
    WorkflowType,
    /// `workflowId`.
    WorkflowId,
    /// `correlationId`.
    CorrelationId,
    /// `status`.
    Status,
    /// `priority`.
    Priority,
}

const SORT_FIELDS: &str = "startTime, updateTime, endTime, workflowType, workflowId, correlationId, status, priority";
const QUERY_FIELDS: &str = "workflowType, status, correlationId, workflowId, startTime";

impl SearchRequest {
    fn parse(params: &SearchParams) -> Result<SearchRequest, ApiError> {
        let start = parse_count(params.start.as_deref(), "start")?.unwrap_or(0);
        let size = parse_count(params.size.as_deref(), "size")?.unwrap_or(DEFAULT_SIZE).min(MAX_SIZE);
        let free_text =
            params.free_text.as_deref().map(str::trim).filter(|t| !t.is_empty() && *t != "*").map(str::to_lowercase);
        Ok(SearchRequest {
            clauses: parse_query(params.query.as_deref().unwrap_or(""))?,
            free_text,
            sort: parse_sort(params.sort.as_deref().unwrap_or(""))?,
            start,
            size,
        })
    }

    /// True when `w` satisfies every clause and the free text.
    pub fn matches(&self, w: &Workflow) -> bool {
        self.clauses.iter().all(|c| c.matches(w)) && self.free_text.as_deref().is_none_or(|t| free_text_matches(w, t))
    }

    /// Runs the search over every workflow this node has applied.
    pub async fn run(self, workflows: &WorkflowApi) -> Result<SearchResult, ApiError> {
        let (start, size, sort) = (self.start, self.size, self.sort.clone());
        let mut found = workflows.find(move |w| self.matches(w)).await?;
        found.sort_by(|a, b| compare(&sort, a, b));
        Ok(SearchResult {
            total_hits: found.len() as u64,
            results: found.iter().skip(start).take(size).map(WorkflowSummary::from).collect(),
        })
    }
}

/// `start` or `size`: absent, or a whole number of 0 or more.
fn parse_count(value: Option<&str>, name: &str) -> Result<Option<usize>, ApiError> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    match value.parse::<i64>() {
        Ok(n) if n < 0 => Err(ApiError::invalid(format!("{name}: must be 0 or more, got {n}"))),
        Ok(n) => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
        Err(_) => Err(ApiError::invalid(format!("{name}: expected a whole number, got '{value}'"))),
    }
}

fn free_text_matches(w: &Workflow, text: &str) -> bool {
    let contains = |s: &str| s.to_lowercase().contains(text);
    let json_contains = |m: &serde_json::Map<String, serde_json::Value>| {
        serde_json::to_string(m).is_ok_and(|s| s.to_lowercase().contains(text))
    };
    contains(&w.workflow_id)
        || contains(&w.workflow_name)
        || w.correlation_id.as_deref().is_some_and(contains)
        || json_contains(&w.input)
        || json_contains(&w.output)
}

impl Clause {
    /// True when `w` satisfies this clause.
    pub fn matches(&self, w: &Workflow) -> bool {
        match self {
            Clause::WorkflowType(names) => names.contains(&w.workflow_name),
            Clause::Status(statuses) => statuses.contains(&w.status),
            Clause::CorrelationId(ids) => w.correlation_id.as_ref().is_some_and(|c| ids.contains(c)),
            Clause::WorkflowId(ids) => ids.contains(&w.workflow_id),
            Clause::StartTime(cmp, ms) => match cmp {
                Comparison::Greater => w.start_time > *ms,
                Comparison::GreaterOrEqual => w.start_time >= *ms,
                Comparison::Less => w.start_time < *ms,
                Comparison::LessOrEqual => w.start_time <= *ms,
            },
        }
    }
}

fn compare(sort: &[SortKey], a: &Workflow, b: &Workflow) -> Ordering {
    sort.iter()
        .map(|key| {
            let ord = match key.field {
                SortField::StartTime => a.start_time.cmp(&b.start_time),
                SortField::UpdateTime => a.update_time.cmp(&b.update_time),
                SortField::EndTime => a.end_time.cmp(&b.end_time),
                SortField::WorkflowType => {
                    a.workflow_name.cmp(&b.workflow_name).then(a.workflow_version.cmp(&b.workflow_version))
                }
                SortField::WorkflowId => a.workflow_id.cmp(&b.workflow_id),
                SortField::CorrelationId => a.correlation_id.cmp(&b.correlation_id),
                SortField::Status => a.status.as_str().cmp(b.status.as_str()),
                SortField::Priority => a.priority.cmp(&b.priority),
            };
            if key.ascending {
                ord
            } else {
                ord.reverse()
            }
        })
        .find(|o| o.is_ne())
        .unwrap_or_else(|| a.workflow_id.cmp(&b.workflow_id))
}

// ---------------------------------------------------------------------------------------------- sort

/// `field[:ASC|DESC]`, several separated by `|` (Conductor's list separator) or `;`; empty means
/// `startTime:DESC`.
pub fn parse_sort(sort: &str) -> Result<Vec<SortKey>, ApiError> {
    let mut keys = Vec::new();
    for part in sort.split(['|', ';']).map(str::trim).filter(|p| !p.is_empty()) {
        let (field, direction) = part.split_once(':').unwrap_or((part, "ASC"));
        let field = match field.trim() {
            "startTime" => SortField::StartTime,
            "updateTime" => SortField::UpdateTime,
            "endTime" => SortField::EndTime,
            "workflowType" => SortField::WorkflowType,
            "workflowId" => SortField::WorkflowId,
            "correlationId" => SortField::CorrelationId,
            "status" => SortField::Status,
            "priority" => SortField::Priority,
            other => {
                return Err(ApiError::invalid(format!(
                    "sort '{part}': unknown field '{other}' (sortable: {SORT_FIELDS})"
                )))
            }
        };
        let ascending = match direction.trim().to_ascii_uppercase().as_str() {
            "ASC" => true,
            "DESC" => false,
            _ => return Err(ApiError::invalid(format!("sort '{part}': direction must be ASC or DESC"))),
        };
        keys.push(SortKey { field, ascending });
    }
    if keys.is_empty() {
        keys.push(SortKey { field: SortField::StartTime, ascending: false });
    }
    Ok(keys)
}

// ---------------------------------------------------------------------------------------------- query

/// One lexical token and where it sits in the query (byte offsets).
#[derive(Debug, Clone, PartialEq)]
struct Token {
    kind: TokenKind,
    start: usize,
    end: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum TokenKind {
    /// A bare word: field name, keyword, value or number.
    Word(String),
    /// A quoted value, quotes removed.
    Quoted(String),
    /// `=`, `!=`, `>`, `>=`, `<`, `<=`.
    Op(&'static str),
    Open,
    Close,
    Comma,
}

fn tokenize(query: &str) -> Result<Vec<Token>, ApiError> {
    let mut tokens = Vec::new();
    let mut chars = query.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        let kind = match c {
            c if c.is_whitespace() => continue,
            '(' => TokenKind::Open,
            ')' => TokenKind::Close,
            ',' => TokenKind::Comma,
            '=' => TokenKind::Op("="),
            '!' | '>' | '<' => {
                if chars.next_if(|(_, n)| *n == '=').is_some() {
                    TokenKind::Op(match c {
                        '!' => "!=",
                        '>' => ">=",
                        _ => "<=",
                    })
                } else if c == '!' {
                    return Err(ApiError::invalid(format!("query: unexpected '!' at offset {start} in '{query}'")));
                } else {
                    TokenKind::Op(if c == '>' { ">" } else { "<" })
                }
            }
            '\'' | '"' => {
                let mut value = String::new();
                let mut closed = false;
                for (_, n) in chars.by_ref() {
                    if n == c {
                        closed = true;
                        break;
                    }
                    value.push(n);
                }
                if !closed {
                    return Err(ApiError::invalid(format!(
                        "query: unterminated {c}quote{c} starting at offset {start}"
                    )));
                }
                TokenKind::Quoted(value)
            }
            _ => {
                let mut word = String::from(c);
                while let Some((_, n)) = chars.next_if(|(_, n)| !n.is_whitespace() && !"()=,!<>'\"".contains(*n)) {
                    word.push(n);
                }
                TokenKind::Word(word)
            }
        };
        let end = chars.peek().map_or(query.len(), |(i, _)| *i);
        tokens.push(Token { kind, start, end });
    }
    Ok(tokens)
}

fn is_keyword(token: &Token, keyword: &str) -> bool {
    matches!(&token.kind, TokenKind::Word(w) if w.eq_ignore_ascii_case(keyword))
}

/// Parses a query into clauses that must all hold; an empty query (or `*`) has none.
pub fn parse_query(query: &str) -> Result<Vec<Clause>, ApiError> {
    let trimmed = query.trim();
    if trimmed.is_empty() || trimmed == "*" {
        return Ok(Vec::new());
    }
    let tokens = tokenize(query)?;
    let mut clauses = Vec::new();
    for group in tokens.split(|t| is_keyword(t, "AND")) {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            return Err(ApiError::invalid(format!("query '{trimmed}': AND must join two clauses")));
        };
        let text = &query[first.start..last.end];
        clauses.push(parse_clause(group).map_err(|why| ApiError::invalid(format!("query clause '{text}': {why}")))?);
    }
    Ok(clauses)
}

/// One clause from its tokens; the error says what is wrong with it, the caller names the clause.
fn parse_clause(tokens: &[Token]) -> Result<Clause, String> {
    let TokenKind::Word(field) = &tokens[0].kind else {
        return Err("expected a field name first".to_string());
    };
    let rest = &tokens[1..];
    let Some(op) = rest.first() else {
        return Err(format!("expected an operator after '{field}'"));
    };
    let values: Vec<String> = match &op.kind {
        TokenKind::Op("=") => vec![single_value(&rest[1..])?],
        TokenKind::Word(w) if w.eq_ignore_ascii_case("IN") => value_list(&rest[1..])?,
        TokenKind::Op(cmp @ (">" | ">=" | "<" | "<=")) => {
            if field != "startTime" {
                return Err(format!("'{cmp}' applies only to startTime"));
            }
            let value = single_value(&rest[1..])?;
            let ms =
                value.parse::<u64>().map_err(|_| format!("startTime: expected ms since the epoch, got '{value}'"))?;
            let cmp = match *cmp {
                ">" => Comparison::Greater,
                ">=" => Comparison::GreaterOrEqual,
                "<" => Comparison::Less,
                _ => Comparison::LessOrEqual,
            };
            return Ok(Clause::StartTime(cmp, ms));
        }
        TokenKind::Word(w) if w.eq_ignore_ascii_case("OR") || w.eq_ignore_ascii_case("NOT") => {
            return Err(format!("{w} is not supported; clauses can only be joined by AND"));
        }
        _ => return Err("expected '=' or IN after the field name".to_string()),
    };
    match field.as_str() {
        "workflowType" => Ok(Clause::WorkflowType(values)),
        "correlationId" => Ok(Clause::CorrelationId(values)),
        "workflowId" => Ok(Clause::WorkflowId(values)),
        "status" => values.iter().map(|v| parse_status(v)).collect::<Result<_, _>>().map(Clause::Status),
        "startTime" => Err("startTime takes >, >=, < or <= and ms since the epoch".to_string()),
        other => Err(format!("unknown field '{other}' (searchable: {QUERY_FIELDS})")),
    }
}

fn value_of(token: &Token) -> Option<String> {
    match &token.kind {
        TokenKind::Word(w) | TokenKind::Quoted(w) => Some(w.clone()),
        _ => None,
    }
}

/// Exactly one value and nothing after it.
fn single_value(tokens: &[Token]) -> Result<String, String> {
    match tokens {
        [] => Err("expected a value".to_string()),
        [value] => value_of(value).ok_or_else(|| "expected a value".to_string()),
        [_, extra, ..] if is_keyword(extra, "OR") => {
            Err("OR is not supported; clauses can only be joined by AND (use IN for alternatives)".to_string())
        }
        [_, _, ..] => Err("unexpected text after the value (clauses are joined by AND)".to_string()),
    }
}

/// `( v1, v2, ... )` and nothing after it.
fn value_list(tokens: &[Token]) -> Result<Vec<String>, String> {
    let (Some(TokenKind::Open), Some(TokenKind::Close)) =
        (tokens.first().map(|t| &t.kind), tokens.last().map(|t| &t.kind))
    else {
        return Err("IN expects a parenthesised list: IN (a, b)".to_string());
    };
    let inner = &tokens[1..tokens.len() - 1];
    if inner.is_empty() {
        return Err("IN () needs at least one value".to_string());
    }
    inner
        .split(|t| t.kind == TokenKind::Comma)
        .map(|item| match item {
            [value] => value_of(value).ok_or_else(|| "IN list items must be values".to_string()),
            _ => Err("IN list items must be single values separated by commas".to_string()),
        })
        .collect()
}

fn parse_status(value: &str) -> Result<WorkflowStatus, String> {
    serde_json::from_value(serde_json::Value::String(value.to_string())).map_err(|_| {
        format!("unknown status '{value}' (one of RUNNING, COMPLETED, FAILED, TIMED_OUT, TERMINATED, PAUSED)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::RejectionKind;

    fn message(e: ApiError) -> String {
        match e {
            ApiError::Refused(r) if r.kind == RejectionKind::Invalid => r.message,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn empty_and_star_queries_have_no_clauses() {
        assert_eq!(parse_query("").expect("parses"), vec![]);
        assert_eq!(parse_query("  * ").expect("parses"), vec![]);
    }

    #[test]
    fn equality_in_lists_and_comparisons_joined_by_and() {
        let q = "workflowType = 'encode' AND status IN (RUNNING, FAILED) and correlationId=\"order 7\" \
                 AND workflowId = abc-1 AND startTime > 1000 AND startTime<=2000";
        assert_eq!(
            parse_query(q).expect("parses"),
            vec![
                Clause::WorkflowType(vec!["encode".into()]),
                Clause::Status(vec![WorkflowStatus::Running, WorkflowStatus::Failed]),
                Clause::CorrelationId(vec!["order 7".into()]),
                Clause::WorkflowId(vec!["abc-1".into()]),
                Clause::StartTime(Comparison::Greater, 1000),
                Clause::StartTime(Comparison::LessOrEqual, 2000),
            ]
        );
        assert_eq!(
            parse_query("workflowType IN (a,'b c', \"d\")").expect("parses"),
            vec![Clause::WorkflowType(vec!["a".into(), "b c".into(), "d".into()])]
        );
    }

    #[test]
    fn quoted_values_keep_and_keywords_and_operators() {
        assert_eq!(
            parse_query("correlationId = 'x AND y = (1, 2)'").expect("parses"),
            vec![Clause::CorrelationId(vec!["x AND y = (1, 2)".into()])]
        );
    }

    #[test]
    fn errors_name_the_bad_clause() {
        let cases = [
            ("workflowType = a AND colour = red", "clause 'colour = red'", "unknown field 'colour'"),
            ("status = SLEEPING", "clause 'status = SLEEPING'", "unknown status 'SLEEPING'"),
            ("status = RUNNING OR status = FAILED", "clause 'status = RUNNING OR status = FAILED'", "OR"),
            ("workflowType IN a, b", "clause 'workflowType IN a, b'", "parenthesised"),
            ("workflowType IN ()", "clause 'workflowType IN ()'", "at least one"),
            ("startTime > soon", "clause 'startTime > soon'", "ms since the epoch"),
            ("startTime = 5", "clause 'startTime = 5'", "startTime takes"),
            ("workflowType > 5", "clause 'workflowType > 5'", "only to startTime"),
            ("workflowType", "clause 'workflowType'", "expected an operator"),
            ("workflowType =", "clause 'workflowType ='", "expected a value"),
            ("status = RUNNING AND", "AND must join", ""),
        ];
        for (query, clause, why) in cases {
            let m = message(parse_query(query).expect_err("refused"));
            assert!(m.contains(clause) && m.contains(why), "{query:?} answered {m:?}");
        }
        let m = message(parse_query("correlationId = 'open").expect_err("refused"));
        assert!(m.contains("unterminated"), "{m}");
    }

    #[test]
    fn sort_defaults_to_newest_first_and_takes_several_keys() {
        assert_eq!(parse_sort("").expect("parses"), vec![SortKey { field: SortField::StartTime, ascending: false }]);
        assert_eq!(
            parse_sort("workflowType:asc|startTime:DESC;status").expect("parses"),
            vec![
                SortKey { field: SortField::WorkflowType, ascending: true },
                SortKey { field: SortField::StartTime, ascending: false },
                SortKey { field: SortField::Status, ascending: true },
            ]
        );
        assert!(message(parse_sort("colour:ASC").expect_err("unknown field")).contains("unknown field 'colour'"));
        assert!(message(parse_sort("startTime:UP").expect_err("bad direction")).contains("ASC or DESC"));
    }

    #[test]
    fn paging_defaults_caps_and_refuses_negatives() {
        let parse = |start: Option<&str>, size: Option<&str>| {
            SearchRequest::parse(&SearchParams {
                start: start.map(str::to_string),
                size: size.map(str::to_string),
                ..Default::default()
            })
        };
        let r = parse(None, None).expect("parses");
        assert_eq!((r.start, r.size, r.free_text), (0, DEFAULT_SIZE, None));
        assert_eq!(parse(Some("20"), Some("5000")).expect("parses").size, MAX_SIZE);
        assert!(message(parse(None, Some("-1")).expect_err("refused")).contains("size: must be 0 or more"));
        assert!(message(parse(Some("-3"), None).expect_err("refused")).contains("start: must be 0 or more"));
        assert!(message(parse(Some("ten"), None).expect_err("refused")).contains("start: expected a whole number"));
    }

    #[test]
    fn times_print_as_conductor_does() {
        assert_eq!(iso8601_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601_utc(1_704_164_645_678), "2024-01-02T03:04:05.678Z");
        assert_eq!(iso8601_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso8601_utc(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }
}
