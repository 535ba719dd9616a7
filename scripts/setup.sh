#!/usr/bin/env bash
# Installs what building Baton needs on a fresh Debian machine, and prints the environment to build with.
# Idempotent: installs only what is missing. Sourced by scripts/up.sh, scripts/test.sh and .ci/run.
#
#   librocksdb-dev     RocksDB 7.8, linked instead of compiling RocksDB's C++ (minutes saved per clean build)
#   libclang-dev       bindgen, for librocksdb-sys
#   protobuf-compiler  protoc, for tonic-prost-build (build.rs)
#   chromium, chromium-driver, selenium (pip)  the web UI's browser test
set -euo pipefail

need=()
for pkg in librocksdb-dev libclang-dev protobuf-compiler pkg-config; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
  echo "setup: installing ${need[*]}" >&2
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The Python worker example and its test (examples/python/) need grpcio and its protoc.
if command -v python3 >/dev/null 2>&1 && ! python3 -c "import grpc, grpc_tools" >/dev/null 2>&1; then
  echo "setup: installing grpcio grpcio-tools (pip)" >&2
  python3 -m pip install --quiet --disable-pip-version-check grpcio grpcio-tools >/dev/null 2>&1 ||
    echo "setup: pip install grpcio grpcio-tools failed; the Python worker test will fail" >&2
fi

# The Conductor SDK test (tests/conductor_sdk.rs) runs Netflix Conductor's official Python SDK, unchanged.
if command -v python3 >/dev/null 2>&1 &&
  ! python3 -c "import conductor.client, importlib.metadata as m; assert m.version('conductor-python') == '2.0.0'" >/dev/null 2>&1; then
  echo "setup: installing conductor-python==2.0.0 (pip)" >&2
  python3 -m pip install --quiet --disable-pip-version-check conductor-python==2.0.0 >/dev/null 2>&1 ||
    echo "setup: pip install conductor-python failed; the Conductor SDK test will fail" >&2
fi

# The web UI's browser test (tests/web_ui.rs, tests/browser/ui_check.py) drives headless Chromium through selenium.
browser=()
for pkg in chromium chromium-driver; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || browser+=("$pkg")
done
if ((${#browser[@]})); then
  echo "setup: installing ${browser[*]} (for the web UI's browser test)" >&2
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  { $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${browser[@]}" >/dev/null; } ||
    echo "setup: apt-get install ${browser[*]} failed; the browser test will fail" >&2
fi
if command -v python3 >/dev/null 2>&1 && ! python3 -c "import selenium" >/dev/null 2>&1; then
  echo "setup: installing selenium (pip)" >&2
  python3 -m pip install --quiet --disable-pip-version-check selenium >/dev/null 2>&1 ||
    echo "setup: pip install selenium failed; the browser test will fail" >&2
fi

# Link the system RocksDB (rust-rocksdb 0.21 matches Debian's 7.8).
ROCKSDB_LIB_DIR="$(dirname "$(find /usr/lib -name 'librocksdb.so' -print -quit)")"
export ROCKSDB_LIB_DIR
