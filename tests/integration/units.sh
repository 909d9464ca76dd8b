#!/usr/bin/env bash
# The systemd units as built: `systemd-analyze verify` accepts every one of them (with the
# build tree's binaries standing in for the installed paths, since verify checks that each
# Exec*= program exists), and they say what the daemons rely on.
. "$(dirname "$0")/lib.sh"

command -v systemd-analyze >/dev/null || { echo "1..0 # SKIP systemd-analyze is not installed"; exit 77; }
U=$top_builddir/units
mkdir -p "$WORK/units"
bindir=$(sed -n 's|^ExecStart=\(.*\)/serve-head .*|\1|p' "$U/serve-head.service")
for f in serve-head.service serve-worker.service serve-worker.socket serve.target; do
        sed "s|$bindir/|$top_builddir/|g" "$U/$f" >"$WORK/units/$f"
done
out=$(cd "$WORK/units" && SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no \
        serve-head.service serve-worker.service serve-worker.socket serve.target 2>&1)
check "systemd-analyze verify accepts the units" "$?" 0
[ -n "$out" ] && echo "$out" | sed 's/^/#   /'
check "verify printed no warnings" "$(echo -n "$out" | grep -v 'Failed to set up\|Unknown user\|Unknown group' | grep -c .)" 0

h=$(cat "$U/serve-head.service") w=$(cat "$U/serve-worker.service") s=$(cat "$U/serve-worker.socket")
check_contains "the head is Type=notify" "$h" "Type=notify"
check_contains "the head has a watchdog" "$h" "WatchdogSec="
check_contains "reload validates before signalling" "$h" "ExecReload=$bindir/serve-head --check"
check_contains "the head runs unprivileged" "$h" "User=serve"
check_contains "the head keeps its state in /var/lib/serve" "$h" "StateDirectory=serve"
check_contains "the head has no capabilities" "$h" $'CapabilityBoundingSet=\n'
check_contains "the worker gets its socket from systemd" "$w" "Sockets=serve-worker.socket"
check_contains "the worker delegates cgroups for its replicas" "$w" "Delegate=yes"
check_contains "the worker keeps only CAP_BPF and CAP_PERFMON" "$w" "CapabilityBoundingSet=CAP_BPF CAP_PERFMON"
check_contains "the worker drains before its replicas are killed" "$w" "KillMode=mixed"
check_contains "the socket listens on port 8000" "$s" "ListenStream=8000"
check_contains "sysusers.d creates the serve user" "$(cat "$U/sysusers/serve.conf")" "u serve"
finish
