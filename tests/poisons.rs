//! Issue 25's poisons, each sent through a follower of a real three-node cluster while ordinary workflows run
//! beside it: apply is total. Afterwards every node is alive under the same leader, ordinary writes succeed on
//! every node, the ordinary workflows completed, each poisoned workflow is FAILED with a reason naming the bound
//! it hit (or its registration was refused with 400 and the path), and a restart of all three nodes comes back
//! with equal state hashes.

mod support;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use support::*;

/// Registers a workflow definition through `via`, which must accept it.
async fn register(via: &Node, def: Value) -> Result<()> {
    let name = def["name"].as_str().unwrap_or_default().to_string();
    post_json(via, "/api/metadata/workflow", &def).await?.ok().with_context(|| format!("registering {name}"))?;
    Ok(())
}

/// Starts `name` with `input` through `via`; returns the workflow id.
async fn start(via: &Node, name: &str, input: Value) -> Result<String> {
    let reply = post_json(via, "/api/workflow", &json!({"name": name, "input": input})).await?.ok()?;
    Ok(reply.body)
}

/// Waits until the workflow has ended on `via`; returns it with its tasks. Polls without the tasks: a poisoned
/// workflow may hold thousands.
async fn ended(via: &Node, id: &str, within_secs: u64) -> Result<Value> {
    wait_until(secs(within_secs), &format!("workflow {id} to end"), || async {
        let wf = get(via, &format!("/api/workflow/{id}?includeTasks=false")).await?.ok()?.json()?;
        ensure!(!matches!(wf["status"].as_str(), Some("RUNNING") | Some("PAUSED")), "still {}", wf["status"]);
        Ok(())
    })
    .await?;
    get(via, &format!("/api/workflow/{id}")).await?.ok()?.json()
}

/// The failure reasons of a workflow and its tasks, joined, for matching a bound's name.
fn reasons(wf: &Value) -> String {
    let mut all = vec![wf["reasonForIncompletion"].as_str().unwrap_or_default().to_string()];
    for t in wf["tasks"].as_array().into_iter().flatten() {
        all.push(t["reasonForIncompletion"].as_str().unwrap_or_default().to_string());
    }
    all.join(" | ")
}

/// An ordinary workflow: system tasks only, so it runs without workers, through the leader's evaluator.
fn ordinary_def() -> Value {
    json!({"name": "ordinary", "tasks": [
        {"name": "add", "taskReferenceName": "add", "type": "INLINE",
         "inputParameters": {"evaluatorType": "javascript", "expression": "$.a + $.b", "a": "${workflow.input.a}", "b": 2}},
        {"name": "shape", "taskReferenceName": "shape", "type": "JSON_JQ_TRANSFORM",
         "inputParameters": {"queryExpression": "{sum: .sum}", "sum": "${add.output.result}"}},
        {"name": "route", "taskReferenceName": "route", "type": "SWITCH", "evaluatorType": "javascript",
         "expression": "$.sum > 2 ? 'big' : 'small'", "inputParameters": {"sum": "${shape.output.result.sum}"},
         "decisionCases": {"big": [{"name": "mark", "taskReferenceName": "mark", "type": "SET_VARIABLE",
                                    "inputParameters": {"big": true}}]}}],
     "outputParameters": {"sum": "${shape.output.result.sum}", "big": "${workflow.variables.big}"}})
}

/// Polls one task of `task_type` through `via` and completes it with `output`; false when none was ready.
async fn complete_polled(via: &Node, task_type: &str, output: Value) -> Result<bool> {
    let polled = get(via, &format!("/api/tasks/poll/{task_type}?workerid=poisons")).await?.ok()?;
    if polled.body.trim().is_empty() {
        return Ok(false);
    }
    let task = polled.json()?;
    let update = json!({"workflowInstanceId": task["workflowInstanceId"], "taskId": task["taskId"],
                        "status": "COMPLETED", "outputData": output, "workerId": "poisons"});
    post_json(via, "/api/tasks", &update).await?.ok()?;
    Ok(true)
}

/// Whether the workflow has ended, as `via` sees it now.
async fn ended_now(via: &Node, id: &str) -> Result<bool> {
    let wf = get(via, &format!("/api/workflow/{id}?includeTasks=false")).await?.ok()?.json()?;
    Ok(!matches!(wf["status"].as_str(), Some("RUNNING") | Some("PAUSED")))
}

