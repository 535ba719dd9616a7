//! The harness: plays cases in a child process under OS limits, so that a panic, an abort (an allocation that
//! fails), a stack overflow or a hang is caught and reported as the failing case; minimises failing cases with
//! proptest's shrinking, each candidate in a fresh child; writes what it found under `target/fuzz-findings/`.
//!
//! The child is this test binary run with `--child`. It caps its own address space ([`CHILD_ADDRESS_SPACE_BYTES`])
//! and, before each case, its CPU time ([`CASE_CPU_SECONDS`] more than it has used), then reads cases from stdin
//! and plays each on a thread with the stack a replica applies on ([`APPLY_STACK_BYTES`]). It writes one line per
//! step (`step N`, the parent's sign of life) and one verdict line per case (`passed <report>` or
//! `failed <failure>`, JSON). Cases travel as MessagePack frames (an 8-byte length, then `storage::codec`'s bytes):
//! serde_json refuses documents nested 128 deep, and a case holds values nested nearly that deep inside its own
//! structure. The parent kills a child that shows no sign of life for [`WATCHDOG`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::resource::{getrlimit, getrusage, setrlimit, Resource, UsageWho};
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

use baton::storage::codec;

use super::case::Case;
use super::driver::{self, Failure, Report, SandboxEvaluator};
use super::generator;

/// Address space a child may map: what a case may make the engine allocate before the allocation fails and the
/// child aborts (the heap bound, 512 MiB, is checked well before; this catches what grows past it in one go).
pub const CHILD_ADDRESS_SPACE_BYTES: u64 = 4 << 30;
/// CPU time one case may use in the child, seconds (the child is killed by SIGXCPU past it).
pub const CASE_CPU_SECONDS: u64 = 60;
/// The stack cases are played on: a tokio worker thread's (2 MiB), where openraft's state machine task applies.
pub const APPLY_STACK_BYTES: usize = 2 << 20;
/// How long a child may go without finishing a step before it is killed as hung. A runaway apply is stopped
/// sooner by the CPU limit; this catches a child that waits, and is long because a child at nice 19 beside a
/// build may get a few percent of a core.
pub const WATCHDOG: Duration = Duration::from_secs(600);
/// Failures of one family ([`family`]) a campaign minimises and records; later ones are only counted (a second
/// one may show a second cause with the same signature).
const MINIMISED_PER_FAMILY: usize = 2;
/// How often a campaign prints its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);
/// Bytes of a dead child's stderr kept for the report.
const STDERR_KEPT_BYTES: usize = 8192;

// ---------------------------------------------------------------------------------------------------------------
// The child

/// The child's main: plays the cases it is sent until stdin closes.
pub fn child_main() -> std::process::ExitCode {
    let (_, hard) = getrlimit(Resource::RLIMIT_AS).expect("getrlimit");
    // The soft limit only: the sandbox children it starts set their own (lower) limits.
    setrlimit(Resource::RLIMIT_AS, CHILD_ADDRESS_SPACE_BYTES.min(hard), hard).expect("setrlimit RLIMIT_AS");
    let last_panic: Arc<Mutex<Option<String>>> = Arc::default();
    let slot = Arc::clone(&last_panic);
    std::panic::set_hook(Box::new(move |info| {
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let backtrace = std::backtrace::Backtrace::force_capture();
        eprintln!("panic at {location}: {message}\n{backtrace}");
        *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(format!("{location}\t{message}"));
    }));
    let mut evaluator = SandboxEvaluator::new();
    let mut stdin = std::io::stdin().lock();
    while let Some(frame) = read_frame(&mut stdin) {
        limit_cpu_for_one_case();
        let verdict = match codec::decode::<Case>(&frame) {
            Ok(case) => play_on_apply_stack(&case, &mut evaluator, &last_panic),
            Err(e) => Err(Failure { signature: "harness:decode".into(), detail: format!("unreadable case: {e}") }),
        };
        let line = match verdict {
            Ok(report) => format!("passed {}", serde_json::to_string(&report).expect("a report serialises")),
            Err(failure) => format!("failed {}", serde_json::to_string(&failure).expect("a failure serialises")),
        };
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    std::process::ExitCode::SUCCESS
}

/// Plays a case on a thread with a replica's stack; a panic becomes a [`Failure`] naming where it happened.
fn play_on_apply_stack(
    case: &Case,
    evaluator: &mut SandboxEvaluator,
    last_panic: &Mutex<Option<String>>,
) -> Result<Report, Failure> {
    let joined = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("apply".into())
            .stack_size(APPLY_STACK_BYTES)
            .spawn_scoped(scope, || {
                let mut progress = |step: usize| {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "step {step}").and_then(|()| out.flush());
                };
                driver::play(case, evaluator, &mut progress)
            })
            .expect("the apply thread starts")
            .join()
    });
    joined.unwrap_or_else(|_| {
        let panic = last_panic.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take().unwrap_or_default();
        let (location, message) = panic.split_once('\t').unwrap_or(("unknown", panic.as_str()));
        Err(Failure { signature: format!("panic:{location}"), detail: format!("panicked at {location}: {message}") })
    })
}

