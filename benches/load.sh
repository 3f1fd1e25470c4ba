#!/usr/bin/env bash
# Proxy efficiency: warmgate against nginx and HAProxy as reverse proxies, all in one run, each
# with one worker pinned to one CPU, in front of the same static nginx upstream.
#
#   benches/load.sh            # needs nginx, haproxy, wrk, h2load and python3
#                              # (apt-get install -y nginx haproxy wrk nghttp2-client)
#
# Figures (each a median of ROUNDS alternating runs unless said):
#   requests per proxy CPU-second, empty / 4 KiB / 64 KiB bodies (wrk -c64), HTTP/1.1
#   requests per proxy CPU-second, 64 KiB uploads (wrk -c64, POST, the upstream answers 204)
#   requests per proxy CPU-second over h2c (h2load -c16 -m10)
#   a reject (503 + Retry-After from the gate) against a forward, per CPU-second
#   RSS per idle keep-alive connection (IDLE of them), throughput with them open against
#   without, and how many are still open after that load
#   added p50 and p99 at a paced ~5,000 req/s (50 connections, 10 ms between requests)
#   warmgate with server.workers = 2 against 1 (both CPUs; the load shares CPU 1)
#   the floor: `warmgate-loadtest floor`, a relay that does nothing but the reads and writes a
#   request needs (no parsing, no header rewritten), on the HTTP/1.1 body rows: what the system
#   calls and the loopback TCP stack cost alone, the most any proxy could reach here
#
#   ONLY=h1 benches/load.sh    # only the HTTP/1.1 body rows (with the floor), with the CPU time
#                              # a request split into user and system, and the TCP segments
#                              # sent a request (every party; needs nstat, else 0)
#   ONLY=h2c benches/load.sh   # only the h2c figure, the proxies alternated ROUNDS times, with
#                              # the CPU time a request split into user and system
#   H2POST=512 ONLY=h2c ...    # the h2c figure for POSTs of that many bytes to /upload instead
#                              # (the upstream reads the body and answers 204)
#   BEFORE=path/to/warmgate    # and another build of warmgate beside this one ("before")
#   BIN=path/to/warmgate       # measure that build as warmgate (the PGO one: scripts/pgo.sh)
# Everything listens on 127.0.0.1 and is stopped (by PID) at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
IDLE=${IDLE:-8000}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
ulimit -n "$(ulimit -Hn)"
. "$(dirname "$0")/lib.sh"
BIN=${BIN:-./target/release/warmgate}
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet -p warmgate-loadtest
LOADTEST=${LOADTEST:-./target/release/warmgate-loadtest}
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
for t in wrk h2load python3 "$HAPROXY"; do
  command -v "$t" >/dev/null || { echo "load.sh needs $t" >&2; exit 1; }
done

static_upstream 18081
body_files

nginx_proxy_config 18082 18092 18081 > "$work/nginx-proxy.conf"
haproxy_config 18085 18095 18081 > "$work/haproxy.cfg"
wg_config() { warmgate_config "$1" "$2" 18081; }
wg_config 18083 1 > "$work/warmgate.toml"
wg_config 18086 2 > "$work/warmgate-2.toml"
# The same proxy with every request refused by the gate (feature switched off): a reject.
wg_config 18084 1 > "$work/warmgate-reject.toml"
cat >> "$work/warmgate-reject.toml" <<CONF
[[feature]]
name = "default"
priority = "normal"
state = "off"
CONF
echo 'function delay() return 10 end' > "$work/pace.lua"

taskset -c "$LOAD_CPU" "$NGINX" -c "$work/upstream.conf" -p "$work" & pids+=($!)
taskset -c "$PROXY_CPU" "$NGINX" -c "$work/nginx-proxy.conf" -p "$work" & NGINX_PID=$!; pids+=($NGINX_PID)
taskset -c "$PROXY_CPU" "$HAPROXY" -db -f "$work/haproxy.cfg" & HAPROXY_PID=$!; pids+=($HAPROXY_PID)
taskset -c "$PROXY_CPU" "$BIN" run "$work/warmgate.toml" & WG_PID=$!; pids+=($WG_PID)
taskset -c "$PROXY_CPU" "$BIN" run "$work/warmgate-reject.toml" & WR_PID=$!; pids+=($WR_PID)
taskset -c "$PROXY_CPU,$LOAD_CPU" "$BIN" run "$work/warmgate-2.toml" & W2_PID=$!; pids+=($W2_PID)
taskset -c "$PROXY_CPU" "$LOADTEST" floor --listen 127.0.0.1:18089 --upstream 127.0.0.1:18081 \
  2>"$work/floor.log" & FL_PID=$!; pids+=($FL_PID)
