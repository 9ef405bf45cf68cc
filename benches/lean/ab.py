#!/usr/bin/env python3
"""Interleaved A/B of keygate binaries (and nginx) on the load benchmark's local-limiter
setup: CPU µs per request from /proc (utime + stime of the whole process), rounds
rotated, medians of per-round ratios. Optional: system calls per request (strace -c -f)
and callgrind instructions per request (zeroed once ready, dumped after the load).

    python3 benches/lean/ab.py --bin before=/path/a --bin after=/path/b --rounds 5
    python3 benches/lean/ab.py --bin after=target/release/keygate --callgrind after
    python3 benches/lean/ab.py --bin after=target/release/keygate --strace
    python3 benches/lean/ab.py --bin head=target/release/keygate --nginx \
        --relay target/release/examples/relay_floor     # the floor: a byte relay on keygate's runtime

Uses the configuration files of benches/load (read only): nginx `return 200` upstream
with one worker, nginx as a plain proxy with two, keygate with key auth, one scoped
route and the local limiter.
"""
import argparse
import json
import os
import re
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
LOAD = HERE.parent / "load"
TICK = os.sysconf("SC_CLK_TCK")

# The load benchmark's helpers (ports, templates, /proc), not copies of them.
sys.path.insert(0, str(LOAD))
from bench import cpu_ticks_split as ticks, proc_children as children, render  # noqa: E402
from bench import context_switches  # noqa: E402
from bench import wait_port as _wait_port, free_port as _free_port  # noqa: E402

_taken = set()


def free_port():
    return _free_port(_taken)


def wait_port(port, deadline=60.0):
    _wait_port(port, deadline)


def wrk(url, key, seconds, connections, threads):
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s",
                          "-H", f"Authorization: Bearer {key}", url],
                         capture_output=True, text=True, check=True).stdout
    n = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise SystemExit(f"non-2xx responses from {url}:\n{out}")
    return n


