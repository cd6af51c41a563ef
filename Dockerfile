# syntax=docker/dockerfile:1
#
# quota-proxy container image.
#
#   docker build -t quota-proxy:latest .
#   docker run --rm -p 8080:8080 -p 9090:9090 \
#     -v $PWD/my-config.toml:/etc/quota-proxy/quota-proxy.toml:ro \
#     -e OPENAI_KEY_A quota-proxy:latest run -c /etc/quota-proxy/quota-proxy.toml
#
# Inside a container, listen on 0.0.0.0 for anything outside it to reach the proxy; the config
# must then guard it ([proxy.auth] or allowed_networks, and [admin] token_env). As a Kubernetes
# sidecar the proxy stays on 127.0.0.1 (see examples/kubernetes/).

# ---- build ------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src

# Only what `cargo build` reads: the manifest and lock, the library and binary, and the
# declared bench target (Cargo refuses a manifest whose [[bench]] file is missing).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches/quota.rs ./benches/quota.rs

# The registry and target caches survive between builds (BuildKit); the binary is copied out
# of the cache mount so the next stage can see it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin quota-proxy \
    && install -D -m 0755 target/release/quota-proxy /out/quota-proxy

# ---- runtime ----------------------------------------------------------------------------
# distroless/cc: glibc, libgcc, CA certificates and a `nonroot` user (uid/gid 65532); no shell.
FROM gcr.io/distroless/cc-debian12:nonroot

COPY --from=build /out/quota-proxy /usr/local/bin/quota-proxy
# A default config (loopback listeners, no keys); mount your own over it or pass -c.
COPY config/quota-proxy.toml /etc/quota-proxy/quota-proxy.toml

# Relative paths (state/, certs/) resolve here, a directory the nonroot user owns. Mount a
# volume over it, or point [state] dir and [tls] at mounted paths, to keep them.
WORKDIR /home/nonroot
ENV QUOTA_PROXY_CONFIG=/etc/quota-proxy/quota-proxy.toml
# Numeric, so Kubernetes runAsNonRoot can verify it without a passwd lookup.
USER 65532:65532

# 8080: the proxy (HTTP_PROXY / HTTPS_PROXY / base URL); 9090: admin (/healthz, /readyz,
# /metrics, /status, dashboard).
EXPOSE 8080 9090

# SIGTERM drains in-flight requests (up to [proxy] drain_timeout) and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/quota-proxy"]
CMD ["run"]
