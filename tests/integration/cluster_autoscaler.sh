#!/usr/bin/env bash
# The cluster autoscaler with the netns provider, through examples/autoscaling: load makes
# replicas pending, a node of the cpu group is launched with a single-use token, joins, takes
# replicas and serves; every node's :8000 answers; the group never passes max_nodes; after the
# load the empty node is drained and deleted after idle_timeout_s; a group whose nodes never join
# has them deleted at boot_timeout_s and retried with backoff (serve status and /metrics say it
# is failing); a used or an expired join token is refused; nothing is left behind.
#
# Everything lives in network namespaces on a bridge (10.241.0.0/24), clients included; the main
# namespace routes the subnet to a blackhole while the test runs.
. "$(dirname "$0")/lib.sh"
NET=10.241.0 P=sca$$
. "$(dirname "$0")/autoscaling-lib.sh"

# The example's deployment, allowed more replicas than max_nodes can hold: the cap is reached.
export SERVE_EXAMPLE_APPS=$WORK/apps.yaml
sed 's/max_replicas: 6/max_replicas: 10/' "$EX/apps.yaml" >"$SERVE_EXAMPLE_APPS"

# A second group whose nodes never join (their "worker" is /bin/false): min_nodes 1 makes the
# head launch one at once, and its boot timeout is short. Dearer than cpu, so demand never
# goes there.
export SERVE_EXAMPLE_EXTRA_GROUPS=$WORK/extra-groups.yaml
cat >"$SERVE_EXAMPLE_EXTRA_GROUPS" <<EOF
  - name: broken
    provider: netns
    min_nodes: 1
    max_nodes: 1
    boot_timeout_s: 3
    cost: 5
    resources: {num_cpus: 1}
    provider_options:
      state_dir: $RUN/netns-broken
      bridge_netns: $P-sw
      netns_prefix: $P
      subnet: $NET
      first_host: 200
      last_host: 210
      worker_bin: /bin/false
EOF

cpu_nodes() { api /api/cluster/nodes | jq -r '[.nodes[] | select(.group == "cpu")] | length'; }

start_example

st=$(cli status 2>&1)
check_contains "serve status lists the cpu group (netns, 0-3 nodes)" "$st" "cpu"
check "no node of the cpu group before the load" "$(cpu_nodes)" 0

# ---- a node that never joins ----
for _ in $(seq 300); do
        t=$(api /api/cluster/groups | jq -r '.groups[] | select(.name == "broken") | .launches_timeout')
        [ "${t:-0}" -ge 1 ] && break
        sleep 0.1
done
check "a node of group broken that never joined is deleted at its boot timeout" "$([ "${t:-0}" -ge 1 ] && echo yes)" yes
ev=$(events)
check_contains "the event log says why it was deleted" "$(jq -r '.events[] | select(.kind == "node_boot_timeout") | .message' <<<"$ev")" "did not join within 3"
st=$(cli status 2>&1)
check_contains "serve status shows group broken failing" "$(grep broken <<<"$st")" "FAILING"
m=$(api /metrics)
check_contains "/metrics counts the timeout" "$m" 'serve_cluster_launches_total{group="broken",result="timeout"}'
check "/metrics says group broken is failing" "$(grep '^serve_cluster_group_failing{group="broken"}' <<<"$m" | awk '{print ($2 >= 1)}')" 1
for _ in $(seq 300); do
        t=$(api /api/cluster/groups | jq -r '.groups[] | select(.name == "broken") | .launches_timeout')
        [ "${t:-0}" -ge 2 ] && break
        sleep 0.1
done
check "group broken is retried after its backoff" "$([ "${t:-0}" -ge 2 ] && echo yes)" yes

# ---- load: replicas pending, a cpu node launched, joined, serving ----
CODES=$WORK/codes
STOP=$WORK/stop-load
load() {
        while [ ! -e "$STOP" ]; do
                in_client curl -s -o /dev/null -w '%{http_code}\n' -m 30 "http://$NET.2:8000/work?ms=300" >>"$CODES"
        done
}
for _ in $(seq 12); do load & done
max_seen=0
node=""
for _ in $(seq 900); do
        n=$(cpu_nodes)
        [ "${n:-0}" -gt "$max_seen" ] && max_seen=$n
        node=$(api /api/serve/applications/ | jq -r '[.applications.work.deployments.Slow.replicas[] |
                select(.state == "RUNNING") | .node_id | select(startswith("cpu-"))][0] // empty')
        [ -n "$node" ] && break
        sleep 0.1
done
check_contains "under load a replica runs on a new node of the cpu group" "$node" "cpu-"
nodes=$(api /api/cluster/nodes)
check "the new node is ALIVE" "$(jq -r --arg n "$node" '.nodes[] | select(.node_id == $n) | .state' <<<"$nodes")" ALIVE
check "its labels carry the group's (tier=burst)" "$(jq -r --arg n "$node" '.nodes[] | select(.node_id == $n) | .labels.tier' <<<"$nodes")" burst
ev=$(events)
check_contains "the launch was logged with its reason" "$(jq -r --arg n "$node" '.events[] | select(.kind == "node_launching" and .node == $n) | .message' <<<"$ev")" "pending"
addr=$(jq -r --arg n "$node" '.nodes[] | select(.node_id == $n) | .node_ip' <<<"$nodes")
check_contains "the node advertises its own address (node_address: auto)" "$addr" "$NET."
for ip in $NET.2 $addr; do
        check "traffic succeeds through $ip:8000" "$(in_client curl -s -o /dev/null -w '%{http_code}' -m 10 "http://$ip:8000/work?ms=1")" 200
