#!/usr/bin/env bash
# Runs every test: unit tests, openraft's storage suite, and the multi-process cluster tests (which start the real
# binary). Installs what the build and the tests need first (scripts/setup-tests.sh). Release profile: the multi-process tests measure
# and stress the binary users run, and one optimised build is cheaper than a debug build plus a release one.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-tests.sh
cargo build --release --bins
cargo test --release --all-targets "$@"