/// Lets the next case use [`CASE_CPU_SECONDS`] more CPU time than the child has used so far.
fn limit_cpu_for_one_case() {
    let used = getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| u64::try_from(u.user_time().tv_sec() + u.system_time().tv_sec()).unwrap_or(0))
        .unwrap_or(0);
    let (_, hard) = getrlimit(Resource::RLIMIT_CPU).expect("getrlimit");
    let _ = setrlimit(Resource::RLIMIT_CPU, (used + CASE_CPU_SECONDS).min(hard), hard);
}

fn read_frame(input: &mut impl Read) -> Option<Vec<u8>> {
    let mut length = [0u8; 8];
    input.read_exact(&mut length).ok()?;
    let mut frame = vec![0u8; usize::try_from(u64::from_le_bytes(length)).ok()?];
    input.read_exact(&mut frame).ok()?;
    Some(frame)
}

// ---------------------------------------------------------------------------------------------------------------
// The parent

/// A child process playing cases.
pub struct Child {
    process: std::process::Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Child {
    /// Starts this binary as a child.
    pub fn spawn() -> Child {
        let mut process = Command::new(std::env::current_exe().expect("the test binary's path"))
            .arg("--child")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_BACKTRACE", "0")
            .spawn()
            .expect("a child starts");
        let stdin = process.stdin.take().expect("piped");
        let stdout = process.stdout.take().expect("piped");
        let mut stderr_pipe = process.stderr.take().expect("piped");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut kept = kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let room = STDERR_KEPT_BYTES.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        });
        Child { process, stdin, lines, stderr }
    }

    /// Plays one case. A child that died or hung is killed and reported as the case's failure; the caller must
    /// not use it again ([`Verdict::child_lost`]).
    pub fn play(&mut self, case: &Case) -> Verdict {
        let frame = codec::encode(case).expect("a case encodes");
        let sent = self
            .stdin
            .write_all(&(frame.len() as u64).to_le_bytes())
            .and_then(|()| self.stdin.write_all(&frame))
            .and_then(|()| self.stdin.flush());
        if sent.is_err() {
            return Verdict::Lost(self.death(0));
        }
        let mut step = 0;
        loop {
            match self.lines.recv_timeout(WATCHDOG) {
                Ok(line) => {
                    if let Some(n) = line.strip_prefix("step ") {
                        step = n.parse().unwrap_or(step);
                    } else if let Some(report) = line.strip_prefix("passed ") {
                        return Verdict::Passed(serde_json::from_str(report).expect("the child's report parses"));
                    } else if let Some(failure) = line.strip_prefix("failed ") {
                        return Verdict::Failed(serde_json::from_str(failure).expect("the child's failure parses"));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.process.kill();
                    let _ = self.process.wait();
                    return Verdict::Lost(Failure {
                        signature: "hang".into(),
                        detail: format!(
                            "step {step}: no progress for {} s; killed (a replica's apply would be stuck)",
                            WATCHDOG.as_secs()
                        ),
                    });
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Verdict::Lost(self.death(step)),
            }
        }
    }

    /// Why the child died, from its exit status and stderr.
    fn death(&mut self, step: usize) -> Failure {
        let status = self.process.wait();
        // The stderr reader ends with the child; give it a moment to copy the last bytes.
        std::thread::sleep(Duration::from_millis(50));
        let stderr = String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
            .into_owned();
        let signal = status.ok().and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s));
        let signal_name = signal
            .and_then(|s| nix::sys::signal::Signal::try_from(s).ok())
            .map_or_else(|| "exit".to_string(), |s| s.as_str().to_string());
        let signature = if stderr.contains("overflowed its stack") {
            "abort:stack-overflow".to_string()
        } else if stderr.contains("memory allocation of") {
            "abort:out-of-memory".to_string()
        } else {
            format!("crash:{signal_name}")
        };
        let first_lines: Vec<&str> = stderr.lines().take(12).collect();
        Failure {
            signature,
            detail: format!("step {step}: the child died ({signal_name}): {}", first_lines.join(" | ")),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// What became of a case.
pub enum Verdict {
    /// It kept every promise.
    Passed(Report),
    /// It broke one; the child is fine.
    Failed(Failure),
    /// It killed or hung the child, which is gone.
    Lost(Failure),
}

impl Verdict {
    /// The child cannot be used again.
    pub fn child_lost(&self) -> bool {
        matches!(self, Verdict::Lost(_))
    }
}

/// A minimised failing case.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    /// What broke, in the minimised case.
    pub failure: Failure,
    /// The generator's seed for the batch that found it.
    pub seed: u64,
    /// The minimised case.
    pub case: Case,
}

/// What a campaign did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Cases played (shrinking candidates not counted).
    pub cases: usize,
    /// Time spent.
    pub elapsed: Duration,
    /// What the played cases measured.
    pub report: Report,
    /// The findings, minimised: at most [`MINIMISED_PER_FAMILY`] per family of failures ([`family`]).
    pub findings: Vec<Finding>,
    /// Failures of a family already found often enough (counted, not minimised).
    pub repeats: usize,
    /// Failures of an open finding the campaign was told to tolerate (counted, not minimised).
    pub tolerated: usize,
}

