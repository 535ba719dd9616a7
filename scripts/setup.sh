#!/usr/bin/env bash
# Installs what building Baton needs on a fresh Debian machine, and exports the environment to build with.
# Idempotent: installs only what is missing. Sourced by scripts/up.sh, scripts/docker-image.sh and
# scripts/setup-tests.sh (which adds what the tests need).
#
#   librocksdb-dev     RocksDB 7.8, linked instead of compiling RocksDB's C++ (minutes saved per clean build)
#   libclang-dev       bindgen, for librocksdb-sys
#   protobuf-compiler  protoc, for tonic-prost-build (build.rs)
set -euo pipefail

# apt_install_missing WHY PACKAGE...: installs the packages that are not installed yet.
apt_install_missing() {
  local why="$1" need=() pkg sudo_cmd=""
  shift
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
  done
  ((${#need[@]})) || return 0
  echo "setup: installing ${need[*]} ($why)" >&2
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
}

apt_install_missing "to build Baton" librocksdb-dev libclang-dev protobuf-compiler pkg-config

# Link the system RocksDB (rust-rocksdb 0.21 matches Debian's 7.8).
ROCKSDB_LIB_DIR="$(dirname "$(find /usr/lib -name 'librocksdb.so' -print -quit)")"
export ROCKSDB_LIB_DIR
