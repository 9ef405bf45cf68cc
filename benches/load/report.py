#!/usr/bin/env python3
"""Turns a load benchmark's raw JSON (benches/results/<name>.json, written by bench.py)
into the Markdown report <name>.md and the plot <name>.png next to it.

    python3 benches/load/report.py benches/results/2026-01-01.json
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

TARGETS = ["direct", "nginx", "haproxy", "keygate-local", "keygate-redis", "keygate-tls"]
PROXIES = TARGETS[1:]
KEYGATES = ["keygate-local", "keygate-redis", "keygate-tls"]


def spread(m, fmt="{:.2f}", scale=1.0):
    if not m:
        return "–"
    f = lambda v: fmt.format(v * scale)
    return f"{f(m['median'])} ({f(m['min'])} – {f(m['max'])})"


def mib(kb):
    return f"{kb / 1024:.1f} MiB" if kb else "–"


def markdown(data, png_name):
    s = data["summary"]
    m = data["machine"]
    v = data["versions"]
    st = data["settings"]
    fr = [f"{int(f * 100)}%" for f in st["fractions"]]
    n = len(data["rounds"])
    lines = []
    w = lines.append
    w(f"# keygate load benchmark — {data['started'][:10]}")
    w("")
    w(f"Run {data['started']} → {data['finished']} (UTC). Method and meaning of every figure: "
      "[docs/benchmarks.md](../../docs/benchmarks.md). Raw numbers: "
      f"[{png_name[:-4]}.json]({png_name[:-4]}.json).")
    w("")
    w(f"**Machine**: {m['nproc']} CPUs ({m['cpu_model']}{', ' + m['virtualization'] if m.get('virtualization') else ''}), "
      f"{m['memory_gib']} GiB, Linux {m['kernel']}, {m['os']}; load average at start "
      f"{' '.join(m['loadavg_at_start'])}. Shared and noisy: other work ran during the run "
      f"(median CPU taken by other processes during a saturation run: "
      f"{spread(s['foreign_cpu'], '{:.2f}')} cores).")
    w("")
    w(f"**Versions**: keygate {v['keygate']} (release build); {v['nginx']}; {v['haproxy']}; {v['wrk']}; "
      f"{v['oha']}; {v['redis']}; {v['openssl']}.")
    w("")
    w(f"**Settings**: {n} interleaved rounds (order rotated each round); saturation `wrk -t{st['threads']} "
      f"-c{st['connections']} -d{st['duration']}s` after a {st['warmup']} s warm-up; latency "
      f"`oha -q RATE --latency-correction -z {st['latency_duration']}s -c {st['connections']}` at "
      f"{', '.join(fr)} of the direct maximum of the same round. Workers: nginx `worker_processes 2`, "
      "HAProxy `nbthread 2`, keygate's worker threads "
      f"({sum(1 for t in data['keygate_threads'] if t.startswith('keygate-worker'))} `keygate-worker` threads, `server.workers` = the CPU count); "
      "the upstream is nginx `return 200` with 1 worker. Medians over rounds of per-round figures, with (min – max).")
    w("")

    # ---- the performance targets
    w("## Performance targets")
    w("")
    w("| target | goal | measured: median (min – max) | met |")
    w("|---|---|---|---|")
    r = s["ratios"]["keygate-redis"]["vs_nginx"]
    w(f"| keygate + Redis limiter throughput ÷ nginx | ≥ 1.0 | {spread(r)} | {'yes' if r['median'] >= 1 else '**no**'} |")
    half = "50%" if "50%" in s["latency"] else fr[len(fr) // 2]
    a = s["latency"][half]["keygate-redis"]["added_p99_ms"]
    asked = s["latency"][half]["keygate-redis"]["rate"]["median"]
    sat = s["throughput"]["keygate-redis"]["median"]
    note = (f" ({half} of direct = {asked:,.0f} req/s, above keygate-redis's own saturation throughput of "
            f"{sat:,.0f} req/s: a queue, not a latency)" if asked > sat else f" ({asked:,.0f} req/s)")
    w(f"| keygate + Redis limiter added p99 at {half} load | < 1 ms | {spread(a, '{:.3f}')} ms{note} | "
      f"{'yes' if a['median'] < 1 else '**no**'} |")
    for q in fr[: fr.index(half)]:
        aq = s["latency"][q]["keygate-redis"]["added_p99_ms"]
        w(f"| (for reference) keygate + Redis limiter added p99 at {q} load | – | {spread(aq, '{:.3f}')} ms "
          f"({s['latency'][q]['keygate-redis']['rate']['median']:,.0f} req/s) | |")
    idle = max(data["idle_rss_kb"].values())
    w(f"| keygate idle RSS after start | < 20 MB | {', '.join(f'{k}: {mib(x)}' for k, x in data['idle_rss_kb'].items())} | "
      f"{'yes' if idle * 1024 < 20e6 else '**no**'} |")
    rt = s["redis"]["saturation_round_trips_per_request"]
    w(f"| Redis round trips per request (saturation) | ≤ 1 | {spread(rt, '{:.3f}')} | "
      f"{'yes' if rt and rt['median'] <= 1 else '**no**'} |")
    w("")

    # ---- throughput
    w("## Throughput at saturation (closed loop)")
    w("")
    w("| target | req/s | ÷ nginx | ÷ direct | ÷ keygate-local | CPU s / 1,000 req | peak RSS (VmHWM) |")
    w("|---|---|---|---|---|---|---|")
    for t in TARGETS:
        tp = spread(s["throughput"][t], "{:,.0f}")
        ratio_n = spread(s["ratios"][t]["vs_nginx"]) if t in PROXIES else "–"
        ratio_d = spread(s["ratios"][t]["vs_direct"]) if t in PROXIES else "1"
        ratio_k = spread(s["ratios"][t].get("vs_keygate_local")) if t in ("keygate-redis", "keygate-tls") else "–"
        cpu = spread(s["cpu_s_per_1000"][t], "{:.3f}")
        peak = data["peak_rss"].get(t)
        rss = "–"
        if peak:
            rss = mib(peak["vmhwm_kb_sum"])
            if peak["processes"] > 1:
                rss += f" ({peak['processes']} processes summed)"
        w(f"| {t} | {tp} | {ratio_n} | {ratio_d} | {ratio_k} | {cpu} | {rss} |")
    w("")
    w("Where the CPU goes, per request at saturation: the proxy's context switches (summed over "
      "`/proc/PID/task/*/status`), and the CPU of the upstream, Redis and the load generator:")
    w("")
    w("| target | context switches per request | CPU s / 1,000 req: upstream | Redis | load generator (wrk) |")
    w("|---|---|---|---|---|")
    for t in TARGETS:
        extra = [spread(s.get(k, {}).get(t), "{:.3f}") for k in
                 ("upstream_cpu_s_per_1000", "redis_cpu_s_per_1000", "loadgen_cpu_s_per_1000")]
        if t == "direct":
            extra[0] = "(the target)"
        w(f"| {t} | {spread(s.get('context_switches_per_request', {}).get(t), '{:.3f}')} | " + " | ".join(extra) + " |")
    w("")
    w("CPU s / 1,000 req is the proxy's own processes (nginx: master + workers; HAProxy and keygate: one "
      "process, all threads); for `direct` it is the upstream's. The upstream's CPU is not included in the "
      "proxies' figures.")
    w("")

    # ---- latency
    w("## Latency at fixed rates (coordinated omission corrected)")
    w("")
    w("Added = target − direct at the same rate in the same round, then the median over rounds. "
      "Milliseconds. A rate the target cannot sustain shows as an achieved rate below the asked one "
      "and a latency that grows with the run's length (a queue), not a property of the proxy at that load.")
    w("")
    w("| load | target | rate asked → achieved /s | p50 | p99 | p99.9 | added p50 | added p99 | added p99.9 |")
    w("|---|---|---|---|---|---|---|---|---|")
    for key in fr:
        for t in TARGETS:
            e = s["latency"][key][t]
            rate = f"{e['rate']['median']:,.0f} → {e['achieved_rps']['median']:,.0f}"
            row = [key, t, rate] + [spread(e[p], "{:.3f}") for p in ("p50_ms", "p99_ms", "p999_ms")]
            if t == "direct":
                row += ["–", "–", "–"]
            else:
                row += [spread(e["added_" + p], "{:.3f}") for p in ("p50_ms", "p99_ms", "p999_ms")]
            w("| " + " | ".join(row) + " |")
    w("")

    # ---- redis
    w("## Redis round trips (keygate + Redis limiter)")
    w("")
    w("Client-issued commands counted by `INFO commandstats` before/after each run, leaving out the commands "
      "the limiter script runs inside Redis (TIME, HMGET, HGET, HSET, HGETALL, HDEL, DEL, PEXPIRE) and the benchmark's own "
      "INFO; divided by the responses of the run.")
    w("")
    w("| load | round trips per request | requests per script call |")
    w("|---|---|---|")
    w(f"| saturation | {spread(s['redis']['saturation_round_trips_per_request'], '{:.3f}')} | "
      f"{spread(s['redis']['saturation_checks_per_script_call'], '{:.1f}')} |")
    for key in fr:
        w(f"| {key} | {spread(s['redis'].get(f'round_trips_per_request_at_{key}'), '{:.3f}')} | |")
    w("")
    kg = [rd["saturation"]["keygate-redis"].get("keygate", {}) for rd in data["rounds"]]
    errors = sum(k.get("store_errors", 0) for k in kg)
    fallbacks = sum(k.get("store_fallbacks", 0) for k in kg)
    w(f"Store errors during the saturation runs: {errors:.0f}; limiter fallbacks to local: {fallbacks:.0f}.")
    w("")

    # ---- per round
    w("## Every round: saturation req/s")
    w("")
    w("| round | order | " + " | ".join(TARGETS) + " |")
    w("|---|---|" + "---|" * len(TARGETS))
    for i, rd in enumerate(data["rounds"], 1):
        order = " → ".join(x.replace("keygate-", "kg-") for x in rd["order"])
        w(f"| {i} | {order} | " + " | ".join(f"{rd['saturation'][t]['rps']:,.0f}" for t in TARGETS) + " |")
    w("")
    bad = [(i, t, rd["saturation"][t]["non_2xx"], rd["saturation"][t]["socket_errors"])
           for i, rd in enumerate(data["rounds"], 1) for t in TARGETS
           if rd["saturation"][t]["non_2xx"] or rd["saturation"][t]["socket_errors"]]
    if bad:
        w("Runs with non-2xx responses or socket errors: " + "; ".join(
            f"round {i} {t}: {a} non-2xx, {b} socket errors" for i, t, a, b in bad) + ".")
    else:
        w("Every saturation run: only 2xx responses, no socket errors.")
    w("")
    if data.get("profiles"):
        w("## Profiles under saturation")
        w("")
        w("`perf record -e cpu-clock` (self time) and `perf trace -s` (system calls), one run each after the "
          "rounds; the files list the top symbols and every system call per request.")
        w("")
        w("| target | CPU µs per request (under perf) | kernel share | system calls per request | profile |")
        w("|---|---|---|---|---|")
        for t, p in data["profiles"].items():
            if isinstance(p, str):
                w(f"| {t} | | | | [{p}]({p}) |")
                continue
            w(f"| {t} | {p['us_cpu_per_request']:.1f} | {p.get('kernel_share', '–')} | "
              f"{p['syscalls_per_request']:.2f} | [{p['file']}]({p['file']}) |")
        w("")
    w(f"![throughput per round, throughput ratios per round, p99 per load]({png_name})")
    w("")
    return "\n".join(lines)


def plot(data, png):
    st = data["settings"]
    fr = [f"{int(f * 100)}%" for f in st["fractions"]]
    s = data["summary"]
    short = {t: t.replace("keygate-", "kg-") for t in TARGETS}
    with tempfile.TemporaryDirectory() as tmp:
        tp = Path(tmp) / "throughput.dat"
        with tp.open("w") as f:
            f.write("round " + " ".join(TARGETS) + "\n")
            for i, rd in enumerate(data["rounds"], 1):
                f.write(f"{i} " + " ".join(str(rd["saturation"][t]["rps"]) for t in TARGETS) + "\n")
        ratio_targets = ["haproxy", "keygate-local", "keygate-redis", "keygate-tls"]
        ratios = Path(tmp) / "ratios.dat"
        with ratios.open("w") as f:
            f.write("round " + " ".join(ratio_targets) + "\n")
            for i, rd in enumerate(data["rounds"], 1):
                nginx = rd["saturation"]["nginx"]["rps"]
                f.write(f"{i} " + " ".join(str(rd["saturation"][t]["rps"] / nginx) for t in ratio_targets) + "\n")
        lat = Path(tmp) / "p99.dat"
        with lat.open("w") as f:
            f.write("target " + " ".join(fr) + "\n")
            for t in TARGETS:
                vals = [max(s["latency"][k][t]["p99_ms"]["median"], 0.001) for k in fr]
                f.write(short[t] + " " + " ".join(str(x) for x in vals) + "\n")
        cols = len(TARGETS)
        n = len(data["rounds"])
        p99s = [max(s["latency"][k][t]["p99_ms"]["median"], 0.001) for k in fr for t in TARGETS]
        ylow, yhigh = min(p99s) / 2, max(p99s) * 30
        top = max([1.2] + [rd["saturation"][t]["rps"] / rd["saturation"]["nginx"]["rps"] * 1.1
                           for rd in data["rounds"] for t in ratio_targets])
        script = f"""
