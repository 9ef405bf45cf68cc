#!/usr/bin/env python3
"""The authorizer benchmark: keygate answering Envoy's ext_authz Check over gRPC, and the
same decision in the authorizer's HTTP mode, beside the proxy forwarding the same request;
a cache-hit key (the file store: the key is looked up in memory) and the Redis limiter
(a redis-server of its own on a free port).

    cargo build --release --locked --bin keygate --bench authorizer_load
    python3 benches/authorizer/run.py [--rounds 3] [--duration 8] [--rates 1000,5000] [--out FILE.md]

For each round and each target (grpc: Check on the authorizer listener, from tonic's
client; grpc-h2: the same Check from a bare HTTP/2 client, so that the latency is less
the client's; http: `GET` on the
authorizer listener, Envoy's HTTP-mode convention; proxy: `GET` through the proxy
listener to an nginx upstream), the load client (benches/authorizer/load.rs) runs at a
fixed rates well below saturation, then closed-loop (saturation). keygate's CPU per
decision is the whole process's utime + stime (/proc/PID/stat) over the phase, divided by
the requests answered. Every server listens on a free port of 127.0.0.1 and is stopped at
the end. Needs redis-server and nginx (Debian packages).
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGETS = ["grpc", "grpc-h2", "http", "proxy"]
MODES = {"grpc": "grpc", "grpc-h2": "grpc-h2", "http": "http", "proxy": "http"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, deadline=20.0):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {deadline} s")


def cpu_seconds(pid):
    """utime + stime of the whole process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def loadavg():
    return Path("/proc/loadavg").read_text().split()[:3]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8, help="seconds per phase")
    parser.add_argument("--rates", default="1000,5000", help="the fixed rates (requests a second), comma-separated")
    parser.add_argument("--connections", type=int, default=2, help="connections at the fixed rate")
    parser.add_argument("--saturation-connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="keygate's worker threads")
    parser.add_argument("--keygate", default=str(ROOT / "target/release/keygate"))
    parser.add_argument("--load", default=None, help="the load client (default: the newest release build)")
    parser.add_argument("--out", default=None, help="write the Markdown report here (and .json beside it)")
    args = parser.parse_args()

    load = args.load or newest_load_client()
    work = Path(tempfile.mkdtemp(prefix="keygate-authz-bench-"))
    procs = []

    def start(argv, log, env=None):
        p = subprocess.Popen(argv, stdout=open(work / log, "w"), stderr=subprocess.STDOUT, env=env)
        procs.append(p)
        return p

    try:
        # Redis (the limiter), no persistence.
        redis_port = free_port()
        (work / "redis").mkdir()
        redis = start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                       "--appendonly", "no", "--dir", str(work / "redis")], "redis.out")
        wait_port(redis_port)

        # The upstream of the proxy target: nginx answering 200 from memory.
        upstream_port = free_port()
        (work / "tmp").mkdir()
        conf = (ROOT / "benches/load/upstream.nginx.conf").read_text()
        conf = conf.replace("@DIR@", str(work)).replace("@UPSTREAM_PORT@", str(upstream_port))
        (work / "upstream.conf").write_text(conf)
        start(["nginx", "-p", str(work), "-c", str(work / "upstream.conf")], "upstream.out")
        wait_port(upstream_port)

        # keygate: the load benchmark's policy, a proxy listener, an authorizer listener,
        # the file key store and the Redis limiter (refusing if Redis does not answer, so
        # that every 200 was counted in Redis).
        proxy_port, authz_port, admin_port = free_port(), free_port(), free_port()
        routes = (ROOT / "benches/load/routes.toml").read_text().replace("@UPSTREAM_PORT@", str(upstream_port))
        (work / "routes.toml").write_text(routes)
        (work / "peppers").write_text("p1=" + os.urandom(24).hex() + "\n")
        os.chmod(work / "peppers", 0o600)
        (work / "keygate.toml").write_text(f"""policy = "routes.toml"

[listen]
address = "127.0.0.1:{proxy_port}"

[authorizer]
address = "127.0.0.1:{authz_port}"

[admin]
address = "127.0.0.1:{admin_port}"

[server]
shutdown_grace = "1s"
workers = {args.workers}

[keys]
source = "file"
file = "keys.json"
pepper_file = "peppers"

[limits]
backend = "redis"
on_store_error = "deny"

[redis]
url = "redis://127.0.0.1:{redis_port}/0"
# Above the default: on a busy machine a Redis answer can take tens of milliseconds, and
# with on_store_error = "deny" a slower one is a 503.
timeout = "250ms"
""")
        cfg = str(work / "keygate.toml")
        env = dict(os.environ, RUST_LOG="warn")
        subprocess.run([args.keygate, "--config", cfg, "tenants", "create", "bench", "--plan", "bench"],
                       env=env, check=True, capture_output=True)
        created = subprocess.run([args.keygate, "--config", cfg, "keys", "create", "--tenant", "bench", "--name",
                                  "load", "--scopes", "bench:read", "--json"], env=env, check=True,
                                 capture_output=True, text=True)
        key = json.loads(created.stdout)["key"]
        keygate = start([args.keygate, "serve", "--config", cfg], "keygate.out", env=env)
        wait_port(admin_port)
        end = time.time() + 20
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=1).status == 200:
                    break
            except OSError:
                pass
            if time.time() > end:
                raise SystemExit(f"keygate not ready; see {work / 'keygate.out'}")
            time.sleep(0.1)

        addr = {"grpc": authz_port, "grpc-h2": authz_port, "http": authz_port, "proxy": proxy_port}
        runs = []
        load_before = loadavg()
        # keygate's own CPU with nothing to do (timers, background tasks): the floor under
        # the fixed-rate phases' figures.
        before = cpu_seconds(keygate.pid)
        time.sleep(5)
        idle_cpu_ms_per_s = (cpu_seconds(keygate.pid) - before) * 1000 / 5
        print(f"idle: keygate used {idle_cpu_ms_per_s:.1f} ms of CPU a second", flush=True)
        for round_ in range(args.rounds):
            for target in TARGETS:
                for phase, rate, connections in phases(args):
                    argv = [load, "--mode", MODES[target],
                            "--addr", f"127.0.0.1:{addr[target]}", "--key", key, "--rate", str(rate),
                            "--duration", str(args.duration), "--connections", str(connections)]
                    before = cpu_seconds(keygate.pid)
                    run = subprocess.run(argv, capture_output=True, text=True)
                    if run.returncode != 0:
                        print(f"round {round_ + 1} {target} {phase}: the load client failed:\n{run.stderr}", flush=True)
                        continue
                    out = run.stdout
                    cpu = cpu_seconds(keygate.pid) - before
                    result = json.loads(out.strip().splitlines()[-1])
                    # The warm-up request and the connection set-up count in the CPU too:
                    # one request in thousands.
                    result.update(target=target, phase=phase, round=round_ + 1, keygate_cpu_s=cpu,
                                  cpu_us_per_decision=cpu * 1e6 / max(result["requests"], 1))
                    runs.append(result)
                    print(f"round {round_ + 1} {target:5} {phase:10} {result['rps']:9.1f} req/s  "
                          f"p50 {result['p50_ms']:.3f} ms  p99 {result['p99_ms']:.3f} ms  "
                          f"cpu {result['cpu_us_per_decision']:.1f} us/decision  {result['statuses']}", flush=True)
        load_after = loadavg()
        redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
        report = summarise(runs, args, load_before, load_after, redis_version, idle_cpu_ms_per_s)
        print(report)
        if args.out:
            Path(args.out).write_text(report)
            Path(args.out).with_suffix(".json").write_text(json.dumps(runs, indent=1) + "\n")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(work, ignore_errors=True)


