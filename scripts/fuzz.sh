#!/usr/bin/env bash
# Runs each fuzz target for a bounded time (default 60 s each) on its checked-in corpus.
#   scripts/fuzz.sh [seconds-per-target] [target...]
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). New inputs that reach
# new code are added to fuzz/corpus/<target>/; a crash stops the run and is saved under
# fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(config classify request h1_differential)
fi
command -v cargo-fuzz >/dev/null 2>&1 || { echo "fuzz.sh needs cargo-fuzz: cargo install cargo-fuzz" >&2; exit 1; }
rustup toolchain list 2>/dev/null | grep -q '^nightly' \
  || { echo "fuzz.sh needs a nightly toolchain: rustup toolchain install nightly" >&2; exit 1; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in "${targets[@]}"; do
  echo "== fuzz target $t for ${secs}s"
  mkdir -p "fuzz/corpus/$t"
  rc=0
  (cd fuzz && cargo +nightly fuzz run "$t" "corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1) >"$log" 2>&1 || rc=$?
  grep -E '^(stat::|SUMMARY|ERROR|==[0-9]+== ERROR|thread .* panicked)' "$log" || true
  if [ -n "$(ls -A "fuzz/artifacts/$t" 2>/dev/null)" ]; then
    echo "crash found: fuzz/artifacts/$t" >&2
    exit 1
  fi
  # A build that failed, or a run that stopped for any other reason, is not a clean run.
  if [ "$rc" -ne 0 ]; then
    tail -n 20 "$log" >&2
    echo "fuzz target $t did not run to its end (exit $rc)" >&2
    exit 1
  fi
done
