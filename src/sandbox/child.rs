//! The sandbox child: `baton sandbox`, a process of the same binary that evaluates user code and nothing else.
//!
//! It caps its own address space and CPU time first (`setrlimit`, inherited by nothing, undone by nothing), then
//! reads one JSON request a line on stdin and answers one JSON outcome a line on stdout, until stdin closes. When
//! the code breaks a limit the OS enforces, the process dies (an allocation that fails aborts, a stack overflow
//! aborts, the CPU limit kills it); the parent sees the death, reports it as the task's failure, and starts another
//! child. Nothing it does can reach a replica's state: its only output is the line the parent reads.

use std::io::{BufRead, Write};

use nix::sys::resource::{setrlimit, Resource};

use crate::engine::evaluation::{evaluate, EvalRequest};

/// Runs the child until stdin closes. `memory_bytes` caps the address space the code may add to what the child
/// holds at start (its own code and the jq thread's reserved stack are counted on top); `cpu_seconds` caps the
/// child's whole CPU time, a backstop under the parent's per-evaluation wall-clock kill.
pub fn serve(memory_bytes: u64, cpu_seconds: u64) -> std::io::Result<()> {
    let baseline = current_address_space().unwrap_or(256 << 20);
    let limit = baseline.saturating_add(crate::engine::jq::WORKER_STACK_BYTES as u64).saturating_add(memory_bytes);
    setrlimit(Resource::RLIMIT_AS, limit, limit).map_err(std::io::Error::from)?;
    setrlimit(Resource::RLIMIT_CPU, cpu_seconds, cpu_seconds.saturating_add(1)).map_err(std::io::Error::from)?;
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line?;
        let answer = match serde_json::from_str::<EvalRequest>(&line) {
            Ok(request) => serde_json::to_string(&evaluate(&request)),
            Err(e) => serde_json::to_string(&crate::engine::evaluation::EvalOutcome::Failed {
                message: format!("sandbox: unreadable request: {e}"),
                terminal: false,
            }),
        }
        .map_err(std::io::Error::other)?;
        stdout.write_all(answer.as_bytes())?;
        stdout.write_all(b"\n")?;
        stdout.flush()?;
    }
    Ok(())
}

/// This process's virtual memory size (`VmSize` in /proc/self/status), bytes.
fn current_address_space() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmSize:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
