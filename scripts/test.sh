#!/usr/bin/env bash
# The one test command (README, CI): formatting, lints, and every test,
# end-to-end tests through real sockets included. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

# End-to-end tests talk to a real Prometheus (Debian's package).
if ! command -v prometheus >/dev/null 2>&1 && [ ! -x /usr/bin/prometheus ]; then
  echo "== installing prometheus"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; }
fi

# Cluster tests start a real etcd (Debian's etcd-server).
if ! command -v etcd >/dev/null 2>&1 && [ ! -x /usr/bin/etcd ]; then
  echo "== installing etcd-server"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends etcd-server >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq --no-install-recommends etcd-server; }
fi

# OTLP end-to-end tests drive the real OpenTelemetry Python SDK (PyPI).
if ! python3 -c "import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.grpc, opentelemetry.exporter.otlp.proto.http" >/dev/null 2>&1; then
  echo "== installing the OpenTelemetry Python SDK"
  if ! command -v pip3 >/dev/null 2>&1 && ! python3 -m pip --version >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends python3-pip >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-pip; }
  fi
  # Pinned: the versions the tests were written against.
  otel="opentelemetry-sdk==1.45.2 opentelemetry-exporter-otlp-proto-grpc==1.45.2 opentelemetry-exporter-otlp-proto-http==1.45.2"
  # shellcheck disable=SC2086
  python3 -m pip install -q $otel || python3 -m pip install -q --break-system-packages $otel
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  cargo test --locked --no-fail-fast
fi

echo "== doctests"
cargo test --doc --locked
