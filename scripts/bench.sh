#!/usr/bin/env bash
# Runs every benchmark scenario on 127.0.0.1 and writes BENCHMARKS.md.
# Installs what it needs first (Envoy, wrk, HAProxy, nginx; see setup.sh).
# Takes about 45 minutes; `--smoke` runs everything in about a minute and
# measures nothing. Other arguments go to vpsie-lb-bench (`--help`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/setup.sh
# The scale scenario runs 1,000 load balancers: Envoy needs an inotify
# instance per watched file (the package's sysctl file sets the same value).
if [ "$(cat /proc/sys/fs/inotify/max_user_instances)" -lt 8192 ]; then
  echo "bench: raising fs.inotify.max_user_instances to 8192 for the scale scenario" >&2
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
  $sudo sysctl -q -w fs.inotify.max_user_instances=8192
fi
cargo build --release --locked -p vpsie-lb-agent -p vpsie-lb-bench -p vpsie-lb-waf
# Alone, so that it links without the service's allocator (Cargo.toml).
cargo build --release --locked -p vpsie-lb-waf-filter
ENVOY_BIN="$(cat .local/envoy-bin)" exec ./target/release/vpsie-lb-bench "$@"
