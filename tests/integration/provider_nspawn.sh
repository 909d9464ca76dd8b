#!/usr/bin/env bash
# The nspawn node provider (providers/nspawn) as serve-head's cluster autoscaler uses it: `create`
# boots a systemd-nspawn container from a cached Debian 12 root with a NoCloud seed holding the
# user-data serve-head renders; cloud-init really installs the built serve package from a local
# apt repository and starts serve-worker, which joins a head (TLS, a single-use token bound to the
# node's name) and serves a deployment on :8000; `delete` leaves nothing behind.
# Prints how long each step took (TAP comments), the breakdown the benchmark reuses.
#
# Network: 10.233.0.0/24 on a bridge in a namespace of its own; the head (.1) and a client (.2)
# in namespaces, the node at .100 in the one create makes. The main namespace routes the subnet
# to a blackhole while the test runs, so nothing is sent off the machine.
# Skipped (exit 77) where systemd.sh is: not root, no nspawn/debootstrap, no cgroup hierarchies,
# SERVE_TEST_PACKAGES=0, or no Debian mirror for the first root build (cached afterwards in
# $SERVE_TEST_CACHE, default /var/cache/serve-test). SERVE_TEST_DEBS=DIR uses the .debs in DIR
# instead of building them (to iterate on the provider).
. "$(dirname "$0")/lib.sh"

. "$(dirname "$0")/nspawn-lib.sh"
nspawn_skip_unless_able

NET=10.233.0
P=snsp$$
NODE=cpu-$(printf '%04x%02x' $((RANDOM % 65536)) $((RANDOM % 256)))
GROUP=cpu
HEAD_BIN=$top_builddir/serve-head
CONF=$WORK/conf
STATE=$WORK/state
PSTATE=$WORK/nodes # the provider's state_dir
mkdir -p "$CONF" "$STATE" "$PSTATE"

# ---- the package and its repository; the root (once per machine and package list) ----
nspawn_package
nspawn_root

# ---- network: a bridge in its own namespace, the head and a client on it ----
cleanup_all() {
        # The node, even when the test failed half-way (delete is idempotent).
        [ -f "$WORK/delete.json" ] && "$PROV/delete" "$NODE" <"$WORK/delete.json" >/dev/null 2>&1
        for p in "${SERVE_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
        wait 2>/dev/null
        for n in "${NS[@]}"; do ip netns del "$n" 2>/dev/null; done
        ip route del blackhole $NET.0/24 2>/dev/null
        cleanup
}
trap cleanup_all EXIT
nspawn_bridge "$NET" "$P"
add_host head 1
add_host cl 2

# ---- the head (from the build tree, TLS), serving echo from the package's examples ----
nspawn_head_config
cat >>"$CONF/cluster.yaml" <<EOC
# The group the node belongs to, for --render-user-data (no provider: this head launches nothing;
# the test runs the hooks itself).
autoscaler:
  head_address: "$NET.1:8266"
worker_groups:
  - name: $GROUP
    resources: {num_cpus: 2, memory: 4294967296}
    apt_source: "deb [trusted=yes] file:/srv/serve-repo ./"
EOC
cat >"$CONF/apps.yaml" <<EOC
applications:
  - name: echo
    route_prefix: /echo
    import_path: echo:app
    deployments:
      - name: Echo
        num_replicas: 1
        ray_actor_options: {num_cpus: 0.1}
EOC
in_head() { ip netns exec "$P-head" "$@"; }
# The head sees the package's applications where the node has them (nspawn-lib.sh). Not through
# in_head: a function in the background is a subshell, and $! must be the head to kill it.
nspawn_package_view
ip netns exec "$P-head" "${PKG_VIEW[@]}" env SERVE_APP_PATH="$HOST_LIBDIR/serve/apps" "$HEAD_BIN" -c "$CONF" --state-dir "$STATE" >"$WORK/head.log" 2>&1 &
SERVE_PIDS+=($!)
wait_until 20 in_head curl -fs -o /dev/null -m 2 "$API/-/healthz"
check "serve-head answers in its namespace" "$(in_head curl -s -o /dev/null -w '%{http_code}' -m 5 "$API/-/healthz")" 200
nodes_json() { in_head curl -fsS -m 5 "$API/api/cluster/nodes"; }
node_state() { nodes_json | jq -r --arg n "$NODE" '.nodes[] | select(.node_id == $n) | .state'; }

