#!/usr/bin/env bash
# Runs every fuzz target for a fixed time (default 60 s each) on the nightly
# toolchain, growing the corpus under fuzz/corpus/, then minimises it.
# Installs cargo-fuzz if it is missing. Prints the executions per target.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
secs="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(document agent_config api_response endpoint_request drains acme_store ha_config public_answer)
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cd "$root/fuzz"
# Build first, so a build failure is not mistaken for a crash.
cargo +nightly fuzz build >/dev/null
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log="$(mktemp)"
  # Inputs up to 64 KiB: the parsers' limits (8 KiB request heads, field
  # lengths) are all below that, and longer inputs only slow the search.
  if ! cargo +nightly fuzz run "$t" "corpus/$t" -- \
      -max_total_time="$secs" -max_len=65536 -print_final_stats=1 \
      -artifact_prefix="artifacts/$t/" >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz: $t found a crash; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  runs="$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
  cargo +nightly fuzz cmin "$t" "corpus/$t" >/dev/null 2>&1 || true
  echo "fuzz: $t: $runs executions in ${secs}s, no crash; corpus $(ls "corpus/$t" | wc -l) inputs"
  rm -f "$log"
done