/// How a campaign runs.
#[derive(Debug, Clone)]
pub struct Campaign {
    /// When to stop generating cases.
    pub budget: Duration,
    /// The first batch's seed; batch `n` uses `seed + n`.
    pub seed: u64,
    /// Cases per proptest batch.
    pub batch: u32,
    /// Time minimising one failure may take.
    pub shrink_time: Duration,
    /// Stop at the first finding (CI) instead of going on.
    pub stop_at_first: bool,
    /// How big the generated cases get.
    pub sizes: generator::Sizes,
    /// Signatures (or their prefixes) of open findings that do not fail the campaign (see [`OPEN_FINDINGS`]).
    pub tolerated: &'static [&'static str],
}

/// Signatures (or their prefixes) of findings whose fix is still open (tests/fuzz_findings.rs has each,
/// ignored). The short run that `cargo test` does tolerates them, so that it fails only on something new; a
/// campaign reports them unless told `--tolerate-open`. A fix removes its entry here.
pub const OPEN_FINDINGS: &[&str] = &[];

/// Whether a failure is one of the open findings a campaign tolerates.
fn tolerated_by(tolerated: &[&str], failure: &Failure) -> bool {
    tolerated.iter().any(|prefix| failure.signature.starts_with(prefix))
}

/// Runs a campaign: batches of generated cases in a long-lived child, each failure minimised in fresh children.
pub fn run(campaign: &Campaign) -> Summary {
    let started = Instant::now();
    let mut summary = Summary::default();
    let child: RefCell<Option<Child>> = RefCell::new(None);
    let last_progress = RefCell::new(Instant::now());
    let heaviest: RefCell<(usize, Option<Case>)> = RefCell::new((0, None));
    let mut batch_index = 0u64;
    while started.elapsed() < campaign.budget {
        let seed = campaign.seed.wrapping_add(batch_index);
        batch_index += 1;
        let config = Config {
            cases: campaign.batch,
            failure_persistence: None,
            max_shrink_iters: 2048,
            max_shrink_time: u32::try_from(campaign.shrink_time.as_millis()).unwrap_or(u32::MAX),
            ..Config::default()
        };
        let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes(seed)));
        // After the first failure, every call is a shrinking candidate: played in a fresh child, and kept only if
        // it fails the same way.
        let first: RefCell<Option<Failure>> = RefCell::new(None);
        let played = RefCell::new((0usize, Report::default()));
        let shrink_candidates = RefCell::new(0usize);
        let (summary_cases, findings_so_far) = (summary.cases, summary.findings.len());
        let mut found_per_family: BTreeMap<&str, usize> = BTreeMap::new();
        for finding in &summary.findings {
            *found_per_family.entry(family(&finding.failure)).or_insert(0) += 1;
        }
        let repeats = RefCell::new(0usize);
        let tolerated = RefCell::new(0usize);
        let outcome = runner.run(&generator::case(campaign.sizes), |case| {
            let shrinking = first.borrow().is_some();
            if !shrinking && started.elapsed() >= campaign.budget {
                return Ok(());
            }
            if !shrinking && last_progress.borrow().elapsed() >= PROGRESS_EVERY {
                *last_progress.borrow_mut() = Instant::now();
                let cases = summary_cases + played.borrow().0;
                let minutes = started.elapsed().as_secs_f64() / 60.0;
                eprintln!(
                    "fuzz: {cases} cases in {minutes:.1} min ({:.0} cases/min), {} findings",
                    cases as f64 / minutes,
                    findings_so_far
                );
            }
            let verdict = if shrinking {
                let mut candidates = shrink_candidates.borrow_mut();
                *candidates += 1;
                if candidates.is_multiple_of(25) {
                    eprintln!("fuzz: {} candidates tried, {} steps in this one", *candidates, case.steps.len());
                }
                Child::spawn().play(&case)
            } else {
                let mut slot = child.borrow_mut();
                let verdict = slot.get_or_insert_with(Child::spawn).play(&case);
                if verdict.child_lost() {
                    *slot = None;
                }
                verdict
            };
            let failure = match verdict {
                Verdict::Passed(report) => {
                    if !shrinking {
                        let mut heaviest = heaviest.borrow_mut();
                        if report.heaviest_apply_bytes.0 > heaviest.0 {
                            *heaviest = (report.heaviest_apply_bytes.0, Some(case.clone()));
                        }
                        let mut played = played.borrow_mut();
                        played.0 += 1;
                        played.1.absorb(&report);
                    }
                    return Ok(());
                }
                Verdict::Failed(failure) | Verdict::Lost(failure) => failure,
            };
            let mut first = first.borrow_mut();
            match first.as_ref() {
                Some(original) if original.signature != failure.signature => Ok(()),
                None if tolerated_by(campaign.tolerated, &failure) => {
                    played.borrow_mut().0 += 1;
                    *tolerated.borrow_mut() += 1;
                    Ok(())
                }
                None if found_per_family.get(family(&failure)).copied().unwrap_or(0) >= MINIMISED_PER_FAMILY => {
                    // Found and minimised enough already: counted, and the batch goes on.
                    played.borrow_mut().0 += 1;
                    *repeats.borrow_mut() += 1;
                    Ok(())
                }
                _ => {
                    if first.is_none() {
                        played.borrow_mut().0 += 1;
                        eprintln!("fuzz: found [{}]; minimising", failure.signature);
                    }
                    *first = Some(failure.clone());
                    Err(TestCaseError::fail(serde_json::to_string(&failure).expect("a failure serialises")))
                }
            }
        });
        summary.repeats += repeats.into_inner();
        summary.tolerated += tolerated.into_inner();
        let (cases, report) = played.into_inner();
        summary.cases += cases;
        summary.report.absorb(&report);
        match outcome {
            Ok(()) => {}
            Err(TestError::Fail(reason, case)) => {
                let failure: Failure = serde_json::from_str(reason.message()).expect("the failure parses back");
                let finding = Finding { failure, seed, case };
                record(&finding);
                summary.findings.push(finding);
                if campaign.stop_at_first {
                    break;
                }
            }
            Err(TestError::Abort(why)) => panic!("proptest aborted the batch: {why}"),
        }
    }
    summary.elapsed = started.elapsed();
    if let (bytes, Some(case)) = heaviest.into_inner() {
        // The passing case closest to the heap bound, for measuring what legitimate cases cost.
        let path = findings_dir().join("heaviest-passing-case.json");
        let json = serde_json::to_string(&serde_json::json!({"heapBytes": bytes, "case": case})).expect("serialises");
        if std::fs::create_dir_all(findings_dir()).and_then(|()| std::fs::write(&path, json)).is_ok() {
            eprintln!("fuzz: the passing case with the heaviest apply is in {}", path.display());
        }
    }
    summary
}

