#!/usr/bin/env bash
# Shows that bodies stream: a 100 MB download (from nginx) and a 100 MB upload (to a small
# Python sink that counts bytes) through warmgate, with warmgate's peak RSS (VmHWM) printed.
# Needs nginx and python3. Everything on 127.0.0.1; everything started is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-100}
cargo build --release --quiet
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
mkdir -p "$work/www"
head -c "${SIZE_MB}M" /dev/urandom > "$work/www/big.bin"
cat > "$work/sink.py" <<'PY'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_PUT(self):
        n = int(self.headers.get('content-length', 0)); got = 0
        while got < n:
            b = self.rfile.read(min(1 << 20, n - got))
            if not b: break
            got += len(b)
        body = str(got).encode()
        self.send_response(200); self.send_header('content-length', str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
PY
cat > "$work/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; error_log $work/e.log; pid $work/n.pid;
events { worker_connections 64; }
http { access_log off; client_body_temp_path $work; proxy_temp_path $work; fastcgi_temp_path $work;
  uwsgi_temp_path $work; scgi_temp_path $work; server { listen 127.0.0.1:18202; root $work/www; } }
CONF
for pair in "18501 18201" "18502 18202"; do
  set -- $pair
  cat > "$work/wg-$1.toml" <<CONF
listen = "127.0.0.1:$1"
[upstream]
endpoints = ["127.0.0.1:$2"]
[log]
level = "warn"
[limit]
mode = "fixed"
full_capacity = 100
[ramp]
stages = { critical = 0.0, high = 0.0, normal = 0.0, low = 0.0 }
CONF
done
python3 "$work/sink.py" 18201 & pids+=($!)
"$(command -v nginx || echo /usr/sbin/nginx)" -c "$work/nginx.conf" -p "$work" & pids+=($!)
./target/release/warmgate run --config "$work/wg-18501.toml" & UP=$!; pids+=($UP)
./target/release/warmgate run --config "$work/wg-18502.toml" & DOWN=$!; pids+=($DOWN)
for port in 18201 18202 18501 18502; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
done
rss() { awk "/$2/ {print \$2}" "/proc/$1/status"; }
echo "idle RSS: $(rss "$UP" VmRSS) kB / $(rss "$DOWN" VmRSS) kB"
curl -s -o /dev/null -w "download: %{size_download} bytes in %{time_total} s\n" http://127.0.0.1:18502/big.bin
curl -s -T "$work/www/big.bin" -w " bytes counted by the upstream; upload in %{time_total} s\n" http://127.0.0.1:18501/up
echo "peak RSS (VmHWM) of warmgate: upload $(rss "$UP" VmHWM) kB, download $(rss "$DOWN" VmHWM) kB, for ${SIZE_MB} MB bodies"
