#!/usr/bin/env bash
# The way users meet serve, under a real systemd: a Debian 12 root (debootstrap, cached outside
# the repository) booted with systemd-nspawn, the built .deb installed with dpkg, the services
# started with systemctl; reload (valid and invalid), a killed worker restarted by systemd, a
# restart under load with zero failed requests, journald's structured fields; then a second
# container on a bridge joins the first one's head: a two-node cluster under systemd.
#
# Every container has its own network namespace (10.231.0.0/24 on a bridge in a namespace of
# its own); clients run inside the namespaces, and the main namespace routes the subnet to a
# blackhole while the test runs, so nothing is ever sent off the machine.
# Skipped (exit 77) only when the machine cannot do this: not root, no nspawn/debootstrap, no
# cgroup hierarchies to give the containers, or no Debian mirror for the first debootstrap.
. "$(dirname "$0")/lib.sh"

# ./runtests builds and tests the packages once, in its main `make check`; the sanitizer and
# distcheck passes of the same tree set SERVE_TEST_PACKAGES=0 (the packages do not change).
[ "${SERVE_TEST_PACKAGES:-1}" = 0 ] && { echo "1..0 # SKIP packages are tested in the main make check"; exit 77; }

skip() { echo "1..0 # SKIP $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root"
for t in systemd-nspawn debootstrap nsenter ip dpkg-buildpackage jq; do command -v "$t" >/dev/null || skip "$t is not installed (scripts/install-deps test)"; done
[ -d /sys/fs/cgroup/unified ] && [ -d /sys/fs/cgroup/systemd ] || [ -f /sys/fs/cgroup/cgroup.procs ] || skip "no cgroup hierarchy for containers"

CACHE=${SERVE_TEST_CACHE:-/var/cache/serve-test}
NET=10.231.0
PREFIX=serve$$
DEPS=systemd,systemd-sysv,dbus,curl,iproute2,procps,libcjson1,libyaml-0-2,liburing2,libhwloc15,libjs-dygraphs,libpython3.11
# One cached root per package list: a root made for an older list lacks what the package needs.
ROOT=$CACHE/bookworm-$(echo "$DEPS" | md5sum | cut -c1-8)

# ---- the root file system (once per machine; about 40 s) ----
if [ ! -f "$ROOT/.serve-test-complete" ]; then
        echo "# debootstrap bookworm into $ROOT (cached for later runs)"
        rm -rf "$ROOT.tmp"; mkdir -p "$CACHE"
        debootstrap --variant=minbase --include=$DEPS bookworm "$ROOT.tmp" http://deb.debian.org/debian \
                >"$WORK/debootstrap.log" 2>&1 || { tail -n 5 "$WORK/debootstrap.log" | sed 's/^/# /'; skip "debootstrap failed (no Debian mirror?)"; }
        rm -rf "$ROOT"; mv "$ROOT.tmp" "$ROOT"; touch "$ROOT/.serve-test-complete"
fi

# ---- the package ----
build_debs "$WORK/debs"
check "packaging/build-deb builds the packages" "$?" 0
cp "$top_builddir/tests/debs/build-deb.log" "$WORK/" 2>/dev/null
DEB=$(ls "$WORK"/debs/serve_*.deb 2>/dev/null | head -n 1)
[ -n "$DEB" ] || { sed 's/^/#   /' "$WORK/build-deb.log" | tail -n 30; finish; exit 1; }

# ---- network: a bridge in its own namespace, one namespace per container ----
NS=()
cleanup_net() {
        for n in "${NS[@]}"; do ip netns del "$n" 2>/dev/null; done
        ip route del blackhole $NET.0/24 2>/dev/null
}
ip route add blackhole $NET.0/24
ip netns add "$PREFIX-sw"; NS+=("$PREFIX-sw")
ip -n "$PREFIX-sw" link add br0 type bridge && ip -n "$PREFIX-sw" link set br0 up
add_host() { # add_host I: namespace $PREFIX-hI with $NET.I on the bridge
        local h=$PREFIX-h$1
        ip netns add "$h"; NS+=("$h")
        ip -n "$PREFIX-sw" link add "h$1-$$" type veth peer name eth0 netns "$h"
        ip -n "$PREFIX-sw" link set "h$1-$$" master br0 up
        ip -n "$h" link set lo up
        ip -n "$h" addr add "$NET.$1/24" dev eth0
        ip -n "$h" link set eth0 up
}

# ---- containers ----
declare -A LEADER NSPAWN MERGED
boot() { # boot NAME HOSTINDEX
        local name=$1 d=$WORK/ct-$1
        mkdir -p "$d/upper" "$d/work" "$d/merged"
        mount -t overlay overlay -o "lowerdir=$ROOT,upperdir=$d/upper,workdir=$d/work" "$d/merged" || return 1
        MERGED[$name]=$d/merged
        echo "$name" >"$d/merged/etc/hostname"
        if [ -d /sys/fs/cgroup/unified ]; then
                mkdir -p "/sys/fs/cgroup/unified/ct-$name" "/sys/fs/cgroup/systemd/ct-$name"
        fi
        (
                if [ -d /sys/fs/cgroup/unified ]; then
                        echo $BASHPID >"/sys/fs/cgroup/unified/ct-$name/cgroup.procs"
                        echo $BASHPID >"/sys/fs/cgroup/systemd/ct-$name/cgroup.procs"
                fi
                exec systemd-nspawn -q -D "$d/merged" -M "$name" -b --register=no --keep-unit --console=read-only \
                        --network-namespace-path="/run/netns/$PREFIX-h$2" \
                        --system-call-filter='bpf perf_event_open' --capability=CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN
        ) >"$d/console.log" 2>&1 &
        NSPAWN[$name]=$!
        local l
        for _ in $(seq 300); do
                l=$(pgrep -P "${NSPAWN[$name]}" -x systemd) &&
                        nsenter -t "$l" -a systemctl is-system-running 2>/dev/null | grep -qE 'running|degraded' &&
                        { LEADER[$name]=$l; return 0; }
                kill -0 "${NSPAWN[$name]}" 2>/dev/null || break
                sleep 0.1
        done
        sed 's/^/#   /' "$d/console.log" | tail -n 20
        return 1
}
in_ct() { local n=$1; shift; nsenter -t "${LEADER[$n]}" -a "$@"; }
poweroff() {
        local n=$1
        [ -n "${NSPAWN[$n]:-}" ] || return 0
        kill -TERM "${NSPAWN[$n]}" 2>/dev/null
        for _ in $(seq 100); do kill -0 "${NSPAWN[$n]}" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "${NSPAWN[$n]}" 2>/dev/null
        wait "${NSPAWN[$n]}" 2>/dev/null
        umount "${MERGED[$n]}" 2>/dev/null
        for h in unified systemd; do
                rmdir "/sys/fs/cgroup/$h/ct-$n/payload/init.scope" "/sys/fs/cgroup/$h/ct-$n/payload" \
                        "/sys/fs/cgroup/$h/ct-$n/supervisor" "/sys/fs/cgroup/$h/ct-$n" 2>/dev/null
        done
}
cleanup_all() {
        for n in "${!NSPAWN[@]}"; do poweroff "$n"; done
        cleanup_net
        cleanup
}
trap cleanup_all EXIT

# curl_in HOSTINDEX ARGS...: a client inside host I's namespace
curl_in() { local i=$1; shift; ip netns exec "$PREFIX-h$i" curl -s -m 10 "$@"; }
answers() { [ "$(curl_in "$1" -o /dev/null -w '%{http_code}' "$2")" = 200 ]; }

add_host 1
boot node1 1 || { fail "the container boots"; finish; exit 1; }
pass "a Debian 12 container boots with systemd"
cp "$DEB" "${MERGED[node1]}/var/tmp/"
in_ct node1 dpkg -i "/var/tmp/$(basename "$DEB")" >"$WORK/dpkg.log" 2>&1
check "dpkg -i installs the package" "$?" 0
check "the serve user exists" "$(in_ct node1 id -un serve 2>/dev/null)" "serve"
check "the join token is root-only (serve-owned, 0600)" "$(in_ct node1 stat -c '%U %a' /etc/serve/join-token)" "serve 600"
in_ct node1 systemctl start serve-head serve-worker
check "systemctl start serve-head serve-worker" "$?" 0
wait_until 30 bash -c "[ \"\$(nsenter -t ${LEADER[node1]} -a systemctl is-active serve-head serve-worker | sort -u)\" = active ]"
check "both services are active" "$(in_ct node1 systemctl is-active serve-head serve-worker | sort -u)" "active"
wait_until 30 answers 1 "http://$NET.1:8000/echo"
check "the packaged example answers on :8000" "$(curl_in 1 -d hello "http://$NET.1:8000/echo")" "hello"
check_contains "systemctl status shows a STATUS= line" "$(in_ct node1 systemctl status serve-worker --no-pager)" "Status: \"serving"
v=$(in_ct node1 systemd-analyze verify --man=no serve-head.service serve-worker.service serve-worker.socket serve.target 2>&1)
check "systemd-analyze verify passes on the installed units" "$v" ""

# ---- replicas: unprivileged, each in its own cgroup below the worker's (Delegate=yes) ----
wait_until 30 bash -c "nsenter -t ${LEADER[node1]} -a curl -s -m 5 http://127.0.0.1:8265/api/serve/applications/ | jq -e '.applications.echo.deployments.Echo.replicas[0].state == \"RUNNING\"' >/dev/null"
rj=$(in_ct node1 curl -s -m 10 http://127.0.0.1:8265/api/serve/applications/)
check_contains "the installed dashboard is served on :8265" "$(in_ct node1 curl -s -m 10 http://127.0.0.1:8265/)" "<title>"
check "with its charts from Debian's libjs-dygraphs" \
        "$(in_ct node1 curl -s -m 10 -o /dev/null -w '%{http_code}' http://127.0.0.1:8265/ui/lib/dygraph.min.js)" 200
rpid=$(echo "$rj" | jq -r '.applications.echo.deployments.Echo.replicas[0].pid')
check "the replica runs as the unprivileged serve user" "$(in_ct node1 ps -o user= -p "$rpid" | tr -d ' ')" "serve"
check_contains "the replica has its own cgroup below serve-worker's" "$(in_ct node1 cat "/proc/$rpid/cgroup")" "serve-worker.service/replicas/"
in_ct node1 journalctl -u serve-worker --no-pager | grep -E 'cgroup|replica .* starting' | sed 's/^/# /' | tail -n 3
check_contains "its cgroup's CPU limit comes from num_cpus: 0.1" \
        "$(echo "$rj" | jq -r '.applications.echo.deployments.Echo.replicas[0].limits')" "cpu.max=10000 100000"

# ---- reload: a valid change is served, an invalid one fails the reload and changes nothing ----
in_ct node1 sed -i 's|route_prefix: /echo|route_prefix: /hello|' /etc/serve/apps.yaml
in_ct node1 systemctl reload serve-head
check "systemctl reload serve-head succeeds for a valid file" "$?" 0
wait_until 30 answers 1 "http://$NET.1:8000/hello"
check "the reloaded config is served" "$(curl_in 1 -d again "http://$NET.1:8000/hello")" "again"
in_ct node1 sh -c 'echo "  - nonsense: [" >>/etc/serve/apps.yaml'
in_ct node1 systemctl reload serve-head >"$WORK/badreload.log" 2>&1
rc=$?
[ "$rc" -ne 0 ] && pass "systemctl reload fails for an invalid apps.yaml (exit $rc)" || fail "systemctl reload fails for an invalid apps.yaml"
check "the old config keeps serving" "$(curl_in 1 -d still "http://$NET.1:8000/hello")" "still"
check "serve-head is still active" "$(in_ct node1 systemctl is-active serve-head)" active
in_ct node1 sed -i '$d' /etc/serve/apps.yaml

# ---- the worker is killed: systemd restarts it; the socket keeps :8000 ----
in_ct node1 systemctl kill -s KILL serve-worker
wait_until 30 answers 1 "http://$NET.1:8000/hello"
check "after SIGKILL systemd restarts the worker and :8000 answers" "$(curl_in 1 -d back "http://$NET.1:8000/hello")" "back"
check "the worker was restarted by systemd" "$(in_ct node1 systemctl show -p NRestarts --value serve-worker)" 1

# ---- a stuck event loop: the watchdog restarts the worker (WatchdogSec shortened for the test) ----
in_ct node1 sh -c 'mkdir -p /etc/systemd/system/serve-worker.service.d &&
        printf "[Service]\nWatchdogSec=2s\n" >/etc/systemd/system/serve-worker.service.d/watchdog.conf &&
        systemctl daemon-reload && systemctl restart serve-worker'
wait_until 30 answers 1 "http://$NET.1:8000/hello"
n0=$(in_ct node1 systemctl show -p NRestarts --value serve-worker)
in_ct node1 sh -c 'kill -STOP $(systemctl show -p MainPID --value serve-worker)'
wait_until 30 bash -c "[ \$(nsenter -t ${LEADER[node1]} -a systemctl show -p NRestarts --value serve-worker) -gt $n0 ]"
check "a worker whose loop stops answering the watchdog is restarted" "$(in_ct node1 systemctl show -p NRestarts --value serve-worker)" "$((n0 + 1))"
check_contains "systemd says it was the watchdog" "$(in_ct node1 journalctl -u serve-worker --no-pager)" "Watchdog timeout"
in_ct node1 sh -c 'rm -r /etc/systemd/system/serve-worker.service.d && systemctl daemon-reload'
wait_until 30 answers 1 "http://$NET.1:8000/hello"

# ---- restart under load: zero failed requests ----
if command -v wrk >/dev/null; then
        ip netns exec "$PREFIX-h1" wrk -t1 -c4 -d8s --timeout 20s "http://$NET.1:8000/hello" >"$WORK/restart.wrk" 2>&1 &
        load=$!
        # Restart once the load is flowing (the worker's own metrics count it).
        wait_until 20 bash -c "ip netns exec $PREFIX-h1 curl -s -m 2 http://127.0.0.1:8268/metrics | awk '/^serve_num_http_requests.*application=\"echo\"/ { n += \$NF } END { exit !(n > 1000) }'"
        in_ct node1 systemctl restart serve-worker
        check "systemctl restart serve-worker" "$?" 0
        wait "$load"
        non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$WORK/restart.wrk")
        errors=$(awk '/Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' "$WORK/restart.wrk")
        reqs=$(awk '/requests in/ { print $1 }' "$WORK/restart.wrk")
        check "restart under load: no non-2xx responses" "${non2xx:-0}" 0
        check "restart under load: no connection errors" "${errors:-0}" 0
        [ "${reqs:-0}" -gt 100 ] && pass "the load generator ran ($reqs requests)" || fail "the load generator ran (${reqs:-0} requests)"
fi

# ---- journald: structured fields ----
j=$(in_ct node1 journalctl -u serve-worker --no-pager -o verbose SERVE_APP=echo | grep -E '^ +SERVE_' | sort -u)
check_contains "journalctl -u serve-worker SERVE_APP=echo finds the replica's lines" "$j" "SERVE_APP=echo"
check_contains "they carry SERVE_DEPLOYMENT" "$j" "SERVE_DEPLOYMENT=Echo"
check_contains "they carry SERVE_REPLICA" "$j" "SERVE_REPLICA="
check_contains "they carry SERVE_NODE" "$j" "SERVE_NODE=node1"

# ---- a second node joins the first one's head ----
add_host 2
boot node2 2 || fail "the second container boots"
cp "$DEB" "${MERGED[node2]}/var/tmp/"
# The head accepts workers from the bridge; node2 gets node1's join token.
in_ct node1 sh -c "sed -i 's|^node_address: .*|node_address: $NET.1|' /etc/serve/worker.yaml && systemctl restart serve-worker"
in_ct node2 dpkg -i "/var/tmp/$(basename "$DEB")" >"$WORK/dpkg2.log" 2>&1
check "dpkg -i on the second node" "$?" 0
in_ct node2 systemctl disable --now serve-head >/dev/null 2>&1
in_ct node2 systemctl stop serve-worker
# node2 joins with a single-use token minted on the head (it carries the head's CA hash: node2
# checks the head with it before sending the secret), over TLS.
in_ct node1 serve-head --join-token create --ttl 15m --uses 1 --name node2 2>/dev/null |
        in_ct node2 sh -c 'cat >/etc/serve/join-token'
check_contains "the token minted on the head reached node2" "$(in_ct node2 cat /etc/serve/join-token)" "SRV1."
in_ct node2 sh -c "sed -i 's|^head_address: .*|head_address: $NET.1:8266|; s|^node_address: .*|node_address: $NET.2|' /etc/serve/worker.yaml"
in_ct node2 systemctl start serve-worker
wait_until 60 bash -c "[ \$(nsenter -t ${LEADER[node1]} -a serve nodes --json | grep -c '\"ALIVE\"') = 2 ]"
check "serve nodes on the head shows two alive nodes" "$(in_ct node1 serve nodes --json | grep -c '"ALIVE"')" 2
check_contains "node2 joined the head over TLS with the token" "$(in_ct node1 journalctl -u serve-head --no-pager)" "node node2 joined from"
check "node2's key and certificate are the serve user's, mode 0600" \
        "$(in_ct node2 stat -c '%U %a' /var/lib/serve/worker/node.key /var/lib/serve/worker/node.crt | tr '\n' ' ')" "serve 600 serve 600 "
check_contains "node2 authenticated the head" "$(in_ct node2 journalctl -u serve-worker --no-pager)" "serve-head at $NET.1:8266 authenticated"
wait_until 30 answers 2 "http://$NET.2:8000/hello"
check "the second node serves the application" "$(curl_in 2 -d two "http://$NET.2:8000/hello")" "two"
in_ct node1 sed -i 's|num_replicas: 1|num_replicas: 2|' /etc/serve/apps.yaml
in_ct node1 systemctl reload serve-head
wait_until 60 bash -c "nsenter -t ${LEADER[node1]} -a serve status --json | grep -q '\"node_id\": *\"node2\"'"
check_contains "after scaling to 2, a replica runs on the second node" "$(in_ct node1 serve status)" "node2"
finish