# ---- the user-data serve-head renders for the node, with a token bound to its name ----
TOKEN=$("$HEAD_BIN" -c "$CONF" --state-dir "$STATE" --join-token create --ttl 10m --uses 1 --name "$NODE" 2>>"$WORK/mint.log")
check_contains "a single-use token bound to $NODE" "$TOKEN" "SRV1."
SECRET=${TOKEN##*.}
render_user_data "$CONF" "$GROUP" "$NODE" "$TOKEN" "$WORK/user-data"
check "serve-head --render-user-data renders the node's user-data" "$?" 0
OPTS=$(jq -n --arg root "$ROOT" --arg state "$PSTATE" --arg brns "$P-sw" --arg net "$NET" --arg repo "$REPO" \
        '{root: $root, state_dir: $state, bridge_netns: $brns, bridge: "br0", subnet: $net, repo: $repo}')
jq -n --arg n "$NODE" --arg g "$GROUP" --arg ud "$WORK/user-data" --argjson o "$OPTS" \
        '{name: $n, group: $g, shape: {cpus: 2, memory: 4294967296, gpus: 0, custom: {}}, labels: {group: $g}, user_data: $ud, options: $o}' \
        >"$WORK/create.json"
jq -n --arg n "$NODE" --arg g "$GROUP" --argjson o "$OPTS" '{name: $n, group: $g, id: ("nspawn:" + $n), options: $o}' >"$WORK/delete.json"
jq -n --arg g "$GROUP" --argjson o "$OPTS" '{group: $g, options: $o}' >"$WORK/list.json"

# ---- create: returns at once, the node boots, cloud-init installs serve, the worker joins ----
ms() { echo $(($(date +%s%N) / 1000000)); }
T0=$(ms)
out=$(cd / && "$PROV/create" "$NODE" <"$WORK/create.json" 2>"$WORK/create.err")
rc=$?
T_CREATE=$(ms)
check "create exits 0" "$rc" 0
[ "$rc" = 0 ] || sed 's/^/#   /' "$WORK/create.err"
check "create prints the node's id and address" "$(jq -c . <<<"$out" 2>&1)" "{\"id\":\"nspawn:$NODE\",\"address\":\"$NET.100\"}"
[[ "$out$(cat "$WORK/create.err")" != *"$SECRET"* ]] && pass "create prints no secret" || fail "create prints no secret"
check "list shows the node of group $GROUP" "$("$PROV/list" <"$WORK/list.json" | jq -r '"\(.name) \(.group) \(.id) \(.created > 0)"')" \
        "$NODE $GROUP nspawn:$NODE true"
check "list shows none for another group" "$(jq '.group = "gpu"' "$WORK/list.json" | "$PROV/list")" ""

PID=$(jq -r .pid "$PSTATE/$NODE/record.json" 2>/dev/null)
leader() { pgrep -P "$PID" -x systemd; }
booted() { L=$(leader) && nsenter -t "$L" -a systemctl is-system-running 2>/dev/null | grep -qE 'running|degraded'; }
in_ct() { nsenter -t "$(leader)" -a "$@"; }
wait_until 30 leader >/dev/null && pass "the container runs (its systemd started)" || { fail "the container runs"; sed 's/^/#   /' "$PSTATE/$NODE/console.log" | tail -n 20; finish; exit 1; }
T_RUN=$(ms)
check_contains "systemd-nspawn is in the node's own cgroup, not the caller's" "$(cat "/proc/$PID/cgroup")" "serve-nspawn-$NODE"
[ "$(ps -o sid= -p "$PID" | tr -d ' ')" != "$(ps -o sid= -p $$ | tr -d ' ')" ] && pass "... and in a session of its own" || fail "systemd-nspawn is in a session of its own"

wait_until 120 bash -c "nsenter -t $(leader) -a cloud-init status 2>/dev/null | grep -qE 'status: (done|error)'"
T_CI=$(ms)
v=$(in_ct cloud-init status 2>&1 | head -n 1)
check "cloud-init status is done" "$v" "status: done"
[ "$v" = "status: done" ] ||
        { in_ct cloud-init status --long; in_ct grep -iE 'warn|error|fail' /var/log/cloud-init.log | tail -n 15; } 2>&1 | sed 's/^/#   /'
wait_until 60 booted && pass "the container boots (systemd running)" || { fail "the container boots"; sed 's/^/#   /' "$PSTATE/$NODE/console.log" | tail -n 20; }
check_contains "cloud-init found the NoCloud seed" "$(in_ct cat /run/cloud-init/result.json 2>&1)" "NoCloud"
check "dpkg -s serve: installed" "$(in_ct dpkg-query -W -f '${Status}' serve 2>&1)" "install ok installed"
wait_until 30 bash -c "[ \"\$(nsenter -t $(leader) -a systemctl is-active serve-worker)\" = active ]"
check "the serve-head the package started is stopped (a node needs none)" "$(in_ct systemctl is-active serve-head 2>&1)" inactive
v=$(in_ct systemctl is-active serve-worker 2>&1)
check "serve-worker is active" "$v" active
[ "$v" = active ] ||
        in_ct journalctl -u serve-worker --no-pager 2>&1 | tail -n 15 | sed 's/^/#   /'
check "serve-worker is enabled" "$(in_ct systemctl is-enabled serve-worker 2>&1)" enabled
wait_until 60 bash -c "[ \"\$(in_head() { ip netns exec $P-head \"\$@\"; }; in_head curl -fsS -m 5 $API/api/cluster/nodes | jq -r '.nodes[] | select(.node_id == \"$NODE\") | .state')\" = ALIVE ]"
T_JOIN=$(ms)
check "the worker joined the head (ALIVE)" "$(node_state)" ALIVE
check "with the group's labels" "$(nodes_json | jq -r --arg n "$NODE" '.nodes[] | select(.node_id == $n) | .labels.group' 2>&1)" "$GROUP"
check_contains "the head logs the join over TLS" "$(cat "$WORK/head.log")" "node $NODE joined from $NET.100"
wait_until 60 bash -c "[ \"\$(ip netns exec $P-cl curl -s -m 5 -o /dev/null -w '%{http_code}' -d x http://$NET.100:8000/echo)\" = 200 ]"
v=$(ip netns exec "$P-cl" curl -s -m 5 -d hello "http://$NET.100:8000/echo")
check "echo answers through the node's :8000 to a client on the bridge" "$v" hello
[ "$v" = hello ] || { in_head curl -fsS -m 5 "$API/api/serve/applications/" | jq -c '.applications.echo' | cut -c1-600
        in_ct journalctl -u serve-worker --no-pager | tail -n 15; } 2>&1 | sed 's/^/#   /'
if grep -rqF "$SECRET" "$PSTATE/$NODE/console.log" "$WORK/head.log" "$WORK/create.err"; then fail "no log holds the token's secret"; else pass "no log holds the token's secret"; fi

# When each step finished, from create's start (the benchmark's breakdown). Package installed:
# dpkg's log (whole seconds).
inst=$(in_ct grep -m1 ' status installed serve:' /var/log/dpkg.log | cut -d' ' -f1,2)
T_PKG=$(( $(date -d "$inst" +%s 2>/dev/null || echo 0) * 1000 ))
echo "# timings from create's start (ms): create returned $((T_CREATE - T0)), container running $((T_RUN - T0)), cloud-init done $((T_CI - T0)) (seen), package installed $((T_PKG - T0)) (dpkg.log, 1 s resolution), worker joined $((T_JOIN - T0))"
in_ct cloud-init analyze show 2>/dev/null | grep -E 'Finished|Total Time' | tail -n 3 | sed 's/^/# cloud-init analyze: /'
[ $((T_JOIN - T0)) -le 20000 ] && echo "# pending -> joined within the 20 s target" || echo "# pending -> joined took over the 20 s target"

# ---- delete: nothing is left ----
MERGED=$PSTATE/$NODE/merged
(cd / && "$PROV/delete" "$NODE" <"$WORK/delete.json" 2>"$WORK/delete.err")
check "delete exits 0" "$?" 0
check "no systemd-nspawn left" "$(kill -0 "$PID" 2>/dev/null && echo running)" ""
check "no mount left" "$(grep -c "$MERGED" /proc/mounts)" 0
check "no network namespace left" "$(ip netns list 2>/dev/null | grep -c "serve-nspawn-$NODE")" 0
check "no cgroup left" "$(ls -d /sys/fs/cgroup/*/serve-nspawn-"$NODE" /sys/fs/cgroup/serve-nspawn-"$NODE" 2>/dev/null)" ""
check "no state left" "$(ls -A "$PSTATE" | grep -v '^\.lock$')" ""
check "no veth left on the bridge" "$(ip -n "$P-sw" -o link show master br0 2>/dev/null | grep -c vn)" 0 2>/dev/null
(cd / && "$PROV/delete" "$NODE" <"$WORK/delete.json" 2>>"$WORK/delete.err")
check "delete again (the node is gone) exits 0" "$?" 0
check "list is empty" "$("$PROV/list" <"$WORK/list.json")" ""
wait_until 30 bash -c "[ \"\$(ip netns exec $P-head curl -fsS -m 5 $API/api/cluster/nodes | jq -r '.nodes[] | select(.node_id == \"$NODE\") | .state')\" != ALIVE ]"
[ "$(node_state)" != ALIVE ] && pass "the head notices the node is gone" || fail "the head notices the node is gone"
finish
