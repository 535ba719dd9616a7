#!/usr/bin/env python3
"""Measures time to first leader and leader SIGKILL -> new leader on a local three-node cluster of the real binary.

Usage: scripts/failover_probe.py [--binary target/release/baton] [--kills 10]

Each node runs from a generated config with free ports in a temp dir. After each kill the killed node is restarted
and the cluster is allowed to converge before the next kill. Prints one line per kill and the median/max at the end.
This is a measuring tool for the closing notes, not a test; `baton bench failover` will replace it (step 6).
"""
import argparse, json, os, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(http):
    try:
        with urllib.request.urlopen(f"http://{http}/api/cluster/status", timeout=0.5) as r:
            return json.load(r)
    except Exception:
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/baton")
    ap.add_argument("--kills", type=int, default=10)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="baton-failover-")
    members = [(i, f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}") for i in (1, 2, 3)]
    configs = {}
    for i, grpc, http in members:
        text = f'cluster_id = "probe"\nnode_id = {i}\ndata_dir = "{tmp}/node{i}"\n'
        for j, g, h in members:
            text += f'[[members]]\nid = {j}\ngrpc_addr = "{g}"\nhttp_addr = "{h}"\n'
        path = f"{tmp}/node{i}.toml"
        open(path, "w").write(text)
        configs[i] = path
    https = {i: h for i, _, h in members}
    procs = {}

    def start(i):
        log = open(f"{tmp}/node{i}.log", "a")
        procs[i] = subprocess.Popen([args.binary, "server", "--config", configs[i]], stdout=log, stderr=log)

    def leader_among(ids):
        views = [status(https[i]) for i in ids]
        leaders = {v["node_id"] for v in views if v and v["role"] == "leader"}
        return leaders.pop() if len(leaders) == 1 else None

    t0 = time.monotonic()
    for i in (1, 2, 3):
        start(i)
    while leader_among([1, 2, 3]) is None:
        time.sleep(0.005)
    print(f"first leader after {1000 * (time.monotonic() - t0):.0f} ms (from spawning the first process)")

    samples = []
    try:
        for k in range(args.kills):
            leader = None
            while leader is None:
                leader = leader_among([1, 2, 3])
                time.sleep(0.01)
            # Kill only a healthy cluster: every node follows this leader and has applied the same entries.
            while True:
                views = [status(https[i]) for i in (1, 2, 3)]
                if all(v and v["leader_id"] == leader for v in views) and len({v["last_applied"] for v in views}) == 1:
                    break
                time.sleep(0.01)
            survivors = [i for i in (1, 2, 3) if i != leader]
            procs[leader].send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            procs[leader].wait()
            new = None
            while new is None or new == leader:
                new = leader_among(survivors)
                time.sleep(0.002)
            ms = 1000 * (time.monotonic() - killed_at)
            samples.append(ms)
            print(f"kill {k + 1}: leader {leader} -> {new} in {ms:.0f} ms")
            start(leader)
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGKILL)
    print(f"leader SIGKILL -> new leader over {len(samples)} kills: median {statistics.median(samples):.0f} ms, "
          f"min {min(samples):.0f} ms, max {max(samples):.0f} ms")


if __name__ == "__main__":
    sys.exit(main())
