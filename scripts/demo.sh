#!/usr/bin/env bash
# The whole story in two 40-second runs (after the build): a cold backend (coldsim), a login storm against
# it without warmgate, then the same seeded storm with warmgate on config/warmgate.toml in front.
# Writes drill-report/report.html (plots) and prints the summary and the comparison table.
# 40 s shows logins first and sync, then feed coming back; recommendations (low priority) open
# after about 50 s on the shipped ramp, so pass --duration-s 90 to watch the whole ramp.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "building (release; the first build takes a few minutes)..."
cargo build --release --workspace
echo "two drills of 40 s each follow: without warmgate, then with it."
./target/release/warmgate-loadtest drill --compare --users 1500 --duration-s 40 \
  --config config/warmgate.toml --report-dir drill-report "$@"
