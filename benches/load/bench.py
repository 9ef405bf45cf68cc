#!/usr/bin/env python3
"""keygate's load benchmark: keygate against nginx, HAProxy and the bare upstream, on one
machine, in one run, interleaved over rounds. Run it through `bash benches/load/run.sh`
(which installs the tools and builds keygate); docs/benchmarks.md explains every figure.

Targets (all forward to one nginx `return 200` upstream with its own worker; every proxy
gets --workers worker processes/threads, 2 by default, checked in /proc at start):
  direct         the upstream itself
  nginx          nginx as a plain reverse proxy, keep-alive to the upstream
  haproxy        HAProxy likewise (nbthread), http-reuse always
  nginx-keymap   nginx with a static key map (401 without the key), a per-key limit_req
                 never reached, and an identity header: keygate's job done by hand
  keygate-local  keygate: key auth + scope check + local limiter (server.workers)
  keygate-redis  keygate: key auth + scope check + Redis limiter (a Redis of our own)
  keygate-tls    keygate-local's setup behind TLS (self-signed certificate)
  relay          (with --relay PATH) the floor: a byte relay on keygate's runtime layout
                 (benches/floor/relay.rs), no HTTP, no auth; what two loopback hops and
                 the runtime cost any proxy built like keygate
  keygate-3limits-redis  (with --three-limits) keygate-redis with a plan of three limits
                 (a 1 s burst, a minute, a monthly quota, none reached): what a plan as
                 SaaS sells it costs against the one-limit plan, in the same rounds

Each round: (A) throughput at saturation for every target in a rotated order (wrk,
closed loop; CPU user/system of each proxy's process tree from /proc/PID/stat), then
(B) system calls per request, a second saturation run per target counted by `perf stat`
on the syscall tracepoints (or `strace -c -f`), then (C) latency at fixed rates of
10/25/50/75% of *nginx's* saturation throughput just measured, for every target in the
same rotated order (oha, corrected for coordinated omission). The report gives medians
over rounds of per-round ratios, with min-max, and the performance targets met or not.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RESULTS = ROOT / "benches" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
FORBIDDEN_PORTS = {80, 443, 6379, 8443, 9090, 9091}
TARGETS = ["direct", "nginx", "haproxy", "nginx-keymap", "keygate-local", "keygate-redis", "keygate-tls"]
NGINXES = ["nginx", "nginx-keymap"]
KEYGATES = ["keygate-local", "keygate-redis", "keygate-tls"]
PROXIES = TARGETS[1:]
# The plan of keygate-3limits-redis (--three-limits): three limits none of which is reached.
THREE_LIMITS = """limits = [
  { name = "burst", requests = 100000000, window = "1s" },
  { name = "minute", requests = 100000000, window = "60s" },
  { name = "month", requests = 1000000000000, period = "month" },
]
"""
# Commands the limiter script runs inside Redis: INFO commandstats counts them like
# client commands, so they are left out of the round trips (see count_round_trips).
# The commands the limiter script runs inside Redis, this version's and the one before the
# summary fields (HINCRBY), so that old result files and new ones count alike.
SCRIPT_INTERNAL = {"time", "hmget", "hget", "hset", "hgetall", "hdel", "del", "hincrby", "pexpire"}


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes and /proc

class Processes:
    """Every process this script starts; all stopped at exit, by pid."""

    def __init__(self):
        self.children = []

    def start(self, name, argv, cwd=None, env=None, log_path=None):
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        self.children.append((name, proc))
        return proc

    def stop(self, proc, sig=signal.SIGTERM, timeout=10):
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self):
        for name, proc in reversed(self.children):
            # nginx: SIGQUIT is a graceful stop of master and workers; SIGTERM a fast one.
            self.stop(proc)
        self.children.clear()


def proc_children(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[1]) == pid:
                kids.append(int(entry))
    return kids


def threads_named(pid, prefix):
    """How many threads of `pid` have a name (comm) starting with `prefix`."""
    n = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            if Path(f"/proc/{pid}/task/{tid}/comm").read_text().startswith(prefix):
                n += 1
        except OSError:
            pass
    return n


def cpu_ticks_split(pids):
    """(utime, stime) of `pids` (every thread of each), in clock ticks."""
    user = system = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        user += int(fields[11])
        system += int(fields[12])
    return user, system


def cpu_ticks(pids):
    """utime + stime of `pids` (every thread of each), in clock ticks."""
    return sum(cpu_ticks_split(pids))


def context_switches(pids):
    """Context switches (voluntary + involuntary), summed over /proc/PID/task/*."""
    switches = 0
    for pid in pids:
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        switches += int(line.split()[1])
        except OSError:
            continue
    return switches


def status_kb(pid, field):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_kb(pids):
    """VmRSS summed over `pids` (shared pages counted once per process) and PSS summed
    (shared pages divided among the processes sharing them), in KiB."""
    rss = sum(status_kb(p, "VmRSS") or 0 for p in pids)
    pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            pss = None
            break
    return rss, pss


def machine_busy_ticks():
    """Busy ticks of the whole machine (all CPUs): every process, ours and others'."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields[:8]) - idle


def free_port(taken):
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in FORBIDDEN_PORTS and port not in taken:
            taken.add(port)
            return port


def wait_port(port, deadline=15.0, tls=False):
    end = time.time() + deadline
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing answers on 127.0.0.1:{port} after {deadline}s")


def http_get(url, headers=None, insecure=False):
    context = None
    if insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def run(argv, **kw):
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


def render(template, dest, values):
    text = (HERE / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    leftover = re.findall(r"@[A-Z_]+@", text)
    if leftover:
        raise SystemExit(f"{template}: unrendered {leftover}")
    Path(dest).write_text(text)


# ---------------------------------------------------------------- the setup

class Setup:
    def __init__(self, args, procs):
        self.args = args
        self.procs = procs
        self.dir = Path(tempfile.mkdtemp(prefix="keygate-load-"))
        (self.dir / "tmp").mkdir()
        self.ports = set()
        self.keygate_bin = Path(args.keygate)
        self.baseline_bin = Path(args.baseline) if args.baseline else None
        self.urls = {}
        self.pids = {}  # target -> main pid (nginx: master; children added at measure time)
        self.idle_rss_kb = {}
        self.idle_rss = {}
        self.workers = {}
        self.redis_port = None
        self.key = None
        self.syscall_method = None

    def start_all(self):
        d = self.dir
        up = free_port(self.ports)
        render("upstream.nginx.conf", d / "upstream.conf", {"DIR": d, "UPSTREAM_PORT": up})
        p = self.procs.start("upstream", ["nginx", "-p", str(d), "-c", str(d / "upstream.conf")],
                             log_path=d / "upstream.out")
        wait_port(up)
        self.upstream_pid = p.pid
        self.urls["direct"] = f"http://127.0.0.1:{up}/bench/items/42"
        self.pids["direct"] = p.pid

        port = free_port(self.ports)
        render("proxy.nginx.conf", d / "nginx.conf",
               {"DIR": d, "UPSTREAM_PORT": up, "NGINX_PORT": port, "WORKERS": self.args.workers})
        p = self.procs.start("nginx", ["nginx", "-p", str(d), "-c", str(d / "nginx.conf")], log_path=d / "nginx.out")
        wait_port(port)
        self.urls["nginx"] = f"http://127.0.0.1:{port}/bench/items/42"
        self.pids["nginx"] = p.pid

        port = free_port(self.ports)
        render("haproxy.cfg", d / "haproxy.cfg",
               {"DIR": d, "UPSTREAM_PORT": up, "HAPROXY_PORT": port, "WORKERS": self.args.workers})
        p = self.procs.start("haproxy", ["haproxy", "-db", "-f", str(d / "haproxy.cfg")], log_path=d / "haproxy.out")
        wait_port(port)
        self.urls["haproxy"] = f"http://127.0.0.1:{port}/bench/items/42"
        self.pids["haproxy"] = p.pid

        if self.args.relay:
            # The floor (benches/floor/relay.rs): bytes moved, nothing else.
            port = free_port(self.ports)
            p = self.procs.start("relay", [self.args.relay, str(port), str(up), str(self.args.workers)],
                                 log_path=d / "relay.out")
            wait_port(port)
            self.urls["relay"] = f"http://127.0.0.1:{port}/bench/items/42"
            self.pids["relay"] = p.pid

        # Redis for keygate-redis: ours, on a free port, no persistence.
        self.redis_port = free_port(self.ports)
        (d / "redis").mkdir()
        p = self.procs.start("redis", ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no", "--dir", str(d / "redis")],
                             log_path=d / "redis.out")
        wait_port(self.redis_port)
        self.redis_pid = p.pid

        # TLS: a self-signed certificate for 127.0.0.1.
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(d / "tls.key"), "-out", str(d / "tls.crt"), "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])

        # The key store (file store, with a pepper) is made once, in keygate-local's
        # folder, and copied to the others: one tenant on a plan that never refuses, one
        # key with the route's scope.
        pepper = "p1=" + os.urandom(24).hex() + "\n"
        for variant in KEYGATES:
            kd = d / variant
            kd.mkdir()
            port, admin, api = free_port(self.ports), free_port(self.ports), free_port(self.ports)
            tls = ""
            if variant == "keygate-tls":
                tls = f'tls = {{ cert = "{d / "tls.crt"}", key = "{d / "tls.key"}" }}'
            redis = ""
            backend = "local"
            if variant.endswith("-redis"):
                backend = "redis"
                redis = f'[redis]\nurl = "redis://127.0.0.1:{self.redis_port}/0"'
            render("keygate.toml", kd / "keygate.toml",
                   {"PORT": port, "ADMIN_PORT": admin, "API_PORT": api, "TLS": tls, "BACKEND": backend,
                    "REDIS": redis, "WORKERS": self.args.workers})
            render("routes.toml", kd / "routes.toml", {"UPSTREAM_PORT": up})
            if "3limits" in variant:
                routes = (kd / "routes.toml").read_text()
                one = "requests_per_minute = 100000000\n"
                if one not in routes:
                    raise SystemExit("routes.toml: the bench plan's one limit is not where --three-limits expects it")
                (kd / "routes.toml").write_text(routes.replace(one, THREE_LIMITS))
            (kd / "peppers").write_text(pepper)
            os.chmod(kd / "peppers", 0o600)
            scheme = "https" if variant == "keygate-tls" else "http"
            self.urls[variant] = f"{scheme}://127.0.0.1:{port}/bench/items/42"
            self.admin = getattr(self, "admin", {})
            self.admin[variant] = admin
        cfg = str(d / "keygate-local" / "keygate.toml")
        env = dict(os.environ, RUST_LOG="warn")
        run([str(self.keygate_bin), "--config", cfg, "tenants", "create", "bench", "--plan", "bench"], env=env)
        created = json.loads(run([str(self.keygate_bin), "--config", cfg, "keys", "create", "--tenant", "bench",
                                  "--name", "load", "--scopes", "bench:read", "--json"], env=env).stdout)
        self.key = created["key"]
        for variant in KEYGATES[1:]:
            shutil.copy2(d / "keygate-local" / "keys.json", d / variant / "keys.json")

        # nginx with the same key in a static map (so it is made after the key).
        if not re.fullmatch(r"[A-Za-z0-9_]+", self.key):
            raise SystemExit(f"the key {self.key!r} cannot go into an nginx map as it is")
        port = free_port(self.ports)
        render("keymap.nginx.conf", d / "nginx-keymap.conf",
               {"DIR": d, "UPSTREAM_PORT": up, "PORT": port, "WORKERS": self.args.workers, "KEY": self.key})
        p = self.procs.start("nginx-keymap", ["nginx", "-p", str(d), "-c", str(d / "nginx-keymap.conf")],
                             log_path=d / "nginx-keymap.out")
        wait_port(port)
        self.urls["nginx-keymap"] = f"http://127.0.0.1:{port}/bench/items/42"
        self.pids["nginx-keymap"] = p.pid
        for variant in KEYGATES:
            kd = d / variant
            binary = self.baseline_bin if variant.startswith("baseline-") else self.keygate_bin
            p = self.procs.start(variant, [str(binary), "serve", "--config", str(kd / "keygate.toml")],
                                 env=env, log_path=kd / "keygate.out")
            self.pids[variant] = p.pid
        for variant in KEYGATES:
            wait_port(self.admin[variant])
            end = time.time() + 15
            while http_get(f"http://127.0.0.1:{self.admin[variant]}/readyz")[0] != 200:
                if time.time() > end:
                    raise SystemExit(f"{variant} not ready; see {d / variant / 'keygate.out'}")
                time.sleep(0.1)
        time.sleep(1.0)
        # Idle memory, before any traffic: keygate's own figure (VmRSS of its one process)
        # and, for every proxy, the sum over its processes (RSS, and PSS, which counts
        # the pages nginx's master and workers share once).
        for target in TARGETS:
            pids = self.target_pids(target)
            rss, pss = rss_kb(pids)
            self.idle_rss[target] = {"processes": len(pids), "rss_kb": rss, "pss_kb": pss}
        for variant in KEYGATES:
            self.idle_rss_kb[variant] = status_kb(self.pids[variant], "VmRSS")
            self.check_threads(variant)
        self.check_workers()
        # Every target answers 200 to the benchmark request; keygate and nginx-keymap refuse
        # a request without a key, or with another one, with 401.
        for target in TARGETS:
            status, _ = http_get(self.urls[target], self.auth_header(), insecure=True)
            if status != 200:
                raise SystemExit(f"{target}: GET {self.urls[target]} answered {status}")
        wrong = {"Authorization": "Bearer kg_" + "0" * 28}
        for target in ["nginx-keymap"] + KEYGATES:
            for headers in (None, wrong):
                status, _ = http_get(self.urls[target], headers, insecure=True)
                if status != 401:
                    raise SystemExit(f"{target}: GET without the key answered {status}, not 401")
        self.redis_version = run(["redis-server", "--version"]).stdout.strip()

    def check_workers(self):
        """Every proxy runs `--workers` workers: nginx's worker processes (children of the
        master), HAProxy's threads, keygate's `keygate-worker-N` threads. Counted in /proc,
        so the report states what ran, not what was asked."""
        for target in PROXIES:
            pid = self.pids[target]
            if target in NGINXES:
                n = 0
                for kid in proc_children(pid):
                    try:
                        if b"worker process" in Path(f"/proc/{kid}/cmdline").read_bytes():
                            n += 1
                    except OSError:
                        pass
                kind = "worker processes"
            elif target == "haproxy":
                n = len(os.listdir(f"/proc/{pid}/task"))
                kind = "threads"
            else:
                prefix = "relay-worker" if target == "relay" else "keygate-worker"
                n = threads_named(pid, prefix)
                kind = f"{prefix} threads"
            self.workers[target] = {"count": n, "kind": kind}
            if n != self.args.workers:
                raise SystemExit(f"{target} runs {n} {kind}, not --workers {self.args.workers}")

    def check_threads(self, variant):
        """keygate's threads: `keygate-worker-N` serve the proxy (`server.workers`, one per
        CPU by default); the main thread runs the admin listeners and watchers."""
        pid = self.pids[variant]
        names = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                names.append(Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip())
            except OSError:
                pass
        self.keygate_threads = sorted(names)

    def auth_header(self):
        return {"Authorization": f"Bearer {self.key}"}

    def target_pids(self, target):
        """The processes whose CPU counts for a target: the proxy (nginx: master and
        workers; HAProxy: one process, two threads; keygate: one process)."""
        main = self.pids[target]
        return [main] + proc_children(main)


# ---------------------------------------------------------------- measurements

def redis_commandstats(port):
    out = run(["redis-cli", "-p", str(port), "INFO", "commandstats"]).stdout
    calls = {}
    for line in out.splitlines():
        m = re.match(r"cmdstat_([^:]+):calls=(\d+)", line)
        if m:
            calls[m.group(1)] = int(m.group(2))
    return calls


def count_round_trips(before, after):
    """Client-issued commands between two INFO commandstats snapshots: every command but
    those the limiter script runs inside (SCRIPT_INTERNAL) and this script's own INFO.
    Keys are in the file store, so keygate itself sends no HGETALL etc."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    client = {k: v for k, v in delta.items() if v and k not in SCRIPT_INTERNAL and k != "info"}
    scripts = delta.get("evalsha", 0) + delta.get("eval", 0)
    return sum(client.values()), client, scripts, delta.get("time", 0)


def keygate_counters(setup, target):
    if target not in KEYGATES:
        return None
    _, text = http_get(f"http://127.0.0.1:{setup.admin[target]}/metrics")
    out = {"store_errors": 0.0, "store_fallbacks": 0.0, "requests_200": 0.0, "requests_other": 0.0}
    for line in text.splitlines():
        if line.startswith("keygate_store_errors_total"):
            out["store_errors"] += float(line.split()[-1])
        elif line.startswith("keygate_ratelimit_store_fallback_total"):
            out["store_fallbacks"] += float(line.split()[-1])
        elif line.startswith("keygate_requests_total"):
            key = "requests_200" if 'status="200"' in line else "requests_other"
            out[key] += float(line.split()[-1])
    return out


def diff(after, before):
    if after is None or before is None:
        return None
    return {k: after[k] - before[k] for k in after}


class Meter:
    """CPU of the target's processes, of the upstream, of Redis, and of the whole machine
    over one measurement; Redis commands; keygate's own counters."""

    def __init__(self, setup, target):
        self.setup, self.target = setup, target
        self.pids = setup.target_pids(target)
        self.upstream = [setup.upstream_pid] + proc_children(setup.upstream_pid) if target != "direct" else []
        self.redis_pids = [setup.redis_pid]

    def __enter__(self):
        s = self.setup
        self.t0 = time.time()
        self.cpu0 = cpu_ticks_split(self.pids)
        self.switches0 = context_switches(self.pids)
        self.upstream0 = cpu_ticks(self.upstream)
        self.redis_cpu0 = cpu_ticks(self.redis_pids)
        self.busy0 = machine_busy_ticks()
        self.redis0 = redis_commandstats(s.redis_port) if self.target.endswith("-redis") else None
        self.kg0 = keygate_counters(s, self.target)
        return self

    def __exit__(self, *exc):
        s = self.setup
        self.wall = time.time() - self.t0
        user, system = cpu_ticks_split(self.pids)
        self.user_s = (user - self.cpu0[0]) / CLK_TCK
        self.sys_s = (system - self.cpu0[1]) / CLK_TCK
        self.cpu_s = self.user_s + self.sys_s
        self.switches = context_switches(self.pids) - self.switches0
        self.upstream_s = (cpu_ticks(self.upstream) - self.upstream0) / CLK_TCK
        self.redis_s = (cpu_ticks(self.redis_pids) - self.redis_cpu0) / CLK_TCK
        self.other_s = self.upstream_s + self.redis_s
        self.busy_s = (machine_busy_ticks() - self.busy0) / CLK_TCK
        self.redis = None
        if self.redis0 is not None:
            self.redis = count_round_trips(self.redis0, redis_commandstats(s.redis_port))
        self.kg = diff(keygate_counters(s, self.target), self.kg0)
        return False

    def record(self, requests, loadgen_cpu_s):
        def us(seconds):
            return round(1e6 * seconds / requests, 3) if requests else None

        out = {
            "target_cpu_s": round(self.cpu_s, 3),
            "target_user_s": round(self.user_s, 3),
            "target_sys_s": round(self.sys_s, 3),
            "cpu_s_per_1000": round(1000 * self.cpu_s / requests, 5) if requests else None,
            # The same per request in µs, and split: user space and kernel (system calls,
            # and on loopback the receiving side's TCP work done in the sender's time).
            "cpu_us_per_request": us(self.cpu_s),
            "cpu_user_us_per_request": us(self.user_s),
            "cpu_sys_us_per_request": us(self.sys_s),
            "redis_cpu_us_per_request": us(self.redis_s),
            "upstream_cpu_us_per_request": us(self.upstream_s),
            "context_switches_per_request": round(self.switches / requests, 3) if requests else None,
            "upstream_cpu_s_per_1000": round(1000 * self.upstream_s / requests, 5) if requests else None,
            "redis_cpu_s_per_1000": round(1000 * self.redis_s / requests, 5) if requests else None,
            "loadgen_cpu_s_per_1000": round(1000 * loadgen_cpu_s / requests, 5) if requests else None,
            "machine_busy_s": round(self.busy_s, 2),
            "loadgen_cpu_s": round(loadgen_cpu_s, 2),
            # CPU the machine spent outside this measurement's own processes (target,
            # upstream, Redis, load generator), per second: the noise from other work.
            "foreign_cpu": round(max(0.0, self.busy_s - self.cpu_s - self.other_s - loadgen_cpu_s) / self.wall, 2),
        }
        if self.redis is not None:
            total, by_command, scripts, inner_time = self.redis
            out["redis_client_commands"] = total
            out["redis_commands_by_name"] = by_command
            out["redis_script_calls"] = scripts
            out["redis_round_trips_per_request"] = round(total / requests, 4) if requests else None
            out["redis_checks_per_script_call"] = round(requests / scripts, 2) if scripts else None
            out["redis_time_calls_inside_scripts"] = inner_time
        if self.kg is not None:
            out["keygate"] = self.kg
        return out


def run_child(argv, timeout):
    """Runs a load generator; returns (stdout, stderr, its CPU seconds)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError(f"{argv[0]} did not finish in {timeout}s")
    # Its CPU time shows in RUSAGE_CHILDREN once reaped (see children_cpu).
    return proc.returncode, out, err


def children_cpu():
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wrk(setup, target, seconds, connections, threads):
    url = setup.urls[target]
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
            "-H", f"Authorization: Bearer {setup.key}", url]
    return argv


def parse_wrk(text):
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", text)
    if not m:
        raise RuntimeError("cannot parse wrk output:\n" + text)
    requests = int(m.group(1))
    duration = float(m.group(2)) * (0.001 if m.group(3) == "ms" else 1.0)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {
        "requests": requests,
        "seconds": duration,
        "rps": round(requests / duration, 1),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
    }


def saturation(setup, target, args):
    # Warm-up: connections, caches, the limiter's key, CPU frequency.
    run_child(wrk(setup, target, args.warmup, args.connections, args.threads), args.warmup + 30)
    with Meter(setup, target) as meter:
        cpu0 = children_cpu()
        code, out, err = run_child(wrk(setup, target, args.duration, args.connections, args.threads),
                                   args.duration + 60)
        loadgen = children_cpu() - cpu0
    if code != 0:
        raise RuntimeError(f"wrk failed on {target}: {err}")
    result = parse_wrk(out)
    result.update(meter.record(result["requests"], loadgen))
    return result


# The system calls counted one by one (the others are counted in the total, as "other"):
# those a proxy makes per request, and a few it may. Each tracepoint takes tens of ms to
# set up, so not all ~360 of them.
SYSCALLS = ["read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg", "epoll_wait",
            "epoll_pwait", "epoll_ctl", "getsockopt", "setsockopt", "accept4", "connect", "socket", "shutdown",
            "close", "futex", "sched_yield", "clock_gettime", "madvise", "mmap", "munmap", "brk", "statx",
            "timer_settime", "ioctl", "io_uring_enter", "sendfile64", "splice"]
TRACEFS = [Path("/sys/kernel/tracing/events/syscalls"), Path("/sys/kernel/debug/tracing/events/syscalls")]


def syscall_method(choice="auto"):
    """How system calls are counted on this machine: `perf stat` on the syscall entry
    tracepoints (counted in the kernel: cheap, the target keeps most of its speed), else
    `strace -c -f` (every call stops the target: slow, but the counts are the same kind),
    else None."""
    if choice in ("auto", "perf") and shutil.which("perf"):
        p = subprocess.run(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter,syscalls:sys_enter_write",
                            "--", "true"], capture_output=True, text=True)
        if p.returncode == 0 and parse_perf_stat(p.stderr).get("*"):
            return "perf stat"
    if choice in ("auto", "strace") and shutil.which("strace"):
        p = subprocess.run(["strace", "-c", "-f", "-o", os.devnull, "true"], capture_output=True, text=True)
        if p.returncode == 0:
            return "strace -c -f"
    return None


def perf_syscall_events():
    names = SYSCALLS
    for folder in TRACEFS:
        if folder.is_dir():
            names = [n for n in SYSCALLS if (folder / f"sys_enter_{n}").is_dir()]
            break
    return ["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{n}" for n in names]


def parse_perf_stat(text):
    """`perf stat -x,` output -> {syscall: calls}, the total (raw_syscalls) as "*"."""
    calls = {}
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) >= 3 and parts[0].isdigit():
            if parts[2] == "raw_syscalls:sys_enter":
                calls["*"] = int(parts[0])
            elif parts[2].startswith("syscalls:sys_enter_") and int(parts[0]):
                calls[parts[2][len("syscalls:sys_enter_"):]] = int(parts[0])
    return calls


def parse_strace_summary(text):
    """`strace -c` summary -> {syscall: calls}."""
    calls = {}
    for line in text.splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?([a-z_0-9]+)\s*$", line)
        if m and m.group(2) != "total":
            calls[m.group(2)] = calls.get(m.group(2), 0) + int(m.group(1))
    return calls


class PerfControl:
    """`perf stat -D -1 --control fifo:ctl,ack`: started with its counters disabled, enabled
    and disabled on command; each command is acknowledged once perf has carried it out, so
    the counting window is exactly the load's, and perf's set-up time is outside it."""

    def __init__(self, argv, folder):
        self.ctl_path, self.ack_path = folder / "perf-ctl.fifo", folder / "perf-ack.fifo"
        for f in (self.ctl_path, self.ack_path):
            if f.exists():
                f.unlink()
            os.mkfifo(f)
        self.proc = subprocess.Popen(argv[:2] + ["-D", "-1", "--control", f"fifo:{self.ctl_path},{self.ack_path}"]
                                     + argv[2:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        end = time.time() + 60
        while True:
            try:
                self.ctl = os.open(self.ctl_path, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > end:
                    raise RuntimeError("perf stat did not start: " + (self.proc.communicate()[1] or ""))
                time.sleep(0.02)
        self.ack = os.open(self.ack_path, os.O_RDONLY | os.O_NONBLOCK)

    def command(self, word):
        import select
        os.write(self.ctl, word.encode() + b"\n")
        ready, _, _ = select.select([self.ack], [], [], 60)
        if not ready or b"ack" not in os.read(self.ack, 16):
            raise RuntimeError(f"perf stat did not acknowledge {word!r}")

    def finish(self):
        self.proc.send_signal(signal.SIGINT)
        _, text = self.proc.communicate(timeout=60)
        os.close(self.ctl)
        os.close(self.ack)
        return text


def count_syscalls(setup, target, args):
    """System calls per request of the target's processes (all threads) under the same
    saturating load as phase A, in a run of its own: counting costs the target a little
    (perf) or a lot (strace), so these runs' req/s and CPU are not the rounds' figures."""
    method = setup.syscall_method
    pids = setup.target_pids(target)
    load_argv = wrk(setup, target, args.syscall_duration, args.connections, args.threads)
    if method == "perf stat":
        perf = PerfControl(["perf", "stat", "-x,", "-e", ",".join(perf_syscall_events()),
                            "-p", ",".join(str(p) for p in pids)], setup.dir)
        try:
            perf.command("enable")
            code, out, err = run_child(load_argv, args.syscall_duration + 60)
            perf.command("disable")
        finally:
            text = perf.finish()
        calls = parse_perf_stat(text)
        total = calls.pop("*", None)
        if total is None:
            raise RuntimeError(f"perf stat counted nothing on {target}:\n{text}")
        if total > sum(calls.values()):
            calls["other"] = total - sum(calls.values())
    else:
        out_file = setup.dir / f"strace-{target}.txt"
        argv = ["strace", "-c", "-f", "-o", str(out_file)] + [x for p in pids for x in ("-p", str(p))]
        tracer = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # attached to every thread before the load starts
        try:
            code, out, err = run_child(load_argv, args.syscall_duration + 60)
        finally:
            tracer.send_signal(signal.SIGINT)
            tracer.communicate(timeout=60)
        calls = parse_strace_summary(out_file.read_text())
        total = sum(calls.values())
    if code != 0:
        raise RuntimeError(f"wrk failed on {target}: {err}")
    load = parse_wrk(out)
    requests = load["requests"]
    return {
        "method": method,
        "requests": requests,
        "rps_while_counting": load["rps"],
        "syscalls": total,
        "syscalls_per_request": round(total / requests, 3) if requests else None,
        "by_syscall_per_request": {k: round(v / requests, 4) for k, v in sorted(calls.items(), key=lambda kv: -kv[1])
                                   if requests and v / requests >= 0.0005},
    }


def oha(setup, target, rate, args):
    argv = [args.oha, "--no-tui", "--output-format", "json", "-q", str(rate), "--latency-correction", "-z", f"{args.latency_duration}s",
            "-c", str(args.connections), "-H", f"Authorization: Bearer {setup.key}"]
    if setup.urls[target].startswith("https"):
        argv.append("--insecure")
    argv.append(setup.urls[target])
    return argv


def fixed_rate(setup, target, rate, args):
    with Meter(setup, target) as meter:
        cpu0 = children_cpu()
        code, out, err = run_child(oha(setup, target, rate, args), args.latency_duration + 60)
        loadgen = children_cpu() - cpu0
    if code != 0:
        raise RuntimeError(f"oha failed on {target}: {err}")
    data = json.loads(out)
    summary = data["summary"]
    codes = {str(k): v for k, v in (data.get("statusCodeDistribution") or {}).items()}
    responses = sum(codes.values())
    pct = data.get("latencyPercentiles") or {}

    def ms(key):
        v = pct.get(key)
        return None if v is None else round(v * 1000, 4)

    result = {
        "rate": rate,
        "achieved_rps": round(summary.get("requestsPerSec") or 0, 1),
        "responses": responses,
        "non_200": responses - codes.get("200", 0),
        # Requests still in flight at the end of -z are aborted: not errors.
        "errors": sum(v for k, v in (data.get("errorDistribution") or {}).items() if "deadline" not in k),
        "p50_ms": ms("p50"),
        "p99_ms": ms("p99"),
        "p999_ms": ms("p99.9"),
        "max_ms": round((summary.get("slowest") or 0) * 1000, 3),
    }
    result.update(meter.record(responses, loadgen))
    return result


def perf_works():
    if not shutil.which("perf"):
        return False
    p = subprocess.run(["perf", "stat", "-e", "task-clock", "true"], capture_output=True, text=True)
    return p.returncode == 0


def perf_report(data, sort, limit):
    p = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", sort,
                        "--percent-limit", str(limit)], capture_output=True, text=True)
    lines = []
    for line in p.stdout.splitlines():
        if line.strip() and not line.startswith("#"):
            lines.append(re.sub(r"\s+-\s+-\s*$", "", line).rstrip())
    return "\n".join(lines)


def syscall_summary(text):
    """Sums `perf trace -s` tables over threads: syscall -> calls."""
    calls = {}
    for line in text.splitlines():
        m = re.match(r"\s+([a-z_0-9]+)\s+(\d+)\s+(\d+)\s+[\d.]+", line)
        if m:
            calls[m.group(1)] = calls.get(m.group(1), 0) + int(m.group(2))
    return calls


def profile(setup, target, args, out_stem):
    """Where one proxy's CPU goes under saturation: a flat CPU profile (`perf record -e
    cpu-clock`, a software event that works in VMs without hardware counters: self time
    per shared object and per symbol), then the system calls per request (`perf trace
    -s`, over a shorter run: tracing slows the target, so its req/s are not comparable)."""
    pids = ",".join(str(p) for p in setup.target_pids(target))
    data = setup.dir / f"perf-{target}.data"
    seconds = args.profile_seconds
    run_child(wrk(setup, target, args.warmup, args.connections, args.threads), args.warmup + 30)
    perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "1999", "-p", pids, "-o", str(data),
                             "--", "sleep", str(seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    cpu0 = cpu_ticks(setup.target_pids(target))
    _, out, _ = run_child(wrk(setup, target, seconds, args.connections, args.threads), seconds + 60)
    cpu_s = (cpu_ticks(setup.target_pids(target)) - cpu0) / CLK_TCK
    perf.wait(seconds + 30)
    sat = parse_wrk(out)

    trace_seconds = max(2, seconds // 2)
    tracer = subprocess.Popen(["perf", "trace", "-s", "-p", pids, "--", "sleep", str(trace_seconds)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(0.3)
    _, tout, _ = run_child(wrk(setup, target, max(1, trace_seconds - 1), args.connections, args.threads),
                           trace_seconds + 60)
    traced, _ = tracer.communicate(timeout=trace_seconds + 60)
    requests = parse_wrk(tout)["requests"]
    calls = syscall_summary(traced)
    per_request = {k: round(v / requests, 3) for k, v in sorted(calls.items(), key=lambda kv: -kv[1]) if requests}

    text = (f"# {target}: perf record -e cpu-clock -F 1999 -p <{pids}> over {seconds}s of "
            f"wrk -t{args.threads} -c{args.connections}: {sat['rps']:.0f} req/s under perf, "
            f"{1e6 * cpu_s / max(sat['requests'], 1):.1f} us of CPU per request\n"
            "# self time; [k] kernel symbols are the process's own TCP/loopback, epoll, futex and\n"
            "# scheduler work (on loopback, a send also wakes the receiver, in the sender's time)\n\n"
            "## by shared object\n" + perf_report(data, "dso", 0.5)
            + "\n\n## by symbol (>= 0.4%)\n" + perf_report(data, "symbol", 0.4)
            + f"\n\n## system calls per request (perf trace -s over {requests} requests; "
              f"{sum(calls.values()) / max(requests, 1):.2f} in all)\n"
            + "\n".join(f"    {v:8.3f}  {k}" for k, v in per_request.items() if v >= 0.001) + "\n")
    path = Path(f"{out_stem}-profile-{target}.txt")
    path.write_text(text)
    log(f"wrote {path}")
    kernel = re.search(r"([\d.]+)%\s+\[kernel", perf_report(data, "dso", 0.5))
    return {"file": path.name, "kernel_share": f"{kernel.group(1)}%" if kernel else None,
            "us_cpu_per_request": round(1e6 * cpu_s / max(sat["requests"], 1), 2),
            "syscalls_per_request": round(sum(calls.values()) / max(requests, 1), 3), "syscalls": per_request}


PROFILED = ["nginx", "haproxy", "nginx-keymap", "keygate-local", "keygate-redis"]


# ---------------------------------------------------------------- the run

def rotated(items, r):
    k = r % len(items)
    return items[k:] + items[:k]


def median_spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def goals(rounds, setup, args):
    """Issue 13's targets, each as the median (min – max) of a per-round figure of this
    run, with the goal and whether the median meets it. `better` says which way is good."""
    half = "50%"

    def sat(r, t, k):
        return r["saturation"][t].get(k)

    def ratio(t, k, ref="nginx"):
        return median_spread([sat(r, t, k) / sat(r, ref, k) for r in rounds
                              if sat(r, t, k) is not None and sat(r, ref, k)])

    def added_p99_over_nginx(t):
        # (t − direct) − (nginx − direct) at the same rate in the same round: direct cancels.
        return median_spread([r["latency"][half][t]["p99_ms"] - r["latency"][half]["nginx"]["p99_ms"]
                              for r in rounds if half in r["latency"]
                              and r["latency"][half][t]["p99_ms"] is not None
                              and r["latency"][half]["nginx"]["p99_ms"] is not None])

    out = []

    def goal(name, measured, limit, better, unit="", reference=False):
        met = None
        if measured is not None:
            m = measured["median"]
            met = m >= limit if better == "higher" else m <= limit if better == "lower" else m < limit
        out.append({"name": name, "measured": measured, "goal": limit, "better": better, "unit": unit,
                    "met": None if reference else met, "reference": reference})

    goal("keygate-redis throughput ÷ nginx", ratio("keygate-redis", "rps"), 1.0, "higher", "×")
    goal("keygate-redis CPU µs per request ÷ nginx (Redis's own CPU excluded)",
         ratio("keygate-redis", "cpu_us_per_request"), 1.0, "lower", "×")
    goal("keygate-local CPU µs per request ÷ nginx", ratio("keygate-local", "cpu_us_per_request"), 0.9, "lower", "×")
    if half in rounds[0]["latency"]:
        goal(f"keygate-redis added p99 over direct at {half} of nginx's saturation, minus nginx's",
             added_p99_over_nginx("keygate-redis"), 1.0, "lower", " ms")
        goal(f"keygate-local added p99 over direct at {half} of nginx's saturation, minus nginx's",
             added_p99_over_nginx("keygate-local"), 1.0, "lower", " ms", reference=True)
    idle = [setup.idle_rss_kb[v] * 1024 / 1e6 for v in KEYGATES if setup.idle_rss_kb.get(v)]
    goal("keygate idle RSS, MB (the largest of keygate-local, -redis, -tls; their range)",
         {"median": max(idle), "min": min(idle), "max": max(idle), "n": len(idle)} if idle else None,
         20.0, "below", " MB")
    goal("Redis round trips per request at saturation",
         median_spread([sat(r, "keygate-redis", "redis_round_trips_per_request") for r in rounds]), 0.02, "lower")
    goal("Redis CPU µs per request (keygate-redis at saturation)",
         median_spread([sat(r, "keygate-redis", "redis_cpu_us_per_request") for r in rounds]), 1.0, "lower", " µs")
    if "keygate-3limits-redis" in TARGETS:
        goal("keygate-3limits-redis CPU µs per request ÷ nginx (three limits; Redis's own CPU excluded)",
             ratio("keygate-3limits-redis", "cpu_us_per_request"), 1.0, "lower", "×")
        goal("keygate-3limits-redis throughput ÷ nginx", ratio("keygate-3limits-redis", "rps"), 1.0, "higher", "×")
        goal("Redis round trips per request at saturation (three limits)",
             median_spread([sat(r, "keygate-3limits-redis", "redis_round_trips_per_request") for r in rounds]),
             0.02, "lower")
        goal("(keygate-3limits-redis CPU µs per request ÷ keygate-redis)",
             ratio("keygate-3limits-redis", "cpu_us_per_request", ref="keygate-redis"), 1.0, "lower", "×",
             reference=True)
    # For reference, beside the goals: the other proxies against nginx in the same rounds.
    for t in ("keygate-local", "haproxy", "nginx-keymap"):
        goal(f"({t} throughput ÷ nginx)", ratio(t, "rps"), 1.0, "higher", "×", reference=True)
    for t in ("haproxy", "nginx-keymap"):
        goal(f"({t} CPU µs per request ÷ nginx)", ratio(t, "cpu_us_per_request"), 1.0, "lower", "×",
             reference=True)
    if "relay" in TARGETS:
        # The floor: what any proxy built like keygate costs before it does any work.
        goal("(relay CPU µs per request ÷ nginx: the floor)", ratio("relay", "cpu_us_per_request"), 1.0, "lower",
             "×", reference=True)
        goal("(keygate-local CPU µs per request ÷ relay's)",
             ratio("keygate-local", "cpu_us_per_request", ref="relay"), 1.0, "lower", "×", reference=True)
    return out


def summarise(rounds, setup, args):
    s = {"throughput": {}, "ratios": {}, "latency": {}, "cpu_s_per_1000": {}, "redis": {}}
    for target in TARGETS:
        s["throughput"][target] = median_spread([r["saturation"][target]["rps"] for r in rounds])
        s["cpu_s_per_1000"][target] = median_spread([r["saturation"][target]["cpu_s_per_1000"] for r in rounds])
        for k in ("upstream_cpu_s_per_1000", "redis_cpu_s_per_1000", "loadgen_cpu_s_per_1000"):
            s.setdefault(k, {})[target] = median_spread([r["saturation"][target].get(k) for r in rounds])
        s.setdefault("context_switches_per_request", {})[target] = median_spread(
            [r["saturation"][target]["context_switches_per_request"] for r in rounds])
        for k in ("cpu_us_per_request", "cpu_user_us_per_request", "cpu_sys_us_per_request",
                  "redis_cpu_us_per_request", "upstream_cpu_us_per_request"):
            s.setdefault(k, {})[target] = median_spread([r["saturation"][target].get(k) for r in rounds])
        s.setdefault("syscalls_per_request", {})[target] = median_spread(
            [r.get("syscalls", {}).get(target, {}).get("syscalls_per_request") for r in rounds])
    for target in PROXIES:
        s["ratios"][target] = {
            "vs_nginx": median_spread([r["saturation"][target]["rps"] / r["saturation"]["nginx"]["rps"]
                                       for r in rounds]),
            "vs_direct": median_spread([r["saturation"][target]["rps"] / r["saturation"]["direct"]["rps"]
                                        for r in rounds]),
            "vs_keygate_local": median_spread([r["saturation"][target]["rps"]
                                               / r["saturation"]["keygate-local"]["rps"] for r in rounds]),
        }
    for frac in args.fractions:
        key = f"{int(frac * 100)}%"
        s["latency"][key] = {}
        for target in TARGETS:
            entry = {}
            for p in ("p50_ms", "p99_ms", "p999_ms"):
                entry[p] = median_spread([r["latency"][key][target][p] for r in rounds])
                if target != "direct":
                    entry["added_" + p] = median_spread(
                        [r["latency"][key][target][p] - r["latency"][key]["direct"][p] for r in rounds])
            entry["rate"] = median_spread([r["latency"][key][target]["rate"] for r in rounds])
            entry["achieved_rps"] = median_spread([r["latency"][key][target]["achieved_rps"] for r in rounds])
            s["latency"][key][target] = entry
    s["redis"] = {
        "saturation_round_trips_per_request": median_spread(
            [r["saturation"]["keygate-redis"].get("redis_round_trips_per_request") for r in rounds]),
        "saturation_checks_per_script_call": median_spread(
            [r["saturation"]["keygate-redis"].get("redis_checks_per_script_call") for r in rounds]),
    }
    for frac in args.fractions:
        key = f"{int(frac * 100)}%"
        s["redis"][f"round_trips_per_request_at_{key}"] = median_spread(
            [r["latency"][key]["keygate-redis"].get("redis_round_trips_per_request") for r in rounds])
    if args.baseline:
        # The same build before and after a change, in one run: this build over the
        # baseline, per round, then the median (below 1 for CPU, above 1 for throughput
        # is better).
        s["vs_baseline"] = {}
        for mode in ("local", "redis"):
            new, old = f"keygate-{mode}", f"baseline-{mode}"
            s["vs_baseline"][mode] = {
                "throughput": median_spread([r["saturation"][new]["rps"] / r["saturation"][old]["rps"]
                                             for r in rounds]),
                "cpu_per_request": median_spread([r["saturation"][new]["cpu_s_per_1000"]
                                                  / r["saturation"][old]["cpu_s_per_1000"] for r in rounds]),
            }
    s["goals"] = goals(rounds, setup, args)
    s["foreign_cpu"] = median_spread([m.get("foreign_cpu") for r in rounds for m in r["saturation"].values()])
    return s


def loadavg():
    return Path("/proc/loadavg").read_text().split()[:3]


def machine(loadavg_at_start):
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""
    model = sh("lscpu | sed -n 's/^Model name: *//p' | head -1")
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    return {
        "nproc": int(sh("nproc") or 0),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": sh(". /etc/os-release && echo \"$PRETTY_NAME\""),
        "virtualization": sh("lscpu | sed -n 's/^Hypervisor vendor: *//p'") or sh("systemd-detect-virt 2>/dev/null"),
        "loadavg_at_start": loadavg_at_start,
        "loadavg_at_end": loadavg(),
    }


