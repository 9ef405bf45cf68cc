#!/usr/bin/env bash
# keygate's load benchmark: keygate against nginx, HAProxy, nginx with a key map and the bare
# upstream on this machine, interleaved over rounds. See docs/benchmarks.md.
#
#   bash benches/load/run.sh                  # 5 rounds + profiles, ~40 minutes
#   bash benches/load/run.sh --rounds 3 --duration 5 --latency-duration 5 --profile-seconds 0   # ~13 min
#
# Installs what is missing (Debian packages nginx, haproxy, wrk, redis-server, gnuplot-nox,
# openssl; `oha` from crates.io into ~/.cargo/bin), builds keygate (release), then runs
# bench.py, which writes benches/results/<date>.{json,md,png}. Every argument is passed
# to bench.py (`python3 benches/load/bench.py --help`). Every server it starts listens on
# a free high port on 127.0.0.1 and is stopped at the end; it never binds 80, 6379, 8443,
# 9090 or 9091, and never touches a Redis or nginx it did not start.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx)
command -v haproxy >/dev/null || need_apt+=(haproxy)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v gnuplot >/dev/null || need_apt+=(gnuplot-nox)
command -v openssl >/dev/null || need_apt+=(openssl)
if ((${#need_apt[@]})); then
    echo "installing ${need_apt[*]} (Debian packages)" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
    # The packages may start system services (nginx on :80, redis on :6379): the benchmark
    # runs its own instances, so stop and disable the ones the packages just installed.
    for service in nginx haproxy redis-server; do
        if [[ " ${need_apt[*]} " == *" ${service} "* ]]; then
            if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
                $sudo systemctl disable --now "$service" >/dev/null 2>&1 || true
            elif command -v service >/dev/null; then
                $sudo service "$service" stop >/dev/null 2>&1 || true
            fi
        fi
    done
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v oha >/dev/null; then
    echo "installing oha from crates.io (cargo install oha --locked; a few minutes)" >&2
    cargo install oha --locked
fi

echo "building keygate and the floor relay (release)" >&2
(cd "$root" && cargo build --release --locked --bin keygate --example relay_floor)

exec python3 "$here/bench.py" --keygate "$root/target/release/keygate" --oha "$(command -v oha)" \
    --relay "$root/target/release/examples/relay_floor" "$@"
