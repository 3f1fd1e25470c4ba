#!/usr/bin/env bash
# The whole story in two 40-second runs (after the build): a cold backend (coldsim), a login storm against
# it without warmgate, then the same seeded storm with warmgate on config/warmgate.toml in front.
# Writes drill-report/report.html (plots) and prints the comparison table.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --workspace
./target/release/warmgate-loadtest drill --compare --users 1500 --duration-s 40 \
  --config config/warmgate.toml --report-dir drill-report "$@"
