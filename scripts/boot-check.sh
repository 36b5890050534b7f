#!/usr/bin/env bash
# Boots a Debian root that has the package installed (scripts/package.sh
# makes it) under a real systemd with systemd-nspawn, and checks that the
# packaged units serve an https load balancer whose key sits in the
# documented layout (/etc/vpsie-lb/tls, root:envoy 0640): Envoy runs as
# `envoy`, the agent as `vpsie-lb`, they talk over /run/envoy/admin.sock, and
# the agent tells systemd it is ready only once Envoy confirmed the config;
# the WAF service (its own user and socket) refuses an injection.
# The container shares this machine's network, so everything is on 127.0.0.1.
#   scripts/boot-check.sh ROOT
set -euo pipefail
R="$1"
say() { printf 'boot-check: %s\n' "$*" >&2; }
command -v systemd-nspawn >/dev/null 2>&1 || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd-container >/dev/null
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
lb_port="$(free_port)"; backend_port="$(free_port)"; stats_port="$(free_port)"
in_root() { chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

# A certificate and key where the operations guide says to put them.
tls="$R/etc/vpsie-lb/tls"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=lb.test \
  -keyout "$tls/lb.key" -out "$tls/lb.crt" >/dev/null 2>&1
in_root chown root:envoy /etc/vpsie-lb/tls/lb.key /etc/vpsie-lb/tls/lb.crt
chmod 0640 "$tls/lb.key"; chmod 0644 "$tls/lb.crt"

cat > "$R/etc/vpsie-lb/desired.yaml" <<YAML
id: shop
name: shop
protocol: https
port: $lb_port
algorithm: round_robin
backends: [{id: b1, address: 127.0.0.1, port: $backend_port}]
tls_config: {certificate_path: /etc/vpsie-lb/tls/lb.crt, private_key_path: /etc/vpsie-lb/tls/lb.key}
# Inspected by the packaged WAF service, over its socket, as its own user.
waf: {mode: block}
YAML
cat > "$R/etc/vpsie-lb/agent.yaml" <<YAML
source: file
file: /etc/vpsie-lb/desired.yaml
vpsie: {poll_interval: 2s}
envoy: {listen_address: 127.0.0.1, stats_address: '127.0.0.1:$stats_port', drain_time: 1s}
# The backend is this machine's: the check's own, trusted on purpose.
allowed_backend_networks: [127.0.0.1/32]
YAML
in_root chown root:vpsie-lb /etc/vpsie-lb/agent.yaml /etc/vpsie-lb/desired.yaml
chmod 0640 "$R/etc/vpsie-lb/agent.yaml" "$R/etc/vpsie-lb/desired.yaml"
rm -rf "$R/var/log/journal" && mkdir -p "$R/var/log/journal"

work="$(mktemp -d)"
mkdir -p "$work/www" && echo "served by the backend" > "$work/www/index.html"
python3 -m http.server "$backend_port" --bind 127.0.0.1 --directory "$work/www" >/dev/null 2>&1 &
backend=$!
systemd-nspawn -D "$R" --boot --register=no --keep-unit -q >"$work/console.log" 2>&1 &
container=$!
cleanup() {
  kill -TERM "$container" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$container" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$container" 2>/dev/null || true
  kill "$backend" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ok=""
for _ in $(seq 1 180); do
  # Outputs are read whole before matching: with pipefail, `| grep -q` fails
  # when grep exits before the writer is done (SIGPIPE).
  body="$(curl -sfk --max-time 2 "https://127.0.0.1:$lb_port/" 2>/dev/null || true)"
  if [[ "$body" == *"served by the backend"* ]]; then
    ok=1; break
  fi
  kill -0 "$container" 2>/dev/null || break
  sleep 0.5
done
journal() { journalctl -D "$R/var/log/journal" -o cat --no-pager "$@" 2>/dev/null || true; }
if [ -z "$ok" ]; then
  say "no https answer on 127.0.0.1:$lb_port"
  tail -n 30 "$work/console.log" >&2
  journal -u vpsie-lb-agent -u envoy | tail -n 40 >&2
  exit 1
fi
say "https on 127.0.0.1:$lb_port served through the packaged units"
# Type=notify: systemd says Started only after the agent's READY=1, which
# it sends once Envoy confirmed the config through the admin socket.
for _ in $(seq 1 60); do
  [[ "$(journal -u vpsie-lb-agent)" == *"Started vpsie-lb-agent.service"* ]] && break
  sleep 0.5
done
[[ "$(journal -u vpsie-lb-agent)" == *"Started vpsie-lb-agent.service"* ]] || {
  say "the agent never reported ready"; journal -u vpsie-lb-agent | tail -n 30 >&2; exit 1; }
say "the agent reported ready to systemd"
metrics="$(curl -sf --max-time 2 "http://127.0.0.1:$stats_port/stats/prometheus" || true)"
[[ "$metrics" == *envoy_server_live* ]] || {
  say "no metrics on the read-only listener"; exit 1; }
say "envoy's metrics served read-only on 127.0.0.1:$stats_port"
# The WAF: the ordinary request above passed it; an injection does not.
code=""
for _ in $(seq 1 40); do
  code="$(curl -sk -o /dev/null -w '%{http_code}' --max-time 2 "https://127.0.0.1:$lb_port/item?id=1'%20OR%20'1'='1" || true)"
  [ "$code" = 403 ] && break
  sleep 0.5
done
[ "$code" = 403 ] || {
  say "the packaged WAF did not refuse an injection (status $code)"
  journal -u vpsie-lb-waf | tail -n 30 >&2; exit 1; }
say "the packaged WAF service refused an injection with 403"
