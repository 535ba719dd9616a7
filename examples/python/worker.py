#!/usr/bin/env python3
"""A Baton worker in Python, built from proto/baton.proto alone (grpcio + grpcio-tools).

    python3 -m pip install grpcio grpcio-tools
    python3 examples/python/worker.py --addr 127.0.0.1:7001,127.0.0.1:7002 --task encode

It long-polls TaskService for tasks of one type, "encodes" each (appends .encoded.mp4 to input.fileLocation) and
reports the result under the task's lease token. When a node stops answering it moves to the next address.
Stops after --max-tasks tasks (0: never) or on Ctrl-C.
"""
import argparse
import importlib
import json
import os
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc


def load_stubs():
    """Compiles proto/baton.proto into a temporary directory and imports the generated modules."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = tempfile.mkdtemp(prefix="baton-py-")
    args = ["protoc", f"-I{os.path.join(root, 'proto')}", f"--python_out={out}", f"--grpc_python_out={out}", "baton.proto"]
    if protoc.main(args) != 0:
        sys.exit("protoc failed on proto/baton.proto")
    sys.path.insert(0, out)
    return importlib.import_module("baton_pb2"), importlib.import_module("baton_pb2_grpc")


def handle(task_input):
    """The work itself: returns the output, or raises to fail the task."""
    location = task_input.get("fileLocation")
    if not location:
        raise ValueError("no fileLocation in the input")
    return {"encodeLocation": f"{location}.encoded.mp4", "worker": "python"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default=os.environ.get("BATON_ADDR", "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"))
    ap.add_argument("--task", default="encode")
    ap.add_argument("--worker-id", default=f"python-{os.getpid()}")
    ap.add_argument("--max-tasks", type=int, default=0)
    args = ap.parse_args()
    pb, rpc = load_stubs()
    addrs = [a for a in args.addr.split(",") if a]
    node, done = 0, 0
    while args.max_tasks == 0 or done < args.max_tasks:
        stub = rpc.TaskServiceStub(grpc.insecure_channel(addrs[node % len(addrs)]))
        try:
            reply = stub.Poll(pb.PollRequest(task_type=args.task, worker_id=args.worker_id, count=1, timeout_ms=1000), timeout=5)
            for task in reply.tasks:
                request = pb.UpdateTaskRequest(workflow_id=task.workflow_id, task_id=task.task_id,
                                               lease_token=task.lease_token, worker_id=args.worker_id)
                try:
                    request.output_json = json.dumps(handle(json.loads(task.input_json or "{}")))
                    request.status = pb.TASK_RESULT_STATUS_COMPLETED
                except Exception as e:  # the task fails; Baton retries it per its definition
                    request.status = pb.TASK_RESULT_STATUS_FAILED
                    request.reason_for_incompletion = str(e)
                stub.UpdateTask(request, timeout=10)
                done += 1
                print(f"{task.task_type} {task.task_id}: reported", flush=True)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                print(f"result refused (lease expired): {e.details()}", flush=True)
                continue
            node += 1  # this node is down or has no leader in reach: try the next one
            time.sleep(0.1)


if __name__ == "__main__":
    main()
