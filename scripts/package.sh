#!/usr/bin/env bash
# Builds the .deb, runs lintian, installs it into a throwaway Debian 12 root
# (debootstrap, cached in .local/), and checks what an operator relies on:
# files, users, owners and modes, conffiles kept on upgrade, units that
# verify, exposure scores, and the units serving https under a real systemd
# (scripts/boot-check.sh). Ends with "N passed, N failed". Safe to run again.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/setup.sh

need=()
for tool in lintian debootstrap fakeroot; do command -v "$tool" >/dev/null 2>&1 || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v cargo-deb >/dev/null 2>&1 || cargo install --locked --quiet cargo-deb

echo "package: building the .debs (release)" >&2
deb="$(cargo deb --locked -p vpsie-lb-agent 2>/dev/null | tail -n 1)"
[ -f "$deb" ] || { echo "package: cargo deb produced no package" >&2; exit 1; }
echo "package: $deb"
# The WAF package carries the Envoy filter too; cargo deb builds only the
# package's own targets.
cargo build --release --locked -p vpsie-lb-waf-filter
waf_deb="$(cargo deb --locked -p vpsie-lb-waf 2>/dev/null | tail -n 1)"
[ -f "$waf_deb" ] || { echo "package: cargo deb produced no WAF package" >&2; exit 1; }
echo "package: $waf_deb"

passed=0; failed=0
check() { # check DESCRIPTION COMMAND...
  if "${@:2}" >/dev/null 2>&1; then passed=$((passed + 1)); echo "ok   $1"
  else failed=$((failed + 1)); echo "FAIL $1"; fi
}

echo "== lintian (errors fail; warnings listed)"
lintian_out="$(lintian --fail-on error "$deb" "$waf_deb" 2>&1)" && lint_rc=0 || lint_rc=$?
printf '%s\n' "$lintian_out" | sed 's/^/   /'
check "lintian reports no errors" test "$lint_rc" = 0

# The root holds the package's dependencies; its name changes with them.
include=adduser,procps,iproute2,nftables,ca-certificates,systemd,libmodsecurity3,modsecurity-crs
base=".local/debroot-bookworm-${include//,/-}.tar"
if [ ! -f "$base" ]; then
  echo "package: debootstrap of a Debian 12 root (once; cached in $base)" >&2
  tmp="$(mktemp -d)"
  debootstrap --variant=minbase --include="$include" bookworm "$tmp/root" http://deb.debian.org/debian >/dev/null
  tar -C "$tmp/root" -cf "$base.part" . && mv "$base.part" "$base"
  rm -rf "$tmp"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
R="$work/root"
mkdir -p "$R"
tar -C "$R" -xf "$base"
cp "$deb" "$R/tmp/vpsie-lb.deb"
cp "$waf_deb" "$R/tmp/vpsie-lb-waf.deb"
in_root() { chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }

echo "== install into a throwaway root"
check "dpkg installs the package" in_root dpkg -i /tmp/vpsie-lb.deb
mode_of() { in_root stat -c '%U:%G %a' "$1"; }
expect_mode() { [ "$(mode_of "$1")" = "$2" ]; }
check "the agent binary runs" in_root /usr/bin/vpsie-lb-agent --version
check "binary root:root 755" expect_mode /usr/bin/vpsie-lb-agent "root:root 755"
check "agent unit installed 644" expect_mode /lib/systemd/system/vpsie-lb-agent.service "root:root 644"
check "envoy unit installed 644" expect_mode /lib/systemd/system/envoy.service "root:root 644"
check "sysctl drop-in installed" expect_mode /usr/lib/sysctl.d/60-vpsie-lb.conf "root:root 644"
check "limits drop-in installed" expect_mode /etc/security/limits.d/vpsie-lb.conf "root:root 644"
check "example config installed" test -f "$R/usr/share/doc/vpsie-lb/examples/agent.yaml"
check "HA example installed" test -f "$R/usr/share/doc/vpsie-lb/examples/agent-ha.yaml"
check "keepalived drop-in installed 644" expect_mode /lib/systemd/system/keepalived.service.d/vpsie-lb.conf "root:root 644"
check "the package recommends keepalived" sh -c "dpkg-deb -f '$deb' Recommends | grep -qw keepalived"
check "the package depends on iproute2 (ss, for the drain's end)" sh -c "dpkg-deb -f '$deb' Depends | grep -qw iproute2"
check "the package depends on nftables (nft, for the udp bounds)" sh -c "dpkg-deb -f '$deb' Depends | grep -qw nftables"
check "the package depends on ca-certificates (the ACME directory's trust roots)" sh -c "dpkg-deb -f '$deb' Depends | grep -qw ca-certificates"
check "user envoy exists" in_root getent passwd envoy
check "user vpsie-lb exists" in_root getent passwd vpsie-lb
check "vpsie-lb is in group envoy" sh -c "chroot '$R' id -nG vpsie-lb | grep -qw envoy"
check "/etc/envoy vpsie-lb:envoy 755" expect_mode /etc/envoy "vpsie-lb:envoy 755"
check "/etc/vpsie-lb root:vpsie-lb 751" expect_mode /etc/vpsie-lb "root:vpsie-lb 751"
check "/etc/vpsie-lb/tls root:envoy 750" expect_mode /etc/vpsie-lb/tls "root:envoy 750"
# The documented key layout: Envoy's user and the agent's (for its
# pre-flight) can read a key; the agent's key file is not Envoy's business.
printf 'key\n' > "$R/etc/vpsie-lb/tls/probe.key"
in_root chown root:envoy /etc/vpsie-lb/tls/probe.key
chmod 0640 "$R/etc/vpsie-lb/tls/probe.key"
ids() { echo "$(in_root id -u "$1"):$(in_root id -g "$1")"; }
envoy_gid="$(in_root id -g envoy)"
check "envoy reads a key in the documented layout" chroot --userspec="$(ids envoy)" "$R" cat /etc/vpsie-lb/tls/probe.key
check "the agent reads it for its pre-flight" chroot --userspec="$(ids vpsie-lb)" --groups="$envoy_gid" "$R" cat /etc/vpsie-lb/tls/probe.key
check "nobody else reads it" sh -c "! chroot --userspec=65534:65534 '$R' cat /etc/vpsie-lb/tls/probe.key 2>/dev/null"
rm -f "$R/etc/vpsie-lb/tls/probe.key"
check "/var/lib/vpsie-lb vpsie-lb:vpsie-lb 750" expect_mode /var/lib/vpsie-lb "vpsie-lb:vpsie-lb 750"
check "no agent config installed, so nothing starts" test ! -e "$R/etc/vpsie-lb/agent.yaml"
check "limits drop-in is a conffile" grep -qx /etc/security/limits.d/vpsie-lb.conf "$R/var/lib/dpkg/info/vpsie-lb.conffiles"