class Setup:
    def __init__(self, args):
        self.args = args
        self.dir = Path(tempfile.mkdtemp(prefix="keygate-ab-"))
        (self.dir / "tmp").mkdir()
        self.procs = []
        self.urls, self.pids = {}, {}

    def start(self, argv, log, env=None, cwd=None):
        p = subprocess.Popen(argv, stdout=open(self.dir / log, "w"), stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        self.procs.append(p)
        return p

    def up(self):
        d = self.dir
        self.upstream = free_port()
        render("upstream.nginx.conf", d / "upstream.conf", {"DIR": d, "UPSTREAM_PORT": self.upstream})
        self.start(["nginx", "-p", str(d), "-c", str(d / "upstream.conf")], "upstream.out")
        wait_port(self.upstream)
        if self.args.nginx:
            port = free_port()
            render("proxy.nginx.conf", d / "nginx.conf", {"DIR": d, "UPSTREAM_PORT": self.upstream, "NGINX_PORT": port,
                                                        "WORKERS": self.args.workers})
            p = self.start(["nginx", "-p", str(d), "-c", str(d / "nginx.conf")], "nginx.out")
            wait_port(port)
            self.urls["nginx"] = f"http://127.0.0.1:{port}/bench/items/42"
            self.pids["nginx"] = p.pid
        if self.args.relay:
            port = free_port()
            p = self.start([self.args.relay, str(port), str(self.upstream), str(self.args.workers)], "relay.out")
            wait_port(port)
            self.urls["relay"] = f"http://127.0.0.1:{port}/bench/items/42"
            self.pids["relay"] = p.pid
        env = dict(os.environ, RUST_LOG="warn")
        pepper = "p1=" + os.urandom(24).hex() + "\n"
        first = None
        self.key = None
        for name, binary in self.args.bin:
            kd = d / name
            kd.mkdir()
            port, admin, api = free_port(), free_port(), free_port()
            render("keygate.toml", kd / "keygate.toml", {"PORT": port, "ADMIN_PORT": admin, "API_PORT": api,
                                                         "TLS": "", "BACKEND": "local", "REDIS": "",
                                                         "WORKERS": self.args.workers})
            render("routes.toml", kd / "routes.toml", {"UPSTREAM_PORT": self.upstream})
            (kd / "peppers").write_text(pepper)
            os.chmod(kd / "peppers", 0o600)
            cfg = str(kd / "keygate.toml")
            if first is None:
                subprocess.run([binary, "--config", cfg, "tenants", "create", "bench", "--plan", "bench"],
                               env=env, check=True, capture_output=True)
                created = json.loads(subprocess.run(
                    [binary, "--config", cfg, "keys", "create", "--tenant", "bench", "--name", "load",
                     "--scopes", "bench:read", "--json"], env=env, check=True, capture_output=True).stdout)
                self.key = created["key"]
                first = kd
            else:
                shutil.copy2(first / "keys.json", kd / "keys.json")
            argv = [binary, "serve", "--config", cfg]
            if self.args.callgrind == name:
                argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/callgrind.{name}.out",
                        "--dump-instr=no"] + argv
            p = self.start(argv, f"{name}.out", env=env)
            self.pids[name] = p.pid
            self.urls[name] = f"http://127.0.0.1:{port}/bench/items/42"
            end = time.time() + 120
            while True:
                try:
                    if urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=2).status == 200:
                        break
                except Exception:
                    pass
                if time.time() > end:
                    raise SystemExit(f"{name} not ready; see {d / (name + '.out')}")
                time.sleep(0.2)

    def down(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


def pids_of(setup, target):
    main = setup.pids[target]
    return [main] + children(main)


def minor_faults(pids):
    """Minor page faults of `pids` (all threads), from /proc/PID/stat."""
    faults = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        faults += int(stat[stat.rindex(")") + 2:].split()[7])
    return faults


def measure(setup, target, args):
    """(requests, CPU µs/req, user µs/req, minor faults/req, context switches/req)."""
    wrk(setup.urls[target], setup.key, 1, args.connections, args.threads)
    pids = pids_of(setup, target)
    u0, s0 = ticks(pids)
    f0, c0 = minor_faults(pids), context_switches(pids)
    n = wrk(setup.urls[target], setup.key, args.duration, args.connections, args.threads)
    u1, s1 = ticks(pids)
    f1, c1 = minor_faults(pids), context_switches(pids)
    per = lambda t: t / TICK * 1e6 / n
    return n, per(u1 - u0 + s1 - s0), per(u1 - u0), (f1 - f0) / n, (c1 - c0) / n


def median(xs):
    xs = sorted(xs)
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


def ab(setup, args):
    targets = (["nginx"] if args.nginx else []) + (["relay"] if args.relay else []) + [name for name, _ in args.bin]
    rows = {t: [] for t in targets}
    for r in range(args.rounds):
        order = targets[r % len(targets):] + targets[:r % len(targets)]
        for t in order:
            n, us, user, faults, switches = measure(setup, t, args)
            rows[t].append((n / args.duration, us, user, faults, switches))
        load = os.getloadavg()
        print(f"round {r + 1}: " + ", ".join(f"{t} {rows[t][-1][0]:,.0f} req/s {rows[t][-1][1]:.1f} µs "
                                            f"({rows[t][-1][2]:.1f} user)"
                                            for t in targets) + f"  (load {load[0]:.2f})", flush=True)
    base = targets[0] if not args.nginx else "nginx"
    print()
    print(f"| target | req/s median | CPU µs/req median (min – max) | of which user space | "
          f"CPU ÷ {base} (median of per-round ratios) | minor faults / req | context switches / req |")
    print("|---|---|---|---|---|---|---|")
    for t in targets:
        us = [r[1] for r in rows[t]]
        user = [r[2] for r in rows[t]]
        ratios = [r[1] / b[1] for r, b in zip(rows[t], rows[base])]
        print(f"| {t} | {median([r[0] for r in rows[t]]):,.0f} | {median(us):.1f} ({min(us):.1f} – {max(us):.1f}) "
              f"| {median(user):.1f} ({min(user):.1f} – {max(user):.1f}) "
              f"| {median(ratios):.3f} ({min(ratios):.3f} – {max(ratios):.3f}) "
              f"| {median([r[3] for r in rows[t]]):.4f} | {median([r[4] for r in rows[t]]):.3f} |")
    names = [name for name, _ in args.bin]
    if len(names) == 2:
        a, b = names
        for what, i in (("CPU", 1), ("user-space CPU", 2)):
            ratios = [rb[i] / ra[i] for ra, rb in zip(rows[a], rows[b])]
            print(f"\n{what} per request, {b} ÷ {a}: median {median(ratios):.3f} "
                  f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


def strace_count(setup, args):
    """System calls per request: strace -c -f on every target in turn, the same load."""
    targets = (["nginx"] if args.nginx else []) + (["relay"] if args.relay else []) + [name for name, _ in args.bin]
    for t in targets:
        pids = pids_of(setup, t)
        tids = []
        for pid in pids:
            tids += [int(x) for x in os.listdir(f"/proc/{pid}/task")]
        out = setup.dir / f"strace.{t}.txt"
        argv = ["strace", "-c", "-f", "-o", str(out)]
        for tid in tids:
            argv += ["-p", str(tid)]
        tracer = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        n = wrk(setup.urls[t], setup.key, args.duration, args.connections, args.threads)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=60)
        text = out.read_text()
        print(f"\n### {t}: {n} requests under strace\n")
        print("| syscall | calls | per request |")
        print("|---|---|---|")
        total = 0
        for line in text.splitlines():
            f = line.split()
            if len(f) >= 5 and f[0][0].isdigit() and not line.strip().startswith("100.00"):
                name, calls = f[-1], int(f[3])
                total += calls
                print(f"| {name} | {calls} | {calls / n:.3f} |")
        print(f"| **total** | {total} | **{total / n:.2f}** |")


def callgrind(setup, args):
    name = args.callgrind
    pid = setup.pids[name]
    url = setup.urls[name]
    # Warm: connections to the upstream, the key cache.
    wrk(url, setup.key, 2, 4, 1)
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    n = wrk(url, setup.key, args.duration, 4, 1)
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    time.sleep(1)
    dumps = sorted(setup.dir.glob(f"callgrind.{name}.out*"), key=lambda p: p.stat().st_mtime)
    dump = dumps[-1]
    dest = Path(args.out) if args.out else Path(f"/tmp/callgrind.{name}.out")
    shutil.copy2(dump, dest)
    total = None
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith("summary:") or line.startswith("totals:"):
            total = int(line.split()[1])
    print(f"{name}: {n} requests, {total:,} instructions, {total / n:,.0f} per request; dump: {dest}")
    (dest.with_suffix(".requests")).write_text(str(n))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", action="append", type=lambda s: tuple(s.split("=", 1)), required=True,
                    help="NAME=PATH of a keygate binary (give two for an A/B)")
    ap.add_argument("--nginx", action="store_true", help="also measure nginx as a plain proxy")
    ap.add_argument("--relay", help="PATH of benches/floor/relay.rs built (--example relay_floor): also measure "
                    "the floor under any proxy built like keygate, a byte relay")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="nginx worker processes and keygate workers")
    ap.add_argument("--callgrind", help="NAME: run that binary under callgrind and count instructions")
    ap.add_argument("--strace", action="store_true", help="count system calls per request")
    ap.add_argument("--out", help="where to copy the callgrind dump")
    args = ap.parse_args()
    args.bin = [(n, str(Path(p).resolve())) for n, p in args.bin]
    setup = Setup(args)
    try:
        setup.up()
        if args.callgrind:
            callgrind(setup, args)
        elif args.strace:
            strace_count(setup, args)
        else:
            ab(setup, args)
    finally:
        setup.down()
        shutil.rmtree(setup.dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
