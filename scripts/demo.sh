#!/usr/bin/env bash
# The demo: renders examples/demo.yaml, starts Envoy and three demo backends
# on 127.0.0.1, and shows with curl that requests are balanced. Everything it
# starts is stopped on exit. Set DEMO_KEEP=1 to keep it running until Ctrl-C.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/setup.sh
envoy_bin="$(cat .local/envoy-bin)"
echo "demo: building the agent and the demo backend" >&2
cargo build --quiet --locked -p vpsie-lb-agent -p vpsie-lb-testkit
agent=target/debug/vpsie-lb-agent
backend=target/debug/vpsie-lb-demo-backend

work=.local/demo
rm -rf "$work"
mkdir -p "$work"
admin=127.0.0.1:9901
lb_port=8080
backend_ports=(18081 18082 18083)

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$lb_port" 9901 "${backend_ports[@]}"; do
  if port_busy "$p"; then
    echo "demo: port $p on 127.0.0.1 is in use; stop whatever holds it and run again" >&2
    exit 1
  fi
done

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

echo "== 1. validate the example, with Envoy's own pre-flight"
"$agent" check --input examples/demo.yaml --envoy-bin "$envoy_bin"

echo "== 2. render it into $work/out"
"$agent" render --input examples/demo.yaml --out "$work/out" \
  --listen-address 127.0.0.1 --admin-address "$admin" --access-log "$root/$work/access.log"

echo "== 3. start three demo backends and Envoy"
i=1
for p in "${backend_ports[@]}"; do
  "$backend" "web-$i" "$p" 2>>"$work/backends.log" &
  pids+=($!)
  i=$((i + 1))
done
setsid "$envoy_bin" -c "$work/out/bootstrap.yaml" --reject-unknown-dynamic-fields \
  --disable-hot-restart --concurrency 2 -l warning >"$work/envoy.log" 2>&1 &
pids+=($!)

# Wait (bounded) until Envoy is live and health checks have passed for all three.
for _ in $(seq 1 100); do
  healthy=$(curl -fsS "http://$admin/clusters" 2>/dev/null | grep -c '::health_flags::healthy$' || true)
  [ "$healthy" = 3 ] && break
  sleep 0.2
done
if [ "${healthy:-0}" != 3 ]; then
  echo "demo: envoy did not report 3 healthy backends; see $work/envoy.log" >&2
  exit 1
fi
echo "envoy is live; backends healthy: $healthy"

echo "== 4. twelve requests through the load balancer (round robin)"
for _ in $(seq 1 12); do curl -fsS "http://127.0.0.1:$lb_port/"; done

echo "== 5. 300 requests, counted by backend"
for _ in $(seq 1 300); do curl -fsS "http://127.0.0.1:$lb_port/"; done | sort | uniq -c

echo "== 6. one line of Envoy's JSON access log"
tail -n 1 "$work/access.log"

if [ "${DEMO_KEEP:-0}" = 1 ]; then
  echo "running: http://127.0.0.1:$lb_port/ (admin http://$admin/); Ctrl-C stops everything"
  wait
fi
