# One image with every binary of the workspace (coordinator, order-srv,
# stock-srv, order-api, quickorder); docker-compose.yml and deploy/k8s pick
# the process with `command:`.
#
#   docker build -t quickorder:latest .
#   docker run --rm -p 8889:8889 quickorder:latest quickorder up   # all in one, SQLite
#
# Stages 1-3 use cargo-chef so that the dependency build (the slow part) is a
# cached layer that only changes when Cargo.toml / Cargo.lock change; editing
# a .rs file rebuilds the workspace crates only. .dockerignore keeps target/
# (gigabytes) and .git out of the build context.

FROM rust:1-bookworm AS chef
RUN cargo install --locked cargo-chef
# etcd-client's build script needs protoc. .cargo/config.toml points PROTOC at
# tools/protoc, which does not exist yet while `cargo chef cook` builds the
# dependencies; an explicit PROTOC wins over that file (force = false), so
# both builds below use the same protoc and etcd-client is built only once.
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
ENV PROTOC=/usr/bin/protoc
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bins \
    && mkdir -p /out \
    && cp target/release/coordinator target/release/order-srv target/release/stock-srv \
          target/release/order-api target/release/quickorder /out/

# The binaries link glibc only (rustls, no OpenSSL); ca-certificates is there
# for TLS connections to a managed MySQL or etcd. Health checks use
# `quickorder probe`, so no curl or grpc_health_probe is needed.
FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app app
COPY --from=builder /out/ /usr/local/bin/
COPY etc/ /etc/quickorder/
# Numeric, so Kubernetes' runAsNonRoot can verify it. The home directory is
# writable: `quickorder up` keeps its SQLite files in ./quickorder-data.
USER 10001:10001
WORKDIR /home/app
# coordinator HTTP / gRPC, order-srv, stock-srv, order-api
EXPOSE 36789 36790 9001 9002 8889
CMD ["quickorder", "--help"]
