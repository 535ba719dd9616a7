#!/usr/bin/env bash
# Builds the Docker image `baton:local` without pulling anything: no base image, no registry.
#
#   scripts/docker-image.sh                      cargo build --release, then build baton:local
#   scripts/docker-image.sh --tag NAME:TAG       another tag
#   scripts/docker-image.sh --binary PATH        package an already built baton binary instead (the compose test
#                                                passes its own debug build, so it tests the code it was built from)
#
# The image is `FROM scratch` (docker/Dockerfile.local): the binary, every shared library `ldd` says it loads
# (RocksDB 7.8 and its compression libraries, libstdc++, glibc) and the dynamic loader, all copied from this machine.
# It also carries dash, sed, cat and basename (with their libraries), so `baton worker exec -- sh script.sh` can run
# the shell-script workers of examples/encode_and_deploy in the same image. Nothing else: no package manager, no
# CA certificates (Baton speaks plain gRPC and HTTP), no users (it runs as uid 10001, which needs no /etc/passwd).
#
# With a registry, the multi-stage Dockerfile at the top level builds an equivalent image from rust and debian images.
set -euo pipefail
cd "$(dirname "$0")/.."

tag="baton:local"
binary=""
while (($#)); do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --binary) binary="$2"; shift 2 ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "docker-image: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ -z "$binary" ]; then
  source scripts/setup.sh
  cargo build --release --bin baton
  binary="target/release/baton"
fi
[ -x "$binary" ] || { echo "docker-image: $binary is not an executable" >&2; exit 2; }

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
mkdir -p "$root"

# Copies the file at absolute path $1 to the same path in the image, following symlinks (the loader and most
# libraries are reached through one), so the image holds regular files where the binaries look for them.
put() {
  local dest="$root$1"
  [ -e "$dest" ] && return 0
  mkdir -p "$(dirname "$dest")"
  cp -L "$1" "$dest"
}

# Copies program $1 to path $2 in the image, with every library it loads and the loader itself.
put_program() {
  local program="$1" dest="$2" lib
  mkdir -p "$(dirname "$root$dest")"
  cp -L "$program" "$root$dest"
  # ldd lines: "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)", and
  # "linux-vdso.so.1 (0x...)" (in the kernel, nothing to copy). A "not found" makes the image useless: stop.
  if ldd "$program" | grep -q "not found"; then
    echo "docker-image: $program needs libraries this machine lacks:" >&2
    ldd "$program" | grep "not found" >&2
    exit 1
  fi
  for lib in $(ldd "$program" | grep -o '/[^ ]*'); do
    put "$lib"
  done
}

put_program "$binary" /usr/local/bin/baton
for tool in sh sed cat basename; do
  path="$(command -v "$tool")" || { echo "docker-image: $tool not found on this machine" >&2; exit 1; }
  put_program "$path" "/bin/$tool"
done

# glibc resolves the compose service names (node1, ...) through /etc/hosts and the DNS server in /etc/resolv.conf,
# both of which Docker mounts into every container; say so explicitly rather than rely on glibc's default order.
mkdir -p "$root/etc" "$root/tmp" "$ctx/data"
echo "hosts: files dns" >"$root/etc/nsswitch.conf"
chmod 1777 "$root/tmp"

cp docker/Dockerfile.local "$ctx/Dockerfile"
echo "docker-image: building $tag from $binary ($(du -sh "$root" | cut -f1) in the image)" >&2
docker build --quiet --tag "$tag" "$ctx" >/dev/null
echo "docker-image: built $tag" >&2