echo "== the WAF package"
check "dpkg installs the WAF package" in_root dpkg -i /tmp/vpsie-lb-waf.deb
check "the WAF binary runs" in_root /usr/bin/vpsie-lb-waf --version
check "WAF binary root:root 755" expect_mode /usr/bin/vpsie-lb-waf "root:root 755"
check "WAF unit installed 644" expect_mode /lib/systemd/system/vpsie-lb-waf.service "root:root 644"
check "WAF envoy filter installed 644" expect_mode /usr/lib/vpsie-lb/libvpsie_lb_waf_filter.so "root:root 644"
check "the WAF envoy filter finds its libraries" sh -c "! chroot '$R' ldd /usr/lib/vpsie-lb/libvpsie_lb_waf_filter.so | grep -q 'not found'"
check "user vpsie-lb-waf exists" in_root getent passwd vpsie-lb-waf
check "envoy is in group vpsie-lb-waf" sh -c "chroot '$R' id -nG envoy | grep -qw vpsie-lb-waf"
check "the WAF compiles the packaged rule set" in_root /usr/bin/vpsie-lb-waf --check

echo "== upgrade keeps the operator's files"
echo "# operator edit" >> "$R/etc/security/limits.d/vpsie-lb.conf"
echo "source: file" > "$R/etc/vpsie-lb/agent.yaml"
check "dpkg upgrades in place" in_root dpkg -i --force-confdef --force-confold /tmp/vpsie-lb.deb
check "edited conffile kept" grep -q "operator edit" "$R/etc/security/limits.d/vpsie-lb.conf"
check "agent config kept" grep -qx "source: file" "$R/etc/vpsie-lb/agent.yaml"

echo "== installed units"
# Envoy is installed separately (docs/operations.md); put the pinned one in place to verify.
cp "$(cat .local/envoy-bin)" "$R/usr/bin/envoy"
check "systemd-analyze verify is clean" sh -c "out=\$(systemd-analyze --root='$R' verify '$R/lib/systemd/system/vpsie-lb-agent.service' '$R/lib/systemd/system/envoy.service' '$R/lib/systemd/system/vpsie-lb-waf.service' 2>&1) && [ -z \"\$out\" ]"
for unit in vpsie-lb-agent envoy vpsie-lb-waf; do
  line="$(systemd-analyze security --offline=true "$R/lib/systemd/system/$unit.service" 2>/dev/null | grep 'Overall exposure' || true)"
  echo "   $line"
  check "$unit exposure <= 4.0" systemd-analyze security --offline=true --threshold=40 "$R/lib/systemd/system/$unit.service"
done

echo "== the units under a real systemd (systemd-nspawn --boot)"
if scripts/boot-check.sh "$R" >"$work/boot.log" 2>&1; then
  check "the packaged units serve https with the documented key layout" true
  sed 's/^/   /' "$work/boot.log" | grep 'boot-check:' || true
else
  check "the packaged units serve https with the documented key layout" false
  sed 's/^/   /' "$work/boot.log" | tail -n 60
fi

echo "== purge"
check "dpkg purges" in_root dpkg --purge vpsie-lb
check "state removed on purge" test ! -e "$R/var/lib/vpsie-lb"
check "operator config left on purge" test -f "$R/etc/vpsie-lb/agent.yaml"

echo "package: $passed passed, $failed failed"
[ "$failed" = 0 ]
