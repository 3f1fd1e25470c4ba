#!/usr/bin/env bash
# Userland instructions per request (callgrind): warmgate forwarding an empty body to a static
# nginx, and warmgate answering a reject (the feature switched off), each under wrk -t1 -c8;
# then the forward over h2c (h2load -c16 -m10).
# Instruction counts repeat to a few tenths of a percent on a noisy machine, unlike timings.
# Only the load is counted: callgrind starts with instrumentation off and is switched on once
# the proxy listens and has served a warm-up, and off again before it stops.
#
#   benches/callgrind.sh [SECONDS]      # needs nginx, wrk, h2load and valgrind
#   BIN=path/to/warmgate benches/callgrind.sh   # another build
#   KEEP=DIR benches/callgrind.sh       # and keeps the profiles in DIR
#   CACHE=1 benches/callgrind.sh        # and simulates the caches: data reads and writes that
#                                       # miss the first level and the last, per request
#   H2ONLY=1 benches/callgrind.sh       # only the h2c figure
#   FLOOR=1 benches/callgrind.sh        # and the floor's (warmgate-loadtest floor: a relay
#                                       # doing only the reads and writes, as benches/load.sh)
#   PEERS=1 benches/callgrind.sh        # and nginx's and HAProxy's, as benches/load.sh runs
#                                       # them (one worker), forward and h2c
#   ATOMICS=1 benches/callgrind.sh      # and counts the atomic read-modify-write instructions a
#                                       # request executes (benches/atomics.py; needs objdump)
#
# Everything listens on 127.0.0.1 and is stopped (by PID) at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-15}
. "$(dirname "$0")/lib.sh"
for t in wrk h2load valgrind callgrind_control callgrind_annotate; do
  command -v "$t" >/dev/null || { echo "callgrind.sh needs $t" >&2; exit 1; }
done

static_upstream 18181
: > "$work/www/empty"
"$NGINX" -c "$work/upstream.conf" -p "$work" & pids+=($!)

warmgate_config 18182 1 18181 > "$work/forward.toml"
{ warmgate_config 18183 1 18181
  printf '[[feature]]\nname = "default"\npriority = "normal"\nstate = "off"\n'; } > "$work/reject.toml"
wait_port 18181

if [ -n "${PEERS:-}" ]; then
  HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
  [ -x "$HAPROXY" ] || { echo "callgrind.sh PEERS=1 needs haproxy" >&2; exit 1; }
  nginx_proxy_config 18185 18186 18181 > "$work/nginx-proxy.conf"
  haproxy_config 18187 18188 18181 > "$work/haproxy.cfg"
fi

BIN=${BIN:-./target/release/warmgate}
LOADTEST=${LOADTEST:-./target/release/warmgate-loadtest}
if [ -n "${FLOOR:-}" ] && [ -z "${NO_BUILD:-}" ]; then cargo build --release --quiet -p warmgate-loadtest; fi

# The load: wrk -t1 -c8 (or h2load -c16 -m10 for a name ending in h2c) on PORT for SECONDS;
# prints the requests served.
load() { # name port seconds
  case "$1" in
    *h2c) h2load -c16 -m10 -D "$3" "http://127.0.0.1:$2/empty" | awk '/^requests:/ {print $8}' ;;
    *) wrk -t1 -c8 -d"$3s" "http://127.0.0.1:$2/empty" | awk '/requests in/ {print $1}' ;;
  esac
}

# Prints the instructions per request of warmgate on CONFIG at PORT.
# CONFIG "floor": the floor (warmgate-loadtest floor) on PORT; "nginx", "haproxy": that peer,
# listening on PORT among others.
measure() { # name config port
  local out="$work/$1.callgrind"
  local sim=()
  [ -n "${CACHE:-}" ] && sim=(--cache-sim=yes)
  [ -n "${ATOMICS:-}" ] && sim+=(--dump-instr=yes)
  local cmd=("$BIN" run "$2")
  case "$2" in
    floor) cmd=("$LOADTEST" floor --listen "127.0.0.1:$3" --upstream 127.0.0.1:18181) ;;
    nginx) cmd=("$NGINX" -c "$work/nginx-proxy.conf" -p "$work") ;;
    haproxy) cmd=("$HAPROXY" -db -f "$work/haproxy.cfg") ;;
  esac
  valgrind --tool=callgrind "${sim[@]}" --instr-atstart=no --callgrind-out-file="$out" \
    "${cmd[@]}" 2>"$work/$1.valgrind" & local pid=$!
  pids+=("$pid")
  # Under valgrind the start takes seconds.
  for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/"$3") 2>/dev/null && break; sleep 0.1; done
  load "$1" "$3" 3 >/dev/null
  callgrind_control -i on "$pid" >/dev/null 2>&1
  local n
  n=$(load "$1" "$3" "$SECS")
  callgrind_control -i off "$pid" >/dev/null 2>&1
  kill -TERM "$pid"
  wait "$pid" || true
  local total
  total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  echo "$1: $total instructions over $n requests: $((total / n)) per request"
  if [ -n "${CACHE:-}" ]; then
    callgrind_annotate --show=D1mr,D1mw,DLmr,DLmw,I1mr,ILmr "$out" 2>/dev/null | awk -v n="$n" '/PROGRAM TOTALS/ {
      gsub(",", ""); gsub(/\([^)]*\)/, "")
      printf "  data misses per request: first level %.0f, last level %.1f; instruction misses: first level %.0f, last level %.1f\n", ($1 + $2) / n, ($3 + $4) / n, $5 / n, $6 / n }'
  fi
  if [ -n "${ATOMICS:-}" ]; then
    python3 benches/atomics.py "$out" "$BIN" "$n" 8
  fi
  # KEEP=DIR keeps each profile (callgrind_annotate --inclusive=yes DIR/forward.callgrind).
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$out" "$KEEP/"; fi
}
[ -n "${H2ONLY:-}" ] || measure forward "$work/forward.toml" 18182
[ -n "${H2ONLY:-}" ] || measure reject "$work/reject.toml" 18183
[ -n "${H2ONLY:-}" ] || [ -z "${FLOOR:-}" ] || measure floor floor 18184
measure h2c "$work/forward.toml" 18182
if [ -n "${PEERS:-}" ]; then
  [ -n "${H2ONLY:-}" ] || measure nginx-forward nginx 18185
  measure nginx-h2c nginx 18186
  [ -n "${H2ONLY:-}" ] || measure haproxy-forward haproxy 18187
  measure haproxy-h2c haproxy 18188
fi
