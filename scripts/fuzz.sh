#!/usr/bin/env bash
# A fuzzing campaign of the engine's apply (tests/fuzz.rs, docs/fuzzing.md): builds the fuzz target and the baton
# binary its sandbox children run, then fuzzes at the lowest CPU priority for N minutes (default 30). Prints cases
# per minute as it goes and the findings at the end, each minimised, printed as JSON and written under
# target/fuzz-findings/. Exits non-zero when it found something.
#
#   scripts/fuzz.sh [--minutes N] [--seed S]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

args=("$@")
if [[ " ${args[*]-} " != *" --minutes "* ]]; then
  args+=(--minutes 30)
fi

cargo build --release --bins
cargo test --release --test fuzz --no-run
nice -n 19 cargo test --release --test fuzz -- "${args[@]}"
