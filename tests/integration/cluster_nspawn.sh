#!/usr/bin/env bash
# The cluster autoscaler end to end with the nspawn provider, driven by serve-head itself: a
# replica that fits no node is PENDING, the head launches a node of group cpu (provider create
# with the user-data it renders), the container boots, cloud-init installs the built serve
# package from a local apt repository and starts serve-worker, which joins with its single-use
# token; the replica runs there and answers through the new node's :8000 and through the fixed
# worker's (which only proxies). With the application removed the node is idle, drained and
# deleted after idle_timeout_s, and nothing of it is left.
# Prints how long each step took from the replica going PENDING (TAP comments: "# timing: ...",
# "# pending -> serving: N.N s"), which tests/bench/nodes shows.
#
# Network: 10.244.0.0/24 on a bridge in a namespace of its own; the head (.1), a fixed worker
# (.2) and a client (.3) in namespaces, the node at .100 in the one create makes. The main
# namespace routes the subnet to a blackhole while the test runs.
# The head runs create in its own network namespace (nsenter, not `ip netns exec`, which would
# hide the machine's cgroups and keep the mounts create makes to itself) and in a mount namespace
# showing the package's applications (nspawn-lib.sh); the provider's state directory is a shared
# mount, so the node's overlay is seen, checked and undone outside it.
# Skipped (exit 77) where provider_nspawn.sh is; shares its cached root and package build
# (SERVE_TEST_DEBS=DIR uses the .debs in DIR).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/nspawn-lib.sh"
nspawn_skip_unless_able

GROUP=cpu
HEAD_BIN=$top_builddir/serve-head
WORKER_BIN=$top_builddir/serve-worker
CONF=$WORK/conf
STATE=$WORK/state
PSTATE=$WORK/nodes # the provider's state_dir
mkdir -p "$CONF" "$STATE" "$PSTATE"

nspawn_package
nspawn_root

