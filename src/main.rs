//! The `baton` command: `server` runs one node; `up` runs a local three-node cluster; `cluster status` shows
//! every member; `chaos` runs a local cluster under load and faults and checks its guarantees.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use baton::chaos::faults::FaultKind;

/// mimalloc instead of glibc's malloc: allocation-heavy paths (decoding and cloning workflow records) spent a fifth
/// of their CPU in malloc and free (docs/perf.md, change 8).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use baton::chaos::ChaosOptions;
use baton::config::{Config, ConfigError, Overrides};

#[derive(Parser)]
#[command(name = "baton", version, about = "A highly available workflow orchestrator")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Evaluate user code for a node's sandbox: one JSON request a line on stdin, one outcome a line on stdout.
    /// Started by the node itself; not for people.
    #[command(hide = true)]
    Sandbox {
        /// Memory the code may allocate, bytes.
        #[arg(long, default_value_t = 256 << 20)]
        memory_bytes: u64,
        /// CPU time for the child's whole life, seconds (a backstop under the node's wall-clock kill).
        #[arg(long, default_value_t = 3600)]
        cpu_seconds: u64,
    },
    /// Run one node. Exit code 0: stopped by SIGINT or SIGTERM; 2: bad configuration; 3: Raft stopped on a fatal
    /// error (a storage error such as a full disk); 1: any other failure.
    Server {
        /// The node's config file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Overrides the config's data_dir.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run the local three-node cluster (config/node1.toml .. node3.toml) until Ctrl-C.
    Up {
        /// Parent directory of the nodes' data dirs.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// Directory holding node1.toml, node2.toml, node3.toml.
        #[arg(long, default_value = "config")]
        config_dir: PathBuf,
    },
    /// Run a local three-node cluster under load while injecting faults, then check that nothing acknowledged
    /// was lost, nothing applied twice, and the replicas agree. Exit code 0: no violation; 1: violations; 2: bad
    /// arguments or set-up failure.
    Chaos {
        /// How long load and faults go on (e.g. 90s, 10m); draining and checks come after.
        #[arg(long, default_value = "10m", value_parser = baton::chaos::parse_duration)]
        duration: Duration,
        /// Pause between one fault's recovery and the next fault (e.g. 5s, 500ms).
        #[arg(long, default_value = "5s", value_parser = baton::chaos::parse_duration)]
        fault_interval: Duration,
        /// The fault kinds, injected in turn.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "kill-leader,kill-follower,pause-leader,double-kill,restart-all,wipe-follower,kill-worker"
        )]
        faults: Vec<FaultKind>,
        /// Workflow starts per second.
        #[arg(long, default_value_t = 20.0, value_parser = positive_rate)]
        rate: f64,
        /// The JSON report's path (default: chaos-report.json in the run's directory).
        #[arg(long)]
        report: Option<PathBuf>,
        /// Keep the nodes' data dirs and logs after a clean run (they are always kept after violations).
        #[arg(long)]
        keep_dir: bool,
        /// Where the nodes run: `loopback` (ports on 127.0.0.1), or `netns` (each node in its own network
        /// namespace on a bridge; needs root, iproute2 and iptables; the partition-leader fault needs it).
        #[arg(long, default_value = "loopback", value_parser = ["loopback", "netns"])]
        network: String,
    },
    /// Measure throughput and latency: replicated writes (raft), workflows with workers (workflow), leader kills
    /// under load (failover). Starts its own local three-node cluster unless given --addr; prints a table, or one
    /// JSON object with --json.
    Bench {
        /// gRPC addresses of a running cluster's nodes, comma-separated (default: start a local cluster).
        #[arg(long = "addr", global = true, value_delimiter = ',')]
        addrs: Vec<String>,
        /// Print one JSON object instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: BenchCmd,
    },
    /// Cluster-wide commands.
    Cluster {
        #[command(subcommand)]
        command: ClusterCmd,
    },
    /// Definitions.
    Def {
        #[command(flatten)]
        nodes: Nodes,
        #[command(subcommand)]
        command: DefCmd,
    },
    /// Workflows.
    Workflow {
        #[command(flatten)]
        nodes: Nodes,
        #[command(subcommand)]
        command: WorkflowCmd,
    },
    /// Workers.
    Worker {
        #[command(flatten)]
        nodes: Nodes,
        #[command(subcommand)]
        command: WorkerCmd,
    },
}

/// The nodes a client command talks to.
#[derive(clap::Args)]
struct Nodes {
    /// gRPC addresses of any nodes, comma-separated; the next is tried when one is down.
    #[arg(
        long = "addr",
        global = true,
        env = "BATON_ADDR",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    )]
    addrs: Vec<String>,
}

