#!/bin/bash
# Consume right after produce: 1 GiB of 1 KiB records to a 2-partition topic (acks=1), then
# every record read back from the start. Two sides, interleaved: the default shard cache
# budget and a 16 MiB one (most reads from the file, as with the old 8 MiB per-partition
# caches). Prints one JSON line per run.
set -u
# Build first: cargo build --release -p coremq --bin coremq && cargo build --release
# -p coremq-tools --bin coremq-perf. The data goes to $DATA (default ./cap-data, on the disk
# under test).
BIN="$(dirname "$0")/../target/release"
DATA="${DATA:-cap-data}"
for round in 1 2 3; do
  for side in default small; do
    rm -rf $DATA; mkdir -p $DATA
    extra=""
    [ $side = small ] && extra="--cache-bytes 16777216"
    $BIN/coremq --data-dir $DATA --shards 2 --kafka-listener 127.0.0.1:19092 --admin-listener 127.0.0.1:19093 --mqtt-listener none $extra > /tmp/cap-broker.log 2>&1 &
    broker=$!
    for i in $(seq 50); do curl -sf http://127.0.0.1:19093/ready > /dev/null && break; sleep 0.2; done
    $BIN/coremq-perf produce --bootstrap 127.0.0.1:19092 --topic cap --partitions 2 --record-size 1024 --records 1048576 --acks 1 --threads 1 --json 2>/dev/null | tail -1 > /tmp/cap-produce.json
    $BIN/coremq-perf consume --bootstrap 127.0.0.1:19092 --topic cap --partitions 2 --records 1048576 --from earliest --threads 1 --json 2>/dev/null | tail -1 > /tmp/cap-consume.json
    hits=$(curl -s http://127.0.0.1:19093/metrics | grep -E '^coremq_cache_(hits|misses)_total' | tr '\n' ' ')
    kill -TERM $broker; wait $broker
    echo "{\"round\": $round, \"side\": \"$side\", \"produce\": $(cat /tmp/cap-produce.json), \"consume\": $(cat /tmp/cap-consume.json), \"cache\": \"$hits\"}"
  done
done
rm -rf $DATA
