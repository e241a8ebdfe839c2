#!/usr/bin/env bash
# coremq-perf against `kcat -P` producing the same records (N records of SIZE bytes, acks=1,
# librdkafka's batching: 1,000,000-byte batches, linger 5 ms) to the same kind of topic, one
# after the other, ROUNDS times. Prints each wall time and records/s.
# Usage: tools/kcat-compare.sh BOOTSTRAP [N] [SIZE] [PARTITIONS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
bootstrap="$1" records="${2:-1000000}" size="${3:-100}" partitions="${4:-6}" rounds="${5:-3}"
perf=target/release/coremq-perf
[ -x "$perf" ] || cargo build --release -q -p coremq-tools --bin coremq-perf
lines=$(mktemp)
trap 'rm -f "$lines"' EXIT
# The same bytes for both: coremq-perf writes random A-Z values of SIZE bytes.
python3 -c "
import random, string, sys
line = lambda: ''.join(random.choices(string.ascii_uppercase, k=$size))
sys.stdout.write('\n'.join(line() for _ in range($records)) + '\n')" > "$lines"
wall() { local start end; start=$(date +%s.%N); "$@" >/dev/null 2>&1; end=$(date +%s.%N); echo "$end - $start" | bc; }
for round in $(seq "$rounds"); do
  suffix="$$-$round"
  # Both topics created first with PARTITIONS partitions.
  $perf produce --bootstrap "$bootstrap" --topic "kcat-$suffix" --partitions "$partitions" --records 1 >/dev/null 2>&1
  $perf produce --bootstrap "$bootstrap" --topic "perf-$suffix" --partitions "$partitions" --records 1 >/dev/null 2>&1
  kcat_s=$(wall kcat -P -b "$bootstrap" -t "kcat-$suffix" -X acks=1 -X linger.ms=5 -X batch.size=1000000 -l "$lines")
  perf_s=$(wall $perf produce --bootstrap "$bootstrap" --topic "perf-$suffix" --records "$records" \
    --record-size "$size" --acks 1 --linger-ms 5 --batch-size 1000000 --threads 1)
  echo "round $round: kcat -P ${kcat_s}s ($(echo "$records / $kcat_s" | bc) records/s)  coremq-perf ${perf_s}s ($(echo "$records / $perf_s" | bc) records/s)  coremq-perf/kcat $(echo "scale=2; $kcat_s / $perf_s" | bc)"
done
