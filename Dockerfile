# One image with every binary of the workspace (coordinator, order-srv,
# stock-srv, order-api, quickorder); docker-compose.yml and deploy/k8s pick
# the process with `command:`.
#
#   docker build -t quickorder:latest .
#   docker run --rm -p 8889:8889 quickorder:latest quickorder up --host 0.0.0.0   # all in one, SQLite
#
# (`quickorder up` binds 127.0.0.1 unless told otherwise; inside a container
# that is unreachable through -p, hence --host 0.0.0.0.)
#
# Stages 1-3 use cargo-chef so that the dependency build (the slow part) is a
# cached layer that only changes when Cargo.toml / Cargo.lock change; editing
# a .rs file rebuilds the workspace crates only. .dockerignore keeps target/
# (gigabytes) and .git out of the build context.

# Pinned: at least the workspace's rust-version and every locked
# dependency's (crates/quickorder/tests/deploy_files.rs checks both), and the
# toolchain the tests run with. Same Debian release as the runtime stage.
FROM rust:1.95-bookworm AS chef
RUN cargo install --locked --version 0.1.78 cargo-chef
# etcd-client's build script needs protoc *and* protobuf's well-known types
# (its rpc.proto imports google/protobuf/descriptor.proto). tools/protoc
# picks a system protoc only if it finds them, else the one shipped in the
# protoc-bin-vendored crate with its include/ folder (which `cargo chef cook`
# downloads like any dependency), so nothing is installed here. It is copied
# before `cargo chef cook`, which sees only recipe.json, and PROTOC names it
# explicitly (an explicit PROTOC wins over .cargo/config.toml): both builds
# below use the same protoc and etcd-client is built only once.
COPY tools/protoc /src/tools/protoc
ENV PROTOC=/src/tools/protoc
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
# The five binaries the image ships (not the bench or chaos tools).
RUN cargo build --release --locked --bins \
        -p coordinator -p order-srv -p stock-srv -p order-api -p quickorder \
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