wait_port 18081 18082 18083 18084 18085 18086 18089 18092 18095

declare -A PORT=([nginx]=18082 [haproxy]=18085 [warmgate]=18083 [reject]=18084 [warmgate-2]=18086)
declare -A H2PORT=([nginx]=18092 [haproxy]=18095 [warmgate]=18083)
declare -A PID=([nginx]=$NGINX_PID [haproxy]=$HAPROXY_PID [warmgate]=$WG_PID [reject]=$WR_PID [warmgate-2]=$W2_PID [floor]=$FL_PID)
PORT[floor]=18089
PEERS=(nginx haproxy warmgate)
if [ -n "${BEFORE:-}" ]; then
  wg_config 18087 1 > "$work/before.toml"
  taskset -c "$PROXY_CPU" "$BEFORE" run "$work/before.toml" & B_PID=$!; pids+=($B_PID)
  wait_port 18087
  PORT[before]=18087; H2PORT[before]=18087; PID[before]=$B_PID
  PEERS+=(before)
fi

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hz=$(getconf CLK_TCK)
median() { printf "%s\n" "$@" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
per_cpu_s() { awk -v r="$1" -v t="$2" -v hz="$hz" 'BEGIN { printf "%.0f", r / (t / hz) }'; }

# Requests per proxy CPU-second under wrk -c$CONNS for $DUR s on PATH (after a 2 s warm-up).
h1_eff() { # name path
  local port=${PORT[$1]} pid=${PID[$1]} before after reqs
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$port$2" >/dev/null
  before=$(cpu_ticks "$pid")
  reqs=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" "http://127.0.0.1:$port$2" |
    awk '/requests in/ {print $1}')
  after=$(cpu_ticks "$pid")
  per_cpu_s "$reqs" $((after - before))
}
# TCP segments sent on this machine (every socket, both ends of each loopback connection; nstat
# from iproute2, its history kept in the scratch directory), or 0 without nstat.
export NSTAT_HISTORY="$work/nstat.history"
tcp_segs() {
  if command -v nstat >/dev/null; then nstat -asz TcpOutSegs | awk '/^TcpOutSegs/ {print $2}'; else echo 0; fi
}
# The same, as "requests/CPU-s user-µs/request system-µs/request segments/request" (the TCP
# segments every party sent, a request: 4 when no ACK goes alone); a wrk script after the path
# (the upload's).
h1_split() { # name path [wrk args...]
  local port=${PORT[$1]} pid=${PID[$1]} path=$2 u0 s0 u1 s1 reqs g0 g1
  shift 2
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s "$@" "http://127.0.0.1:$port$path" >/dev/null
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  g0=$(tcp_segs)
  reqs=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" "$@" "http://127.0.0.1:$port$path" |
    awk '/requests in/ {print $1}')
  g1=$(tcp_segs)
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  awk -v r="$reqs" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$hz" -v g=$((g1 - g0)) \
    'BEGIN { printf "%.0f %.2f %.2f %.2f\n", r / ((u + s) / hz), u / hz / r * 1e6, s / hz / r * 1e6, g / r }'
}
# The same over h2c prior knowledge: 16 connections, 10 streams each; GETs of /empty, or with
# H2POST=N, POSTs of N bytes to /upload.
H2PATH=/empty; H2ARGS=()
if [ -n "${H2POST:-}" ]; then
  head -c "$H2POST" /dev/zero | tr '\0' 'p' > "$work/h2post.bin"
  H2PATH=/upload; H2ARGS=(-d "$work/h2post.bin")