set terminal pngcairo size 1800,600 font "sans,10"
set output "{png}"
set multiplot layout 1,3 title "keygate load benchmark {data['started'][:10]}: {data['machine']['nproc']} CPUs, {n} interleaved rounds" font "sans,12"
set title "Throughput at saturation (wrk -c{st['connections']}), per round"
set ylabel "requests / s"
set format x "round %g"
set key below
set grid ytics
set xtics 1
set xrange [0.8:{n + 0.2}]
set yrange [0:*]
plot for [i=2:{cols + 1}] "{tp}" using 1:i with linespoints lw 2 pt 7 title columnheader(i)
set title "Throughput ÷ nginx in the same round"
set ylabel "ratio"
set yrange [0:{top:.2f}]
plot for [i=2:{len(ratio_targets) + 1}] "{ratios}" using 1:i with linespoints lw 2 pt 7 lt (i+1) title columnheader(i), 1 with lines dt 2 lc "black" title "nginx (= 1)"
set title "p99 at fixed rates (oha, corrected), median over rounds"
set xlabel "target; bars: load as a fraction of the direct maximum"
set ylabel "p99 (ms, log scale)"
set logscale y
set yrange [{ylow}:{yhigh}]
set xrange [*:*]
set format x "%g"
set key inside top left vertical Left reverse
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set xtics auto
plot for [i=2:{len(fr) + 1}] "{lat}" using i:xtic(1) title columnheader(i)
unset multiplot
"""
        subprocess.run(["gnuplot"], input=script, text=True, check=True)


def main():
    path = Path(sys.argv[1])
    data = json.loads(path.read_text())
    png = path.with_suffix(".png")
    plot(data, png)
    path.with_suffix(".md").write_text(markdown(data, png.name) + "\n")
    print(f"wrote {path.with_suffix('.md')} and {png}", file=sys.stderr)


if __name__ == "__main__":
    main()
