#!/usr/bin/env bash
# Runs warmgate on config/warmgate.toml in front of the bundled cold-backend simulator on
# 127.0.0.1:9000. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --workspace
./target/release/warmgate-loadtest coldsim --sim-listen 127.0.0.1:9000 &
backend=$!
trap 'kill "$backend" 2>/dev/null || true' EXIT
echo "cold backend on http://127.0.0.1:9000 (pid $backend); warmgate on http://127.0.0.1:8080"
echo "status: curl -s 127.0.0.1:9901/status    metrics: curl -s 127.0.0.1:9901/metrics"
./target/release/warmgate run --config config/warmgate.toml
