# Sourced by scripts/demo.sh when DEMO_API=public: the same backends and
# emulator, but the load balancer is made through VPSie's public API
# (`Vpsie-Auth`, /api/v1/lb) the way its Terraform provider makes one, and
# the agent reads it with `source: vpsie_public`.

key="$(cat "$work/api-key")"
public() { # public METHOD PATH [JSON]
  curl -fsS -X "$1" -H "Vpsie-Auth: $key" -H 'Content-Type: application/json' \
    ${3:+--data "$3"} "http://$api$2"
}

echo "== 2. POST /api/v1/lb/create: one http rule on port $lb_port, two sites (domains) on it"
public POST /api/v1/lb/create "$(cat <<JSON
{"lbName": "demo", "algorithm": "roundrobin", "cookieCheck": false, "redirectHTTP": 0,
 "healthCheckPath": "/", "checkInterval": 1000, "rise": 2, "fall": 3,
 "resourceIdentifier": "8152952c-87ca-11eb-9353-0242ac110004", "dcIdentifier": "dc-emulated",
 "rules": [{"scheme": "http", "frontPort": "$lb_port", "backPort": "0", "domains": [
   {"domainId": "", "domainName": "www.demo.test", "backendScheme": "http", "backPort": "${backend_ports[0]}",
    "backends": [{"ip": "127.0.0.1", "vmIdentifier": "vm-web-1"}]},
   {"domainId": "", "domainName": "api.demo.test", "backendScheme": "http", "backPort": "${backend_ports[1]}",
    "backends": [{"ip": "127.0.0.1", "vmIdentifier": "vm-web-2"}]}]}]}
JSON
)" >/dev/null
echo "pending: $(public GET /api/v2/lbs/pending)"
identifier() { public GET '/api/v1/lb/all?sortField=created_on&sortDirection=DESC' | grep -o '"identifier":"[^"]*"' | head -1 | cut -d'"' -f4; }
active() { test -n "$(identifier)"; }
if ! wait_for 10 active; then
  echo "demo: the load balancer never turned active; see $work/api-sim.log" >&2
  exit 1
fi
id="$(identifier)"
echo "active as $id:"
public GET "/api/v1/lb/$id"
echo

echo "== 3. the agent, reading the public API every 2s (source: vpsie_public)"
start_agent "source: vpsie_public
vpsie:
  api_url: http://$api
  api_key_file: $work/api-key
  loadbalancer_ids: [$id]
  poll_interval: 2s
  certificate_dir: $work/certs"
site() { [ "$(curl -fsS -H "Host: $1" "http://127.0.0.1:$lb_port/")" = "$2" ]; }
if ! wait_for 30 site api.demo.test web-2; then
  echo "demo: the load balancer did not come up; see $work/agent.log" >&2
  exit 1
fi

echo "== 4. each site reaches its own backends through the one port"
for host in www.demo.test api.demo.test; do
  echo "Host: $host ->"
  for _ in $(seq 1 10); do curl -fsS -H "Host: $host" "http://127.0.0.1:$lb_port/"; done | sort | uniq -c
done
echo "Host: other.test -> $(curl -sS -o /dev/null -w '%{http_code}' -H 'Host: other.test' "http://127.0.0.1:$lb_port/") (no domain names it)"

echo "== 5. POST /api/v1/lb/domain/update: www.demo.test moves to backPort ${backend_ports[2]} (web-3)"
www_domain="$(public GET "/api/v1/lb/$id" | grep -o '"domainId":"[^"]*"' | head -1 | cut -d'"' -f4)"
public POST /api/v1/lb/domain/update "{\"domainId\": \"$www_domain\", \"backPort\": ${backend_ports[2]}}" >/dev/null
if ! wait_for 15 site www.demo.test web-3; then
  echo "demo: the change did not arrive; see $work/agent.log" >&2
  exit 1
fi
echo "Host: www.demo.test (backPort ${backend_ports[2]}) ->"
for _ in $(seq 1 10); do curl -fsS -H 'Host: www.demo.test' "http://127.0.0.1:$lb_port/"; done | sort | uniq -c

echo "== 6. the agent's own view, over its unix socket (the public API takes no reports)"
"$bin/vpsie-lb-agent" status --address "unix:$work/agent.sock" || true

if [ "${DEMO_KEEP:-0}" = 1 ]; then
  echo "running; Ctrl-C stops everything"
  wait
fi
