//! The sandbox: user code (INLINE, JSON_JQ_TRANSFORM, SWITCH/DECISION JavaScript, DO_WHILE conditions) evaluated
//! in child processes of this binary with OS-enforced limits, on the leader only, outside apply
//! (docs/adr/0010-total-apply.md).
//!
//! Owns: a small pool of `baton sandbox` children ([`child`]), the line protocol to them (one JSON request, one JSON
//! outcome), the wall-clock kill, the cap on the bytes read back, and turning a child's death into an
//! [`EvalOutcome::Failed`] that names the limit. Must not touch: the replicated state (the leader's evaluator in
//! [`runtime`](crate::runtime) proposes what this returns).

pub mod child;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{Mutex, Semaphore};

use crate::engine::evaluation::{EvalOutcome, EvalRequest};

/// How much one evaluation may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Memory the code may allocate in the child, bytes (the child's address space is capped at what it holds at
    /// start plus this).
    pub memory_bytes: u64,
    /// Wall-clock time for one evaluation; the child is killed past it.
    pub wall_time: Duration,
    /// Largest answer read back, bytes; a larger result fails the task.
    pub max_result_bytes: usize,
    /// Children evaluating at once.
    pub workers: usize,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            memory_bytes: 256 << 20,
            wall_time: Duration::from_secs(2),
            max_result_bytes: 4 << 20,
            workers: 2,
        }
    }
}

/// The node could not run an evaluation at all (no child could be started). Says nothing about the code: never
/// committed as a task's outcome; the evaluator tries again later.
#[derive(Debug, thiserror::Error)]
#[error("the sandbox is unavailable: {0}")]
pub struct Unavailable(pub String);

/// A pool of sandbox children.
#[derive(Debug)]
pub struct Sandbox {
    limits: SandboxLimits,
    /// The `baton` binary the children run.
    program: std::path::PathBuf,
    slots: Semaphore,
    idle: Mutex<Vec<Worker>>,
}

/// One running child.
#[derive(Debug)]
struct Worker {
    process: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// What the child wrote to stderr (the first few KiB: the cause comes first), read when it dies.
    stderr: Arc<std::sync::Mutex<Vec<u8>>>,
    /// The task copying stderr, done once the child has closed it.
    stderr_done: tokio::task::JoinHandle<()>,
}

/// Bytes of a child's stderr kept.
const STDERR_KEPT_BYTES: usize = 4096;

impl Sandbox {
    /// A pool with these limits whose children run this process's own binary; they start on first use.
    pub fn new(limits: SandboxLimits) -> Result<Self, Unavailable> {
        let program = std::env::current_exe().map_err(|e| Unavailable(format!("own binary: {e}")))?;
        Ok(Self::with_program(limits, program))
    }

    /// A pool whose children run `program` (a `baton` binary), for tools and benchmarks that are not `baton`.
    pub fn with_program(limits: SandboxLimits, program: std::path::PathBuf) -> Self {
        let workers = limits.workers.max(1);
        Sandbox { limits, program, slots: Semaphore::new(workers), idle: Mutex::new(Vec::new()) }
    }

    /// The limits.
    pub fn limits(&self) -> &SandboxLimits {
        &self.limits
    }

