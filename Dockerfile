# rkms-server with every store and AWS KMS compiled in (cargo feature `full`), and the `rkms`
# command. No container engine runs on the CI machine, so this file is not built by the test
# suite; docker-compose.yml and deploy/compose.toml, which use it, are checked by
# crates/server/tests/deployment.rs.
FROM rust:1-bookworm AS build
# etcd-client's build needs protoc; the rest of the workspace compiles its protos in Rust.
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p rkms-server --features full -p rkms-cli

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 rkms \
    && useradd --system --uid 10001 --gid 10001 --home /var/lib/rkms --create-home rkms
COPY --from=build /src/target/release/rkms-server /src/target/release/rkms /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/rkms
EXPOSE 8080
# /healthz over plain HTTP with bash alone (the image carries no HTTP client). With
# [server.tls], set [server] health_port and point this at it instead.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && grep -q '\"ok\"' <&3"]
ENTRYPOINT ["rkms-server"]
CMD ["--config", "/etc/rkms/rkms.toml", "--data-dir", "/var/lib/rkms"]