fn inline(reference: &str, expression: &str) -> Value {
    json!({"name": reference, "taskReferenceName": reference, "type": "INLINE",
           "inputParameters": {"evaluatorType": "javascript", "expression": expression}})
}

fn one_task(name: &str, task: Value) -> Value {
    json!({"name": name, "tasks": [task]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisons_fail_their_own_workflow_and_nothing_else() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    let follower = cluster.nodes().iter().find(|n| n.id != leader).context("a follower")?;

    register(follower, ordinary_def()).await?;
    let mut ordinary = Vec::new();
    for a in 0..5 {
        ordinary.push((a, start(follower, "ordinary", json!({"a": a})).await?));
    }

    // Thousands of distinct jq queries in one definition: compiled once, before the log; apply compiles none.
    let queries: Vec<Value> = (0..2000)
        .map(|i| {
            json!({"name": "q", "taskReferenceName": format!("q{i}"), "type": "JSON_JQ_TRANSFORM",
                        "inputParameters": {"queryExpression": format!(".x + {i}")}})
        })
        .collect();
    let registering = std::time::Instant::now();
    register(follower, json!({"name": "many_queries", "tasks": queries})).await?;
    eprintln!("a definition with 2,000 distinct jq queries registered in {:?}", registering.elapsed());

    // 1. A START_WORKFLOW of its own definition: refused at registration, with the path.
    let selfstart = json!({"name": "selfstart", "tasks": [{"name": "again", "taskReferenceName": "again",
        "type": "START_WORKFLOW", "inputParameters": {"startWorkflow": {"name": "selfstart", "input": {}}}}]});
    let refused = post_json(follower, "/api/metadata/workflow", &selfstart).await?;
    ensure!(refused.status == 400, "selfstart registration answered {}: {}", refused.status, refused.body);
    ensure!(refused.body.contains("tasks[0].inputParameters.startWorkflow.name"), "no path: {}", refused.body);

    // Each poison: its definition, its input, and the words its failure must contain.
    let deep_js = "var v = 0; for (var i = 0; i < 100000; i++) { v = [v]; } v";
    // Entries are counted before they are read as tasks: numbers make a 100,000-entry list small enough (600 KB)
    // that the fork's own bound, not the result size, is what stops it.
    let wide_fork_list = "var l = []; for (var i = 0; i < 100000; i++) { l.push(i); } l";
    let poisons: Vec<(&str, Value, Value, &str)> = vec![
        (
            "jq_repeat",
            one_task(
                "jq_repeat",
                json!({"name": "q", "taskReferenceName": "q", "type": "JSON_JQ_TRANSFORM",
                "inputParameters": {"queryExpression": "(.s * 1000000000000) | length", "s": "${workflow.input.s}"}}),
            ),
            json!({"s": "x"}),
            "memory limit",
        ),
        (
            "recurse",
            one_task(
                "recurse",
                json!({"name": "s", "taskReferenceName": "s", "type": "SUB_WORKFLOW",
                "subWorkflowParam": {"name": "${workflow.input.name}"}, "inputParameters": {"name": "${workflow.input.name}"}}),
            ),
            json!({"name": "recurse"}),
            "maxStartDepth",
        ),
        ("js_forever", one_task("js_forever", inline("spin", "for (;;) {}")), json!({}), "step budget"),
        (
            "js_hog",
            one_task("js_hog", inline("hog", "var a = []; for (;;) { a.push(new Array(100000).fill(1)); }")),
            json!({}),
            "memory limit",
        ),
        ("js_deep", one_task("js_deep", inline("deep", deep_js)), json!({}), "nests deeper"),
        (
            "jq_deep",
            one_task(
                "jq_deep",
                json!({"name": "q", "taskReferenceName": "q", "type": "JSON_JQ_TRANSFORM",
                // 60,000 levels: as deep as the default step budget lets a query build.
                "inputParameters": {"queryExpression": "reduce range(60000) as $i (0; [.])"}}),
            ),
            json!({}),
            "nests deeper",
        ),
        (
            "wide_fork",
            json!({"name": "wide_fork", "tasks": [
                inline("make", wide_fork_list),
                {"name": "f", "taskReferenceName": "f", "type": "FORK_JOIN_DYNAMIC",
                 "dynamicForkTasksParam": "tasks", "dynamicForkTasksInputParamName": "inputs",
                 "inputParameters": {"tasks": "${make.output.result}", "inputs": {}}},
                {"name": "j", "taskReferenceName": "j", "type": "JOIN"}]}),
            json!({}),
            "maxDynamicForkTasks",
        ),
        (
            "loop_forever",
            json!({"name": "loop_forever", "tasks": [{"name": "loop", "taskReferenceName": "loop", "type": "DO_WHILE",
                "loopCondition": "true", "loopOver": [inline("body", "1 + 1")]}]}),
            json!({}),
            "maxDoWhileIterations",
        ),
    ];
    // Not a poison but its shape (fuzz finding 5): 200 sub-workflows of 200 lanes each, 40,000 tasks from one
    // start. One command may take only maxStepsPerCommand steps: the starts and decisions left go on in the
    // Ticks the leader's timers propose, and everything completes.
    let noops: Vec<Value> =
        (0..200).map(|i| json!([{"name": "n", "taskReferenceName": format!("n{i}"), "type": "NOOP"}])).collect();
    register(
        follower,
        json!({"name": "wide_child", "tasks": [
        {"name": "f", "taskReferenceName": "f", "type": "FORK_JOIN", "forkTasks": noops},
        {"name": "j", "taskReferenceName": "j", "type": "JOIN"}]}),
    )
    .await?;
    let subs: Vec<Value> = (0..200)
        .map(|i| {
            json!([{"name": "s", "taskReferenceName": format!("s{i}"), "type": "SUB_WORKFLOW",
                    "subWorkflowParam": {"name": "${workflow.input.child}"}}])
        })
        .collect();
    register(
        follower,
        json!({"name": "fan_out", "tasks": [
        {"name": "f", "taskReferenceName": "f", "type": "FORK_JOIN", "forkTasks": subs},
        {"name": "j", "taskReferenceName": "j", "type": "JOIN"}]}),
    )
    .await?;
    let fan_out = start(follower, "fan_out", json!({"child": "wide_child"})).await?;

    let mut started = Vec::new();
    for (name, def, input, expected) in poisons {
        register(follower, def).await?;
        started.push((name, start(follower, name, input).await?, expected));
    }

    let waiting = std::time::Instant::now();
    for (name, id, expected) in &started {
        let wf = ended(follower, id, 120).await.with_context(|| format!("poison {name}"))?;
        eprintln!("{name}: {} after {:?}", wf["status"], waiting.elapsed());
        ensure!(wf["status"] == "FAILED", "{name}: {} ({})", wf["status"], reasons(&wf));
        let why = reasons(&wf);
        ensure!(why.contains(expected), "{name}: the reason does not name '{expected}': {why}");
    }
    // Worker outputs at the byte limits. The limits are lowered first (a request cannot carry more than
    // api.max_payload_bytes, 1 MiB here, well under the default 3 MiB): a task's output to 256 KiB, a workflow's
    // record to 350 KiB (a loop keeps each iteration's output twice, the task's and its own copy, so the record
    // passes its limit before the loop's output passes the task limit).
    let limits = json!({"maxTaskOutputBytes": 262144, "maxWorkflowRecordBytes": 358400});
    put_json(follower, "/api/admin/limits", &limits).await?.ok()?;
    register_task_def(follower, "blob").await?;
    register(follower, one_task("blob_over", json!({"name": "blob", "taskReferenceName": "blob"}))).await?;
    let loop_def = json!({"name": "blob_loop", "tasks": [{"name": "loop", "taskReferenceName": "loop",
        "type": "DO_WHILE", "loopCondition": "true", "loopOver": [{"name": "blob", "taskReferenceName": "blob"}]}]});
    register(follower, loop_def).await?;
    // One byte over the limit: {"s":"..."} is the string's length plus 8.
    let over = start(follower, "blob_over", json!({})).await?;
    complete_polled(follower, "blob", json!({"s": "x".repeat(262_144 - 8 + 1)})).await?;
    // 100 KiB on every iteration of an endless loop: the record passes 350 KiB in the second.
    let looping = start(follower, "blob_loop", json!({})).await?;
    let mut iterations = 0;
    while !ended_now(follower, &looping).await? {
        ensure!(iterations < 20, "blob_loop still runs after {iterations} iterations");
        if complete_polled(follower, "blob", json!({"s": "x".repeat(100 * 1024)})).await? {
            iterations += 1;
        } else {
            // Nothing ready yet: the next iteration is being scheduled.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    for (name, id, expected) in
        [("blob_over", &over, "maxTaskOutputBytes"), ("blob_loop", &looping, "maxWorkflowRecordBytes")]
    {
        let wf = ended(follower, id, 60).await?;
        eprintln!("{name}: {} after {iterations} iterations: {}", wf["status"], reasons(&wf));
        ensure!(wf["status"] == "FAILED", "{name}: {} ({})", wf["status"], reasons(&wf));
        ensure!(reasons(&wf).contains(expected), "{name}: the reason does not name {expected}: {}", reasons(&wf));
    }

    let wf = ended(follower, &fan_out, 120).await?;
    eprintln!("fan_out: {} after {:?}", wf["status"], waiting.elapsed());
    ensure!(wf["status"] == "COMPLETED", "fan_out: {} ({})", wf["status"], reasons(&wf));
    let subs = wf["tasks"].as_array().map_or(0, |tasks| {
        tasks.iter().filter(|t| t["taskType"] == "SUB_WORKFLOW" && t["status"] == "COMPLETED").count()
    });
    ensure!(subs == 200, "fan_out: {subs} of its 200 sub-workflows completed");

    for (a, id) in &ordinary {
        let wf = ended(follower, id, 60).await?;
        ensure!(wf["status"] == "COMPLETED", "ordinary {id}: {} ({})", wf["status"], reasons(&wf));
        ensure!(wf["output"]["sum"] == json!(a + 2), "ordinary {id} output: {}", wf["output"]);
    }

    // Every node is alive under the same leader, and takes writes.
    for node in cluster.nodes() {
        node.check_running()?;
        register_task_def(node, &format!("after_{}", node.id)).await?;
    }
    ensure!(cluster.leader().await? == leader, "the leader changed");
    cluster.wait_converged().await?;

    // The limits are a cluster setting: shown on every node, changed through any node, checked field by field.
    let shown = get(follower, "/api/admin/limits").await?.ok()?.json()?;
    ensure!(shown["maxStartDepth"] == 32 && shown["maxDoWhileIterations"] == 1000, "default limits: {shown}");
    let refused = put_json(follower, "/api/admin/limits", &json!({"maxStartDepth": 0})).await?;
    ensure!(refused.status == 400 && refused.body.contains("maxStartDepth"), "{}: {}", refused.status, refused.body);
    let unknown = put_json(follower, "/api/admin/limits", &json!({"maxWidgets": 3})).await?;
    ensure!(unknown.status == 400 && unknown.body.contains("maxWidgets"), "{}: {}", unknown.status, unknown.body);
    let positional = put_json(follower, "/api/admin/limits", &json!([1, 2])).await?;
    ensure!(positional.status == 400, "limits from an array answered {}: {}", positional.status, positional.body);
    put_json(follower, "/api/admin/limits", &json!({"maxDoWhileIterations": 5})).await?.ok()?;
    for node in cluster.nodes() {
        wait_until(secs(10), "the new limits on every node", || async {
            let shown = get(node, "/api/admin/limits").await?.ok()?.json()?;
            ensure!(shown["maxDoWhileIterations"] == 5 && shown["maxStartDepth"] == 32, "{shown}");
            Ok(())
        })
        .await?;
    }
    let id = start(follower, "loop_forever", json!({})).await?;
    let wf = ended(follower, &id, 60).await?;
    ensure!(reasons(&wf).contains("maxDoWhileIterations = 5"), "{}", reasons(&wf));

    // Every node restarts from its own disk (replaying whatever it had not snapshotted) and they agree.
    for node in cluster.nodes() {
        node.kill()?;
    }
    for node in cluster.nodes() {
        node.restart().await?;
    }
    let statuses = cluster.wait_converged_by(secs(60)).await?;
    ensure!(statuses.iter().all(|s| s.state_hash == statuses[0].state_hash), "{}", summary(&statuses));
    cluster.pass();
    Ok(())
}
