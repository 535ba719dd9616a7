//! The client commands of `baton`: `def put`, `workflow start|get|list|terminate|pause|resume|retry|restart`,
//! `worker exec`. Each talks gRPC to any node of `--addr` (moving on when one is down). Tables for people, `--json`
//! for scripts; exit code 0 on success, 1 when the cluster refused or failed, 2 for bad arguments or files.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use comfy_table::{presets, Table};
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::client::worker::{Job, Outcome, Worker};
use crate::client::{Client, ClientError, Operation};
use crate::pb::v1 as pb;

/// Exit code for a refusal or failure reported by the cluster.
pub const EXIT_FAILED: u8 = 1;
/// Exit code for bad arguments or unreadable files.
pub const EXIT_USAGE: u8 = 2;

fn fail(e: impl std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("baton: {e}");
    ExitCode::from(code)
}

fn client(addrs: &[String]) -> Result<Client, ExitCode> {
    Client::new(addrs.iter().cloned()).map_err(|e| fail(e, EXIT_USAGE))
}

/// `baton def put FILE...`: each file holds a workflow definition, a task definition, or a JSON list of either.
pub async fn def_put(addrs: &[String], files: &[PathBuf]) -> ExitCode {
    let client = match client(addrs) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (mut tasks, mut workflows) = (Vec::new(), Vec::new());
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => return fail(format!("{}: {e}", file.display()), EXIT_USAGE),
        };
        let doc: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => return fail(format!("{}: not JSON: {e}", file.display()), EXIT_USAGE),
        };
        let items = match doc {
            Value::Array(items) => items,
            one => vec![one],
        };
        for item in items {
            if item.get("tasks").is_some() {
                workflows.push(item.to_string());
            } else {
                tasks.push(item.to_string());
            }
        }
    }
    if !tasks.is_empty() {
        let n = tasks.len();
        if let Err(e) = client.put_task_defs(tasks).await {
            return fail(e, EXIT_FAILED);
        }
        println!("registered {n} task definition(s)");
    }
    if !workflows.is_empty() {
        let n = workflows.len();
        if let Err(e) = client.put_workflow_defs(workflows).await {
            return fail(e, EXIT_FAILED);
        }
        println!("registered {n} workflow definition(s)");
    }
    ExitCode::SUCCESS
}

/// Options of `baton workflow start`.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Definition name.
    pub name: String,
    /// Version (latest when None).
    pub version: Option<u32>,
    /// Input JSON object.
    pub input: Option<String>,
    /// Correlation id.
    pub correlation_id: Option<String>,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Wait for a terminal status.
    pub wait: bool,
    /// Longest wait, seconds.
    pub timeout_s: u64,
    /// Print JSON.
    pub json: bool,
}

fn terminal(status: &str) -> bool {
    matches!(status, "COMPLETED" | "FAILED" | "TIMED_OUT" | "TERMINATED")
}