/// Failures that are likely one cause: a bound broken (by whichever command: an amplification shows in every
/// command that schedules the step amplifying), or else the exact signature (a panic's location, ...).
fn family(failure: &Failure) -> &str {
    let s = failure.signature.as_str();
    match s.strip_prefix("bound:") {
        Some(rest) => &s[..s.len() - rest.len() + rest.find(':').unwrap_or(rest.len())],
        None => s,
    }
}

fn seed_bytes(seed: u64) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(i as u64).to_le_bytes());
    }
    bytes
}

/// Prints a finding as JSON (cut when long) and writes it whole under `target/fuzz-findings/`.
fn record(finding: &Finding) {
    let json = serde_json::to_string_pretty(finding).expect("a finding serialises");
    let dir = findings_dir();
    let name: String = finding
        .failure
        .signature
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .collect();
    let path = dir.join(format!("{name}-{}.json", finding.seed));
    let written = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, &json));
    eprintln!("fuzz: FINDING {}", finding.failure);
    const SHOWN: usize = 16 * 1024;
    if json.len() <= SHOWN {
        eprintln!("{json}");
    } else {
        let mut end = SHOWN;
        while !json.is_char_boundary(end) {
            end -= 1;
        }
        eprintln!("{}\n... ({} bytes in all)", &json[..end], json.len());
    }
    match written {
        Ok(()) => eprintln!("fuzz: written to {}", path.display()),
        Err(e) => eprintln!("fuzz: could not write {}: {e}", path.display()),
    }
}

/// `target/fuzz-findings/`.
pub fn findings_dir() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().map_or_else(|| tmp.clone(), PathBuf::from).join("fuzz-findings")
}
