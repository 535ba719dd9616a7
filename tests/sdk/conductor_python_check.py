#!/usr/bin/env python3
"""Runs Netflix Conductor's official Python SDK (conductor-python 2.x, unchanged) against one Baton node, the way a
Conductor user would, and checks the outcome. Used by tests/conductor_sdk.rs; scripts/setup-tests.sh installs the SDK.

Only the SDK's public API is used:
  * Configuration(server_api_url="http://<node>/api"), no authentication;
  * the metadata client: register_task_def, get_task_def, register_workflow_def(overwrite=True) twice (the second
    registration must replace the first), get_workflow_def;
  * the workflow executor: start_workflow(StartWorkflowRequest) with input, correlationId and an idempotency key,
    get_workflow (with tasks);
  * a TaskHandler running two @worker_task functions and one WorkerInterface class, which poll with
    GET /tasks/poll/batch/{type} and report with POST /tasks/update-v2.

The workflow has three steps, each fed by the ones before:
  sdk_greet(name)                      -> {greeting, n}
  sdk_square(n)                        -> {square}
  sdk_combine(greeting, square, name)  -> {summary}
and its output collects all three.

Workflows are started as a stream: at most --window at a time, until --workflows have been started, each new one
as an earlier one completes. A start that fails with a retryable status (the node has no leader for a moment, or
the write's outcome is unknown) is retried with the same idempotency key, which answers the same workflow id.

Prints one JSON object per line on stdout: {"event": "started", ...} as each workflow is started,
{"event": "completed", ...} as each is seen COMPLETED and checked, and {"event": "done", ...} at the end. Exits 0
when every workflow completed with the expected outputs, 1 with a message on stderr otherwise.
"""

import argparse
import json
import sys
import time

from conductor.client.automator.task_handler import TaskHandler
from conductor.client.configuration.configuration import Configuration
from conductor.client.http.models import StartWorkflowRequest, Task, TaskDef, TaskResult
from conductor.client.http.models.task_result_status import TaskResultStatus
from conductor.client.http.rest import ApiException
from conductor.client.orkes_clients import OrkesClients
from conductor.client.worker.worker_interface import WorkerInterface
from conductor.client.worker.worker_task import worker_task
from conductor.client.workflow.conductor_workflow import ConductorWorkflow
from conductor.client.workflow.task.simple_task import SimpleTask
from conductor.client.workflow.task.timeout_policy import TimeoutPolicy

WORKFLOW = "sdk_pipeline"
TASK_TYPES = ("sdk_greet", "sdk_square", "sdk_combine")
REFS = ("greet", "square", "combine")
# Statuses a client may retry a start on: no leader reachable (503), overloaded (429), outcome unknown (504), or the
# connection itself failed (the SDK reports status 0).
RETRYABLE = (0, 429, 502, 503, 504)


class CheckFailed(Exception):
    pass


# ------------------------------------------------------------------------------------------------ workers
# Module level, so TaskHandler's worker processes (multiprocessing 'spawn') can find them again.


@worker_task(task_definition_name="sdk_greet", thread_count=4, poll_interval_millis=50)
def greet(name: str, n: int) -> dict:
    return {"greeting": f"Hello, {name}", "n": n}


@worker_task(task_definition_name="sdk_square", thread_count=4, poll_interval_millis=50)
def square(n: int) -> dict:
    return {"square": n * n}


class CombineWorker(WorkerInterface):
    """A class-based worker: takes the Task, answers a TaskResult."""

    def __init__(self):
        super().__init__("sdk_combine")
        self.thread_count = 4
        self.poll_interval = 50

    def execute(self, task: Task) -> TaskResult:
        result = self.get_task_result_from_task(task)
        data = task.input_data
        result.add_output_data("summary", f"{data['greeting']}! {data['name']} squared is {data['square']}")
        result.status = TaskResultStatus.COMPLETED
        return result

    def get_polling_interval_in_seconds(self) -> float:
        return 0.05


# ------------------------------------------------------------------------------------------------ helpers


