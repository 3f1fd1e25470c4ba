#!/usr/bin/env bash
# Runs warmgate on config/warmgate.toml in front of the bundled cold-backend simulator on
# 127.0.0.1:9000. Ctrl-C (or killing this script) stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "building warmgate and the load-test tool (release; the first build takes a few minutes)..."
cargo build --release --workspace
echo "built."

pids=()
stop() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

./target/release/warmgate-loadtest coldsim --sim-listen 127.0.0.1:9000 &
pids+=($!)
./target/release/warmgate run config/warmgate.toml &
pids+=($!)
echo "cold backend on http://127.0.0.1:9000 (pid ${pids[0]}); warmgate on http://127.0.0.1:8080 (pid ${pids[1]})"
echo "status: curl -s 127.0.0.1:9901/status    metrics: curl -s 127.0.0.1:9901/metrics"
echo "Ctrl-C stops both."
# Wait for either to exit; then stop the other.
wait -n "${pids[@]}"
