#!/usr/bin/env bash
# A release build of warmgate optimised with a profile of its own hot paths (profile-guided
# optimisation): the compiler lays the hot code out together and inlines by what ran, which
# saves instruction-cache misses and branches the plain release build pays for.
#
#   scripts/pgo.sh          # writes target/pgo/release/warmgate (about 8 minutes)
#
# Needs nginx, wrk and h2load for the training load (apt-get install -y nginx wrk
# nghttp2-client) and llvm-profdata of the LLVM version rustc was built with (`rustc -vV` says
# which; `rustup component add llvm-tools`, or Debian: apt-get install -y llvm-NN).
# PROFDATA=path/to/llvm-profdata picks another.
#
# Three steps: an instrumented build (target/pgo-gen); that build run in front of a static
# nginx on 127.0.0.1 under a short mixed load (HTTP/1.1 forwards of several body sizes, uploads,
# rejects, h2c), then stopped so it writes its profile; the profiles merged and the final build
# made with them (target/pgo). The plain `cargo build --release` is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-4}

step() { printf '\n== %s\n' "$*"; }
fail() { echo "pgo.sh: $*" >&2; exit 1; }

major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[ -n "$major" ] || fail "could not read rustc's LLVM version from 'rustc -vV'"
# rustup's llvm-tools component ships the one built with rustc's LLVM.
rustup_tools="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata"
PROFDATA=${PROFDATA:-$(command -v "llvm-profdata-$major" || command -v "/usr/lib/llvm-$major/bin/llvm-profdata" || command -v "$rustup_tools" || true)}
[ -n "$PROFDATA" ] || fail "needs llvm-profdata for LLVM $major (rustup component add llvm-tools; or Debian: apt-get install -y llvm-$major; or PROFDATA=path)"
"$PROFDATA" --version | grep -q "LLVM version $major\." ||
  fail "$PROFDATA is not LLVM $major (rustc's); its profiles would not be read"
for t in "$(command -v nginx || echo /usr/sbin/nginx)" wrk h2load; do
  command -v "$t" >/dev/null || fail "needs $t for the training load"
done

# The bench helpers: a scratch directory and the processes started, removed and stopped on
# exit; the warmgate config that admits everything.
NO_BUILD=1 . benches/lib.sh

step "1/3 instrumented build (target/pgo-gen)"
RUSTFLAGS="-Cprofile-generate=$work/raw" cargo build --release -p warmgate --target-dir target/pgo-gen

step "2/3 training load (${SECS} s a part)"
body_files
cat > "$work/upstream.conf" <<CONF
daemon off; master_process off; worker_processes 1; error_log $work/up.log; pid $work/up.pid;
events { worker_connections 4096; }
http { $http_common keepalive_requests 100000;
  server { listen 127.0.0.1:18281; root $work/www;
    location /upload { client_body_buffer_size 64k; return 204; } } }
CONF
"$NGINX" -c "$work/upstream.conf" -p "$work" & pids+=($!)
{ warmgate_config 18282 1 18281
  printf '[[feature]]\nname = "refused"\npriority = "low"\nstate = "off"\n'
  printf '[[feature]]\nname = "default"\npriority = "normal"\n'
  printf '[[route]]\nfeature = "refused"\npath_prefix = "/refused"\n'; } > "$work/warmgate.toml"
target/pgo-gen/release/warmgate check-config "$work/warmgate.toml" >/dev/null
target/pgo-gen/release/warmgate run "$work/warmgate.toml" & wg=$!
pids+=("$wg")
wait_port 18282
(exec 3<>/dev/tcp/127.0.0.1/18282) 2>/dev/null || fail "the instrumented warmgate did not start"
cat > "$work/upload.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 2048)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA
url=http://127.0.0.1:18282
for path in /empty /4k /64k /refused; do
  echo "HTTP/1.1 GET $path"
  wrk -t1 -c32 -d"${SECS}s" "$url$path" | grep 'Requests/sec'
done
echo "HTTP/1.1 POST /upload"
wrk -t1 -c32 -d"${SECS}s" -s "$work/upload.lua" "$url/upload" | grep 'Requests/sec'
echo "h2c GET /empty and /4k"
h2load -c16 -m10 -D "$SECS" "$url/empty" | grep '^requests:'
h2load -c16 -m10 -D "$SECS" "$url/4k" | grep '^requests:'
# A graceful stop: the profile is written as the process exits.
kill -TERM "$wg"
wait "$wg" || fail "the instrumented warmgate did not exit cleanly"
ls "$work"/raw/*.profraw >/dev/null 2>&1 || fail "no profile was written"

step "3/3 merge and the optimised build (target/pgo)"
"$PROFDATA" merge -o "$work/merged.profdata" "$work"/raw/*.profraw
RUSTFLAGS="-Cprofile-use=$work/merged.profdata" cargo build --release -p warmgate --target-dir target/pgo
echo
echo "built: target/pgo/release/warmgate"
