"""A three-broker coremq cluster of the release binary for the benchmark scripts
(`failover-bench.py`, `replication-bench.py`): loopback ports, data under a temporary
folder, one shard each, every broker a controller voter."""

import os
import shutil
import signal
import socket
import subprocess
import time


def free_ports(count):
    """`count` distinct ports nothing listens on (all held open while picked)."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


class Cluster:
    def __init__(self, binary, root, extra):
        self.binary, self.root, self.extra = binary, root, extra
        # A port free when picked may be taken before a broker binds it: that broker exits
        # at once, and the cluster starts again on other ports.
        for _ in range(5):
            ports = free_ports(9)
            self.kafka, self.admin, voters = ports[0:3], ports[3:6], ports[6:9]
            self.voters = ",".join(f"{i}@127.0.0.1:{port}" for i, port in enumerate(voters))
            self.processes = [None] * 3
            for broker in range(3):
                self.start(broker)
            time.sleep(1)
            if all(process.poll() is None for process in self.processes):
                return
            self.stop()
        raise SystemExit(f"the brokers did not start: see {root}")

    def start(self, broker):
        log = open(os.path.join(self.root, f"broker{broker}.log"), "a")
        self.processes[broker] = subprocess.Popen(
            [
                self.binary,
                "--node-id", str(broker),
                "--controller-voters", self.voters,
                "--kafka-listener", f"127.0.0.1:{self.kafka[broker]}",
                "--admin-listener", f"127.0.0.1:{self.admin[broker]}",
                "--mqtt-listener", "none",
                "--data-dir", os.path.join(self.root, f"data{broker}"),
                "--shards", "1",
                "--no-pin",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

    def kill(self, broker):
        self.processes[broker].send_signal(signal.SIGKILL)
        self.processes[broker].wait()

    def stop(self):
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait()

    def close(self, failed):
        """Stops the brokers and removes their data (a benchmark writes gigabytes); the
        logs stay when the run failed or COREMQ_BENCH_KEEP_LOGS is set."""
        self.stop()
        if failed or os.environ.get("COREMQ_BENCH_KEEP_LOGS"):
            for broker in range(3):
                shutil.rmtree(os.path.join(self.root, f"data{broker}"), ignore_errors=True)
            print(f"broker logs kept in {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def bootstrap(self):
        return ",".join(f"127.0.0.1:{port}" for port in self.kafka)

    def cpu_seconds(self):
        """User and system CPU time of the three broker processes so far."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for process in self.processes:
            with open(f"/proc/{process.pid}/stat") as file:
                # After the command name in parentheses: utime and stime are fields 14, 15.
                fields = file.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / ticks


def wait_for(what, condition, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
