#!/usr/bin/env bash
# Re-vendors the pruned protobuf descriptor set from the envoy-types crate
# that Cargo resolved (the crate does not export it). Run after bumping
# envoy-types or emitting a new message type; the descriptor_pin test fails
# until you do.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
UPDATE_DESCRIPTORS=1 cargo test -p vpsie-lb-envoy --test descriptor_pin --locked
echo "updated crates/envoy/descriptor/envoy-types-pruned.bin"
