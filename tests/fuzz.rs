//! A structure-aware fuzzer for the engine's apply (issue 25, "a fuzzer that keeps it true"): for every command
//! that can reach the Raft log, `engine::apply` finishes within bounded time and memory on every replica, never
//! panics, and replays to the same state (docs/adr/0010-total-apply.md).
//!
//! - `fuzz/generator.rs` draws cases: definitions over every task type, hostile code and templates, big values,
//!   and sequences of starts, worker reports, operator commands, clock moves, limit changes and raw commands.
//! - `fuzz/driver.rs` plays a case as a leader and its replicas would and checks the bounds and the replay.
//! - `fuzz/harness.rs` plays cases in a child process under OS limits and minimises what fails.
//!
//! Usage (this is an integration test target with `harness = false`):
//!
//! - no arguments (what `cargo test` runs): about a minute of fuzzing with moderate sizes, failing on the first
//!   finding that is not a known open one (`harness::OPEN_FINDINGS`);
//! - `--minutes N [--seed S] [--sizes full|moderate] [--tolerate-open]`: a campaign of N minutes that goes on
//!   after findings (scripts/fuzz.sh); full sizes by default (see `generator::FULL`), where the short run uses
//!   moderate ones; `--tolerate-open` skips the open findings, to look for new ones;
//! - `--replay FILE`: plays a case written under `target/fuzz-findings/` in this process and prints the verdict
//!   (`FUZZ_TRACE=1` prints each apply's cost);
//! - `--child`: the child mode the harness starts.
//!
//! Findings are printed as JSON and written under `target/fuzz-findings/`; each becomes a named test in
//! tests/fuzz_findings.rs.

#[path = "fuzz/case.rs"]
mod case;
#[path = "fuzz/driver.rs"]
mod driver;
#[path = "fuzz/generator.rs"]
mod generator;
#[path = "fuzz/harness.rs"]
mod harness;

use std::process::ExitCode;
use std::time::Duration;

/// Counts the heap, so that the driver can hold each apply to its bound.
#[global_allocator]
static HEAP: peak_alloc::PeakAlloc = peak_alloc::PeakAlloc;

/// The fuzzing `cargo test` does: short enough for CI, long enough to cover every generator branch many times.
const CI_BUDGET: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    if args.iter().any(|a| a == "--child") {
        return harness::child_main();
    }
    if args.iter().any(|a| a == "--list") {
        // `cargo test -- --list` asks every test binary for its tests; this one has a single one.
        println!("fuzz: test");
        return ExitCode::SUCCESS;
    }
    if let Some(file) = value("--replay") {
        return replay(&file);
    }
    let seed =
        value("--seed").or_else(|| std::env::var("FUZZ_SEED").ok()).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
        });
    let minutes: Option<f64> = value("--minutes").and_then(|m| m.parse().ok());
    let sizes = match value("--sizes").as_deref() {
        Some("moderate") => generator::MODERATE,
        Some("full") => generator::FULL,
        Some(other) => panic!("--sizes is full or moderate, not {other}"),
        None if minutes.is_some() => generator::FULL,
        None => generator::MODERATE,
    };
    let campaign = match minutes {
        Some(minutes) => harness::Campaign {
            budget: Duration::from_secs_f64(minutes * 60.0),
            seed,
            batch: 64,
            shrink_time: Duration::from_secs(180),
            stop_at_first: false,
            sizes,
            tolerated: if args.iter().any(|a| a == "--tolerate-open") { harness::OPEN_FINDINGS } else { &[] },
        },
        None => harness::Campaign {
            budget: CI_BUDGET,
            seed,
            batch: 32,
            shrink_time: Duration::from_secs(40),
            stop_at_first: true,
            sizes,
            tolerated: harness::OPEN_FINDINGS,
        },
    };
    eprintln!("fuzz: seed {seed}, budget {} s (FUZZ_SEED={seed} repeats this run)", campaign.budget.as_secs());
    let summary = harness::run(&campaign);
    print_summary(&summary);
    if summary.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_summary(summary: &harness::Summary) {
    let minutes = summary.elapsed.as_secs_f64() / 60.0;
    let r = &summary.report;
    println!(
        "fuzz: {} cases in {:.1} min ({:.0} cases/min); {} entries applied, {} client commands refused by the gateway, \
         {} evaluations ({} in the sandbox)",
        summary.cases,
        minutes,
        summary.cases as f64 / minutes.max(1e-9),
        r.proposals,
        r.refused_by_gateway,
        r.evaluations,
        r.sandbox_evaluations,
    );
    println!(
        "fuzz: slowest apply {:.1} ms of CPU ({}), heaviest apply {:.1} MiB ({}); bounds {} ms, {} MiB",
        r.slowest_apply_us.0 as f64 / 1000.0,
        r.slowest_apply_us.1,
        r.heaviest_apply_bytes.0 as f64 / f64::from(1 << 20),
        r.heaviest_apply_bytes.1,
        driver::BOUNDS.apply_cpu.as_millis(),
        driver::BOUNDS.apply_heap_bytes >> 20,
    );
    for finding in &summary.findings {
        println!("fuzz: finding {}", finding.failure);
    }
    if summary.repeats > 0 {
        println!("fuzz: {} more failures repeated a finding's signature", summary.repeats);
    }
    if summary.tolerated > 0 {
        println!("fuzz: {} failures of open findings tolerated ({:?})", summary.tolerated, harness::OPEN_FINDINGS);
    }
    println!("fuzz: {} findings", summary.findings.len());
}

/// Plays one recorded case (a finding file, or a bare case) in this process and prints what happened; with
/// `FUZZ_TRACE` set, the cost of every apply too.
fn replay(file: &str) -> ExitCode {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("read {file}: {e}"));
    let document: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {file}: {e}"));
    let case_json = document.get("case").cloned().unwrap_or(document);
    let case: case::Case = serde_json::from_value(case_json).unwrap_or_else(|e| panic!("{file} is not a case: {e}"));
    let mut evaluator = driver::SandboxEvaluator::new();
    match driver::play(&case, &mut evaluator, &mut |step| eprintln!("fuzz: step {step}")) {
        Ok(report) => {
            println!("passed: {report:?}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            println!("failed: {failure}");
            ExitCode::FAILURE
        }
    }
}
