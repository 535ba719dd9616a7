//! Conductor's task endpoints over HTTP (`/api/tasks/...`), as HTTP workers and the Conductor SDKs use them: polls
//! through a follower, lookups and logs by task id alone, lease extension, update-v2 handing over the next task,
//! and bad input answered with Conductor's error body.

mod support;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use support::*;

/// Polls `via` until the batch endpoint hands out a task of `task_type`; answers it.
async fn poll_task(via: &Node, task_type: &str, worker: &str) -> Result<Value> {
    let path = format!("/api/tasks/poll/batch/{task_type}?count=5&timeout=1000&workerid={worker}");
    wait_until(secs(10), "a task from the batch poll", || async {
        let tasks = get(via, &path).await?.ok()?.json()?;
        let list = tasks.as_array().with_context(|| format!("batch poll answered {tasks}"))?;
        ensure!(list.len() <= 1, "one task is ready, the poll answered {list:?}");
        list.first().cloned().context("nothing yet")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_workers_poll_update_log_and_look_up_tasks_through_any_node() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    let followers: Vec<&Node> = cluster.nodes().iter().filter(|n| n.id != leader).collect();
    let (a, b) = (followers[0], followers[1]);
    register_task_def(a, "encode").await?;
    let def = json!({"name": "twice", "version": 1, "tasks": [
        {"name": "encode", "taskReferenceName": "first", "inputParameters": {"n": "${workflow.input.n}"}},
        {"name": "encode", "taskReferenceName": "second", "inputParameters": {"prev": "${first.output.size}"}}
    ], "outputParameters": {"size": "${second.output.size}"}});
    post_json(a, "/api/metadata/workflow", &def).await?.ok()?;
    let workflow_id = post_json(b, "/api/workflow/twice", &json!({"n": 7})).await?.ok()?.body;

    // A poll through a follower is served by the leader; the task is Conductor's Task document.
    let first = poll_task(a, "encode", "http-worker-1").await?;
    ensure!(first["status"] == "IN_PROGRESS" && first["referenceTaskName"] == "first", "{first}");
    ensure!(first["workflowInstanceId"] == workflow_id.as_str() && first["workerId"] == "http-worker-1", "{first}");
    ensure!(first["inputData"]["n"] == 7 && first["pollCount"] == 1 && first["taskType"] == "encode", "{first}");
    let task_id = first["taskId"].as_str().context("taskId")?.to_string();

    // Nothing else is ready: the single poll answers 204, the batch poll an empty list.
    let none = get(b, "/api/tasks/poll/encode?workerid=w2").await?;
    ensure!(none.status == 204 && none.body.is_empty(), "{none:?}");
    let empty = get(b, "/api/tasks/poll/batch/encode?count=3&timeout=50").await?.ok()?.json()?;
    ensure!(empty == json!([]), "{empty}");

    // Found by its id alone on another node, logged, and its lease extended.
    let seen = wait_until(secs(5), "the task on the other follower", || async {
        let t = get(b, &format!("/api/tasks/{task_id}")).await?.ok()?.json()?;
        ensure!(t["status"] == "IN_PROGRESS", "{t}");
        Ok(t)
    })
    .await?;
    ensure!(seen["referenceTaskName"] == "first", "{seen}");
    post_raw(b, &format!("/api/tasks/{task_id}/log"), "\"encoding 7 frames\"").await?.ok()?;
    let extend = json!({"workflowInstanceId": workflow_id, "taskId": task_id, "status": "IN_PROGRESS",
                        "extendLease": true, "outputData": {"ignored": true}});
    let reply = post_json(a, "/api/tasks", &extend).await?.ok()?;
    ensure!(reply.body == task_id, "POST /api/tasks answered {:?}", reply.body);
    let after = get(cluster.node(leader), &format!("/api/tasks/{task_id}?consistency=linearizable")).await?;
    let after = after.ok()?.json()?;
    ensure!(after["status"] == "IN_PROGRESS" && after["outputData"] == json!({}), "lease extension changed {after}");
    ensure!(after["updateTime"].as_u64() >= first["updateTime"].as_u64(), "{after}");

    // update-v2 completes the task and hands the same worker the next task of its type.
    let done = json!({"workflowInstanceId": workflow_id, "taskId": task_id, "status": "COMPLETED",
                      "workerId": "http-worker-1", "outputData": {"size": 42}});
    let next = post_json(b, "/api/tasks/update-v2", &done).await?.ok()?.json()?;
    ensure!(next["referenceTaskName"] == "second" && next["inputData"]["prev"] == 42, "{next}");
    ensure!(next["status"] == "IN_PROGRESS" && next["workerId"] == "http-worker-1", "{next}");

    // A result without workflowInstanceId is routed by the task id.
    let second_id = next["taskId"].as_str().context("taskId")?;
    // Its logs (Conductor's TaskExecLog list) land on the task before the update.
    let last = json!({"taskId": second_id, "status": "COMPLETED", "outputData": {"size": 43},
                      "logs": [{"log": "second: 43 frames", "taskId": second_id, "createdTime": 1}]});
    let reply = post_json(a, "/api/tasks", &last).await?.ok()?;
    ensure!(reply.body == second_id, "{reply:?}");
    let wf = wait_until(secs(5), "the workflow to complete", || async {
        let wf = get(a, &format!("/api/workflow/{workflow_id}")).await?.ok()?.json()?;
        ensure!(wf["status"] == "COMPLETED", "{}", wf["status"]);
        Ok(wf)
    })
    .await?;
    ensure!(wf["output"]["size"] == 43, "{wf}");
    let logged = wf["tasks"][0]["logs"].to_string();
    ensure!(logged.contains("encoding 7 frames"), "the log line is not on the task: {}", wf["tasks"][0]);
    let logged = wf["tasks"][1]["logs"].to_string();
    ensure!(logged.contains("second: 43 frames"), "the TaskResult's logs are not on the task: {}", wf["tasks"][1]);

    // update-v2 with nothing left to hand over answers 204.
    let again = post_json(a, "/api/tasks/update-v2", &last).await?;
    ensure!(again.status == 204, "{again:?}");
    cluster.wait_converged().await?;
    cluster.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_task_requests_get_conductor_error_bodies_naming_the_problem() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    let node = cluster.nodes().iter().find(|n| n.id != leader).context("a follower")?;
    let expect = |reply: Reply, status: u16, needle: &str| -> Result<()> {
        ensure!(reply.status == status, "expected HTTP {status}, got {reply:?}");
        let body = reply.json()?;
        ensure!(body["status"] == status, "{body}");
        let message = body["message"].as_str().context("message")?;
        ensure!(message.contains(needle), "message {message:?} should mention {needle:?}");
        Ok(())
    };
    expect(get(node, "/api/tasks/poll/batch/encode?count=0").await?, 400, "count")?;
    expect(get(node, "/api/tasks/poll/batch/encode?timeout=-5").await?, 400, "timeout")?;
    expect(get(node, "/api/tasks/no-such-task").await?, 404, "no-such-task")?;
    expect(post_raw(node, "/api/tasks", "{\"taskId\": ").await?, 400, "")?;
    let unknown = json!({"taskId": "no-such-task", "status": "COMPLETED"});
    expect(post_json(node, "/api/tasks", &unknown).await?, 404, "no-such-task")?;
    let no_id = json!({"taskId": "", "status": "COMPLETED"});
    expect(post_json(node, "/api/tasks", &no_id).await?, 400, "taskId")?;
    expect(post_raw(node, "/api/tasks/no-such-task/log", "\"line\"").await?, 404, "no-such-task")?;
    cluster.pass();
    Ok(())
}
