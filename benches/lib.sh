# Shared setup for the bench scripts (sourced, not run): a release build, a scratch directory
# and the processes started, all removed/stopped on exit, and a static nginx upstream.
#   . "$(dirname "$0")/lib.sh"
#   static_upstream PORT        # nginx serving a 512-byte index.html on 127.0.0.1:PORT (and
#                               # answering a POST to /upload with 204, its body read)
#   warmgate_config PORT WORKERS UPSTREAM  # a warmgate config that admits everything
#   nginx_proxy_config PORT H2PORT UPSTREAM  # nginx as the peer proxy (benches/load.sh)
#   haproxy_config PORT H2PORT UPSTREAM      # HAProxy as the peer proxy (benches/load.sh)
#   wait_port PORT...           # until each port accepts connections
#   body_files                  # empty, 4k and 64k beside index.html, for the static upstream
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# NO_BUILD=1: the caller builds what it measures itself (scripts/pgo.sh).
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

mkdir -p "$work/www" "$work/tmp"
head -c 512 /dev/zero | tr '\0' 'x' > "$work/www/index.html"
http_common="access_log off; client_body_temp_path $work/tmp; proxy_temp_path $work/tmp; fastcgi_temp_path $work/tmp; uwsgi_temp_path $work/tmp; scgi_temp_path $work/tmp;"

# Writes the static upstream's config for PORT to $work/upstream.conf (the caller starts it,
# pinned wherever it wants).
static_upstream() {
  cat > "$work/upstream.conf" <<CONF
daemon off; master_process off; worker_processes 1; error_log $work/up.log; pid $work/up.pid;
events { worker_connections 4096; }
http { $http_common keepalive_requests 100000; server { listen 127.0.0.1:$1; root $work/www;
  location = /upload { client_max_body_size 16m; return 204; } } }
CONF
}

# Prints the nginx proxy's config for the benches: one worker, HTTP/1.1 on PORT and h2c on
# H2PORT, in front of UPSTREAM with a keep-alive pool of 128 (its best static setting here).
nginx_proxy_config() { # port h2port upstream
  cat <<CONF
daemon off; master_process off; worker_processes 1; error_log $work/px-$1.log; pid $work/px-$1.pid;
worker_rlimit_nofile 20000;
events { worker_connections 19000; }
http { $http_common keepalive_requests 1000000; keepalive_timeout 75s;
  upstream backend { server 127.0.0.1:$3; keepalive 128; }
  server { listen 127.0.0.1:$1; listen 127.0.0.1:$2 http2;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; proxy_buffering on;
      client_body_buffer_size 128k; } } }
CONF
}

# Prints HAProxy's config for the benches: one thread, HTTP/1.1 on PORT and h2c on H2PORT, in
# front of UPSTREAM, server connections shared between clients (`http-reuse always`).
haproxy_config() { # port h2port upstream
  cat <<CONF
global
  nbthread 1
  maxconn 9500
defaults
  mode http
  option forwardfor
  http-reuse always
  timeout connect 5s
  timeout client 75s
  timeout server 30s
  timeout http-keep-alive 75s
frontend f
  bind 127.0.0.1:$1
  bind 127.0.0.1:$2 proto h2
  default_backend b
backend b
  server s1 127.0.0.1:$3
CONF
}

# Prints a warmgate config for the benches: one listener on PORT with WORKERS workers in front of
# the static upstream on UPSTREAM, admitting everything (a fixed limit far above the load, every
# stage open), so what is measured is the proxy.
warmgate_config() { # port workers upstream
  cat <<CONF
listen = "127.0.0.1:$1"
[server]
workers = $2
[upstream]
endpoints = ["127.0.0.1:$3"]
# As nginx's upstream keepalive 128: idle connections to the upstream kept at most.
pool_max_idle_per_endpoint = 128
[log]
level = "warn"
[limit]
mode = "fixed"
full_capacity = 100000
[ramp]
stages = { critical = 0.0, high = 0.0, normal = 0.0, low = 0.0 }
start_fraction = 1.0
CONF
}

wait_port() {
  for port in "$@"; do
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.05; done
  done
}

body_files() {
  : > "$work/www/empty"
  head -c 4096 /dev/zero | tr '\0' 'x' > "$work/www/4k"
  head -c 65536 /dev/zero | tr '\0' 'x' > "$work/www/64k"
}