done
out=$(cli nodes 2>&1)
check_contains "serve nodes shows the node's group and state" "$(grep "$node" <<<"$out")" "cpu"
# 10 replicas want 4 more nodes than node-1's 2 CPUs: the group stops at max_nodes (3), and the
# rest stays PENDING with the reason.
unsched=""
for _ in $(seq 600); do
        n=$(cpu_nodes)
        [ "${n:-0}" -gt "$max_seen" ] && max_seen=$n
        unsched=$(api /api/cluster/groups | jq -r '.unschedulable_reason')
        [ "$max_seen" -ge 3 ] && [[ $unsched == *max_nodes* ]] && break
        sleep 0.1
done
for _ in $(seq 30); do # and it stays there
        n=$(cpu_nodes)
        [ "${n:-0}" -gt "$max_seen" ] && max_seen=$n
        sleep 0.1
done
touch "$STOP"
wait
check "the cpu group grew to max_nodes (3) and no further" "$max_seen" 3
check_contains "the replicas beyond it are reported as held back by max_nodes" "$unsched" "at max_nodes (3)"
check_contains "serve status shows the group's nodes" "$(cli status 2>&1 | grep '^cpu')" "3 alive"
hist=$(api /api/dashboard/history)
check "the dashboard's history has the group's nodes by state" \
        "$(jq -r '[.series.groups.cpu | has("nodes_launching", "nodes_joining", "nodes_draining")] | all' <<<"$hist")" true
total=$(wc -l <"$CODES")
bad=$(grep -cv '^200$' "$CODES")
check "every request under load succeeded ($total requests)" "$bad" 0

# ---- idle: drained and deleted ----
for _ in $(seq 1200); do
        [ "$(cpu_nodes)" = 0 ] && break
        sleep 0.1
done
check "after the load the cpu group's nodes are drained and deleted" "$(cpu_nodes)" 0
ev=$(events)
check_contains "the drain was logged with its reason" "$(jq -r --arg n "$node" '.events[] | select(.kind == "node_draining" and .node == $n) | .message' <<<"$ev")" "idle for"
check "the deletion was logged" "$(jq -r --arg n "$node" '[.events[] | select(.kind == "node_deleted" and .node == $n)] | length' <<<"$ev")" 1
check "the provider holds no cpu node any more" "$(ls "$RUN/netns" 2>/dev/null | grep -c '^cpu-')" 0
check "no namespace of a cpu node is left" "$(ip netns list | grep -c "^$P-cpu-")" 0
check "traffic still succeeds on node-1" "$(in_client curl -s -o /dev/null -w '%{http_code}' -m 10 "http://$NET.2:8000/work?ms=1")" 200

# ---- join tokens: single use, short-lived ----
# worker_conf NAME TOKEN PORT: a worker.yaml for the client namespace in $WORK/w-NAME
worker_conf() {
        local d=$WORK/w-$1
        mkdir -p "$d"
        (umask 077; echo "$2" >"$d/token")
        printf 'head_address: %s.1:8266\nnode_name: %s\nnode_address: auto\njoin_token_file: token\nstate_dir: state\nhttp_port: %s\ndata_port: %s\nmetrics_port: 0\n' \
                "$NET" "$1" "$3" "$(($3 + 1))" >"$d/worker.yaml"
}
# refused NAME: runs the worker (bounded); prints its log
refused() { in_client timeout 20 "$top_builddir/serve-worker" -c "$WORK/w-$1/worker.yaml" >"$WORK/w-$1/log" 2>&1; cat "$WORK/w-$1/log"; }
HEAD_STATE=$RUN/state
tok=$(ip netns exec "$P-head" "$top_builddir/serve-head" -c "$RUN" --state-dir "$HEAD_STATE" --join-token create --ttl 10m --uses 1 --name tok-a 2>/dev/null)
worker_conf tok-a "$tok" 18000
# ip netns exec execs the worker: $! is the worker's pid.
ip netns exec "$P-client" "$top_builddir/serve-worker" -c "$WORK/w-tok-a/worker.yaml" >"$WORK/w-tok-a/log.1" 2>&1 &
pid=$!
for _ in $(seq 100); do api /api/cluster/nodes | jq -e '.nodes[] | select(.node_id == "tok-a" and .state == "ALIVE")' >/dev/null && break; sleep 0.1; done
check "a node joins with a fresh single-use token" "$(api /api/cluster/nodes | jq -r '.nodes[] | select(.node_id == "tok-a") | .state')" ALIVE
kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
rm -rf "$WORK/w-tok-a/state"
check_contains "the same token is refused the second time" "$(refused tok-a)" "token used up"
tok=$(ip netns exec "$P-head" "$top_builddir/serve-head" -c "$RUN" --state-dir "$HEAD_STATE" --join-token create --ttl 1 --uses 1 --name tok-b 2>/dev/null)
for _ in $(seq 50); do
        ip netns exec "$P-head" "$top_builddir/serve-head" -c "$RUN" --state-dir "$HEAD_STATE" --join-token list 2>/dev/null |
                grep tok-b | grep -q expired && break
        sleep 0.1
done
worker_conf tok-b "$tok" 18100
check_contains "an expired token is refused" "$(refused tok-b)" "token expired"
cli nodes remove tok-a >/dev/null 2>&1

# ---- nothing left behind ----
stop_example
check "stop leaves no namespace of the example" "$(ip netns list | grep -c "^$P-")" 0
check "no serve-worker of the example runs" "$(pgrep -f "$RUN" | grep -c .)" 0
check "no provider record is left" "$(find "$RUN/netns" "$RUN/netns-broken" -name record.json 2>/dev/null | grep -c .)" 0
check "the blackhole route is gone" "$(ip route show | grep -c "blackhole $NET.0/24")" 0
finish
