#!/usr/bin/env python3
"""Turns a load benchmark's raw JSON (benches/results/<name>.json, written by bench.py)
into the Markdown report <name>.md and the plot <name>.png next to it.

    python3 benches/load/report.py benches/results/2026-01-01.json

The targets are read from the file (older files have no nginx-keymap; runs with
--baseline have baseline-local and baseline-redis); figures an older file lacks show
as "–".
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

KNOWN = ["direct", "nginx", "haproxy", "nginx-keymap", "keygate-local", "keygate-redis", "keygate-tls",
         "keygate-3limits-redis",
         "baseline-local", "baseline-redis"]
NGINXES = ["nginx", "nginx-keymap"]


def targets_of(data):
    present = list(data["rounds"][0]["saturation"])
    return [t for t in KNOWN if t in present] + [t for t in present if t not in KNOWN]


def spread(m, fmt="{:.2f}", scale=1.0):
    if not m:
        return "–"
    f = lambda v: fmt.format(v * scale)
    if m.get("n", 2) == 1 or m["min"] == m["max"]:
        return f(m["median"])
    return f"{f(m['median'])} ({f(m['min'])} – {f(m['max'])})"


def med(m, fmt="{:.1f}"):
    return fmt.format(m["median"]) if m else "–"


def mib(kb):
    return f"{kb / 1024:.1f} MiB" if kb else "–"


def verdict(g, s):
    """'yes' / '**no**' and by how much, for one goal of bench.py's summary."""
    m = g["measured"]
    if m is None:
        return "–", "not measured"
    v, limit, unit = m["median"], g["goal"], g["unit"]
    if g["better"] == "higher":
        if v >= limit:
            return "yes", f"{100 * (v / limit - 1):.0f}% above the goal"
        return "**no**", f"{100 * (1 - v / limit):.0f}% short: needs {limit / v:.2f}× today's"
    if unit == "×":  # a ratio that must not exceed the goal: CPU per request against nginx's
        nginx = s.get("cpu_us_per_request", {}).get("nginx")
        absolute = ""
        if nginx:
            absolute = (f" (≈ {(v - limit) * nginx['median']:.1f} µs of {v * nginx['median']:.1f}, "
                        f"nginx {nginx['median']:.1f} µs)")
        if v <= limit:
            return "yes", f"{100 * (1 - v / limit):.0f}% under the goal"
        return "**no**", f"{v / limit:.2f}× the goal: needs {100 * (1 - limit / v):.0f}% less CPU per request{absolute}"
    if g["better"] == "below":
        if v < limit:
            return "yes", f"{limit - v:.1f}{unit} to spare"
        return "**no**", f"{v - limit:.1f}{unit} over"
    if unit.strip() == "ms":
        if v <= limit:
            return "yes", f"{limit - v:.3f} ms to spare"
        return "**no**", f"{v - limit:.3f} ms over the 1 ms allowance"
    if v <= limit:
        return "yes", f"{limit - v:.3g}{unit} to spare"
    return "**no**", f"{v / limit:.1f}× the goal ({v - limit:.3g}{unit} over)"


def goal_text(g):
    sign = {"higher": "≥", "lower": "≤", "below": "<"}[g["better"]]
    return f"{sign} {g['goal']:g}{g['unit']}"


def measured_text(g):
    m = g["measured"]
    if m is None:
        return "–"
    fmt = "{:.3f}" if g["unit"] in ("", " ms") else "{:.2f}"
    return spread(m, fmt) + (g["unit"] if g["unit"] != "×" else "×")


