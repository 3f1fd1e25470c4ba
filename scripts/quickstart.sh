#!/usr/bin/env bash
# Runs warmgate on config/warmgate.toml in front of a demo backend on 127.0.0.1:9000.
# Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
demo_dir=$(mktemp -d)
trap 'kill "$backend" 2>/dev/null || true; rm -rf "$demo_dir"' EXIT
mkdir -p "$demo_dir/api"
for f in login sync feed recommend; do echo "{\"ok\":\"$f\"}" > "$demo_dir/api/$f"; done
python3 -m http.server 9000 --bind 127.0.0.1 --directory "$demo_dir" >/dev/null 2>&1 &
backend=$!
echo "demo backend on http://127.0.0.1:9000 (pid $backend)"
echo "warmgate on http://127.0.0.1:8080  — status: curl -s 127.0.0.1:9901/status"
./target/release/warmgate run --config config/warmgate.toml