    /// Evaluates one request in a child. A limit breached, a crash or an unreadable answer is a
    /// [`EvalOutcome::Failed`] naming what happened; only a child that cannot be started is `Err`.
    pub async fn evaluate(&self, request: &EvalRequest) -> Result<EvalOutcome, Unavailable> {
        let _slot = self.slots.acquire().await.map_err(|e| Unavailable(e.to_string()))?;
        let line = serde_json::to_string(request).map_err(|e| Unavailable(format!("request: {e}")))?;
        let mut worker = match self.idle.lock().await.pop() {
            Some(w) => w,
            None => self.spawn()?,
        };
        let exchange = async {
            worker.stdin.write_all(line.as_bytes()).await?;
            worker.stdin.write_all(b"\n").await?;
            worker.stdin.flush().await?;
            read_line_capped(&mut worker.stdout, self.limits.max_result_bytes).await
        };
        let answer = tokio::time::timeout(self.limits.wall_time, exchange).await;
        let outcome = match answer {
            Ok(Ok(Read::Line(text))) => match serde_json::from_str::<EvalOutcome>(&text) {
                Ok(outcome) => {
                    self.idle.lock().await.push(worker);
                    return Ok(outcome);
                }
                // serde_json stops at 128 levels: a deeper answer is refused here, never converted recursively.
                Err(e) => failed(format!("the result could not be read back: {e}")),
            },
            Ok(Ok(Read::TooLong)) => {
                failed(format!("the result is larger than the limit of {} bytes", self.limits.max_result_bytes))
            }
            Ok(Ok(Read::Closed)) | Ok(Err(_)) => self.died(&mut worker).await,
            Err(_) => failed(format!(
                "the code ran longer than the limit of {} ms and was stopped",
                self.limits.wall_time.as_millis()
            )),
        };
        // A child that timed out, died or wrote too much is not reused.
        let _ = worker.process.start_kill();
        let _ = worker.process.wait().await;
        Ok(outcome)
    }

    fn spawn(&self) -> Result<Worker, Unavailable> {
        let mut process = Command::new(&self.program)
            .arg("sandbox")
            .arg("--memory-bytes")
            .arg(self.limits.memory_bytes.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // The cause of a death is the first line the child writes; a backtrace would only bury it.
            .env("RUST_BACKTRACE", "0")
            .env("RUST_LIB_BACKTRACE", "0")
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Unavailable(format!("start a sandbox child: {e}")))?;
        let stdin = process.stdin.take().ok_or_else(|| Unavailable("child stdin".into()))?;
        let stdout = process.stdout.take().ok_or_else(|| Unavailable("child stdout".into()))?;
        let mut stderr = process.stderr.take().ok_or_else(|| Unavailable("child stderr".into()))?;
        let kept = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&kept);
        let stderr_done = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut kept = sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let room = STDERR_KEPT_BYTES.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        });
        Ok(Worker { process, stdin, stdout: BufReader::new(stdout), stderr: kept, stderr_done })
    }

    /// Why a child died, as the task's failure.
    async fn died(&self, worker: &mut Worker) -> EvalOutcome {
        let status = tokio::time::timeout(Duration::from_secs(1), worker.process.wait()).await;
        // A dead child has closed its stderr: the copy ends with its last bytes.
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut worker.stderr_done).await;
        let stderr = {
            let kept = worker.stderr.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            String::from_utf8_lossy(&kept).into_owned()
        };
        let memory = self.limits.memory_bytes >> 20;
        let why = if stderr.contains("memory allocation of") || stderr.contains("out of memory") {
            format!("the code exceeded the memory limit of {memory} MiB and was stopped")
        } else if stderr.contains("overflowed its stack") {
            "the code overflowed its stack and was stopped".to_string()
        } else {
            let status = match status {
                Ok(Ok(s)) => s.to_string(),
                _ => "no exit status".to_string(),
            };
            let first = stderr.lines().next().unwrap_or_default().to_string();
            format!("the sandbox process died ({status}) {first}").trim_end().to_string()
        };
        failed(why)
    }
}

fn failed(message: String) -> EvalOutcome {
    EvalOutcome::Failed { message, terminal: false }
}

enum Read {
    Line(String),
    TooLong,
    Closed,
}

/// One line of at most `cap` bytes; what is longer is not kept whole.
async fn read_line_capped(reader: &mut BufReader<ChildStdout>, cap: usize) -> std::io::Result<Read> {
    let mut line = Vec::new();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(Read::Closed);
        }
        match available.iter().position(|b| *b == b'\n') {
            Some(end) => {
                line.extend_from_slice(&available[..end]);
                reader.consume(end + 1);
                if line.len() > cap {
                    return Ok(Read::TooLong);
                }
                return Ok(Read::Line(String::from_utf8_lossy(&line).into_owned()));
            }
            None => {
                let n = available.len();
                line.extend_from_slice(available);
                reader.consume(n);
                if line.len() > cap {
                    return Ok(Read::TooLong);
                }
            }
        }
    }
}
