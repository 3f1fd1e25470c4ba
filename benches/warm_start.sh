#!/usr/bin/env bash
# Warm start: a freshly started warmgate (the shipped config/warmgate.toml) in front of a warm,
# fast backend, under steady load from its very first request. A restart or a rolling deploy of
# warmgate must cost nothing: no reject, and no added latency while the limit finds its level.
#
#   benches/warm_start.sh          # needs nginx and wrk (apt-get install -y nginx wrk)
#
# Each round: the load (wrk, CONNS connections, all four priorities by path) straight at the
# backend for DUR seconds, then a fresh warmgate and the same load through it from the moment
# its port answers. Reports non-2xx answers and p50/p99 of both. Everything listens on
# 127.0.0.1 and is stopped by PID at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-5}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-3}
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

echo "building (release)..." >&2
cargo build --release --quiet
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

mkdir -p "$work/tmp"
cat > "$work/upstream.conf" <<CONF
daemon off; master_process off; worker_processes 1; error_log $work/up.log; pid $work/up.pid;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $work/tmp; proxy_temp_path $work/tmp;
  fastcgi_temp_path $work/tmp; uwsgi_temp_path $work/tmp; scgi_temp_path $work/tmp;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:18091;
    location / { add_header X-Cache HIT; return 200 "ok"; } } }
CONF
"$NGINX" -c "$work/upstream.conf" &
pids+=($!)

# The shipped config, on loopback ports of this script.
sed -e 's/^listen = "127.0.0.1:8080"/listen = "127.0.0.1:18092"/' \
    -e 's/^listen = "127.0.0.1:9901"/listen = "127.0.0.1:18093"/' \
    -e 's/^endpoints = .*/endpoints = ["127.0.0.1:18091"]/' \
    -e 's/^level = .*/level = "warn"/' \
    config/warmgate.toml > "$work/warmgate.toml"

# Every priority: login (critical, POST), sync, feed, recommend, each with its own users.
cat > "$work/mix.lua" <<'LUA'
local paths = {"/api/login", "/api/sync", "/api/feed", "/api/recommend"}
local n = 0
request = function()
  n = n + 1
  local p = paths[(n % 4) + 1]
  local method = (p == "/api/login") and "POST" or "GET"
  return wrk.format(method, p, { ["x-user"] = "u" .. (n % 5000) })
end
LUA

wait_port() {
  for _ in $(seq 1 500); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.01
  done
  echo "port $1 did not open" >&2; return 1
}

# Prints "non2xx p50_ms p99_ms requests" for one wrk run against $1.
measure() {
  local out
  out=$(wrk -t2 -c"$CONNS" -d"${DUR}s" --latency -s "$work/mix.lua" "$1")
  local non2xx p50 p99 reqs
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  echo "${non2xx:-0} $(to_ms "$p50") $(to_ms "$p99") $reqs"
}
to_ms() {
  case "$1" in
    *us) awk -v v="${1%us}" 'BEGIN {printf "%.3f", v / 1000}' ;;
    *ms) awk -v v="${1%ms}" 'BEGIN {printf "%.3f", v}' ;;
    *s) awk -v v="${1%s}" 'BEGIN {printf "%.3f", v * 1000}' ;;
    *) echo "$1" ;;
  esac
}

wait_port 18091
printf "%-6s %-28s %-36s %s\n" round "direct: non2xx p50 p99 (ms)" "fresh warmgate: non2xx p50 p99 (ms)" "added p99"
for r in $(seq 1 "$ROUNDS"); do
  read -r dn dp50 dp99 _ < <(measure http://127.0.0.1:18091)
  ./target/release/warmgate run --config "$work/warmgate.toml" 2>"$work/wg.log" &
  wg=$!
  pids+=("$wg")
  wait_port 18092
  read -r wn wp50 wp99 wreqs < <(measure http://127.0.0.1:18092)
  # What warmgate itself answered other than the upstream's response, by outcome.
  refused=$(curl -s 127.0.0.1:18093/metrics \
    | awk '/^warmgate_requests_total/ && !/outcome="admitted"/ && $2 > 0 {print}' | sed 's/^warmgate_requests_total//')
  kill "$wg"; wait "$wg" 2>/dev/null || true
  added=$(awk -v a="$wp99" -v b="$dp99" 'BEGIN {printf "%.3f ms", a - b}')
  printf "%-6s %-28s %-36s %s\n" "$r" "$dn $dp50 $dp99" "$wn $wp50 $wp99 ($wreqs requests)" "$added"
  if [ -n "$refused" ]; then echo "       not admitted or failed: $refused"; fi
done