def versions(args):
    def first(cmd):
        p = subprocess.run(cmd, capture_output=True, text=True)
        return (p.stdout + p.stderr).strip().splitlines()[0] if (p.stdout + p.stderr).strip() else ""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src", "Cargo.toml",
                            "Cargo.lock"], capture_output=True, text=True).stdout.strip()
    return {
        "keygate": f"{commit}{' + uncommitted changes in src/' if dirty else ''}",
        "nginx": first(["nginx", "-v"]),
        "haproxy": first(["haproxy", "-v"]),
        "wrk": first(["wrk", "--version"]),
        "oha": first([args.oha, "--version"]),
        "redis": first(["redis-server", "--version"]),
        "openssl": first(["openssl", "version"]),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10, help="seconds of each wrk saturation run")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of wrk warm-up before each saturation run")
    ap.add_argument("--latency-duration", type=int, default=10, help="seconds of each oha fixed-rate run")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 0.5, 0.75],
                    help="fixed rates, as fractions of nginx's saturation throughput in the same round")
    ap.add_argument("--workers", type=int, default=2,
                    help="worker processes/threads of every proxy: nginx worker_processes, HAProxy nbthread, "
                         "keygate server.workers (checked in /proc at start)")
    ap.add_argument("--syscall-duration", type=int, default=3,
                    help="seconds of each round's system-call counting run per target (0: none)")
    ap.add_argument("--syscall-tool", choices=["auto", "perf", "strace"], default="auto",
                    help="count system calls with `perf stat` on the syscall tracepoints (auto: if it works "
                         "here) or `strace -c -f` (much slower under load)")
    ap.add_argument("--keygate", default=str(ROOT / "target" / "release" / "keygate"))
    ap.add_argument("--baseline", default=None,
                    help="another keygate binary (e.g. the build before a change), run as baseline-local and "
                         "baseline-redis beside keygate-local and keygate-redis, interleaved in the same rounds; "
                         "the summary gives this build over the baseline")
    ap.add_argument("--three-limits", action="store_true",
                    help="also run keygate-3limits-redis: keygate-redis with a plan of three limits (burst, "
                         "minute, monthly quota), interleaved in the same rounds")
    ap.add_argument("--oha", default=shutil.which("oha") or str(Path.home() / ".cargo" / "bin" / "oha"))
    ap.add_argument("--relay", help="PATH of the floor relay (cargo build --release --example relay_floor): "
                    "also measure a byte relay on keygate's runtime layout, the floor under any such proxy")
    ap.add_argument("--name", default=datetime.date.today().isoformat(), help="results file stem")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (configs, logs)")
    ap.add_argument("--profile-seconds", type=int, default=10,
                    help="after the rounds, perf-profile nginx, HAProxy, keygate-local and keygate-redis under "
                         "saturation this long (0: no profile; needs `perf`, Debian's linux-perf)")
    ap.add_argument("--profile-only", action="store_true",
                    help="no rounds: only the profiles (written to <out>/<name>-profile-<target>.txt)")
    args = ap.parse_args()
    if args.relay:
        TARGETS.append("relay")
        PROXIES[:] = TARGETS[1:]
    if args.three_limits:
        TARGETS.append("keygate-3limits-redis")
        KEYGATES.append("keygate-3limits-redis")
        PROXIES[:] = TARGETS[1:]
    if args.baseline:
        for target in ("baseline-local", "baseline-redis"):
            TARGETS.append(target)
            KEYGATES.append(target)
        PROXIES[:] = TARGETS[1:]

    procs = Processes()

    def on_signal(signum, frame):
        procs.stop_all()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = datetime.datetime.now(datetime.timezone.utc)
    load_at_start = loadavg()
    setup = Setup(args, procs)
    try:
        log(f"starting targets in {setup.dir}")
        setup.start_all()
        log("keygate threads:", ", ".join(setup.keygate_threads))
        log("workers:", ", ".join(f"{t} {w['count']} {w['kind']}" for t, w in setup.workers.items()))
        log("idle RSS (KiB):", {t: m["rss_kb"] for t, m in setup.idle_rss.items()})
        setup.syscall_method = syscall_method(args.syscall_tool)
        log("system calls counted with:", setup.syscall_method or "nothing (neither perf nor strace works here)")
        rounds = []
        if args.profile_only:
            out_stem = Path(args.out) / args.name
            Path(args.out).mkdir(parents=True, exist_ok=True)
            for target in PROFILED:
                profile(setup, target, args, out_stem)
            return
        for r in range(args.rounds):
            order = rotated(TARGETS, r)
            log(f"round {r + 1}/{args.rounds}: order {' '.join(order)}")
            rnd = {"order": order, "loadavg": loadavg(), "saturation": {}, "latency": {}}
            for target in order:
                res = saturation(setup, target, args)
                rnd["saturation"][target] = res
                log(f"  saturation {target:14s} {res['rps']:>10.0f} req/s  CPU µs/req {res['cpu_us_per_request']}"
                    f" (user {res['cpu_user_us_per_request']}, sys {res['cpu_sys_us_per_request']})"
                    f"  foreign {res['foreign_cpu']}"
                    + (f"  redis rt/req {res.get('redis_round_trips_per_request')}"
                       f"  redis CPU µs/req {res.get('redis_cpu_us_per_request')}" if target.endswith("-redis")
                       else "")
                    + (f"  NON-2XX {res['non_2xx']}" if res["non_2xx"] else "")
                    + (f"  socket errors {res['socket_errors']}" if res["socket_errors"] else ""))
            if setup.syscall_method and args.syscall_duration > 0:
                rnd["syscalls"] = {}
                for target in order:
                    res = count_syscalls(setup, target, args)
                    rnd["syscalls"][target] = res
                    top = ", ".join(f"{k} {v:.2f}" for k, v in list(res["by_syscall_per_request"].items())[:4])
                    log(f"  syscalls   {target:14s} {res['syscalls_per_request']:>7.2f} per request"
                        f" ({res['rps_while_counting']:.0f} req/s while counting; {top})")
            # The fixed rates are fractions of nginx's saturation throughput of this round
            # (the issue's "50% of nginx's saturation load"): every proxy is asked the same
            # rate, one that the reference proxy carries.
            reference = rnd["saturation"]["nginx"]["rps"]
            for frac in args.fractions:
                rnd["latency"][f"{int(frac * 100)}%"] = {}
            for target in order:
                for frac in args.fractions:
                    rate = max(1, int(reference * frac))
                    res = fixed_rate(setup, target, rate, args)
                    rnd["latency"][f"{int(frac * 100)}%"][target] = res
                    log(f"  {int(frac * 100):>3d}% {rate:>7d}/s {target:14s} achieved {res['achieved_rps']:>9.0f}"
                        f"  p50 {res['p50_ms']:.3f}  p99 {res['p99_ms']:.3f}  p99.9 {res['p999_ms']:.3f} ms"
                        + (f"  NON-200 {res['non_200']}" if res["non_200"] else "")
                        + (f"  errors {res['errors']}" if res["errors"] else ""))
            rounds.append(rnd)
        peak = {}
        for target in PROXIES:
            pids = setup.target_pids(target)
            peak[target] = {
                "processes": len(pids),
                "vmhwm_kb_sum": sum(status_kb(p, "VmHWM") or 0 for p in pids),
                "vmhwm_kb_max": max(status_kb(p, "VmHWM") or 0 for p in pids),
                "vmrss_kb_after": sum(status_kb(p, "VmRSS") or 0 for p in pids),
                "pss_kb_after": rss_kb(pids)[1],
            }
        profiles = {}
        out_stem = Path(args.out) / args.name
        Path(args.out).mkdir(parents=True, exist_ok=True)
        if args.profile_seconds > 0 and perf_works():
            for target in PROFILED:
                profiles[target] = profile(setup, target, args, out_stem)
        elif args.profile_seconds > 0:
            log("perf is missing or does not work here: no profile (apt-get install linux-perf)")
        finished = datetime.datetime.now(datetime.timezone.utc)
        report = {
            "started": started.isoformat(timespec="seconds"),
            "finished": finished.isoformat(timespec="seconds"),
            "machine": machine(load_at_start),
            "versions": versions(args),
            "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
            "keygate_threads": setup.keygate_threads,
            "workers": setup.workers,
            "syscall_method": setup.syscall_method,
            "idle_rss_kb": setup.idle_rss_kb,
            "idle_rss": setup.idle_rss,
            "peak_rss": peak,
            "rounds": rounds,
            "profiles": profiles,
        }
        report["summary"] = summarise(rounds, setup, args)
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(setup.dir, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=1) + "\n")
    log(f"wrote {out / (args.name + '.json')}")
    if args.baseline:
        for mode, ab in report["summary"]["vs_baseline"].items():
            log(f"this build / baseline, keygate-{mode}: throughput {ab['throughput']}, "
                f"CPU per request {ab['cpu_per_request']}")
    subprocess.run([sys.executable, str(HERE / "report.py"), str(out / f"{args.name}.json")], check=True)


if __name__ == "__main__":
    main()
