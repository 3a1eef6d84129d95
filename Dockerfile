# syntax=docker/dockerfile:1
# The mgpass-webhooks image: a Rust builder stage and a small Debian runtime stage holding only
# the release binary, CA certificates and the shared libraries it links (libssl; zlib and glibc
# come with the base). Runs as a numeric non-root user; the health check is the binary's own
# `healthcheck` subcommand (GET /livez), so no shell or curl is needed.
#
#   docker build -t mgpass-webhooks .
#   docker run --rm mgpass-webhooks --bootstrap-servers kafka:9092 check-config
#
# Never built here (no Docker engine on our machines); CI lints it with hadolint (scripts/check-deploy.sh).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
# rdkafka builds its bundled librdkafka with OpenSSL and zlib.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libssl-dev pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /build
# The release profile keeps line tables for profiling (Cargo.toml); the image does not need them.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    CARGO_TERM_COLOR=never
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The Avro schemas, compiled into the binary (src/avro/ include_str!s them).
COPY schemas ./schemas
# The workspace's other members (test kit, benchmark) must be present for cargo to load the
# workspace; only the product crate is built.
COPY testkit ./testkit
COPY bench ./bench
# The registry and the target directory are BuildKit cache mounts: a source change rebuilds only
# this crate, not its dependencies. The binary is copied out of the cache mount.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --locked --release -p mgpass-webhooks --bin mgpass-webhooks \
 && install -D -m 0755 target/release/mgpass-webhooks /out/mgpass-webhooks

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates: the trust store for the Kafka SSL listeners and http.ca_bundle-less setups
# (webhook TLS uses the built-in webpki roots); libssl3: librdkafka's TLS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/mgpass-webhooks /usr/local/bin/mgpass-webhooks
# Numeric, so Kubernetes' runAsNonRoot can verify it without an /etc/passwd entry.
USER 10001:10001
# No MGPASS_* settings here: the environment layer would override a mounted --config file (the
# Helm chart's ConfigMap). The built-in admin.listen default is 0.0.0.0:9464.
EXPOSE 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/mgpass-webhooks", "healthcheck", "--timeout-ms", "3000"]
ENTRYPOINT ["/usr/local/bin/mgpass-webhooks"]
CMD ["run"]
