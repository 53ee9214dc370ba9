# rkms-server with every store and AWS KMS compiled in (cargo feature `full`).
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p rkms-server --features full

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/rkms --create-home rkms
COPY --from=build /src/target/release/rkms-server /usr/local/bin/rkms-server
USER rkms
WORKDIR /var/lib/rkms
EXPOSE 8080
ENTRYPOINT ["rkms-server"]
CMD ["--config", "/etc/rkms/rkms.toml", "--data-dir", "/var/lib/rkms"]
