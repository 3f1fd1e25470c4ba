#!/usr/bin/env bash
# TLS recipe: warmgate vs nginx terminating TLS with the same certificate (ECDSA P-256), each
# with one worker pinned to one CPU, in front of the same static nginx upstream, same run.
#
#   benches/tls.sh            # needs nginx, wrk and openssl
#   UPLOAD=512 UPLOAD_ONLY=1 benches/tls.sh   # only the upload row, with bodies of that size
#   BIN=path/to/warmgate      # measure that build
#
# Reports, per proxy CPU-second: handshakes (a new TLS connection for every request; wrk resumes
# sessions, and both servers offer resumption by default), requests over kept-alive TLS
# connections, and 64 KiB uploads over them (POST /upload, the upstream answers 204; nginx keeps
# the body in memory, `client_body_buffer_size 128k`), and the ratios warmgate / nginx. Everything listens
# on 127.0.0.1 and is stopped (by PID) at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-3}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
UPLOAD=${UPLOAD:-65536}
BIN=${BIN:-./target/release/warmgate}
. "$(dirname "$0")/lib.sh"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test" \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
static_upstream 18091
cat > "$work/nginx-tls.conf" <<CONF
daemon off; master_process off; worker_processes 1; error_log $work/px.log; pid $work/px.pid;
events { worker_connections 4096; }
http { $http_common keepalive_requests 100000;
  upstream backend { server 127.0.0.1:18091; keepalive 128; }
  server { listen 127.0.0.1:18092 ssl http2;
    ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; client_body_buffer_size 128k; } } }
CONF
cat > "$work/warmgate.toml" <<CONF
listen = "127.0.0.1:18093"
mode = "shadow"
[server]
workers = 1
[tls]
certificates = [{ cert = "$work/cert.pem", key = "$work/key.pem" }]
[upstream]
endpoints = ["127.0.0.1:18091"]
[log]
level = "warn"
CONF

taskset -c "$LOAD_CPU" "$NGINX" -c "$work/upstream.conf" -p "$work" & pids+=($!)
taskset -c "$PROXY_CPU" "$NGINX" -c "$work/nginx-tls.conf" -p "$work" & NGINX_PID=$!; pids+=($NGINX_PID)
taskset -c "$PROXY_CPU" "$BIN" run --config "$work/warmgate.toml" & WG_PID=$!; pids+=($WG_PID)
wait_port 18091 18092 18093

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

run() { # name port pid conns extra-wrk-args...
  local name=$1 port=$2 pid=$3 conns=$4; shift 4
  local before after reqs
  taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d2s "$@" "https://127.0.0.1:$port/" >/dev/null
  before=$(cpu_ticks "$pid")
  reqs=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d"${DUR}s" "$@" "https://127.0.0.1:$port/" | awk '/requests in/ {print $1}')
  after=$(cpu_ticks "$pid")
  awk -v n="$name" -v r="$reqs" -v t=$((after - before)) -v hz="$hz" -v d="$DUR" \
    'BEGIN { cpu = t / hz; printf "%-9s %9d req  %6.2f CPU-s  %9.0f per CPU-s  %8.0f per s\n", n, r, cpu, r / cpu, r / d }'
}
median() { printf "%s\n" "$@" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

compare() { # title conns extra-wrk-args...
  local title=$1 conns=$2; shift 2
  echo "== $title"
  local n=() w=() line
  for _ in $(seq "$ROUNDS"); do
    line=$(run nginx 18092 "$NGINX_PID" "$conns" "$@"); echo "$line"; n+=("$(echo "$line" | awk '{print $6}')")
    line=$(run warmgate 18093 "$WG_PID" "$conns" "$@"); echo "$line"; w+=("$(echo "$line" | awk '{print $6}')")
  done
  local nm wm; nm=$(median "${n[@]}"); wm=$(median "${w[@]}")
  awk -v t="$title" -v n="$nm" -v w="$wm" 'BEGIN { printf "median per CPU-s: nginx %.0f, warmgate %.0f, ratio warmgate/nginx %.2f\n", n, w, w / n }'
}

if [ -z "${UPLOAD_ONLY:-}" ]; then
  compare "handshakes (a new TLS connection per request, wrk -c16)" 16 -H "Connection: close"
  compare "requests over kept-alive TLS connections (wrk -c$CONNS)" "$CONNS"
fi
head -c "$UPLOAD" /dev/zero | tr '\0' 'u' > "$work/upload.bin"
cat > "$work/upload.lua" <<LUA
local f = io.open("$work/upload.bin", "rb")
wrk.method = "POST"
wrk.path = "/upload"
wrk.body = f:read("*a")
f:close()
LUA
compare "$UPLOAD-byte uploads over kept-alive TLS connections (wrk -c$CONNS)" "$CONNS" -s "$work/upload.lua"