fi
h2_eff() { # name
  local port=${H2PORT[$1]} pid=${PID[$1]} before after reqs
  taskset -c "$LOAD_CPU" h2load -c16 -m10 -D 2 "${H2ARGS[@]}" "http://127.0.0.1:$port$H2PATH" >/dev/null
  before=$(cpu_ticks "$pid")
  reqs=$(taskset -c "$LOAD_CPU" h2load -c16 -m10 -D "$DUR" "${H2ARGS[@]}" "http://127.0.0.1:$port$H2PATH" |
    awk '/^requests:/ {print $8}')
  after=$(cpu_ticks "$pid")
  per_cpu_s "$reqs" $((after - before))
}
# The same, as "requests/CPU-s user-µs/request system-µs/request": where the CPU went.
h2_split() { # name
  local port=${H2PORT[$1]} pid=${PID[$1]} u0 s0 u1 s1 reqs
  taskset -c "$LOAD_CPU" h2load -c16 -m10 -D 2 "${H2ARGS[@]}" "http://127.0.0.1:$port$H2PATH" >/dev/null
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  reqs=$(taskset -c "$LOAD_CPU" h2load -c16 -m10 -D "$DUR" "${H2ARGS[@]}" "http://127.0.0.1:$port$H2PATH" |
    awk '/^requests:/ {print $8}')
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  awk -v r="$reqs" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$hz" \
    'BEGIN { printf "%.0f %.2f %.2f\n", r / ((u + s) / hz), u / hz / r * 1e6, s / hz / r * 1e6 }'
}
# p50 and p99 (ms) of a paced load: 50 connections, 10 ms between requests on each.
paced() { # port -> "p50 p99 req/s"
  taskset -c "$LOAD_CPU" wrk -t1 -c50 -d"${DUR}s" --latency -s "$work/pace.lua" "http://127.0.0.1:$1/empty" |
    awk 'function ms(v) { if (v ~ /us$/) { sub("us", "", v); return v / 1000 } if (v ~ /ms$/) { sub("ms", "", v); return v } sub("s", "", v); return v * 1000 }
         /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) } /^Requests\/sec/ { r = $2 } END { print p50, p99, r }'
}

declare -A R
row() { # key -> median of ROUNDS runs of the command after it
  local key=$1; shift
  local vals=() v
  for _ in $(seq "$ROUNDS"); do v=$("$@"); vals+=("$v"); done
  R[$key]=$(median "${vals[@]}")
  echo "  $key: ${vals[*]} -> ${R[$key]}" >&2
}

if [ "${ONLY:-}" = h2c ]; then
  echo "== h2c: h2load -c16 -m10 ${H2ARGS[*]} $H2PATH, ${DUR}s, proxies alternated $ROUNDS times" >&2
  for _ in $(seq "$ROUNDS"); do
    for p in "${PEERS[@]}"; do
      read -r v u s < <(h2_split "$p")
      eval "h2_${p}+=($v); h2u_${p}+=($u); h2s_${p}+=($s)"
    done
  done
  for p in "${PEERS[@]}"; do
    eval "vals=(\"\${h2_${p}[@]}\"); us=(\"\${h2u_${p}[@]}\"); ss=(\"\${h2s_${p}[@]}\")"
    R[$p]=$(median "${vals[@]}"); echo "  $p: ${vals[*]} -> ${R[$p]}"
    echo "    CPU µs a request, user: ${us[*]} -> $(median "${us[@]}"); system: ${ss[*]} -> $(median "${ss[@]}")"
  done
  awk -v w="${R[warmgate]}" -v h="${R[haproxy]}" 'BEGIN { printf "warmgate / HAProxy: %.2fx\n", w / h }'
  exit 0
fi

echo "== requests per proxy CPU-second: wrk -t1 -c$CONNS, ${DUR}s, proxies on CPU $PROXY_CPU, upstream + load on CPU $LOAD_CPU" >&2
H1PEERS=("${PEERS[@]}" floor)
for body in empty 4k 64k; do
  for _ in $(seq "$ROUNDS"); do
    for p in "${H1PEERS[@]}"; do
      read -r v u s g < <(h1_split "$p" "/$body")
      eval "h1_${p}_$body+=($v); h1u_${p}_$body+=($u); h1s_${p}_$body+=($s); h1g_${p}_$body+=($g)"
    done
  done
  for p in "${H1PEERS[@]}"; do
    eval "vals=(\"\${h1_${p}_$body[@]}\"); us=(\"\${h1u_${p}_$body[@]}\"); ss=(\"\${h1s_${p}_$body[@]}\"); gs=(\"\${h1g_${p}_$body[@]}\")"
    R[$p.$body]=$(median "${vals[@]}")
    echo "  $p /$body: ${vals[*]} -> ${R[$p.$body]}; CPU µs a request, user $(median "${us[@]}"), system $(median "${ss[@]}"); TCP segments a request $(median "${gs[@]}")" >&2
  done
