# tailfold container image: built in the Rust image, run as a non-root user in a
# slim Debian. No protoc needed: build.rs compiles the .proto files with protox.
#
#   docker build -t tailfold .
#   mkdir tailfold-config && cp config/container.yaml tailfold-config/tailfold.yaml \
#     && cp config/rules.yaml tailfold-config/
#   docker run -d -p 4770:4770 -p 4771:4771 -p 8125:8125/udp \
#     -v $PWD/tailfold-config:/etc/tailfold:ro -v tailfold-data:/var/lib/tailfold tailfold
#
# See docs/operations.md#container.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tailfold \
    && cp target/release/tailfold /usr/local/bin/tailfold

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/tailfold --shell /usr/sbin/nologin tailfold \
    && mkdir -p /etc/tailfold /var/lib/tailfold \
    && chown tailfold:tailfold /var/lib/tailfold
COPY --from=build /usr/local/bin/tailfold /usr/local/bin/tailfold
# The container config listens on all interfaces and keeps data in the volume.
COPY config/container.yaml /etc/tailfold/tailfold.yaml
COPY config/rules.yaml /etc/tailfold/rules.yaml

USER tailfold
WORKDIR /var/lib/tailfold
# Config (tailfold.yaml + rules.yaml; edit rules.yaml to hot-reload) and data.
VOLUME ["/etc/tailfold", "/var/lib/tailfold"]
# 4770 gRPC ingest + selections; 4771 HTTP remote write, /metrics, /-/reload,
# /-/rules, /api/v1/profile; 8125/udp statsd (when statsd.listen is set).
EXPOSE 4770 4771 8125/udp
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["tailfold", "health", "--target", "http://127.0.0.1:4771"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tailfold"]
CMD ["run", "-c", "/etc/tailfold/tailfold.yaml"]