def markdown(data, png_name):
    s = data["summary"]
    m = data["machine"]
    v = data["versions"]
    st = data["settings"]
    targets = targets_of(data)
    proxies = targets[1:]
    fr = [f"{int(f * 100)}%" for f in st["fractions"]]
    half = "50%" if "50%" in fr else fr[len(fr) // 2]
    n = len(data["rounds"])
    new_rates = "workers" in data  # since the rates are fractions of nginx's maximum
    of_what = "nginx's" if new_rates else "the direct"
    lines = []
    w = lines.append
    w(f"# keygate load benchmark — {data['started'][:10]}")
    w("")
    w(f"Run {data['started']} → {data['finished']} (UTC). Method and meaning of every figure: "
      "[docs/benchmarks.md](../../docs/benchmarks.md). Raw numbers: "
      f"[{png_name[:-4]}.json]({png_name[:-4]}.json).")
    w("")
    w(f"**Machine**: {m['nproc']} CPUs ({m['cpu_model']}{', ' + m['virtualization'] if m.get('virtualization') else ''}), "
      f"{m['memory_gib']} GiB, Linux {m['kernel']}, {m['os']}; **load average at start "
      f"{' '.join(m['loadavg_at_start'])}**"
      + (f", at the end {' '.join(m['loadavg_at_end'])}" if m.get("loadavg_at_end") else "")
      + ". Shared and noisy: other work ran during the run (median CPU taken by other processes "
      f"during a saturation run: {spread(s['foreign_cpu'], '{:.2f}')} cores).")
    w("")
    w(f"**Versions**: keygate {v['keygate']} (release build); {v['nginx']}; {v['haproxy']}; {v['wrk']}; "
      f"{v['oha']}; {v['redis']}; {v['openssl']}.")
    w("")
    if data.get("workers"):
        wk = data["workers"]
        counts = {x["count"] for x in wk.values()}
        workers = ("**Workers, the same for every proxy** (counted in `/proc` after start): "
                   + ", ".join(f"{t} {x['count']} {x['kind']}" for t, x in wk.items())
                   + (f" — {counts.pop()} each." if len(counts) == 1 else " — **not equal**."))
    else:
        workers = ("Workers: nginx `worker_processes 2`, HAProxy `nbthread 2`, keygate "
                   f"{sum(1 for t in data['keygate_threads'] if t.startswith('keygate-worker'))} `keygate-worker` threads.")
    w(f"**Settings**: {n} interleaved round{'s' if n != 1 else ''} (order rotated each round); saturation `wrk -t{st['threads']} "
      f"-c{st['connections']} -d{st['duration']}s` after a {st['warmup']} s warm-up; "
      + (f"system calls counted with `{data['syscall_method']}` in a separate `wrk` run of "
         f"{st.get('syscall_duration')} s per target; " if data.get("syscall_method") else "")
      + f"latency `oha -q RATE --latency-correction -z {st['latency_duration']}s -c {st['connections']}` at "
      f"{', '.join(fr)} of {of_what} saturation throughput in the same round. {workers} The upstream is nginx "
      "`return 200` with 1 worker. Medians over rounds of per-round figures, with (min – max).")
    w("")

    # ---- the performance targets
    if s.get("goals"):
        w("## Performance targets")
        w("")
        w("Each a median of per-round figures of this run (ratios taken within each round), with "
          "(min – max) over rounds.")
        w("")
        w("| target | goal | measured | met | by how much |")
        w("|---|---|---|---|---|")
        for g in s["goals"]:
            met, how = verdict(g, s)
            if g["reference"]:
                met = "(reference)"
                how = ""
            w(f"| {g['name']} | {goal_text(g) if not g['reference'] else ''} | {measured_text(g)} | {met} | {how} |")
        w("")
        profiles = data.get("profiles") or {}
        if profiles:
            w("Where the rest goes: the profiles under saturation, "
              + ", ".join(f"[{t}]({p['file']})" for t, p in profiles.items() if isinstance(p, dict))
              + " (self time by shared object and symbol, and the system calls per request).")
        else:
            w("No profile in this run (`--profile-seconds 0`); `bench.py --profile-only` makes them.")
        w("")

    # ---- every target
    w("## Every target at saturation (closed loop)")
    w("")
    w("CPU is the proxy's whole process tree (nginx: master + workers; HAProxy and keygate: one process, "
      "all threads) from `/proc/PID/stat`, user and system separately, ÷ wrk's requests; for `direct` it "
      "is the upstream's. Redis CPU is the limiter's Redis (only keygate-redis uses it). System calls: the "
      "proxy's processes in a counting run of their own. RSS: idle = one second after start, before any "
      "traffic; peak = `VmHWM` at the end of the run; nginx's are summed over its processes (shared pages "
      f"counted in each; PSS in the JSON). p50 / p99 at {half} of {of_what} saturation throughput.")
    w("")
    w(f"| target | req/s | ÷ nginx | CPU µs / req | user | system | Redis CPU µs / req | system calls / req "
      f"| idle RSS | peak RSS | p50 ms | p99 ms |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|")
    idle_all = data.get("idle_rss") or {}
    for t in targets:
        tp = spread(s["throughput"][t], "{:,.0f}")
        ratio_n = spread(s["ratios"][t]["vs_nginx"]) if t in proxies else "–"
        cpu = s.get("cpu_us_per_request", {}).get(t)
        if cpu is None and s["cpu_s_per_1000"].get(t):
            cpu = {k: (x * 1000 if k != "n" else x) for k, x in s["cpu_s_per_1000"][t].items()}
        user = s.get("cpu_user_us_per_request", {}).get(t)
        system = s.get("cpu_sys_us_per_request", {}).get(t)
        redis = s.get("redis_cpu_us_per_request", {}).get(t)
        redis_txt = spread(redis, "{:.1f}") if t.endswith("-redis") else "–"
        sc = s.get("syscalls_per_request", {}).get(t)
        idle = idle_all.get(t)
        idle_txt = mib(idle["rss_kb"]) if idle else mib(data["idle_rss_kb"].get(t))
        if idle and idle["processes"] > 1:
            idle_txt += f" ({idle['processes']} proc.)"
        peak = data["peak_rss"].get(t)
        rss = "–"
        if peak:
            rss = mib(peak["vmhwm_kb_sum"])
            if peak["processes"] > 1:
                rss += f" ({peak['processes']} proc.)"
        lat = s["latency"].get(half, {}).get(t, {})
        w(f"| {t} | {tp} | {ratio_n} | {spread(cpu, '{:.1f}')} | {spread(user, '{:.1f}')} | "
          f"{spread(system, '{:.1f}')} | {redis_txt} | {spread(sc, '{:.2f}')} | {idle_txt} | {rss} | "
          f"{med(lat.get('p50_ms'), '{:.3f}')} | {med(lat.get('p99_ms'), '{:.3f}')} |")
    w("")
    w("Where else the CPU goes, per request at saturation: the proxy's context switches (summed over "
      "`/proc/PID/task/*/status`), and the CPU of the upstream, Redis and the load generator, µs per request:")
    w("")
    w("| target | context switches per request | upstream | Redis | load generator (wrk) |")
    w("|---|---|---|---|---|")
    for t in targets:
        extra = [spread(s.get(k, {}).get(t), "{:.1f}", 1000) for k in
                 ("upstream_cpu_s_per_1000", "redis_cpu_s_per_1000", "loadgen_cpu_s_per_1000")]
        if t == "direct":
            extra[0] = "(the target)"
        w(f"| {t} | {spread(s.get('context_switches_per_request', {}).get(t), '{:.3f}')} | " + " | ".join(extra) + " |")
    w("")

    # ---- system calls
    if any(r.get("syscalls") for r in data["rounds"]):
        w("## System calls per request")
        w("")
        w(f"Counted with `{data.get('syscall_method')}` over every thread of the proxy's processes during a "
          f"`wrk -t{st['threads']} -c{st['connections']}` run of {st.get('syscall_duration')} s per target and "
          "round (after its saturation run), ÷ wrk's requests; the median over rounds. Counting slows the "
          "target a little, so those runs' req/s (shown) are not the table's above.")
        w("")
        w("| target | system calls per request | req/s while counting | the most frequent, per request (median over rounds) |")
        w("|---|---|---|---|")
        for t in targets:
            per = [r["syscalls"][t] for r in data["rounds"] if r.get("syscalls") and t in r["syscalls"]]
            if not per:
                continue
            names = {}
            for x in per:
                for k, val in x["by_syscall_per_request"].items():
                    names.setdefault(k, []).append(val)
            top = sorted(((sorted(vals)[len(vals) // 2] if len(vals) == len(per) else 0, k)
                          for k, vals in names.items()), reverse=True)
            top_txt = ", ".join(f"{k} {val:.2f}" for val, k in top[:6] if val >= 0.01)
            rps = sorted(x["rps_while_counting"] for x in per)[len(per) // 2]
            w(f"| {t} | {spread(s['syscalls_per_request'].get(t), '{:.2f}')} | {rps:,.0f} | {top_txt} |")
        w("")

    # ---- latency
    w("## Latency at fixed rates (coordinated omission corrected)")
    w("")
    w(f"Rates are fractions of {of_what} saturation throughput in the same round. Added = target − direct "
      "at the same rate in the same round, then the median over rounds. Milliseconds. A rate the target "
      "cannot sustain shows as an achieved rate below the asked one and a latency that grows with the run's "
      "length (a queue), not a property of the proxy at that load.")
    w("")
    w("| load | target | rate asked → achieved /s | p50 | p99 | p99.9 | added p50 | added p99 | added p99.9 |")
    w("|---|---|---|---|---|---|---|---|---|")
    for key in fr:
        for t in targets:
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
    w("In brackets: the CPU other processes on the machine took during that run, in cores (foreign CPU; "
      "the machine has " + str(m["nproc"]) + "). A ratio of two runs is only as good as their foreign CPU "
      "is alike.")
    w("")
    has_load = "loadavg" in data["rounds"][0]
    w("| round | order | " + ("load average | " if has_load else "") + " | ".join(targets) + " |")
    w("|---|---|" + ("---|" if has_load else "") + "---|" * len(targets))
    for i, rd in enumerate(data["rounds"], 1):
        order = " → ".join(x.replace("keygate-", "kg-") for x in rd["order"])
        w(f"| {i} | {order} | " + (f"{' '.join(rd['loadavg'])} | " if has_load else "")
          + " | ".join(f"{rd['saturation'][t]['rps']:,.0f} ({rd['saturation'][t]['foreign_cpu']:.2f})"
                       for t in targets) + " |")
    w("")
    bad = [(i, t, rd["saturation"][t]["non_2xx"], rd["saturation"][t]["socket_errors"])
           for i, rd in enumerate(data["rounds"], 1) for t in targets
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
        w("| target | CPU µs per request (under perf) | kernel share | system calls per request (perf trace) | profile |")
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
    targets = targets_of(data)
    of_what = "nginx's" if "workers" in data else "the direct"
    short = {t: t.replace("keygate-", "kg-").replace("nginx-keymap", "ngx-map") for t in targets}
    with tempfile.TemporaryDirectory() as tmp:
        tp = Path(tmp) / "throughput.dat"
        with tp.open("w") as f:
            f.write("round " + " ".join(targets) + "\n")
            for i, rd in enumerate(data["rounds"], 1):
                f.write(f"{i} " + " ".join(str(rd["saturation"][t]["rps"]) for t in targets) + "\n")
        ratio_targets = [t for t in targets if t not in ("direct", "nginx")]
        ratios = Path(tmp) / "ratios.dat"
        with ratios.open("w") as f:
            f.write("round " + " ".join(ratio_targets) + "\n")
            for i, rd in enumerate(data["rounds"], 1):
                nginx = rd["saturation"]["nginx"]["rps"]
                f.write(f"{i} " + " ".join(str(rd["saturation"][t]["rps"] / nginx) for t in ratio_targets) + "\n")
        lat = Path(tmp) / "p99.dat"
        with lat.open("w") as f:
            f.write("target " + " ".join(fr) + "\n")
            for t in targets:
                vals = [max(s["latency"][k][t]["p99_ms"]["median"], 0.001) for k in fr]
                f.write(short[t] + " " + " ".join(str(x) for x in vals) + "\n")
        cols = len(targets)
        n = len(data["rounds"])
        p99s = [max(s["latency"][k][t]["p99_ms"]["median"], 0.001) for k in fr for t in targets]
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
set xlabel "target; bars: load as a fraction of {of_what} maximum"
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