done
# Uploads: a 64 KiB body POSTed (the floor relays no request body).
head -c 65536 /dev/zero | tr '\0' 'u' > "$work/upload.bin"
cat > "$work/upload.lua" <<LUA
local f = io.open("$work/upload.bin", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
LUA
for _ in $(seq "$ROUNDS"); do
  for p in "${PEERS[@]}"; do
    read -r v u s _ < <(h1_split "$p" /upload -s "$work/upload.lua")
    eval "up_${p}+=($v); upu_${p}+=($u); ups_${p}+=($s)"
  done
done
for p in "${PEERS[@]}"; do
  eval "vals=(\"\${up_${p}[@]}\"); us=(\"\${upu_${p}[@]}\"); ss=(\"\${ups_${p}[@]}\")"
  R[$p.upload]=$(median "${vals[@]}")
  echo "  $p POST /upload (64 KiB): ${vals[*]} -> ${R[$p.upload]}; CPU µs a request, user $(median "${us[@]}"), system $(median "${ss[@]}")" >&2
done
if [ "${ONLY:-}" = h1 ]; then
  for body in empty 4k 64k; do
    awk -v b="$body" -v n="${R[nginx.$body]}" -v h="${R[haproxy.$body]}" -v w="${R[warmgate.$body]}" -v f="${R[floor.$body]}" \
      'BEGIN { printf "%s: warmgate %.2fx nginx, %.2fx HAProxy; the floor %.2fx nginx; warmgate at %.0f%% of the floor\n", b, w / n, w / h, f / n, 100 * w / f }'
  done
  awk -v n="${R[nginx.upload]}" -v h="${R[haproxy.upload]}" -v w="${R[warmgate.upload]}" \
    'BEGIN { printf "64 KiB upload: warmgate %.2fx nginx, %.2fx HAProxy\n", w / n, w / h }'
  exit 0
fi

echo "== h2c: h2load -c16 -m10, ${DUR}s" >&2
for p in "${PEERS[@]}"; do row "$p.h2c" h2_eff "$p"; done

echo "== reject vs forward (warmgate, empty body)" >&2
row reject.empty h1_eff reject /empty

echo "== server.workers = 2 on CPUs $PROXY_CPU,$LOAD_CPU (the load shares CPU $LOAD_CPU)" >&2
row warmgate-2.empty h1_eff warmgate-2 /empty

echo "== paced: 50 connections, 10 ms apart, ${DUR}s: p50 p99 (ms) req/s" >&2
for _ in $(seq "$ROUNDS"); do
  for name in direct "${PEERS[@]}"; do
    port=${PORT[$name]:-18081}
    read -r a b c < <(paced "$port"); echo "  $name: $a $b ($c req/s)" >&2
    eval "p50_${name}+=($a); p99_${name}+=($b)"
  done
done
for name in direct "${PEERS[@]}"; do
  eval "R[$name.p50]=\$(median \"\${p50_${name}[@]}\"); R[$name.p99]=\$(median \"\${p99_${name}[@]}\")"
done

echo "== $IDLE idle keep-alive connections (one request each, then quiet)" >&2
for p in "${PEERS[@]}"; do
  without=$(h1_eff "$p" /empty)
  rss0=$(rss_kb "${PID[$p]}")
  coproc HOLD { python3 benches/idle_conns.py "${PORT[$p]}" "$IDLE" /empty; }
  read -r _ opened <&"${HOLD[0]}"
  sleep 3   # warmgate parks a connection idle for 1 s
  rss1=$(rss_kb "${PID[$p]}")
  with=$(h1_eff "$p" /empty)
  sleep 2
  rss2=$(rss_kb "${PID[$p]}")
  echo check >&"${HOLD[1]}"
  read -r _ still <&"${HOLD[0]}"
  fd=${HOLD[1]}; exec {fd}>&-
  wait "$HOLD_PID" 2>/dev/null || true
  R[$p.idle_b]=$(( (rss1 - rss0) * 1024 / opened ))
  R[$p.idle_b2]=$(( (rss2 - rss0) * 1024 / opened ))
  R[$p.idle_mib]=$(awk -v k="$rss1" 'BEGIN { printf "%.1f", k / 1024 }')
  R[$p.idle_tp]=$(awk -v a="$with" -v b="$without" 'BEGIN { printf "%.2f", a / b }')
  R[$p.idle_left]=$still
  echo "  $p: RSS ${rss0} -> ${rss1} kB with $opened open (${rss2} kB after the load); req/CPU-s $without without, $with with; $still still open after" >&2
  sleep 1
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
cell() { echo "${R[$1.$2]} ($(ratio "${R[$1.$2]}" "${R[nginx.$2]}"))"; }
added() { awk -v v="${R[$1.$2]}" -v d="${R[direct.$2]}" 'BEGIN { printf "%.3f ms", v - d }'; }
cat <<TABLE

| figure | nginx | HAProxy | warmgate (ratio to nginx) |
|---|---|---|---|
| requests per proxy CPU-second, empty body | ${R[nginx.empty]} | $(cell haproxy empty) | $(cell warmgate empty) |
| requests per proxy CPU-second, 4 KiB body | ${R[nginx.4k]} | $(cell haproxy 4k) | $(cell warmgate 4k) |
| requests per proxy CPU-second, 64 KiB body | ${R[nginx.64k]} | $(cell haproxy 64k) | $(cell warmgate 64k) |
| requests per proxy CPU-second, 64 KiB upload | ${R[nginx.upload]} | $(cell haproxy upload) | $(cell warmgate upload) |
| h2c requests per proxy CPU-second | ${R[nginx.h2c]} | $(cell haproxy h2c) | $(cell warmgate h2c) |
| RSS per idle keep-alive connection ($IDLE open), at rest | ${R[nginx.idle_b]} B | ${R[haproxy.idle_b]} B | ${R[warmgate.idle_b]} B |
| the same after the load that follows (still open) | ${R[nginx.idle_b2]} B | ${R[haproxy.idle_b2]} B | ${R[warmgate.idle_b2]} B |
| RSS holding them | ${R[nginx.idle_mib]} MiB | ${R[haproxy.idle_mib]} MiB | ${R[warmgate.idle_mib]} MiB |
| throughput with them open / without | ${R[nginx.idle_tp]} | ${R[haproxy.idle_tp]} | ${R[warmgate.idle_tp]} |
| idle connections still open after that load | ${R[nginx.idle_left]} | ${R[haproxy.idle_left]} | ${R[warmgate.idle_left]} |
| added p50 / p99 at ~5,000 req/s (direct ${R[direct.p50]} / ${R[direct.p99]} ms) | $(added nginx p50) / $(added nginx p99) | $(added haproxy p50) / $(added haproxy p99) | $(added warmgate p50) / $(added warmgate p99) |

The floor (a relay doing only the reads and writes, \`warmgate-loadtest floor\`): empty ${R[floor.empty]} ($(ratio "${R[floor.empty]}" "${R[nginx.empty]}") nginx; warmgate at $(awk -v w="${R[warmgate.empty]}" -v f="${R[floor.empty]}" 'BEGIN { printf "%.0f", 100 * w / f }') % of it), 4 KiB ${R[floor.4k]} ($(ratio "${R[floor.4k]}" "${R[nginx.4k]}"); $(awk -v w="${R[warmgate.4k]}" -v f="${R[floor.4k]}" 'BEGIN { printf "%.0f", 100 * w / f }') %), 64 KiB ${R[floor.64k]} ($(ratio "${R[floor.64k]}" "${R[nginx.64k]}"); $(awk -v w="${R[warmgate.64k]}" -v f="${R[floor.64k]}" 'BEGIN { printf "%.0f", 100 * w / f }') %).
warmgate reject: ${R[reject.empty]} req/CPU-s, $(ratio "${R[reject.empty]}" "${R[warmgate.empty]}") cheaper than a forward.
warmgate with server.workers = 2: ${R[warmgate-2.empty]} req/CPU-s, $(ratio "${R[warmgate-2.empty]}" "${R[warmgate.empty]}") of one worker.
TABLE
