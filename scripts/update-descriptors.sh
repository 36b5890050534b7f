#!/usr/bin/env bash
# Copies the protobuf descriptor set out of the envoy-types crate that Cargo
# resolved (the crate does not export it). Run after bumping envoy-types; the
# descriptor_pin test fails until you do.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
manifest="$(cd "$root" && cargo metadata --format-version 1 | python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="envoy-types"))')"
cp "$(dirname "$manifest")/src/generated/types.bin" "$root/crates/envoy/descriptor/envoy-types.bin"
echo "updated crates/envoy/descriptor/envoy-types.bin from $(dirname "$manifest")"
