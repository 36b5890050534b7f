#!/usr/bin/env bash
# Runs every test: set-up first (Envoy included), then the whole workspace.
# Extra arguments go to `cargo test`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/setup.sh
export ENVOY_BIN="$(cat .local/envoy-bin)"
# The WAF's Envoy filter is a library no test target depends on, so
# `cargo test` would not build it; the live tests and the bench load it.
cargo build --locked -p vpsie-lb-waf-filter
# Live tests each start an Envoy and several backends; on a 2-core machine a
# few at a time keeps health-check timing honest.
exec cargo test --workspace --locked "$@" -- --test-threads "${TEST_THREADS:-4}"