#[derive(Subcommand)]
enum DefCmd {
    /// Register definitions: each file holds a workflow definition, a task definition, or a JSON list of either.
    Put {
        /// The files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum WorkflowCmd {
    /// Start a workflow; prints its id (or, with --json, the workflow).
    Start {
        /// The definition's name.
        name: String,
        #[arg(long)]
        version: Option<u32>,
        /// The input, a JSON object.
        #[arg(long)]
        input: Option<String>,
        #[arg(long)]
        correlation_id: Option<String>,
        /// Retrying with the same key answers the same workflow.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Wait until the workflow ends, showing progress.
        #[arg(long)]
        wait: bool,
        /// Longest wait, seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        #[arg(long)]
        json: bool,
    },
    /// Show a workflow and its tasks.
    Get {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// List workflows, newest first.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Terminate a workflow.
    Terminate {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Pause a workflow.
    Pause { id: String },
    /// Resume a paused workflow.
    Resume { id: String },
    /// Retry a failed workflow from its failed tasks.
    Retry { id: String },
    /// Restart a finished workflow.
    Restart {
        id: String,
        /// Use the latest version of the definition.
        #[arg(long)]
        latest: bool,
    },
}

#[derive(Subcommand)]
enum WorkerCmd {
    /// Run CMD for each task of a type: the task's input JSON on stdin, its stdout as the output JSON.
    Exec {
        /// The task type to serve.
        #[arg(long = "task")]
        task_type: String,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// The command and its arguments (after --).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Replicated writes per second through the full write path (fsynced on a majority, applied), with latency.
    Raft {
        /// Concurrent callers, each with one write outstanding.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Writes in all.
        #[arg(long, default_value_t = 20000)]
        total: usize,
        /// Value size, bytes.
        #[arg(long, default_value_t = 256)]
        size: usize,
        /// 0: a fresh key per write; K: keys cycle over K.
        #[arg(long, default_value_t = 0)]
        keyspace: usize,
        /// Where the writes go.
        #[arg(long, value_enum, default_value_t = baton::bench::raft::Destination::Leader)]
        target: baton::bench::raft::Destination,
    },
    /// A three-task sequential workflow with workers over gRPC: the highest sustained rate, then latencies at half.
    Workflow {
        /// Each measurement window (e.g. 10s).
        #[arg(long, default_value = "10s", value_parser = baton::chaos::parse_duration)]
        duration: Duration,
        /// Workers, each polling the three task types.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Workflows in flight while finding the highest rate.
        #[arg(long, default_value_t = 256)]
        in_flight: usize,
        /// Only measure at this many starts per second.
        #[arg(long, value_parser = positive_rate)]
        rate: Option<f64>,
    },
    /// Leader SIGKILLs under half of the highest load: kill to the first task dispatched by the new leader.
    Failover {
        /// Leader kills.
        #[arg(long, default_value_t = 10)]
        kills: usize,
        /// Workers.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Starts per second (default: half of the highest rate, measured first).
        #[arg(long, value_parser = positive_rate)]
        rate: Option<f64>,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Every member's role, term, leader, last log index, commit and apply index.
    Status {
        /// gRPC address of any node (repeatable); defaults to the local cluster's.
        #[arg(long = "addr", default_values = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"])]
        addrs: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Have every node recompute its state hash from a full scan of its state (slow on a large state); fails
        /// unless every node answers and agrees with its own running hash.
        #[arg(long)]
        verify: bool,
    },
}

/// A workflow start rate: a positive number of starts per second.
fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(rate),
        _ => Err(format!("'{text}' is not a positive number of starts per second")),
    }
}

/// `baton chaos`: 0 without violations, 1 with, 2 when the cluster could not be set up, 130 on Ctrl-C or SIGTERM
/// (the nodes are killed either way: dropping the run kills them).
async fn chaos(options: ChaosOptions) -> ExitCode {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        eprintln!("baton chaos: cannot install the SIGTERM handler");
        return ExitCode::from(2);
    };
    tokio::select! {
        result = baton::chaos::run(&options) => match result {
            Ok(report) if report.violations.is_empty() => ExitCode::SUCCESS,
            Ok(_) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("baton chaos: {e:#}");
                ExitCode::from(2)
            }
        },
        _ = tokio::signal::ctrl_c() => {
            eprintln!("baton chaos: interrupted; killing the cluster's nodes");
            ExitCode::from(130)
        }
        _ = term.recv() => {
            eprintln!("baton chaos: terminated; killing the cluster's nodes");
            ExitCode::from(130)
        }
    }
}

/// `baton bench`: 0 when the run finished, 1 when it failed (the cluster it started is killed either way).
async fn bench(addrs: Vec<String>, json: bool, command: BenchCmd) -> ExitCode {
    use baton::bench::{self, failover, raft, workflow};
    let run = async {
        let mut target = bench::Target::open(addrs).await?;
        match command {
            BenchCmd::Raft { clients, total, size, keyspace, target: destination } => {
                raft::run(&target, &raft::RaftOptions { clients, total, size, keyspace, destination }).await
            }
            BenchCmd::Workflow { duration, workers, in_flight, rate } => {
                workflow::run(&target, &workflow::WorkflowOptions { duration, workers, in_flight, rate }).await
            }
            BenchCmd::Failover { kills, workers, rate } => {
                failover::run(&mut target, &failover::FailoverOptions { kills, workers, rate }).await
            }
        }
    };
    let result = tokio::select! {
        result = run => result,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("baton bench: interrupted; killing the cluster's nodes");
            return ExitCode::from(130);
        }
    };
    match result {
        Ok(figures) if json => {
            println!("{}", figures.to_json());
            ExitCode::SUCCESS
        }
        Ok(figures) => {
            println!("{}", figures.to_table());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("baton bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = EnvFilter::try_from_env("BATON_LOG").unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
}

/// Cancels `token` on SIGINT or SIGTERM.
fn cancel_on_signal(token: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        token.cancel();
    });
    Ok(())
}

/// `baton server`: 0 after a shutdown on SIGINT or SIGTERM; 2 on a bad configuration; 3
/// ([`baton::node::RAFT_FAILED_EXIT_CODE`]) when the node's Raft core stopped on a fatal error (a storage error such as
/// a full disk); 1 on any other failure.
async fn server(config: PathBuf, data_dir: Option<PathBuf>) -> ExitCode {
    let config = match Config::load(Some(&config), std::env::vars(), &Overrides { data_dir }) {
        Ok(config) => config,
        Err(e @ ConfigError::Invalid { .. }) => {
            eprintln!("baton: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("baton: {e}: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default());
            return ExitCode::from(2);
        }
    };
    init_logging();
    let shutdown = CancellationToken::new();
    if let Err(e) = cancel_on_signal(shutdown.clone()) {
        eprintln!("baton: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    match baton::node::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "node failed");
            eprintln!("baton: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn workflow(addrs: &[String], command: WorkflowCmd) -> ExitCode {
    use baton::cli::commands as c;
    use baton::client::Operation;
    match command {
        WorkflowCmd::Start { name, version, input, correlation_id, idempotency_key, wait, timeout, json } => {
            let o = c::StartOptions {
                name,
                version,
                input,
                correlation_id,
                idempotency_key,
                wait,
                timeout_s: timeout,
                json,
            };
            c::workflow_start(addrs, o).await
        }
        WorkflowCmd::Get { id, json } => c::workflow_get(addrs, &id, json).await,
        WorkflowCmd::List { status, name, json } => c::workflow_list(addrs, status, name, json).await,
        WorkflowCmd::Terminate { id, reason } => {
            c::workflow_operate(addrs, Operation::Terminate, &id, reason, false).await
        }
        WorkflowCmd::Pause { id } => c::workflow_operate(addrs, Operation::Pause, &id, None, false).await,
        WorkflowCmd::Resume { id } => c::workflow_operate(addrs, Operation::Resume, &id, None, false).await,
        WorkflowCmd::Retry { id } => c::workflow_operate(addrs, Operation::Retry, &id, None, false).await,
        WorkflowCmd::Restart { id, latest } => c::workflow_operate(addrs, Operation::Restart, &id, None, latest).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The sandbox child evaluates user code on one thread; it starts no async runtime (fewer threads, a smaller
    // address space under its limit).
    if let Cmd::Sandbox { memory_bytes, cpu_seconds } = cli.command {
        return match baton::sandbox::child::serve(memory_bytes, cpu_seconds) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("baton sandbox: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => {
            eprintln!("baton: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Cmd::Sandbox { .. } => unreachable!("handled in main before the runtime starts"),
        Cmd::Server { config, data_dir } => server(config, data_dir).await,
        Cmd::Up { data_dir, config_dir } => {
            let configs = (1..=3).map(|n| config_dir.join(format!("node{n}.toml"))).collect();
            match baton::cli::up::run(baton::cli::up::UpOptions { configs, data_dir }).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("baton up: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Chaos { duration, fault_interval, faults, rate, report, keep_dir, network } => {
            let namespaces = network == "netns";
            chaos(ChaosOptions { duration, fault_interval, faults, rate, report, keep_dir, namespaces }).await
        }
        Cmd::Bench { addrs, json, command } => bench(addrs, json, command).await,
        Cmd::Def { nodes, command: DefCmd::Put { files } } => baton::cli::commands::def_put(&nodes.addrs, &files).await,
        Cmd::Workflow { nodes, command } => workflow(&nodes.addrs, command).await,
        Cmd::Worker { nodes, command: WorkerCmd::Exec { task_type, concurrency, command } } => {
            init_logging();
            baton::cli::commands::worker_exec(&nodes.addrs, task_type, concurrency, command).await
        }
        Cmd::Cluster { command: ClusterCmd::Status { addrs, json, verify } } => {
            let replies = baton::cli::status::fetch_all(&addrs, verify).await;
            if json {
                let out: Vec<_> = replies
                    .iter()
                    .map(|(addr, r)| match r {
                        Ok(s) => serde_json::to_value(s).unwrap_or_default(),
                        Err(e) => serde_json::json!({"grpc_addr": addr, "error": e}),
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            } else {
                println!("{}", baton::cli::status::render(&replies));
            }
            let answered =
                if verify { replies.iter().all(|(_, r)| r.is_ok()) } else { replies.iter().any(|(_, r)| r.is_ok()) };
            if answered {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
