# syntax=docker/dockerfile:1
# sidewire container image: build with `docker build -t sidewire .`
# (or `docker compose up --build` for the full stack with Prometheus/Grafana).

# ---- build ----
FROM rust:1-bookworm AS builder
WORKDIR /src
# cmake: for crates that build C code (SQLite is bundled; TLS via aws-lc).
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
COPY . .
# Cache mounts keep the registry and target/ between builds; the binary is
# copied out of the cached target/ so the next stage can take it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && install -D -m 0755 target/release/sidewire /out/sidewire

# ---- runtime ----
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 sidewire \
 && useradd --system --uid 10001 --gid sidewire --home-dir /var/lib/sidewire --shell /usr/sbin/nologin sidewire \
 && install -d -o sidewire -g sidewire -m 0750 /var/lib/sidewire \
 && install -d -m 0755 /etc/sidewire

COPY --from=builder /out/sidewire /usr/local/bin/sidewire
COPY config/sidewire.toml /etc/sidewire/sidewire.toml

# Inside a container the sidecar must listen on all interfaces to be reachable
# through a published port, and keeps its store on the volume. Protect ingest
# and dashboards with auth.ingest_tokens / auth.dashboard_tokens
# (SIDEWIRE__AUTH__... or your own config file) when the port is exposed.
ENV SIDEWIRE__SERVER__LISTEN=0.0.0.0:8790 \
    SIDEWIRE__PERSIST__SQLITE_PATH=/var/lib/sidewire/sidewire.db

USER sidewire
WORKDIR /var/lib/sidewire
VOLUME ["/var/lib/sidewire"]
EXPOSE 8790

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["sidewire", "health", "--url", "http://127.0.0.1:8790/healthz"]

CMD ["sidewire", "serve", "--config", "/etc/sidewire/sidewire.toml"]
