#!/usr/bin/env bash
# Replicated writes side by side: etcd 3.4 (three members, ../shared/bench/etcd) and Baton (`baton bench raft`, its
# own three nodes), same machine, same run, alternating, so the ratio holds while the machine's speed drifts.
#
#   scripts/bench-vs-etcd.sh [ROUNDS] [CLIENTS...]      default: 3 rounds at 1, 16 and 64 clients, 40000 writes each
#
# Prints every run, then a table of medians: writes/s, p50, p99, and the servers' CPU seconds per 1,000 writes.
# Needs etcd-server (apt) and the kvbench binary (see ../shared/bench/etcd/README.md); builds Baton's release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
shift || true
CLIENTS=${*:-"1 16 64"}
TOTAL=${TOTAL:-40000}
ETCD_DIR=${ETCD_DIR:-../shared/bench/etcd}
KVBENCH=${KVBENCH:-${TMPDIR:-/tmp}/kvbench-bin}
EPS=127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793
OUT=$(mktemp)
trap '"$ETCD_DIR/etcd3.sh" stop >/dev/null 2>&1 || true; rm -f "$OUT"' EXIT

command -v etcd >/dev/null || { echo "etcd is not installed: apt-get install -y etcd-server etcd-client" >&2; exit 2; }
[[ -x $KVBENCH ]] || { echo "no kvbench at $KVBENCH: see $ETCD_DIR/README.md" >&2; exit 2; }
source scripts/setup.sh >/dev/null
set +u
cargo build --release --bins --quiet
set -u

"$ETCD_DIR/etcd3.sh" wipe >/dev/null 2>&1 || true
"$ETCD_DIR/etcd3.sh" start >/dev/null 2>&1
cpu_ticks() { local sum=0 p; for p in $(pgrep -f "etcd --name m"); do sum=$((sum + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $sum; }

for round in $(seq "$ROUNDS"); do
  for c in $CLIENTS; do
    total=$TOTAL; [[ $c == 1 ]] && total=$((TOTAL / 10))
    before=$(cpu_ticks)
    line=$("$KVBENCH" put --endpoints "$EPS" --target leader --clients "$c" --total "$total" --val-size 256 2>&1 | tail -1)
    after=$(cpu_ticks)
    python3 - "$c" "$total" "$line" "$before" "$after" >>"$OUT" <<'PY'
import re, sys
c, total, line, before, after = sys.argv[1:]
f = dict(re.findall(r"(\w+)=([0-9.]+)", line))
cpu = (int(after) - int(before)) / 100
print(f"etcd {c} {f['puts_per_s']} {f['p50_ms']} {f['p99_ms']} {1000 * cpu / int(total):.3f}")
PY
    ./target/release/baton bench raft --clients "$c" --total "$total" --json | tail -1 | python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
cpu = sum(n["cpu_s"] for n in d["nodes"])
print("baton", d["clients"], d["ops_per_s"], d["p50_ms"], d["p99_ms"], "%.3f" % (1000 * cpu / d["writes"]))' >>"$OUT"
    tail -2 "$OUT"
  done
done

python3 - "$OUT" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    who, c, ops, p50, p99, cpu = line.split()
    runs[(int(c), who)].append((float(ops), float(p50), float(p99), float(cpu)))
print()
print(f"{'clients':>7} {'system':>6} {'writes/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'cpu s/1k':>8} {'vs etcd':>7}")
for c in sorted({c for c, _ in runs}):
    etcd = statistics.median(r[0] for r in runs[(c, "etcd")])
    for who in ("etcd", "baton"):
        r = runs[(c, who)]
        med = [statistics.median(x[i] for x in r) for i in range(4)]
        print(f"{c:>7} {who:>6} {med[0]:>9.0f} {med[1]:>7.2f} {med[2]:>7.2f} {med[3]:>8.3f} {med[0] / etcd:>6.2f}x")
print(f"(medians of {len(runs[(min(c for c, _ in runs), 'etcd')])} alternating runs; cpu = the three servers' CPU seconds per 1,000 writes)")
PY
