# syntax=docker/dockerfile:1
# The `signals` binary in a small runtime image. Used by docker-compose.yml
# (services `speed` and `serve`); build alone with `docker build -t signals .`
#
# Build args:
#   SIGNALS_FEATURES  cargo features of the `signals` package to enable, e.g.
#                     the Kafka / ScyllaDB / Redis backends (default: none,
#                     i.e. the package's default features)

# The builder must be bookworm like the runtime image below, so that the
# binary's glibc matches.
FROM rust:1.95-bookworm AS builder

# rdkafka builds its bundled librdkafka from source: a C/C++ toolchain, cmake
# and make (build-essential), plus pkg-config and the OpenSSL/zlib headers for
# the optional TLS/compression support.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential cmake pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

ARG SIGNALS_FEATURES=""
# Cache mounts keep the registry and the target dir between builds; the
# binary is copied out because the target dir is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p signals \
        ${SIGNALS_FEATURES:+--features "$SIGNALS_FEATURES"} \
    && install -m 0755 target/release/signals /usr/local/bin/signals

FROM debian:bookworm-slim

# ca-certificates and libssl3 in case a backend is built with TLS;
# tini reaps and forwards SIGTERM so `docker stop` is a graceful shutdown.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/signals --create-home signals

COPY --from=builder /usr/local/bin/signals /usr/local/bin/signals

USER signals
WORKDIR /var/lib/signals
# data_dir (the embedded backends, local state) lives in a volume.
ENV SIGNALS_DATA_DIR=/var/lib/signals/data
VOLUME ["/var/lib/signals"]
EXPOSE 8080

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["signals", "--help"]
