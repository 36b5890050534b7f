#!/usr/bin/env bash
# The demo: the VPSie API emulator, the agent (which runs Envoy itself) and
# three demo backends, all on 127.0.0.1. It shows traffic balanced, changes
# the config through the emulator, and shows the change live and reported.
# Everything it starts is stopped on exit; DEMO_KEEP=1 keeps it running.
# DEMO_API=public makes the load balancer through VPSie's public API
# (rules and domains) instead of the agent API.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/setup.sh
envoy_bin="$(cat .local/envoy-bin)"
echo "demo: building the agent, the emulator and the demo backend" >&2
cargo build --quiet --locked -p vpsie-lb-agent -p vpsie-lb-testkit -p vpsie-api-sim
bin=target/debug

work="$root/.local/demo"
rm -rf "$work"
mkdir -p "$work"
api=127.0.0.1:8480
lb_port=8080
backend_ports=(18081 18082 18083)

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$lb_port" 8480 9901 "${backend_ports[@]}"; do
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

# bounded wait: wait_for SECONDS COMMAND...
wait_for() {
  local n=$(( $1 * 5 )); shift
  for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}

# Writes the agent's config: the source's keys ($1), then what both demos
# share; then starts the agent on it.
start_agent() {
  { printf '%s\n' "$1"; cat <<YAML
envoy:
  config_dir: $work/envoy
  # The admin API on a unix socket, out of reach of proxied traffic;
  # Envoy's metrics read-only on 127.0.0.1:9901.
  admin_address: unix:$work/envoy-admin.sock
  stats_address: 127.0.0.1:9901
  binary_path: $envoy_bin
  listen_address: 127.0.0.1
  manage: true
  drain_time: 2s
  access_log: $work/access.log
state_dir: $work/state
logging: {level: info, format: text}
agent: {listen_address: 'unix:$work/agent.sock'}
# The demo's backends run on this machine; production backends never may.
allowed_backend_networks: [127.0.0.0/8]
YAML
  } > "$work/agent.yaml"
  "$bin/vpsie-lb-agent" run --config "$work/agent.yaml" >"$work/agent.log" 2>&1 &
  pids+=($!)
}

echo "== 1. three demo backends, and the VPSie API emulator on http://$api"
i=1
for p in "${backend_ports[@]}"; do
  "$bin/vpsie-lb-demo-backend" "web-$i" "$p" 2>>"$work/backends.log" &
  pids+=($!)
  i=$((i + 1))
done
umask 077
printf 'demo-key-%s\n' "$RANDOM$RANDOM" > "$work/api-key"
umask 022
"$bin/vpsie-api-sim" --port 8480 --api-key-file "$work/api-key" 2>>"$work/api-sim.log" &
pids+=($!)
wait_for 10 curl -fsS "http://$api/_sim/loadbalancers"
if [ "${DEMO_API:-agent}" = public ]; then
  # shellcheck source=scripts/demo-public.sh
  . "$root/scripts/demo-public.sh"
  exit 0
fi
curl -fsS -X PUT --data-binary @examples/demo.yaml "http://$api/_sim/loadbalancers/demo" >/dev/null
echo "load balancer 'demo' created in the emulator from examples/demo.yaml"

echo "== 2. the agent, polling every 2s and running Envoy itself"
start_agent "vpsie:
  api_url: http://$api/v1
  api_key_file: $work/api-key
  loadbalancer_ids: [demo]
  poll_interval: 2s"
healthy() { [ "$(curl -fsS --unix-socket "$work/envoy-admin.sock" http://envoy/clusters | grep -c '^lb_demo::.*::health_flags::healthy$')" = "$1" ]; }
if ! wait_for 30 healthy 3; then
  echo "demo: the load balancer did not come up; see $work/agent.log" >&2
  exit 1
fi

echo "== 3. 300 requests through the load balancer, counted by backend"
for _ in $(seq 1 300); do curl -fsS "http://127.0.0.1:$lb_port/"; done | sort | uniq -c

echo "== 4. disable web-3 through the emulator; the agent picks it up on its next poll"
sed 's/port: 18083}/port: 18083, enabled: false}/' examples/demo.yaml > "$work/demo-without-web-3.yaml"
curl -fsS -X PUT --data-binary @"$work/demo-without-web-3.yaml" "http://$api/_sim/loadbalancers/demo" >/dev/null
if ! wait_for 15 healthy 2; then
  echo "demo: the change did not arrive; see $work/agent.log" >&2
  exit 1
fi
for _ in $(seq 1 300); do curl -fsS "http://127.0.0.1:$lb_port/"; done | sort | uniq -c

echo "== 5. routing: api.demo.test gets its own pool (web-3), www.demo.test the default one"
curl -fsS -X PUT --data-binary @examples/demo-routed.yaml "http://$api/_sim/loadbalancers/demo" >/dev/null
routed() { [ "$(curl -fsS -H 'Host: api.demo.test' "http://127.0.0.1:$lb_port/")" = "web-3" ]; }
if ! wait_for 15 routed; then
  echo "demo: the routed config did not arrive; see $work/agent.log" >&2
  exit 1
fi
echo "Host: api.demo.test ->"
for _ in $(seq 1 10); do curl -fsS -H 'Host: api.demo.test' "http://127.0.0.1:$lb_port/"; done | sort | uniq -c
echo "Host: www.demo.test ->"
for _ in $(seq 1 10); do curl -fsS -H 'Host: www.demo.test' "http://127.0.0.1:$lb_port/"; done | sort | uniq -c
echo "GET /old/page?x=1 -> $(curl -sS -o /dev/null -w '%{http_code} %{redirect_url}' "http://127.0.0.1:$lb_port/old/page?x=1")"

echo "== 6. what the agent reported to the API (status, backend health, events)"
curl -fsS "http://$api/_sim/reports/demo"
echo

echo "== 7. the agent's own view, over its unix socket"
"$bin/vpsie-lb-agent" status --address "unix:$work/agent.sock" || true

cat <<TEXT

Try it yourself (with DEMO_KEEP=1 everything keeps running):
  change the config:   edit a copy of examples/demo.yaml, then
                       curl -X PUT --data-binary @my.yaml http://$api/_sim/loadbalancers/demo
  watch it move:       for i in \$(seq 30); do curl -s http://127.0.0.1:$lb_port/; done | sort | uniq -c
  see the reports:     curl http://$api/_sim/reports/demo
  envoy's metrics:     curl http://127.0.0.1:9901/stats/prometheus   (read-only; all else is 404)
  envoy's admin:       curl --unix-socket $work/envoy-admin.sock http://envoy/clusters
  break the API:       curl -X PUT -d '{"endpoint":"*","kind":"error_5xx"}' http://$api/_sim/faults
  heal it:             curl -X DELETE http://$api/_sim/faults
  agent and envoy log: $work/agent.log
TEXT

if [ "${DEMO_KEEP:-0}" = 1 ]; then
  echo "running; Ctrl-C stops everything"
  wait
fi
