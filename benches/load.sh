#!/usr/bin/env bash
# Load recipe: warmgate vs nginx as reverse proxies on the same machine, in the same run, each
# with one worker thread pinned to one CPU, in front of the same static nginx upstream.
#
#   benches/load.sh            # needs nginx and wrk (apt-get install -y nginx wrk)
#
# Reports requests per proxy CPU-second (saturating load) and p99 at a fixed paced rate, and the
# ratios warmgate / nginx. Everything listens on 127.0.0.1 and is stopped (by PID) at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}
CONNS=${CONNS:-64}
PACED_CONNS=${PACED_CONNS:-20}
PACE_MS=${PACE_MS:-10}   # per-connection delay between requests: ~PACED_CONNS*1000/PACE_MS req/s
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
. "$(dirname "$0")/lib.sh"
static_upstream 18081
cat > "$work/nginx-proxy.conf" <<CONF
daemon off; master_process off; worker_processes 1; error_log $work/px.log; pid $work/px.pid;
events { worker_connections 4096; }
http { $http_common keepalive_requests 100000;
  upstream backend { server 127.0.0.1:18081; keepalive 128; }
  server { listen 127.0.0.1:18082;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; proxy_buffering on; } } }
CONF
cat > "$work/warmgate.toml" <<CONF
listen = "127.0.0.1:18083"
[server]
workers = 1
[upstream]
endpoints = ["127.0.0.1:18081"]
[log]
level = "warn"
[limit]
mode = "fixed"
full_capacity = 100000
[ramp]
stages = { critical = 0.0, high = 0.0, normal = 0.0, low = 0.0 }
start_fraction = 1.0
CONF
# The same proxy with every request rejected (feature switched off): the cost of a reject.
sed -e 's/18083/18084/' "$work/warmgate.toml" > "$work/warmgate-reject.toml"
cat >> "$work/warmgate-reject.toml" <<CONF
[[feature]]
name = "default"
priority = "normal"
state = "off"
CONF
cat > "$work/pace.lua" <<LUA
function delay() return $PACE_MS end
LUA

taskset -c "$LOAD_CPU" "$NGINX" -c "$work/upstream.conf" -p "$work" & pids+=($!)
taskset -c "$PROXY_CPU" "$NGINX" -c "$work/nginx-proxy.conf" -p "$work" & NGINX_PID=$!; pids+=($NGINX_PID)
taskset -c "$PROXY_CPU" ./target/release/warmgate run --config "$work/warmgate.toml" & WG_PID=$!; pids+=($WG_PID)
taskset -c "$PROXY_CPU" ./target/release/warmgate run --config "$work/warmgate-reject.toml" & WR_PID=$!; pids+=($WR_PID)
wait_port 18081 18082 18083 18084

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

saturate() { # name port pid
  local before after reqs
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$2/" >/dev/null   # warm the pools
  before=$(cpu_ticks "$3")
  reqs=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" "http://127.0.0.1:$2/" | awk '/requests in/ {print $1}')
  after=$(cpu_ticks "$3")
  awk -v n="$1" -v r="$reqs" -v t=$((after - before)) -v hz="$hz" -v d="$DUR" \
    'BEGIN { cpu = t / hz; printf "%-9s %10d req  %6.2f CPU-s  %9.0f req/CPU-s  %8.0f req/s\n", n, r, cpu, r / cpu, r / d }'
}

paced_p99() { # port -> p99 in ms (median of three runs)
  local a b c; a=$(paced_once "$1"); b=$(paced_once "$1"); c=$(paced_once "$1")
  printf "%s\n%s\n%s\n" "$a" "$b" "$c" | sort -g | sed -n 2p
}
paced_once() {
  taskset -c "$LOAD_CPU" wrk -t1 -c"$PACED_CONNS" -d"${DUR}s" --latency -s "$work/pace.lua" "http://127.0.0.1:$1/" \
    | awk '/^ +99%/ { v = $2; if (v ~ /us$/) { sub("us", "", v); v /= 1000 } else if (v ~ /ms$/) { sub("ms", "", v) } else if (v ~ /s$/) { sub("s", "", v); v *= 1000 } print v }'
}

echo "== saturating load: wrk -c$CONNS for ${DUR}s, proxy pinned to CPU $PROXY_CPU, upstream + wrk on CPU $LOAD_CPU"
# Alternate the two, ROUNDS times each, and take the median efficiency of each.
ROUNDS=${ROUNDS:-3}
n_effs=(); w_effs=()
for _ in $(seq "$ROUNDS"); do
  n_line=$(saturate nginx 18082 "$NGINX_PID"); echo "$n_line"; n_effs+=("$(echo "$n_line" | awk '{print $6}')")
  w_line=$(saturate warmgate 18083 "$WG_PID"); echo "$w_line"; w_effs+=("$(echo "$w_line" | awk '{print $6}')")
done
median() { printf "%s\n" "$@" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
n_eff=$(median "${n_effs[@]}"); w_eff=$(median "${w_effs[@]}")
echo "median req/CPU-s: nginx $n_eff, warmgate $w_eff"

echo "== paced load: $PACED_CONNS connections, ${PACE_MS} ms between requests on each, ${DUR}s"
d99=$(paced_p99 18081); n99=$(paced_p99 18082); w99=$(paced_p99 18083)
echo "p99 direct ${d99} ms   via nginx ${n99} ms   via warmgate ${w99} ms"
awk -v ne="$n_eff" -v we="$w_eff" -v d="$d99" -v n="$n99" -v w="$w99" 'BEGIN {
  na = n - d; wa = w - d; if (na < 0.001) na = 0.001; if (wa < 0.001) wa = 0.001;
  printf "efficiency ratio (warmgate/nginx req per CPU-s): %.2f\n", we / ne;
  printf "added p99: nginx %.3f ms, warmgate %.3f ms, ratio nginx/warmgate %.2f (>= 1 means warmgate adds less)\n", na, wa, na / wa }'

echo "== reject vs forward: the same warmgate, all requests rejected (503 + Retry-After) vs all forwarded"
r_line=$(saturate rejects 18084 "$WR_PID"); echo "$r_line"
r_eff=$(echo "$r_line" | awk '{print $6}')
awk -v r="$r_eff" -v f="$w_eff" 'BEGIN { printf "a reject costs %.2fx less CPU than a forward (req/CPU-s %.0f vs %.0f)\n", r / f, r, f }'
