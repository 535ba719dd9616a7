# The Baton image, built from source in two stages. Needs a registry for the rust and debian base images; without
# one, scripts/docker-image.sh builds an equivalent image (baton:local) from a binary built on the host.
#
#   docker build -t baton:local .           # or: docker compose build
#
# RUST_VERSION: the oldest Rust that builds Cargo.lock as it stands (uuid 1.29 asks for 1.89).
ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-bookworm AS builder
# librocksdb-dev: Debian's RocksDB 7.8, linked instead of compiling RocksDB's C++ (most of ten minutes);
# libclang-dev: bindgen for librocksdb-sys; protobuf-compiler: protoc for build.rs.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      librocksdb-dev libclang-dev protobuf-compiler pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# ROCKSDB_LIB_DIR is the multiarch library directory (x86_64-linux-gnu, aarch64-linux-gnu, ...).
RUN ROCKSDB_LIB_DIR="/usr/lib/$(gcc -dumpmachine)" cargo build --release --locked --bin baton \
 && install -m 0755 target/release/baton /usr/local/bin/baton

FROM debian:bookworm-slim
# librocksdb7.8 brings the libraries the binary loads (snappy, lz4, zstd, bz2, zlib, gflags, libstdc++). The image
# keeps Debian's sh, sed, cat and basename: the example workers (examples/encode_and_deploy/*.sh) use them.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends librocksdb7.8 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 baton \
 && useradd --system --uid 10001 --gid baton --home-dir /data --no-create-home --shell /usr/sbin/nologin baton \
 && mkdir /data \
 && chown baton:baton /data
COPY --from=builder /usr/local/bin/baton /usr/local/bin/baton
USER 10001:10001
WORKDIR /data
# A named volume mounted here starts as a copy of this directory, owner included.
VOLUME /data
# gRPC and HTTP of the three nodes of docker-compose.yml (each container uses one pair).
EXPOSE 7001 7002 7003 8081 8082 8083
ENTRYPOINT ["baton"]
CMD ["--help"]