def phases(args):
    """(name, rate, connections) of each phase: the fixed rates, then saturation."""
    fixed = [(f"{rate}/s", rate, args.connections) for rate in map(int, args.rates.split(","))]
    return fixed + [("saturation", 0, args.saturation_connections)]


def newest_load_client():
    found = sorted((ROOT / "target/release/deps").glob("authorizer_load-*"), key=lambda p: p.stat().st_mtime)
    found = [p for p in found if os.access(p, os.X_OK) and p.suffix == ""]
    if not found:
        raise SystemExit("build the load client first: cargo build --release --locked --bench authorizer_load")
    return str(found[-1])


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def summarise(runs, args, load_before, load_after, redis_version, idle_cpu_ms_per_s):
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    lines = [
        f"keygate {commit}, {args.rounds} round(s) of {args.duration} s per phase, {args.workers} worker threads; "
        f"fixed rates {args.rates} req/s over {args.connections} connections, saturation closed-loop over "
        f"{args.saturation_connections}; {os.cpu_count()} CPUs, load average {' '.join(load_before)} before, "
        f"{' '.join(load_after)} after; {redis_version.split(' sha=')[0]}. Idle, keygate used "
        f"{idle_cpu_ms_per_s:.1f} ms of CPU a second.",
        "",
        "Medians over the rounds (CPU: the rounds' keygate CPU summed over their requests).",
        "",
        "| target | phase | req/s | p50 ms | p90 ms | p99 ms | keygate CPU µs / decision | statuses |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for target in TARGETS:
        for phase, _, _ in phases(args):
            rs = [r for r in runs if r["target"] == target and r["phase"] == phase]
            if not rs:
                lines.append(f"| {target} | {phase} | – | – | – | – | – | no run completed |")
                continue
            statuses = {}
            for r in rs:
                for s, n in r["statuses"].items():
                    statuses[s] = statuses.get(s, 0) + n
            cpu = sum(r["keygate_cpu_s"] for r in rs) * 1e6 / max(sum(r["requests"] for r in rs), 1)
            lines.append(
                f"| {target} | {phase} | {median([r['rps'] for r in rs]):,.0f} | {median([r['p50_ms'] for r in rs]):.3f} "
                f"| {median([r['p90_ms'] for r in rs]):.3f} | {median([r['p99_ms'] for r in rs]):.3f} | {cpu:.1f} "
                f"| {', '.join(f'{s}: {n}' for s, n in sorted(statuses.items()))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