/// `baton workflow start`.
pub async fn workflow_start(addrs: &[String], o: StartOptions) -> ExitCode {
    let client = match client(addrs) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(input) = &o.input {
        if !matches!(serde_json::from_str::<Value>(input), Ok(Value::Object(_))) {
            return fail("--input: expected a JSON object", EXIT_USAGE);
        }
    }
    let req = pb::StartWorkflowRequest {
        name: o.name.clone(),
        version: o.version.unwrap_or(0),
        input_json: o.input.clone().unwrap_or_default(),
        correlation_id: o.correlation_id.clone().unwrap_or_default(),
        idempotency_key: o.idempotency_key.clone().unwrap_or_default(),
        ..Default::default()
    };
    let id = match client.start_workflow(req).await {
        Ok(id) => id,
        Err(e) => return fail(e, EXIT_FAILED),
    };
    if !o.wait {
        if o.json {
            return print_workflow(&client, &id, true).await;
        }
        println!("{id}");
        return ExitCode::SUCCESS;
    }
    let deadline = Instant::now() + Duration::from_secs(o.timeout_s.max(1));
    loop {
        let wf = match client.get_workflow(&id).await {
            Ok(wf) => wf,
            Err(e) => return fail(e, EXIT_FAILED),
        };
        let status = wf["status"].as_str().unwrap_or_default().to_string();
        let done = wf["tasks"].as_array().map_or(0, |t| t.iter().filter(|t| t["status"] == "COMPLETED").count());
        // A progress line for people watching a terminal; scripts reading stderr get only the outcome.
        if !o.json && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprint!("\r{id} {status} ({done} tasks completed)   ");
        }
        let progress = !o.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
        if terminal(&status) {
            if progress {
                eprintln!();
            }
            let code = print_workflow(&client, &id, o.json).await;
            return if status == "COMPLETED" { code } else { ExitCode::from(EXIT_FAILED) };
        }
        if Instant::now() >= deadline {
            if progress {
                eprintln!();
            }
            return fail(format!("workflow {id} still {status} after {} s", o.timeout_s), EXIT_FAILED);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn print_workflow(client: &Client, id: &str, json: bool) -> ExitCode {
    let wf = match client.get_workflow(id).await {
        Ok(wf) => wf,
        Err(e) => return fail(e, EXIT_FAILED),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&wf).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    println!(
        "{} {} v{} {}",
        wf["workflowId"].as_str().unwrap_or_default(),
        wf["workflowName"].as_str().unwrap_or_default(),
        wf["workflowVersion"],
        wf["status"].as_str().unwrap_or_default()
    );
    if let Some(reason) = wf["reasonForIncompletion"].as_str() {
        println!("reason: {reason}");
    }
    let mut table = Table::new();
    table.load_preset(presets::UTF8_BORDERS_ONLY);
    table.set_header(["seq", "reference", "type", "status", "retry", "worker"]);
    for t in wf["tasks"].as_array().cloned().unwrap_or_default() {
        table.add_row([
            t["seq"].to_string(),
            t["referenceTaskName"].as_str().unwrap_or_default().to_string(),
            t["taskType"].as_str().unwrap_or_default().to_string(),
            t["status"].as_str().unwrap_or_default().to_string(),
            t["retryCount"].to_string(),
            t["workerId"].as_str().unwrap_or_default().to_string(),
        ]);
    }
    println!("{table}");
    println!("output: {}", wf["output"]);
    ExitCode::SUCCESS
}

/// `baton workflow get ID`.
pub async fn workflow_get(addrs: &[String], id: &str, json: bool) -> ExitCode {
    match client(addrs) {
        Ok(c) => print_workflow(&c, id, json).await,
        Err(code) => code,
    }
}

/// `baton workflow list`.
pub async fn workflow_list(addrs: &[String], status: Option<String>, name: Option<String>, json: bool) -> ExitCode {
    let client = match client(addrs) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let req = pb::ListWorkflowsRequest {
        status: status.unwrap_or_default(),
        name: name.unwrap_or_default(),
        limit: 100,
        ..Default::default()
    };
    let list = match client.list_workflows(req).await {
        Ok(l) => l,
        Err(e) => return fail(e, EXIT_FAILED),
    };
    if json {
        let rows: Vec<Value> = list
            .iter()
            .map(|w| {
                serde_json::json!({"workflowId": w.workflow_id, "workflowName": w.name, "workflowVersion": w.version,
                    "status": w.status, "startTime": w.start_time, "endTime": w.end_time, "correlationId": w.correlation_id})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    let mut table = Table::new();
    table.load_preset(presets::UTF8_BORDERS_ONLY);
    table.set_header(["workflow id", "name", "version", "status", "correlation id"]);
    for w in list {
        table.add_row([w.workflow_id, w.name, w.version.to_string(), w.status, w.correlation_id]);
    }
    println!("{table}");
    ExitCode::SUCCESS
}

/// `baton workflow terminate|pause|resume|retry|restart ID`.
pub async fn workflow_operate(
    addrs: &[String],
    op: Operation,
    id: &str,
    reason: Option<String>,
    latest: bool,
) -> ExitCode {
    let client = match client(addrs) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let req = pb::WorkflowOperation {
        workflow_id: id.to_string(),
        reason: reason.unwrap_or_default(),
        use_latest_definition: latest,
    };
    match client.operate(op, req).await {
        Ok(()) => {
            println!("{id}: {op:?} done");
            ExitCode::SUCCESS
        }
        Err(ClientError::Status(s)) if s.code() == tonic::Code::NotFound => fail(s.message(), EXIT_FAILED),
        Err(e) => fail(e, EXIT_FAILED),
    }
}

/// `baton worker exec --task TYPE [--concurrency N] -- CMD ARGS...`: runs CMD per task, input JSON on stdin, output
/// JSON from stdout; a non-zero exit fails the task with the end of stderr as the reason. Runs until Ctrl-C.
pub async fn worker_exec(addrs: &[String], task_type: String, concurrency: usize, command: Vec<String>) -> ExitCode {
    let Some((program, args)) = command.split_first() else {
        return fail("worker exec: give the command after --", EXIT_USAGE);
    };
    let client = match client(addrs) {
        Ok(c) => Arc::new(c),
        Err(code) => return code,
    };
    let (program, args) = (program.clone(), args.to_vec());
    let worker_id = format!("exec-{}-{}", hostname(), std::process::id());
    let worker = Worker::new(client, worker_id, concurrency).handle(task_type.clone(), move |job: Job| {
        let (program, args) = (program.clone(), args.clone());
        async move { exec_one(&program, &args, job).await }
    });
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    eprintln!("baton worker exec: serving {task_type} (Ctrl-C stops after in-flight tasks)");
    worker.run(shutdown).await;
    ExitCode::SUCCESS
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "host".into())
}

async fn exec_one(program: &str, args: &[String], job: Job) -> Outcome {
    let child = tokio::process::Command::new(program)
        .args(args)
        .env("BATON_TASK_ID", &job.task.task_id)
        .env("BATON_WORKFLOW_ID", &job.task.workflow_id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("cannot run {program}: {e}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(Value::Object(job.input).to_string().as_bytes()).await;
    }
    let out = match child.wait_with_output().await {
        Ok(o) => o,
        Err(e) => return Outcome::Failed(format!("{program}: {e}")),
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String = stderr.chars().rev().take(500).collect::<Vec<_>>().into_iter().rev().collect();
        return Outcome::Failed(format!("{program} exited with {}: {}", out.status, tail.trim()));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    match serde_json::from_str::<Value>(stdout.trim()) {
        Ok(Value::Object(map)) => Outcome::Completed(map),
        Ok(other) => {
            let mut m = Map::new();
            m.insert("result".into(), other);
            Outcome::Completed(m)
        }
        Err(_) if stdout.trim().is_empty() => Outcome::Completed(Map::new()),
        Err(e) => Outcome::Failed(format!("{program}: stdout is not JSON: {e}")),
    }
}