def emit(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def check(cond, message):
    if not cond:
        raise CheckFailed(message)


def expected_output(i):
    name = f"user-{i}"
    return {
        "greeting": f"Hello, {name}",
        "square": i * i,
        "summary": f"Hello, {name}! {name} squared is {i * i}",
    }


def build_workflow(executor, description):
    wf = ConductorWorkflow(executor=executor, name=WORKFLOW, version=1, description=description)
    wf.timeout_policy(TimeoutPolicy.TIME_OUT_WORKFLOW).timeout_seconds(600).owner_email("sdk-test@example.com")
    wf.input_parameters(["name", "n"])
    t_greet = SimpleTask("sdk_greet", "greet")
    t_greet.input_parameters.update({"name": wf.input("name"), "n": wf.input("n")})
    t_square = SimpleTask("sdk_square", "square")
    t_square.input_parameters.update({"n": t_greet.output("n")})
    t_combine = SimpleTask("sdk_combine", "combine")
    t_combine.input_parameters.update(
        {"greeting": t_greet.output("greeting"), "square": t_square.output("square"), "name": wf.input("name")}
    )
    wf >> t_greet >> t_square >> t_combine
    wf.output_parameters(
        {
            "greeting": t_greet.output("greeting"),
            "square": t_square.output("square"),
            "summary": t_combine.output("summary"),
        }
    )
    return wf


def register_metadata(metadata, executor, response_timeout):
    for name in TASK_TYPES:
        td = TaskDef(
            name=name,
            description=f"{name} (conductor-python check)",
            retry_count=3,
            retry_logic="FIXED",
            retry_delay_seconds=1,
            timeout_seconds=300,
            timeout_policy="TIME_OUT_WF",
            response_timeout_seconds=response_timeout,
            owner_email="sdk-test@example.com",
        )
        metadata.register_task_def(td)
    for name in TASK_TYPES:
        got = metadata.get_task_def(name)
        check(got is not None and got.name == name, f"get_task_def({name}) answered {got!r}")
        check(
            got.response_timeout_seconds == response_timeout and got.retry_count == 3,
            f"get_task_def({name}): responseTimeoutSeconds={got.response_timeout_seconds} retryCount={got.retry_count}",
        )

    # Register the definition twice with overwrite=True: the second must replace the first.
    metadata.register_workflow_def(build_workflow(executor, "first registration").to_workflow_def(), overwrite=True)
    metadata.register_workflow_def(build_workflow(executor, "second registration").to_workflow_def(), overwrite=True)
    got = metadata.get_workflow_def(WORKFLOW)
    check(got is not None, f"get_workflow_def({WORKFLOW}) answered nothing")
    check(got.name == WORKFLOW and got.version == 1, f"get_workflow_def: name={got.name} version={got.version}")
    check(got.description == "second registration", f"overwrite=True did not replace it: {got.description!r}")
    refs = [t.task_reference_name for t in got.tasks]
    check(refs == list(REFS), f"get_workflow_def: task references {refs}")
    check(got.timeout_seconds == 600, f"get_workflow_def: timeoutSeconds={got.timeout_seconds}")


def start_one(executor, i, run_id, deadline):
    req = StartWorkflowRequest(
        name=WORKFLOW,
        version=1,
        input={"name": f"user-{i}", "n": i},
        correlation_id=f"{run_id}-{i}",
        idempotency_key=f"{run_id}-{i}",
        idempotency_strategy="RETURN_EXISTING",
    )
    attempt = 0
    while True:
        attempt += 1
        try:
            workflow_id = executor.start_workflow(req)
        except ApiException as e:
            if e.status in RETRYABLE and time.monotonic() < deadline:
                print(f"start of workflow {i} failed with {e.status} (attempt {attempt}); retrying", file=sys.stderr)
                time.sleep(0.2)
                continue
            raise
        check(isinstance(workflow_id, str) and len(workflow_id) > 0, f"start_workflow answered {workflow_id!r}")
        return workflow_id


def verify(workflow, i, run_id):
    """Checks a COMPLETED workflow: its output, input, correlation id and each step's final attempt."""
    wid = workflow.workflow_id
    want = expected_output(i)
    check(workflow.output == want, f"workflow {wid}: output {workflow.output}, expected {want}")
    check(workflow.input == {"name": f"user-{i}", "n": i}, f"workflow {wid}: input {workflow.input}")
    check(workflow.correlation_id == f"{run_id}-{i}", f"workflow {wid}: correlationId {workflow.correlation_id!r}")
    check(workflow.workflow_name == WORKFLOW, f"workflow {wid}: workflowName {workflow.workflow_name!r}")
    tasks = workflow.tasks or []
    for ref, task_type in zip(REFS, TASK_TYPES):
        attempts = [t for t in tasks if t.reference_task_name == ref]
        check(attempts, f"workflow {wid}: no task '{ref}' (tasks: {[t.reference_task_name for t in tasks]})")
        done = [t for t in attempts if t.status == "COMPLETED"]
        statuses = [t.status for t in attempts]
        check(len(done) == 1, f"workflow {wid}: {len(done)} COMPLETED attempts of '{ref}': {statuses}")
        check(done[0].task_type == task_type, f"workflow {wid}: task '{ref}' has type {done[0].task_type}")
    by_ref = {t.reference_task_name: t for t in tasks if t.status == "COMPLETED"}
    check(by_ref["square"].input_data.get("n") == i, f"workflow {wid}: square's input {by_ref['square'].input_data}")
    combine_in = by_ref["combine"].input_data
    check(
        combine_in.get("greeting") == want["greeting"] and combine_in.get("square") == want["square"],
        f"workflow {wid}: combine's input {combine_in}",
    )


def run(args):
    config = Configuration(server_api_url=args.server)
    clients = OrkesClients(configuration=config)
    metadata = clients.get_metadata_client()
    executor = clients.get_workflow_executor()
    workflow_client = clients.get_workflow_client()

    register_metadata(metadata, executor, args.response_timeout)
    emit("registered", workflow=WORKFLOW, taskTypes=list(TASK_TYPES))

    deadline = time.monotonic() + args.timeout
    handler = TaskHandler(workers=[CombineWorker()], configuration=config, scan_for_annotated_workers=True)
    handler.start_processes()
    try:
        pending = {}  # workflow id -> i
        done = []
        started = 0
        while len(done) < args.workflows:
            while started < args.workflows and len(pending) < args.window:
                workflow_id = start_one(executor, started, args.run_id, deadline)
                check(workflow_id not in pending and workflow_id not in done, f"start {started} answered a used id")
                pending[workflow_id] = started
                emit("started", workflowId=workflow_id, i=started, correlationId=f"{args.run_id}-{started}")
                started += 1
            for workflow_id, i in list(pending.items()):
                wf = workflow_client.get_workflow(workflow_id, include_tasks=True)
                check(wf is not None, f"get_workflow({workflow_id}) answered nothing")
                if wf.status == "RUNNING":
                    continue
                check(
                    wf.status == "COMPLETED",
                    f"workflow {workflow_id} (#{i}) ended {wf.status}: {wf.reason_for_incompletion}; tasks "
                    + str([(t.reference_task_name, t.status, t.reason_for_incompletion) for t in wf.tasks or []]),
                )
                verify(wf, i, args.run_id)
                del pending[workflow_id]
                done.append(workflow_id)
                emit("completed", workflowId=workflow_id, i=i, completed=len(done))
            if time.monotonic() > deadline:
                raise CheckFailed(
                    f"timed out after {args.timeout}s: {len(done)} of {args.workflows} workflows completed, "
                    f"still running: {sorted(pending)}"
                )
            if len(done) < args.workflows:
                time.sleep(0.1)
        emit("done", workflows=done)
    finally:
        handler.stop_processes()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", required=True, help="the node's API base, e.g. http://127.0.0.1:8080/api")
    p.add_argument("--workflows", type=int, default=6, help="how many workflows to run")
    p.add_argument("--window", type=int, default=3, help="at most this many running at a time")
    p.add_argument("--run-id", default="sdk", help="prefix of correlation ids and idempotency keys")
    p.add_argument("--response-timeout", type=int, default=10, help="the task defs' responseTimeoutSeconds")
    p.add_argument("--timeout", type=float, default=120, help="give up after this many seconds")
    args = p.parse_args()
    try:
        run(args)
    except CheckFailed as e:
        print(f"conductor-python check FAILED: {e}", file=sys.stderr)
        return 1
    except ApiException as e:
        print(f"conductor-python check FAILED: the SDK got HTTP {e.status}: {e.reason} {e.body}", file=sys.stderr)
        return 1
    print("conductor-python check passed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
