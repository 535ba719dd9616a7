#!/usr/bin/env bash
# Runs every test: unit tests, openraft's storage suite, and the multi-process cluster tests (which start the real
# binary). Installs what the build needs first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --bins
cargo test --all-targets "$@"
