#!/usr/bin/env bash
# Reload under load: 100 reloads (SIGHUP, alternating two valid configs that differ in a
# feature's state and a timeout) while wrk drives a steady load through warmgate to a static
# nginx upstream; the same load without reloads for comparison, in the same run.
#
#   benches/reload.sh            # needs nginx and wrk
#
# Reports requests, non-2xx answers and socket errors (a lost request shows up as one of
# them), and p99 with and without the reloads.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-20}
RELOADS=${RELOADS:-100}
. "$(dirname "$0")/lib.sh"
static_upstream 18191
base='listen = "127.0.0.1:18193"
[upstream]
endpoints = ["127.0.0.1:18191"]
[log]
level = "info"
[limit]
mode = "fixed"
full_capacity = 10000
[[feature]]
name = "default"
priority = "normal"'
printf '%s\nstate = "auto"\n[server]\nsend_timeout = "15s"\n' "$base" > "$work/a.toml"
printf '%s\nstate = "on"\n[server]\nsend_timeout = "20s"\n' "$base" > "$work/b.toml"
cp "$work/a.toml" "$work/warmgate.toml"

"$NGINX" -c "$work/upstream.conf" -p "$work" & pids+=($!)
./target/release/warmgate run "$work/warmgate.toml" 2>"$work/wg.log" & WG=$!; pids+=($WG)
wait_port 18191 18193

load() { wrk -t1 -c32 -d"${DUR}s" --latency "http://127.0.0.1:18193/"; }
summary() { # label wrk-output
  awk -v l="$1" '
    /requests in/ { req = $1 }
    /Non-2xx/ { non2xx = $NF }
    /Socket errors/ { err = $0 }
    /^ +99%/ { p99 = $2 }
    END { printf "%-16s %9d requests  non-2xx %s  socket errors: %s  p99 %s\n", l, req, (non2xx == "" ? 0 : non2xx), (err == "" ? "none" : err), p99 }' <<<"$2"
}

echo "== steady load without reloads (${DUR}s)"
quiet=$(load)
summary "no reloads" "$quiet"
echo "== the same load with $RELOADS reloads"
( sleep 1; for i in $(seq "$RELOADS"); do
    if [ $((i % 2)) -eq 0 ]; then cp "$work/a.toml" "$work/warmgate.toml"; else cp "$work/b.toml" "$work/warmgate.toml"; fi
    kill -HUP "$WG"; sleep "$(awk -v d="$DUR" -v n="$RELOADS" 'BEGIN { printf "%.3f", (d - 2) / n }')"
  done ) &
reloader=$!
busy=$(load)
wait "$reloader"
summary "$RELOADS reloads" "$busy"
echo "reloads applied: $(grep -c 'config reloaded' "$work/wg.log")"
