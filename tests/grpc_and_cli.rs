//! The public gRPC API and the CLI (`baton cluster status`, `baton up`) against real processes.

mod support;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use baton::pb::v1::cluster_service_client::ClusterServiceClient;
use baton::pb::v1::metadata_service_client::MetadataServiceClient;
use baton::pb::v1::{
    Consistency, GetTaskDefRequest, GetWorkflowDefRequest, RegisterTaskDefsRequest, RegisterWorkflowDefRequest,
    StatusRequest, TaskDefJson, WorkflowDefJson,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::{secs, wait_until, Cluster, Options};
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::Code;

async fn metadata_client(addr: &str) -> Result<MetadataServiceClient<tonic::transport::Channel>> {
    Ok(MetadataServiceClient::new(baton::raft::network::channel(addr)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_metadata_through_followers_with_status_codes() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader_by(secs(5)).await?;
    let followers: Vec<_> = cluster.nodes().iter().filter(|n| n.id != leader).collect();
    let mut writer = metadata_client(&followers[0].grpc_addr).await?;
    let mut reader = metadata_client(&followers[1].grpc_addr).await?;

    let reply = writer
        .register_task_defs(RegisterTaskDefsRequest {
            task_defs: vec![TaskDefJson { json: r#"{"name":"resize","retryCount":1}"#.into() }],
        })
        .await?
        .into_inner();
    ensure!(reply.leader_id == leader, "write committed by {} but the leader is {leader}", reply.leader_id);
    ensure!(reply.log_index > 0);

    // A linearizable read on the other follower sees the write at once.
    let got = reader
        .get_task_def(GetTaskDefRequest { name: "resize".into(), consistency: Consistency::Linearizable as i32 })
        .await?
        .into_inner();
    let def: serde_json::Value = serde_json::from_str(&got.json)?;
    ensure!(def["retryCount"] == 1, "unexpected definition {def}");

    // Bad input names the field; nothing is written.
    let bad = writer
        .register_task_defs(RegisterTaskDefsRequest {
            task_defs: vec![TaskDefJson { json: r#"{"name":"x","retryCount":"many"}"#.into() }],
        })
        .await
        .expect_err("a string retryCount is refused");
    ensure!(bad.code() == Code::InvalidArgument && bad.message().contains("retryCount"), "{bad:?}");

    let workflow = r#"{"name":"wf","version":1,"tasks":[{"name":"resize","taskReferenceName":"r"}]}"#;
    let register = |overwrite| RegisterWorkflowDefRequest {
        workflow_def: Some(WorkflowDefJson { json: workflow.into() }),
        overwrite,
    };
    writer.register_workflow_def(register(false)).await?;
    let dup = writer.register_workflow_def(register(false)).await.expect_err("duplicate refused");
    ensure!(dup.code() == Code::AlreadyExists, "{dup:?}");
    writer.register_workflow_def(register(true)).await?;

    let missing = reader
        .get_workflow_def(GetWorkflowDefRequest { name: "nope".into(), version: 0, consistency: 0 })
        .await
        .expect_err("unknown workflow");
    ensure!(missing.code() == Code::NotFound, "{missing:?}");

    // ClusterService agrees with the HTTP status.
    let mut cluster_client = ClusterServiceClient::new(baton::raft::network::channel(&followers[1].grpc_addr)?);
    let status = cluster_client.status(StatusRequest { verify: false }).await?.into_inner();
    ensure!(status.role == "follower" && status.leader_id == leader && status.members.len() == 3, "{status:?}");
    // verify recomputes the hash from a full scan: same hash, as long as nothing was applied in between.
    let verified = cluster_client.status(StatusRequest { verify: true }).await?.into_inner();
    ensure!(verified.last_applied != status.last_applied || verified.state_hash == status.state_hash, "{verified:?}");
    cluster.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_cli_lists_every_member_and_marks_the_dead_one() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader_by(secs(5)).await?;
    cluster.wait_converged().await?;
    let run_with = |addr: String, flags: &'static [&'static str]| async move {
        let mut cmd = tokio::process::Command::new(support::BIN);
        cmd.args(["cluster", "status", "--addr", &addr]).args(flags);
        cmd.output().await.context("running baton cluster status")
    };
    let run = |addr: String, json: bool| run_with(addr, if json { &["--json"] } else { &[] });
    let out = run(cluster.node(1).grpc_addr.clone(), true).await?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    let mut ids: Vec<u64> = rows.iter().filter_map(|r| r["node_id"].as_u64()).collect();
    ids.sort_unstable();
    ensure!(ids == [1, 2, 3], "status rows: {rows:?}");
    let leaders: Vec<_> = rows.iter().filter(|r| r["role"] == "leader").collect();
    ensure!(leaders.len() == 1 && leaders[0]["node_id"] == leader, "{rows:?}");

    // --verify: every node confirms its running state hash by a full scan; all answer, so it succeeds.
    let out = run_with(cluster.node(1).grpc_addr.clone(), &["--json", "--verify"]).await?;
    ensure!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    ensure!(rows.iter().all(|r| r["state_hash"].as_str().is_some_and(|h| h.len() == 64)), "{rows:?}");

    let follower = cluster.nodes().iter().find(|n| n.id != leader).context("a follower")?;
    follower.kill()?;
    let out = run(cluster.node(leader).grpc_addr.clone(), false).await?;
    let table = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "{table}");
    ensure!(table.contains("unreachable") && table.contains(&follower.grpc_addr), "{table}");
    ensure!(table.matches("leader").count() >= 1 && table.contains("follower"), "{table}");
    // --verify fails when a member does not answer: the check was not made everywhere.
    let out = run_with(cluster.node(leader).grpc_addr.clone(), &["--verify"]).await?;
    ensure!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    cluster.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_three_nodes_and_ctrl_c_stops_them() -> Result<()> {
    // `prepare` writes node1.toml .. node3.toml with free ports into the cluster's dir without starting anything.
    let cluster = Cluster::prepare(3, Options::default()).await?;
    let data = cluster.dir().join("up-data");
    let mut up = tokio::process::Command::new(support::BIN)
        .args(["up", "--config-dir"])
        .arg(cluster.dir())
        .arg("--data-dir")
        .arg(&data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(up.stdout.take().context("stdout")?).lines();
    let mut seen = Vec::new();
    let table = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(line) = lines.next_line().await? {
            seen.push(line.clone());
            if line.starts_with("[baton up] leader: node") {
                // The table follows the announcement.
                let mut table = Vec::new();
                while table.len() < 7 {
                    match lines.next_line().await? {
                        Some(l) => table.push(l),
                        None => break,
                    }
                }
                return anyhow::Ok(table.join("\n"));
            }
        }
        anyhow::bail!("baton up ended before a leader was shown")
    })
    .await
    .with_context(|| format!("no leader announced; output so far:\n{}", seen.join("\n")))??;
    for node in cluster.nodes() {
        ensure!(table.contains(&node.grpc_addr), "status table lacks {}:\n{table}", node.grpc_addr);
    }
    ensure!(data.join("node1").exists() && data.join("node3").exists(), "data dirs under --data-dir");

    let pid = i32::try_from(up.id().context("pid")?)?;
    kill(Pid::from_raw(pid), Signal::SIGINT)?;
    let status = tokio::time::timeout(Duration::from_secs(20), up.wait()).await??;
    ensure!(status.success(), "baton up exited with {status}");
    // Every node stopped: its HTTP port no longer answers.
    for node in cluster.nodes() {
        wait_until(secs(5), "node stopped", || async {
            match support::get(node, "/health").await {
                Ok(_) => Err(anyhow::anyhow!("{} still answers /health", node.http_addr)),
                Err(_) => Ok(()),
            }
        })
        .await?;
    }
    cluster.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_and_reflection_work_without_the_proto_files() -> Result<()> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let cluster = Cluster::start(1).await?;
    let ch = baton::raft::network::channel(&cluster.node(1).grpc_addr)?;
    let health = HealthClient::new(ch.clone()).check(HealthCheckRequest { service: String::new() }).await?.into_inner();
    ensure!(health.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32, "{health:?}");

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies =
        ServerReflectionClient::new(ch).server_reflection_info(tokio_stream::iter(vec![request])).await?.into_inner();
    let reply = replies.message().await?.context("a reflection reply")?;
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else { anyhow::bail!("{reply:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for wanted in
        ["baton.v1.WorkflowService", "baton.v1.TaskService", "baton.v1.MetadataService", "baton.v1.ClusterService"]
    {
        ensure!(names.iter().any(|n| n == wanted), "{wanted} not listed: {names:?}");
    }
    cluster.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payloads_are_refused_with_a_clear_status_and_the_node_keeps_serving() -> Result<()> {
    use baton::pb::v1::workflow_service_client::WorkflowServiceClient;
    use baton::pb::v1::StartWorkflowRequest;
    let cluster = Cluster::start(1).await?;
    cluster.leader().await?;
    let node = cluster.node(1);
    let big = "x".repeat(2 * 1024 * 1024);
    let req = StartWorkflowRequest {
        name: "anything".into(),
        input_json: format!(r#"{{"blob":"{big}"}}"#),
        ..Default::default()
    };
    let mut wf = WorkflowServiceClient::new(baton::raft::network::channel(&node.grpc_addr)?);
    let err = wf.start(req).await.expect_err("2 MiB over a 1 MiB limit");
    ensure!(
        matches!(err.code(), tonic::Code::ResourceExhausted | tonic::Code::OutOfRange)
            && err.message().contains("too large"),
        "{err:?}"
    );
    let reply =
        support::post_raw(node, "/api/workflow", &format!(r#"{{"name":"x","input":{{"blob":"{big}"}}}}"#)).await?;
    ensure!(reply.status == 413, "HTTP answered {}", reply.status);
    // Still serving.
    ensure!(node.status().await?.role == "leader");
    let missing =
        wf.start(StartWorkflowRequest { name: "nope".into(), ..Default::default() }).await.expect_err("unknown");
    ensure!(missing.code() == tonic::Code::NotFound && missing.message().contains("nope"), "{missing:?}");
    let bad = wf
        .start(StartWorkflowRequest { name: "nope".into(), input_json: "{not json".into(), ..Default::default() })
        .await
        .expect_err("bad json");
    ensure!(bad.code() == tonic::Code::InvalidArgument && bad.message().contains("input_json"), "{bad:?}");
    let inline = StartWorkflowRequest {
        name: "slip".into(),
        workflow_def_json: r#"{"name":"slip","tasks":[{"name":"a","taskReferenceName":"a","type":"NOPE"}]}"#.into(),
        ..Default::default()
    };
    let invalid = wf.start(inline).await.expect_err("invalid inline definition");
    ensure!(
        invalid.code() == tonic::Code::InvalidArgument && invalid.message().contains("tasks[0].type"),
        "{invalid:?}"
    );
    use baton::pb::v1::task_service_client::TaskServiceClient;
    use baton::pb::v1::{TaskResultStatus, UpdateTaskRequest};
    let mut tasks = TaskServiceClient::new(baton::raft::network::channel(&node.grpc_addr)?);
    let unknown = UpdateTaskRequest {
        workflow_id: "no-such-workflow".into(),
        task_id: "t".into(),
        lease_token: "t:0:1".into(),
        status: TaskResultStatus::Completed as i32,
        ..Default::default()
    };
    let missing_task = tasks.update_task(unknown).await.expect_err("unknown workflow");
    ensure!(missing_task.code() == tonic::Code::NotFound, "{missing_task:?}");
    let bad_token = UpdateTaskRequest { lease_token: "garbage".into(), task_id: "t".into(), ..Default::default() };
    let bad_token = tasks.update_task(bad_token).await.expect_err("bad token");
    ensure!(bad_token.code() == tonic::Code::InvalidArgument, "{bad_token:?}");
    cluster.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_workflow_operations_signal_skip_rerun_log_and_list() -> Result<()> {
    use baton::pb::v1::task_service_client::TaskServiceClient;
    use baton::pb::v1::workflow_service_client::WorkflowServiceClient;
    use baton::pb::v1::{
        AppendLogRequest, ListWorkflowsRequest, RerunRequest, SignalRequest, SkipTaskRequest, StartWorkflowRequest,
        TaskResultStatus,
    };
    let cluster = Cluster::start(1).await?;
    cluster.leader().await?;
    let node = cluster.node(1);
    support::register_task_def(node, "after").await?;
    let def = serde_json::json!({"name": "ops", "tasks": [
        {"name": "gate", "taskReferenceName": "gate", "type": "WAIT"},
        {"name": "after", "taskReferenceName": "after"}]});
    support::post_json(node, "/api/metadata/workflow", &def).await?.ok()?;
    let ch = baton::raft::network::channel(&node.grpc_addr)?;
    let mut wf = WorkflowServiceClient::new(ch.clone());
    let start =
        |corr: &str| StartWorkflowRequest { name: "ops".into(), correlation_id: corr.into(), ..Default::default() };
    let id = wf.start(start("order-1")).await?.into_inner().workflow_id;
    let second = wf.start(start("order-2")).await?;
    let leader = second.metadata().get("x-baton-leader").and_then(|v| v.to_str().ok()).map(str::to_string);
    ensure!(leader.as_deref() == Some(node.grpc_addr.as_str()), "leader metadata: {leader:?}");

    let listed = wf
        .list(ListWorkflowsRequest { correlation_id: "order-1".into(), ..Default::default() })
        .await?
        .into_inner()
        .workflows;
    ensure!(listed.len() == 1 && listed[0].workflow_id == id, "{listed:?}");
    let paged =
        wf.list(ListWorkflowsRequest { limit: 1, offset: 1, ..Default::default() }).await?.into_inner().workflows;
    ensure!(paged.len() == 1, "{paged:?}");

    let get = |wf: &mut WorkflowServiceClient<tonic::transport::Channel>, id: String| {
        let mut wf = wf.clone();
        async move {
            let json =
                wf.get(baton::pb::v1::GetWorkflowRequest { workflow_id: id, consistency: 0 }).await?.into_inner().json;
            anyhow::Ok(serde_json::from_str::<serde_json::Value>(&json)?)
        }
    };
    let gate_id = get(&mut wf, id.clone()).await?["tasks"][0]["taskId"].as_str().context("gate")?.to_string();
    let mut tasks = TaskServiceClient::new(ch);
    tasks
        .append_log(AppendLogRequest {
            workflow_id: id.clone(),
            task_id: gate_id.clone(),
            log: "waiting for approval".into(),
        })
        .await?;
    wf.skip_task(SkipTaskRequest {
        workflow_id: id.clone(),
        task_reference_name: "after".into(),
        output_json: r#"{"skipped":true}"#.into(),
    })
    .await?;
    wf.signal(SignalRequest {
        workflow_id: id.clone(),
        task_reference_name: "gate".into(),
        status: TaskResultStatus::Completed as i32,
        output_json: r#"{"approved":true}"#.into(),
        ..Default::default()
    })
    .await?;
    let done = get(&mut wf, id.clone()).await?;
    ensure!(done["status"] == "COMPLETED", "{done}");
    ensure!(done["tasks"][0]["logs"][0]["log"] == "waiting for approval", "{}", done["tasks"][0]);
    ensure!(done["output"] == serde_json::json!({"skipped": true}), "{}", done["output"]);

    wf.rerun(RerunRequest { workflow_id: id.clone(), from_task_id: gate_id, ..Default::default() }).await?;
    let again = get(&mut wf, id.clone()).await?;
    ensure!(again["status"] == "RUNNING" && again["tasks"][0]["status"] == "IN_PROGRESS", "{again}");
    cluster.pass();
    Ok(())
}