# ---- cleanup: the head first (it would launch again), then any node, then the rest ----
HEAD_PID=
OPTS=
cleanup_all() {
        local d
        [ -n "$HEAD_PID" ] && { kill -KILL "$HEAD_PID" 2>/dev/null; wait "$HEAD_PID" 2>/dev/null; }
        for d in "$PSTATE"/*/; do
                [ -d "$d" ] && [ -n "$OPTS" ] || continue
                jq -n --arg n "$(basename "$d")" --argjson o "$OPTS" '{name: $n, group: "cpu", id: ("nspawn:" + $n), options: $o}' |
                        (cd / && "$PROV/delete" "$(basename "$d")") >/dev/null 2>&1
        done
        for p in "${SERVE_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
        wait 2>/dev/null
        mountpoint -q "$PSTATE" && umount -l "$PSTATE"
        for n in "${NS[@]}"; do ip netns del "$n" 2>/dev/null; done
        ip route del blackhole "$NET.0/24" 2>/dev/null
        cleanup
}
trap cleanup_all EXIT
P=scn$$
nspawn_bridge 10.244.0 "$P"
add_host head 1
add_host w2 2
add_host cl 3
# What create mounts from the head's mount namespace must be visible (and unmounted) here.
mount --bind "$PSTATE" "$PSTATE" && mount --make-shared "$PSTATE"

# ---- the head (from the build tree, TLS) with the cpu group of the nspawn provider ----
nspawn_head_config
cat >>"$CONF/cluster.yaml" <<EOC
autoscaler:
  head_address: $NET.1:8266
  batch_idle_s: 0.2
worker_groups:
  - name: $GROUP
    provider: nspawn
    min_nodes: 0
    max_nodes: 1
    idle_timeout_s: 5
    boot_timeout_s: 120
    apt_source: "deb [trusted=yes] file:/srv/serve-repo ./"
    resources: {num_cpus: 2}
    labels: {tier: e2e}
    provider_options:
      root: $ROOT
      state_dir: $PSTATE
      bridge_netns: $P-sw
      subnet: $NET
      repo: $REPO
EOC
OPTS=$(jq -n --arg root "$ROOT" --arg state "$PSTATE" --arg brns "$P-sw" --arg net "$NET" --arg repo "$REPO" \
        '{root: $root, state_dir: $state, bridge_netns: $brns, subnet: $net, repo: $repo}')
echo "applications: []" >"$CONF/apps.yaml"
in_head() { nsenter --net="/run/netns/$P-head" "$@"; }
in_client() { ip netns exec "$P-cl" "$@"; }
nspawn_package_view
# nsenter, unshare and sh exec: $! is serve-head's pid (in_head would be a subshell).
nsenter --net="/run/netns/$P-head" "${PKG_VIEW[@]}" env SERVE_APP_PATH="$HOST_LIBDIR/serve/apps" SERVE_PROVIDER_PATH="$top_srcdir/providers" \
        "$HEAD_BIN" -c "$CONF" --state-dir "$STATE" >"$WORK/head.log" 2>&1 &
HEAD_PID=$!
wait_until 20 in_head curl -fs -o /dev/null -m 2 "$API/-/healthz"
check "serve-head answers in its namespace" "$(in_head curl -s -o /dev/null -w '%{http_code}' -m 5 "$API/-/healthz")" 200
api() { in_head curl -fsS -m 5 "$API$1"; }
nodes_json() { api /api/cluster/nodes; }
node_field() { nodes_json | jq -r --arg n "$1" --arg f "$2" '.nodes[] | select(.node_id == $n) | .[$f] // empty'; }
events() { api "/api/dashboard/events?limit=1000"; }
# event_time KIND NODE: when the head recorded the last such event (wall clock, seconds)
event_time() { events | jq -r --arg k "$1" --arg n "$2" '[.events[] | select(.kind == $k and ($n == "" or .node == $n))] | last | .time // empty'; }

# ---- a fixed worker too small for the replica: it only proxies ----
cat >"$CONF/worker-2.yaml" <<EOC
head_address: $NET.1:8266
transport: tls
state_dir: $WORK/node-2
ca_file: $STATE/pki/ca.crt
join_token_file: join-token
node_name: fixed-2
node_address: $NET.2
http_host: $NET.2
http_port: 8000
resources: {num_cpus: 0.5}
EOC
ip netns exec "$P-w2" "$WORKER_BIN" -c "$CONF/worker-2.yaml" >"$WORK/worker-2.log" 2>&1 &
SERVE_PIDS+=($!)
wait_until 30 bash -c "[ \"\$(nsenter --net=/run/netns/$P-head curl -fsS -m 5 $API/api/cluster/nodes | jq -r '.nodes[] | select(.node_id == \"fixed-2\") | .state')\" = ALIVE ]"
check "the fixed worker joined (ALIVE)" "$(node_field fixed-2 state)" ALIVE
[ "$(node_field fixed-2 state)" = ALIVE ] || { tail -n 15 "$WORK/worker-2.log" | sed 's/^/#   /'; finish; exit 1; }
check "no node of group $GROUP before there is demand" "$(nodes_json | jq --arg g "$GROUP" '[.nodes[] | select(.group == $g)] | length')" 0

# ---- demand: echo (from the package's examples) wants a whole CPU, which fixed-2 lacks ----
ms() { echo $(($(date +%s%N) / 1000000)); }
cat >"$CONF/apps.yaml" <<EOC
applications:
  - name: echo
    route_prefix: /echo
    import_path: echo:app
    deployments:
      - name: Echo
        num_replicas: 1
        ray_actor_options: {num_cpus: 1}
EOC
T_HUP=$(ms)
kill -HUP "$HEAD_PID"
echo_json() { api /api/serve/applications/ | jq -c '.applications.echo.deployments.Echo // empty'; }
pending_count() { echo_json | jq -r '[.pending[].count] | add // 0'; }
wait_until 30 bash -c "[ \"\$(nsenter --net=/run/netns/$P-head curl -fsS -m 5 $API/api/serve/applications/ | jq -r '[.applications.echo.deployments.Echo.pending[]?.count] | add // 0')\" -ge 1 ]"
T_PEND_SEEN=$(ms)
check "the replica is PENDING (it fits no node)" "$(pending_count)" 1
check "... and nothing runs it yet" "$(echo_json | jq '[.replicas[] | select(.state == "RUNNING")] | length')" 0

NODE=
for _ in $(seq 600); do
        NODE=$(events | jq -r --arg g "$GROUP" '[.events[] | select(.kind == "node_launching" and .subject == $g)] | last | .node // empty')
        [ -n "$NODE" ] && break
        sleep 0.05
done
check_contains "the head launches a node of group $GROUP (node_launching event)" "$NODE" "$GROUP-"
[ -n "$NODE" ] || { tail -n 20 "$WORK/head.log" | sed 's/^/#   /'; finish; exit 1; }
check_contains "... saying why" "$(events | jq -r --arg n "$NODE" '.events[] | select(.kind == "node_launching" and .node == $n) | .message')" "pending"
check_contains "the head logs the launch" "$(cat "$WORK/head.log")" "launching node $NODE of group $GROUP"

# ---- the container boots, cloud-init installs serve and starts serve-worker ----
# The container's systemd: the child of the systemd-nspawn create started (its pid is in the
# node's record), or else (in a loaded `make -j2 check` the record was once seen without it) the
# process of the node's cgroups that is PID 1 in a PID namespace of its own.
record_pid() { jq -r '.pid // empty' "$PSTATE/$NODE/record.json" 2>/dev/null; }
leader() {
        local p pid=${PID:-$(record_pid)}
        [ -n "$pid" ] && pgrep -P "$pid" -x systemd && return 0
        for p in $(find /sys/fs/cgroup/unified/serve-nspawn-"$NODE" /sys/fs/cgroup/serve-nspawn-"$NODE" \
                        -name cgroup.procs -exec cat {} + 2>/dev/null); do
                [ "$(cat "/proc/$p/comm" 2>/dev/null)" = systemd ] && grep -qE '^NSpid:.*[[:space:]]1$' "/proc/$p/status" 2>/dev/null &&
                        { echo "$p"; return 0; }
        done
        return 1
}
in_ct() { nsenter -t "$(leader)" -a "$@"; }
wait_until 60 leader >/dev/null && pass "the container runs (its systemd started)" ||
        { fail "the container runs"; { cat "$PSTATE/$NODE/record.json"; echo
          tail -n 20 "$PSTATE/$NODE/console.log" "$WORK/head.log"; } 2>&1 | sed 's/^/#   /'; finish; exit 1; }
T_RUN=$(ms)
PID=$(record_pid) # systemd-nspawn's
check_contains "the record names systemd-nspawn's pid" "$(tr '\0' ' ' <"/proc/${PID:-0}/cmdline" 2>&1)" "systemd-nspawn"
check "the node's address is the first of the subnet's node range" "$(jq -r .address "$PSTATE/$NODE/record.json")" "$NET.100"
ADDR=$NET.100
check "create's overlay is mounted (seen outside the head's mount namespace)" "$(grep -c " $PSTATE/$NODE/merged " /proc/mounts)" 1
check "the node's network namespace is seen outside the head's" "$(ip -n "serve-nspawn-$NODE" -o addr show eth0 2>/dev/null | grep -c "$ADDR/24")" 1

# The package is installed before cloud-init finishes (the packages module runs before runcmd).
# Polled cheaply (no Python): result.json is written at the end of cloud-init's last stage.
ci_status() { in_ct cloud-init status 2>/dev/null | head -n 1; }
pkg_status() { in_ct dpkg-query -W -f '${Status}' serve 2>/dev/null; }
T_PKG=
for _ in $(seq 2400); do
        [ -z "$T_PKG" ] && [ "$(pkg_status)" = "install ok installed" ] && T_PKG=$(ms)
        in_ct test -e /run/cloud-init/result.json 2>/dev/null && break
        sleep 0.05
done
v=$(ci_status)
check "cloud-init status is done" "$v" "status: done"
[ "$v" = "status: done" ] ||
        { in_ct cloud-init status --long; in_ct grep -iE 'warn|error|fail' /var/log/cloud-init.log | tail -n 15; } 2>&1 | sed 's/^/#   /'
# When it finished: result.json is written at the end of its last stage.
T_CI=$(in_ct stat -c %.3Y /run/cloud-init/result.json 2>/dev/null | tr -d .)
check_contains "cloud-init found the NoCloud seed" "$(in_ct cat /run/cloud-init/result.json 2>&1)" "NoCloud"
check "dpkg -s serve: installed" "$(pkg_status)" "install ok installed"
wait_until 30 bash -c "[ \"\$(nsenter -t $(leader) -a systemctl is-active serve-worker)\" = active ]"
v=$(in_ct systemctl is-active serve-worker 2>&1)
check "serve-worker is active in the node" "$v" active
[ "$v" = active ] || in_ct journalctl -u serve-worker --no-pager 2>&1 | tail -n 15 | sed 's/^/#   /'
check "serve-head is inactive in the node (one head per cluster)" "$(in_ct systemctl is-active serve-head 2>&1)" inactive

# ---- it joins, the replica runs there and serves through either node's :8000 ----
wait_until 90 bash -c "[ \"\$(nsenter --net=/run/netns/$P-head curl -fsS -m 5 $API/api/cluster/nodes | jq -r '.nodes[] | select(.node_id == \"$NODE\") | .state')\" = ALIVE ]"
check "the node joined (ALIVE)" "$(node_field "$NODE" state)" ALIVE
check "... in group $GROUP" "$(node_field "$NODE" group)" "$GROUP"
check "... with the group's labels" "$(nodes_json | jq -r --arg n "$NODE" '.nodes[] | select(.node_id == $n) | "\(.labels.group) \(.labels.tier)"')" "$GROUP e2e"
check "... from its own address" "$(node_field "$NODE" node_ip)" "$ADDR"
check_contains "the head logs the join over TLS" "$(cat "$WORK/head.log")" "node $NODE joined from $ADDR"
on_node() { echo_json | jq -r --arg n "$NODE" '[.replicas[] | select(.state == "RUNNING" and .node_id == $n)] | length'; }
T_REP=
for _ in $(seq 1200); do [ "$(on_node)" = 1 ] && { T_REP=$(ms); break; }; sleep 0.05; done
check "the replica is RUNNING on the new node" "$(on_node)" 1
check "... and nothing is pending" "$(pending_count)" 0
T_200=
for _ in $(seq 600); do
        [ "$(in_client curl -s -m 5 -o /dev/null -w '%{http_code}' -d x "http://$ADDR:8000/echo")" = 200 ] && { T_200=$(ms); break; }
        sleep 0.05
done
v=$(in_client curl -s -m 5 -d hello "http://$ADDR:8000/echo")
check "a client gets the echo through the new node's :8000" "$v" hello
v=$(in_client curl -s -m 5 -d hello-via-2 "http://$NET.2:8000/echo")
check "... and through the fixed worker's :8000 (cross-node)" "$v" hello-via-2
[ "$v" = hello-via-2 ] || tail -n 15 "$WORK/worker-2.log" | sed 's/^/#   /'
TOKEN_SECRET=$(in_ct cat /etc/serve/join-token 2>/dev/null)
TOKEN_SECRET=${TOKEN_SECRET##*.}
if [ -n "$TOKEN_SECRET" ] && grep -rqF "$TOKEN_SECRET" "$PSTATE/$NODE/console.log" "$WORK/head.log"; then
        fail "no log holds the join token's secret"
else pass "no log holds the join token's secret"; fi

# ---- the breakdown, from the replica going PENDING ----
# Server-side steps are the head's event times; the container's steps are seen by this test
# (polls every 50 ms, each step once the one before it was seen) except cloud-init's end
# (result.json's time). Steps overlap: create returns once the container's systemd runs, and
# the worker joins while cloud-init's last stage finishes, hence negative differences.
ev_ms() { local t; t=$(event_time "$1" "$2"); [ -n "$t" ] && awk -v t="$t" 'BEGIN { printf "%.0f", t * 1000 }'; }
T_PEND=$(ev_ms replicas_pending "")
[ -n "$T_PEND" ] || T_PEND=$T_PEND_SEEN
T_LAUNCH=$(ev_ms node_launching "$NODE")
T_CREATED=$(ev_ms node_created "$NODE")
T_JOIN=$(ev_ms node_ready "$NODE")
[ -n "$T_JOIN" ] || T_JOIN=$(ev_ms node_joined "$NODE")
if [ -z "$T_PKG" ]; then # never seen installed while polling: dpkg's log (whole seconds), if any
        inst=$(in_ct grep -m1 ' status installed serve:' /var/log/dpkg.log | cut -d' ' -f1,2)
        T_PKG=$(( $(date -d "$inst" +%s 2>/dev/null || echo 0) * 1000 ))
fi
prev=$T_PEND
step() { # step NAME MS
        if [ -z "$2" ] || [ "$2" -le 0 ]; then echo "# timing: $(printf '%-18s' "$1") (not recorded)"; return; fi
        awk -v n="$1" -v t="$2" -v p="$prev" -v z="$T_PEND" 'BEGIN { printf "# timing: %-18s %6.2f s  (%+.2f s)\n", n, (t - z) / 1000, (t - p) / 1000 }'
        prev=$2
}
echo "# timing: SIGHUP to pending seen $(awk -v a="$T_HUP" -v b="$T_PEND" 'BEGIN { printf "%.2f", (b - a) / 1000 }') s; then from pending seen (since the step before):"
step "pending seen" "$T_PEND"
step "launch decided" "$T_LAUNCH"
step "create returned" "$T_CREATED"
step "container running" "$T_RUN"
step "package installed" "$T_PKG"
step "cloud-init done" "$T_CI"
step "joined" "$T_JOIN"
step "replica RUNNING" "$T_REP"
step "first 200" "$T_200"
in_ct cloud-init analyze show 2>/dev/null | grep -E 'Total Time' | tail -n 1 | sed 's/^/# cloud-init analyze: /'
[ -n "$T_200" ] && awk -v a="$T_PEND" -v b="$T_200" 'BEGIN { printf "# pending -> serving: %.1f s\n", (b - a) / 1000 }'

# ---- no demand: the node is idle, drained and deleted ----
MERGED=$PSTATE/$NODE/merged
echo "applications: []" >"$CONF/apps.yaml"
kill -HUP "$HEAD_PID"
deleted() { [ -n "$(event_time node_deleted "$NODE")" ]; }
wait_until 120 deleted
check "with the application removed the node is deleted (node_deleted event)" "$(deleted && echo yes)" yes
check_contains "... after it was drained for being idle (node_draining event)" \
        "$(events | jq -r --arg n "$NODE" '.events[] | select(.kind == "node_draining" and .node == $n) | .message')" "idle for"
t_d=$(event_time node_draining "$NODE") t_x=$(event_time node_deleted "$NODE")
[ -n "$t_d" ] && [ -n "$t_x" ] && echo "# timing: draining -> deleted $(awk -v a="$t_d" -v b="$t_x" 'BEGIN { printf "%.2f", b - a }') s"
wait_until 30 bash -c "[ -z \"\$(nsenter --net=/run/netns/$P-head curl -fsS -m 5 $API/api/cluster/nodes | jq -r '.nodes[] | select(.node_id == \"$NODE\") | .state')\" ]"
check "the head lists the node no more" "$(node_field "$NODE" state)" ""
check "no node of group $GROUP is left" "$(nodes_json | jq --arg g "$GROUP" '[.nodes[] | select(.group == $g)] | length')" 0
check "no systemd-nspawn left" "$(kill -0 "$PID" 2>/dev/null && echo running)" ""
check "no mount left" "$(grep -c " $MERGED " /proc/mounts)" 0
check "no network namespace left" "$(ip netns list 2>/dev/null | grep -c "serve-nspawn-$NODE")" 0
check "no cgroup left" "$(ls -d /sys/fs/cgroup/*/serve-nspawn-"$NODE" /sys/fs/cgroup/serve-nspawn-"$NODE" 2>/dev/null)" ""
check "no state left" "$(ls -A "$PSTATE" | grep -v '^\.lock$')" ""
check "no veth left on the bridge" "$(ip -n "$P-sw" -o link show master br0 2>/dev/null | grep -c ': vn')" 0
check "the fixed worker still answers (404: no application)" "$(in_client curl -s -m 5 -o /dev/null -w '%{http_code}' "http://$NET.2:8000/echo")" 404
finish
