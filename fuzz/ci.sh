#!/usr/bin/env bash
# The fuzz step of .ci/run: builds every cargo-fuzz target (with debug assertions, so arithmetic
# overflow is a crash too) and runs each for FUZZ_SECONDS (default 15) from its committed seed
# corpus; a crash, a timeout or an out-of-memory fails it. New inputs found go to a scratch copy
# of the corpus, not into the checkout. Needs nightly and cargo-fuzz (.ci/run checks both).
#
# Built without AddressSanitizer (`-s none`) and in 16 codegen units: herd's crates forbid
# `unsafe`, so ASan finds little here that a panic or libFuzzer's own checks would not, and
# without it the build takes about a quarter less CPU and the targets run about twice as fast,
# which keeps the step within its few minutes on 2 cores. Longer local runs use ASan (README.md).
# FUZZ_TARGET_DIR: another build directory than fuzz/target.
set -euo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECONDS:-15}
flags=(-a -s none --codegen-units 16)
if [ -n "${FUZZ_TARGET_DIR:-}" ]; then
  flags+=(--target-dir "$FUZZ_TARGET_DIR")
fi
started=$(date +%s)
cargo +nightly fuzz build "${flags[@]}"
echo "fuzz: built in $(($(date +%s) - started)) s"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo +nightly fuzz list); do
  mkdir -p "$scratch/$target"
  if [ -d "corpus/$target" ]; then
    cp -r "corpus/$target/." "$scratch/$target/"
  fi
  echo "fuzz: $target for $secs s"
  # -timeout: one input taking 10 s is a hang; -rss_limit_mb: a leak or a blow-up is a crash.
  if ! cargo +nightly fuzz run "${flags[@]}" "$target" "$scratch/$target" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$scratch/$target.log" 2>&1; then
    tail -n 60 "$scratch/$target.log"
    echo "fuzz: $target FAILED (the input is in fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  # The last status line (executions, coverage, exec/s) and libFuzzer's final counts.
  grep -E '^#[0-9]+' "$scratch/$target.log" | tail -n 1
  grep -E 'stat::number_of_executed_units|stat::peak_rss_mb' "$scratch/$target.log" || true
done
echo "fuzz: all targets passed in $(($(date +%s) - started)) s"
