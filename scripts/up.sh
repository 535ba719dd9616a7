#!/usr/bin/env bash
# Builds Baton (release) and runs the local three-node cluster: config/node1.toml .. node3.toml, data under ./data.
# Ctrl-C stops all three. Extra arguments go to `baton up` (e.g. --data-dir /tmp/baton).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --bin baton
exec ./target/release/baton up "$@"
